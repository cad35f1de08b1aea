//! The quota thread: between walks, keeps the bytes and inodes of the upper dirs
//! in quota mode fresh from their project quota (`scan.quota_interval`).

use crate::discovery::UpperDir;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Instant, SystemTime};

use super::budget::CpuMeter;
use super::quota::QuotaTarget;
use super::sched::{Follower, IdleSetting};
use super::store::ScanStore;
use crate::sync::LockExt;

/// The quota thread: every `scan.quota_interval`, reads the quota of every upper
/// dir in quota mode (one `quotactl` and a few `fstatat` each). A failed reading
/// takes the upper dir out of quota mode and makes its walk due now.
pub(super) fn quota_reader(store: ScanStore, stop: Arc<(Mutex<bool>, Condvar)>, idle: Arc<IdleSetting>) {
    let mut priority = Follower::default();
    follow_priority(&mut priority, &idle);
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
        follow_priority(&mut priority, &idle);
        let meter = CpuMeter::new(store.budget());
        let targets: Vec<(UpperDir, QuotaTarget)> = store
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
                    tracing::debug!(upper = %upper, reason = e.as_str(), "quota reading failed: walking");
                    rec.quota = Err(e);
                    rec.usage = None;
                    store.set_due(&upper, rec, Instant::now());
                }
            }
        }
        drop(meter);
    }
}

/// Applies `scan.idle_priority` to the quota thread when it changed.
fn follow_priority(priority: &mut Follower, idle: &IdleSetting) {
    match priority.follow(idle) {
        Some((true, Err(e))) => tracing::warn!(error = %e, "quota thread keeps its normal priority"),
        Some((false, Err(e))) => tracing::warn!(error = %e, "quota thread keeps its idle priority"),
        _ => {}
    }
}
