//! Recent activity: once a second (less often if that would take more than 10% of
//! the budget), a thread looks at the upper dirs due for a scan and moves ahead
//! those whose mount changed since their last scan started:
//! the copy-up probes counted copy-ups on one of its devices ([`Activity`], as
//! published at the last scrape), or, with or without eBPF, the upper dir's own
//! mtime, ctime or inode changed (one `stat`). Under `scan.max_cpu`, where the
//! queue never empties, this is what refreshes written mounts first and leaves idle
//! ones stretched. The thread's CPU time is charged to the budget.
//!
//! [`Activity`]: crate::activity::Activity

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::budget::thread_cpu;
use super::queue::Queue;
use super::sched::{Follower, IdleSetting};
use super::store::{ActivitySignal, RootStamp, ScanRecord, ScanStore};

/// Whether an upper dir changed since its last scan started: its copy-up count
/// then and now (a different count, not only a larger one: a device number
/// reused by a new mount starts again from zero), then its stamp then and now
/// (`now_stamp` is only called when the counts say nothing).
fn activity_since_scan(
    copy_ups_then: u64,
    copy_ups_now: u64,
    stamp_then: Option<RootStamp>,
    now_stamp: impl FnOnce() -> Option<RootStamp>,
) -> Option<ActivitySignal> {
    if copy_ups_now != copy_ups_then {
        return Some(ActivitySignal::CopyUps);
    }
    let then = stamp_then?;
    now_stamp().filter(|now| *now != then).map(|_| ActivitySignal::UpperChanged)
}

/// How often upper dirs are checked for recent activity, at most.
const ACTIVITY_PERIOD: Duration = Duration::from_secs(1);
/// The share of `scan.max_cpu` the activity checks may take, at most: under a tight
/// budget they run less often than every [`ACTIVITY_PERIOD`].
const ACTIVITY_SHARE: f64 = 0.1;

/// The pause before the next activity check, after one that took `pass` of CPU.
fn activity_period(pass: Duration, max_cpu: Option<f64>) -> Duration {
    match max_cpu {
        Some(rate) => {
            ACTIVITY_PERIOD.max(Duration::from_secs_f64(pass.as_secs_f64() / (ACTIVITY_SHARE * rate)))
        }
        None => ACTIVITY_PERIOD,
    }
}

/// The activity thread: every [`ACTIVITY_PERIOD`] (or less often, see
/// [`ACTIVITY_SHARE`]) until the pool is dropped, moves upper dirs that changed
/// since their last scan ahead of the idle ones (see the module doc). Its CPU time
/// is charged to the scan budget.
pub(super) fn watch_activity(
    queue: Arc<Queue>,
    store: ScanStore,
    stop: Receiver<()>,
    idle: Arc<IdleSetting>,
) {
    let mut priority = Follower::default();
    follow_priority(&mut priority, &idle);
    let mut period = ACTIVITY_PERIOD;
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(period) {
        follow_priority(&mut priority, &idle);
        let start = thread_cpu();
        check_activity(&queue, &store, Instant::now() + period);
        let pass = thread_cpu().saturating_sub(start);
        store.budget().charge(pass);
        period = activity_period(pass, store.budget().max_cpu());
    }
}

/// Applies `scan.idle_priority` to the activity thread when it changed.
fn follow_priority(priority: &mut Follower, idle: &IdleSetting) {
    match priority.follow(idle) {
        Some((true, Err(e))) => tracing::debug!(error = %e, "scan activity thread keeps its normal priority"),
        Some((false, Err(e))) => tracing::debug!(error = %e, "scan activity thread keeps its idle priority"),
        _ => {}
    }
}

/// One pass of the activity thread over the upper dirs not being scanned: marks
/// those that changed since their last scan started, and moves those waiting in
/// the queue ahead. The `stat`s run without any lock held; an upper dir whose last
/// scan timed out or hung is not `stat`ed (its filesystem may hang this thread too).
fn check_activity(queue: &Queue, store: &ScanStore, due_by: Instant) {
    let activity = store.activity.snapshot();
    let candidates: Vec<_> = {
        let records = store.lock();
        records
            .iter()
            .filter(|(_, r)| {
                // Due soon (waiting, or queued at the next scheduling pass): a mark
                // on one not due would only move it ahead once due.
                r.scans_total > 0 && r.started.is_none() && r.activity.is_none() && r.next_due <= due_by
            })
            .map(|(upper, r)| {
                let stamp = r.root_stamp.filter(|_| !r.stale);
                let then = (r.scans_total, r.copy_ups_at_scan);
                (upper.clone(), r.open_at.clone(), then, activity.copy_ups(&r.devices), stamp)
            })
            .collect()
    };
    let found: Vec<_> = candidates
        .into_iter()
        .filter_map(|(upper, open_at, (scans, then), now, stamp)| {
            activity_since_scan(then, now, stamp, || RootStamp::of(&open_at.path)).map(|s| (upper, scans, s))
        })
        .collect();
    if found.is_empty() {
        return;
    }
    let mut marked = Vec::new();
    {
        let mut records = store.lock();
        for (upper, scans, signal) in found {
            // Unless a scan started meanwhile (it sees the change).
            let unscanned = |r: &&mut Box<ScanRecord>| r.started.is_none() && r.scans_total == scans;
            if let Some(rec) = records.get_mut(&upper).filter(|r| unscanned(r) && r.activity.is_none()) {
                rec.activity = Some(signal);
                store.prioritized[signal as usize].fetch_add(1, Ordering::Relaxed);
                marked.push((upper, signal));
            }
        }
    }
    queue.mark_active(&marked);
}

