//! The upper-dir walker: one pass, every inode stat'ed once, every entry
//! classified exactly once.
//!
//! Safety against what containers put in their upper dirs:
//! - directories are opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//!   RESOLVE_NO_XDEV)` relative to the upper dir: no symlink is ever followed and the
//!   walk never leaves the upper dir's filesystem, even if the tree changes under it;
//! - entries are stat'ed with `AT_SYMLINK_NOFOLLOW` relative to their directory;
//! - xattrs are read with the `l*` calls on a single path component after
//!   `fchdir` into the directory (the calling thread must own its cwd: see
//!   [`super::pool`]), so the lookup is as cheap as the stat.
//!
//! Cost: one `fstatat` per entry, like `du`, plus one `llistxattr` per directory
//! and per non-directory in a directory that may hold overlay-marked entries.
//! The kernel marks a directory `impure` whenever it gives one of its entries an
//! origin (copy-up, hard link or rename of a copied-up file), and marks it
//! `opaque` (`x` on 6.7+) when it holds xattr whiteouts; so the non-directories of
//! a directory with neither mark were all created in the upper layer (or are 0/0
//! whiteouts, which need no xattr), and their xattrs are not read.

use std::collections::HashSet;
use std::ffi::CStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rustix::fs::{openat2, statat, AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

use super::{EntryKind, ErrorReason, ScanError, ScanResult};

/// Which xattr namespace the mount uses for its overlay xattrs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XattrNamespace {
    /// `trusted.overlay.*` (the default; reading needs CAP_SYS_ADMIN).
    Trusted,
    /// `user.overlay.*` (mounts with `userxattr`).
    User,
}

impl XattrNamespace {
    fn prefix(self) -> &'static [u8] {
        match self {
            XattrNamespace::Trusted => b"trusted.overlay.",
            XattrNamespace::User => b"user.overlay.",
        }
    }
}

/// What the overlay xattrs of one entry say.
#[derive(Debug, Default, Clone, Copy)]
struct OverlayXattrs {
    origin: bool,
    metacopy: bool,
    whiteout: bool,
    opaque: bool,
    /// `impure` or any `opaque` value: children may carry overlay xattrs.
    marks_children: bool,
}

struct Walker<'a> {
    ns: XattrNamespace,
    root: OwnedFd,
    root_dev: u64,
    /// Inodes with more than one link already counted.
    seen: HashSet<u64>,
    result: ScanResult,
    xattr_buf: Vec<u8>,
    /// Whether `fchdir` may be used (the thread owns its cwd).
    use_cwd: bool,
    upper: &'a Path,
    deadline: Option<Instant>,
    /// Entries looked at, to check the deadline every so often.
    visited: u64,
}

