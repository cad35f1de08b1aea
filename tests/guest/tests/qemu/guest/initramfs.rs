//! The guests' initramfs (newc cpio): busybox, /init and the mode scripts
//! (tests/guest/initramfs), the configs, the static agent and helpers, the
//! overlay and loop modules; for mode `quota` its helper, modules and ext4
//! image too.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::arch::Arch;
use crate::common::repo_root;

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
}

/// Builds the initramfs for one kernel and mode in `dir`; returns its path.
pub fn build(arch: Arch, dir: &Path, kernel: &Path, mode: &str) -> PathBuf {
    let root = dir.join("root");
    for d in ["bin", "proc", "sys", "dev", "t", "tmp", "modes"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    let files = repo_root().join("tests/guest/initramfs");
    copy(&arch.busybox(kernel), &root.join("bin/busybox"));
    copy(&files.join("init.sh"), &root.join("init"));
    copy(&files.join("helpers.sh"), &root.join("helpers.sh"));
    for f in std::fs::read_dir(files.join("modes")).expect("tests/guest/initramfs/modes").flatten() {
        copy(&f.path(), &root.join("modes").join(f.file_name()));
    }
    for f in ["agent.yaml", "agent-bench.yaml"] {
        copy(&files.join(f), &root.join(f));
    }
    for bin in ["overlay-agent", "qemu-workload", "qemu-bare-probe", "qemu-btf-check"] {
        copy(&arch.musl(bin), &root.join(bin));
    }
    copy(&kernel.join("overlay.ko"), &root.join("overlay.ko"));
    copy(&kernel.join("loop.ko"), &root.join("loop.ko"));
    if mode == "quota" {
        quota_files(arch, &root, kernel);
    }
    std::fs::write(root.join("mode"), mode).expect("write mode");
    let cpio = dir.join("initramfs.cpio");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("cd '{}' && find . | cpio -o -H newc --quiet > '{}'", root.display(), cpio.display()))
        .status()
        .expect("cpio");
    assert!(status.success(), "building the initramfs failed");
    cpio
}

/// What mode `quota` adds to the initramfs: its configs and helper, the loop
/// and quota modules, and an ext4 image with project quotas made here
/// (e2fsprogs; this host's kernel cannot mount it read-write: no CONFIG_QUOTA).
fn quota_files(arch: Arch, root: &Path, kernel: &Path) {
    assert_eq!(arch, Arch::Amd64, "mode quota runs on x86_64 guests only (fetch-quota-modules.sh)");
    let version = kernel.file_name().and_then(|v| v.to_str()).expect("kernel version dir");
    let out = Command::new(repo_root().join("tests/guest/fetch-quota-modules.sh"))
        .arg(version)
        .arg(kernel.parent().expect("kernel cache"))
        .output()
        .expect("run fetch-quota-modules.sh");
    assert!(out.status.success(), "fetching quota modules failed:\n{}", String::from_utf8_lossy(&out.stderr));
    for f in ["agent-quota.yaml", "agent-walk.yaml"] {
        copy(&repo_root().join("tests/guest/initramfs").join(f), &root.join(f));
    }
    copy(&arch.musl("qemu-quota"), &root.join("qemu-quota"));
    std::fs::create_dir_all(root.join("quota")).expect("mkdir");
    for m in std::fs::read_dir(kernel.join("quota")).expect("quota modules").flatten() {
        if m.path().extension().is_some_and(|e| e == "ko") {
            copy(&m.path(), &root.join("quota").join(m.file_name()));
        }
    }
    // The benchmark (quota_mode_cost) needs room for its trees.
    let (size, inodes) = match quota_bench() {
        Some((mounts, files, big)) => {
            std::fs::write(root.join("quota-bench"), format!("{mounts} {files} {big}\n")).expect("write");
            let inodes = (big + mounts * (files + 8) + 4096) * 5 / 4;
            ((inodes as u64) * 3072 + (64 << 20), inodes)
        }
        None => (96 << 20, 24576),
    };
    let img = root.join("quota.img");
    std::fs::File::create(&img).and_then(|f| f.set_len(size)).expect("image file");
    let inodes = inodes.to_string();
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "1024", "-O", "quota,project", "-E", "quotatype=prjquota", "-N", &inodes])
        .arg(&img)
        .output()
        .expect("mkfs.ext4 not found: scripts/deps.sh installs e2fsprogs");
    assert!(out.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr));
}

/// OVERLAY_AGENT_QUOTA_BENCH="MOUNTS FILES BIG" turns mode `quota` into its benchmark.
pub fn quota_bench() -> Option<(usize, usize, usize)> {
    let v = std::env::var("OVERLAY_AGENT_QUOTA_BENCH").ok()?;
    let n: Vec<usize> = v.split_whitespace().filter_map(|p| p.parse().ok()).collect();
    match n[..] {
        [m, f, b] => Some((m, f, b)),
        _ => panic!("OVERLAY_AGENT_QUOTA_BENCH: want \"MOUNTS FILES BIG\", got {v:?}"),
    }
}
