//! The one entry point for reading the copy-up maps at scrape time: one read of
//! every map (a [`MapReading`]), and the copy-up counts it holds published to
//! the scan pool's activity signal ([`crate::activity`]). Every scrape reads the
//! maps anyway, so the signal costs nothing more and has the scrape interval's
//! resolution.

use std::time::Instant;

use super::maps::MapReading;
use super::ProbeHandle;
use crate::activity::Activity;
use crate::discovery::Device;
use crate::sync::LockExt;

/// What a scrape reads from the running probes.
#[derive(Debug, Default, Clone)]
pub struct Reading {
    /// The maps' contents.
    pub maps: MapReading,
}

/// Reads the maps (`None` while the probes do not run), then publishes the
/// copy-up counts by device. The maps' mutex is held for the read only.
pub fn read(handle: &ProbeHandle) -> Option<Reading> {
    let reading = {
        let maps = handle.maps.locked();
        let m = maps.as_ref()?;
        Reading { maps: m.read() }
    };
    publish(&handle.activity, &reading.maps, Instant::now());
    Some(reading)
}

/// The copy-up counts of a reading, by device (one pair per cause and kind;
/// `Activity::publish` sums them).
fn publish(activity: &Activity, maps: &MapReading, now: Instant) {
    let counts = maps.counts.iter().map(|(k, v)| (Device::from_kernel(k.dev), v.copy_ups));
    activity.publish(counts, now);
}

#[cfg(test)]
mod tests {
    use super::*;
    use overlay_agent_common::{cause, kind, CountKey, CountValue};

    #[test]
    fn copy_ups_are_published_by_decoded_device() {
        let mut m = MapReading::default();
        let dev = (8 << 20) | 3;
        for (c, k, n) in
            [(cause::CHOWN, kind::DATA, 2), (cause::OPEN, kind::DATA, 5), (cause::CHOWN, kind::DIRECTORY, 1)]
        {
            let key = CountKey { dev, cause: c, kind: k, _pad: [0; 2] };
            m.counts.insert(key, CountValue { copy_ups: n, ..Default::default() });
        }
        let other = CountKey { dev: 60, cause: cause::CHOWN, kind: kind::DATA, _pad: [0; 2] };
        m.counts.insert(other, CountValue { copy_ups: 4, ..Default::default() });
        let a = Activity::default();
        publish(&a, &m, Instant::now());
        let counts = a.snapshot();
        assert_eq!(counts.copy_ups(&[Device { major: 8, minor: 3 }]), 8);
        assert_eq!(counts.copy_ups(&[Device { major: 0, minor: 60 }]), 4);
        assert_eq!(counts.copy_ups(&[Device { major: 0, minor: 3 }]), 0, "major from the top 12 bits");
    }

    #[test]
    fn nothing_is_read_or_published_without_probes() {
        let handle = ProbeHandle::default();
        assert!(read(&handle).is_none());
        assert_eq!(handle.activity.snapshot().copy_ups(&[Device { major: 0, minor: 60 }]), 0);
    }
}
