//! Upper-dir usage in O(1) from project quotas, where the filesystem keeps them.
//!
//! An upper dir whose inode carries a project id (`FS_IOC_FSGETXATTR`, `fsx_projid`)
//! on a filesystem that accounts project quotas (XFS mounted `prjquota`, ext4 with the
//! `project` feature mounted `prjquota`) has its usage in the kernel's quota record:
//! `quotactl(Q_GETQUOTA, PRJQUOTA, id)` returns the space (bytes, delayed allocations
//! included, as in `st_blocks`) and the inodes charged to that id. XFS answers the
//! generic `Q_GETQUOTA` too (the VFS calls its `get_dqblk`), so one command serves
//! both. `quotactl_fd` (5.14+) works on a directory fd; older kernels get the block
//! device from mountinfo.
//!
//! The same quantity as the walk: the walk counts `st_blocks x 512` and each inode
//! once, the upper dir included. The quota counts every inode with the id, so more
//! than the upper dir where the id is wider:
//! - Docker and containers/storage set the id on the layer dir that holds `diff/`
//!   (the upper dir), `work/` and a few small files: that dir and everything in it but
//!   the upper dir ([`QuotaTarget::others`]) is measured (a handful of entries) and
//!   subtracted;
//! - a work dir outside that layer dir with the same id is measured and subtracted too;
//! - an inode with a name in those and one in the upper dir (the whiteout inode that
//!   overlayfs keeps in `work/` and links into the upper dir) is the walk's: it is
//!   subtracted only when all its links are outside the upper dir;
//! - an id that also covers the grandparent is shared more widely: no quota mode
//!   ([`Unavailable::SharedProjectId`]). Any other directory with the same id cannot
//!   be seen from here: each full walk compares its figures with quota readings taken
//!   just before and after it, and when the tree did not change meanwhile and they
//!   differ, the upper dir leaves quota mode ([`Unavailable::Mismatch`]).
//!
//! Assigning ids (opt-in, writes to the filesystem): [`assign`] gives an upper dir
//! with no id, and its work dir, an unused id from a configured range (no usage, no
//! limits), with `FS_XFLAG_PROJINHERIT` on every directory (new entries inherit the
//! id) and the id on every existing directory and regular file. Both the upper and
//! the work dir get it: ext4 and XFS refuse (`EXDEV`), for ever, renames and links
//! into an inheriting directory of an inode from another project, and overlayfs
//! makes copy-ups and whiteouts in the work dir and moves them into the upper dir.
//! The work dir is tagged first, so a copy-up during the assignment never moves an
//! untagged file into an inheriting dir. It assigns only when nothing there would
//! hit that rule ([`check_taggable`], a first pass that sets nothing): the work dir
//! known, both trees only directories and regular files, all with id 0. Symlinks,
//! devices (whiteouts), FIFOs and sockets cannot be opened to set the id, and an id
//! already set is never changed.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use linux_raw_sys::general::{fsxattr, FS_XFLAG_PROJINHERIT};
use rustix::fs::{openat2, statat, AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;
use rustix::ioctl::{opcode, Getter, Opcode, Setter};

use crate::sync::LockExt;

/// `FS_IOC_FSGETXATTR` / `FS_IOC_FSSETXATTR`: `_IOR('X', 31, struct fsxattr)`,
/// `_IOW('X', 32, struct fsxattr)` (include/uapi/linux/fs.h).
const FSGETXATTR: Opcode = opcode::read::<fsxattr>(b'X', 31);
const FSSETXATTR: Opcode = opcode::write::<fsxattr>(b'X', 32);
/// include/uapi/linux/quota.h; the libc crate has only USRQUOTA and GRPQUOTA.
const PRJQUOTA: libc::c_int = 2;

/// Why an upper dir's bytes and inodes come from the walk; a bounded label set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unavailable {
    /// `scan.quota: false`.
    Disabled,
    /// Not looked at yet (no walk finished).
    Unknown,
    /// The filesystem has no project ids (`FS_IOC_FSGETXATTR` unsupported, or ext4
    /// without the `project` feature).
    NoProjectIds,
    /// The upper dir has project id 0 (none).
    NoProjectId,
    /// This kernel has no quota support for the filesystem: `quotactl` says ENOSYS
    /// (no CONFIG_QUOTACTL, or the filesystem's quota operations are not built in:
    /// CONFIG_QUOTA unset for ext4, CONFIG_XFS_QUOTA for XFS).
    KernelWithoutQuota,
    /// The filesystem does not account project quotas (not mounted `prjquota`).
    NotAccounted,
    /// The upper dir's grandparent has the same id: the quota covers more than it.
    SharedProjectId,
    /// A walk of an unchanged tree and the quota disagreed.
    Mismatch,
    /// The upper dir or its quota could not be read (permissions, I/O).
    Error,
}

impl Unavailable {
    pub const ALL: [Unavailable; 9] = [
        Unavailable::Disabled,
        Unavailable::Unknown,
        Unavailable::NoProjectIds,
        Unavailable::NoProjectId,
        Unavailable::KernelWithoutQuota,
        Unavailable::NotAccounted,
        Unavailable::SharedProjectId,
        Unavailable::Mismatch,
        Unavailable::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Unavailable::Disabled => "disabled",
            Unavailable::Unknown => "unknown",
            Unavailable::NoProjectIds => "no_project_ids",
            Unavailable::NoProjectId => "no_project_id",
            Unavailable::KernelWithoutQuota => "kernel_without_quota",
            Unavailable::NotAccounted => "not_accounted",
            Unavailable::SharedProjectId => "shared_project_id",
            Unavailable::Mismatch => "mismatch",
            Unavailable::Error => "error",
        }
    }

    fn from_quotactl(e: Errno) -> Self {
        match e {
            Errno::NOSYS => Unavailable::KernelWithoutQuota,
            // ESRCH: quotas of that type are off; the others: no quota support on
            // this filesystem, or no block device behind it.
            Errno::SRCH | Errno::INVAL | Errno::NOTSUP | Errno::NOTBLK | Errno::NODEV | Errno::NOTTY => {
                Unavailable::NotAccounted
            }
            _ => Unavailable::Error,
        }
    }
}

