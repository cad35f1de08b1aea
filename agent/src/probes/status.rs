//! What the probes report: why they are off (`Disabled`, classified by the
//! kernel's errno, or predicted from the kernel's features), what to do about
//! it, each planned attachment and how it went, and the status the collectors
//! export (`metrics::ebpf`). `overlay-agent check` prints the same reasons.

use super::plan::Mechanism;
use crate::kernel::features::{KernelFeatures, Presence};

/// Why the probes are off. `reason()` is the bounded label value of
/// `overlayfs_ebpf_disabled_info`; the message carries the details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Disabled {
    #[error("the kernel has no kprobes: {0}")]
    KprobesUnavailable(String),
    #[error("not permitted (run as root, or with CAP_BPF + CAP_PERFMON): {0}")]
    NoPrivileges(String),
    #[error("overlayfs is not loaded yet: {0}")]
    NoOverlay(String),
    #[error("kernel BTF: {0}")]
    NoBtf(String),
    #[error("cannot read kallsyms: {0}")]
    NoKallsyms(String),
    #[error("loading the eBPF object: {0}")]
    LoadFailed(String),
    #[error("{0}")]
    AttachFailed(String),
    #[error("ebpf.enabled: false")]
    DisabledByConfig,
}

impl Disabled {
    /// The `reason` label: the one place a cause of "off" becomes a string.
    pub fn reason(&self) -> &'static str {
        match self {
            Disabled::KprobesUnavailable(_) => "kprobes_unavailable",
            Disabled::NoPrivileges(_) => "no_privileges",
            Disabled::NoOverlay(_) => "no_overlay",
            Disabled::NoBtf(_) => "no_btf",
            Disabled::NoKallsyms(_) => "no_kallsyms",
            Disabled::LoadFailed(_) => "load_failed",
            Disabled::AttachFailed(_) => "attach_failed",
            Disabled::DisabledByConfig => "disabled_by_config",
        }
    }

    /// The exact remedy: printed by `overlay-agent check` and logged with the
    /// reason when the probes stay off.
    pub fn remedy(&self) -> &'static str {
        match self {
            Disabled::KprobesUnavailable(_) => {
                "boot a kernel built with CONFIG_KPROBES=y and CONFIG_KPROBE_EVENTS=y (Debian, Ubuntu, \
                 RHEL and Fedora kernels have both); until then every metric but the copy-up counts is served"
            }
            Disabled::NoPrivileges(_) => {
                "run as root, or grant CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE, plus CAP_SYS_ADMIN where \
                 kernel.perf_event_paranoid is above 2 (Debian and Ubuntu boot with 3 and 4; or \
                 `sysctl kernel.perf_event_paranoid=2`); the packaged systemd unit and the Helm chart grant them"
            }
            Disabled::NoOverlay(_) => {
                "`modprobe overlay` (the agent attaches the probes when the module appears); to load it at \
                 boot: `echo overlay > /etc/modules-load.d/overlay.conf`"
            }
            Disabled::NoBtf(_) => {
                "boot a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian 11+, Ubuntu 20.10+, RHEL 8.2+); \
                 in a container, mount the host's /sys/kernel/btf read-only"
            }
            Disabled::NoKallsyms(_) => "mount procfs at /proc (the agent reads function names from /proc/kallsyms)",
            Disabled::LoadFailed(_) | Disabled::AttachFailed(_) => {
                "the detail names what the kernel refused: check that the kernel is 5.8 or newer and that \
                 /sys/kernel/security/lockdown is not [confidentiality]; otherwise report the detail and \
                 `uname -r` to the project"
            }
            Disabled::DisabledByConfig => "set `ebpf.enabled: true` in the config file (the default)",
        }
    }

    /// What the kernel's features and the agent's capabilities say before any
    /// load or attach, in the order a start meets them (kallsyms, overlay, BTF,
    /// privileges, kprobes): the reason the probes would report. `caps` is the
    /// effective set; `vmlinux_btf` whether /sys/kernel/btf/vmlinux exists.
    pub fn predict(k: &KernelFeatures, vmlinux_btf: bool, caps: Option<u64>) -> Option<Disabled> {
        const CAP_SYS_ADMIN: u32 = 21;
        const CAP_PERFMON: u32 = 38;
        const CAP_BPF: u32 = 39;
        let has = |c: u32| caps.is_some_and(|v| v & (1 << c) != 0);
        if !k.kallsyms_readable() {
            return Some(Disabled::NoKallsyms("/proc/kallsyms cannot be read".into()));
        }
        if k.overlay() != Presence::Present {
            return Some(Disabled::NoOverlay("overlay is not in /proc/filesystems".into()));
        }
        if !vmlinux_btf {
            return Some(Disabled::NoBtf("no /sys/kernel/btf/vmlinux".into()));
        }
        let missing: Vec<&str> = [("CAP_BPF", CAP_BPF), ("CAP_PERFMON", CAP_PERFMON)]
            .into_iter()
            .filter(|(_, c)| !has(*c) && !has(CAP_SYS_ADMIN))
            .map(|(n, _)| n)
            .collect();
        if !missing.is_empty() {
            return Some(Disabled::NoPrivileges(format!("no {} (nor CAP_SYS_ADMIN)", missing.join(", "))));
        }
        if k.kprobes() == Presence::Missing {
            return Some(Disabled::KprobesUnavailable(
                "CONFIG_KPROBES is not set: no register_kprobe".into(),
            ));
        }
        None
    }

    /// Classifies a failed load or attach by the kernel's errno (found in the
    /// error's source chain), not by its text.
    pub(super) fn from_error(e: &(dyn std::error::Error + 'static), detail: String) -> Disabled {
        Disabled::from_errno(errno(e), detail)
    }

    pub(super) fn from_errno(errno: Option<i32>, detail: String) -> Disabled {
        match errno {
            Some(libc::EPERM | libc::EACCES) => Disabled::NoPrivileges(detail),
            Some(libc::ENOENT | libc::EOPNOTSUPP) => Disabled::KprobesUnavailable(detail),
            _ => Disabled::AttachFailed(detail),
        }
    }
}

