//! This host as the tests see it: the repository, root or not, commands run to
//! completion, files written, deadlines, free ports.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The workspace root (the directory of Cargo.lock), from whichever of its
/// crates the test belongs to.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|d| d.join("Cargo.lock").exists())
        .expect("workspace root (the directory of Cargo.lock)")
        .to_owned()
}

/// Fails loudly when not root: these tests mount real overlays.
pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "integration tests mount overlays and must run as root (use the README's test command)"
    );
}

/// Runs a command, panicking with its output on failure.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `f` until it returns Some, or panics after `timeout` with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    wait_for_explained(what, timeout, f, String::new)
}

/// [`wait_for`], whose timeout panic ends with what `explain` says (the last
/// state `f` saw).
pub fn wait_for_explained<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
    explain: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}{}", explain());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `du` on a directory with extra flags; returns the first number.
pub fn du(flags: &[&str], dir: &Path) -> f64 {
    let out = run(Command::new("du").args(flags).arg(dir));
    out.split_whitespace().next().and_then(|n| n.parse().ok()).expect("du number")
}

/// Creates a file of `len` bytes of non-zero data.
pub fn write_file(path: &Path, len: usize) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(path, vec![b'x'; len]).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A busybox-static tree with `sh` and `sleep` under `tree`, tarred into `tar`:
/// an image's only layer.
pub fn busybox_layer_tar(tree: &Path, tar: &Path) {
    std::fs::create_dir_all(tree.join("bin")).expect("mkdir");
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).expect("busybox-static");
    for link in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(link)).expect("symlink");
    }
    run(Command::new("tar").arg("-C").arg(tree).arg("-cf").arg(tar).arg("."));
}