#[cfg(test)]
mod tests {
    use super::super::queue::tests::{job_at, order};
    use super::super::queue::Priority;
    use super::*;
    use crate::discovery::Device;
    use std::cmp::Reverse;

    #[test]
    fn activity_is_a_different_copy_up_count_else_a_changed_upper_dir() {
        let stamp = |ino, m| RootStamp { ino, mtime: (m, 0), ctime: (m, 0) };
        let never = || -> Option<RootStamp> { panic!("no stat needed when the counts changed") };
        assert_eq!(activity_since_scan(3, 5, Some(stamp(1, 10)), never), Some(ActivitySignal::CopyUps));
        // A device number reused by a new mount: its count starts again.
        assert_eq!(activity_since_scan(3, 0, None, never), Some(ActivitySignal::CopyUps));
        assert_eq!(activity_since_scan(3, 3, Some(stamp(1, 10)), || Some(stamp(1, 10))), None);
        assert_eq!(
            activity_since_scan(3, 3, Some(stamp(1, 10)), || Some(stamp(1, 11))),
            Some(ActivitySignal::UpperChanged)
        );
        assert_eq!(
            activity_since_scan(0, 0, Some(stamp(1, 10)), || Some(stamp(2, 10))),
            Some(ActivitySignal::UpperChanged),
            "a new dir in its place"
        );
        // Gone, or never stamped (first scan, or a stale one): no signal.
        assert_eq!(activity_since_scan(0, 0, Some(stamp(1, 10)), || None), None);
        assert_eq!(activity_since_scan(0, 0, None, || Some(stamp(1, 10))), None);
    }

    /// The activity thread's pass on real directories: one written to, one whose
    /// device the probes counted copy-ups on, one idle; only the first two move.
    #[test]
    fn the_activity_pass_moves_written_and_copied_up_upper_dirs_ahead() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = ScanStore::default();
        let q = Queue::default();
        let t0 = Instant::now();
        let dev = |minor| Device { major: 0, minor };
        for (i, name) in ["written", "copied", "idle", "not-due"].into_iter().enumerate() {
            let dir = tmp.path().join(name);
            std::fs::create_dir(&dir).expect("mkdir");
            // An old mtime, so that a write now differs whatever the clock's grain.
            let old = rustix::fs::Timestamps {
                last_access: rustix::fs::Timespec { tv_sec: 1000, tv_nsec: 0 },
                last_modification: rustix::fs::Timespec { tv_sec: 1000, tv_nsec: 0 },
            };
            rustix::fs::utimensat(rustix::fs::CWD, &dir, &old, rustix::fs::AtFlags::empty())
                .expect("utimensat");
            let mut rec = ScanRecord::new(t0);
            rec.scans_total = 1;
            rec.devices = vec![dev(i as u32)];
            rec.copy_ups_at_scan = 4;
            rec.root_stamp = RootStamp::of(&dir);
            rec.open_at = crate::scan::Place::own(&dir);
            assert!(rec.root_stamp.is_some());
            store.lock().insert(crate::discovery::UpperDir::host(name), Box::new(rec));
            if name == "not-due" {
                continue;
            }
            let due = Reverse(t0 + Duration::from_secs(2 - i as u64));
            q.push(job_at(name, &dir, Priority { never_scanned: false, active: false, changed: false, due }));
        }
        store.activity.publish([(dev(0), 4), (dev(1), 4), (dev(2), 4), (dev(3), 4)], t0);
        check_activity(&q, &store, t0 + Duration::from_secs(3600));
        assert!(store.lock().values().all(|r| r.activity.is_none()), "nothing changed yet");
        std::fs::write(tmp.path().join("written/new-file"), b"x").expect("write");
        std::fs::write(tmp.path().join("not-due/new-file"), b"x").expect("write");
        store
            .activity
            .publish([(dev(0), 4), (dev(1), 6), (dev(2), 4), (dev(3), 4)], t0 + Duration::from_secs(15));
        check_activity(&q, &store, t0 + Duration::from_secs(3600));
        check_activity(&q, &store, t0 + Duration::from_secs(3600));
        // Counted once each until their next scan; the one not due yet is marked
        // for when it is queued.
        assert_eq!(
            store.lock().get(&crate::discovery::UpperDir::host("not-due")).and_then(|r| r.activity),
            Some(ActivitySignal::UpperChanged)
        );
        assert_eq!(store.prioritized(ActivitySignal::UpperChanged), 2);
        assert_eq!(store.prioritized(ActivitySignal::CopyUps), 1);
        // Idle was the most overdue; now it goes last.
        assert_eq!(order(&q, 3), ["copied", "written", "idle"]);
    }

    #[test]
    fn activity_checks_take_a_small_share_of_a_tight_budget() {
        let ms = Duration::from_millis;
        assert_eq!(activity_period(ms(2), None), ACTIVITY_PERIOD, "no budget: every second");
        assert_eq!(activity_period(ms(2), Some(1.0)), ACTIVITY_PERIOD, "0.2% of the budget");
        // 2 ms a pass at 0.01 cores: 10% of it is one pass every 2 s.
        let p = activity_period(ms(2), Some(0.01));
        assert!((p.as_secs_f64() - 2.0).abs() < 1e-9, "{p:?}");
    }
}
