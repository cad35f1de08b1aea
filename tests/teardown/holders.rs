//! What a process holds on a filesystem: descriptors and threads' working
//! directories, seen from /proc.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Whether process `pid` holds anything on device `dev`: a descriptor, or a
/// thread's working directory (both keep a mount busy).
pub fn holds(pid: u32, dev: u64) -> bool {
    let links = |dir: String, tail: &str| -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
        entries.filter_map(|e| e.ok()).map(|e| e.path().join(tail)).collect()
    };
    let mut all = links(format!("/proc/{pid}/task"), "cwd");
    all.extend(links(format!("/proc/{pid}/fd"), ""));
    all.iter().any(|p| std::fs::metadata(p).is_ok_and(|m| m.dev() == dev))
}

/// What `pid` holds on `dev`, for a failure message: descriptors and threads'
/// working directories, with the system call each thread is in.
pub fn diag(pid: u32, dev: u64) -> String {
    let on_dev = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.dev() == dev);
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten() {
        if on_dev(&e.path()) {
            out.push(format!("fd {:?}", std::fs::read_link(e.path()).unwrap_or_default()));
        }
    }
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        if on_dev(&e.path().join("cwd")) {
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            let call = std::fs::read_to_string(e.path().join("syscall")).unwrap_or_default();
            let nr = call.split_whitespace().next().unwrap_or("?").to_owned();
            out.push(format!(
                "thread {} cwd {:?} syscall {nr}",
                comm.trim(),
                std::fs::read_link(e.path().join("cwd")).unwrap_or_default()
            ));
        }
    }
    format!("the agent holds: [{}]", out.join(", "))
}

/// Waits until `pid` holds nothing on `dev`; false after `limit`.
pub fn lets_go(pid: u32, dev: u64, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while holds(pid, dev) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}
