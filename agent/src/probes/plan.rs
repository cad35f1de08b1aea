//! Which program attaches to which kernel function, decided from the table in
//! kernel::hooks and the functions the running kernel has (pure: tested on
//! symbol lists of real kernels).

pub use crate::kernel::hooks::Mechanism;
use crate::kernel::hooks::{Group, HOOKS};
use crate::kernel::symbols::Symbols;

/// A planned attachment, or a hook with nothing to attach to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub program: &'static str,
    pub mechanism: Mechanism,
    /// None: no function of the group exists on this kernel (inlined or renamed).
    pub function: Option<&'static str>,
    pub core: bool,
}

const GROUPS: [Group; 3] = [Group::CopyUpOne, Group::CopyUpEnd, Group::DataCopy];

/// The function hooked for `group`: the first of its rows the kernel has.
pub fn chosen(symbols: &Symbols, group: Group) -> Option<&'static str> {
    HOOKS.iter().filter(|h| h.group == group).map(|h| h.function).find(|f| symbols.has(f))
}

pub fn plan(symbols: &Symbols, version: (u32, u32)) -> Vec<Planned> {
    let mut out = Vec::new();
    for group in GROUPS {
        let rows: Vec<_> = HOOKS.iter().filter(|h| h.group == group).collect();
        let Some(first) = rows.first() else { continue };
        let row = chosen(symbols, group).and_then(crate::kernel::hooks::find).unwrap_or(first);
        let function = chosen(symbols, group);
        if let Some(program) = row.program(Mechanism::Kprobe, version) {
            out.push(Planned { program, mechanism: Mechanism::Kprobe, function, core: row.core });
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
        ]);
        let p = plan(&s, (6, 1));
        let find =
            |prog: &str| p.iter().filter(|x| x.program == prog).map(|x| x.function).collect::<Vec<_>>();
        assert_eq!(find("data_entry"), vec![Some("ovl_copy_up_file")]);
        assert_eq!(find("one_entry"), vec![Some("ovl_copy_up_one")]);
        assert_eq!(find("end_entry"), vec![Some("ovl_copy_up_end")]);
        assert!(find("end_entry_stack").is_empty());
        assert_eq!(p.len(), 3, "three programs, none on operations that do not copy up: {p:?}");
        assert!(p.iter().all(|x| x.function.is_some()), "{p:?}");
    }

    #[test]
    fn linux_5_10_like_and_missing_functions() {
        let s = syms(&["ovl_copy_up_one", "ovl_copy_up_end", "ovl_copy_up_data"]);
        let p = plan(&s, (5, 10));
        let find = |prog: &str| p.iter().find(|x| x.program == prog).map(|x| x.function);
        assert_eq!(find("data_entry"), Some(Some("ovl_copy_up_data")));
        assert_eq!(find("end_entry_stack"), Some(Some("ovl_copy_up_end")));
        assert_eq!(find("end_entry"), None);
        let s = syms(&["ovl_copy_up_one", "ovl_copy_up_end"]);
        let p = plan(&s, (5, 10));
        let find = |prog: &str| p.iter().find(|x| x.program == prog).map(|x| x.function);
        assert_eq!(find("data_entry"), Some(None), "reported as missing, not dropped");
    }
}
