//! Kernel knowledge in one table: every kernel function the probes hook, once,
//! with its role, its prototype by kernel range, the parameters the programs
//! read, and the programs attached to it; then every struct member read.
//! The plan (probes/plan.rs) and the programs' config (probes/mod.rs) take
//! everything from here. `check` compares the table with a kernel's BTF: the
//! QEMU suite runs it on every kernel it boots (tests/guest/src/bin/qemu-btf-check.rs),
//! so a signature drift fails a test that names the function and the kernel.
//!
//! Ranges: `since` is the first kernel a prototype is known for (booted in the
//! QEMU matrix: 5.10, 6.1, 6.12, 7.2; earlier boundaries from the kernel
//! sources in docs/ebpf.md). The applicable prototype is the last one whose
//! `since` is at most the running kernel.

use super::btf::KernelBtf;

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

/// Which functions stand in for one another across kernels: the plan hooks the
/// first function of a group (in table order) that the kernel has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// One call per entry copied up (ancestors included).
    CopyUpOne,
    /// Runs exactly when this thread copied (ovl_copy_up_start returned 0).
    CopyUpEnd,
    /// The file data copy: the length copied.
    DataCopy,
}

/// A program attached to a function, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Program {
    pub name: &'static str,
    pub mechanism: Mechanism,
    /// Kernels from which this program is used (a variant for older ones follows).
    pub since: (u32, u32),
}

/// A function's parameter names from `since` on. `None`: the function is not
/// there (renamed, removed or inlined) from that kernel on.
#[derive(Debug, Clone, Copy)]
pub struct Proto {
    pub since: (u32, u32),
    pub params: Option<&'static [&'static str]>,
}

#[derive(Debug)]
pub struct Hooked {
    pub function: &'static str,
    pub group: Group,
    pub role: &'static str,
    /// Without it nothing can be counted.
    pub core: bool,
    pub programs: &'static [Program],
    pub prototypes: &'static [Proto],
    /// Parameters the programs read, by name (positions from BTF where the
    /// kernel describes the module, else from `prototypes`).
    pub reads: &'static [&'static str],
}

const fn prog(name: &'static str, mechanism: Mechanism) -> Program {
    Program { name, mechanism, since: (0, 0) }
}

use Mechanism::{Kprobe, Kretprobe};

pub const HOOKS: &[Hooked] = &[
    Hooked {
        function: "ovl_copy_up_one",
        group: Group::CopyUpOne,
        role: "start of one copy-up: mount, entry type, cause (from the thread's system call and `flags`); its return gives errors",
        core: true,
        programs: &[
            Program { name: "one_entry_stack", mechanism: Kprobe, since: (0, 0) },
            // bpf_task_pt_regs (5.15+) reads the user registers.
            Program { name: "one_entry", mechanism: Kprobe, since: (5, 15) },
            prog("one_exit", Kretprobe),
        ],
        prototypes: &[Proto { since: (4, 19), params: Some(&["parent", "dentry", "flags"]) }],
        reads: &["dentry", "flags"],
    },
    Hooked {
        function: "ovl_copy_up_end",
        group: Group::CopyUpEnd,
        role: "the copy-up happened on this thread: counted here (an entry probe, never missed)",
        core: true,
        programs: &[prog("end_entry", Kprobe)],
        prototypes: &[Proto { since: (4, 19), params: Some(&["dentry"]) }],
        reads: &[],
    },
    Hooked {
        function: "ovl_copy_up_file",
        group: Group::DataCopy,
        role: "file data copy (6.1+): kind, bytes",
        core: false,
        programs: &[prog("data_entry", Kprobe)],
        prototypes: &[
            Proto { since: (4, 19), params: None },
            Proto { since: (6, 1), params: Some(&["ofs", "dentry", "new_file", "len"]) },
            Proto { since: (6, 12), params: Some(&["ofs", "dentry", "new_file", "len", "datasync"]) },
        ],
        reads: &["len"],
    },
    Hooked {
        function: "ovl_copy_up_data",
        group: Group::DataCopy,
        role: "file data copy (before 6.1; from 6.1 a wrapper of ovl_copy_up_file, not hooked)",
        core: false,
        programs: &[prog("data_entry", Kprobe)],
        prototypes: &[
            Proto { since: (4, 19), params: Some(&["old", "new", "len"]) },
            Proto { since: (5, 8), params: Some(&["ofs", "old", "new", "len"]) },
            Proto { since: (6, 1), params: Some(&["c", "temp"]) },
        ],
        reads: &["len"],
    },
];