/// Bytes and inodes, as the walk counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// `st_blocks x 512` summed over inodes.
    pub allocated_bytes: u64,
    pub inodes: u64,
}

impl Usage {
    fn minus(self, o: Usage) -> Usage {
        Usage {
            allocated_bytes: self.allocated_bytes.saturating_sub(o.allocated_bytes),
            inodes: self.inodes.saturating_sub(o.inodes),
        }
    }

    fn plus(self, o: Usage) -> Usage {
        Usage { allocated_bytes: self.allocated_bytes + o.allocated_bytes, inodes: self.inodes + o.inodes }
    }
}

/// A quota reading less what else the id covers that can be measured.
///
/// Not everything can: the directory under a mountpoint (Docker's `merged/` in the
/// layer dir, with the container's overlay mounted on it) is charged to the id, but
/// no path leads to it while the mount stands. Nobody can change it either, so a
/// walk of an unchanged tree measures it once, as the difference between quota and
/// walk (exactly one inode per covered entry, a few blocks at most), and later
/// readings subtract that while the same number of entries stay covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reading {
    pub usage: Usage,
    /// Entries of the other trees with a mount on them.
    pub covered: u64,
}

/// How `quotactl` reaches the filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Via {
    /// `quotactl_fd` on the upper dir (5.14+).
    Fd,
    /// `quotactl` on the block device (from mountinfo).
    Device(CString),
}

/// An upper dir in quota mode: its project id, and what else the id covers.
#[derive(Debug, Clone)]
pub struct QuotaTarget {
    /// Where to open the upper dir.
    pub upper: PathBuf,
    pub project_id: u32,
    dev: u64,
    via: Via,
    /// The parent dir, when it has the same id: it and its entries but the upper
    /// dir are subtracted.
    layer: Option<PathBuf>,
    /// Other trees with the id (the work dir outside `layer`), subtracted.
    others: Vec<PathBuf>,
    /// Covered entries and their usage, as the last walk measured them (see [`Reading`]).
    covered: Option<(u64, Usage)>,
    /// Directory listings of the other trees, from the last reading.
    listings: Listings,
}

/// Equal: the same settings (the listings are a cache).
impl PartialEq for QuotaTarget {
    fn eq(&self, o: &Self) -> bool {
        (&self.upper, self.project_id, self.dev, &self.via, &self.layer, &self.others, self.covered)
            == (&o.upper, o.project_id, o.dev, &o.via, &o.layer, &o.others, o.covered)
    }
}

impl Eq for QuotaTarget {}

fn open_dir(path: &Path) -> Result<OwnedFd, Errno> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
}

fn get_fsx(fd: BorrowedFd<'_>) -> Result<fsxattr, Errno> {
    // SAFETY: FS_IOC_FSGETXATTR writes one struct fsxattr, the Getter's output type.
    unsafe { rustix::ioctl::ioctl(fd, Getter::<FSGETXATTR, fsxattr>::new()) }
}

fn set_fsx(fd: BorrowedFd<'_>, x: fsxattr) -> Result<(), Errno> {
    // SAFETY: FS_IOC_FSSETXATTR reads one struct fsxattr, the Setter's input type.
    unsafe { rustix::ioctl::ioctl(fd, Setter::<FSSETXATTR, fsxattr>::new(x)) }
}

/// The project id of a directory or regular file.
pub fn project_of(path: &Path) -> Result<u32, Errno> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(get_fsx(fd.as_fd())?.fsx_projid)
}

/// Sets the project id of a directory (with `FS_XFLAG_PROJINHERIT`) or regular file,
/// as `chattr -p ID +P` does (tests and benchmarks; the agent itself uses [`assign`]).
pub fn set_project(path: &Path, id: u32) -> Result<(), Errno> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut x = get_fsx(fd.as_fd())?;
    x.fsx_projid = id;
    if rustix::fs::fstat(&fd)?.st_mode & libc::S_IFMT == libc::S_IFDIR {
        x.fsx_xflags |= FS_XFLAG_PROJINHERIT;
    }
    set_fsx(fd.as_fd(), x)
}

/// The project id of a directory on device `dev`, `None` if it is elsewhere or unreadable.
fn dir_project(path: &Path, dev: u64) -> Option<u32> {
    let fd = open_dir(path).ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    (st.st_dev == dev).then_some(())?;
    get_fsx(fd.as_fd()).ok().map(|x| x.fsx_projid)
}

/// `quotactl_fd(2)`: libc has its syscall number but no wrapper.
fn quotactl_fd(fd: BorrowedFd<'_>, id: u32, out: &mut libc::dqblk) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let cmd = libc::QCMD(libc::Q_GETQUOTA, PRJQUOTA);
    // SAFETY: quotactl_fd(fd, cmd, id, addr) with Q_GETQUOTA writes one struct if_dqblk
    // (libc::dqblk) at addr.
    let r = unsafe {
        libc::syscall(libc::SYS_quotactl_fd, fd.as_raw_fd(), cmd as libc::c_uint, id, out as *mut libc::dqblk)
    };
    if r < 0 {
        Err(Errno::from_raw_os_error(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)))
    } else {
        Ok(())
    }
}

fn quotactl_dev(dev: &CStr, id: u32, out: &mut libc::dqblk) -> Result<(), Errno> {
    let cmd = libc::QCMD(libc::Q_GETQUOTA, PRJQUOTA);
    // SAFETY: dev is a NUL-terminated path; Q_GETQUOTA writes one struct if_dqblk.
    let r = unsafe { libc::quotactl(cmd, dev.as_ptr(), id as libc::c_int, (out as *mut libc::dqblk).cast()) };
    if r < 0 {
        Err(Errno::from_raw_os_error(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)))
    } else {
        Ok(())
    }
}

