//! How the scan threads open an upper dir (and quota mode's directories): beneath a
//! detached clone of its mount, so that nothing they hold pins the user's mount.
//!
//! A descriptor, or a thread's working directory, under a mount makes `umount` of
//! that mount fail with EBUSY ("target is busy") for as long as it is held. That is
//! true in the agent's own mount namespace and, through propagation, in the host's:
//! when the agent runs in a container with the host's root mounted `rslave`, a busy
//! copy there fails the host's `umount` too, or outlives it. `open_tree(path,
//! OPEN_TREE_CLONE)` (5.2+) makes a private, detached copy of the mount at `path`,
//! rooted at `path`: the same superblock, but a mount nobody else sees, and the
//! user's mount is free to go. Everything a walk opens is opened beneath it,
//! `fchdir` included. The superblock lives until the clone's last descriptor
//! closes, so a scan still stops as soon as its mount leaves the mount table
//! (`cancel.rs`).
//!
//! The path is looked up once per open, by `open_tree` itself: a lookup holds the
//! mount for the length of the call, as any `stat` by any process does, and
//! nothing else here names the user's path. In particular nothing checks the path
//! again when the mount table changes, which is when the user is unmounting.
//!
//! The clone is of that one mount (no `AT_RECURSIVE`): what is mounted on
//! directories inside the upper dir is not in it. The walk sees the directories
//! under such mounts, as overlayfs does through its own private clone of the upper
//! layer's mount, and never pins the filesystems mounted there.
//!
//! Where `open_tree` cannot be used, the directory is opened as before, on the
//! user's mount, and an unmount during a scan can fail: ENOSYS (before 5.2, or a
//! seccomp filter), EPERM (no CAP_SYS_ADMIN over the mount's namespace, or no
//! CAP_SYS_CHROOT to join it), EINVAL (an unbindable mount).
//! `overlayfs_scan_upper_opens_total{via="plain"}` counts those opens by reason,
//! and each reason is logged once.
//!
//! Mount namespaces: `open_tree` only clones mounts of the caller's namespace, so
//! an upper dir of another namespace ([`Place::join`]) is cloned by a short-lived
//! thread with its own filesystem context that joins that namespace
//! (`setns(CLONE_NEWNS)`, which a thread sharing its filesystem context with
//! others may not do), clones the mount there and ends. The path is looked up
//! beneath the root of a process of that namespace (`<procfs>/<pid>/root`, opened
//! `O_PATH` before: it pins that root only), and the namespace file's inode is
//! checked against the namespace's id, so a pid reused meanwhile is never joined. The clone, like any, belongs to
//! no namespace: an unmount in the user's namespace never finds it busy.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::fs::{openat, Mode, OFlags, CWD};
use rustix::io::Errno;
use rustix::mount::{open_tree, OpenTreeFlags};
use rustix::thread::LinkNameSpaceType;

/// Where the scan threads open an upper dir.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Place {
    /// Its path in the agent's own mount namespace: under `--path.rootfs`, or,
    /// for another namespace, under `<procfs>/<pid>/root`.
    pub path: PathBuf,
    /// For another namespace: the namespace to join to clone its mount.
    pub join: Option<Join>,
}

/// Another mount namespace, as a scan thread joins it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    /// `<procfs>/<pid>/root` of a process in it: [`Place::path`] is beneath.
    pub root: PathBuf,
    /// `<procfs>/<pid>/ns/mnt` of that process.
    pub ns_file: PathBuf,
    /// The namespace's id (the inode of its nsfs file).
    pub id: u64,
}

impl Place {
    /// A path in the agent's own mount namespace.
    pub fn own(path: impl Into<PathBuf>) -> Place {
        Place { path: path.into(), join: None }
    }
}

/// How a directory was opened; a bounded label set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Beneath a detached clone of its mount: the user's mount is never busy.
    Detached,
    /// On the user's mount (why the clone could not be made).
    Plain(Fallback),
}

/// Why a directory was opened on the user's mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// ENOSYS: no `open_tree` (before 5.2, or a seccomp filter).
    NoOpenTree = 0,
    /// EPERM: no CAP_SYS_ADMIN over the mount's namespace (or, for another
    /// namespace, no right to join it).
    NoPrivileges,
    /// EINVAL: the kernel refused to clone that mount (unbindable).
    Refused,
}

impl Via {
    pub const ALL: [Via; 4] = [
        Via::Detached,
        Via::Plain(Fallback::NoOpenTree),
        Via::Plain(Fallback::NoPrivileges),
        Via::Plain(Fallback::Refused),
    ];

    fn index(self) -> usize {
        match self {
            Via::Detached => 0,
            Via::Plain(f) => 1 + f as usize,
        }
    }

    /// The `via` and `reason` labels.
    pub fn labels(self) -> (&'static str, &'static str) {
        match self {
            Via::Detached => ("detached", "none"),
            Via::Plain(Fallback::NoOpenTree) => ("plain", "no_open_tree"),
            Via::Plain(Fallback::NoPrivileges) => ("plain", "no_privileges"),
            Via::Plain(Fallback::Refused) => ("plain", "refused"),
        }
    }
}

