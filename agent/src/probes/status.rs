//! What the probes report: why they are off (`Disabled`, classified by the
//! kernel's errno), each planned attachment and how it went, and the status the
//! collectors export (`metrics::ebpf`).

use super::plan::Mechanism;

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
}
