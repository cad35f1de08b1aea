//! What a scan of an upper dir keeps for the next scan of it (see the module doc
//! of `walk`, "Rescans"): every directory's names, with each entry's ctime and
//! marks, and the copied-up inodes.

use std::collections::{HashMap, HashSet};

use rustix::fs::Stat;

use super::super::EntryKind;

/// Bits of a cached entry's `marks` byte; the low three bits hold its [`EntryKind`].
const KIND_MASK: u8 = 0x07;
pub(super) const IS_DIR: u8 = 0x08;
pub(super) const MARKS_CHILDREN: u8 = 0x10;
/// Another filesystem is mounted on the name: not counted, stat'ed again.
pub(super) const MOUNTED: u8 = 0x20;
/// A 0/0 whiteout device with no blocks: not stat'ed again while its directory is
/// unchanged; its cached "ctime" slot holds its inode number instead.
pub(super) const WHITEOUT_DEV: u8 = 0x40;
/// With `WHITEOUT_DEV`: the inode had more than one link (the shared whiteout).
pub(super) const LINKED: u8 = 0x80;

pub(super) fn kind_of(marks: u8) -> EntryKind {
    EntryKind::ALL.get((marks & KIND_MASK) as usize).copied().unwrap_or(EntryKind::Created)
}

/// The names of one directory as the last scan found them.
#[derive(Debug)]
pub(super) struct DirEntries {
    pub(super) mtime: i64,
    pub(super) ctime: i64,
    /// Whether the children's xattrs were looked at (the dir's own marks).
    pub(super) read_children: bool,
    /// Scan generation that last saw this directory.
    pub(super) generation: u64,
    /// Names back to back, each ended by a NUL.
    pub(super) names: Vec<u8>,
    /// Per name: ctime (ns) and marks at the last scan.
    pub(super) ctimes: Vec<i64>,
    pub(super) marks: Vec<u8>,
}

/// What a scan of one upper dir keeps for the next scan of it: the entries of
/// every directory (about 9 bytes plus the name per entry), and the inodes found
/// copied-up, to count copy-ups between scans.
#[derive(Debug, Default)]
pub struct ScanCache {
    pub(super) dirs: HashMap<u64, DirEntries>,
    pub(super) generation: u64,
    /// Copied-up and metacopy inodes at the last complete scan; `None` before it.
    pub(super) copied: Option<HashSet<u64>>,
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

pub(super) fn mtime(st: &Stat) -> i64 {
    ns_time(st.st_mtime, st.st_mtime_nsec)
}

pub(super) fn ctime(st: &Stat) -> i64 {
    ns_time(st.st_ctime, st.st_ctime_nsec)
}
