//! Scans off the request path: a fixed set of worker threads, each with its own
//! filesystem context (so the walker may `fchdir`), fed with upper dirs that are
//! due. The store keeps the last completed result of each upper dir; a scrape only
//! reads it. An upper dir shared by several mounts is scanned once.
//!
//! Cost: workers run at idle CPU and I/O priority (`scan.idle_priority`) and share
//! one CPU [`Budget`] (`scan.max_cpu`); both can change while they run
//! ([`ScanPool::reconfigure`]). Each upper dir's [`ScanCache`] goes with its
//! job to the worker and comes back with the result, so rescans skip what cannot
//! have changed.
//!
//! This file is the pool's public face. The parts: `store.rs` (the records),
//! `queue.rs` (the order of the jobs due, and aging), `prioritize.rs` (the thread
//! that moves upper dirs with recent activity ahead), `workers.rs` (the scan
//! threads, hung scans), `job.rs` (one scan and its outcome), `quota_refresh.rs`
//! (the quota thread), `sched.rs` (the threads' idle priority).
//!
//! [`ScanCache`]: super::ScanCache

use std::cmp::Reverse;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::budget::Budget;
use super::cancel::Cancel;
use super::prioritize::watch_activity;
use super::queue::{Job, Priority};
use super::quota_refresh::quota_reader;
use super::sched::IdleSetting;
use super::wanted::{places_of, upper_dirs_of, Roots};
use super::workers::{Crew, InFlight, Workers};
use super::XattrNamespace;
use crate::activity::{Activity, ActivityCounts};
use crate::config::ScanConfig;
use crate::discovery::{Device, Mount, MountTable, UpperDir};
use crate::sync::LockExt;

pub use super::quota::QuotaSettings;
pub use super::store::{ActivitySignal, ScanRecord, ScanStore};

pub struct ScanPool {
    crew: Crew,
    /// Dropped with the pool: ends the activity thread.
    _stop_activity: Sender<()>,
    /// Tells the quota thread to end.
    stop: Arc<(Mutex<bool>, Condvar)>,
}

impl Drop for ScanPool {
    fn drop(&mut self) {
        self.crew.queue.close();
        *self.stop.0.locked() = true;
        self.stop.1.notify_all();
    }
}

/// What a scheduling pass gives each scan it queues.
struct Plan<'a> {
    interval: Duration,
    timeout: Duration,
    roots: Roots<'a>,
    activity: &'a ActivityCounts,
}

impl ScanPool {
    /// Starts `scan.concurrency` scan threads and the activity thread, which reads
    /// `activity`. They end when the pool is dropped.
    pub fn new(config: &ScanConfig, activity: Arc<Activity>) -> std::io::Result<Self> {
        let (stop, stopped) = channel();
        let pool = ScanPool {
            crew: Crew {
                queue: Arc::default(),
                store: ScanStore::with_quota(
                    Budget::new(config.max_cpu),
                    activity,
                    QuotaSettings::new(config),
                ),
                in_flight: Arc::new(InFlight::default()),
                workers: Arc::new(Workers::new(config.concurrency.max(1))),
                idle: Arc::new(IdleSetting::new(config.idle_priority)),
            },
            _stop_activity: stop,
            stop: Arc::default(),
        };
        for _ in 0..pool.crew.workers.target {
            pool.crew.spawn_worker()?;
        }
        let (queue, store, idle) = (pool.crew.queue.clone(), pool.crew.store.clone(), pool.crew.idle.clone());
        std::thread::Builder::new()
            .name("scan-activity".into())
            .spawn(move || watch_activity(queue, store, stopped, idle))?;
        if config.quota {
            let (store, stop, idle) = (pool.crew.store.clone(), pool.stop.clone(), pool.crew.idle.clone());
            std::thread::Builder::new()
                .name("quota".to_owned())
                .spawn(move || quota_reader(store, stop, idle))?;
        }
        Ok(pool)
    }

    pub fn store(&self) -> ScanStore {
        self.crew.store.clone()
    }

