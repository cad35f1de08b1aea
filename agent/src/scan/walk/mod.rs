//! The upper-dir walker: one pass, every inode stat'ed once, every entry
//! classified exactly once.
//!
//! Never in the way of the user: the upper dir comes opened beneath a detached
//! clone of its mount ([`UpperHandle`], `reach.rs`), and every directory of the
//! walk, the thread's working directory included, is opened beneath it, so an
//! `umount` of the user's mount never finds it busy. The walk looks at its
//! [`Cancel`] token at every entry: asked to stop (its mount left the mount table)
//! it returns at once with `cancelled` set, holding nothing.
//!
//! Safety against what containers put in their upper dirs:
//! - directories are opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//!   RESOLVE_NO_XDEV)` relative to the upper dir: no symlink is ever followed and the
//!   walk never leaves the upper dir's filesystem, even if the tree changes under it;
//! - entries are stat'ed with `AT_SYMLINK_NOFOLLOW` relative to their directory;
//! - xattrs are read with the `l*` calls on a single path component after
//!   `fchdir` into the directory, which only a thread holding an [`OwnCwd`] may do,
//!   so the lookup is as cheap as the stat (other threads name the directory by
//!   its descriptor, `/proc/self/fd/N/name`).
//!
//! Counting: entries by kind count names (directory entries), so 30 whiteouts
//! that share one inode (overlayfs links every whiteout to one inode since 5.8)
//! are 30 whiteouts, and 5 names of one copied-up file are 5 copied-up entries.
//! Bytes, inodes and `copied_up_bytes` count each inode once, as `du` does.
//!
//! Cost of a first walk: one `fstatat` per entry, like `du`, plus one `llistxattr`
//! per directory and per non-directory in a directory that may hold
//! overlay-marked entries. The kernel marks a directory `impure` whenever it gives
//! one of its entries an origin (copy-up, hard link or rename of a copied-up file),
//! and marks it `opaque` (`x` on 6.7+) when it holds xattr whiteouts; so the
//! non-directories of a directory with neither mark were all created in the upper
//! layer (or are 0/0 whiteouts, which need no xattr), and their xattrs are not read.
//!
//! Rescans ([`ScanCache`]): a directory whose inode, mtime and ctime are those of
//! the last scan has the same names (every create, unlink, rename and link in it
//! sets both times), so it is not read again (no `getdents`): its names come from
//! the cache and the directory is opened `O_PATH` only to stat them. Every entry is
//! still stat'ed on every scan (sizes, blocks and link counts change without the
//! directory's mtime changing), but for 0/0 whiteout devices: a device node holds
//! no data and a name in an unchanged directory is the same inode, so a whiteout
//! that had no blocks is taken as it was (what this misses: an xattr block added
//! to a whiteout by hand). An entry's xattrs are read again only when its ctime
//! changed (setting or removing an xattr sets the inode's ctime; so do chmod,
//! chown, writes and truncates). What this trusts: that the kernel keeps those
//! times (true of the local filesystems upper dirs live on), and that nobody moves
//! the system clock back to the same nanosecond.
//!
//! Files: this one holds the walk itself (options, [`scan`], the depth-first loop);
//! `dirs.rs` reads one directory, afresh or from the cache; `classify.rs` gives an
//! entry its kind (stat and overlay xattrs); `cache.rs` is what a scan keeps for
//! the next one ([`ScanCache`]).

mod cache;
mod classify;
mod dirs;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rustix::fs::{openat2, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

use super::budget::{Budget, CpuMeter};
use super::cancel::Cancel;
use super::reach::{open_upper, Place, UpperHandle};
use super::{EntryKind, ErrorReason, ScanError, ScanResult};
use cache::{ctime, mtime};

pub use cache::ScanCache;

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

/// Proof that the calling thread has its own filesystem context (cwd, root,
/// umask), so the walker may `fchdir` without moving any other thread's cwd.
/// Only [`OwnCwd::unshare`] makes one, and it cannot leave its thread (it is
/// neither `Send` nor `Sync`).
#[derive(Debug)]
pub struct OwnCwd {
    _this_thread: PhantomData<*const ()>,
}

impl OwnCwd {
    /// Unshares the calling thread's filesystem context (`unshare(CLONE_FS)`).
    pub fn unshare() -> std::io::Result<OwnCwd> {
        // SAFETY: CLONE_FS only gives this thread its own cwd/root/umask; no file
        // descriptor table is unshared, so no fd becomes invalid for other threads.
        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }?;
        Ok(OwnCwd { _this_thread: PhantomData })
    }
}

