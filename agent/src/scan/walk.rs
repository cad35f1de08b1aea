//! The upper-dir walker: one pass, every inode stat'ed once, every entry
//! classified exactly once.
//!
//! Safety against what containers put in their upper dirs:
//! - directories are opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//!   RESOLVE_NO_XDEV)` relative to the upper dir: no symlink is ever followed and the
//!   walk never leaves the upper dir's filesystem, even if the tree changes under it;
//! - entries are stat'ed with `AT_SYMLINK_NOFOLLOW` relative to their directory;
//! - xattrs are read with the `l*` calls on a single path component after
//!   `fchdir` into the directory, which only a thread holding an [`OwnCwd`] may do,
//!   so the lookup is as cheap as the stat.
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

use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rustix::fs::{openat2, statat, AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

use super::budget::{Budget, CpuMeter};
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
}

impl<'a> ScanOptions<'a> {
    pub fn new(ns: XattrNamespace) -> Self {
        ScanOptions { ns, cwd: None, deadline: None, budget: None }
    }
}

/// Bits of a cached entry's `marks` byte; the low three bits hold its [`EntryKind`].
const KIND_MASK: u8 = 0x07;
const IS_DIR: u8 = 0x08;
const MARKS_CHILDREN: u8 = 0x10;
/// Another filesystem is mounted on the name: not counted, stat'ed again.
const MOUNTED: u8 = 0x20;
/// A 0/0 whiteout device with no blocks: not stat'ed again while its directory is
/// unchanged; its cached "ctime" slot holds its inode number instead.
const WHITEOUT_DEV: u8 = 0x40;
/// With `WHITEOUT_DEV`: the inode had more than one link (the shared whiteout).
const LINKED: u8 = 0x80;

/// Directory entries read before they are sorted by inode and stat'ed.
const SORT_BATCH: usize = 65_536;

fn kind_of(marks: u8) -> EntryKind {
    EntryKind::ALL.get((marks & KIND_MASK) as usize).copied().unwrap_or(EntryKind::Created)
}

/// The names of one directory as the last scan found them.
#[derive(Debug)]
struct DirEntries {
    mtime: i64,
    ctime: i64,
    /// Whether the children's xattrs were looked at (the dir's own marks).
    read_children: bool,
    /// Scan generation that last saw this directory.
    generation: u64,
    /// Names back to back, each ended by a NUL.
    names: Vec<u8>,
    /// Per name: ctime (ns) and marks at the last scan.
    ctimes: Vec<i64>,
    marks: Vec<u8>,
}

/// What a scan of one upper dir keeps for the next scan of it: the entries of
/// every directory (about 9 bytes plus the name per entry), and the inodes found
/// copied-up, to count copy-ups between scans.
#[derive(Debug, Default)]
pub struct ScanCache {
    dirs: HashMap<u64, DirEntries>,
    generation: u64,
    /// Copied-up and metacopy inodes at the last complete scan; `None` before it.
    copied: Option<HashSet<u64>>,
}

impl ScanCache {
    /// Names held, over all directories.
    pub fn entries(&self) -> usize {
        self.dirs.values().map(|d| d.marks.len()).sum()
    }
}

fn ns_time(sec: i64, nsec: u64) -> i64 {
    sec.wrapping_mul(1_000_000_000).wrapping_add(nsec as i64)
}

fn mtime(st: &Stat) -> i64 {
    ns_time(st.st_mtime, st.st_mtime_nsec)
}

fn ctime(st: &Stat) -> i64 {
    ns_time(st.st_ctime, st.st_ctime_nsec)
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
    root: OwnedFd,
    root_dev: u64,
    /// Inodes with more than one link already counted, and their kind.
    seen: HashMap<u64, EntryKind>,
    /// Copied-up and metacopy inodes found by this scan.
    copied: HashSet<u64>,
    result: ScanResult,
    xattr_buf: Vec<u8>,
    /// Whether `fchdir` may be used (the thread owns its cwd).
    use_cwd: bool,
    upper: &'a Path,
    deadline: Option<Instant>,
    meter: Option<CpuMeter<'a>>,
    /// Entries looked at, to check the deadline and charge the budget every so often.
    visited: u64,
    cache: &'a mut ScanCache,
}