    /// Applies what of `config` can change while the pool runs (a reload):
    /// `scan.max_cpu` from now on, and `scan.idle_priority`, which every scan
    /// thread applies to itself before its next job (the activity and quota
    /// threads before their next pass). `scan.interval` and `scan.timeout` are
    /// arguments of [`ScanPool::schedule`]; the rest (`scan.concurrency`, quota
    /// mode) keeps its start-up value.
    pub fn reconfigure(&self, config: &ScanConfig) {
        self.crew.store.budget().set_max_cpu(config.max_cpu);
        self.crew.idle.set(config.idle_priority);
    }

    /// Follows a new read of the mount table: forgets the upper dirs no mount of
    /// `table` uses any more and stops their scans, queued or running (they close
    /// what they hold within milliseconds). A scan whose mounts all left while
    /// another mount came on the same upper dir between two reads (unmounted and
    /// mounted again) stops too, and its upper dir is scanned again at once. Looks
    /// at the table only, never at the upper dirs: call it after every read, before
    /// anything slower.
    pub fn follow(&self, table: &MountTable) {
        let wanted: HashSet<UpperDir> = table.mounts.values().filter_map(|m| m.upper()).collect();
        let present = |(dev, id): &(Device, i32)| table.mounts.get(dev).is_some_and(|m| m.mount_id == *id);
        let mut store = self.crew.store.lock();
        store.retain(|upper, rec| {
            let keep = wanted.contains(upper);
            if !keep || (rec.in_flight && !rec.job_mounts.iter().any(present)) {
                rec.cancel.stop();
            }
            keep
        });
    }

    /// Queues every upper dir of `table` that is due and not already being scanned;
    /// forgets upper dirs that no mount uses any more (stopping their scans). Upper
    /// dirs are opened under `roots`: the host's root, or their namespace's. A pass
    /// over every mount: for a new mount table ([`ScanPool::schedule_due`] between
    /// two).
    pub fn schedule(&self, table: &MountTable, interval: Duration, timeout: Duration, roots: Roots<'_>) {
        let now = Instant::now();
        self.crew.check_hung(now);
        let wanted = upper_dirs_of(table);
        let activity = self.crew.store.activity.snapshot();
        let mut store = self.crew.store.lock();
        store.retain(|upper, rec| {
            let keep = wanted.contains_key(upper);
            if !keep {
                rec.cancel.stop();
            }
            keep
        });
        // Rebuilt from the records (under their lock): the ones not queued below
        // are noted at their due time, the others when their scan ends.
        let mut due = self.crew.store.due.locked();
        due.clear();
        let plan = Plan { interval, timeout, roots, activity: &activity };
        for (upper, (ns, mounts)) in wanted {
            let rec = store.entry(upper.clone()).or_insert_with(|| Box::new(ScanRecord::new(now)));
            if !rec.devices.iter().copied().eq(mounts.iter().map(|m| m.device)) {
                rec.devices = mounts.iter().map(|m| m.device).collect();
            }
            if rec.in_flight {
                continue;
            }
            if rec.next_due > now {
                due.insert(rec.next_due, &upper);
                continue;
            }
            self.queue_scan(upper, rec, ns, &mounts, &plan);
        }
    }

    /// Queues the upper dirs of `table` that have come due since the last pass,
    /// looking only at them ([`DueIndex`](super::due::DueIndex)), not at every
    /// mount: for the table the last [`ScanPool::schedule`] was given. What an
    /// idle agent does once a second, whatever the number of mounts.
    pub fn schedule_due(&self, table: &MountTable, interval: Duration, timeout: Duration, roots: Roots<'_>) {
        let now = Instant::now();
        self.crew.check_hung(now);
        let due = self.crew.store.due.locked().take_due(now);
        if due.is_empty() {
            return;
        }
        let activity = self.crew.store.activity.snapshot();
        let plan = Plan { interval, timeout, roots, activity: &activity };
        let mut store = self.crew.store.lock();
        for upper in due {
            let Some(rec) = store.get_mut(&upper) else { continue };
            if rec.in_flight || rec.next_due > now {
                continue; // a stale entry: the record has a later one, or its scan notes it
            }
            let mounts: Vec<&Mount> = rec.devices.iter().filter_map(|d| table.mounts.get(d)).collect();
            let ns = match mounts.last() {
                Some(m) if m.options.userxattr => XattrNamespace::User,
                _ => XattrNamespace::Trusted,
            };
            self.queue_scan(upper, rec, ns, &mounts, &plan);
        }
    }

