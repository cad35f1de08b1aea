//! One guest run: the kernels to boot, the kernel fetched (once, cached), the
//! initramfs built for a mode, the boot under TCG, and the console's marked
//! sections.

mod arch;
mod boot;
mod console;
mod initramfs;

use std::path::PathBuf;
use std::process::Command;

use crate::common::repo_root;

pub use arch::{arm64_kernels, Arch};
pub use console::{hang, marker_value, section, section_of};
pub use initramfs::quota_bench;

const KERNELS: &[&str] = &["5.10", "6.1", "6.12", "7.2"];

/// The kernels to boot: OVERLAY_AGENT_QEMU_KERNELS (e.g. "6.1"), else all four.
/// Panics when the variable names none: a test over no kernel tests nothing.
pub fn kernels() -> Vec<String> {
    let kernels: Vec<String> = match std::env::var("OVERLAY_AGENT_QEMU_KERNELS") {
        Ok(v) => v.split_whitespace().map(str::to_owned).collect(),
        Err(_) => KERNELS.iter().map(|s| s.to_string()).collect(),
    };
    assert!(!kernels.is_empty(), "OVERLAY_AGENT_QEMU_KERNELS names no kernel (want some of {KERNELS:?})");
    kernels
}

/// Fetches (once, cached) the kernel and its overlay module.
fn fetch(arch: Arch, version: &str) -> PathBuf {
    let cache = repo_root().join(".cache/kernels");
    let out = Command::new(repo_root().join("tests/guest/fetch-kernel.sh"))
        .arg(version)
        .arg(&cache)
        .arg(arch.debian())
        .output()
        .expect("run fetch-kernel.sh");
    assert!(
        out.status.success(),
        "fetching kernel {version} ({}) failed:\n{}",
        arch.debian(),
        String::from_utf8_lossy(&out.stderr)
    );
    arch.kernel_dir(&cache, version)
}

/// Fetches the kernel, builds the initramfs for `mode`, boots it and returns the
/// console output (LF line ends) and where it was saved.
pub fn run_guest(version: &str, mode: &str, log_name: &str) -> (String, PathBuf) {
    run_guest_on(Arch::Amd64, version, mode, log_name)
}

/// The same on a guest of `arch` (arm64 logs are named `LOG_NAME-arm64-VERSION.log`).
pub fn run_guest_on(arch: Arch, version: &str, mode: &str, log_name: &str) -> (String, PathBuf) {
    let kernel = fetch(arch, version);
    let dir = tempfile::tempdir().expect("tempdir");
    let initrd = initramfs::build(arch, dir.path(), &kernel, mode);
    let log = match arch {
        Arch::Amd64 => repo_root().join(format!("target/{log_name}-{version}.log")),
        Arch::Arm64 => repo_root().join(format!("target/{log_name}-arm64-{version}.log")),
    };
    // The recorded storm copies up to 48,000 files of 12 KiB into a tmpfs.
    let memory_mib = if mode == "storm" {
        2048
    } else if mode == "quota" && quota_bench().is_some() {
        3072 // the benchmark's image is in the initramfs
    } else {
        1024
    };
    let console = boot::boot(arch, &kernel, &initrd, &log, memory_mib).replace("\r\n", "\n");
    // The guest kernel itself can die while booting under TCG, before /init runs
    // (seen on 7.2: an int3 Oops in the scheduler while the kernel patches its own
    // text on the second vCPU). That is the emulator, not the agent: boot once
    // more, keep the first console, and say so. A second crash fails the test.
    if !console.contains("=== KERNEL") && console.contains("Kernel panic") {
        let first = log.with_extension("crashed-boot.log");
        let _ = std::fs::rename(&log, &first);
        eprintln!(
            "kernel {version}: the guest kernel panicked before /init ({}); booting again",
            first.display()
        );
        let console = boot::boot(arch, &kernel, &initrd, &log, memory_mib).replace("\r\n", "\n");
        return (console, log);
    }
    (console, log)
}
