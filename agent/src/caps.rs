//! The agent's own capabilities, checked once at start: without CAP_SYS_ADMIN the
//! kernel hides `trusted.*` xattrs from listxattr, so copied-up files would look
//! created; without CAP_DAC_READ_SEARCH, upper dirs of other users cannot be walked.

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_ADMIN: u32 = 21;

/// Effective capability set from `/proc/self/status`.
pub fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Logs a warning for each capability whose absence makes figures wrong.
pub fn warn_if_missing() {
    let Some(caps) = effective() else {
        tracing::warn!("cannot read the agent's capabilities from /proc/self/status");
        return;
    };
    if caps & (1 << CAP_SYS_ADMIN) == 0 {
        tracing::warn!(
            "no CAP_SYS_ADMIN: trusted.overlay.* xattrs are invisible, so copied-up, metacopy and \
             opaque entries of upper dirs count as created/dir (mounts with userxattr are not affected)"
        );
    }
    if caps & (1 << CAP_DAC_READ_SEARCH) == 0 {
        tracing::warn!(
            "no CAP_DAC_READ_SEARCH: upper dirs the agent may not read are reported as permission_denied"
        );
    }
}
