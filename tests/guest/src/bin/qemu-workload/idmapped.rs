//! `idmapped-mount T` and `idmapped-run T`: two unprivileged Concourse volumes
//! (privileged.json false: a runtime shifts their ids by chown, what the
//! idmapped_mounts fix avoids), one over a plain lower, one over an idmapped
//! lower.
//!
//! - plain: T/p/lower (tmpfs) holds plain.dat (25,000 bytes); volume
//!   T/v/volumes/live/plain/volume.
//! - idmapped: T/x is an ext4 filesystem (a loop device, mounted by the mode
//!   script: tmpfs takes idmapped mounts only from 6.3); T/x/lower holds
//!   idmapped.dat (24,000 bytes, owned by 0:0). The workload makes a user
//!   namespace mapping ids 0..65535 to 100000..165535, clones T/x/lower with
//!   open_tree(OPEN_TREE_CLONE), idmaps the clone with
//!   mount_setattr(MOUNT_ATTR_IDMAP) and attaches it at T/i/lower with
//!   move_mount: mountinfo then says `idmapped` on T/i/lower, which is how the
//!   agent tells an idmapped lower (identity::idmap). Volume
//!   T/v/volumes/live/idmapped/volume, over T/i/lower.
//!
//! The answers of mount_setattr and of each overlay mount are printed
//! (`=== OUTCOME`); the host checks them against the kernel (overlay takes
//! idmapped layers from 5.19: kernel::features), refusals included.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{chown, MetadataExt};
use std::path::{Path, PathBuf};

use crate::copy_ups::step;
use crate::files::{file, mount_overlay, mounted, outcome};

/// The user namespace's mapping (uid_map and gid_map): the ids a
/// user-namespaced container's root has on the host.
const MAPPING: &str = "0 100000 65536\n";

/// The volume of Concourse handle `h`.
fn volume(t: &Path, h: &str) -> PathBuf {
    t.join("v/volumes/live").join(h).join("volume")
}

/// A setup step the scenario needs (not one whose answer is under test): its
/// value, or the workload stops.
fn must<T>(what: &str, r: io::Result<T>) -> T {
    r.unwrap_or_else(|e| {
        println!("workload: {what}: FAILED: {e}");
        std::process::exit(1);
    })
}

/// `idmapped-mount T`: both volumes' directories and privileged.json, the
/// lower files, the plain volume, then the idmapped lower and its volume.
pub fn idmapped_mount(t: &Path) {
    for h in ["plain", "idmapped"] {
        must("volume directory", fs::create_dir_all(volume(t, h)));
        must("privileged.json", fs::write(t.join("v/volumes/live").join(h).join("privileged.json"), "false"));
    }
    for d in ["p/lower", "p/upper", "p/work", "i/lower", "i/upper", "i/work"] {
        must("mkdir", fs::create_dir_all(t.join(d)));
    }
    file(&t.join("p/lower"), "plain.dat", 25_000);
    file(&t.join("x/lower"), "idmapped.dat", 24_000);
    outcome("plain-volume", &mount_overlay(&volume(t, "plain"), &layers(t, "p")));
    let idmapped = idmap(&t.join("x/lower"), &t.join("i/lower"));
    outcome("mount_setattr-idmap", &idmapped);
    if idmapped.is_err() {
        println!("workload: no idmapped lower: the idmapped volume is not mounted");
        return;
    }
    let seen = must("stat through the idmapped lower", fs::metadata(t.join("i/lower/idmapped.dat")));
    println!("=== IDMAPPED OWNER {}:{}", seen.uid(), seen.gid());
    println!("=== IDMAPPED MOUNT OPTIONS {}", mount_options(&t.join("i/lower")).unwrap_or_default());
    outcome("idmapped-volume", &mount_overlay(&volume(t, "idmapped"), &layers(t, "i")));
}

