//! Scans off the request path: a fixed set of worker threads, each with its own
//! filesystem context (so the walker may `fchdir`), fed with upper dirs that are
//! due. The store keeps the last completed result of each upper dir; a scrape only
//! reads it. An upper dir shared by several mounts is scanned once.
//!
//! Cost: workers run at idle CPU and I/O priority (`scan.idle_priority`) and share
//! one CPU [`Budget`] (`scan.max_cpu`). Each upper dir's [`ScanCache`] goes with its
//! job to the worker and comes back with the result, so rescans skip what cannot
//! have changed. Of the upper dirs due at once, those never scanned go first, then
//! those with recent activity (below), then those whose last scan found a change
//! (a scan that timed out is no change), then the longest overdue. Aging: a job
//! passed over by more than [`STARVED_AFTER`] (3) times as many scans as there are
//! jobs waiting ranks with the active upper dirs that changed, so under a budget
//! idle upper dirs are stretched, not starved.
//!
//! Recent activity: once a second (less often if that would take more than 10% of
//! the budget), a thread looks at the upper dirs due for a scan and moves ahead
//! those whose mount changed since their last scan started:
//! the copy-up probes counted copy-ups on one of its devices ([`Activity`], as
//! published at the last scrape), or, with or without eBPF, the upper dir's own
//! mtime, ctime or inode changed (one `stat`). Under `scan.max_cpu`, where the
//! queue never empties, this is what refreshes written mounts first and leaves idle
//! ones stretched. The thread's CPU time is charged to the budget.
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
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use super::budget::{set_idle_priority, thread_cpu, Budget};
use super::quota::{self, QuotaTarget, Unavailable, Usage};
use super::{ErrorReason, OwnCwd, ScanCache, ScanOptions, ScanResult, XattrNamespace};
use crate::activity::Activity;
use crate::config::ScanConfig;
use crate::discovery::{Device, MountTable};
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
    changed: bool,
    /// Quota mode (bytes and inodes from the project quota), or why not.
    pub quota: Result<QuotaTarget, Unavailable>,
    /// The last quota reading and when it was taken (quota mode only).
    pub usage: Option<(Usage, SystemTime)>,
    /// What the last scan keeps for the next one; away while a scan runs.
    cache: Option<ScanCache>,
    in_flight: bool,
    /// When the scan in flight started, and its deadline.
    started: Option<(Instant, Instant)>,
    /// The scan in flight has been declared hung (shared with its worker, which
    /// needs it even when the record is gone).
    hung: Arc<std::sync::atomic::AtomicBool>,
    next_due: Instant,
    /// The devices of the mounts on this upper dir.
    devices: Vec<Device>,
    /// Their copy-up count ([`Activity`]) when the last scan started.
    copy_ups_at_scan: u64,
    /// The upper dir's own inode when the last scan started.
    root_stamp: Option<RootStamp>,
    /// Where the upper dir is opened (under `rootfs`).
    open_at: PathBuf,
    /// Activity seen since the last scan started, and by which signal.
    activity: Option<ActivitySignal>,
}

/// What a `stat` of an upper dir says about its own entries: a name added, removed
/// or renamed in it changes its mtime and ctime; a new dir in its place, its inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RootStamp {
    ino: u64,
    mtime: (i64, u64),
    ctime: (i64, u64),
}

