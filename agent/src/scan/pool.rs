//! Scans off the request path: a fixed set of worker threads, each with its own
//! filesystem context (so the walker may `fchdir`), fed with upper dirs that are
//! due. The store keeps the last completed result of each upper dir; a scrape only
//! reads it. An upper dir shared by several mounts is scanned once.
//!
//! Cost: workers run at idle CPU and I/O priority (`scan.idle_priority`) and share
//! one CPU [`Budget`] (`scan.max_cpu`). Each upper dir's [`ScanCache`] goes with its
//! job to the worker and comes back with the result, so rescans skip what cannot
//! have changed. Of the upper dirs due at once, those never scanned go first, then
//! those whose last scan found a change most recently, then the longest overdue.
//!
//! Hung filesystems: a walk stops itself at `scan.timeout`, but a call into a
//! filesystem whose server is gone (FUSE, NFS) may never return. A scan still
//! running past its deadline by its timeout again (at most 10 s more) is declared hung: its upper dir is marked
//! stale, counted as a `timeout` error, not queued again while the call is stuck,
//! and a new worker replaces the stuck one so the other upper dirs keep being
//! measured (at most MAX_STUCK replacements; the stuck thread exits if its call
//! ever returns).

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use super::budget::{set_idle_priority, Budget};
use super::{ErrorReason, OwnCwd, ScanCache, ScanOptions, ScanResult, XattrNamespace};
use crate::config::ScanConfig;
use crate::discovery::MountTable;
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
    /// When a scan last found the upper dir changed (or scanned it first).
    last_change: Option<Instant>,
    /// What the last scan keeps for the next one; away while a scan runs.
    cache: Option<ScanCache>,
    in_flight: bool,
    /// When the scan in flight started, and its deadline.
    started: Option<(Instant, Instant)>,
    /// The scan in flight has been declared hung (shared with its worker, which
    /// needs it even when the record is gone).
    hung: Arc<std::sync::atomic::AtomicBool>,
    next_due: Instant,
}