fn empty_dqblk() -> libc::dqblk {
    libc::dqblk {
        dqb_bhardlimit: 0,
        dqb_bsoftlimit: 0,
        dqb_curspace: 0,
        dqb_ihardlimit: 0,
        dqb_isoftlimit: 0,
        dqb_curinodes: 0,
        dqb_btime: 0,
        dqb_itime: 0,
        dqb_valid: 0,
    }
}

/// The mount source (block device) of the filesystem with device number `dev`.
fn device_of(mountinfo: &Path, dev: u64) -> Option<CString> {
    let text = std::fs::read_to_string(mountinfo).ok()?;
    device_in(&text, rustix::fs::major(dev), rustix::fs::minor(dev))
}

/// The source field of the first mountinfo line with `major:minor`.
fn device_in(mountinfo: &str, major: u32, minor: u32) -> Option<CString> {
    let want = format!("{major}:{minor}");
    mountinfo.lines().find_map(|line| {
        let mut fields = line.split(' ');
        (fields.nth(2)? == want).then_some(())?;
        let (_, after) = line.split_once(" - ")?;
        let source = after.split(' ').nth(1)?;
        source.starts_with('/').then(|| CString::new(unescape(source)).ok())?
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // Three octal digits of at most 0o377 (a byte); `b[i + 1..i + 4]` needs i + 3 < len.
        if b[i] == b'\\'
            && i + 3 < b.len()
            && (b'0'..=b'3').contains(&b[i + 1])
            && b[i + 2..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

impl QuotaTarget {
    /// The usage in the quota record of `id` on this target's filesystem.
    fn getquota(&self, id: u32) -> Result<Usage, Errno> {
        self.dqblk(id).map(|q| Usage { allocated_bytes: q.dqb_curspace, inodes: q.dqb_curinodes })
    }

    /// The raw quota record of `id`; all zero where there is none.
    fn dqblk(&self, id: u32) -> Result<libc::dqblk, Errno> {
        let mut q = empty_dqblk();
        let r = match &self.via {
            Via::Fd => quotactl_fd(open_dir(&self.upper)?.as_fd(), id, &mut q),
            Via::Device(dev) => quotactl_dev(dev, id, &mut q),
        };
        match r {
            Ok(()) => Ok(q),
            // XFS: no record for this id (nothing charged to it).
            Err(Errno::NOENT) => Ok(empty_dqblk()),
            Err(e) => Err(e),
        }
    }

    /// The quota of the id less what else the id covers that can be measured,
    /// and how many entries of those are covered by a mount (see [`Reading`]).
    pub fn read_raw(&self) -> Result<Reading, Unavailable> {
        let q = self.getquota(self.project_id).map_err(Unavailable::from_quotactl)?;
        let (others, covered) = self.others().map_err(|_| Unavailable::Error)?;
        let usage = Usage {
            allocated_bytes: q.allocated_bytes.saturating_sub(others.allocated_bytes),
            inodes: q.inodes.saturating_sub(others.inodes),
        };
        Ok(Reading { usage, covered })
    }

    /// The upper dir's usage from a raw reading: less the covered inodes as the
    /// last walk measured them; `Unknown` until a walk has, or when the mounts
    /// over those entries changed since.
    pub fn usage(&self, r: Reading) -> Result<Usage, Unavailable> {
        match (r.covered, self.covered) {
            (0, _) => Ok(r.usage),
            (n, Some((m, off))) if n == m => Ok(r.usage.minus(off)),
            _ => Err(Unavailable::Unknown),
        }
    }

    /// The upper dir's usage now.
    pub fn read(&self) -> Result<Usage, Unavailable> {
        self.read_raw().and_then(|r| self.usage(r))
    }

    /// What the id covers besides the upper dir: the layer dir and its other
    /// entries, and other trees with the id (see the module doc).
    /// Also returns how many of their entries are covered by a mount.
    pub fn others(&self) -> Result<(Usage, u64), Errno> {
        let mut listings = self.listings.locked();
        let mut m = Measure {
            dev: self.dev,
            links: HashMap::new(),
            usage: Usage::default(),
            budget: OTHERS_MAX,
            covered: 0,
            listings: &mut listings,
        };
        let root = |p: &Path| {
            rustix::fs::open(
                p,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
        };
        if let Some(layer) = &self.layer {
            m.tree(&root(layer)?, Path::new(""), self.upper.file_name(), 0)?;
        }
        for other in &self.others {
            if self.layer.as_deref().is_some_and(|l| other.starts_with(l)) {
                continue;
            }
            m.tree(&root(other)?, Path::new(""), None, 0)?;
        }
        // Inodes linked from outside these trees have their other names in the upper
        // dir (links cannot cross projects): the walk counts them.
        for (nlink, names, blocks) in m.links.values() {
            if names >= nlink {
                m.usage.allocated_bytes += blocks;
                m.usage.inodes += 1;
            }
        }
        let (usage, covered) = (m.usage, m.covered);
        listings.retain(|_, l| std::mem::take(&mut l.seen));
        Ok((usage, covered))
    }
}

/// Entries of the other trees measured at most: they are a handful of names in the
/// layouts that set project ids; anything larger is not what the id was set for.
const OTHERS_MAX: u64 = 100_000;

/// The names of a directory of the other trees as last read, kept while its inode,
/// mtime and ctime stay the same (every create, unlink, rename and link in it sets
/// both: the walker's rule, walk.rs). Its entries are stat'ed at every reading.
#[derive(Debug)]
struct Listing {
    mtime: (i64, u64),
    ctime: (i64, u64),
    names: Vec<CString>,
    /// Looked at by the current reading (the others are dropped after it).
    seen: bool,
}

type Listings = Arc<Mutex<HashMap<u64, Listing>>>;

struct Measure<'a> {
    dev: u64,
    /// Non-directories with more than one link: (st_nlink, names seen, bytes).
    links: HashMap<u64, (u64, u64, u64)>,
    usage: Usage,
    budget: u64,
    /// Entries with another filesystem mounted on them.
    covered: u64,
    listings: &'a mut HashMap<u64, Listing>,
}

impl Measure<'_> {
    fn count(&mut self, st: &Stat) {
        self.usage.allocated_bytes += (st.st_blocks as u64).saturating_mul(512);
        self.usage.inodes += 1;
    }

    /// Measures `rel` under `root` (an `O_PATH` fd of the layer dir or of another
    /// tree; `rel` empty: the root itself, without its entry named `skip`). These
    /// trees are outside every container's view (the upper dir is skipped), so
    /// stat'ing by relative path is safe; directories are opened with openat2's
    /// RESOLVE_BENEATH and RESOLVE_NO_SYMLINKS anyway.
    fn tree(&mut self, root: &OwnedFd, rel: &Path, skip: Option<&OsStr>, depth: u32) -> Result<(), Errno> {
        self.budget = self.budget.checked_sub(1).ok_or(Errno::NOSPC)?;
        if depth > 64 {
            return Err(Errno::NAMETOOLONG);
        }
        let st = if rel.as_os_str().is_empty() {
            rustix::fs::fstat(root)
        } else {
            statat(root, rel, AtFlags::SYMLINK_NOFOLLOW)
        };
        let st = match st {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(()), // a temp file that went away
            Err(e) => return Err(e),
        };
        if st.st_dev != self.dev {
            // A mountpoint (Docker's merged/): the directory under it is charged to
            // the id but cannot be stat'ed (see Reading).
            self.covered += 1;
            return Ok(());
        }
        let ftype = FileType::from_raw_mode(st.st_mode);
        if ftype != FileType::Directory && st.st_nlink > 1 {
            let e = self.links.entry(st.st_ino).or_insert((
                st.st_nlink,
                0,
                (st.st_blocks as u64).saturating_mul(512),
            ));
            e.1 += 1;
            return Ok(());
        }
        self.count(&st);
        if ftype != FileType::Directory {
            return Ok(());
        }
        let (mtime, ctime) = ((st.st_mtime, st.st_mtime_nsec), (st.st_ctime, st.st_ctime_nsec));
        let names = match self.listings.get_mut(&st.st_ino) {
            Some(l) if l.mtime == mtime && l.ctime == ctime => {
                l.seen = true;
                l.names.clone()
            }
            _ => {
                let here = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
                let fd = match openat2(
                    root,
                    here,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV,
                ) {
                    Ok(fd) => fd,
                    Err(Errno::NOENT) => return Ok(()),
                    Err(e) => return Err(e),
                };
                let mut names = Vec::new();
                for entry in rustix::fs::Dir::read_from(&fd)? {
                    let entry = entry?;
                    let n = entry.file_name();
                    if !matches!(n.to_bytes(), b"." | b"..") {
                        names.push(n.to_owned());
                    }
                }
                self.listings.insert(st.st_ino, Listing { mtime, ctime, names: names.clone(), seen: true });
                names
            }
        };
        for n in names {
            let n = OsStr::from_bytes(n.to_bytes());
            if depth == 0 && skip == Some(n) {
                continue;
            }
            self.tree(root, &rel.join(n), None, depth + 1)?;
        }
        Ok(())
    }
}

/// Looks for quota mode on an upper dir (`upper` as the agent opens it; `work` its
/// work dir, if known; `mountinfo` the agent's own, for the block device on kernels
/// before 5.14).
pub fn probe(upper: &Path, work: Option<&Path>, mountinfo: &Path) -> Result<QuotaTarget, Unavailable> {
    let fd = open_dir(upper).map_err(|_| Unavailable::Error)?;
    let st = rustix::fs::fstat(&fd).map_err(|_| Unavailable::Error)?;
    let fsx = get_fsx(fd.as_fd()).map_err(|e| match e {
        Errno::NOTTY | Errno::NOTSUP | Errno::INVAL | Errno::NOSYS => Unavailable::NoProjectIds,
        _ => Unavailable::Error,
    })?;
    let id = fsx.fsx_projid;
    if id == 0 {
        return Err(Unavailable::NoProjectId);
    }
    let dev = st.st_dev;
    let parent = upper.parent().filter(|p| !p.as_os_str().is_empty());
    let layer = parent.filter(|p| dir_project(p, dev) == Some(id)).map(Path::to_path_buf);
    if let Some(grand) = layer.as_deref().and_then(Path::parent) {
        if dir_project(grand, dev) == Some(id) {
            return Err(Unavailable::SharedProjectId);
        }
    }
    let others =
        work.filter(|w| dir_project(w, dev) == Some(id)).map(Path::to_path_buf).into_iter().collect();
    let mut target = QuotaTarget {
        upper: upper.to_owned(),
        project_id: id,
        dev,
        via: Via::Fd,
        layer,
        others,
        covered: None,
        listings: Listings::default(),
    };
    target.reach(mountinfo)?;
    Ok(target)
}

impl QuotaTarget {
    /// Picks how `quotactl` reaches the filesystem: `quotactl_fd` on 5.14+, else
    /// the block device from `mountinfo`; fails when neither reads the quota.
    fn reach(&mut self, mountinfo: &Path) -> Result<(), Unavailable> {
        match self.getquota(self.project_id) {
            Ok(_) => Ok(()),
            Err(Errno::NOSYS) => {
                // Before 5.14, or no quotactl at all: the block device tells which.
                let Some(device) = device_of(mountinfo, self.dev) else {
                    return Err(Unavailable::from_quotactl(
                        quotactl_dev(c"/", self.project_id, &mut empty_dqblk()).err().unwrap_or(Errno::NODEV),
                    ));
                };
                self.via = Via::Device(device);
                self.getquota(self.project_id).map(drop).map_err(Unavailable::from_quotactl)
            }
            Err(e) => Err(Unavailable::from_quotactl(e)),
        }
    }
}

/// What [`assign`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Assigned {
    pub project_id: u32,
    /// Directories and regular files that got the id.
    pub tagged: u64,
    /// Entries with another id already (left alone).
    pub foreign: u64,
    /// Symlinks, devices, FIFOs, sockets: cannot be opened to set the id.
    pub untaggable: u64,
}

/// Why [`assign`] did not set an id.
#[derive(Debug, thiserror::Error)]
pub enum AssignError {
    #[error("the upper dir already has project id {0}")]
    AlreadySet(u32),
    /// Tagging would make renames or links into the upper dir fail with EXDEV.
    #[error("refused: {0}")]
    Refused(Refusal),
    #[error("no unused project id left in the range")]
    RangeExhausted,
    #[error("project quotas unavailable: {}", .0.as_str())]
    Unavailable(Unavailable),
    #[error("cannot set the project id: {0}")]
    Io(#[from] Errno),
}

/// Why [`assign`] leaves an upper dir alone although it has no id: once an
/// inheriting directory has the id, ext4 and XFS refuse (EXDEV) every rename or
/// link into it of an inode without that id, so everything in the upper and work
/// trees must be able to take it first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the work dir is not known")]
    NoWorkDir,
    #[error("the work dir is on another filesystem")]
    WorkElsewhere,
    #[error("{0} already has project id {1}")]
    OtherId(PathBuf, u32),
    /// A symlink, device node (a whiteout: the shared one in work/), FIFO or socket:
    /// cannot be opened to set the id.
    #[error("{0} is neither a directory nor a regular file")]
    Untaggable(PathBuf),
    #[error("{0} is more than 256 directories deep")]
    TooDeep(PathBuf),
}

impl Refusal {
    /// A short fixed name (for logging once per upper dir and reason).
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::NoWorkDir => "no_work_dir",
            Refusal::WorkElsewhere => "work_elsewhere",
            Refusal::OtherId(..) => "other_id",
            Refusal::Untaggable(_) => "untaggable",
            Refusal::TooDeep(_) => "too_deep",
        }
    }
}

