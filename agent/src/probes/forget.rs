//! Which copy-up map entries to forget when the mount table changes: the
//! counters of vanished devices go with their mount, so that vanished mounts
//! leave /metrics (what they counted stays in the node-wide histograms,
//! `maps::Retained`). The daemon calls [`ForgetPolicy::apply`] after each
//! re-read of the mount table.

use std::collections::HashSet;

use super::ProbeHandle;
use crate::discovery::{Device, MountTable};
use crate::sync::LockExt;

/// The forget decisions and what they remember between mount table changes.
#[derive(Debug, Default)]
pub struct ForgetPolicy {
    /// Devices with counters in the maps but not in the mount table at the last
    /// change of the device set.
    unknown_devices: HashSet<u32>,
}

impl ForgetPolicy {
    /// Forgets the counters of the devices that vanished from `before` to
    /// `after`. Walking the maps costs a syscall per key, so only when the set of
    /// devices changed. A device in neither table may be a mount newer than this
    /// read, already copying up (a volume remounted at once): it is kept until
    /// the next change, and dropped then if still unknown (a mount the filters
    /// leave out).
    pub fn apply(&mut self, before: &MountTable, after: &MountTable, probes: &ProbeHandle) {
        if after.mounts.keys().eq(before.mounts.keys()) {
            return;
        }
        if let Some(maps) = probes.maps.locked().as_mut() {
            let mut pass = self.pass(before, after);
            maps.forget(|dev| pass.keep(dev));
        }
    }

    /// One walk of the maps after a change of the device set: takes over the
    /// devices left unknown by the last one.
    fn pass<'a>(&'a mut self, before: &'a MountTable, after: &'a MountTable) -> Pass<'a> {
        let unknown_before = std::mem::take(&mut self.unknown_devices);
        Pass { before, after, unknown_before, unknown: &mut self.unknown_devices }
    }
}

/// The decisions of one walk of the maps.
struct Pass<'a> {
    before: &'a MountTable,
    after: &'a MountTable,
    unknown_before: HashSet<u32>,
    unknown: &'a mut HashSet<u32>,
}

impl Pass<'_> {
    /// Whether the entries of kernel device `dev` stay in the maps: yes while it
    /// is mounted, no once it left the table or stayed unknown over two
    /// changes; a device first seen unknown is kept and remembered.
    fn keep(&mut self, dev: u32) -> bool {
        let d = Device::from_kernel(dev);
        if self.after.mounts.contains_key(&d) {
            return true;
        }
        if self.before.mounts.contains_key(&d) || self.unknown_before.contains(&dev) {
            return false;
        }
        self.unknown.insert(dev);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{group_by_superblock, mountinfo};

    fn table(minors: &[u32]) -> MountTable {
        let text: String = minors
            .iter()
            .map(|m| format!("{m} 27 0:{m} / /m/{m} rw - overlay overlay rw,lowerdir=/l,upperdir=/u{m},workdir=/w{m}\n"))
            .collect();
        let (lines, _) = mountinfo::parse(text.as_bytes());
        MountTable { mounts: group_by_superblock(lines, |_| true, None), ..Default::default() }
    }

    #[test]
    fn mounted_devices_stay_vanished_ones_go_unknown_ones_get_one_change_of_grace() {
        let mut policy = ForgetPolicy::default();
        let (t1, t2, t3) = (table(&[60, 61]), table(&[60, 62]), table(&[60]));
        let mut pass = policy.pass(&t1, &t2);
        let kept: Vec<bool> = [60, 61, 62, 99].into_iter().map(|d| pass.keep(d)).collect();
        assert_eq!(kept, [true, false, true, true], "61 vanished; 99 is unknown and kept");
        assert_eq!(policy.unknown_devices, HashSet::from([99]));
        let mut pass = policy.pass(&t2, &t3);
        let kept: Vec<bool> = [60, 62, 99, 98].into_iter().map(|d| pass.keep(d)).collect();
        assert_eq!(kept, [true, false, false, true], "99 still unknown at the next change: dropped");
        assert_eq!(policy.unknown_devices, HashSet::from([98]));
    }

    #[test]
    fn nothing_is_walked_while_the_device_set_stays_or_the_probes_are_off() {
        let mut policy = ForgetPolicy { unknown_devices: HashSet::from([99]) };
        let probes = ProbeHandle::default();
        policy.apply(&table(&[60]), &table(&[60]), &probes);
        policy.apply(&table(&[60]), &table(&[61]), &probes);
        assert_eq!(policy.unknown_devices, HashSet::from([99]), "kept until the maps are walked");
    }
}