/// Scans one upper dir; `cache` is what the previous scan of the same upper dir
/// left (empty for a first scan) and is updated for the next.
pub fn scan(upper: &Path, opts: &ScanOptions<'_>, cache: &mut ScanCache) -> Result<ScanResult, ScanError> {
    let open_error = |e: Errno| {
        let reason = if e == Errno::NOENT { ErrorReason::Missing } else { ErrorReason::from_errno(e) };
        ScanError::Open { path: upper.to_owned(), reason, source: e.into() }
    };
    let root = rustix::fs::open(upper, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(open_error)?;
    let st = rustix::fs::fstat(&root).map_err(open_error)?;
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
        upper,
        deadline: opts.deadline,
        meter: opts.budget.map(CpuMeter::new),
        visited: 0,
        cache,
    };
    w.account(&st);
    if let Ok(vfs) = rustix::fs::fstatvfs(&w.root) {
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
    let Walker { mut result, copied, cache, .. } = w;
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

    /// Counts one more entry; false when the walk must stop (deadline).
    fn tick(&mut self) -> bool {
        self.visited += 1;
        if self.visited % 4096 == 0 {
            if let Some(m) = &mut self.meter {
                m.charge();
            }
            if self.deadline.is_some_and(|d| Instant::now() > d) {
                self.result.timed_out = true;
                return false;
            }
        }
        true
    }

    fn walk(&mut self, root: Pending) {
        // Depth-first over relative paths; only one directory is open at a time.
        // The upper dir's own marks are not looked at, so its children always are.
        let mut stack: Vec<Pending> = vec![root];
        while let Some(p) = stack.pop() {
            if self.result.timed_out {
                break;
            }
            let cached =
                self.cache.dirs.remove(&p.ino).filter(|d| {
                    d.mtime == p.mtime && d.ctime == p.ctime && d.read_children == p.read_children
                });
            // openat2 refuses O_PATH with flags open(2) would ignore (O_NONBLOCK).
            let how = if cached.is_some() { OFlags::PATH } else { OFlags::RDONLY | OFlags::NONBLOCK };
            let dir = if p.rel.as_os_str().is_empty() {
                rustix::io::fcntl_dupfd_cloexec(&self.root, 0)
            } else {
                openat2(
                    &self.root,
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

    /// An unchanged directory: names from the cache, each stat'ed again.
    fn walk_cached(&mut self, dir: OwnedFd, p: &Pending, mut d: DirEntries, stack: &mut Vec<Pending>) {
        self.result.dirs_cached += 1;
        let cwd_ok = self.use_cwd && rustix::process::fchdir(&dir).is_ok();
        let names = std::mem::take(&mut d.names);
        let mut valid = true;
        let mut complete = true;
        let mut off = 0;
        for i in 0..d.marks.len() {
            // One memchr per name (names are NUL-terminated back to back).
            let Some(Ok(name)) = names.get(off..).map(CStr::from_bytes_until_nul) else { break };
            off += name.to_bytes_with_nul().len();
            if !self.tick() {
                complete = false;
                break;
            }
            let (Some(ct), Some(mk)) = (d.ctimes.get_mut(i), d.marks.get_mut(i)) else { break };
            if *mk & WHITEOUT_DEV != 0 {
                // A device node has no data and its type cannot change: the name
                // still is this whiteout, as the directory is unchanged.
                self.result.entries[EntryKind::Whiteout as usize] += 1;
                let ino = *ct as u64;
                if *mk & LINKED == 0 || !self.seen.contains_key(&ino) {
                    if *mk & LINKED != 0 {
                        self.seen.insert(ino, EntryKind::Whiteout);
                    }
                    self.result.inodes += 1;
                }
                continue;
            }
            let st = match statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(e) => {
                    // The directory changed after its parent stat'ed it: read it next time.
                    self.error(e);
                    valid = false;
                    continue;
                }
            };
            (*ct, *mk) = self.entry(cwd_ok, p, name, &st, Some((*ct, *mk)), stack);
        }
        if complete {
            d.names = names;
            if !valid {
                d.mtime = i64::MIN;
            }
            d.generation = self.cache.generation;
            self.cache.dirs.insert(p.ino, d);
        }
    }

    /// A new or changed directory: read, every entry classified afresh.
    fn walk_read(&mut self, dir: OwnedFd, p: &Pending, stack: &mut Vec<Pending>) {
        self.result.dirs_read += 1;
        let cwd_ok = self.use_cwd && rustix::process::fchdir(&dir).is_ok();
        let mut entries = match Dir::new(dir) {
            Ok(d) => d,
            Err(e) => return self.error(e),
        };
        let mut d = DirEntries {
            mtime: p.mtime,
            ctime: p.ctime,
            read_children: p.read_children,
            generation: self.cache.generation,
            names: Vec::new(),
            ctimes: Vec::new(),
            marks: Vec::new(),
        };
        // Entries are stat'ed in inode order, a batch at a time: inodes made one
        // after the other sit side by side on disk and in memory, while getdents
        // returns names in hash order (ext4, XFS). The order is kept in the cache.
        let mut complete = true;
        let mut batch: Vec<(u64, u32)> = Vec::new();
        let mut raw: Vec<u8> = Vec::new();
        let mut more = true;
        while more && complete {
            batch.clear();
            raw.clear();
            while batch.len() < SORT_BATCH {
                match entries.next() {
                    None => {
                        more = false;
                        break;
                    }
                    Some(Err(e)) => {
                        self.error(e);
                        complete = false;
                        break;
                    }
                    Some(Ok(e)) => {
                        let name = e.file_name().to_bytes_with_nul();
                        if name != b".\0" && name != b"..\0" {
                            batch.push((e.ino(), raw.len() as u32));
                            raw.extend_from_slice(name);
                        }
                    }
                }
            }
            batch.sort_unstable_by_key(|&(ino, _)| ino);
            let Ok(dirfd) = entries.fd() else {
                complete = false;
                break;
            };
            for &(_, off) in &batch {
                let Some(Ok(name)) = raw.get(off as usize..).map(CStr::from_bytes_until_nul) else {
                    continue;
                };
                if !self.tick() {
                    complete = false;
                    break;
                }
                let st = match statat(dirfd, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => st,
                    Err(e) => {
                        self.error(e);
                        continue; // gone meanwhile: the directory's times changed too
                    }
                };
                let (c, m) = self.entry(cwd_ok, p, name, &st, None, stack);
                d.names.extend_from_slice(name.to_bytes_with_nul());
                d.ctimes.push(c);
                d.marks.push(m);
            }
        }
        if complete {
            d.names.shrink_to_fit();
            d.ctimes.shrink_to_fit();
            d.marks.shrink_to_fit();
            self.cache.dirs.insert(p.ino, d);
        }
    }

    /// Counts and classifies one entry of the directory `p`; `prev` is its ctime
    /// and marks at the last scan. Returns what to cache for it.
    fn entry(
        &mut self,
        cwd_ok: bool,
        p: &Pending,
        name: &CStr,
        st: &Stat,
        prev: Option<(i64, u8)>,
        stack: &mut Vec<Pending>,
    ) -> (i64, u8) {
        let ct = ctime(st);
        if st.st_dev != self.root_dev {
            // A mountpoint inside the upper dir: never leave its filesystem.
            return (ct, MOUNTED);
        }
        let ftype = FileType::from_raw_mode(st.st_mode);
        let is_dir = ftype == FileType::Directory;
        let linked = !is_dir && st.st_nlink > 1;
        let again = if linked { self.seen.get(&st.st_ino).copied() } else { None };
        let reuse = prev.filter(|&(c, m)| c == ct && m & MOUNTED == 0 && (m & IS_DIR != 0) == is_dir);
        let (kind, marks_children) = if let Some((_, m)) = reuse {
            (kind_of(m), m & MARKS_CHILDREN != 0)
        } else if let Some(kind) = again {
            (kind, false) // another name of an inode classified in this scan
        } else if ftype == FileType::CharacterDevice && st.st_rdev == 0 {
            (EntryKind::Whiteout, false)
        } else if !is_dir && !p.read_children {
            (EntryKind::Created, false)
        } else {
            let x = self.xattrs(cwd_ok, &p.rel, name);
            let kind = match ftype {
                FileType::Directory if x.opaque => EntryKind::OpaqueDir,
                FileType::Directory => EntryKind::Dir,
                _ if x.whiteout => EntryKind::Whiteout,
                _ if x.metacopy => EntryKind::Metacopy,
                _ if x.origin => EntryKind::CopiedUp,
                _ => EntryKind::Created,
            };
            (kind, x.marks_children)
        };
        self.result.entries[kind as usize] += 1;
        if again.is_none() {
            // The first name of this inode in this scan: its bytes count once.
            if linked {
                self.seen.insert(st.st_ino, kind);
            }
            self.account(st);
            if kind == EntryKind::CopiedUp {
                self.result.copied_up_bytes += st.st_size.max(0) as u64;
            }
            if matches!(kind, EntryKind::CopiedUp | EntryKind::Metacopy) {
                self.copied.insert(st.st_ino);
            }
        }
        if is_dir {
            stack.push(Pending {
                rel: p.rel.join(std::ffi::OsStr::from_bytes(name.to_bytes())),
                ino: st.st_ino,
                mtime: mtime(st),
                ctime: ct,
                read_children: marks_children,
            });
        }
        if ftype == FileType::CharacterDevice && st.st_rdev == 0 && st.st_blocks == 0 && st.st_size == 0 {
            let linked = if st.st_nlink > 1 { LINKED } else { 0 };
            return (st.st_ino as i64, EntryKind::Whiteout as u8 | WHITEOUT_DEV | linked);
        }
        let mut m = kind as u8;
        if is_dir {
            m |= IS_DIR;
        }
        if marks_children {
            m |= MARKS_CHILDREN;
        }
        (ct, m)
    }

    /// Reads the overlay xattrs of `name` in the directory `rel`.
    fn xattrs(&mut self, cwd_ok: bool, rel: &Path, name: &CStr) -> OverlayXattrs {
        self.result.xattr_reads += 1;
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

    fn scan_once(u: &Path, ns: XattrNamespace) -> Result<ScanResult, ScanError> {
        scan(u, &ScanOptions::new(ns), &mut ScanCache::default())
    }

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
        let r = scan_once(u, XattrNamespace::User).expect("scan");
        let want: &[(EntryKind, u64)] =
            &[(Dir, 3), (OpaqueDir, 1), (Created, 4), (CopiedUp, 2), (Metacopy, 1), (Whiteout, 1)];
        for (kind, n) in want {
            assert_eq!(r.entries(*kind), *n, "{kind:?}: {r:?}");
        }
        assert_eq!(r.inodes, 12, "hard-linked inode counted once, root included");
        assert_eq!(r.entries.iter().sum::<u64>(), r.inodes, "names: one more than inodes - 1 (new-link)");
        assert_eq!(r.copied_up_bytes, 8);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        // The same tree read as a trusted.* mount: no overlay marks at all.
        let r = scan_once(u, XattrNamespace::Trusted).expect("scan");
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
        // 30 names of one 0/0 inode, as overlayfs makes whiteouts since 5.8.
        rustix::fs::mknodat(rustix::fs::CWD, u.join("shared"), FileType::CharacterDevice, Mode::empty(), 0)
            .expect("mknod 0/0");
        for i in 1..30 {
            fs::hard_link(u.join("shared"), u.join(format!("shared{i}"))).expect("link");
        }
        // The walk fchdirs: run it on a thread of its own with its own cwd.
        let path = u.to_owned();
        let (r, again) = std::thread::spawn(move || {
            let cwd = OwnCwd::unshare().expect("unshare(CLONE_FS)");
            let opts = ScanOptions { cwd: Some(&cwd), ..ScanOptions::new(XattrNamespace::Trusted) };
            let mut cache = ScanCache::default();
            (scan(&path, &opts, &mut cache), scan(&path, &opts, &mut cache))
        })
        .join()
        .expect("scan thread");
        let _ = std::process::Command::new("umount").arg(u.join("mnt")).status();
        let (r, again) = (r.expect("scan"), again.expect("rescan"));
        // The rescan takes the whiteouts from the cache (not stat'ed) and counts the same.
        assert_eq!(again.dirs_cached, 1, "the root (mnt is skipped): {again:?}");
        assert_eq!((again.entries, again.inodes), (r.entries, r.inodes));
        assert_eq!(r.entries(Whiteout), 31, "the 0/0 device and the 30 names of the shared one");
        assert_eq!(r.entries(Created), 1, "the 1/3 device");
        assert_eq!(r.entries(Dir), 0, "the tmpfs mountpoint is another filesystem: skipped");
        assert_eq!(r.inodes, 4, "root, wh, null, and the shared whiteout inode once");
        let e = scan_once(&u.join("absent"), XattrNamespace::Trusted).expect_err("missing");
        assert_eq!(e.reason(), ErrorReason::Missing);
    }

    fn kinds(r: &ScanResult) -> Vec<(EntryKind, u64)> {
        EntryKind::ALL.iter().map(|k| (*k, r.entries(*k))).collect()
    }

    /// A rescan re-reads no unchanged directory and no unchanged entry's xattrs,
    /// yet sees every change: sizes, new names, xattrs set or removed.
    #[test]
    fn rescans_reuse_what_cannot_have_changed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let u = tmp.path();
        let x = "user.overlay.";
        fs::create_dir(u.join("impure")).expect("mkdir");
        set(&u.join("impure"), &format!("{x}impure"), b"y");
        for i in 0..50 {
            let f = u.join(format!("impure/c{i}"));
            fs::write(&f, b"123").expect("write");
            set(&f, &format!("{x}origin"), b"");
        }
        fs::write(u.join("impure/m"), b"").expect("write");
        set(&u.join("impure/m"), &format!("{x}origin"), b"");
        set(&u.join("impure/m"), &format!("{x}metacopy"), b"");
        fs::create_dir_all(u.join("pure/deeper")).expect("mkdir");
        fs::write(u.join("pure/deeper/f"), b"1").expect("write");
        let opts = ScanOptions::new(XattrNamespace::User);
        let mut cache = ScanCache::default();
        let first = scan(u, &opts, &mut cache).expect("scan");
        assert_eq!((first.dirs_read, first.dirs_cached), (4, 0), "{first:?}");
        assert_eq!(first.xattr_reads, 2 + 51 + 1, "root's children, impure's children, pure's dir");
        assert_eq!(first.copy_ups_seen, None, "no baseline yet");
        assert_eq!(cache.entries(), 2 + 51 + 1 + 1);

        // Unchanged: no directory read, no xattr read, same figures.
        let again = scan(u, &opts, &mut cache).expect("rescan");
        assert_eq!((again.dirs_read, again.dirs_cached, again.xattr_reads), (0, 4, 0), "{again:?}");
        assert_eq!(again.copy_ups_seen, Some(0));
        let strip = |r: &ScanResult| ScanResult {
            dirs_read: 0,
            dirs_cached: 0,
            xattr_reads: 0,
            copy_ups_seen: None,
            fs_avail_bytes: 0,
            ..r.clone()
        };
        assert_eq!(strip(&again), strip(&first));

        // A file grows in an unchanged dir; the metacopy file gets its data (the
        // kernel removes the xattr); a new copied-up file appears in pure/deeper.
        fs::write(u.join("pure/deeper/f"), vec![7u8; 100_000]).expect("grow");
        rustix::fs::lremovexattr(u.join("impure/m"), format!("{x}metacopy").as_str()).expect("removexattr");
        fs::write(u.join("pure/deeper/new"), b"12").expect("write");
        let r = scan(u, &opts, &mut cache).expect("rescan");
        assert_eq!(strip(&r), strip(&scan_once(u, XattrNamespace::User).expect("scan")), "as a first scan");
        assert_eq!((r.dirs_read, r.dirs_cached), (1, 3), "only pure/deeper changed: {r:?}");
        assert_eq!(r.xattr_reads, 2, "m and pure/deeper changed ctime; pure/deeper's files need no look");
        assert_eq!(r.entries(Metacopy), 0);
        assert_eq!(r.entries(CopiedUp), 51, "{:?}", kinds(&r));
        assert_eq!(r.entries(Created), 2);
        assert_eq!(r.copy_ups_seen, Some(0), "m was copied-up (metacopy) before: no new copy-up");

        // A new copied-up file in the impure dir, and one renamed there from another
        // copied-up name: one copy-up seen (the rename moves an inode already counted).
        fs::write(u.join("impure/n"), b"").expect("write");
        set(&u.join("impure/n"), &format!("{x}origin"), b"");
        fs::rename(u.join("impure/c0"), u.join("impure/c0-renamed")).expect("rename");
        let r = scan(u, &opts, &mut cache).expect("rescan");
        assert_eq!(r.entries(CopiedUp), 52, "{:?}", kinds(&r));
        assert_eq!(r.copy_ups_seen, Some(1));
        assert_eq!(strip(&r), strip(&scan_once(u, XattrNamespace::User).expect("scan")), "as a first scan");
        // Removing a directory drops it from the cache.
        fs::remove_dir_all(u.join("pure")).expect("rm -r");
        let r = scan(u, &opts, &mut cache).expect("rescan");
        assert_eq!(r.entries(Dir), 1, "{:?}", kinds(&r));
        assert_eq!(cache.entries(), 1 + 52);
    }
}