impl ScanRecord {
    fn new(now: Instant) -> Self {
        ScanRecord {
            last: None,
            last_end: None,
            last_duration: Duration::ZERO,
            errors_total: BTreeMap::new(),
            scans_total: 0,
            copy_ups_seen_total: 0,
            stale: false,
            last_change: None,
            cache: Some(ScanCache::default()),
            in_flight: false,
            started: None,
            hung: Arc::default(),
            next_due: now,
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

/// Last scan results by upper dir, and the scan threads' budget.
#[derive(Debug, Clone)]
pub struct ScanStore {
    records: Arc<Mutex<HashMap<PathBuf, ScanRecord>>>,
    budget: Arc<Budget>,
    /// Directories read and cached, over all scans.
    dirs: Arc<(AtomicU64, AtomicU64)>,
}

impl ScanStore {
    pub fn new(budget: Budget) -> Self {
        ScanStore { records: Arc::default(), budget: Arc::new(budget), dirs: Arc::default() }
    }

    /// Directories read, and directories taken from the cache, over all scans.
    pub fn dirs(&self) -> (u64, u64) {
        (self.dirs.0.load(Ordering::Relaxed), self.dirs.1.load(Ordering::Relaxed))
    }

    pub fn lock(&self) -> MutexGuard<'_, HashMap<PathBuf, ScanRecord>> {
        // A worker that panicked while holding the lock leaves plain data behind.
        self.records.locked()
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }
}

impl Default for ScanStore {
    fn default() -> Self {
        ScanStore::new(Budget::new(None))
    }
}

struct Job {
    /// The upper dir as mountinfo names it (the store's key).
    upper: PathBuf,
    /// Where to open it: `upper` under the host root filesystem.
    open_at: PathBuf,
    ns: XattrNamespace,
    interval: Duration,
    timeout: Duration,
    cache: ScanCache,
    /// Never scanned, last change, due time: the larger goes first.
    priority: (bool, Option<Instant>, Reverse<Instant>),
}

/// Jobs waiting for a worker; the one with the highest priority goes first.
#[derive(Default)]
struct Queue {
    state: Mutex<(Vec<Job>, bool)>,
    ready: Condvar,
}

impl Queue {
    fn push(&self, job: Job) {
        self.state.locked().0.push(job);
        self.ready.notify_one();
    }

    /// The next job, or `None` once the queue is closed.
    fn pop(&self) -> Option<Job> {
        let mut st = self.state.locked();
        loop {
            if st.1 {
                return None;
            }
            let best = st.0.iter().enumerate().max_by_key(|(_, j)| j.priority).map(|(i, _)| i);
            if let Some(i) = best {
                return Some(st.0.swap_remove(i));
            }
            st = match self.ready.wait(st) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
    }

    fn close(&self) {
        self.state.locked().1 = true;
        self.ready.notify_all();
    }
}

/// How long past its deadline a scan may run before it is declared hung: its
/// timeout again, at most this.
const HUNG_GRACE: Duration = Duration::from_secs(10);
/// Replacement workers for stuck ones, at most.
const MAX_STUCK: usize = 64;

/// Worker accounting: `target` scanning threads should be free of stuck calls.
#[derive(Default)]
struct Workers {
    target: usize,
    live: AtomicUsize,
    stuck: AtomicUsize,
}

/// Counts scans queued or running, so `once` can wait for them.
#[derive(Default)]
struct Busy {
    count: Mutex<usize>,
    idle: Condvar,
}

impl Busy {
    fn add(&self) {
        *self.count.locked() += 1;
    }
    fn done(&self) {
        let mut c = self.count.locked();
        *c = c.saturating_sub(1);
        if *c == 0 {
            self.idle.notify_all();
        }
    }
}

pub struct ScanPool {
    queue: Arc<Queue>,
    store: ScanStore,
    busy: Arc<Busy>,
    workers: Arc<Workers>,
    idle_priority: bool,
}

impl Drop for ScanPool {
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl ScanPool {
    /// Starts `scan.concurrency` scan threads. They end when the pool is dropped.
    pub fn new(config: &ScanConfig) -> std::io::Result<Self> {
        let pool = ScanPool {
            queue: Arc::default(),
            store: ScanStore::new(Budget::new(config.max_cpu)),
            busy: Arc::new(Busy::default()),
            workers: Arc::new(Workers { target: config.concurrency.max(1), ..Default::default() }),
            idle_priority: config.idle_priority,
        };
        for _ in 0..pool.workers.target {
            pool.spawn_worker()?;
        }
        Ok(pool)
    }

    fn spawn_worker(&self) -> std::io::Result<()> {
        let (queue, store, busy, workers) =
            (self.queue.clone(), self.store.clone(), self.busy.clone(), self.workers.clone());
        let idle = self.idle_priority;
        let i = workers.live.fetch_add(1, Ordering::SeqCst);
        std::thread::Builder::new()
            .name(format!("scan-{i}"))
            .spawn(move || worker(queue, store, busy, workers, idle))
            .map(drop)
            .inspect_err(|_| {
                self.workers.live.fetch_sub(1, Ordering::SeqCst);
            })
    }

    /// Declares scans stuck past their deadline hung (see the module doc), and
    /// replaces their workers. Returns how many scans are hung now.
    fn check_hung(&self, now: Instant) -> usize {
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
                tracing::warn!(upper = %upper.display(), "upper dir scan is stuck in a filesystem call (hung filesystem?); marked stale, another worker takes over");
                if let Err(e) = self.spawn_worker() {
                    tracing::warn!(error = %e, "cannot start a replacement scan worker");
                }
            } else {
                tracing::warn!(upper = %upper.display(), "upper dir scan is stuck; too many stuck scans to replace this worker");
            }
        }
        hung
    }

    pub fn store(&self) -> ScanStore {
        self.store.clone()
    }

    /// Queues every upper dir of `table` that is due and not already being scanned;
    /// forgets upper dirs that no mount uses any more. Upper dirs are opened under
    /// `rootfs`, the host's root filesystem as the agent sees it.
    pub fn schedule(&self, table: &MountTable, interval: Duration, timeout: Duration, rootfs: &Path) {
        let now = Instant::now();
        self.check_hung(now);
        let mut wanted: HashMap<PathBuf, XattrNamespace> = HashMap::new();
        for m in table.mounts.values() {
            if let Some(upper) = m.upper_dir() {
                let ns = if m.options.userxattr { XattrNamespace::User } else { XattrNamespace::Trusted };
                wanted.insert(upper.to_owned(), ns);
            }
        }
        let mut store = self.store.lock();
        store.retain(|upper, _| wanted.contains_key(upper));
        for (upper, ns) in wanted {
            let rec = store.entry(upper.clone()).or_insert_with(|| ScanRecord::new(now));
            if rec.in_flight || rec.next_due > now {
                continue;
            }
            rec.in_flight = true;
            self.busy.add();
            let open_at = rootfs.join(upper.strip_prefix("/").unwrap_or(&upper));
            let priority = (rec.scans_total == 0, rec.last_change, Reverse(rec.next_due));
            let cache = rec.cache.take().unwrap_or_default();
            self.queue.push(Job { upper, open_at, ns, interval, timeout, cache, priority });
        }
    }

    /// Blocks until no scan is queued or running, except hung ones.
    pub fn wait_idle(&self) {
        loop {
            let hung = self.check_hung(Instant::now());
            let c = self.busy.count.locked();
            if *c <= hung {
                return;
            }
            drop(self.busy.idle.wait_timeout(c, Duration::from_millis(500)));
        }
    }
}

fn worker(queue: Arc<Queue>, store: ScanStore, busy: Arc<Busy>, workers: Arc<Workers>, idle: bool) {
    let own_cwd = match OwnCwd::unshare() {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::debug!(error = %e, "unshare(CLONE_FS) failed; xattrs will be read by full path");
            None
        }
    };
    if idle {
        if let Err(e) = set_idle_priority() {
            tracing::warn!(error = %e, "scan thread keeps its normal priority");
        }
    }
    while let Some(mut job) = queue.pop() {
        let start = Instant::now();
        let deadline = start + job.timeout;
        let hung = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if let Some(rec) = store.lock().get_mut(&job.upper) {
            rec.started = Some((start, deadline));
            rec.hung = hung.clone();
        }
        let opts = ScanOptions {
            ns: job.ns,
            cwd: own_cwd.as_ref(),
            deadline: Some(deadline),
            budget: Some(store.budget()),
        };
        let outcome = super::scan(&job.open_at, &opts, &mut job.cache);
        let duration = start.elapsed();
        let was_hung = hung.load(Ordering::SeqCst);
        {
            let mut records = store.lock();
            if let Some(rec) = records.get_mut(&job.upper) {
                rec.in_flight = false;
                rec.started = None;
                rec.hung = Arc::default();
                rec.next_due = Instant::now() + job.interval;
                rec.cache = Some(job.cache);
                match outcome {
                    Ok(result) => {
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
                        let changed = rec.last.as_ref().is_none_or(|last| {
                            result.dirs_read > 0
                                || (last.allocated_bytes, last.apparent_bytes, last.inodes)
                                    != (result.allocated_bytes, result.apparent_bytes, result.inodes)
                        });
                        if changed {
                            rec.last_change = Some(Instant::now());
                        }
                        rec.last = Some(result);
                        rec.last_end = Some(SystemTime::now());
                        rec.last_duration = duration;
                        rec.scans_total += 1;
                    }
                    Err(e) => {
                        tracing::debug!(upper = %job.upper.display(), error = %e, "upper dir scan failed");
                        *rec.errors_total.entry(e.reason()).or_default() += 1;
                    }
                }
            }
        }
        busy.done();
        if was_hung {
            workers.stuck.fetch_sub(1, Ordering::SeqCst);
            // A replacement took this worker's place: one of the two goes.
            let live = workers.live.load(Ordering::SeqCst);
            if live.saturating_sub(workers.stuck.load(Ordering::SeqCst)) > workers.target {
                break;
            }
        }
    }
    workers.live.fetch_sub(1, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, priority: (bool, Option<Instant>, Reverse<Instant>)) -> Job {
        Job {
            upper: PathBuf::from(name),
            open_at: PathBuf::from(name),
            ns: XattrNamespace::Trusted,
            interval: Duration::from_secs(60),
            timeout: Duration::from_secs(60),
            cache: ScanCache::default(),
            priority,
        }
    }

    #[test]
    fn never_scanned_then_recently_changed_then_most_overdue() {
        let t0 = Instant::now();
        let t = |s| t0 + Duration::from_secs(s);
        let q = Queue::default();
        q.push(job("idle-old-due", (false, Some(t(1)), Reverse(t(5)))));
        q.push(job("idle-older-due", (false, Some(t(1)), Reverse(t(2)))));
        q.push(job("changed-recently", (false, Some(t(9)), Reverse(t(8)))));
        q.push(job("never-changed", (false, None, Reverse(t(0)))));
        q.push(job("new", (true, None, Reverse(t(9)))));
        let order: Vec<String> =
            (0..5).filter_map(|_| q.pop()).map(|j| j.upper.display().to_string()).collect();
        assert_eq!(order, ["new", "changed-recently", "idle-older-due", "idle-old-due", "never-changed"]);
        q.close();
        assert!(q.pop().is_none(), "a closed queue ends the workers");
    }

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
