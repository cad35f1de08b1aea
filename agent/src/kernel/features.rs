//! What the running kernel offers the agent, read where an administrator would
//! look: kallsyms (which code is built in or loaded), /proc/filesystems and
//! /sys/module (overlayfs), /proc/modules and the module index under
//! /lib/modules/RELEASE (what a `modprobe` could still load). Nothing here loads
//! or attaches anything: `overlay-agent check` adds the real attempt.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Whether a piece of kernel code is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// Built into the kernel, or a module that is loaded.
    Present,
    /// A module that is not loaded, in the module index (`modprobe` loads it).
    Loadable,
    /// Neither built in nor a module of this kernel.
    Missing,
    /// Not loaded, and no module index to tell whether it could be.
    Unknown,
}

/// The text symbols the findings below are read from, one per kernel option.
const WANTED: &[&str] = &[
    "register_kprobe",       // CONFIG_KPROBES
    "dquot_initialize",      // CONFIG_QUOTA
    "v2_read_file_info",     // CONFIG_QFMT_V2 (ext4's quota files)
    "xfs_fs_fill_super",     // XFS
    "xfs_qm_scall_getquota", // CONFIG_XFS_QUOTA
    "bpf_ringbuf_reserve",   // BPF ring buffers (5.8)
];

/// The kernel facts `check` reports.
#[derive(Debug, Clone)]
pub struct KernelFeatures {
    pub release: String,
    pub machine: String,
    /// Wanted symbols found in kallsyms (plus `sys_quotactl` for any arch
    /// prefix); None when kallsyms cannot be read.
    symbols: Option<HashSet<String>>,
    /// Whether the kernel loads modules at all (/proc/modules exists).
    pub modules_enabled: bool,
    /// Module names (without `.ko*`) of /lib/modules/RELEASE: (modules.dep,
    /// modules.builtin); None when there is no index.
    index: Option<(HashSet<String>, HashSet<String>)>,
    /// overlay in /proc/filesystems.
    overlay_registered: bool,
    /// /sys/module/overlay/initstate exists: overlay is a loaded module.
    overlay_is_module: bool,
}

impl KernelFeatures {
    /// Reads the running kernel's facts from the usual places.
    pub fn read() -> KernelFeatures {
        let uname = rustix::system::uname();
        let release = uname.release().to_string_lossy().into_owned();
        let machine = uname.machine().to_string_lossy().into_owned();
        let modules_dir = Path::new("/lib/modules").join(&release);
        KernelFeatures {
            symbols: std::fs::read_to_string("/proc/kallsyms").ok().map(|t| wanted_symbols(&t)),
            modules_enabled: Path::new("/proc/modules").exists(),
            index: read_index(&modules_dir),
            overlay_registered: std::fs::read_to_string("/proc/filesystems")
                .is_ok_and(|t| t.lines().any(|l| l.split_whitespace().last() == Some("overlay"))),
            overlay_is_module: Path::new("/sys/module/overlay/initstate").exists(),
            release,
            machine,
        }
    }

    pub fn version(&self) -> Option<(u32, u32)> {
        super::parse_version(&self.release)
    }

    pub fn kallsyms_readable(&self) -> bool {
        self.symbols.is_some()
    }

    /// The module index this kernel's modules would come from.
    pub fn modules_dir(&self) -> PathBuf {
        Path::new("/lib/modules").join(&self.release)
    }

    /// Code that is either in kallsyms (`symbol`) or a module named `module`.
    fn presence(&self, symbol: &str, module: &str) -> Presence {
        match &self.symbols {
            Some(s) if s.contains(symbol) => Presence::Present,
            Some(_) => self.loadable(module),
            None => Presence::Unknown,
        }
    }

    fn loadable(&self, module: &str) -> Presence {
        if !self.modules_enabled {
            return Presence::Missing;
        }
        match &self.index {
            Some((_, builtin)) if builtin.contains(module) => Presence::Present,
            Some((dep, _)) if dep.contains(module) => Presence::Loadable,
            Some(_) => Presence::Missing,
            None => Presence::Unknown,
        }
    }

    /// overlayfs: registered (built in or loaded), else loadable or not.
    pub fn overlay(&self) -> Presence {
        if self.overlay_registered {
            Presence::Present
        } else {
            self.loadable("overlay")
        }
    }

    /// Whether overlayfs is a module (loaded) rather than built in.
    pub fn overlay_is_module(&self) -> bool {
        self.overlay_is_module
    }

    /// CONFIG_KPROBES (it cannot be a module).
    pub fn kprobes(&self) -> Presence {
        match &self.symbols {
            Some(s) if s.contains("register_kprobe") => Presence::Present,
            Some(_) => Presence::Missing,
            None => Presence::Unknown,
        }
    }

    /// BPF ring buffer maps (kernel 5.8): the trace command's events.
    pub fn ring_buffers(&self) -> Presence {
        match &self.symbols {
            Some(s) if s.contains("bpf_ringbuf_reserve") => Presence::Present,
            Some(_) => Presence::Missing,
            None => Presence::Unknown,
        }
    }

    /// The quotactl system calls (CONFIG_QUOTACTL) and the quota core (CONFIG_QUOTA).
    pub fn quota_core(&self) -> (Presence, Presence) {
        let quotactl = match &self.symbols {
            Some(s) if s.contains("sys_quotactl") => Presence::Present,
            Some(_) => Presence::Missing,
            None => Presence::Unknown,
        };
        let core = match &self.symbols {
            Some(s) if s.contains("dquot_initialize") => Presence::Present,
            Some(_) => Presence::Missing,
            None => Presence::Unknown,
        };
        (quotactl, core)
    }