/// Struct members the programs read (offsets from vmlinux BTF at start).
pub const MEMBERS: &[(&str, &str, &str)] = &[
    ("dentry", "d_sb", "the copy-up's mount: dentry -> d_sb -> s_dev"),
    ("dentry", "d_inode", "directory or not: d_inode -> i_mode"),
    ("dentry", "d_name", "file name for `overlay-agent trace`"),
    ("qstr", "name", "file name for `overlay-agent trace`"),
    ("super_block", "s_dev", "major:minor of the overlay, joined to mountinfo"),
    ("inode", "i_mode", "directory or not"),
    ("task_struct", "stack", "user registers at the stack top (before 5.15)"),
    ("pt_regs", "orig_ax", "the system call number (the cause)"),
    ("pt_regs", "cs", "64-bit caller or not"),
];

/// Overlay module struct members read (offsets from the module's BTF; where it
/// has none, 5.10, the fallback in probes::program_config: __upperdentry
/// follows vfs_inode, as in every ovl_entry.h from 4.19 to 7.2).
pub const MODULE_MEMBERS: &[(&str, &str, &str)] = &[
    ("ovl_inode", "vfs_inode", "the overlay inode a dentry points to"),
    (
        "ovl_inode",
        "__upperdentry",
        "already on the upper layer: deferred data copy or link-up, not a full copy",
    ),
];

impl Hooked {
    /// The prototype on kernel `version`.
    pub fn prototype(&self, version: (u32, u32)) -> Option<&'static [&'static str]> {
        self.prototypes.iter().rev().find(|p| p.since <= version).and_then(|p| p.params)
    }

    /// Position of parameter `name` on kernel `version`, from the table.
    pub fn param_index(&self, name: &str, version: (u32, u32)) -> Option<usize> {
        self.prototype(version)?.iter().position(|p| *p == name)
    }

    /// The program of `mechanism` to attach on kernel `version`.
    pub fn program(&self, mechanism: Mechanism, version: (u32, u32)) -> Option<&'static str> {
        self.programs.iter().rev().find(|p| p.mechanism == mechanism && p.since <= version).map(|p| p.name)
    }
}

/// Every program name the table can attach (the embedded object must have them all).
pub fn program_names() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = HOOKS.iter().flat_map(|h| h.programs.iter().map(|p| p.name)).collect();
    v.sort_unstable();
    v.dedup();
    v
}

pub fn find(function: &str) -> Option<&'static Hooked> {
    HOOKS.iter().find(|h| h.function == function)
}

/// One difference between the table and a kernel's BTF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub function: String,
    pub kernel: String,
    pub problem: String,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kernel {}: {}: {}", self.kernel, self.function, self.problem)
    }
}

/// What `check` compared (for the test's report).
#[derive(Debug, Default)]
pub struct Checked {
    pub functions: Vec<String>,
    /// Functions not compared: the kernel has no BTF for the overlay module.
    pub unchecked: Vec<String>,
    pub members: usize,
}

/// Compares every row with the BTF of kernel `release` (`version` its
/// major.minor). Prototypes are compared where BTF describes overlayfs (module
/// BTF, or overlay built in); members always.
pub fn check(btf: &KernelBtf, release: &str, version: (u32, u32)) -> (Checked, Vec<Drift>) {
    check_rows(btf, release, version, HOOKS, MEMBERS)
}

