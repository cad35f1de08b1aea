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

/// How a program attaches. Only kprobes: every count is taken at function
/// entries, so no return probe (and its missed returns) is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Kprobe,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Kprobe => "kprobe",
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

use Mechanism::Kprobe;

pub const HOOKS: &[Hooked] = &[
    Hooked {
        function: "ovl_copy_up_one",
        group: Group::CopyUpOne,
        role: "start of one copy-up: start time, inode, mount, upper dentry (kind), open flags (cause)",
        core: true,
        programs: &[prog("one_entry", Kprobe)],
        prototypes: &[Proto { since: (4, 19), params: Some(&["parent", "dentry", "flags"]) }],
        reads: &["dentry", "flags"],
    },
    Hooked {
        function: "ovl_copy_up_end",
        group: Group::CopyUpEnd,
        role: "the copy-up happened on this thread: counted here (an entry probe, never missed); cause and no-op from the thread's system call, errors from the inode's state",
        core: true,
        programs: &[
            Program { name: "end_entry_stack", mechanism: Kprobe, since: (0, 0) },
            // bpf_task_pt_regs (5.15+): the user registers and the task through BTF pointers.
            Program { name: "end_entry", mechanism: Kprobe, since: (5, 15) },
        ],
        prototypes: &[Proto { since: (4, 19), params: Some(&["dentry"]) }],
        reads: &["dentry"],
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

/// Struct members the programs read (offsets from vmlinux BTF at start). The
/// user registers' members (the system call number, its arguments, the
/// native-caller test) are the arch's, in overlay_agent_common::syscall::Abi;
/// `abi_members` lists them. The inode's times have one of three layouts
/// (probes::config: `i_atime`, `__i_atime` (6.7), `i_atime_sec` (6.11)).
pub const MEMBERS: &[(&str, &str, &str)] = &[
    ("dentry", "d_sb", "the copy-up's mount: dentry -> d_sb -> s_dev"),
    ("dentry", "d_inode", "the overlay inode: type, owner, mode, upper dentry, flags"),
    ("dentry", "d_name", "file name for `overlay-agent trace`"),
    ("qstr", "name", "file name for `overlay-agent trace`"),
    ("super_block", "s_dev", "major:minor of the overlay, joined to mountinfo"),
    ("inode", "i_mode", "type (directory or not) and mode (chmod no-op)"),
    ("inode", "i_uid", "owner (chown no-op)"),
    ("inode", "i_gid", "group (chown no-op)"),
    ("task_struct", "stack", "user registers at the stack top (before 5.15)"),
    ("task_struct", "real_cred", "the caller's user namespace (chown no-op)"),
    ("task_struct", "comm", "who copied (5.15+; before, bpf_get_current_comm)"),
    ("cred", "user_ns", "the caller's user namespace (chown no-op)"),
    ("user_namespace", "level", "0 for the initial namespace: ids are kernel ids"),
    ("user_namespace", "uid_map", "a chown's uid as a kernel id"),
    ("user_namespace", "gid_map", "a chown's gid as a kernel id"),
    ("uid_gid_map", "nr_extents", "extents held inline (up to 5)"),
    ("uid_gid_map", "extent", "the inline extents"),
];

/// The layouts of an inode's access and modification times, newest first:
/// (atime seconds, atime nanoseconds, mtime seconds, mtime nanoseconds), each
/// (member, offset within it). 6.11 split them into seconds and nanoseconds,
/// 6.7 renamed the timespec64s, before they were `i_atime`, `i_mtime`.
const INODE_TIMES: &[[(&str, u32); 4]] = &[
    [("i_atime_sec", 0), ("i_atime_nsec", 0), ("i_mtime_sec", 0), ("i_mtime_nsec", 0)],
    [("__i_atime", 0), ("__i_atime", 8), ("__i_mtime", 0), ("__i_mtime", 8)],
    [("i_atime", 0), ("i_atime", 8), ("i_mtime", 0), ("i_mtime", 8)],
];

/// Offsets of an inode's atime and mtime (seconds, nanoseconds each), from the
/// first layout of [`INODE_TIMES`] this kernel's BTF has.
pub fn inode_times(btf: &KernelBtf) -> Result<[u32; 4], super::btf::BtfError> {
    let mut last = None;
    for layout in INODE_TIMES {
        let offs: Result<Vec<u32>, _> =
            layout.iter().map(|(m, extra)| btf.member_offset("inode", m).map(|o| o + extra)).collect();
        match offs {
            Ok(o) => return Ok([o[0], o[1], o[2], o[3]]),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(super::btf::BtfError::Missing { what: "inode times".into() }))
}

/// The user-register members of `abi` the programs read.
pub fn abi_members(
    abi: &overlay_agent_common::syscall::Abi,
) -> Vec<(&'static str, &'static str, &'static str)> {
    let mut v = vec![
        ("pt_regs", abi.nr, "the system call number (the cause)"),
        ("pt_regs", abi.native.0, "native 64-bit caller or not"),
    ];
    for (m, _) in abi.args {
        if !v.iter().any(|x| x.1 == m) {
            v.push(("pt_regs", m, "a system call argument (no-op copy-ups)"));
        }
    }
    v
}

/// Overlay module struct members read (offsets from the module's BTF; where it
/// has none, 5.10, the fallback in probes::config: __upperdentry follows
/// vfs_inode and flags precedes it, as in every ovl_entry.h from 4.19 to 7.2).
pub const MODULE_MEMBERS: &[(&str, &str, &str)] = &[
    ("ovl_inode", "vfs_inode", "the overlay inode a dentry points to"),
    (
        "ovl_inode",
        "__upperdentry",
        "already on the upper layer: deferred data copy or link-up, not a full copy",
    ),
    ("ovl_inode", "flags", "OVL_UPPERDATA after the copy-up: it succeeded"),
];

/// Overlay module enum values read: (enum, value, fallback where the module has
/// no BTF (5.10): the value in every fs/overlayfs/overlayfs.h from 4.19 to 7.2).
pub const MODULE_ENUMS: &[(&str, &str, u32)] = &[("ovl_inode_flag", "OVL_UPPERDATA", 3)];

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
    let mut members = MEMBERS.to_vec();
    if let Some(abi) = overlay_agent_common::syscall::NATIVE {
        members.extend(abi_members(abi));
    }
    let (mut checked, mut drifts) = check_rows(btf, release, version, HOOKS, &members);
    checked.members += 1;
    if inode_times(btf).is_err() {
        drifts.push(Drift {
            function: "struct inode".into(),
            kernel: release.to_owned(),
            problem: "none of the atime/mtime layouts (i_atime, __i_atime, i_atime_sec)".into(),
        });
    }
    (checked, drifts)
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
        check_module(btf, &mut checked, &mut drifts, &drift);
    }
    (checked, drifts)
}

/// The overlay module's members and enum values the programs' fallbacks assume,
/// where the module has BTF to check them against.
fn check_module(
    btf: &KernelBtf,
    checked: &mut Checked,
    drifts: &mut Vec<Drift>,
    drift: &dyn Fn(&str, String) -> Drift,
) {
    for (s, m, _) in MODULE_MEMBERS {
        checked.members += 1;
        if let Err(e) = btf.module_member_offset(s, m) {
            drifts.push(drift(&format!("struct {s}"), e.to_string()));
        }
    }
    // The 5.10 fallbacks assume __upperdentry right after vfs_inode, flags
    // right before it, and the enum values: check them where BTF can tell.
    if let (Ok(vfs), Ok(upper), Ok(flags), Ok(size)) = (
        btf.module_member_offset("ovl_inode", "vfs_inode"),
        btf.module_member_offset("ovl_inode", "__upperdentry"),
        btf.module_member_offset("ovl_inode", "flags"),
        btf.struct_size("inode"),
    ) {
        if upper != vfs + size.next_multiple_of(8) {
            drifts.push(drift(
                "struct ovl_inode",
                format!("__upperdentry at {upper}, not right after vfs_inode ({vfs} + {size})"),
            ));
        }
        if flags + 8 != vfs {
            drifts.push(drift(
                "struct ovl_inode",
                format!("flags at {flags}, not right before vfs_inode ({vfs})"),
            ));
        }
    }
    for (e, v, fallback) in MODULE_ENUMS {
        checked.members += 1;
        match btf.module_enum_value(e, v) {
            Ok(n) if n == *fallback => {}
            Ok(n) => {
                drifts.push(drift(&format!("enum {e}"), format!("{v} = {n}, the fallback says {fallback}")))
            }
            Err(err) => drifts.push(drift(&format!("enum {e}"), err.to_string())),
        }
    }
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
        let end = find("ovl_copy_up_end").expect("row");
        assert_eq!(end.program(Kprobe, (5, 10)), Some("end_entry_stack"));
        assert_eq!(end.program(Kprobe, (6, 1)), Some("end_entry"));
        assert_eq!(find("ovl_copy_up_one").expect("row").program(Kprobe, (6, 1)), Some("one_entry"));
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
