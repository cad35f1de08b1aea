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
//! Assigning ids (opt-in, writes to the filesystem): [`assign()`] gives an upper dir
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
//!
//! Files: `sys.rs` holds every raw ioctl and `quotactl` call; [`reader`] finds quota
//! mode ([`probe`]) and reads and checks the usage, `others.rs` measures what else
//! the id covers and `device.rs` finds the block device for older kernels;
//! [`settings`] is the `scan.quota*` configuration the scan threads use; [`mod@assign`]
//! holds everything that writes to the user's filesystem, and nothing else does.

pub mod assign;
mod device;
mod others;
pub mod reader;
pub mod settings;
mod sys;

use rustix::io::Errno;

pub use assign::{assign, check_taggable, AssignError, AssignMemo, Assigned, Refusal, ASSIGN_RETRY};
pub use reader::{probe, project_of, verify, QuotaTarget};
pub use settings::QuotaSettings;

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
    /// The upper dir is in another mount namespace: quota mode's readings open
    /// the upper dir and its neighbours by path, which there would be on the
    /// user's mount (reach.rs), so the walk measures it.
    OtherNamespace,
    /// The upper dir or its quota could not be read (permissions, I/O).
    Error,
}

impl Unavailable {
    pub const ALL: [Unavailable; 10] = [
        Unavailable::Disabled,
        Unavailable::Unknown,
        Unavailable::NoProjectIds,
        Unavailable::NoProjectId,
        Unavailable::KernelWithoutQuota,
        Unavailable::NotAccounted,
        Unavailable::SharedProjectId,
        Unavailable::Mismatch,
        Unavailable::OtherNamespace,
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
            Unavailable::OtherNamespace => "other_namespace",
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
