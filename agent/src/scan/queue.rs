//! The scan queue: jobs waiting for a worker, and the order they go in. Of the
//! upper dirs due at once, those never scanned go first, then those with recent
//! activity (`prioritize.rs`), then those whose last scan found a change (a scan
//! that timed out is no change), then the longest overdue. Aging: a job passed
//! over by more than [`STARVED_AFTER`] (3) times as many scans as there are jobs
//! waiting ranks with the active upper dirs that changed, so under a budget idle
//! upper dirs are stretched, not starved.

use std::cmp::Reverse;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::cancel::Cancel;
use super::reach::Place;
use super::store::ActivitySignal;
use super::{ScanCache, ScanResult, XattrNamespace};
use crate::discovery::UpperDir;
use crate::sync::LockExt;
use std::sync::Arc;

pub(super) struct Job {
    /// The upper dir as mountinfo names it (the store's key).
    pub(super) upper: UpperDir,
    /// Where to open it: `upper` under the host root filesystem, or its namespace's.
    pub(super) open_at: Place,
    /// Its work dir, likewise (quota mode).
    pub(super) work_at: Option<PathBuf>,
    pub(super) ns: XattrNamespace,
    pub(super) interval: Duration,
    pub(super) timeout: Duration,
    pub(super) cache: ScanCache,
    /// Shared with its record: the pool stops it when no mount uses the upper
    /// dir any more, and has it recheck its mount after every mount table read.
    pub(super) cancel: Arc<Cancel>,
    pub(super) priority: Priority,
    /// Scans of other upper dirs started while this job waited (aging).
    pub(super) passed_over: usize,
}

/// The order of the jobs in the queue: the larger goes first (fields compare in
/// order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Priority {
    pub(super) never_scanned: bool,
    /// Activity seen since its last scan started.
    pub(super) active: bool,
    /// Its last scan found a change since the one before (not a first scan: a
    /// first scan's time as a lasting priority starved the upper dirs scanned
    /// first, under a budget).
    pub(super) changed: bool,
    /// The most overdue first.
    pub(super) due: Reverse<Instant>,
}

/// A job passed over by more than this many times as many scans as there are
/// jobs waiting ranks as an active upper dir that changed (aging), so that under
/// `scan.max_cpu` idle upper dirs are stretched, never starved by upper dirs that
/// are always active: an idle one waits for at most about `STARVED_AFTER x
/// waiting + 1` scans. Counted in scans, not in intervals: under a tight budget
/// every upper dir is many intervals overdue (a round of the queue takes longer
/// than an interval), and aging by time would put all of them in front of the
/// written ones. With round-robin alone a job waits for one round (`waiting`
/// scans); 3 lets activity take up to two more rounds' worth of scans.
pub(super) const STARVED_AFTER: usize = 3;

impl Job {
    /// Its priority with `waiting` jobs in the queue: a job passed over by more
    /// than [`STARVED_AFTER`] x `waiting` scans ranks with the active upper dirs
    /// that changed (among which the most overdue goes first).
    fn rank(&self, waiting: usize) -> Priority {
        let mut p = self.priority;
        if self.passed_over > STARVED_AFTER.saturating_mul(waiting) {
            p.active = true;
            p.changed = true;
        }
        p
    }
}

/// Jobs waiting for a worker; the one with the highest priority goes first.
#[derive(Default)]
pub(super) struct Queue {
    state: Mutex<(Vec<Job>, bool)>,
    ready: Condvar,
}

impl Queue {
    pub(super) fn push(&self, job: Job) {
        self.state.locked().0.push(job);
        self.ready.notify_one();
    }

