//! Files of known sizes in the lower layers, paths and return codes for the
//! raw system calls, and overlay mounts whose outcome the host asserts.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

/// `len` bytes at `dir/name` (parents made as needed).
pub fn file(dir: &Path, name: &str, len: usize) {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    File::create(&p).and_then(|mut f| f.write_all(&vec![b'o'; len])).expect("write lower file");
}

/// A libc return code as a Result.
pub fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub fn cpath(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path without NUL")
}

/// What the kernel answered to a mount attempt, as the host's checks read it:
/// `=== OUTCOME WHAT ok`, or `=== OUTCOME WHAT ERRNO` (EINVAL, ENOSYS, ...).
pub fn outcome<T>(what: &str, r: &std::io::Result<T>) {
    let said = match r {
        Ok(_) => "ok".to_owned(),
        Err(e) => errno_name(e),
    };
    println!("=== OUTCOME {what} {said}");
}

/// The symbolic name of an error's errno (`errno N` for the ones not listed).
fn errno_name(e: &std::io::Error) -> String {
    let names = [
        (libc::EINVAL, "EINVAL"),
        (libc::ENOSYS, "ENOSYS"),
        (libc::EPERM, "EPERM"),
        (libc::EOPNOTSUPP, "EOPNOTSUPP"),
        (libc::ENOENT, "ENOENT"),
        (libc::EBUSY, "EBUSY"),
        (libc::EBADF, "EBADF"),
    ];
    match e.raw_os_error() {
        Some(n) => {
            names.iter().find(|(c, _)| *c == n).map_or_else(|| format!("errno{n}"), |(_, s)| s.to_string())
        }
        None => format!("error({e})"),
    }
}

/// Mounts an overlay at `target` with mount(2) and `options` as its data.
pub fn mount_overlay(target: &Path, options: &str) -> std::io::Result<()> {
    let data = std::ffi::CString::new(options).map_err(std::io::Error::other)?;
    rustix::mount::mount("overlay", target, "overlay", rustix::mount::MountFlags::empty(), data.as_c_str())
        .map_err(std::io::Error::from)
}

/// Whether `dir` is a mountpoint of this namespace (/proc/self/mountinfo; no
/// mountpoint of the guest's needs unescaping).
pub fn mounted(dir: &Path) -> bool {
    let want = dir.as_os_str().as_encoded_bytes();
    fs::read("/proc/self/mountinfo")
        .unwrap_or_default()
        .split(|&b| b == b'\n')
        .any(|l| l.split(|&b| b == b' ').nth(4) == Some(want))
}