impl RootStamp {
    fn of(path: &Path) -> Option<RootStamp> {
        let st = rustix::fs::stat(path).ok()?;
        Some(RootStamp {
            ino: st.st_ino,
            mtime: (st.st_mtime, st.st_mtime_nsec as u64),
            ctime: (st.st_ctime, st.st_ctime_nsec as u64),
        })
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
            changed: false,
            quota: Err(Unavailable::Unknown),
            usage: None,
            cache: Some(ScanCache::default()),
            in_flight: false,
            started: None,
            hung: Arc::default(),
            next_due: now,
            devices: Vec::new(),
            copy_ups_at_scan: 0,
            root_stamp: None,
            open_at: PathBuf::new(),
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

/// Quota mode settings (`scan.quota*`, `scan.classify_interval`, `scan.assign_project_ids`).
#[derive(Debug)]
pub struct QuotaSettings {
    pub enabled: bool,
    pub interval: Duration,
    pub classify_interval: Duration,
    pub assign: Option<(u32, u32)>,
    /// Where the next assigned id search starts.
    next_id: Mutex<u32>,
    /// Failed assignments: retried after an hour, logged once per reason.
    assign_memo: Mutex<quota::AssignMemo>,
    /// The agent's own mountinfo (block devices for quotactl before 5.14).
    pub mountinfo: PathBuf,
    /// Quota readings made, and those that failed.
    pub reads: AtomicU64,
    pub read_errors: AtomicU64,
}

impl QuotaSettings {
    pub fn new(config: &ScanConfig) -> Self {
        let assign = config.assign_project_ids.map(|r| (r.first, r.last));
        QuotaSettings {
            enabled: config.quota,
            interval: config.quota_interval,
            classify_interval: config.classify_interval,
            assign,
            next_id: Mutex::new(assign.map_or(0, |a| a.0)),
            assign_memo: Mutex::default(),
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
            reads: AtomicU64::new(0),
            read_errors: AtomicU64::new(0),
        }
    }

    fn read_raw(&self, target: &QuotaTarget) -> Result<quota::Reading, Unavailable> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        target.read_raw().inspect_err(|_| {
            self.read_errors.fetch_add(1, Ordering::Relaxed);
        })
    }

    fn read(&self, target: &QuotaTarget) -> Result<Usage, Unavailable> {
        self.read_raw(target).and_then(|r| target.usage(r))
    }

    /// Quota mode for one upper dir, assigning it an id first when configured.
    fn probe(&self, upper: &Path, work: Option<&Path>) -> Result<QuotaTarget, Unavailable> {
        if !self.enabled {
            return Err(Unavailable::Disabled);
        }
        match quota::probe(upper, work, &self.mountinfo) {
            Err(Unavailable::NoProjectId)
                if self.assign.is_some() && self.assign_memo.locked().due(upper, Instant::now()) =>
            {
                let range = self.assign.unwrap_or_default();
                let assigned = quota::assign(upper, work, &self.mountinfo, range, &mut self.next_id.locked());
                match assigned {
                    Ok(a) => {
                        self.assign_memo.locked().succeeded(upper);
                        tracing::info!(upper = %upper.display(), project_id = a.project_id, tagged = a.tagged, foreign = a.foreign, untaggable = a.untaggable, "assigned a project id (scan.assign_project_ids)")
                    }
                    // Every walk tries again (one quotactl): no warning per walk where quotas cannot work.
                    Err(e @ quota::AssignError::Unavailable(_)) => {
                        tracing::debug!(upper = %upper.display(), error = %e, "no project id assigned")
                    }
                    // Tried again after quota::ASSIGN_RETRY; logged once per upper dir and reason.
                    Err(e) => {
                        if self.assign_memo.locked().failed(upper, &e, Instant::now()) {
                            tracing::warn!(upper = %upper.display(), reason = e.kind(), error = %e, "no project id assigned (scan.assign_project_ids); tried again in an hour")
                        }
                    }
                }
                quota::probe(upper, work, &self.mountinfo)
            }
            other => other,
        }
    }
}

/// Last scan results by upper dir, and the scan threads' budget.
#[derive(Debug, Clone)]
pub struct ScanStore {
    records: Arc<Mutex<HashMap<PathBuf, ScanRecord>>>,
    budget: Arc<Budget>,
    quota: Arc<QuotaSettings>,
    /// Directories read and cached, over all scans.
    dirs: Arc<(AtomicU64, AtomicU64)>,
    /// Copy-up counts by device, from the probe side.
    activity: Arc<Activity>,
    /// Scans moved ahead for recent activity, by [`ActivitySignal`].
    prioritized: Arc<[AtomicU64; 2]>,
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
        }
    }

    pub fn quota(&self) -> &QuotaSettings {
        &self.quota
    }

    /// Scans moved ahead of idle upper dirs because of `signal`, so far.
    pub fn prioritized(&self, signal: ActivitySignal) -> u64 {
        self.prioritized[signal as usize].load(Ordering::Relaxed)
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
        ScanStore::new(Budget::new(None), Arc::default())
    }
}