impl AssignError {
    /// A short fixed name of the reason.
    pub fn kind(&self) -> &'static str {
        match self {
            AssignError::AlreadySet(_) => "already_set",
            AssignError::Refused(r) => r.kind(),
            AssignError::RangeExhausted => "range_exhausted",
            AssignError::Unavailable(u) => u.as_str(),
            AssignError::Io(_) => "io",
        }
    }
}

/// How long an upper dir whose assignment failed (or every upper dir, once the
/// range is exhausted) waits before [`assign`] is tried again: a try may read both
/// trees and make up to 10,000 `quotactl` calls.
pub const ASSIGN_RETRY: Duration = Duration::from_secs(3600);

/// Failed assignments: when to try again, and what was logged already.
#[derive(Debug, Default)]
pub struct AssignMemo {
    failed: HashMap<PathBuf, (&'static str, Instant)>,
    exhausted: Option<Instant>,
}

impl AssignMemo {
    /// Whether [`assign`] should be tried for `upper` now.
    pub fn due(&self, upper: &Path, now: Instant) -> bool {
        let waiting = |t: Instant| now.saturating_duration_since(t) < ASSIGN_RETRY;
        !self.exhausted.is_some_and(waiting) && !self.failed.get(upper).is_some_and(|(_, t)| waiting(*t))
    }

