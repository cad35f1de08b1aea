//! Recent copy-up activity per overlay mount: published by the copy-up side, read
//! by the scan pool to refresh mounts that are being written before idle ones.
//!
//! One way: the publisher (`probes::reading::read`, with the counters a scrape
//! has just read from the eBPF maps) replaces the whole set of counts; the reader
//! (the scan pool, once a second) takes an `Arc` to the current one. Nothing is
//! added to the kernel side: the counts are the ones every scrape reads anyway, so
//! the signal has the scrape interval's resolution. The lock is held only to swap
//! or clone a pointer.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crate::discovery::Device;
use crate::sync::RwLockExt;

/// What the copy-up counters said about one device at the last publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Copy-ups counted on the device since the probes started (all causes).
    pub copy_ups: u64,
    /// When a publication first saw this count.
    pub since: Instant,
}

/// Copy-up counts by device, as of one publication.
#[derive(Debug, Default)]
pub struct ActivityCounts {
    by_dev: HashMap<Device, Seen>,
}

impl ActivityCounts {
    /// Copy-ups counted on any of `devices` (0 for devices never seen).
    pub fn copy_ups(&self, devices: &[Device]) -> u64 {
        devices.iter().filter_map(|d| self.by_dev.get(d)).map(|s| s.copy_ups).sum()
    }

    pub fn get(&self, dev: Device) -> Option<Seen> {
        self.by_dev.get(&dev).copied()
    }
}

/// The current [`ActivityCounts`].
#[derive(Debug, Default)]
pub struct Activity {
    current: RwLock<Arc<ActivityCounts>>,
}

impl Activity {
    /// Publishes the copy-up counts of a read of the maps, as (device, count)
    /// pairs (several per device: one per cause and kind, summed here). Devices
    /// absent from `counts` are forgotten.
    pub fn publish(&self, counts: impl IntoIterator<Item = (Device, u64)>, now: Instant) {
        let mut totals: HashMap<Device, u64> = HashMap::new();
        for (dev, n) in counts {
            let t = totals.entry(dev).or_default();
            *t = t.saturating_add(n);
        }
        let before = self.snapshot();
        let by_dev = totals
            .into_iter()
            .map(|(dev, copy_ups)| {
                let since = match before.get(dev) {
                    Some(s) if s.copy_ups == copy_ups => s.since,
                    _ => now,
                };
                (dev, Seen { copy_ups, since })
            })
            .collect();
        *self.current.write_now() = Arc::new(ActivityCounts { by_dev });
    }

    pub fn snapshot(&self) -> Arc<ActivityCounts> {
        self.current.read_now().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counts_are_summed_per_device_and_keep_the_time_they_were_first_seen() {
        let a = Activity::default();
        let (d1, d2) = (Device { major: 0, minor: 51 }, Device { major: 0, minor: 52 });
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(15);
        a.publish([(d1, 3), (d1, 4), (d2, 1)], t0);
        let s = a.snapshot();
        assert_eq!((s.copy_ups(&[d1]), s.copy_ups(&[d2]), s.copy_ups(&[d1, d2])), (7, 1, 8));
        assert_eq!(s.copy_ups(&[Device { major: 0, minor: 99 }]), 0);
        // d1 unchanged keeps t0; d2 rose at t1; a device gone from the maps is forgotten.
        a.publish([(d1, 7), (d2, 2)], t1);
        let s = a.snapshot();
        assert_eq!(s.get(d1), Some(Seen { copy_ups: 7, since: t0 }));
        assert_eq!(s.get(d2), Some(Seen { copy_ups: 2, since: t1 }));
        a.publish([(d2, 2)], t1 + Duration::from_secs(15));
        assert_eq!(a.snapshot().get(d1), None);
        assert_eq!(a.snapshot().get(d2).map(|s| s.since), Some(t1));
    }
}
