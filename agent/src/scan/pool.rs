//! Scans off the request path: a fixed set of worker threads, each with its own
//! filesystem context (so the walker may `fchdir`), fed with upper dirs that are
//! due. The store keeps the last completed result of each upper dir; a scrape only
//! reads it. An upper dir shared by several mounts is scanned once.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use super::{ErrorReason, ScanResult, XattrNamespace};
use crate::discovery::MountTable;

/// The state of one upper dir across scans.
#[derive(Debug, Clone)]
pub struct ScanRecord {
    /// Last completed scan, if any.
    pub last: Option<ScanResult>,
    /// When the last completed scan ended.
    pub last_end: Option<SystemTime>,
    pub last_duration: Duration,
    /// Errors by reason over the life of this upper dir (entries and whole scans).
    pub errors_total: BTreeMap<ErrorReason, u64>,
    pub scans_total: u64,
    in_flight: bool,
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
            in_flight: false,
            next_due: now,
        }
    }
}

/// Last scan results by upper dir.
#[derive(Debug, Clone, Default)]
pub struct ScanStore(Arc<Mutex<HashMap<PathBuf, ScanRecord>>>);

impl ScanStore {
    pub fn lock(&self) -> MutexGuard<'_, HashMap<PathBuf, ScanRecord>> {
        // A worker that panicked while holding the lock leaves plain data behind.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Job {
    /// The upper dir as mountinfo names it (the store's key).
    upper: PathBuf,
    /// Where to open it: `upper` under the host root filesystem.
    open_at: PathBuf,
    ns: XattrNamespace,
    interval: Duration,
}

/// Counts scans queued or running, so `once` can wait for them.
#[derive(Default)]
struct Busy {
    count: Mutex<usize>,
    idle: Condvar,
}

impl Busy {
    fn add(&self) {
        *self.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }
    fn done(&self) {
        let mut c = self.count.lock().unwrap_or_else(|p| p.into_inner());
        *c = c.saturating_sub(1);
        if *c == 0 {
            self.idle.notify_all();
        }
    }
}

pub struct ScanPool {
    tx: mpsc::Sender<Job>,
    store: ScanStore,
    busy: Arc<Busy>,
}

impl ScanPool {
    /// Starts `workers` scan threads. They end when the pool is dropped.
    pub fn new(workers: usize) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let store = ScanStore::default();
        let busy = Arc::new(Busy::default());
        for i in 0..workers.max(1) {
            let rx = rx.clone();
            let store = store.clone();
            let busy = busy.clone();
            std::thread::Builder::new().name(format!("scan-{i}")).spawn(move || worker(rx, store, busy))?;
        }
        Ok(ScanPool { tx, store, busy })
    }

    pub fn store(&self) -> ScanStore {
        self.store.clone()
    }

    /// Queues every upper dir of `table` that is due and not already being scanned;
    /// forgets upper dirs that no mount uses any more. Upper dirs are opened under
    /// `rootfs`, the host's root filesystem as the agent sees it.
    pub fn schedule(&self, table: &MountTable, interval: Duration, rootfs: &Path) {
        let now = Instant::now();
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
            if self.tx.send(Job { upper, open_at, ns, interval }).is_err() {
                rec.in_flight = false;
                self.busy.done();
            }
        }
    }

    /// Blocks until no scan is queued or running.
    pub fn wait_idle(&self) {
        let mut c = self.busy.count.lock().unwrap_or_else(|p| p.into_inner());
        while *c > 0 {
            c = self.busy.idle.wait(c).unwrap_or_else(|p| p.into_inner());
        }
    }
}

fn worker(rx: Arc<Mutex<mpsc::Receiver<Job>>>, store: ScanStore, busy: Arc<Busy>) {
    // SAFETY: CLONE_FS only gives this thread its own cwd/root/umask; no file
    // descriptor table is unshared, so no fd becomes invalid for other threads.
    let own_cwd = unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }.is_ok();
    if !own_cwd {
        tracing::debug!("unshare(CLONE_FS) failed; xattrs will be read by full path");
    }
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            }
        };
        let start = Instant::now();
        let outcome = super::scan(&job.open_at, job.ns, own_cwd);
        let duration = start.elapsed();
        {
            let mut store = store.lock();
            if let Some(rec) = store.get_mut(&job.upper) {
                rec.in_flight = false;
                rec.next_due = Instant::now() + job.interval;
                match outcome {
                    Ok(result) => {
                        for (reason, n) in &result.errors {
                            *rec.errors_total.entry(*reason).or_default() += n;
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
    }
}
