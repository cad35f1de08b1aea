//! The record store: what the pool knows of each upper dir across scans (last
//! result, totals, quota state, what the next scan needs), shared by the scan
//! threads and read by the metrics at scrape time.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use super::budget::Budget;
use super::cancel::Cancel;
use super::due::DueIndex;
use super::quota::{QuotaSettings, QuotaTarget, Unavailable, Usage};
use super::reach::Place;
use super::{ErrorReason, ScanCache, ScanResult};
use crate::activity::Activity;
use crate::config::ScanConfig;
use crate::discovery::{Device, UpperDir};
use crate::sync::LockExt;

/// The state of one upper dir across scans.
#[derive(Debug)]
pub struct ScanRecord {
    /// Last completed scan, if any.
    pub last: Option<ScanResult>,
    /// When the last completed scan ended.
    pub last_end: Option<SystemTime>,
    pub last_duration: Duration,
    /// Errors by reason over the life of this upper dir (entries and whole scans).
    pub errors_total: BTreeMap<ErrorReason, u64>,
    pub scans_total: u64,
    /// Non-directory inodes that became copied-up between complete scans.
    pub copy_ups_seen_total: u64,
    /// The last scan timed out, or the current one is stuck past its deadline.
    pub stale: bool,
    /// The last complete scan found the upper dir changed since the one before.
    pub(super) changed: bool,
    /// Quota mode (bytes and inodes from the project quota), or why not.
    pub quota: Result<QuotaTarget, Unavailable>,
    /// The last quota reading and when it was taken (quota mode only).
    pub usage: Option<(Usage, SystemTime)>,
    /// What the last scan keeps for the next one; away while a scan runs.
    pub(super) cache: Option<ScanCache>,
    pub(super) in_flight: bool,
    /// When the scan in flight started, and its deadline.
    pub(super) started: Option<(Instant, Instant)>,
    /// The scan in flight has been declared hung (shared with its worker, which
    /// needs it even when the record is gone).
    pub(super) hung: Arc<AtomicBool>,
    /// The token of the last job queued: stops it. A job writes its outcome only
    /// to the record that holds its token.
    pub(super) cancel: Arc<Cancel>,
    /// The mounts (device, mount id) on the upper dir when that job was queued.
    pub(super) job_mounts: Vec<(Device, i32)>,
    pub(super) next_due: Instant,
    /// The devices of the mounts on this upper dir.
    pub(super) devices: Vec<Device>,
    /// Their copy-up count ([`Activity`]) when the last scan started.
    pub(super) copy_ups_at_scan: u64,
    /// The upper dir's own inode when the last scan started.
    pub(super) root_stamp: Option<RootStamp>,
    /// Where the upper dir is opened (under `rootfs`, or its namespace's root).
    pub(super) open_at: Place,
    /// Activity seen since the last scan started, and by which signal.
    pub(super) activity: Option<ActivitySignal>,
}

/// What a `stat` of an upper dir says about its own entries: a name added, removed
/// or renamed in it changes its mtime and ctime; a new dir in its place, its inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RootStamp {
    pub(super) ino: u64,
    pub(super) mtime: (i64, u64),
    pub(super) ctime: (i64, u64),
}

impl RootStamp {
    pub(super) fn of(path: &Path) -> Option<RootStamp> {
        rustix::fs::stat(path).ok().map(|st| RootStamp::from(&st))
    }

    /// Of an open upper dir (no lookup of its path).
    pub(super) fn of_fd(fd: BorrowedFd<'_>) -> Option<RootStamp> {
        rustix::fs::fstat(fd).ok().map(|st| RootStamp::from(&st))
    }

    fn from(st: &rustix::fs::Stat) -> RootStamp {
        RootStamp {
            ino: st.st_ino,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }
}

/// What moved an upper dir ahead in the queue; a bounded label set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivitySignal {
    /// The copy-up probes counted copy-ups on one of its mounts.
    CopyUps = 0,
    /// The upper dir's own mtime, ctime or inode changed.
    UpperChanged,
}

impl ActivitySignal {
    pub const ALL: [ActivitySignal; 2] = [ActivitySignal::CopyUps, ActivitySignal::UpperChanged];

    pub fn as_str(self) -> &'static str {
        match self {
            ActivitySignal::CopyUps => "copy_ups",
            ActivitySignal::UpperChanged => "upper_changed",
        }
    }
}