    /// ext4 project quotas: the quota core and the v2 quota format (CONFIG_QFMT_V2).
    pub fn ext4_quota(&self) -> Presence {
        match self.quota_core() {
            (Presence::Present, Presence::Present) => self.presence("v2_read_file_info", "quota_v2"),
            (q, c) => worst(q, c),
        }
    }

    /// XFS project quotas (CONFIG_XFS_QUOTA, part of the xfs module).
    pub fn xfs_quota(&self) -> Presence {
        let Some(s) = &self.symbols else { return Presence::Unknown };
        if s.contains("xfs_qm_scall_getquota") {
            Presence::Present
        } else if s.contains("xfs_fs_fill_super") {
            // XFS is there without its quota code.
            Presence::Missing
        } else {
            match self.loadable("xfs") {
                // Whether an unloaded xfs module has quota support cannot be told.
                Presence::Loadable => Presence::Unknown,
                p => p,
            }
        }
    }
}

/// The less available of two.
fn worst(a: Presence, b: Presence) -> Presence {
    let rank = |p| match p {
        Presence::Missing => 0,
        Presence::Unknown => 1,
        Presence::Loadable => 2,
        Presence::Present => 3,
    };
    if rank(a) <= rank(b) {
        a
    } else {
        b
    }
}

/// The wanted text symbols of kallsyms text; any `*sys_quotactl` counts as
/// `sys_quotactl` (the syscall wrappers carry an arch prefix).
pub fn wanted_symbols(text: &str) -> HashSet<String> {
    let mut found = HashSet::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(_), Some(kind), Some(name)) = (f.next(), f.next(), f.next()) else { continue };
        if !matches!(kind, "t" | "T") {
            continue;
        }
        if WANTED.contains(&name) {
            found.insert(name.to_owned());
        } else if name.ends_with("sys_quotactl") {
            found.insert("sys_quotactl".to_owned());
        }
    }
    found
}

/// Module names of modules.dep and modules.builtin under `dir`.
fn read_index(dir: &Path) -> Option<(HashSet<String>, HashSet<String>)> {
    let dep = std::fs::read_to_string(dir.join("modules.dep")).ok()?;
    let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let names = |text: &str, field: fn(&str) -> &str| -> HashSet<String> {
        text.lines().map(field).filter_map(module_name).collect()
    };
    Some((names(&dep, |l| l.split(':').next().unwrap_or("")), names(&builtin, str::trim)))
}

/// `kernel/fs/quota/quota_v2.ko.xz` -> `quota_v2` (dashes as underscores, as modprobe does).
fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let (name, _) = file.split_once(".ko")?;
    Some(name.replace('-', "_"))
}

/// A kernel described by its kallsyms text, module support, module index
/// (modules.dep, modules.builtin names) and whether overlay is registered.
#[cfg(test)]
pub(crate) fn for_test(
    kallsyms: &str,
    modules_enabled: bool,
    index: Option<(&[&str], &[&str])>,
    overlay_registered: bool,
) -> KernelFeatures {
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    KernelFeatures {
        release: "6.1.0-57-cloud-amd64".into(),
        machine: "x86_64".into(),
        symbols: Some(wanted_symbols(kallsyms)),
        modules_enabled,
        index: index.map(|(d, b)| (set(d), set(b))),
        overlay_registered,
        overlay_is_module: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(kallsyms: &str, modules_enabled: bool, index: Option<(&[&str], &[&str])>) -> KernelFeatures {
        for_test(kallsyms, modules_enabled, index, false)
    }

    /// This build machine's shape: no module support, CONFIG_QUOTA without
    /// QFMT_V2, XFS without quota, no kprobes.
    #[test]
    fn a_kernel_without_modules_misses_what_kallsyms_lacks() {
        let k = features(
            "ffffffff8179b780 T __x64_sys_quotactl\nffffffff817964d0 T dquot_initialize\n\
             ffffffff81000000 t xfs_fs_fill_super\nffffffff81000001 T bpf_ringbuf_reserve\n",
            false,
            None,
        );
        assert_eq!(k.kprobes(), Presence::Missing);
        assert_eq!(k.quota_core(), (Presence::Present, Presence::Present));
        assert_eq!(k.ext4_quota(), Presence::Missing);
        assert_eq!(k.xfs_quota(), Presence::Missing);
        assert_eq!(k.ring_buffers(), Presence::Present);
        assert_eq!(k.overlay(), Presence::Missing);
    }

    /// A Debian kernel: kprobes built in, quota_v2 and overlay as modules.
    #[test]
    fn modules_in_the_index_are_loadable() {
        let dep: &[&str] = &["quota_v2", "overlay", "xfs"];
        let k = features(
            "ffffffff81000000 T register_kprobe\nffffffff81000001 T __arm64_sys_quotactl\n\
             ffffffff81000002 T dquot_initialize\n",
            true,
            Some((dep, &["ext4"])),
        );
        assert_eq!(k.kprobes(), Presence::Present);
        assert_eq!(k.ext4_quota(), Presence::Loadable);
        assert_eq!(k.xfs_quota(), Presence::Unknown, "an unloaded xfs module: cannot tell");
        assert_eq!(k.overlay(), Presence::Loadable);
        let no_index =
            features("ffffffff81000002 T dquot_initialize\nffffffff81000003 T sys_quotactl\n", true, None);
        assert_eq!(no_index.ext4_quota(), Presence::Unknown);
    }

    #[test]
    fn module_names() {
        assert_eq!(module_name("kernel/fs/quota/quota_v2.ko.xz").as_deref(), Some("quota_v2"));
        assert_eq!(module_name("kernel/fs/overlayfs/overlay.ko").as_deref(), Some("overlay"));
        assert_eq!(module_name("kernel/drivers/x/snd-hda.ko.zst").as_deref(), Some("snd_hda"));
        assert_eq!(module_name("modules.order"), None);
    }
}
