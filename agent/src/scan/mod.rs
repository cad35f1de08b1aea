//! Upper-dir measurement: what a mount's upper dir holds, by kind of entry.
//!
//! [`walk`] measures one directory tree; [`pool`] runs walks off the request path on
//! dedicated threads, on an interval, and keeps the last result of each upper dir
//! (its parts: `store.rs`, `queue.rs`, `prioritize.rs`, `workers.rs`, `job.rs`,
//! `quota_refresh.rs`); [`quota`] reads bytes and inodes from project quotas
//! instead where it can; [`budget`] and [`sched`] are what the scan threads may cost.
//! [`reach`] opens upper dirs without pinning the user's mounts, and [`cancel`]
//! stops a scan whose mount left the mount table.

pub mod budget;
pub mod cancel;
mod due;
mod job;
pub mod pool;
mod prioritize;
mod queue;
pub mod quota;
mod quota_refresh;
pub mod reach;
pub mod sched;
mod store;
pub mod walk;
mod wanted;
mod workers;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use budget::Budget;
pub use cancel::Cancel;
pub use pool::ScanPool;
pub use reach::{open_upper, Join, Place, UpperHandle};
pub use store::{ActivitySignal, ScanRecord, ScanStore};
pub use walk::{scan, scan_upper, OwnCwd, ScanCache, ScanOptions, XattrNamespace};
pub use wanted::Roots;

/// The kind of an upper-dir entry; every entry but the upper dir itself gets one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntryKind {
    /// Plain directory (copied up as a parent, or created).
    Dir = 0,
    /// Directory marked opaque: hides everything below it in the lower layers.
    OpaqueDir,
    /// Non-directory with no overlay origin: created in the container.
    Created,
    /// Non-directory copied up from a lower layer (has an origin xattr).
    CopiedUp,
    /// File copied up metadata-only (metacopy xattr): data still in the lower layer.
    Metacopy,
    /// Whiteout: a 0/0 character device or a file with the whiteout xattr.
    Whiteout,
}

impl EntryKind {
    pub const ALL: [EntryKind; 6] = [
        EntryKind::Dir,
        EntryKind::OpaqueDir,
        EntryKind::Created,
        EntryKind::CopiedUp,
        EntryKind::Metacopy,
        EntryKind::Whiteout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Dir => "dir",
            EntryKind::OpaqueDir => "opaque_dir",
            EntryKind::Created => "created",
            EntryKind::CopiedUp => "copied_up",
            EntryKind::Metacopy => "metacopy",
            EntryKind::Whiteout => "whiteout",
        }
    }
}

/// Why part of a scan (or all of it) failed; a bounded label set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorReason {
    /// The upper dir itself does not exist (whole scan).
    Missing,
    /// EACCES / EPERM.
    PermissionDenied,
    /// ENOENT / ENOTDIR / ELOOP: the entry changed or went away while we looked.
    Vanished,
    /// ENAMETOOLONG: a path deeper than the kernel resolves in one call.
    NameTooLong,
    /// EMFILE / ENFILE / ENOMEM.
    Resources,
    /// EIO and anything else.
    Io,
    /// The scan ran past `scan.timeout` (stopped, or stuck in a filesystem call).
    Timeout,
}

impl ErrorReason {
    pub fn from_errno(e: rustix::io::Errno) -> Self {
        use rustix::io::Errno;
        match e {
            Errno::ACCESS | Errno::PERM => ErrorReason::PermissionDenied,
            Errno::NOENT | Errno::NOTDIR | Errno::LOOP | Errno::STALE => ErrorReason::Vanished,
            Errno::NAMETOOLONG => ErrorReason::NameTooLong,
            Errno::MFILE | Errno::NFILE | Errno::NOMEM => ErrorReason::Resources,
            _ => ErrorReason::Io,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorReason::Missing => "missing",
            ErrorReason::PermissionDenied => "permission_denied",
            ErrorReason::Vanished => "vanished",
            ErrorReason::NameTooLong => "name_too_long",
            ErrorReason::Resources => "resources",
            ErrorReason::Io => "io",
            ErrorReason::Timeout => "timeout",
        }
    }
}

/// A scan that could not start at all.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot open upper dir {path}: {source}")]
    Open { path: PathBuf, reason: ErrorReason, source: std::io::Error },
}

impl ScanError {
    /// An upper dir that could not be opened (ENOENT: it is missing).
    pub fn open(path: &std::path::Path, e: rustix::io::Errno) -> Self {
        let reason =
            if e == rustix::io::Errno::NOENT { ErrorReason::Missing } else { ErrorReason::from_errno(e) };
        ScanError::Open { path: path.to_owned(), reason, source: e.into() }
    }

    pub fn reason(&self) -> ErrorReason {
        match self {
            ScanError::Open { reason, .. } => *reason,
        }
    }
}

/// What one scan of an upper dir found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanResult {
    /// Sum of st_blocks x 512 over distinct inodes, the upper dir included (`du -s -B1`).
    pub allocated_bytes: u64,
    /// Sum of st_size over distinct inodes (`du -s -b`).
    pub apparent_bytes: u64,
    /// Distinct inodes, the upper dir included (`du -s --inodes`).
    pub inodes: u64,
    /// Entries (names) by [`EntryKind`]: a hard-linked inode counts once per name,
    /// so they add up to `inodes - 1` only without hard links.
    pub entries: [u64; 6],
    /// st_size summed over distinct `copied_up` inodes.
    pub copied_up_bytes: u64,
    /// Entries that could not be read, by reason.
    pub errors: BTreeMap<ErrorReason, u64>,
    /// The upper dir's filesystem: bytes available to unprivileged users, and size.
    pub fs_avail_bytes: u64,
    pub fs_size_bytes: u64,
    /// The walk stopped at its deadline: the figures cover part of the tree.
    pub timed_out: bool,
    /// The walk was stopped from outside (its mount left the mount table): the
    /// figures cover part of the tree and are not recorded.
    pub cancelled: bool,
    /// Directories read (`getdents`): new or changed since the last scan.
    pub dirs_read: u64,
    /// Directories unchanged since the last scan: names from the cache.
    pub dirs_cached: u64,
    /// `llistxattr` calls made.
    pub xattr_reads: u64,
    /// Non-directory inodes copied-up (origin or metacopy) now that were not at the
    /// last complete scan; `None` for a first or an incomplete scan.
    pub copy_ups_seen: Option<u64>,
}

impl ScanResult {
    pub fn entries(&self, kind: EntryKind) -> u64 {
        self.entries[kind as usize]
    }
}
