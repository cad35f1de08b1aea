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
//! with no id, and its work dir, an unused id from a configured range, with
//! `FS_XFLAG_PROJINHERIT` on every directory (new entries inherit the id) and the id on
//! every existing directory and regular file. Both the upper and the work dir get it:
//! ext4 and XFS refuse (`EXDEV`) renames and links into an inheriting directory from
//! another project, and overlayfs makes copy-ups and whiteouts in the work dir and
//! moves them into the upper dir. It never changes an id that is already set.
//! Symlinks, devices, FIFOs and sockets that exist before the id is set cannot be
//! opened to set it: they stay outside the quota, and the comparison with the walk
//! then keeps the upper dir out of quota mode.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
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
    /// The raw quota record of `id` on this target's filesystem.
    fn getquota(&self, id: u32) -> Result<Usage, Errno> {
        let mut q = empty_dqblk();
        let r = match &self.via {
            Via::Fd => quotactl_fd(open_dir(&self.upper)?.as_fd(), id, &mut q),
            Via::Device(dev) => quotactl_dev(dev, id, &mut q),
        };
        match r {
            Ok(()) => Ok(Usage { allocated_bytes: q.dqb_curspace, inodes: q.dqb_curinodes }),
            // XFS: no record for this id (nothing charged to it).
            Err(Errno::NOENT) => Ok(Usage::default()),
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
            let e = self.links.entry(st.st_ino).or_insert((st.st_nlink, 0, (st.st_blocks as u64) * 512));
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
    #[error("no unused project id left in the range")]
    RangeExhausted,
    #[error("project quotas unavailable: {}", .0.as_str())]
    Unavailable(Unavailable),
    #[error("cannot set the project id: {0}")]
    Io(#[from] Errno),
}

/// Gives `upper` (and `work`) an unused project id from `first..=last`, starting
/// the search at `*next` (advanced past the id taken); see the module doc.
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
    let free = |id: u32| probe_target.getquota(id).map(|u| u == Usage::default());
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
    for root in std::iter::once(upper).chain(work) {
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
    fn a_directory_without_project_ids() {
        // tmpfs or a filesystem where the ioctl works but nobody set an id: either
        // way no quota mode, and a reason from the bounded set.
        let tmp = tempfile::tempdir().expect("tempdir");
        let e = probe(tmp.path(), None, Path::new("/proc/self/mountinfo")).expect_err("no id");
        assert!(matches!(e, Unavailable::NoProjectId | Unavailable::NoProjectIds), "{e:?}");
        assert!(Unavailable::ALL.contains(&e));
    }
}
