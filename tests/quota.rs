//! Project-quota mode (`scan.quota`) on this host's real mounts. This host's kernel
//! has no quota support: the agent must say so and walk. The quota mode itself runs
//! in the QEMU guests (tests/guest, mode `quota`), whose kernels have quotas.
//!
//! Needs root, xfsprogs and e2fsprogs (scripts/deps.sh installs them).

mod common;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{config_for, du, run, write_file, Metrics, Overlay};

/// A loop-mounted filesystem image, unmounted on drop.
struct LoopMount(PathBuf);

impl LoopMount {
    fn xfs(dir: &Path) -> LoopMount {
        let img = dir.join("xfs.img");
        let f = std::fs::File::create(&img).expect("create image");
        f.set_len(300 << 20).expect("sparse image"); // mkfs.xfs's minimum size
        run(Command::new("mkfs.xfs").arg("-q").arg(&img));
        let mnt = dir.join("xfs");
        std::fs::create_dir_all(&mnt).expect("mkdir");
        run(Command::new("mount").args(["-o", "loop"]).arg(&img).arg(&mnt));
        LoopMount(mnt)
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The kernel has quota support for the filesystem on `mnt`: quotactl(2) on its
/// block device says ENOSYS when the syscall or the filesystem's quota operations
/// are not built in (this host: CONFIG_QUOTA unset, XFS without XFS_QUOTA).
fn kernel_has_quota(mnt: &Path) -> bool {
    let dev = run(Command::new("findmnt").args(["-no", "SOURCE"]).arg(mnt));
    let dev = std::ffi::CString::new(dev.trim()).expect("device path");
    let mut q = [0u8; 128];
    // SAFETY: Q_GETQUOTA writes at most one struct if_dqblk (72 bytes) into q.
    let r =
        unsafe { libc::quotactl(libc::QCMD(libc::Q_GETQUOTA, 2), dev.as_ptr(), 42, q.as_mut_ptr().cast()) };
    !(r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS))
}

fn once(cfg: &Path) -> Metrics {
    Metrics::parse(&run(Command::new(common::BIN).args(["--config", cfg.to_str().expect("utf8"), "once"])))
}

#[test]
fn without_quota_support_the_agent_says_why_and_walks() {
    common::require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let fs = LoopMount::xfs(tmp.path());
    // Docker's layout: the project id on the layer dir; diff/ and work/ inherit it.
    let layer = fs.0.join("layer");
    std::fs::create_dir(&layer).expect("mkdir");
    run(Command::new("chattr").args(["-p", "42", "+P"]).arg(&layer));
    let ov = Overlay::new(&layer, "merged", "", |l| write_file(&l.join("f"), 10_000));
    let tagged = run(Command::new("lsattr").args(["-pd"]).arg(&ov.upper));
    assert!(tagged.trim_start().starts_with("42 "), "the upper dir inherits project id 42: {tagged}");
    write_file(&ov.merged.join("new/file"), 50_000);
    std::fs::write(ov.merged.join("f"), b"changed").expect("copy-up");
    // And an upper dir on tmpfs: no project id at all.
    let plain = Overlay::new(&tmp.path().join("plain"), "merged", "", |_| {});
    write_file(&plain.merged.join("g"), 10);
    // A mount point whose name is not UTF-8 elsewhere in the table: the block
    // device is still found (it once hid every one, and the reason read
    // "not_accounted" on a kernel without quota support).
    let odd = tmp.path().join(std::ffi::OsStr::from_bytes(b"odd \xff"));
    std::fs::create_dir(&odd).expect("mkdir");
    run(Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(&odd));
    let _odd = common::Bind(odd);

    let base = tmp.path();
    let m = once(&config_for(base, ""));
    let mp = ov.merged.display().to_string();
    let want = if kernel_has_quota(&fs.0) { "not_accounted" } else { "kernel_without_quota" };
    assert_eq!(
        m.get(
            "overlayfs_upper_usage_source_info",
            &[("mountpoint", &mp), ("source", "walk"), ("reason", want)]
        ),
        Some(1.0),
        "{:?}",
        m.count("overlayfs_upper_usage_source_info", &[("mountpoint", &mp)])
    );
    assert_eq!(m.count("overlayfs_upper_quota_project_id", &[]), 0, "no quota mode anywhere");
    // The walk's figures, as du gives them.
    assert_eq!(m.get("overlayfs_upper_bytes", &[("mountpoint", &mp)]), Some(du(&["-s", "-B1"], &ov.upper)));
    assert_eq!(
        m.get("overlayfs_upper_inodes", &[("mountpoint", &mp)]),
        Some(du(&["-s", "--inodes"], &ov.upper))
    );
    let pmp = plain.merged.display().to_string();
    let reasons = ["no_project_id", "no_project_ids"];
    let found = reasons.iter().find(|r| {
        m.get("overlayfs_upper_usage_source_info", &[("mountpoint", &pmp), ("source", "walk"), ("reason", r)])
            == Some(1.0)
    });
    assert!(found.is_some(), "tmpfs upper dir: no project id");

    // scan.quota: false says so.
    let m = once(&config_for(base, "  quota: false\n"));
    assert_eq!(
        m.get(
            "overlayfs_upper_usage_source_info",
            &[("mountpoint", &mp), ("source", "walk"), ("reason", "disabled")]
        ),
        Some(1.0)
    );
    drop((ov, plain));
}
