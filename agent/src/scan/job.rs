//! One scan job on a worker: the walk of an upper dir, with quota readings around
//! it in quota mode, and its outcome written to the store; or, when its mount left
//! the mount table meanwhile, nothing but the count of cancelled scans.

use crate::discovery::UpperDir;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::queue::{changed_since, Job};
use super::quota::{self, QuotaSettings, QuotaTarget, Reading, Unavailable, Usage};
use super::reach::open_upper;
use super::store::{Records, RootStamp, ScanRecord, ScanStore};
use super::{ErrorReason, OwnCwd, ScanError, ScanOptions, ScanResult};

/// What a finished walk leaves for the store.
struct Finished {
    outcome: Result<ScanResult, ScanError>,
    quota_state: Result<(QuotaTarget, Usage), Unavailable>,
    /// The upper dir's stamp, taken before the walk.
    stamp: Option<RootStamp>,
    duration: Duration,
    /// The scan was declared hung while it ran.
    was_hung: bool,
}

/// Runs one job: marks its scan started, walks (quota mode: between two quota
/// readings), and records the outcome. Returns whether the scan was declared hung.
pub(super) fn run_job(store: &ScanStore, own_cwd: Option<&OwnCwd>, mut job: Job) -> bool {
    if job.cancel.stopped() {
        // Its mount went while it waited in the queue.
        store.cancelled.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    let start = Instant::now();
    let deadline = start + job.timeout;
    let hung = Arc::new(AtomicBool::new(false));
    if let Some(rec) = own_record(&mut store.lock(), &job) {
        rec.started = Some((start, deadline));
        rec.hung = hung.clone();
        rec.copy_ups_at_scan = store.activity.snapshot().copy_ups(&rec.devices);
        rec.activity = None;
    }
    // Opened beneath a detached clone of its mount (reach.rs): its path is looked
    // up here, and the upper dir is closed as the walk ends, before the quota
    // reading after it.
    let upper = open_upper(&job.open_at).map_err(|e| ScanError::open(&job.open_at.path, e));
    // Before the walk: a change during the walk shows at the next check.
    let stamp = upper.as_ref().ok().and_then(|u| RootStamp::of_fd(u.dir()));
    let opts = ScanOptions {
        ns: job.ns,
        cwd: own_cwd,
        deadline: Some(deadline),
        budget: Some(store.budget()),
        cancel: Some(&job.cancel),
    };
    // Quota mode: readings just before and after the walk check its figures.
    let quota = store.quota();
    let target = match job.open_at.join {
        None => quota.probe(&job.open_at.path, job.work_at.as_deref()),
        Some(_) if quota.enabled => Err(Unavailable::OtherNamespace),
        Some(_) => Err(Unavailable::Disabled),
    };
    let before = target.as_ref().map_err(|u| *u).and_then(|t| quota.read_raw(t));
    let outcome = upper.and_then(|upper| super::scan_upper(&upper, &opts, &mut job.cache));
    let duration = start.elapsed();
    let was_hung = hung.load(Ordering::SeqCst);
    let cancelled = match &outcome {
        Ok(r) => r.cancelled,
        Err(_) => job.cancel.stopped(),
    };
    if cancelled {
        record_cancelled(store, job);
        return was_hung;
    }
    let quota_state = quota_after_walk(quota, &job.upper, target, before, &outcome);
    record(store, job, Finished { outcome, quota_state, stamp, duration, was_hung });
    was_hung
}

/// The record `job` was queued for: not one made since for the same upper dir
/// (after its mount left and another came).
fn own_record<'a>(records: &'a mut Records, job: &Job) -> Option<&'a mut ScanRecord> {
    records.get_mut(&job.upper).filter(|r| Arc::ptr_eq(&r.cancel, &job.cancel)).map(|r| &mut **r)
}