    /// Records a failure; true when it is news (to be logged): another reason than
    /// the last one for this upper dir, or the range exhausted again after a retry.
    pub fn failed(&mut self, upper: &Path, e: &AssignError, now: Instant) -> bool {
        self.failed.retain(|_, (_, t)| now.saturating_duration_since(*t) < 2 * ASSIGN_RETRY);
        let kind = e.kind();
        let news = match e {
            AssignError::RangeExhausted => {
                self.exhausted.replace(now).is_none_or(|t| t + ASSIGN_RETRY <= now)
            }
            _ => self.failed.get(upper).is_none_or(|(k, _)| *k != kind),
        };
        self.failed.insert(upper.to_owned(), (kind, now));
        news
    }

    /// Forgets `upper` (it got an id).
    pub fn succeeded(&mut self, upper: &Path) {
        self.failed.remove(upper);
        self.exhausted = None;
    }
}

/// An id nobody uses: nothing charged to it and no limit set.
fn is_free(q: &libc::dqblk) -> bool {
    [q.dqb_curspace, q.dqb_curinodes, q.dqb_bhardlimit, q.dqb_bsoftlimit, q.dqb_ihardlimit, q.dqb_isoftlimit]
        .iter()
        .all(|v| *v == 0)
}

/// The first pass of [`assign`]: sets nothing, fails on the first entry that
/// could not take the id (see [`Refusal`]); the roots must have id 0 too.
pub fn check_taggable(root: &Path, dev: u64) -> Result<(), AssignError> {
    let fd = open_dir(root)?;
    let st = rustix::fs::fstat(&fd)?;
    if st.st_dev != dev {
        return Err(AssignError::Refused(Refusal::WorkElsewhere));
    }
    check_dir(fd, root.to_owned(), dev, 0)
}

fn check_dir(fd: OwnedFd, path: PathBuf, dev: u64, depth: u32) -> Result<(), AssignError> {
    if depth > 256 {
        return Err(AssignError::Refused(Refusal::TooDeep(path)));
    }
    let id = get_fsx(fd.as_fd())?.fsx_projid;
    if id != 0 {
        return Err(AssignError::Refused(Refusal::OtherId(path, id)));
    }
    for entry in rustix::fs::Dir::read_from(&fd)? {
        let entry = entry?;
        let name = entry.file_name();
        if matches!(name.to_bytes(), b"." | b"..") {
            continue;
        }
        let sub = path.join(OsStr::from_bytes(name.to_bytes()));
        // Gone meanwhile: nothing to tag.
        let st = match statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        if st.st_dev != dev {
            continue; // a mount on it: neither tagged nor moved
        }
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                match openat2(&fd, name, flags, Mode::empty(), how) {
                    Ok(d) => check_dir(d, sub, dev, depth + 1)?,
                    Err(Errno::NOENT) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            FileType::RegularFile => {
                let p = match openat2(
                    &fd,
                    name,
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                    how,
                ) {
                    Ok(p) => p,
                    Err(Errno::NOENT) => continue,
                    Err(e) => return Err(e.into()),
                };
                use std::os::fd::AsRawFd;
                let reopen = format!("/proc/self/fd/{}", p.as_raw_fd());
                let f = rustix::fs::open(
                    reopen.as_str(),
                    OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                if FileType::from_raw_mode(rustix::fs::fstat(&f)?.st_mode) != FileType::RegularFile {
                    return Err(AssignError::Refused(Refusal::Untaggable(sub)));
                }
                let id = get_fsx(f.as_fd())?.fsx_projid;
                if id != 0 {
                    return Err(AssignError::Refused(Refusal::OtherId(sub, id)));
                }
            }
            _ => return Err(AssignError::Refused(Refusal::Untaggable(sub))),
        }
    }
    Ok(())
}

/// Gives `upper` and `work` an unused project id from `first..=last`, starting
/// the search at `*next` (advanced past the id taken); see the module doc.
///
/// Refuses unless the work dir is known and both trees hold only directories and
/// regular files without an id ([`check_taggable`], a first pass that sets
/// nothing). Tags the work dir first, then the upper dir: a copy-up is a rename
/// from the work dir into the upper dir, which the kernel refuses (EXDEV) while the
/// upper dir inherits an id its work dir does not have.
pub fn assign(
    upper: &Path,
    work: Option<&Path>,
    mountinfo: &Path,
    (first, last): (u32, u32),
    next: &mut u32,
) -> Result<Assigned, AssignError> {
    let fd = open_dir(upper)?;
    let st = rustix::fs::fstat(&fd)?;
    let fsx = get_fsx(fd.as_fd()).map_err(|_| AssignError::Unavailable(Unavailable::NoProjectIds))?;
    if fsx.fsx_projid != 0 {
        return Err(AssignError::AlreadySet(fsx.fsx_projid));
    }
    let work = work.ok_or(AssignError::Refused(Refusal::NoWorkDir))?;
    // Only where the quota can be read: an id nobody accounts is of no use.
    let mut probe_target = QuotaTarget {
        upper: upper.to_owned(),
        project_id: first,
        dev: st.st_dev,
        via: Via::Fd,
        layer: None,
        others: Vec::new(),
        covered: None,
        listings: Listings::default(),
    };
    probe_target.reach(mountinfo).map_err(AssignError::Unavailable)?;
    // The first pass, before the id search: sets nothing.
    check_taggable(work, st.st_dev)?;
    check_taggable(upper, st.st_dev)?;
    // Unused: nothing charged to it and no limit set (someone may have set limits
    // on an id before giving it to a directory).
    let free = |id: u32| probe_target.dqblk(id).map(|q| is_free(&q));
    let span = u64::from(last - first) + 1;
    let mut id = None;
    for i in 0..span.min(10_000) {
        let cand = first + ((u64::from(next.saturating_sub(first)) + i) % span) as u32;
        if free(cand).map_err(|e| AssignError::Unavailable(Unavailable::from_quotactl(e)))? {
            id = Some(cand);
            break;
        }
    }
    let id = id.ok_or(AssignError::RangeExhausted)?;
    *next = if id == last { first } else { id + 1 };
    let mut a = Assigned { project_id: id, ..Default::default() };
    let mut tagger = Tagger { id, dev: st.st_dev, a: &mut a };
    // The work dir first: see above.
    for root in [work, upper] {
        let fd = open_dir(root)?;
        tagger.dir(fd, 0)?;
    }
    Ok(a)
}

struct Tagger<'a> {
    id: u32,
    dev: u64,
    a: &'a mut Assigned,
}

impl Tagger<'_> {
    /// Sets the id on `fd` unless it has another one; false when it had.
    fn set(&mut self, fd: BorrowedFd<'_>, inherit: bool) -> Result<bool, Errno> {
        let mut x = get_fsx(fd)?;
        if x.fsx_projid != 0 && x.fsx_projid != self.id {
            self.a.foreign += 1;
            return Ok(false);
        }
        x.fsx_projid = self.id;
        if inherit {
            x.fsx_xflags |= FS_XFLAG_PROJINHERIT;
        }
        set_fsx(fd, x)?;
        self.a.tagged += 1;
        Ok(true)
    }