impl ScanRecord {
    pub(super) fn new(now: Instant) -> Self {
        ScanRecord {
            last: None,
            last_end: None,
            last_duration: Duration::ZERO,
            errors_total: BTreeMap::new(),
            scans_total: 0,
            copy_ups_seen_total: 0,
            stale: false,
            changed: false,
            quota: Err(Unavailable::Unknown),
            usage: None,
            cache: Some(ScanCache::default()),
            in_flight: false,
            started: None,
            hung: Arc::default(),
            cancel: Arc::default(),
            job_mounts: Vec::new(),
            next_due: now,
            devices: Vec::new(),
            copy_ups_at_scan: 0,
            root_stamp: None,
            open_at: Place::default(),
            activity: None,
        }
    }

    /// How long this upper dir has waited past its due time for a scan to start.
    pub fn behind(&self, now: Instant) -> Duration {
        if self.started.is_some() {
            Duration::ZERO
        } else {
            now.saturating_duration_since(self.next_due)
        }
    }
}

/// The records by upper dir. Boxed: a record is about 780 bytes, and a hash
/// table keeps up to half of its slots empty after it doubles, so records held
/// in the table itself took 13.4 MB at 10,000 upper dirs, where boxed they take
/// 8.6 MB (heap profile, docs/performance.md).
pub type Records = HashMap<UpperDir, Box<ScanRecord>>;

/// Last scan results by upper dir, and the scan threads' budget.
#[derive(Debug, Clone)]
pub struct ScanStore {
    pub(super) records: Arc<Mutex<Records>>,
    pub(super) budget: Arc<Budget>,
    pub(super) quota: Arc<QuotaSettings>,
    /// Directories read and cached, over all scans.
    pub(super) dirs: Arc<(AtomicU64, AtomicU64)>,
    /// Copy-up counts by device, from the probe side.
    pub(super) activity: Arc<Activity>,
    /// Scans moved ahead for recent activity, by [`ActivitySignal`].
    pub(super) prioritized: Arc<[AtomicU64; 2]>,
    /// Scans stopped because their mount left the mount table.
    pub(super) cancelled: Arc<AtomicU64>,
    /// When the records with no scan in flight are due ([`DueIndex`]).
    pub(super) due: Arc<Mutex<DueIndex>>,
}

impl ScanStore {
    pub fn new(budget: Budget, activity: Arc<Activity>) -> Self {
        ScanStore::with_quota(
            budget,
            activity,
            QuotaSettings::new(&ScanConfig { quota: false, ..ScanConfig::default() }),
        )
    }

    pub fn with_quota(budget: Budget, activity: Arc<Activity>, quota: QuotaSettings) -> Self {
        ScanStore {
            records: Arc::default(),
            budget: Arc::new(budget),
            quota: Arc::new(quota),
            dirs: Arc::default(),
            activity,
            prioritized: Arc::default(),
            cancelled: Arc::default(),
            due: Arc::default(),
        }
    }

    /// Sets when `rec` (the record of `upper`, held under the records lock) is
    /// next due, and notes it in the due index.
    pub(super) fn set_due(&self, upper: &UpperDir, rec: &mut ScanRecord, at: Instant) {
        rec.next_due = at;
        self.due.locked().insert(at, upper);
    }

    pub fn quota(&self) -> &QuotaSettings {
        &self.quota
    }

    /// Scans moved ahead of idle upper dirs because of `signal`, so far.
    pub fn prioritized(&self, signal: ActivitySignal) -> u64 {
        self.prioritized[signal as usize].load(Ordering::Relaxed)
    }

    /// Scans stopped (queued or running) because their mount left the mount table.
    pub fn cancelled(&self) -> u64 {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Directories read, and directories taken from the cache, over all scans.
    pub fn dirs(&self) -> (u64, u64) {
        (self.dirs.0.load(Ordering::Relaxed), self.dirs.1.load(Ordering::Relaxed))
    }

    pub fn lock(&self) -> MutexGuard<'_, Records> {
        // A worker that panicked while holding the lock leaves plain data behind.
        self.records.locked()
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }
}

impl Default for ScanStore {
    fn default() -> Self {
        ScanStore::new(Budget::new(None), Arc::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behind_schedule_counts_only_scans_not_started() {
        let now = Instant::now();
        let mut rec = ScanRecord::new(now);
        rec.next_due = now;
        let later = now + Duration::from_secs(3);
        assert_eq!(rec.behind(later), Duration::from_secs(3));
        rec.started = Some((later, later + Duration::from_secs(60)));
        assert_eq!(rec.behind(later + Duration::from_secs(5)), Duration::ZERO);
    }
}
