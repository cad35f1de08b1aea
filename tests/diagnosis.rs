//! The mount and kernel facts of the diagnosis on real mounts of this host:
//! `metacopy` on and off, a lower layer on an idmapped mount (made here with
//! open_tree, mount_setattr(MOUNT_ATTR_IDMAP) and move_mount, with the user
//! namespace of a child `unshare -U`), and overlay's kernel features, read by
//! `overlay-agent once`. The image labels of real podman and Docker containers
//! are checked in tests/runtimes.rs, which starts the daemons.

mod common;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Metrics, Overlay, BIN};

fn agent_once(dir: &Path) -> Metrics {
    let cfg = common::config_for(dir, "");
    let out = common::run(Command::new(BIN).arg("--config").arg(&cfg).arg("once"));
    common::promtool_check(&out);
    Metrics::parse(&out)
}

fn info_label(m: &Metrics, mp: &Path, label: &str) -> String {
    let mp = mp.display().to_string();
    let (labels, _) = m
        .series("overlayfs_mount_info")
        .into_iter()
        .find(|(l, _)| l.get("mountpoint") == Some(&mp))
        .unwrap_or_else(|| panic!("no overlayfs_mount_info for {mp}:\n{}", m.text));
    labels.get(label).cloned().unwrap_or_else(|| panic!("{mp}: no label {label}"))
}

/// `struct mount_attr` of linux/mount.h (mount_setattr(2)).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// A child in a user namespace of its own that maps 0-65535 to 100000-165535.
struct UsernsChild(Child);

impl UsernsChild {
    fn start() -> UsernsChild {
        let child = Command::new("unshare")
            .args(["--user", "sleep", "600"])
            .stdout(Stdio::null())
            .spawn()
            .expect("unshare --user");
        let pid = child.id();
        let ours = std::fs::read_link("/proc/self/ns/user").expect("our user ns");
        common::wait_for("the child's user namespace", Duration::from_secs(10), || {
            let theirs = std::fs::read_link(format!("/proc/{pid}/ns/user")).ok()?;
            (theirs != ours).then_some(())
        });
        for map in ["uid_map", "gid_map"] {
            std::fs::write(format!("/proc/{pid}/{map}"), "0 100000 65536\n").expect(map);
        }
        UsernsChild(child)
    }

    fn ns_fd(&self) -> OwnedFd {
        std::fs::File::open(format!("/proc/{}/ns/user", self.0.id())).expect("open ns/user").into()
    }
}

impl Drop for UsernsChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An idmapped bind of `src` at `target` (unmounted on drop).
struct IdmappedBind(PathBuf);

impl IdmappedBind {
    fn new(src: &Path, target: &Path, userns: &OwnedFd) -> IdmappedBind {
        use rustix::mount::{move_mount, open_tree, MoveMountFlags, OpenTreeFlags};
        std::fs::create_dir_all(target).expect("mkdir target");
        let tree = open_tree(
            rustix::fs::CWD,
            src,
            OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
        )
        .expect("open_tree");
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_IDMAP,
            attr_clr: 0,
            propagation: 0,
            userns_fd: userns.as_raw_fd() as u64,
        };
        // SAFETY: a valid fd, a NUL-terminated empty path, and a mount_attr of the size passed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        assert_eq!(rc, 0, "mount_setattr(MOUNT_ATTR_IDMAP): {}", std::io::Error::last_os_error());
        move_mount(tree.as_fd(), c"", rustix::fs::CWD, target, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
            .expect("move_mount");
        IdmappedBind(target.to_owned())
    }
}

impl Drop for IdmappedBind {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn metacopy_labels_and_kernel_features() {
    common::require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let populate = |l: &Path| std::fs::write(l.join("f"), b"x").expect("write");
    let on = Overlay::new(&dir.path().join("on"), "merged", "metacopy=on", populate);
    let off = Overlay::new(&dir.path().join("off"), "merged", "metacopy=off", populate);
    let m = agent_once(dir.path());
    assert_eq!(info_label(&m, &on.merged, "metacopy"), "on");
    // The kernel prints metacopy=off only where off is not its default (the module parameter).
    let default_on =
        std::fs::read_to_string("/sys/module/overlay/parameters/metacopy").is_ok_and(|v| v.trim() == "Y");
    assert_eq!(info_label(&m, &off.merged, "metacopy"), if default_on { "off" } else { "" });
    assert_eq!(info_label(&m, &on.merged, "idmapped_lowers"), "false");
    assert_eq!(info_label(&m, &on.merged, "image"), "");
    // This host: overlay loaded with its metacopy parameter, Linux 6.18.
    assert!(Path::new("/sys/module/overlay/parameters/metacopy").exists(), "overlay is loaded here");
    let release = rustix::system::uname().release().to_string_lossy().into_owned();
    let at_least_5_19 =
        release.split('.').take(2).map(|n| n.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>() >= vec![5, 19];
    assert!(at_least_5_19, "this test expects a 5.19+ host kernel, got {release}");
    assert_eq!(
        m.get("overlayfs_kernel_feature_info", &[("feature", "metacopy"), ("supported", "true")]),
        Some(1.0)
    );
    assert_eq!(
        m.get("overlayfs_kernel_feature_info", &[("feature", "idmapped_layers"), ("supported", "true")]),
        Some(1.0)
    );
    assert_eq!(m.count("overlayfs_kernel_feature_info", &[]), 2);
}

#[test]
fn a_lower_on_an_idmapped_mount_is_seen() {
    common::require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("tmpfs");
    std::fs::create_dir_all(&src).expect("mkdir");
    common::run(Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(&src));
    let _tmpfs = common::Bind(src.clone()); // unmounts it on drop
    std::fs::create_dir_all(src.join("lower")).expect("mkdir lower");
    std::fs::write(src.join("lower/f"), b"x").expect("write");
    let child = UsernsChild::start();
    let idm = dir.path().join("idm");
    let _bind = IdmappedBind::new(&src, &idm, &child.ns_fd());
    // The kernel shows the mount as idmapped, and the file's owner through it.
    let mi = common::mountinfo("/proc/self/mountinfo");
    assert!(
        mi.lines().any(|l| l.contains(&format!(" {} ", idm.display())) && l.contains("idmapped")),
        "{mi}"
    );
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(idm.join("lower/f")).expect("stat"));
    assert_eq!(uid, 100000, "owner through the idmapped mount");
    // An overlay whose lower is on it, one whose lower is not.
    let base = dir.path().join("ovl");
    for d in ["upper", "work", "merged", "plainlower", "plainmerged", "u2", "w2"] {
        std::fs::create_dir_all(base.join(d)).expect("mkdir");
    }
    let mount = |lower: &Path, upper: &str, work: &str, merged: &str| {
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            base.join(upper).display(),
            base.join(work).display()
        );
        common::run(
            Command::new("mount").args(["-t", "overlay", "overlay", "-o", &opts]).arg(base.join(merged)),
        );
        common::Bind(base.join(merged))
    };
    let _o1 = mount(&idm.join("lower"), "upper", "work", "merged");
    let _o2 = mount(&base.join("plainlower"), "u2", "w2", "plainmerged");
    let m = agent_once(dir.path());
    assert_eq!(info_label(&m, &base.join("merged"), "idmapped_lowers"), "true");
    assert_eq!(info_label(&m, &base.join("plainmerged"), "idmapped_lowers"), "false");
}