    fn dir(&mut self, fd: OwnedFd, depth: u32) -> Result<(), Errno> {
        if depth > 256 || !self.set(fd.as_fd(), true)? {
            return Ok(()); // another project's tree: left alone
        }
        for entry in rustix::fs::Dir::read_from(&fd)? {
            let entry = entry?;
            let name = entry.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            let Ok(st) = statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW) else { continue };
            if st.st_dev != self.dev {
                continue;
            }
            let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV;
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {
                    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                    if let Ok(sub) = openat2(&fd, name, flags, Mode::empty(), how) {
                        self.dir(sub, depth + 1)?;
                    }
                }
                FileType::RegularFile => {
                    // O_PATH first: a name swapped for a device meanwhile is never opened.
                    let Ok(p) = openat2(
                        &fd,
                        name,
                        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                        how,
                    ) else {
                        continue;
                    };
                    let Ok(pst) = rustix::fs::fstat(&p) else { continue };
                    if FileType::from_raw_mode(pst.st_mode) != FileType::RegularFile
                        || pst.st_ino != st.st_ino
                    {
                        continue;
                    }
                    use std::os::fd::AsRawFd;
                    let reopen = format!("/proc/self/fd/{}", p.as_raw_fd());
                    match rustix::fs::open(
                        reopen.as_str(),
                        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
                        Mode::empty(),
                    ) {
                        Ok(f) => {
                            self.set(f.as_fd(), false)?;
                        }
                        Err(_) => self.a.untaggable += 1,
                    }
                }
                _ => self.a.untaggable += 1,
            }
        }
        Ok(())
    }
}