/// Directories opened, by [`Via::index`]; and whether each fallback was logged.
static OPENS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
static LOGGED: [AtomicBool; 4] = [const { AtomicBool::new(false) }; 4];

/// Directories opened so far by the scan threads, by how.
pub fn opens() -> [(Via, u64); 4] {
    Via::ALL.map(|v| (v, OPENS[v.index()].load(Ordering::Relaxed)))
}

/// An upper dir, open for a walk.
#[derive(Debug)]
pub struct UpperHandle {
    /// The upper dir, open for reading: beneath `_clone` when there is one.
    dir: OwnedFd,
    /// The detached clone of its mount (`O_PATH`); dropped with the handle.
    _clone: Option<OwnedFd>,
    via: Via,
    path: PathBuf,
}

impl UpperHandle {
    pub fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn via(&self) -> Via {
        self.via
    }
}

/// Opens the upper dir at `place` for a walk (see the module doc).
pub fn open_upper(place: &Place) -> Result<UpperHandle, Errno> {
    let path = &place.path;
    let (dir, clone, via) = match &place.join {
        None => open_dir_in(path, true)?,
        Some(join) => open_joined(path, join)?,
    };
    Ok(UpperHandle { dir, _clone: clone, via, path: path.to_owned() })
}

/// [`open_dir_in`] for a directory of another mount namespace: the clone is made
/// by a thread that joins it; the fallback is as in [`clone_or`].
fn open_joined(path: &Path, join: &Join) -> Result<(OwnedFd, Option<OwnedFd>, Via), Errno> {
    let dir = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let opened = match clone_joined(path, join) {
        Ok(clone) => (openat(&clone, ".", dir, Mode::empty())?, Some(clone), Via::Detached),
        Err(e) => {
            let reason = fallback_for(e)?;
            let fd = rustix::fs::open(path, dir, Mode::empty())?;
            note_fallback(reason, path, e);
            (fd, None, Via::Plain(reason))
        }
    };
    OPENS[opened.2.index()].fetch_add(1, Ordering::Relaxed);
    Ok(opened)
}

/// The detached clone of the mount of the directory at `path`, made in namespace
/// `join`: the process's root is opened here (`O_PATH`: it pins that root, which
/// nobody unmounts), and `path` is looked up beneath it by `open_tree` itself, in
/// the namespace, as in the agent's own. ESTALE: the namespace file is no longer
/// that namespace's (it ended, and the pid was reused).
fn clone_joined(path: &Path, join: &Join) -> Result<OwnedFd, Errno> {
    let rel = path.strip_prefix(&join.root).map_err(|_| Errno::INVAL)?;
    let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    let root =
        rustix::fs::open(&join.root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let ns = rustix::fs::open(&join.ns_file, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    if rustix::fs::fstat(&ns)?.st_ino != join.id {
        return Err(Errno::STALE);
    }
    let flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    // A thread of its own: it changes its filesystem context and namespace, and
    // ends with them. A panic there (none is expected) is an I/O error here.
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: CLONE_FS gives this thread its own cwd/root/umask, which
            // setns(CLONE_NEWNS) requires; no descriptor table is unshared.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }?;
            rustix::thread::move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Mount))?;
            open_tree(&root, rel, flags)
        })
        .join()
        .unwrap_or(Err(Errno::IO))
    })
}

/// Opens the directory at `path` (in the agent's own mount namespace) for reading,
/// beneath a detached clone of its mount where it can; `follow`: whether a
/// symlink as the last component is followed. The clone goes when the descriptor
/// is closed.
pub fn open_dir(path: &Path, follow: bool) -> Result<OwnedFd, Errno> {
    open_dir_in(path, follow).map(|(dir, _, _)| dir)
}

/// As [`open_dir`], but an `O_PATH` descriptor (the clone itself where there is
/// one): enough for `fstat` and as the root of `openat2`, without read permission.
pub fn open_path(path: &Path, follow: bool) -> Result<OwnedFd, Errno> {
    let (clone, via) = clone_or(path, follow, OFlags::PATH | OFlags::DIRECTORY)?;
    OPENS[via.index()].fetch_add(1, Ordering::Relaxed);
    Ok(clone)
}

fn open_dir_in(path: &Path, follow: bool) -> Result<(OwnedFd, Option<OwnedFd>, Via), Errno> {
    let dir = OFlags::RDONLY | OFlags::DIRECTORY;
    let opened = match clone_or(path, follow, dir)? {
        (clone, Via::Detached) => {
            (openat(&clone, ".", dir | OFlags::CLOEXEC, Mode::empty())?, Some(clone), Via::Detached)
        }
        (plain, via) => (plain, None, via),
    };
    OPENS[opened.2.index()].fetch_add(1, Ordering::Relaxed);
    Ok(opened)
}