/// How to scan: the mount's xattr namespace, and what the calling thread offers.
#[derive(Debug, Clone, Copy)]
pub struct ScanOptions<'a> {
    pub ns: XattrNamespace,
    /// Present on threads that may `fchdir`; otherwise xattrs are read by full path.
    pub cwd: Option<&'a OwnCwd>,
    /// Past it the walk stops and returns what it counted, with `timed_out` set (a
    /// call stuck in a hung filesystem is the pool's business).
    pub deadline: Option<Instant>,
    /// Charged with the walk's CPU time (and sleeps when overdrawn).
    pub budget: Option<&'a Budget>,
    /// Looked at every entry: the walk stops when it says so.
    pub cancel: Option<&'a Cancel>,
}

impl<'a> ScanOptions<'a> {
    pub fn new(ns: XattrNamespace) -> Self {
        ScanOptions { ns, cwd: None, deadline: None, budget: None, cancel: None }
    }
}

/// How the overlay xattrs of a directory's entries are named: by the name alone
/// after `fchdir` into it, or through its descriptor.
#[derive(Debug, Clone, Copy)]
enum XattrAt {
    Cwd,
    Fd(RawFd),
}

/// A directory waiting to be walked, with its stat as its parent saw it.
struct Pending {
    rel: PathBuf,
    ino: u64,
    mtime: i64,
    ctime: i64,
    read_children: bool,
}

struct Walker<'a> {
    ns: XattrNamespace,
    root: BorrowedFd<'a>,
    root_dev: u64,
    /// Inodes with more than one link already counted, and their kind.
    seen: HashMap<u64, EntryKind>,
    /// Copied-up and metacopy inodes found by this scan.
    copied: HashSet<u64>,
    result: ScanResult,
    xattr_buf: Vec<u8>,
    /// Whether `fchdir` may be used (the thread owns its cwd).
    use_cwd: bool,
    deadline: Option<Instant>,
    cancel: Option<&'a Cancel>,
    meter: Option<CpuMeter<'a>>,
    /// Entries looked at, to check the deadline and charge the budget every so often.
    visited: u64,
    cache: &'a mut ScanCache,
}

/// Opens the upper dir at `upper` in the agent's own mount namespace and scans it
/// ([`scan_upper`]).
pub fn scan(upper: &Path, opts: &ScanOptions<'_>, cache: &mut ScanCache) -> Result<ScanResult, ScanError> {
    let h = open_upper(&Place::own(upper)).map_err(|e| ScanError::open(upper, e))?;
    scan_upper(&h, opts, cache)
}

