//! Return probes with an explicit `maxactive`. aya creates kretprobes through
//! perf_event_open, where the kernel fixes maxactive at max(10, 2 x CPUs):
//! more copy-ups sleeping at once than that lose their returns. A kretprobe
//! defined in tracefs (`r4096:group/event function`) takes the count; the
//! loaded program is attached to its perf event with PERF_EVENT_IOC_SET_BPF.
//! Hand-written because no aya release sets maxactive.
//!
//! Lifecycle: the event is named after the agent's pid; it is removed on drop
//! (exit), and events of dead agents (SIGKILL) are removed at start. The
//! kernel's miss count for the event is in `kprobe_profile`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// KRETPROBE_MAXACTIVE_MAX in kernel/trace/trace_kprobe.c.
pub const MAXACTIVE: u32 = 4096;
const GROUP: &str = "overlay_agent";

#[derive(Debug, thiserror::Error)]
pub enum RetprobeError {
    #[error("no tracefs with kprobe_events (mount tracefs at /sys/kernel/tracing)")]
    NoTracefs,
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{call}: {source}")]
    Sys { call: &'static str, source: std::io::Error },
}

impl RetprobeError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            RetprobeError::NoTracefs => Some(libc::ENOENT),
            RetprobeError::Io { source, .. } | RetprobeError::Sys { source, .. } => source.raw_os_error(),
        }
    }
}

/// The tracefs directory with kprobe_events.
pub fn tracefs() -> Option<PathBuf> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("kprobe_events").exists())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RetprobeError + '_ {
    move |source| RetprobeError::Io { path: path.display().to_string(), source }
}

fn append(tracefs: &Path, line: &str) -> Result<(), RetprobeError> {
    let path = tracefs.join("kprobe_events");
    let mut f = OpenOptions::new().append(true).open(&path).map_err(io(&path))?;
    f.write_all(format!("{line}\n").as_bytes()).map_err(io(&path))
}

/// Event name: `<program>_<pid>`.
fn event_name(program: &str, pid: u32) -> String {
    format!("{program}_{pid}")
}

/// Removes the return-probe events of agents that are no longer running.
pub fn remove_stale(tracefs: &Path) {
    let Ok(text) = std::fs::read_to_string(tracefs.join("kprobe_events")) else { return };
    for line in text.lines() {
        // "r4096:overlay_agent/one_exit_123 ovl_copy_up_one"
        let Some(event) = line.split_whitespace().next().and_then(|d| d.split(':').nth(1)) else { continue };
        let Some(name) = event.strip_prefix(&format!("{GROUP}/")) else { continue };
        let Some(pid) = name.rsplit('_').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match append(tracefs, &format!("-:{event}")) {
            Ok(()) => tracing::info!(event, "removed a stale return probe left by a killed agent"),
            Err(e) => tracing::warn!(event, error = %e, "cannot remove a stale return probe"),
        }
    }
}

/// perf_event_attr up to PERF_ATTR_SIZE_VER0 (include/uapi/linux/perf_event.h).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
/// _IO('$', 0) and _IOW('$', 8, __u32).
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;

/// A tracefs kretprobe with the program attached. Dropping it detaches the
/// program (closing the perf event) and removes the event.
pub struct Retprobe {
    tracefs: PathBuf,
    /// The program attached (the metrics' `probe` label).
    pub program: String,
    /// group/name in tracefs.
    pub event: String,
    perf: Option<OwnedFd>,
}

impl Retprobe {
    /// Defines `r<MAXACTIVE>:overlay_agent/<program>_<pid> <function>` and
    /// attaches the loaded program `prog`.
    pub fn attach(
        tracefs: &Path,
        program: &str,
        function: &str,
        prog: BorrowedFd<'_>,
    ) -> Result<Retprobe, RetprobeError> {
        let name = event_name(program, std::process::id());
        let event = format!("{GROUP}/{name}");
        append(tracefs, &format!("r{MAXACTIVE}:{event} {function}"))?;
        // From here on, Drop removes the event whatever fails next.
        let mut probe =
            Retprobe { tracefs: tracefs.to_owned(), program: program.to_owned(), event, perf: None };
        let id_path = tracefs.join("events").join(GROUP).join(&name).join("id");
        let id: u64 = std::fs::read_to_string(&id_path)
            .map_err(io(&id_path))?
            .trim()
            .parse()
            .map_err(|e| io(&id_path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        let attr = PerfEventAttr {
            type_: PERF_TYPE_TRACEPOINT,
            size: std::mem::size_of::<PerfEventAttr>() as u32,
            config: id,
            sample_period: 1,
            wakeup_events: 1,
            ..Default::default()
        };
        // SAFETY: a valid perf_event_attr of the size given; pid -1, cpu 0: the
        // program runs on every CPU (it hangs off the trace event, not the fd).
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &attr as *const PerfEventAttr,
                -1 as libc::pid_t,
                0 as libc::c_int,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(RetprobeError::Sys {
                call: "perf_event_open",
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: a new fd that nothing else owns.
        let perf = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        for (call, req, arg) in [
            ("PERF_EVENT_IOC_SET_BPF", PERF_EVENT_IOC_SET_BPF, prog.as_raw_fd()),
            ("PERF_EVENT_IOC_ENABLE", PERF_EVENT_IOC_ENABLE, 0),
        ] {
            // SAFETY: ioctls on our perf fd with an int argument.
            if unsafe { libc::ioctl(perf.as_raw_fd(), req as _, arg) } != 0 {
                return Err(RetprobeError::Sys { call, source: std::io::Error::last_os_error() });
            }
        }
        probe.perf = Some(perf);
        Ok(probe)
    }

    /// Where the kernel counts this event's hits and misses.
    pub fn tracefs_profile(&self) -> PathBuf {
        self.tracefs.join("kprobe_profile")
    }
}

/// The kernel's (hits, misses) of `event` (group/name), from kprobe_profile.
pub fn profile(kprobe_profile: &Path, event: &str) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(kprobe_profile).ok()?;
    parse_profile(&text, event.rsplit('/').next()?)
}

/// One event's (hits, misses) in kprobe_profile's text ("  name  hits  misses").
pub fn parse_profile(text: &str, name: &str) -> Option<(u64, u64)> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.as_slice() {
            [n, hits, misses] if *n == name || n.ends_with(&format!("/{name}")) => {
                Some((hits.parse().ok()?, misses.parse().ok()?))
            }
            _ => None,
        }
    })
}

impl Drop for Retprobe {
    fn drop(&mut self) {
        // The event cannot be removed while a perf event holds it.
        drop(self.perf.take());
        if let Err(e) = append(&self.tracefs, &format!("-:{}", self.event)) {
            tracing::warn!(event = %self.event, error = %e, "cannot remove the return probe event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_lines() {
        let text =
            "  one_exit_42                                      17               3\n  other_1   5   0\n";
        assert_eq!(parse_profile(text, "one_exit_42"), Some((17, 3)));
        assert_eq!(parse_profile(text, "one_exit_4"), None);
        assert_eq!(event_name("one_exit", 42), "one_exit_42");
    }
}
