//! The scan workers: threads that take jobs off the queue, each with its own
//! filesystem context (so the walker may `fchdir`), and the accounting of scans in
//! flight and of workers stuck in a filesystem call.
//!
//! Hung filesystems: a walk stops itself at `scan.timeout`, but a call into a
//! filesystem whose server is gone (FUSE, NFS) may never return. A scan still
//! running past its deadline by its timeout again (at most 10 s more) is declared hung: its upper dir is marked
//! stale, counted as a `timeout` error, not queued again while the call is stuck,
//! and a new worker replaces the stuck one so the other upper dirs keep being
//! measured (at most MAX_STUCK replacements; the stuck thread exits if its call
//! ever returns).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::job::run_job;
use super::queue::Queue;
use super::sched::{Follower, IdleSetting};
use super::store::ScanStore;
use super::{ErrorReason, OwnCwd};
use crate::sync::LockExt;

/// How long past its deadline a scan may run before it is declared hung: its
/// timeout again, at most this.
const HUNG_GRACE: Duration = Duration::from_secs(10);
/// Replacement workers for stuck ones, at most.
const MAX_STUCK: usize = 64;

/// Worker accounting: `target` scanning threads should be free of stuck calls.
pub(super) struct Workers {
    pub(super) target: usize,
    live: AtomicUsize,
    stuck: AtomicUsize,
}

impl Workers {
    pub(super) fn new(target: usize) -> Self {
        Workers { target, live: AtomicUsize::new(0), stuck: AtomicUsize::new(0) }
    }
}

/// Counts scans queued or running, so `wait_idle` can wait for them.
#[derive(Default)]
pub(super) struct InFlight {
    count: Mutex<usize>,
    none: Condvar,
}

impl InFlight {
    pub(super) fn add(&self) {
        *self.count.locked() += 1;
    }

    fn done(&self) {
        let mut c = self.count.locked();
        *c = c.saturating_sub(1);
        if *c == 0 {
            self.none.notify_all();
        }
    }

    /// Waits until at most `n` scans are in flight, or `timeout` passed; false
    /// if more still are.
    pub(super) fn wait_for_at_most(&self, n: usize, timeout: Duration) -> bool {
        let c = self.count.locked();
        if *c <= n {
            return true;
        }
        drop(self.none.wait_timeout(c, timeout));
        false
    }
}

/// What every scan worker shares with the pool.
#[derive(Clone)]
pub(super) struct Crew {
    pub(super) queue: Arc<Queue>,
    pub(super) store: ScanStore,
    pub(super) in_flight: Arc<InFlight>,
    pub(super) workers: Arc<Workers>,
    /// `scan.idle_priority`, which every worker applies to itself.
    pub(super) idle: Arc<IdleSetting>,
}

impl Crew {
    pub(super) fn spawn_worker(&self) -> std::io::Result<()> {
        let crew = self.clone();
        let i = self.workers.live.fetch_add(1, Ordering::SeqCst);
        std::thread::Builder::new()
            .name(format!("scan-{i}"))
            .spawn(move || worker(crew))
            .map(drop)
            .inspect_err(|_| {
                self.workers.live.fetch_sub(1, Ordering::SeqCst);
            })
    }

    /// Declares scans stuck past their deadline hung (see the module doc), and
    /// replaces their workers. Returns how many scans are hung now.
    pub(super) fn check_hung(&self, now: Instant) -> usize {
        let mut newly = Vec::new();
        let hung = {
            let mut store = self.store.lock();
            for (upper, rec) in store.iter_mut() {
                let hung = rec.hung.load(Ordering::SeqCst);
                if let (true, false, Some((start, deadline))) = (rec.in_flight, hung, rec.started) {
                    if now > deadline + (deadline - start).min(HUNG_GRACE) {
                        rec.hung.store(true, Ordering::SeqCst);
                        rec.stale = true;
                        *rec.errors_total.entry(ErrorReason::Timeout).or_default() += 1;
                        newly.push(upper.clone());
                    }
                }
            }
            store.values().filter(|r| r.in_flight && r.hung.load(Ordering::SeqCst)).count()
        };
        for upper in newly {
            let stuck = self.workers.stuck.fetch_add(1, Ordering::SeqCst) + 1;
            if stuck <= MAX_STUCK {
                tracing::warn!(upper = %upper, "upper dir scan is stuck in a filesystem call (hung filesystem?); marked stale, another worker takes over");
                if let Err(e) = self.spawn_worker() {
                    tracing::warn!(error = %e, "cannot start a replacement scan worker");
                }
            } else {
                tracing::warn!(upper = %upper, "upper dir scan is stuck; too many stuck scans to replace this worker");
            }
        }
        hung
    }
}

/// A worker thread: runs jobs until the queue is closed, or until it comes back
/// from a hung scan to find a replacement in its place.
fn worker(crew: Crew) {
    let own_cwd = match OwnCwd::unshare() {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::debug!(error = %e, "unshare(CLONE_FS) failed; xattrs will be read by full path");
            None
        }
    };
    let mut priority = Follower::default();
    follow_priority(&mut priority, &crew.idle);
    while let Some(job) = crew.queue.pop() {
        // A reload may have changed scan.idle_priority since the last job.
        follow_priority(&mut priority, &crew.idle);
        let was_hung = run_job(&crew.store, own_cwd.as_ref(), job);
        crew.in_flight.done();
        if was_hung {
            let workers = &crew.workers;
            workers.stuck.fetch_sub(1, Ordering::SeqCst);
            // A replacement took this worker's place: one of the two goes.
            let live = workers.live.load(Ordering::SeqCst);
            if live.saturating_sub(workers.stuck.load(Ordering::SeqCst)) > workers.target {
                break;
            }
        }
    }
    crew.workers.live.fetch_sub(1, Ordering::SeqCst);
}

/// Applies `scan.idle_priority` to the calling worker when it changed.
fn follow_priority(priority: &mut Follower, idle: &IdleSetting) {
    match priority.follow(idle) {
        Some((true, Err(e))) => tracing::warn!(error = %e, "scan thread keeps its normal priority"),
        Some((false, Err(e))) => tracing::warn!(error = %e, "scan thread keeps its idle priority"),
        _ => {}
    }
}