/// Scans one upper dir (opened with [`open_upper`]); `cache` is what the previous
/// scan of the same upper dir left (empty for a first scan) and is updated for the
/// next, unless the scan is cancelled.
pub fn scan_upper(
    upper: &UpperHandle,
    opts: &ScanOptions<'_>,
    cache: &mut ScanCache,
) -> Result<ScanResult, ScanError> {
    let root = upper.dir();
    let st = rustix::fs::fstat(root).map_err(|e| ScanError::open(upper.path(), e))?;
    cache.generation += 1;
    let mut w = Walker {
        ns: opts.ns,
        root,
        root_dev: st.st_dev,
        seen: HashMap::new(),
        copied: HashSet::with_capacity(cache.copied.as_ref().map_or(0, |c| c.len())),
        result: ScanResult::default(),
        xattr_buf: vec![0u8; 1024],
        use_cwd: opts.cwd.is_some(),
        deadline: opts.deadline,
        cancel: opts.cancel,
        meter: opts.budget.map(|b| CpuMeter::with_cancel(b, opts.cancel)),
        visited: 0,
        cache,
    };
    w.account(&st);
    if let Ok(vfs) = rustix::fs::fstatvfs(w.root) {
        w.result.fs_avail_bytes = vfs.f_bavail.saturating_mul(vfs.f_frsize);
        w.result.fs_size_bytes = vfs.f_blocks.saturating_mul(vfs.f_frsize);
    }
    w.walk(Pending {
        rel: PathBuf::new(),
        ino: st.st_ino,
        mtime: mtime(&st),
        ctime: ctime(&st),
        read_children: true,
    });
    if w.use_cwd {
        // Leave no directory of the scanned tree pinned as our cwd.
        let _ = rustix::process::chdir("/");
    }
    let Walker { mut result, copied, cache, meter, .. } = w;
    drop(meter);
    if result.cancelled {
        // Partial figures nobody will see; the cache is the job's to drop.
        return Ok(result);
    }
    if result.timed_out {
        *result.errors.entry(ErrorReason::Timeout).or_default() += 1;
    } else {
        // A complete walk saw every directory there is: forget the others, and
        // count the inodes that became copied-up since the last complete walk.
        let generation = cache.generation;
        cache.dirs.retain(|_, d| d.generation == generation);
        if let Some(before) = &cache.copied {
            result.copy_ups_seen = Some(copied.iter().filter(|ino| !before.contains(ino)).count() as u64);
        }
        cache.copied = Some(copied);
    }
    Ok(result)
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

    /// Counts one more entry; false when the walk must stop (cancelled, or the
    /// deadline passed).
    fn tick(&mut self) -> bool {
        self.visited += 1;
        if self.cancelled() {
            return false;
        }
        if self.visited % 4096 == 0 {
            if let Some(m) = &mut self.meter {
                m.charge();
                if self.cancelled() {
                    return false;
                }
            }
            if self.deadline.is_some_and(|d| Instant::now() > d) {
                self.result.timed_out = true;
                return false;
            }
        }
        true
    }

    /// Whether the walk was asked to stop; sets `cancelled`.
    fn cancelled(&mut self) -> bool {
        if self.cancel.is_some_and(Cancel::stopped) {
            self.result.cancelled = true;
        }
        self.result.cancelled
    }

    /// How the xattrs of `dir`'s entries are named: `fchdir` into it when the
    /// thread may.
    fn xattr_at(&self, dir: BorrowedFd<'_>) -> XattrAt {
        if self.use_cwd && rustix::process::fchdir(dir).is_ok() {
            XattrAt::Cwd
        } else {
            XattrAt::Fd(dir.as_raw_fd())
        }
    }

    fn walk(&mut self, root: Pending) {
        // Depth-first over relative paths; only one directory is open at a time.
        // The upper dir's own marks are not looked at, so its children always are.
        let mut stack: Vec<Pending> = vec![root];
        while let Some(p) = stack.pop() {
            if self.result.timed_out || self.cancelled() {
                break;
            }
            let cached =
                self.cache.dirs.remove(&p.ino).filter(|d| {
                    d.mtime == p.mtime && d.ctime == p.ctime && d.read_children == p.read_children
                });
            // openat2 refuses O_PATH with flags open(2) would ignore (O_NONBLOCK).
            let how = if cached.is_some() { OFlags::PATH } else { OFlags::RDONLY | OFlags::NONBLOCK };
            let dir = if p.rel.as_os_str().is_empty() {
                rustix::io::fcntl_dupfd_cloexec(self.root, 0)
            } else {
                openat2(
                    self.root,
                    &p.rel,
                    // O_NONBLOCK: should the name turn into a FIFO meanwhile,
                    // never wait for a writer (O_DIRECTORY refuses it anyway).
                    how | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
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
            match cached {
                Some(entries) => self.walk_cached(dir, &p, entries, &mut stack),
                None => self.walk_read(dir, &p, &mut stack),
            }
        }
    }
}