/// The quota side of a full walk: raw readings just before and after it decide
/// whether they confirm the walk's figures, and measure the covered inodes (see
/// [`Reading`]); returns the usage to show.
pub fn verify(
    target: &mut QuotaTarget,
    before: Result<Reading, Unavailable>,
    after: Result<Reading, Unavailable>,
    walk: Usage,
) -> Result<Usage, Unavailable> {
    let after = after?;
    if before != Ok(after) {
        // The tree changed during the walk: no verdict; the later reading stands.
        return target.usage(after);
    }
    let diff = after.usage.minus(walk);
    if after.usage == walk {
        target.covered = None;
        Ok(walk)
    } else if after.covered > 0
        && walk.plus(diff) == after.usage
        && diff.inodes == after.covered
        && diff.allocated_bytes <= after.covered * COVERED_MAX_BYTES
    {
        target.covered = Some((after.covered, diff));
        Ok(walk)
    } else {
        Err(Unavailable::Mismatch)
    }
}

/// What one directory under a mountpoint may hold, at most, to be taken as the
/// difference between quota and walk: an empty directory's blocks.
const COVERED_MAX_BYTES: u64 = 64 << 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_device_from_mountinfo() {
        let mi = "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n\
                  40 22 7:0 / /mnt/x\\040y rw - xfs /dev/loop\\0400 rw,prjquota\n\
                  41 22 0:5 / /dev rw - devtmpfs dev rw\n";
        assert_eq!(device_in(mi, 8, 1).as_deref(), Some(c"/dev/sda1"));
        assert_eq!(device_in(mi, 7, 0).as_deref(), Some(c"/dev/loop 0"), "escapes undone");
        assert_eq!(device_in(mi, 0, 5), None, "not a block device path");
        assert_eq!(device_in(mi, 9, 9), None);
    }

    #[test]
    fn a_walk_of_an_unchanged_tree_decides() {
        let u = |b, i| Usage { allocated_bytes: b, inodes: i };
        let r = |b, i, covered| Ok(Reading { usage: u(b, i), covered });
        let mut t = QuotaTarget {
            upper: PathBuf::from("/u"),
            project_id: 7,
            dev: 0,
            via: Via::Fd,
            layer: None,
            others: Vec::new(),
            covered: None,
            listings: Listings::default(),
        };
        assert_eq!(verify(&mut t, r(8192, 3, 0), r(8192, 3, 0), u(8192, 3)), Ok(u(8192, 3)));
        assert_eq!(verify(&mut t, r(8192, 3, 0), r(8192, 3, 0), u(8192, 4)), Err(Unavailable::Mismatch));
        assert_eq!(
            verify(&mut t, r(9000, 3, 0), r(9000, 3, 0), u(8192, 2)),
            Err(Unavailable::Mismatch),
            "no mount"
        );
        // The tree changed during the walk: no verdict, the later reading stands.
        assert_eq!(verify(&mut t, r(4096, 2, 0), r(8192, 3, 0), u(8192, 4)), Ok(u(8192, 3)));
        assert_eq!(verify(&mut t, Err(Unavailable::Error), r(1, 1, 0), u(2, 2)), Ok(u(1, 1)));
        assert_eq!(
            verify(&mut t, r(1, 1, 0), Err(Unavailable::NotAccounted), u(1, 1)),
            Err(Unavailable::NotAccounted)
        );
        // One entry covered by a mount: one inode and a block more than the walk.
        assert_eq!(
            verify(&mut t, r(9216, 4, 1), r(9216, 4, 1), u(8192, 2)),
            Err(Unavailable::Mismatch),
            "2 inodes"
        );
        assert_eq!(verify(&mut t, r(9216, 4, 1), r(9216, 4, 1), u(8192, 3)), Ok(u(8192, 3)));
        assert_eq!(
            t.usage(Reading { usage: u(20_480, 9), covered: 1 }),
            Ok(u(19_456, 8)),
            "less the covered dir"
        );
        assert_eq!(t.usage(Reading { usage: u(20_480, 9), covered: 0 }), Ok(u(20_480, 9)));
        assert_eq!(
            t.usage(Reading { usage: u(20_480, 9), covered: 2 }),
            Err(Unavailable::Unknown),
            "mounts changed"
        );
    }

    /// What the id covers besides the upper dir, in Docker's layout: the layer dir,
    /// work/ and its contents, small files; not the upper dir, and not an inode that
    /// also has a name in the upper dir (the walk counts it).
    #[test]
    fn others_in_the_layer_dir() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let layer = tmp.path().join("layer");
        for d in ["diff/sub", "work/work"] {
            std::fs::create_dir_all(layer.join(d)).expect("mkdir");
        }
        std::fs::write(layer.join("link"), b"L5DJ3T").expect("write");
        std::fs::write(layer.join("diff/sub/big"), vec![1u8; 100_000]).expect("write");
        // Linked from work/ into the upper dir (overlayfs' shared whiteout inode), and
        // linked within work/ only (both names outside the upper dir).
        std::fs::write(layer.join("work/#1"), b"").expect("write");
        std::fs::hard_link(layer.join("work/#1"), layer.join("diff/wh")).expect("link");
        std::fs::write(layer.join("work/work/#2"), vec![2u8; 5000]).expect("write");
        std::fs::hard_link(layer.join("work/work/#2"), layer.join("work/#3")).expect("link");
        let st = |p: &str| rustix::fs::stat(layer.join(p)).expect("stat");
        let dev = st("").st_dev;
        let t = QuotaTarget {
            upper: layer.join("diff"),
            project_id: 1,
            dev,
            via: Via::Fd,
            layer: Some(layer.clone()),
            others: vec![layer.join("work")],
            covered: None,
            listings: Listings::default(),
        };
        let (u, covered) = t.others().expect("others");
        let want: Vec<Stat> =
            ["", "link", "work", "work/work", "work/work/#2"].iter().map(|p| st(p)).collect();
        let bytes: u64 = want.iter().map(|s| s.st_blocks as u64 * 512).sum();
        assert_eq!((u.inodes, u.allocated_bytes, covered), (5, bytes, 0), "{u:?}");
        // Again from the cached listings (unchanged directories), then with a change.
        assert_eq!(t.others().expect("others"), (u, 0));
        assert_eq!(t.listings.locked().len(), 3, "layer, work, work/work");
        std::fs::write(layer.join("work/work/#4"), vec![3u8; 9000]).expect("write");
        let (u2, _) = t.others().expect("others");
        assert_eq!(u2.inodes, 6, "the new name in work/work is seen: {u2:?}");
        std::fs::remove_dir_all(layer.join("work/work")).expect("rm");
        let (u3, _) = t.others().expect("others");
        assert_eq!(u3.inodes, 4, "layer, link, work, #3 (#2 gone: one link left): {u3:?}");
        assert_eq!(t.listings.locked().len(), 2, "work/work's listing dropped");
        // A work dir with the id outside the layer dir is measured by itself.
        std::fs::create_dir(layer.join("work/work")).expect("mkdir");
        let t = QuotaTarget { layer: None, ..t };
        let (u, _) = t.others().expect("others");
        assert_eq!(u.inodes, 3, "work, work/work, #3: {u:?}");
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/dev/a\040b"), b"/dev/a b", "an escape at the very end");
        assert_eq!(unescape(r"\134"), b"\\");
        assert_eq!(unescape(r"/x\377"), b"/x\xff");
        assert_eq!(unescape(r"/x\777"), br"/x\777", "more than a byte: left as it is");
        assert_eq!(unescape(r"/x\04"), br"/x\04", "too short");
        assert_eq!(unescape(r"/x\"), br"/x\");
    }

    #[test]
    fn a_free_id_has_no_usage_and_no_limits() {
        let q = empty_dqblk();
        assert!(is_free(&q));
        for set in [
            |q: &mut libc::dqblk| q.dqb_curspace = 1,
            |q: &mut libc::dqblk| q.dqb_curinodes = 1,
            |q: &mut libc::dqblk| q.dqb_bhardlimit = 1,
            |q: &mut libc::dqblk| q.dqb_bsoftlimit = 1,
            |q: &mut libc::dqblk| q.dqb_ihardlimit = 1,
            |q: &mut libc::dqblk| q.dqb_isoftlimit = 1,
        ] {
            let mut q = empty_dqblk();
            set(&mut q);
            assert!(!is_free(&q), "{q:?}");
        }
    }

    /// The first pass of an assignment: only directories and regular files.
    #[test]
    fn only_directories_and_regular_files_can_take_an_id() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("upper");
        std::fs::create_dir_all(root.join("a/b")).expect("mkdir");
        std::fs::write(root.join("a/b/f"), b"x").expect("write");
        let dev = rustix::fs::stat(&root).expect("stat").st_dev;
        if get_fsx(open_dir(&root).expect("open").as_fd()).is_err() {
            eprintln!("skipped: no FS_IOC_FSGETXATTR here");
            return;
        }
        check_taggable(&root, dev).expect("dirs and a file");
        std::os::unix::fs::symlink("f", root.join("a/b/l")).expect("symlink");
        let e = check_taggable(&root, dev).expect_err("a symlink");
        assert!(matches!(&e, AssignError::Refused(Refusal::Untaggable(p)) if p.ends_with("a/b/l")), "{e:?}");
        std::fs::remove_file(root.join("a/b/l")).expect("rm");
        rustix::fs::mknodat(rustix::fs::CWD, root.join("fifo"), FileType::Fifo, Mode::RUSR, 0)
            .expect("mkfifo");
        let e = check_taggable(&root, dev).expect_err("a FIFO");
        assert_eq!(e.kind(), "untaggable", "{e}");
        let e = check_taggable(&root, dev + 1).expect_err("elsewhere");
        assert_eq!(e.kind(), "work_elsewhere");
    }

    #[test]
    fn no_assignment_without_the_work_dir() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mi = Path::new("/proc/self/mountinfo");
        match assign(tmp.path(), None, mi, (1000, 1099), &mut 1000) {
            // No project ids on this filesystem at all: nothing to refuse.
            Err(AssignError::Unavailable(_)) => {}
            r => assert!(matches!(r, Err(AssignError::Refused(Refusal::NoWorkDir))), "{r:?}"),
        }
    }

    #[test]
    fn failed_assignments_wait_and_log_once() {
        let mut m = AssignMemo::default();
        let (u, v) = (Path::new("/u"), Path::new("/v"));
        let t0 = Instant::now();
        let refused = AssignError::Refused(Refusal::NoWorkDir);
        assert!(m.due(u, t0));
        assert!(m.failed(u, &refused, t0), "first time: logged");
        assert!(!m.due(u, t0 + Duration::from_secs(60)), "not every walk");
        assert!(m.due(v, t0), "other upper dirs still tried");
        assert!(m.due(u, t0 + ASSIGN_RETRY));
        assert!(!m.failed(u, &refused, t0 + ASSIGN_RETRY), "same reason: not logged again");
        assert!(m.failed(u, &AssignError::Io(Errno::IO), t0 + ASSIGN_RETRY), "another reason");
        assert!(m.failed(v, &AssignError::RangeExhausted, t0), "exhausted: logged");
        assert!(!m.due(Path::new("/w"), t0 + Duration::from_secs(1)), "no search for anyone");
        let later = t0 + ASSIGN_RETRY;
        assert!(m.due(Path::new("/w"), later));
        assert!(!m.failed(Path::new("/w"), &AssignError::RangeExhausted, later - Duration::from_secs(1)));
        m.succeeded(u);
        assert!(m.due(u, t0 + ASSIGN_RETRY + Duration::from_secs(1)));
    }

    #[test]
    fn a_directory_without_project_ids() {
        // tmpfs or a filesystem where the ioctl works but nobody set an id: either
        // way no quota mode, and a reason from the bounded set.
        let tmp = tempfile::tempdir().expect("tempdir");
        let e = probe(tmp.path(), None, Path::new("/proc/self/mountinfo")).expect_err("no id");
        assert!(matches!(e, Unavailable::NoProjectId | Unavailable::NoProjectIds), "{e:?}");
        assert!(Unavailable::ALL.contains(&e));
    }
}