/// The overlay options of the volume whose layers are under T/`dir`.
fn layers(t: &Path, dir: &str) -> String {
    let d = t.join(dir);
    let d = d.display();
    format!("lowerdir={d}/lower,upperdir={d}/upper,workdir={d}/work")
}

/// `from` cloned, idmapped through a new user namespace and attached at `to`.
/// Err: mount_setattr's answer (the step a kernel without idmapped mounts
/// refuses); the other steps must work.
fn idmap(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::mount::{move_mount, open_tree, MoveMountFlags, OpenTreeFlags};
    let ns = must("user namespace", userns());
    let tree = must(
        "open_tree(OPEN_TREE_CLONE)",
        open_tree(rustix::fs::CWD, from, OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC)
            .map_err(io::Error::from),
    );
    mount_setattr_idmap(&tree, &ns)?;
    must(
        "move_mount",
        move_mount(&tree, "", rustix::fs::CWD, to, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
            .map_err(io::Error::from),
    );
    Ok(())
}

/// A user namespace with [`MAPPING`], held by its /proc/PID/ns/user fd: a
/// child unshares it and sleeps while this process writes its maps (as root
/// in the parent namespace) and opens it; the child is then killed.
fn userns() -> io::Result<OwnedFd> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("/bin/sleep");
    cmd.arg("60");
    // SAFETY: between fork and exec only unshare(2) runs, an async-signal-safe
    // system call; spawn returns once the exec succeeded, so after the unshare.
    unsafe {
        cmd.pre_exec(|| crate::files::check(libc::unshare(libc::CLONE_NEWUSER)));
    }
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let ns = fs::write(format!("/proc/{pid}/uid_map"), MAPPING)
        .and_then(|()| fs::write(format!("/proc/{pid}/gid_map"), MAPPING))
        .and_then(|()| File::open(format!("/proc/{pid}/ns/user")))
        .map(OwnedFd::from);
    let _ = child.kill();
    let _ = child.wait();
    ns
}

/// `struct mount_attr` of include/uapi/linux/mount.h.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// MOUNT_ATTR_IDMAP of include/uapi/linux/mount.h.
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// mount_setattr(tree, "", AT_EMPTY_PATH, {MOUNT_ATTR_IDMAP, ns}): idmaps the
/// detached mount `tree` through user namespace `ns`.
fn mount_setattr_idmap(tree: &OwnedFd, ns: &OwnedFd) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: ns.as_raw_fd() as u64,
    };
    // rustix has no mount_setattr (it is on its not-implemented list) and libc
    // no function for it: the raw system call, whose number libc has.
    // SAFETY: a valid fd, an empty NUL-terminated path, and a pointer to a
    // mount_attr of the size passed.
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
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The per-mount options (mountinfo's sixth field) of the mount at `dir`.
fn mount_options(dir: &Path) -> Option<String> {
    let want = dir.to_str()?;
    let text = String::from_utf8_lossy(&fs::read("/proc/self/mountinfo").ok()?).into_owned();
    text.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.get(5).filter(|_| f.get(4) == Some(&want)).map(|o| o.to_string())
    })
}

/// `idmapped-run T`: the runtime's shift, a chown to 100000:100000, on the
/// plain volume; a chown to 100001:100001 on the idmapped volume where it
/// came up (a kernel that refused it has nothing there: the host asserts the
/// refusal). One data copy-up each.
pub fn idmapped_run(t: &Path) {
    step(
        "chown plain.dat on the plain volume to 100000:100000",
        chown(volume(t, "plain").join("plain.dat"), Some(100_000), Some(100_000)),
    );
    let v = volume(t, "idmapped");
    if !mounted(&v) {
        println!("workload: no idmapped volume (refused): no copy-ups there");
        return;
    }
    step(
        "chown idmapped.dat on the idmapped volume to 100001:100001",
        chown(v.join("idmapped.dat"), Some(100_001), Some(100_001)),
    );
}