/// The OS error code anywhere in an error's source chain.
pub(super) fn errno(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if let Some(n) = io.raw_os_error() {
                return Some(n);
            }
        }
        cur = c.source();
    }
    None
}

/// One planned attachment and how it went.
#[derive(Debug, Clone)]
pub struct AttachState {
    pub program: &'static str,
    pub function: Option<&'static str>,
    pub mechanism: Mechanism,
    pub attached: bool,
    pub error: Option<String>,
    /// The kernel's errno when attaching failed.
    pub errno: Option<i32>,
    /// Without it nothing can be counted.
    pub core: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ProbeStatus {
    pub enabled: bool,
    pub disabled: Option<Disabled>,
    pub attachments: Vec<AttachState>,
    /// Whether per-mount histograms are being recorded.
    pub per_mount_histograms: bool,
}

/// A status with the probes off for `why`.
pub(super) fn disabled(why: Disabled) -> ProbeStatus {
    ProbeStatus { disabled: Some(why), ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_come_from_the_errno() {
        let eperm = std::io::Error::from_raw_os_error(libc::EPERM);
        assert_eq!(Disabled::from_error(&eperm, String::new()).reason(), "no_privileges");
        let enoent = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(Disabled::from_error(&enoent, String::new()).reason(), "kprobes_unavailable");
        let other = std::io::Error::other("weird");
        assert_eq!(Disabled::from_error(&other, String::new()).reason(), "attach_failed");
        assert_eq!(Disabled::DisabledByConfig.to_string(), "ebpf.enabled: false");
    }

    /// The prediction meets the causes in a start's order, with the same reasons.
    #[test]
    fn predictions_use_the_same_reasons() {
        use crate::kernel::features::for_test;
        let root = Some(u64::MAX);
        let kallsyms = "ffffffff81000000 T register_kprobe\n";
        let ok = for_test(kallsyms, true, None, true);
        assert_eq!(Disabled::predict(&ok, true, root), None);
        fn reason(k: &KernelFeatures, btf: bool, caps: Option<u64>) -> Option<&'static str> {
            Disabled::predict(k, btf, caps).map(|d| d.reason())
        }
        assert_eq!(reason(&for_test("", false, None, true), true, root), Some("kprobes_unavailable"));
        assert_eq!(reason(&for_test(kallsyms, true, None, false), true, root), Some("no_overlay"));
        assert_eq!(reason(&ok, false, root), Some("no_btf"));
        let bpf_perfmon = Some((1 << 38) | (1 << 39));
        assert_eq!(reason(&ok, true, bpf_perfmon), None);
        assert_eq!(reason(&ok, true, Some(1 << 39)), Some("no_privileges"));
        assert_eq!(reason(&ok, true, Some(1 << 21)), None, "CAP_SYS_ADMIN covers both");
        for d in [Disabled::KprobesUnavailable(String::new()), Disabled::NoPrivileges(String::new())] {
            assert!(d.remedy().len() > 40, "{}: {}", d.reason(), d.remedy());
        }
    }
}