/// The detached clone of the mount at `path` (`O_PATH`), or, where it cannot be
/// made, `path` opened with `plain` on the user's mount.
fn clone_or(path: &Path, follow: bool, mut plain: OFlags) -> Result<(OwnedFd, Via), Errno> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    plain |= OFlags::CLOEXEC;
    if !follow {
        flags |= OpenTreeFlags::AT_SYMLINK_NOFOLLOW;
        plain |= OFlags::NOFOLLOW;
    }
    match open_tree(CWD, path, flags) {
        Ok(clone) => Ok((clone, Via::Detached)),
        Err(e) => {
            let reason = fallback_for(e)?;
            let fd = rustix::fs::open(path, plain, Mode::empty())?;
            note_fallback(reason, path, e);
            Ok((fd, Via::Plain(reason)))
        }
    }
}

/// Why a clone could not be made, where a plain open still can be: other errors
/// (the directory is gone, the namespace ended) are the open's.
fn fallback_for(e: Errno) -> Result<Fallback, Errno> {
    match e {
        Errno::NOSYS => Ok(Fallback::NoOpenTree),
        Errno::PERM => Ok(Fallback::NoPrivileges),
        Errno::INVAL => Ok(Fallback::Refused),
        _ => Err(e),
    }
}

/// Logs the first open on the user's mount for each reason.
fn note_fallback(reason: Fallback, path: &Path, e: Errno) {
    let via = Via::Plain(reason);
    if !LOGGED[via.index()].swap(true, Ordering::Relaxed) {
        tracing::warn!(
            upper = %path.display(),
            reason = via.labels().1,
            error = %e,
            "open_tree(OPEN_TREE_CLONE) refused: upper dirs are opened on the user's mount, and an unmount during a scan can fail with \"target is busy\" (overlayfs_scan_upper_opens_total{{via=\"plain\"}})"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A detached clone reads the same directory; a missing one is an error.
    #[test]
    fn a_handle_reads_the_dir() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let u = tmp.path().join("upper");
        std::fs::create_dir_all(u.join("d")).expect("mkdir");
        std::fs::write(u.join("f"), b"x").expect("write");
        let h = open_upper(&Place::own(&u)).expect("open");
        if rustix::process::geteuid().is_root() {
            assert_eq!(h.via(), Via::Detached, "root may clone mounts");
        }
        let st = rustix::fs::fstat(h.dir()).expect("fstat");
        assert_eq!(st.st_ino, rustix::fs::stat(&u).expect("stat").st_ino);
        let names: Vec<_> = rustix::fs::Dir::read_from(h.dir())
            .expect("read")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_bytes().to_vec()))
            .filter(|n| n != b"." && n != b"..")
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(open_upper(&Place::own(tmp.path().join("absent"))).is_err_and(|e| e == Errno::NOENT));
    }

    /// Joining a namespace (here the test's own, through /proc/self): the clone is
    /// made by the joining thread; a namespace file that is not the namespace's
    /// any more (a pid reused) is never joined.
    #[test]
    fn a_namespace_is_joined_only_when_it_is_still_the_same() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = PathBuf::from("/proc/self/root");
        let path = root.join(tmp.path().strip_prefix("/").expect("absolute"));
        let ns_file = PathBuf::from("/proc/self/ns/mnt");
        let id = rustix::fs::stat(&ns_file).expect("ns").st_ino;
        let stale = Place {
            path: path.clone(),
            join: Some(Join { root: root.clone(), ns_file: ns_file.clone(), id: id + 1 }),
        };
        assert!(open_upper(&stale).is_err_and(|e| e == Errno::STALE));
        let h = open_upper(&Place { path, join: Some(Join { root, ns_file, id }) }).expect("open");
        if rustix::process::geteuid().is_root() {
            assert_eq!(h.via(), Via::Detached, "root may join and clone");
        }
        let st = rustix::fs::fstat(h.dir()).expect("fstat");
        assert_eq!(st.st_ino, rustix::fs::stat(tmp.path()).expect("stat").st_ino);
    }

    /// Without CAP_SYS_ADMIN (dropped from this thread's effective set) the clone
    /// is refused: the directory is opened on the user's mount, and counted so.
    #[test]
    fn without_cap_sys_admin_the_dir_is_opened_plainly_and_counted() {
        use rustix::thread::{capabilities, set_capabilities, CapabilitySet};
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().to_owned();
        let via = std::thread::spawn(move || {
            let mut caps = capabilities(None).expect("capget");
            caps.effective.remove(CapabilitySet::SYS_ADMIN);
            set_capabilities(None, caps).expect("capset");
            let before = opens()[2].1;
            let h = open_upper(&Place::own(&path)).expect("open");
            assert!(opens()[2].1 > before, "counted as no_privileges");
            h.via()
        })
        .join()
        .expect("thread");
        assert_eq!(via, Via::Plain(Fallback::NoPrivileges));
        assert_eq!(via.labels(), ("plain", "no_privileges"));
    }
}