struct Job {
    /// The upper dir as mountinfo names it (the store's key).
    upper: PathBuf,
    /// Where to open it: `upper` under the host root filesystem.
    open_at: PathBuf,
    /// Its work dir, likewise (quota mode).
    work_at: Option<PathBuf>,
    ns: XattrNamespace,
    interval: Duration,
    timeout: Duration,
    cache: ScanCache,
    priority: Priority,
    /// Scans of other upper dirs started while this job waited (aging).
    passed_over: usize,
}

/// The order of the jobs in the queue: the larger goes first (fields compare in
/// order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Priority {
    never_scanned: bool,
    /// Activity seen since its last scan started.
    active: bool,
    /// Its last scan found a change since the one before (not a first scan: a
    /// first scan's time as a lasting priority starved the upper dirs scanned
    /// first, under a budget).
    changed: bool,
    /// The most overdue first.
    due: Reverse<Instant>,
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
const STARVED_AFTER: usize = 3;

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
struct Queue {
    state: Mutex<(Vec<Job>, bool)>,
    ready: Condvar,
}

impl Queue {
    fn push(&self, job: Job) {
        self.state.locked().0.push(job);
        self.ready.notify_one();
    }

    /// The next job, or `None` once the queue is closed; the others waiting
    /// count one more scan passed over (aging, [`Job::rank`]).
    fn pop(&self) -> Option<Job> {
        let mut st = self.state.locked();
        loop {
            if st.1 {
                return None;
            }
            let waiting = st.0.len();
            let best = st.0.iter().enumerate().max_by_key(|(_, j)| j.rank(waiting)).map(|(i, _)| i);
            if let Some(i) = best {
                let job = st.0.swap_remove(i);
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

    fn close(&self) {
        self.state.locked().1 = true;
        self.ready.notify_all();
    }

    /// Marks the jobs of these upper dirs active, if waiting; returns how many.
    fn mark_active(&self, found: &[(PathBuf, ActivitySignal)]) -> usize {
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
    /// Dropped with the pool: ends the activity thread.
    _stop_activity: Sender<()>,
    /// Tells the quota thread to end.
    stop: Arc<(Mutex<bool>, Condvar)>,
}

impl Drop for ScanPool {
    fn drop(&mut self) {
        self.queue.close();
        *self.stop.0.locked() = true;
        self.stop.1.notify_all();
    }
}

impl ScanPool {
    /// Starts `scan.concurrency` scan threads and the activity thread, which reads
    /// `activity`. They end when the pool is dropped.
    pub fn new(config: &ScanConfig, activity: Arc<Activity>) -> std::io::Result<Self> {
        let (stop, stopped) = channel();
        let pool = ScanPool {
            queue: Arc::default(),
            store: ScanStore::with_quota(Budget::new(config.max_cpu), activity, QuotaSettings::new(config)),
            busy: Arc::new(Busy::default()),
            workers: Arc::new(Workers { target: config.concurrency.max(1), ..Default::default() }),
            idle_priority: config.idle_priority,
            _stop_activity: stop,
            stop: Arc::default(),
        };
        for _ in 0..pool.workers.target {
            pool.spawn_worker()?;
        }
        let (queue, store, idle) = (pool.queue.clone(), pool.store.clone(), pool.idle_priority);
        std::thread::Builder::new()
            .name("scan-activity".into())
            .spawn(move || watch_activity(queue, store, stopped, idle))?;
        if config.quota {
            let (store, stop, idle) = (pool.store.clone(), pool.stop.clone(), pool.idle_priority);
            std::thread::Builder::new()
                .name("quota".to_owned())
                .spawn(move || quota_reader(store, stop, idle))?;
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
        let mut wanted: HashMap<PathBuf, (XattrNamespace, Vec<Device>, Option<PathBuf>)> = HashMap::new();
        let under_root = |p: &Path| rootfs.join(p.strip_prefix("/").unwrap_or(p));
        for (dev, m) in &table.mounts {
            if let Some(upper) = m.upper_dir() {
                let ns = if m.options.userxattr { XattrNamespace::User } else { XattrNamespace::Trusted };
                let work = m.options.work.as_ref().and_then(|w| w.absolute()).map(under_root);
                let w = wanted.entry(upper.to_owned()).or_insert((ns, Vec::new(), None));
                w.0 = ns;
                w.1.push(*dev);
                if w.2.is_none() {
                    w.2 = work;
                }
            }
        }
        let activity = self.store.activity.snapshot();
        let mut store = self.store.lock();
        store.retain(|upper, _| wanted.contains_key(upper));
        for (upper, (ns, devices, work_at)) in wanted {
            let rec = store.entry(upper.clone()).or_insert_with(|| ScanRecord::new(now));
            if rec.devices != devices {
                rec.devices = devices;
            }
            if rec.in_flight || rec.next_due > now {
                continue;
            }
            rec.in_flight = true;
            self.busy.add();
            let open_at = rootfs.join(upper.strip_prefix("/").unwrap_or(&upper));
            if rec.open_at != open_at {
                rec.open_at = open_at.clone();
            }
            let never_scanned = rec.scans_total == 0;
            // The counts are at hand: no need to wait for the activity thread.
            if !never_scanned
                && rec.activity.is_none()
                && activity.copy_ups(&rec.devices) != rec.copy_ups_at_scan
            {
                rec.activity = Some(ActivitySignal::CopyUps);
                self.store.prioritized[ActivitySignal::CopyUps as usize].fetch_add(1, Ordering::Relaxed);
            }
            let active = rec.activity.is_some();
            let priority =
                Priority { never_scanned, active, changed: rec.changed, due: Reverse(rec.next_due) };
            let cache = rec.cache.take().unwrap_or_default();
            self.queue.push(Job {
                upper,
                open_at,
                work_at,
                ns,
                interval,
                timeout,
                cache,
                priority,
                passed_over: 0,
            });
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

/// The activity thread: every [`ACTIVITY_PERIOD`] (or less often, see
/// [`ACTIVITY_SHARE`]) until the pool is dropped, moves upper dirs that changed
/// since their last scan ahead of the idle ones (see the module doc). Its CPU time
/// is charged to the scan budget.
fn watch_activity(queue: Arc<Queue>, store: ScanStore, stop: Receiver<()>, idle: bool) {
    if idle {
        if let Err(e) = set_idle_priority() {
            tracing::debug!(error = %e, "scan activity thread keeps its normal priority");
        }
    }
    let mut period = ACTIVITY_PERIOD;
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(period) {
        let start = thread_cpu();
        check_activity(&queue, &store, Instant::now() + period);
        let pass = thread_cpu().saturating_sub(start);
        store.budget().charge(pass);
        period = activity_period(pass, store.budget().max_cpu());
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
            activity_since_scan(then, now, stamp, || RootStamp::of(&open_at)).map(|s| (upper, scans, s))
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
            let unscanned = |r: &&mut ScanRecord| r.started.is_none() && r.scans_total == scans;
            if let Some(rec) = records.get_mut(&upper).filter(|r| unscanned(r) && r.activity.is_none()) {
                rec.activity = Some(signal);
                store.prioritized[signal as usize].fetch_add(1, Ordering::Relaxed);
                marked.push((upper, signal));
            }
        }
    }
    queue.mark_active(&marked);
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
            rec.copy_ups_at_scan = store.activity.snapshot().copy_ups(&rec.devices);
            rec.activity = None;
        }
        // Before the walk: a change during the walk shows at the next check.
        let stamp = RootStamp::of(&job.open_at);
        let opts = ScanOptions {
            ns: job.ns,
            cwd: own_cwd.as_ref(),
            deadline: Some(deadline),
            budget: Some(store.budget()),
        };
        // Quota mode: readings just before and after the walk check its figures.
        let quota = store.quota();
        let target = quota.probe(&job.open_at, job.work_at.as_deref());
        let before = target.as_ref().map_err(|u| *u).and_then(|t| quota.read_raw(t));
        let outcome = super::scan(&job.open_at, &opts, &mut job.cache);
        let duration = start.elapsed();
        let quota_state = match (target, &outcome) {
            (Ok(mut t), Ok(r)) if !r.timed_out => {
                let walk = Usage { allocated_bytes: r.allocated_bytes, inodes: r.inodes };
                let after = quota.read_raw(&t);
                match quota::verify(&mut t, before, after, walk) {
                    Ok(u) => Ok((t, u)),
                    Err(Unavailable::Mismatch) => {
                        let b = before.unwrap_or_default().usage;
                        tracing::warn!(upper = %job.upper.display(), project_id = t.project_id, quota_bytes = b.allocated_bytes, quota_inodes = b.inodes, walk_bytes = walk.allocated_bytes, walk_inodes = walk.inodes, "project quota disagrees with the walk of an unchanged tree: bytes and inodes from the walk");
                        Err(Unavailable::Mismatch)
                    }
                    Err(e) => Err(e),
                }
            }
            (Ok(t), _) => before.and_then(|b| t.usage(b)).map(|u| (t, u)),
            (Err(e), _) => Err(e),
        };
        let was_hung = hung.load(Ordering::SeqCst);
        {
            let mut records = store.lock();
            if let Some(rec) = records.get_mut(&job.upper) {
                rec.in_flight = false;
                rec.started = None;
                rec.hung = Arc::default();
                let interval = match &quota_state {
                    Ok(_) => quota.classify_interval.max(job.interval),
                    Err(_) => job.interval,
                };
                rec.next_due = Instant::now() + interval;
                match quota_state {
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
                rec.root_stamp = stamp;
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
                        rec.changed = changed_since(rec.last.as_ref(), &result);
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

/// Whether a scan found the upper dir changed since the last one: a directory
/// read, or other bytes or inodes. Not for a first scan, and not for one that
/// timed out: its figures cover part of the tree, so they differ from a complete
/// scan's whether or not anything changed (and a timed-out scan's directories are
/// read again next time), which would keep the most expensive upper dirs first;
/// nor for the first complete scan after one that timed out (nothing to compare).
fn changed_since(last: Option<&ScanResult>, result: &ScanResult) -> bool {
    !result.timed_out
        && last.is_some_and(|last| {
            !last.timed_out
                && (result.dirs_read > 0
                    || (last.allocated_bytes, last.apparent_bytes, last.inodes)
                        != (result.allocated_bytes, result.apparent_bytes, result.inodes))
        })
}

/// The quota thread: every `scan.quota_interval`, reads the quota of every upper
/// dir in quota mode (one `quotactl` and a few `fstatat` each). A failed reading
/// takes the upper dir out of quota mode and makes its walk due now.
fn quota_reader(store: ScanStore, stop: Arc<(Mutex<bool>, Condvar)>, idle: bool) {
    if idle {
        if let Err(e) = set_idle_priority() {
            tracing::warn!(error = %e, "quota thread keeps its normal priority");
        }
    }
    let interval = store.quota().interval;
    loop {
        {
            let stopped = stop.0.locked();
            let (stopped, _) = match stop.1.wait_timeout_while(stopped, interval, |s| !*s) {
                Ok(r) => r,
                Err(p) => p.into_inner(),
            };
            if *stopped {
                return;
            }
        }
        let meter = super::budget::CpuMeter::new(store.budget());
        let targets: Vec<(PathBuf, QuotaTarget)> = store
            .lock()
            .iter()
            .filter(|(_, r)| !r.in_flight)
            .filter_map(|(u, r)| r.quota.as_ref().ok().map(|t| (u.clone(), t.clone())))
            .collect();
        for (upper, target) in targets {
            let reading = store.quota().read(&target);
            let mut records = store.lock();
            let Some(rec) = records.get_mut(&upper) else { continue };
            if rec.in_flight || rec.quota.as_ref() != Ok(&target) {
                continue; // a walk took over meanwhile
            }
            match reading {
                Ok(u) => rec.usage = Some((u, SystemTime::now())),
                Err(e) => {
                    tracing::debug!(upper = %upper.display(), reason = e.as_str(), "quota reading failed: walking");
                    rec.quota = Err(e);
                    rec.usage = None;
                    rec.next_due = Instant::now();
                }
            }
        }
        drop(meter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, (never_scanned, changed, due): (bool, bool, Reverse<Instant>)) -> Job {
        job_at(name, Path::new(name), Priority { never_scanned, active: false, changed, due })
    }

    fn job_at(name: &str, open_at: &Path, priority: Priority) -> Job {
        Job {
            upper: PathBuf::from(name),
            open_at: open_at.to_owned(),
            work_at: None,
            ns: XattrNamespace::Trusted,
            interval: Duration::from_secs(60),
            timeout: Duration::from_secs(60),
            cache: ScanCache::default(),
            priority,
            passed_over: 0,
        }
    }

    fn order(q: &Queue, n: usize) -> Vec<String> {
        (0..n).filter_map(|_| q.pop()).map(|j| j.upper.display().to_string()).collect()
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
    fn behind_schedule_counts_only_scans_not_started() {
        let now = Instant::now();
        let mut rec = ScanRecord::new(now);
        rec.next_due = now;
        let later = now + Duration::from_secs(3);
        assert_eq!(rec.behind(later), Duration::from_secs(3));
        rec.started = Some((later, later + Duration::from_secs(60)));
        assert_eq!(rec.behind(later + Duration::from_secs(5)), Duration::ZERO);
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
            let name = j.upper.display().to_string();
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
        assert_eq!(q.mark_active(&[(PathBuf::from("m9"), ActivitySignal::UpperChanged)]), 1);
        assert_eq!(q.mark_active(&[(PathBuf::from("m9"), ActivitySignal::CopyUps)]), 0, "marked once");
        assert_eq!(q.mark_active(&[(PathBuf::from("gone"), ActivitySignal::CopyUps)]), 0);
        step(&q, &mut scanned);
        assert_eq!(scanned[10], "m9", "the active upper dir is refreshed next");
        for _ in 0..10 {
            step(&q, &mut scanned);
        }
        assert_eq!(&scanned[11..], ["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "m9"]);
    }

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
            rec.open_at = dir.clone();
            assert!(rec.root_stamp.is_some());
            store.lock().insert(PathBuf::from(name), rec);
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
            store.lock().get(Path::new("not-due")).and_then(|r| r.activity),
            Some(ActivitySignal::UpperChanged)
        );
        assert_eq!(store.prioritized(ActivitySignal::UpperChanged), 2);
        assert_eq!(store.prioritized(ActivitySignal::CopyUps), 1);
        // Idle was the most overdue; now it goes last.
        assert_eq!(order(&q, 3), ["copied", "written", "idle"]);
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
            let name = j.upper.display().to_string();
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
        let found = [(PathBuf::from("m6"), ActivitySignal::UpperChanged)];
        assert_eq!(q.mark_active(&found), 1);
        assert_eq!(q.pop().map(|j| j.upper), Some(PathBuf::from("m6")), "the written one first");
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