    /// Queues a scan of `upper` (due, none in flight), used by `mounts`.
    fn queue_scan(
        &self,
        upper: UpperDir,
        rec: &mut ScanRecord,
        ns: XattrNamespace,
        mounts: &[&Mount],
        plan: &Plan<'_>,
    ) {
        rec.in_flight = true;
        self.crew.in_flight.add();
        let (open_at, work_at) = places_of(&upper, mounts, &plan.roots);
        if rec.open_at != open_at {
            rec.open_at = open_at.clone();
        }
        let never_scanned = rec.scans_total == 0;
        // The counts are at hand: no need to wait for the activity thread.
        if !never_scanned
            && rec.activity.is_none()
            && plan.activity.copy_ups(&rec.devices) != rec.copy_ups_at_scan
        {
            rec.activity = Some(ActivitySignal::CopyUps);
            self.crew.store.prioritized[ActivitySignal::CopyUps as usize].fetch_add(1, Ordering::Relaxed);
        }
        let active = rec.activity.is_some();
        let priority = Priority { never_scanned, active, changed: rec.changed, due: Reverse(rec.next_due) };
        let cache = rec.cache.take().unwrap_or_default();
        let cancel = Arc::new(Cancel::default());
        rec.cancel = cancel.clone();
        rec.job_mounts = mounts.iter().map(|m| (m.device, m.mount_id)).collect();
        self.crew.queue.push(Job {
            upper,
            open_at,
            work_at,
            ns,
            interval: plan.interval,
            timeout: plan.timeout,
            cache,
            cancel,
            priority,
            passed_over: 0,
        });
    }