/// `check` for given rows (tests pass deliberately wrong ones).
pub fn check_rows(
    btf: &KernelBtf,
    release: &str,
    version: (u32, u32),
    hooks: &[Hooked],
    members: &[(&str, &str, &str)],
) -> (Checked, Vec<Drift>) {
    let mut drifts = Vec::new();
    let mut checked = Checked::default();
    let drift = |function: &str, problem: String| Drift {
        function: function.to_owned(),
        kernel: release.to_owned(),
        problem,
    };
    let overlay_described = btf.has_overlay_btf() || btf.params("ovl_copy_up_one").is_some();
    for h in hooks {
        if !overlay_described {
            checked.unchecked.push(h.function.to_owned());
            continue;
        }
        checked.functions.push(h.function.to_owned());
        let want = h.prototype(version);
        match (want, btf.params(h.function)) {
            (Some(want), Some(got)) if want.iter().copied().eq(got.iter().map(String::as_str)) => {}
            (None, None) => {}
            (want, got) => drifts.push(drift(
                h.function,
                format!(
                    "table says {}, BTF says {}",
                    show(want.map(|w| w.join(", "))),
                    show(got.map(|g| g.join(", ")))
                ),
            )),
        }
    }
    for (s, m, _) in members {
        checked.members += 1;
        if let Err(e) = btf.member_offset(s, m) {
            drifts.push(drift(&format!("struct {s}"), e.to_string()));
        }
    }
    if btf.has_overlay_btf() {
        for (s, m, _) in MODULE_MEMBERS {
            checked.members += 1;
            if let Err(e) = btf.module_member_offset(s, m) {
                drifts.push(drift(&format!("struct {s}"), e.to_string()));
            }
        }
        // The 5.10 fallback assumes __upperdentry right after vfs_inode: check it
        // where BTF can tell.
        if let (Ok(vfs), Ok(upper), Ok(size)) = (
            btf.module_member_offset("ovl_inode", "vfs_inode"),
            btf.module_member_offset("ovl_inode", "__upperdentry"),
            btf.struct_size("inode"),
        ) {
            if upper != vfs + size.next_multiple_of(8) {
                drifts.push(drift(
                    "struct ovl_inode",
                    format!("__upperdentry at {upper}, not right after vfs_inode ({vfs} + {size})"),
                ));
            }
        }
    }
    (checked, drifts)
}

fn show(p: Option<String>) -> String {
    match p {
        Some(p) => format!("({p})"),
        None => "absent".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prototypes_by_range() {
        let data = find("ovl_copy_up_data").expect("row");
        assert_eq!(data.param_index("len", (5, 10)), Some(3));
        assert_eq!(data.param_index("len", (4, 19)), Some(2));
        assert_eq!(data.param_index("len", (6, 1)), None, "6.1's ovl_copy_up_data is the wrapper");
        let file = find("ovl_copy_up_file").expect("row");
        assert_eq!(file.param_index("len", (6, 12)), Some(3));
        assert_eq!(file.prototype((5, 10)), None);
        let one = find("ovl_copy_up_one").expect("row");
        assert_eq!(one.program(Kprobe, (5, 10)), Some("one_entry_stack"));
        assert_eq!(one.program(Kprobe, (6, 1)), Some("one_entry"));
        assert_eq!(one.program(Kretprobe, (6, 1)), Some("one_exit"));
    }

    /// A drift names the struct or function and the kernel (the host's vmlinux
    /// BTF; the overlay rows are checked in the QEMU guests). MEMBERS name
    /// x86_64's pt_regs fields.
    #[test]
    #[cfg_attr(not(target_arch = "x86_64"), ignore = "MEMBERS name x86_64's pt_regs fields")]
    fn a_drift_names_what_and_where() {
        let btf = KernelBtf::load(std::path::Path::new("/sys/kernel/btf")).expect("host BTF");
        let members = [("dentry", "d_sb", ""), ("dentry", "d_no_such_member", "")];
        let (checked, drifts) = check_rows(&btf, "host-test", (6, 18), &[], &members);
        assert_eq!(checked.members, 2);
        assert_eq!(drifts.len(), 1, "{drifts:?}");
        let text = drifts[0].to_string();
        assert!(text.contains("kernel host-test") && text.contains("struct dentry"), "{text}");
        assert!(text.contains("d_no_such_member"), "{text}");
        let (_, drifts) = check_rows(&btf, "host-test", (6, 18), &[], MEMBERS);
        assert!(drifts.is_empty(), "the real members exist on the host: {drifts:?}");
    }

    #[test]
    fn every_read_parameter_is_in_the_prototypes() {
        for h in HOOKS {
            for r in h.reads {
                assert!(
                    h.prototypes.iter().filter_map(|p| p.params).any(|p| p.contains(r)),
                    "{} reads {r}, which no prototype has",
                    h.function
                );
            }
            assert!(
                h.prototypes.windows(2).all(|w| w[0].since < w[1].since),
                "{}: ranges in order",
                h.function
            );
        }
    }
}
