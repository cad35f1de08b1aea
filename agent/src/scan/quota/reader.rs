//! Reading quota mode: whether an upper dir has it ([`probe`]), its usage from the
//! project quota ([`QuotaTarget::read`]), and the check of a reading against a full
//! walk ([`verify`]). Read-only: `FS_IOC_FSGETXATTR` and `quotactl` (see `sys.rs`).

use std::ffi::CString;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use super::device::device_of;
use super::others::Listings;
use super::sys::{empty_dqblk, get_fsx, open_dir, quotactl_dev, quotactl_fd};
use super::{Reading, Unavailable, Usage};

/// How `quotactl` reaches the filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Via {
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
    pub(super) dev: u64,
    pub(super) via: Via,
    /// The parent dir, when it has the same id: it and its entries but the upper
    /// dir are subtracted.
    pub(super) layer: Option<PathBuf>,
    /// Other trees with the id (the work dir outside `layer`), subtracted.
    pub(super) others: Vec<PathBuf>,
    /// Covered entries and their usage, as the last walk measured them (see [`Reading`]).
    pub(super) covered: Option<(u64, Usage)>,
    /// Directory listings of the other trees, from the last reading.
    pub(super) listings: Listings,
}

/// Equal: the same settings (the listings are a cache).
impl PartialEq for QuotaTarget {
    fn eq(&self, o: &Self) -> bool {
        (&self.upper, self.project_id, self.dev, &self.via, &self.layer, &self.others, self.covered)
            == (&o.upper, o.project_id, o.dev, &o.via, &o.layer, &o.others, o.covered)
    }
}

impl Eq for QuotaTarget {}

/// The project id of a directory or regular file.
pub fn project_of(path: &Path) -> Result<u32, Errno> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(get_fsx(fd.as_fd())?.fsx_projid)
}

/// The project id of a directory on device `dev`, `None` if it is elsewhere or unreadable.
fn dir_project(path: &Path, dev: u64) -> Option<u32> {
    let fd = open_dir(path).ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    (st.st_dev == dev).then_some(())?;
    get_fsx(fd.as_fd()).ok().map(|x| x.fsx_projid)
}

impl QuotaTarget {
    /// The usage in the quota record of `id` on this target's filesystem.
    fn getquota(&self, id: u32) -> Result<Usage, Errno> {
        self.dqblk(id).map(|q| Usage { allocated_bytes: q.dqb_curspace, inodes: q.dqb_curinodes })
    }

    /// The raw quota record of `id`; all zero where there is none.
    pub(super) fn dqblk(&self, id: u32) -> Result<libc::dqblk, Errno> {
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
    pub(super) fn reach(&mut self, mountinfo: &Path) -> Result<(), Unavailable> {
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
