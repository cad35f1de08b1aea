//! Reading the programs' maps at scrape time: per-CPU values summed, nothing reset.

use std::collections::BTreeMap;

use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap};
use aya::Pod;
use overlay_agent_common::{
    stat, CountKey, CountValue, HistKey, ProcessKey, ProcessValue, HIST_BYTES, HIST_LATENCY,
};

/// What the kernel counted on devices that are gone, kept so that the node-wide
/// histograms (sums over devices) never go down when a mount's entries are
/// deleted from the maps.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Retained {
    /// Observations by (hist, cause, bucket).
    pub buckets: BTreeMap<(u8, u8, u16), u64>,
    /// The histograms' sums by (hist, cause), in the counters' units (bytes, ns).
    pub sums: BTreeMap<(u8, u8), u64>,
}

impl Retained {
    /// Adds a deleted COUNTS entry: its bytes and latency are histogram sums.
    pub(super) fn add_counts(&mut self, k: &CountKey, v: &CountValue) {
        *self.sums.entry((HIST_BYTES, k.cause)).or_default() += v.data_bytes;
        *self.sums.entry((HIST_LATENCY, k.cause)).or_default() += v.latency_ns;
    }

    /// Adds a deleted HIST entry.
    pub(super) fn add_bucket(&mut self, k: &HistKey, n: u64) {
        *self.buckets.entry((k.hist, k.cause, k.bucket)).or_default() += n;
    }
}

/// The programs' counting maps: the per-CPU slots and the shared maps behind
/// them (overflow), read together.
pub struct CopyUpMaps {
    pub(super) counts: PerCpuHashMap<MapData, CountKey, CountValue>,
    pub(super) hist: HashMap<MapData, HistKey, u64>,
    pub(super) stats: PerCpuArray<MapData, u64>,
    pub(super) processes: PerCpuHashMap<MapData, ProcessKey, ProcessValue>,
    pub(super) slots: super::slots::Slots,
    pub(super) retained: Retained,
}

/// One reading of the maps: a consistent-enough copy (each entry read once).
#[derive(Debug, Default, Clone)]
pub struct MapReading {
    pub counts: BTreeMap<CountKey, CountValue>,
    pub hist: BTreeMap<HistKey, u64>,
    /// The node-wide share of devices deleted from the maps.
    pub retained: Retained,
    pub stats: [u64; stat::COUNT as usize],
}

/// Every entry of a per-CPU hash map: in batches where the kernel can (5.6+),
/// else key by key.
fn entries<K: Pod, V: Pod>(map: &PerCpuHashMap<MapData, K, V>) -> Vec<(K, Vec<V>)> {
    match super::batch::per_cpu_entries(map, 1024) {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!(error = %e, "BPF_MAP_LOOKUP_BATCH failed; reading key by key");
            map.iter().flatten().map(|(k, v)| (k, v.iter().copied().collect())).collect()
        }
    }
}

impl CopyUpMaps {
    /// Every HIST entry: in batches where the kernel can, else key by key.
    fn hist_entries(&self) -> Vec<(HistKey, u64)> {
        match super::batch::entries(&self.hist, 4096) {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(error = %e, "BPF_MAP_LOOKUP_BATCH failed; reading key by key");
                self.hist.iter().flatten().collect()
            }
        }
    }

    /// Reads every map and slot once (see `probes::reading::read` for the
    /// scrape's entry point).
    pub fn read(&self) -> MapReading {
        let mut s = MapReading::default();
        for (k, per_cpu) in entries(&self.counts) {
            let e = s.counts.entry(k).or_default();
            for v in per_cpu.iter() {
                e.add(v);
            }
        }
        for (k, v) in self.slots.counts() {
            s.counts.entry(k).or_default().add(&v);
        }
        for (k, n) in self.hist_entries().into_iter().chain(self.slots.hist()) {
            *s.hist.entry(k).or_default() += n;
        }
        s.retained = self.retained.clone();
        for (i, slot) in s.stats.iter_mut().enumerate() {
            if let Ok(v) = self.stats.get(&(i as u32), 0) {
                *slot = v.iter().sum();
            }
        }
        s
    }

    /// Copy-ups and data bytes by comm, summed over CPUs. The comm is the
    /// kernel's NUL-padded thread name; invalid UTF-8 is replaced, not dropped.
    pub fn processes(&self) -> BTreeMap<String, ProcessValue> {
        let mut out: BTreeMap<String, ProcessValue> = BTreeMap::new();
        let shared = entries(&self.processes)
            .into_iter()
            .flat_map(|(k, per_cpu)| per_cpu.into_iter().map(move |v| (k, v)));
        for (k, v) in shared.chain(self.slots.processes()) {
            let comm = String::from_utf8_lossy(overlay_agent_common::until_nul(&k)).into_owned();
            let e = out.entry(comm).or_default();
            e.copy_ups += v.copy_ups;
            e.data_bytes += v.data_bytes;
        }
        out
    }

    /// Drops the counters of devices no longer mounted, so that vanished mounts
    /// leave /metrics: their slots are released, their map entries deleted.
    /// What they counted stays in the node-wide histograms (`Retained`). The maps are read in batches, as a scrape reads them (a few
    /// syscalls, not two per key under the maps mutex), then each stale key is
    /// deleted (one syscall each).
    ///
    /// Not atomic: what the programs add to a stale key between the read and the
    /// delete is lost (a lazily unmounted overlay still copying up), and a
    /// device number reused by a new mount before this runs (within one
    /// discovery interval) keeps the old mount's counts, or loses its own first
    /// ones when the old number is forgotten.
    pub fn forget(&mut self, mut keep: impl FnMut(u32) -> bool) {
        self.slots.release(&mut keep, &mut self.retained);
        for (k, per_cpu) in entries(&self.counts) {
            if keep(k.dev) {
                continue;
            }
            for v in &per_cpu {
                self.retained.add_counts(&k, v);
            }
            let _ = self.counts.remove(&k);
        }
        for (k, n) in self.hist_entries() {
            if k.dev == 0 || keep(k.dev) {
                continue;
            }
            self.retained.add_bucket(&k, n);
            let _ = self.hist.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retained_adds_up_deleted_entries() {
        let mut r = Retained::default();
        let k = CountKey { dev: 7, cause: 2, kind: 0, _pad: [0; 2] };
        r.add_counts(&k, &CountValue { copy_ups: 1, data_bytes: 100, latency_ns: 5, ..Default::default() });
        r.add_counts(&k, &CountValue { copy_ups: 2, data_bytes: 50, latency_ns: 7, ..Default::default() });
        r.add_bucket(&HistKey { dev: 7, cause: 2, hist: HIST_LATENCY, bucket: 3 }, 2);
        r.add_bucket(&HistKey { dev: 8, cause: 2, hist: HIST_LATENCY, bucket: 3 }, 1);
        assert_eq!(r.sums.get(&(HIST_BYTES, 2)), Some(&150));
        assert_eq!(r.sums.get(&(HIST_LATENCY, 2)), Some(&12));
        assert_eq!(r.buckets.get(&(HIST_LATENCY, 2, 3)), Some(&3), "devices add up");
    }
}