/// A scan stopped from outside: counted, and nothing else recorded. Its record is
/// gone, unless another mount came on the upper dir as its own left: then it is
/// scanned again at once, from scratch.
fn record_cancelled(store: &ScanStore, job: Job) {
    store.cancelled.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(upper = %job.upper, "upper dir scan stopped: its mount left the mount table");
    let mut records = store.lock();
    let Some(rec) = own_record(&mut records, &job) else { return };
    rec.in_flight = false;
    rec.started = None;
    rec.hung = Arc::default();
    store.set_due(&job.upper, rec, Instant::now());
    rec.cache = None;
    rec.root_stamp = None;
}

/// The quota state after a walk: a complete walk is checked against the readings
/// around it ([`quota::verify`]); otherwise the reading before it stands.
fn quota_after_walk(
    quota: &QuotaSettings,
    upper: &UpperDir,
    target: Result<QuotaTarget, Unavailable>,
    before: Result<Reading, Unavailable>,
    outcome: &Result<ScanResult, ScanError>,
) -> Result<(QuotaTarget, Usage), Unavailable> {
    match (target, outcome) {
        (Ok(mut t), Ok(r)) if !r.timed_out => {
            let walk = Usage { allocated_bytes: r.allocated_bytes, inodes: r.inodes };
            let after = quota.read_raw(&t);
            match quota::verify(&mut t, before, after, walk) {
                Ok(u) => Ok((t, u)),
                Err(Unavailable::Mismatch) => {
                    let b = before.unwrap_or_default().usage;
                    tracing::warn!(upper = %upper, project_id = t.project_id, quota_bytes = b.allocated_bytes, quota_inodes = b.inodes, walk_bytes = walk.allocated_bytes, walk_inodes = walk.inodes, "project quota disagrees with the walk of an unchanged tree: bytes and inodes from the walk");
                    Err(Unavailable::Mismatch)
                }
                Err(e) => Err(e),
            }
        }
        (Ok(t), _) => before.and_then(|b| t.usage(b)).map(|u| (t, u)),
        (Err(e), _) => Err(e),
    }
}

/// Writes a finished scan to its record (gone if no mount uses the upper dir
/// any more): not in flight, due again after its interval, the quota state, the
/// cache for the next scan, and the walk's figures.
fn record(store: &ScanStore, job: Job, done: Finished) {
    let mut records = store.lock();
    let Some(rec) = own_record(&mut records, &job) else { return };
    rec.in_flight = false;
    rec.started = None;
    rec.hung = Arc::default();
    let interval = match &done.quota_state {
        Ok(_) => store.quota().classify_interval.max(job.interval),
        Err(_) => job.interval,
    };
    store.set_due(&job.upper, rec, Instant::now() + interval);
    match done.quota_state {
        Ok((t, u)) => {
            rec.quota = Ok(t);
            rec.usage = Some((u, SystemTime::now()));
        }
        Err(e) => {
            rec.quota = Err(e);
            rec.usage = None;
        }
    }
    rec.cache = Some(job.cache);
    rec.root_stamp = done.stamp;
    match done.outcome {
        Ok(result) => record_result(store, rec, result, done.duration, done.was_hung),
        Err(e) => {
            tracing::debug!(upper = %job.upper, error = %e, "upper dir scan failed");
            *rec.errors_total.entry(e.reason()).or_default() += 1;
        }
    }
}

/// The figures of a walk that ran (completely or not) into its record.
fn record_result(
    store: &ScanStore,
    rec: &mut ScanRecord,
    result: ScanResult,
    duration: Duration,
    was_hung: bool,
) {
    store.dirs.0.fetch_add(result.dirs_read, Ordering::Relaxed);
    store.dirs.1.fetch_add(result.dirs_cached, Ordering::Relaxed);
    // A hung scan already counted its timeout.
    for (reason, n) in &result.errors {
        if !(was_hung && *reason == ErrorReason::Timeout) {
            *rec.errors_total.entry(*reason).or_default() += n;
        }
    }
    rec.stale = result.timed_out || was_hung;
    rec.copy_ups_seen_total += result.copy_ups_seen.unwrap_or(0);
    rec.changed = changed_since(rec.last.as_ref(), &result);
    rec.last = Some(result);
    rec.last_end = Some(SystemTime::now());
    rec.last_duration = duration;
    rec.scans_total += 1;
}