    /// Blocks until no scan is queued or running, except hung ones.
    pub fn wait_idle(&self) {
        loop {
            let hung = self.crew.check_hung(Instant::now());
            if self.crew.in_flight.wait_for_at_most(hung, Duration::from_millis(500)) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{LayerPath, OverlayOptions};
    use std::collections::HashSet;
    use std::path::Path;

    /// Between two mount tables, a pass queues only the upper dirs that came
    /// due: none right after every upper dir was scanned, then exactly the one
    /// made due; a scan that ends notes its next due time (interval 0: due again).
    #[test]
    fn a_pass_between_tables_queues_only_what_came_due() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mounts: Vec<Mount> = (0..3u32)
            .map(|i| {
                let upper = tmp.path().join(format!("upper{i}"));
                std::fs::create_dir(&upper).expect("mkdir");
                Mount {
                    mount_id: i as i32,
                    device: Device { major: 0, minor: 100 + i },
                    mountpoint: tmp.path().join(format!("merged{i}")),
                    namespace: None,
                    other_mountpoints: Vec::new(),
                    elsewhere: 0,
                    source: "overlay".to_owned(),
                    read_only: false,
                    options: OverlayOptions { upper: Some(LayerPath::Absolute(upper)), ..Default::default() },
                }
            })
            .collect();
        let table =
            MountTable { mounts: mounts.into_iter().map(|m| (m.device, m)).collect(), ..Default::default() };
        let config = ScanConfig { concurrency: 1, idle_priority: false, quota: false, ..Default::default() };
        let pool = ScanPool::new(&config, Arc::default()).expect("pool");
        let roots = Roots { rootfs: Path::new("/"), procfs: Path::new("/proc") };
        let (hour, timeout) = (Duration::from_secs(3600), Duration::from_secs(60));
        let scans = || -> Vec<u64> {
            let records = pool.crew.store.lock();
            let mut v: Vec<_> = records.iter().map(|(u, r)| (u.path.clone(), r.scans_total)).collect();
            v.sort();
            v.into_iter().map(|(_, n)| n).collect()
        };
        pool.schedule(&table, hour, timeout, roots);
        pool.wait_idle();
        assert_eq!(scans(), [1, 1, 1], "a new table: every upper dir");
        pool.schedule_due(&table, hour, timeout, roots);
        pool.wait_idle();
        assert_eq!(scans(), [1, 1, 1], "nothing due within the hour");
        {
            let mut records = pool.crew.store.lock();
            let upper = UpperDir::host(tmp.path().join("upper1"));
            let rec = records.get_mut(&upper).expect("record");
            pool.crew.store.set_due(&upper, rec, Instant::now());
        }
        pool.schedule_due(&table, Duration::ZERO, timeout, roots);
        pool.wait_idle();
        assert_eq!(scans(), [1, 2, 1], "only the upper dir that came due");
        pool.schedule_due(&table, hour, timeout, roots);
        pool.wait_idle();
        assert_eq!(scans(), [1, 3, 1], "its scan (interval 0) noted it due again");
        // One entry per record at its due time, and upper1's first one (an hour
        // out, now stale) until its time passes.
        assert_eq!(pool.crew.store.due.locked().len(), 4);
    }

    /// The ids of this process's threads.
    fn threads() -> HashSet<i32> {
        let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
        tasks.filter_map(|t| t.ok()?.file_name().to_str()?.parse().ok()).collect()
    }

    fn name_of(tid: i32) -> String {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap_or_default().trim().to_owned()
    }

    /// A thread's CPU policy, and whether it is in the idle I/O class.
    fn classes_of(tid: i32) -> (libc::c_int, bool) {
        // SAFETY: plain syscalls on a thread of this process; no memory is passed.
        let policy = unsafe { libc::sched_getscheduler(tid) };
        // SAFETY: as above (IOPRIO_WHO_PROCESS = 1).
        let io = unsafe { libc::syscall(libc::SYS_ioprio_get, 1, tid) };
        (policy, io >= 0 && io >> 13 == 3)
    }

    /// Whether this process may take a thread out of SCHED_IDLE (CAP_SYS_NICE or
    /// RLIMIT_NICE): without, a reload to `idle_priority: false` is refused.
    fn can_leave_idle() -> bool {
        std::thread::spawn(|| {
            super::super::sched::set_idle_priority().is_ok()
                && super::super::sched::set_normal_priority().is_ok()
        })
        .join()
        .unwrap_or(false)
    }

    /// A reload's `scan.max_cpu` and `scan.idle_priority` reach the budget and the
    /// running worker (before its next job), in both directions.
    #[test]
    fn reconfigure_reaches_the_budget_and_the_running_scan_threads() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let upper = tmp.path().join("upper");
        std::fs::create_dir(&upper).expect("mkdir");
        let dev = Device { major: 0, minor: 4242 };
        let mount = Mount {
            mount_id: 1,
            device: dev,
            mountpoint: tmp.path().join("merged"),
            namespace: None,
            other_mountpoints: Vec::new(),
            elsewhere: 0,
            source: "overlay".to_owned(),
            read_only: false,
            options: OverlayOptions { upper: Some(LayerPath::Absolute(upper)), ..Default::default() },
        };
        let table = MountTable { mounts: [(dev, mount)].into(), ..Default::default() };
        let config = ScanConfig {
            concurrency: 1,
            idle_priority: false,
            max_cpu: None,
            quota: false,
            ..Default::default()
        };
        let before = threads();
        let pool = ScanPool::new(&config, Arc::default()).expect("pool");
        let scan = || {
            pool.schedule(
                &table,
                Duration::ZERO,
                Duration::from_secs(60),
                Roots { rootfs: Path::new("/"), procfs: Path::new("/proc") },
            );
            pool.wait_idle();
        };
        scan();
        let worker = threads().into_iter().find(|t| !before.contains(t) && name_of(*t) == "scan-0");
        let worker = worker.expect("the pool's worker thread");
        assert_ne!(classes_of(worker), (libc::SCHED_IDLE, true), "started normal");

        pool.reconfigure(&ScanConfig { max_cpu: Some(0.5), idle_priority: true, ..config.clone() });
        assert_eq!(pool.store().budget().max_cpu(), Some(0.5));
        scan();
        assert_eq!(classes_of(worker), (libc::SCHED_IDLE, true), "idle before its next job");

        pool.reconfigure(&config);
        assert_eq!(pool.store().budget().max_cpu(), None);
        scan();
        if can_leave_idle() {
            let (policy, idle_io) = classes_of(worker);
            assert!(policy != libc::SCHED_IDLE && !idle_io, "back to normal: {policy} {idle_io}");
        }
        let store = pool.store();
        let records = store.lock();
        assert_eq!(records.values().map(|r| r.scans_total).sum::<u64>(), 3, "three scans");
    }
}
