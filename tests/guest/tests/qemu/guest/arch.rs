//! The guest's architecture: which Debian kernels, QEMU, console and static
//! binaries a guest of it uses. x86_64 guests run every mode; arm64 guests run
//! mode `agent` (exact_counts) on the kernels of [`arm64_kernels`].

use std::path::{Path, PathBuf};

use crate::common::repo_root;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Amd64,
    Arm64,
}

/// The arm64 kernels booted by default: Debian 12's two (6.1 and the 6.12 of
/// bookworm's point releases).
const ARM64_KERNELS: &[&str] = &["6.1", "6.12"];

/// The arm64 kernels to boot: OVERLAY_AGENT_QEMU_ARM64_KERNELS (e.g. "6.1"),
/// else 6.1 and 6.12. Panics when the variable names none.
pub fn arm64_kernels() -> Vec<String> {
    let kernels: Vec<String> = match std::env::var("OVERLAY_AGENT_QEMU_ARM64_KERNELS") {
        Ok(v) => v.split_whitespace().map(str::to_owned).collect(),
        Err(_) => ARM64_KERNELS.iter().map(|s| s.to_string()).collect(),
    };
    assert!(
        !kernels.is_empty(),
        "OVERLAY_AGENT_QEMU_ARM64_KERNELS names no kernel (want some of {ARM64_KERNELS:?})"
    );
    kernels
}

impl Arch {
    /// Debian's name, as fetch-kernel.sh takes it.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// Where fetch-kernel.sh leaves kernel `version` under the cache.
    pub fn kernel_dir(self, cache: &Path, version: &str) -> PathBuf {
        match self {
            Arch::Amd64 => cache.join(version),
            Arch::Arm64 => cache.join("arm64").join(version),
        }
    }

    /// A static (musl) binary of this arch that scripts/test.sh builds.
    pub fn musl(self, name: &str) -> PathBuf {
        let triple = match self {
            Arch::Amd64 => "x86_64-unknown-linux-musl",
            Arch::Arm64 => "aarch64-unknown-linux-musl",
        };
        let p = repo_root().join("target").join(triple).join("release").join(name);
        assert!(
            p.exists(),
            "{} missing: scripts/test.sh builds it (cargo build --release --target {triple})",
            p.display()
        );
        p
    }

    /// The busybox for the initramfs: the host's (busybox-static), or the one
    /// fetch-kernel.sh took from Debian's arm64 busybox-static.
    pub fn busybox(self, kernel: &Path) -> PathBuf {
        match self {
            Arch::Amd64 => PathBuf::from("/bin/busybox"),
            Arch::Arm64 => kernel.join("busybox"),
        }
    }

    /// The QEMU command line up to the kernel: machine, CPU and the kernel's
    /// command line. arm64: the `virt` board, a PL011 console (ttyAMA0).
    pub fn qemu(self) -> (&'static str, Vec<&'static str>, &'static str) {
        match self {
            // tsc=reliable: under TCG the kernel's watchdog otherwise moves to hpet
            // when the host is busy, and every clock read (bpf_ktime_get_ns) becomes
            // an emulated MMIO access of ~15 us: native machines keep the TSC.
            Arch::Amd64 => (
                "qemu-system-x86_64",
                vec!["-accel", "tcg", "-cpu", "max"],
                "console=ttyS0 panic=-1 loglevel=3 rdinit=/init tsc=reliable",
            ),
            // The generic timer is the clock on arm64: nothing to pin.
            Arch::Arm64 => (
                "qemu-system-aarch64",
                vec!["-accel", "tcg", "-M", "virt", "-cpu", "cortex-a57"],
                "console=ttyAMA0 panic=-1 loglevel=3 rdinit=/init",
            ),
        }
    }
}