    /// The next job, or `None` once the queue is closed; the others waiting
    /// count one more scan passed over (aging, [`Job::rank`]).
    pub(super) fn pop(&self) -> Option<Job> {
        let mut st = self.state.locked();
        loop {
            if st.1 {
                return None;
            }
            let waiting = st.0.len();
            let best = st.0.iter().enumerate().max_by_key(|(_, j)| j.rank(waiting)).map(|(i, _)| i);
            if let Some(i) = best {
                let job = st.0.swap_remove(i);
                shrink(&mut st.0);
                for j in st.0.iter_mut() {
                    j.passed_over += 1;
                }
                return Some(job);
            }
            st = match self.ready.wait(st) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
    }

    pub(super) fn close(&self) {
        self.state.locked().1 = true;
        self.ready.notify_all();
    }

    /// Marks the jobs of these upper dirs active, if waiting; returns how many.
    pub(super) fn mark_active(&self, found: &[(UpperDir, ActivitySignal)]) -> usize {
        let mut st = self.state.locked();
        let mut marked = 0;
        for (upper, _) in found {
            if let Some(j) = st.0.iter_mut().find(|j| &j.upper == upper && !j.priority.active) {
                j.priority.active = true;
                marked += 1;
            }
        }
        marked
    }
}

/// Jobs are about 330 bytes, and a first mount table queues every upper dir at
/// once: 10,000 of them left a 5.4 MB vector behind once the queue had drained
/// (heap profile, docs/performance.md). It keeps at most twice what waits, and
/// at least [`KEPT_JOBS`] slots; shrinking at a quarter makes it amortized O(1).
fn shrink(jobs: &mut Vec<Job>) {
    if jobs.capacity() > KEPT_JOBS && jobs.len() * 4 < jobs.capacity() {
        jobs.shrink_to((jobs.len() * 2).max(KEPT_JOBS));
    }
}

/// The queue's capacity it never shrinks below.
const KEPT_JOBS: usize = 64;

/// Whether a scan found the upper dir changed since the last one: a directory
/// read, or other bytes or inodes. Not for a first scan, and not for one that
/// timed out: its figures cover part of the tree, so they differ from a complete
/// scan's whether or not anything changed (and a timed-out scan's directories are
/// read again next time), which would keep the most expensive upper dirs first;
/// nor for the first complete scan after one that timed out (nothing to compare).
pub(super) fn changed_since(last: Option<&ScanResult>, result: &ScanResult) -> bool {
    !result.timed_out
        && last.is_some_and(|last| {
            !last.timed_out
                && (result.dirs_read > 0
                    || (last.allocated_bytes, last.apparent_bytes, last.inodes)
                        != (result.allocated_bytes, result.apparent_bytes, result.inodes))
        })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::path::Path;

    fn job(name: &str, (never_scanned, changed, due): (bool, bool, Reverse<Instant>)) -> Job {
        job_at(name, Path::new(name), Priority { never_scanned, active: false, changed, due })
    }

    pub(in crate::scan) fn job_at(name: &str, open_at: &Path, priority: Priority) -> Job {
        Job {
            upper: UpperDir::host(name),
            open_at: Place::own(open_at),
            work_at: None,
            ns: XattrNamespace::Trusted,
            interval: Duration::from_secs(60),
            timeout: Duration::from_secs(60),
            cache: ScanCache::default(),
            cancel: Arc::default(),
            priority,
            passed_over: 0,
        }
    }

    pub(in crate::scan) fn order(q: &Queue, n: usize) -> Vec<String> {
        (0..n).filter_map(|_| q.pop()).map(|j| j.upper.to_string()).collect()
    }

    /// A burst of jobs (a first mount table of 10,000 upper dirs) does not leave
    /// its vector behind once drained.
    #[test]
    fn a_drained_queue_gives_back_its_burst() {
        let q = Queue::default();
        let due = Reverse(Instant::now());
        for i in 0..10_000 {
            q.push(job(&format!("u{i}"), (true, false, due)));
        }
        assert!(q.state.locked().0.capacity() >= 10_000);
        let mut left = 10_000;
        while left > 0 {
            assert!(q.pop().is_some());
            left -= 1;
            let cap = q.state.locked().0.capacity();
            assert!(cap <= (4 * left).max(KEPT_JOBS), "{left} jobs waiting in a vector of {cap}");
        }
        assert_eq!(q.state.locked().0.capacity(), KEPT_JOBS);
    }

    #[test]
    fn never_scanned_then_changed_at_the_last_scan_then_most_overdue() {
        let t0 = Instant::now();
        let t = |s| t0 + Duration::from_secs(s);
        let q = Queue::default();
        q.push(job("idle-old-due", (false, false, Reverse(t(5)))));
        q.push(job("idle-older-due", (false, false, Reverse(t(2)))));
        q.push(job("changed", (false, true, Reverse(t(8)))));
        q.push(job("idle-oldest-due", (false, false, Reverse(t(0)))));
        q.push(job("new", (true, false, Reverse(t(9)))));
        assert_eq!(order(&q, 5), ["new", "changed", "idle-oldest-due", "idle-older-due", "idle-old-due"]);
        q.close();
        assert!(q.pop().is_none(), "a closed queue ends the workers");
    }

    #[test]
    fn active_upper_dirs_go_after_never_scanned_and_before_every_idle_one() {
        let t0 = Instant::now();
        let t = |s| t0 + Duration::from_secs(s);
        let p = |never_scanned, active, changed, due| Priority {
            never_scanned,
            active,
            changed,
            due: Reverse(t(due)),
        };
        let q = Queue::default();
        q.push(job_at("idle-changed", Path::new("-"), p(false, false, true, 1)));
        q.push(job_at("idle-most-overdue", Path::new("-"), p(false, false, false, 0)));
        q.push(job_at("active-unchanged", Path::new("-"), p(false, true, false, 9)));
        q.push(job_at("active-changed", Path::new("-"), p(false, true, true, 9)));
        q.push(job_at("new", Path::new("-"), p(true, false, false, 9)));
        assert_eq!(
            order(&q, 5),
            ["new", "active-changed", "active-unchanged", "idle-changed", "idle-most-overdue"]
        );
    }

    /// A budget-stretched cycle, step by step: every upper dir is due and waits
    /// in the queue, one scan completes per step. Without activity they go round in
    /// due order; an upper dir marked active while waiting goes next, however
    /// recently it was scanned, and the idle ones wait one scan longer each.
    #[test]
    fn under_a_budget_an_upper_dir_with_activity_is_refreshed_next() {
        let t0 = Instant::now();
        let q = Queue::default();
        for i in 0..10u64 {
            let name = format!("m{i}");
            q.push(job(&name, (false, false, Reverse(t0 + Duration::from_secs(i)))));
        }
        let mut scanned = Vec::new();
        let step = |q: &Queue, scanned: &mut Vec<String>| {
            let j = q.pop().expect("a waiting job");
            let name = j.upper.to_string();
            // Scanned now: due again one interval later, back in the queue at once
            // (the budget keeps it overdue).
            let next = t0 + Duration::from_secs(100 + scanned.len() as u64);
            q.push(job(&name, (false, false, Reverse(next))));
            scanned.push(name);
        };
        for _ in 0..10 {
            step(&q, &mut scanned);
        }
        let round: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
        assert_eq!(scanned, round, "idle upper dirs go round, most overdue first");
        // m9 was scanned last, so it is the last due; a write to it marks it active.
        assert_eq!(q.mark_active(&[(UpperDir::host("m9"), ActivitySignal::UpperChanged)]), 1);
        assert_eq!(q.mark_active(&[(UpperDir::host("m9"), ActivitySignal::CopyUps)]), 0, "marked once");
        assert_eq!(q.mark_active(&[(UpperDir::host("gone"), ActivitySignal::CopyUps)]), 0);
        step(&q, &mut scanned);
        assert_eq!(scanned[10], "m9", "the active upper dir is refreshed next");
        for _ in 0..10 {
            step(&q, &mut scanned);
        }
        assert_eq!(&scanned[11..], ["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "m9"]);
    }

    /// A timed-out scan covers part of the tree: it is no change (else the most
    /// expensive upper dirs, those that time out, would always go first), and nor
    /// is the first complete scan after it.
    #[test]
    fn a_timed_out_scan_is_no_change() {
        let full = ScanResult { allocated_bytes: 1 << 20, inodes: 100, ..Default::default() };
        let partial = ScanResult {
            allocated_bytes: 4096,
            inodes: 3,
            dirs_read: 2,
            timed_out: true,
            ..Default::default()
        };
        assert!(!changed_since(None, &full), "a first scan");
        assert!(!changed_since(Some(&full), &full), "same figures, no directory read");
        let grown = ScanResult { inodes: 101, ..full.clone() };
        assert!(changed_since(Some(&full), &grown), "one more inode");
        assert!(!changed_since(Some(&full), &partial), "timed out");
        assert!(!changed_since(Some(&partial), &full), "after a timed-out scan");
    }

    /// Under a budget that allows 3 scans a minute, 4 upper dirs written all the
    /// time (active, changed) would take every scan. Aging: the idle one, once
    /// passed over by more than STARVED_AFTER x 5 (the jobs waiting) scans, ranks
    /// with them, as the most overdue, and is scanned within STARVED_AFTER x 5 + 1
    /// scans of its last one, every time; the active ones keep being scanned in
    /// between. Without aging it is never scanned.
    #[test]
    fn under_a_budget_permanently_active_upper_dirs_do_not_starve_an_idle_one() {
        let t0 = Instant::now();
        let interval = Duration::from_secs(60);
        let q = Queue::default();
        let push = |q: &Queue, name: &str, active: bool, due: Instant| {
            let priority = Priority { never_scanned: false, active, changed: active, due: Reverse(due) };
            q.push(job_at(name, Path::new("-"), priority));
        };
        push(&q, "idle", false, t0);
        for i in 0..4 {
            push(&q, &format!("active{i}"), true, t0);
        }
        let bound = STARVED_AFTER * 5 + 1;
        let (mut since_idle, mut idle_scans, mut active_scans) = (0, 0, 0);
        for n in 0..300u32 {
            let j = q.pop().expect("a waiting job");
            let name = j.upper.to_string();
            if name == "idle" {
                assert!(since_idle <= bound, "idle scanned {since_idle} scans after its last one");
                since_idle = 0;
                idle_scans += 1;
            } else {
                since_idle += 1;
                active_scans += 1;
            }
            // Due again an interval after its scan (20 s each), back in the queue
            // at once (the budget keeps every upper dir overdue); the active ones
            // stay active.
            push(&q, &name, name != "idle", t0 + interval + Duration::from_secs(20) * (n + 1));
        }
        assert!(idle_scans >= 300 / (bound + 1), "{idle_scans} idle scans");
        assert!(active_scans >= 250, "{active_scans} active scans");
    }

    /// Under a budget where every upper dir is many intervals overdue (a round
    /// of the queue takes longer than an interval), a written one still goes
    /// ahead of the idle ones: aging counts scans passed over, not time.
    #[test]
    fn activity_keeps_its_lead_when_every_upper_dir_is_long_overdue() {
        let t0 = Instant::now();
        let q = Queue::default();
        for i in 0..7u64 {
            // Due 1 s apart, long ago (interval 60 s, hours overdue).
            let priority = Priority {
                never_scanned: false,
                active: false,
                changed: false,
                due: Reverse(t0 - Duration::from_secs(7200 - i)),
            };
            q.push(job_at(&format!("m{i}"), Path::new("-"), priority));
        }
        // Two rounds of scans, then the one least overdue is written.
        for _ in 0..3 {
            let j = q.pop().expect("job");
            q.push(j);
        }
        let found = [(UpperDir::host("m6"), ActivitySignal::UpperChanged)];
        assert_eq!(q.mark_active(&found), 1);
        assert_eq!(q.pop().map(|j| j.upper), Some(UpperDir::host("m6")), "the written one first");
    }
}
