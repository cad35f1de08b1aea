//! Which program attaches to which kernel function, decided from the functions
//! the running kernel has (pure: tested on symbol lists of real kernels).
//!
//! Compatibility (kernel sources 4.19 .. 7.2, see docs/ebpf.md):
//! - ovl_copy_up_one(parent, dentry, flags): all versions. Core.
//! - ovl_copy_up_end(dentry): all versions. Core: copy-ups are counted there.
//! - data copy: ovl_copy_up_file (6.1+) else ovl_copy_up_data (<= 6.0).
//! - metadata copy: ovl_copy_up_metadata (6.x) else ovl_copy_up_inode (5.x).
//! - causes: ovl_setattr; ovl_xattr_set, ovl_set_acl (6.2+), ovl_fileattr_set
//!   (5.13+); ovl_link; ovl_rename; ovl_create_object else ovl_create_or_link,
//!   and ovl_tmpfile (6.x); ovl_do_remove.

use crate::kernel::symbols::Symbols;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Kprobe,
    Kretprobe,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Kprobe => "kprobe",
            Mechanism::Kretprobe => "kretprobe",
        }
    }
}

/// One hook: a program and the functions it may attach to.
pub struct Hook {
    pub program: &'static str,
    pub mechanism: Mechanism,
    /// Attach to the first candidate that exists, or to all that exist.
    pub candidates: &'static [&'static str],
    pub all: bool,
    /// Without it nothing can be counted.
    pub core: bool,
}

const fn hook(program: &'static str, mechanism: Mechanism, candidates: &'static [&'static str]) -> Hook {
    Hook { program, mechanism, candidates, all: false, core: false }
}

use Mechanism::{Kprobe, Kretprobe};

pub const HOOKS: &[Hook] = &[
    Hook { core: true, ..hook("one_entry", Kprobe, &["ovl_copy_up_one"]) },
    Hook { core: true, ..hook("end_entry", Kprobe, &["ovl_copy_up_end"]) },
    hook("one_exit", Kretprobe, &["ovl_copy_up_one"]),
    hook("data_entry", Kprobe, DATA_FNS),
    hook("meta_entry", Kprobe, &["ovl_copy_up_metadata", "ovl_copy_up_inode"]),
    hook("setattr_entry", Kprobe, &["ovl_setattr"]),
    hook("setattr_exit", Kretprobe, &["ovl_setattr"]),
    Hook { all: true, ..hook("xattr_entry", Kprobe, XATTR_FNS) },
    Hook { all: true, ..hook("xattr_exit", Kretprobe, XATTR_FNS) },
    hook("link_entry", Kprobe, &["ovl_link"]),
    hook("link_exit", Kretprobe, &["ovl_link"]),
    hook("rename_entry", Kprobe, &["ovl_rename"]),
    hook("rename_exit", Kretprobe, &["ovl_rename"]),
    hook("create_entry", Kprobe, CREATE_FNS),
    hook("create_exit", Kretprobe, CREATE_FNS),
    Hook { all: true, ..hook("create_entry", Kprobe, &["ovl_tmpfile"]) },
    Hook { all: true, ..hook("create_exit", Kretprobe, &["ovl_tmpfile"]) },
    hook("remove_entry", Kprobe, &["ovl_do_remove"]),
    hook("remove_exit", Kretprobe, &["ovl_do_remove"]),
];

/// Data-copy functions, preferred first; the one chosen also gives the length argument.
pub const DATA_FNS: &[&str] = &["ovl_copy_up_file", "ovl_copy_up_data"];
const XATTR_FNS: &[&str] = &["ovl_xattr_set", "ovl_set_acl", "ovl_fileattr_set"];
const CREATE_FNS: &[&str] = &["ovl_create_object", "ovl_create_or_link"];

/// A planned attachment, or a hook with nothing to attach to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub program: &'static str,
    pub mechanism: Mechanism,
    /// None: no candidate function exists on this kernel (inlined or renamed).
    pub function: Option<&'static str>,
    pub core: bool,
}

pub fn plan(symbols: &Symbols) -> Vec<Planned> {
    let mut out = Vec::new();
    for h in HOOKS {
        let found: Vec<&'static str> = if h.all {
            h.candidates.iter().copied().filter(|c| symbols.has(c)).collect()
        } else {
            symbols.first(h.candidates).into_iter().collect()
        };
        if found.is_empty() && !h.all {
            out.push(Planned { program: h.program, mechanism: h.mechanism, function: None, core: h.core });
        }
        for f in found {
            out.push(Planned { program: h.program, mechanism: h.mechanism, function: Some(f), core: h.core });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syms(names: &[&str]) -> Symbols {
        Symbols::parse(&names.iter().map(|n| format!("0 t {n}\t[overlay]\n")).collect::<String>())
    }

    #[test]
    fn linux_6_1_like() {
        let s = syms(&[
            "ovl_copy_up_one",
            "ovl_copy_up_end",
            "ovl_copy_up_file",
            "ovl_copy_up_data",
            "ovl_copy_up_metadata",
            "ovl_copy_up_flags",
            "ovl_setattr",
            "ovl_xattr_set",
            "ovl_fileattr_set",
            "ovl_link",
            "ovl_rename",
            "ovl_create_object",
            "ovl_create_or_link",
            "ovl_tmpfile",
            "ovl_do_remove",
        ]);
        let p = plan(&s);
        let find =
            |prog: &str| p.iter().filter(|x| x.program == prog).map(|x| x.function).collect::<Vec<_>>();
        assert_eq!(find("data_entry"), vec![Some("ovl_copy_up_file")]);
        assert_eq!(find("xattr_entry"), vec![Some("ovl_xattr_set"), Some("ovl_fileattr_set")]);
        assert_eq!(find("create_entry"), vec![Some("ovl_create_object"), Some("ovl_tmpfile")]);
        assert!(p.iter().all(|x| x.function.is_some()), "{p:?}");
    }

    #[test]
    fn linux_5_10_like_and_missing_functions() {
        let s = syms(&[
            "ovl_copy_up_one",
            "ovl_copy_up_end",
            "ovl_copy_up_data",
            "ovl_copy_up_inode",
            "ovl_setattr",
        ]);
        let p = plan(&s);
        let find = |prog: &str| p.iter().find(|x| x.program == prog).and_then(|x| x.function);
        assert_eq!(find("data_entry"), Some("ovl_copy_up_data"));
        assert_eq!(find("meta_entry"), Some("ovl_copy_up_inode"));
        assert_eq!(find("link_entry"), None, "reported as missing, not dropped");
        assert!(p.iter().any(|x| x.program == "rename_entry" && x.function.is_none()));
    }
}