/// Scans one upper dir. `own_cwd` must only be true on a thread that has unshared
/// its filesystem context (`unshare(CLONE_FS)`): the walk `fchdir`s into each
/// directory. Past `deadline` the walk stops and returns what it counted, with
/// `timed_out` set (a call stuck in a hung filesystem is the pool's business).
pub fn scan(
    upper: &Path,
    ns: XattrNamespace,
    own_cwd: bool,
    deadline: Option<Instant>,
) -> Result<ScanResult, ScanError> {
    let open_error = |e: Errno| {
        let reason = if e == Errno::NOENT { ErrorReason::Missing } else { ErrorReason::from_errno(e) };
        ScanError::Open { path: upper.to_owned(), reason, source: e.into() }
    };
    let root = rustix::fs::open(upper, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(open_error)?;
    let st = rustix::fs::fstat(&root).map_err(open_error)?;
    let mut w = Walker {
        ns,
        root,
        root_dev: st.st_dev,
        seen: HashSet::new(),
        result: ScanResult::default(),
        xattr_buf: vec![0u8; 1024],
        use_cwd: own_cwd,
        upper,
        deadline,
        visited: 0,
    };
    w.account(&st);
    if let Ok(vfs) = rustix::fs::fstatvfs(&w.root) {
        w.result.fs_avail_bytes = vfs.f_bavail.saturating_mul(vfs.f_frsize);
        w.result.fs_size_bytes = vfs.f_blocks.saturating_mul(vfs.f_frsize);
    }
    w.walk();
    if w.result.timed_out {
        *w.result.errors.entry(ErrorReason::Timeout).or_default() += 1;
    }
    if w.use_cwd {
        // Leave no directory of the scanned tree pinned as our cwd.
        let _ = rustix::process::chdir("/");
    }
    Ok(w.result)
}

impl Walker<'_> {
    fn account(&mut self, st: &Stat) {
        self.result.inodes += 1;
        self.result.allocated_bytes += (st.st_blocks as u64).saturating_mul(512);
        self.result.apparent_bytes += st.st_size.max(0) as u64;
    }

    fn error(&mut self, e: Errno) {
        *self.result.errors.entry(ErrorReason::from_errno(e)).or_default() += 1;
    }

    fn walk(&mut self) {
        // Depth-first over relative paths; only one directory is open at a time.
        // The flag says whether the directory's children need their xattrs read;
        // the upper dir's own marks are not looked at, so its children always are.
        let mut stack: Vec<(PathBuf, bool)> = vec![(PathBuf::new(), true)];
        while let Some((rel, read_children)) = stack.pop() {
            if self.result.timed_out {
                break;
            }
            let dir = if rel.as_os_str().is_empty() {
                rustix::io::fcntl_dupfd_cloexec(&self.root, 0)
            } else {
                openat2(
                    &self.root,
                    &rel,
                    // O_NONBLOCK: should the name turn into a FIFO meanwhile,
                    // never wait for a writer (O_DIRECTORY refuses it anyway).
                    OFlags::RDONLY
                        | OFlags::DIRECTORY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC
                        | OFlags::NONBLOCK,
                    Mode::empty(),
                    ResolveFlags::BENEATH
                        | ResolveFlags::NO_SYMLINKS
                        | ResolveFlags::NO_XDEV
                        | ResolveFlags::NO_MAGICLINKS,
                )
            };
            let dir = match dir {
                Ok(d) => d,
                Err(Errno::XDEV) => continue, // something got mounted there meanwhile
                Err(e) => {
                    self.error(e);
                    continue;
                }
            };
            self.walk_dir(dir, &rel, read_children, &mut stack);
        }
    }

    fn walk_dir(&mut self, dir: OwnedFd, rel: &Path, read_children: bool, stack: &mut Vec<(PathBuf, bool)>) {
        let cwd_ok = self.use_cwd && rustix::process::fchdir(&dir).is_ok();
        let mut entries = match Dir::new(dir) {
            Ok(d) => d,
            Err(e) => return self.error(e),
        };
        loop {
            let entry = match entries.next() {
                None => break,
                Some(Ok(e)) => e,
                Some(Err(e)) => {
                    self.error(e);
                    break;
                }
            };
            let name = entry.file_name();
            if name.to_bytes() == b"." || name.to_bytes() == b".." {
                continue;
            }
            self.visited += 1;
            if self.visited % 4096 == 0 && self.deadline.is_some_and(|d| Instant::now() > d) {
                self.result.timed_out = true;
                break;
            }
            let Ok(dirfd) = entries.fd() else { break };
            let st = match statat(dirfd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(e) => {
                    self.error(e);
                    continue;
                }
            };
            if st.st_dev != self.root_dev {
                continue; // a mountpoint inside the upper dir: never leave its filesystem
            }
            let ftype = FileType::from_raw_mode(st.st_mode);
            if ftype != FileType::Directory && st.st_nlink > 1 && !self.seen.insert(st.st_ino) {
                continue; // another name of an inode already counted
            }
            self.account(&st);
            let is_dir = ftype == FileType::Directory;
            let mut marks_children = false;
            let kind = if ftype == FileType::CharacterDevice && st.st_rdev == 0 {
                EntryKind::Whiteout
            } else if !is_dir && !read_children {
                EntryKind::Created
            } else {
                let x = self.xattrs(cwd_ok, rel, name);
                marks_children = x.marks_children;
                match ftype {
                    FileType::Directory if x.opaque => EntryKind::OpaqueDir,
                    FileType::Directory => EntryKind::Dir,
                    _ if x.whiteout => EntryKind::Whiteout,
                    _ if x.metacopy => EntryKind::Metacopy,
                    _ if x.origin => EntryKind::CopiedUp,
                    _ => EntryKind::Created,
                }
            };
            self.result.entries[kind as usize] += 1;
            if kind == EntryKind::CopiedUp {
                self.result.copied_up_bytes += st.st_size.max(0) as u64;
            }
            if is_dir {
                stack.push((rel.join(std::ffi::OsStr::from_bytes(name.to_bytes())), marks_children));
            }
        }
    }

    /// Reads the overlay xattrs of `name` in the directory `rel`.
    fn xattrs(&mut self, cwd_ok: bool, rel: &Path, name: &CStr) -> OverlayXattrs {
        let full;
        let path: &CStr = if cwd_ok {
            name
        } else {
            let p = self.upper.join(rel).join(std::ffi::OsStr::from_bytes(name.to_bytes()));
            full = match std::ffi::CString::new(p.as_os_str().as_bytes()) {
                Ok(c) => c,
                Err(_) => return OverlayXattrs::default(),
            };
            &full
        };
        let list = loop {
            match rustix::fs::llistxattr(path, &mut self.xattr_buf[..]) {
                Ok(n) => break &self.xattr_buf[..n],
                Err(Errno::RANGE) if self.xattr_buf.len() < 1 << 20 => {
                    let n = self.xattr_buf.len() * 4;
                    self.xattr_buf.resize(n, 0);
                }
                Err(Errno::NOTSUP) => return OverlayXattrs::default(),
                Err(e) => {
                    self.error(e);
                    return OverlayXattrs::default();
                }
            }
        };
        let prefix = self.ns.prefix();
        let mut x = OverlayXattrs::default();
        for attr in list.split(|&b| b == 0) {
            let Some(suffix) = attr.strip_prefix(prefix) else { continue };
            match suffix {
                b"origin" => x.origin = true,
                b"metacopy" => x.metacopy = true,
                b"whiteout" => x.whiteout = true,
                b"opaque" => x.opaque = true, // value checked below
                b"impure" => x.marks_children = true,
                _ => {}
            }
        }
        x.marks_children |= x.opaque;
        if x.opaque {
            // "y": opaque dir; "x" (6.7+): a dir that merely holds xattr whiteouts.
            let mut name_buf = prefix.to_vec();
            name_buf.extend_from_slice(b"opaque");
            let mut val = [0u8; 8];
            x.opaque = match std::ffi::CString::new(name_buf) {
                Ok(attr) => {
                    matches!(rustix::fs::lgetxattr(path, attr.as_c_str(), &mut val[..]), Ok(n) if &val[..n] == b"y")
                }
                Err(_) => false,
            };
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::EntryKind::*;
    use std::fs;

    fn set(path: &Path, name: &str, value: &[u8]) {
        rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty())
            .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", path.display()));
    }

    /// Builds by hand what overlayfs leaves in an upper dir (user.overlay.* as
    /// with `userxattr`), then checks every rule of the classification.
    #[test]
    fn classification_rules() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let u = tmp.path();
        let x = "user.overlay.";
        // Root children are always examined.
        fs::write(u.join("copied"), b"12345").expect("write");
        set(&u.join("copied"), &format!("{x}origin"), b"");
        fs::write(u.join("meta"), b"").expect("write");
        set(&u.join("meta"), &format!("{x}origin"), b"");
        set(&u.join("meta"), &format!("{x}metacopy"), b"");
        fs::write(u.join("new"), b"1").expect("write");
        fs::hard_link(u.join("new"), u.join("new-link")).expect("link");
        std::os::unix::fs::symlink("loop", u.join("loop")).expect("symlink");
        // An impure dir: its children are examined.
        fs::create_dir(u.join("impure")).expect("mkdir");
        set(&u.join("impure"), &format!("{x}impure"), b"y");
        fs::write(u.join("impure/c"), b"123").expect("write");
        set(&u.join("impure/c"), &format!("{x}origin"), b"");
        // A dir without marks: its files are taken as created without a look.
        fs::create_dir(u.join("pure")).expect("mkdir");
        fs::write(u.join("pure/f"), b"1").expect("write");
        // Opaque dirs: "y" is opaque, "x" only holds xattr whiteouts.
        fs::create_dir(u.join("opq")).expect("mkdir");
        set(&u.join("opq"), &format!("{x}opaque"), b"y");
        fs::create_dir(u.join("xwh")).expect("mkdir");
        set(&u.join("xwh"), &format!("{x}opaque"), b"x");
        fs::write(u.join("xwh/gone"), b"").expect("write");
        set(&u.join("xwh/gone"), &format!("{x}whiteout"), b"");
        // trusted.* xattrs do not count on a userxattr mount.
        let r = scan(u, XattrNamespace::User, false, None).expect("scan");
        let want: &[(EntryKind, u64)] =
            &[(Dir, 3), (OpaqueDir, 1), (Created, 3), (CopiedUp, 2), (Metacopy, 1), (Whiteout, 1)];
        for (kind, n) in want {
            assert_eq!(r.entries(*kind), *n, "{kind:?}: {r:?}");
        }
        assert_eq!(r.inodes, 12, "hard link counted once, root included");
        assert_eq!(r.entries.iter().sum::<u64>(), r.inodes - 1);
        assert_eq!(r.copied_up_bytes, 8);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        // The same tree read as a trusted.* mount: no overlay marks at all.
        let r = scan(u, XattrNamespace::Trusted, false, None).expect("scan");
        assert_eq!(r.entries(CopiedUp) + r.entries(Metacopy) + r.entries(OpaqueDir), 0);
    }

    #[test]
    #[cfg_attr(not(feature = "e2e"), ignore = "needs root (mknod, mount): the e2e tier")]
    fn device_whiteouts_and_mounts_inside() {
        if !rustix::process::geteuid().is_root() {
            panic!("needs root (mknod, mount): run the README's test command");
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let u = tmp.path();
        rustix::fs::mknodat(rustix::fs::CWD, u.join("wh"), FileType::CharacterDevice, Mode::empty(), 0)
            .expect("mknod 0/0");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            u.join("null"),
            FileType::CharacterDevice,
            Mode::empty(),
            rustix::fs::makedev(1, 3),
        )
        .expect("mknod 1/3");
        fs::create_dir(u.join("mnt")).expect("mkdir");
        fs::create_dir(u.join("mnt/hidden")).expect("mkdir");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(u.join("mnt"))
            .status()
            .expect("mount tmpfs");
        assert!(status.success());
        fs::write(u.join("mnt/on-tmpfs"), b"x").expect("write");
        let r = scan(u, XattrNamespace::Trusted, true, None);
        let _ = std::process::Command::new("umount").arg(u.join("mnt")).status();
        let r = r.expect("scan");
        assert_eq!(r.entries(Whiteout), 1, "only the 0/0 device is a whiteout");
        assert_eq!(r.entries(Created), 1, "the 1/3 device");
        assert_eq!(r.entries(Dir), 0, "the tmpfs mountpoint is another filesystem: skipped");
        assert_eq!(r.inodes, 3);
        let e = scan(&u.join("absent"), XattrNamespace::Trusted, false, None).expect_err("missing");
        assert_eq!(e.reason(), ErrorReason::Missing);
    }
}
