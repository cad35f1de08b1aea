//! Reading the programs' maps at scrape time: per-CPU values summed, nothing reset.

use std::collections::BTreeMap;

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use aya::Pod;
use overlay_agent_common::{stat, CountKey, CountValue, HistKey, ProcessKey, ProcessValue};

pub struct CopyUpMaps {
    pub(super) counts: PerCpuHashMap<MapData, CountKey, CountValue>,
    pub(super) hist: PerCpuHashMap<MapData, HistKey, u64>,
    pub(super) stats: PerCpuArray<MapData, u64>,
    pub(super) processes: PerCpuHashMap<MapData, ProcessKey, ProcessValue>,
    /// Return probes defined in tracefs: (program, event, its kprobe_profile).
    pub(super) returns: Vec<(String, String, std::path::PathBuf)>,
}

/// A consistent-enough copy of the maps (each entry read once).
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub counts: BTreeMap<CountKey, CountValue>,
    pub hist: BTreeMap<HistKey, u64>,
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
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        for (k, per_cpu) in entries(&self.counts) {
            let e = s.counts.entry(k).or_default();
            for v in per_cpu.iter() {
                e.copy_ups += v.copy_ups;
                e.data_bytes += v.data_bytes;
                e.errors += v.errors;
                e.latency_ns += v.latency_ns;
            }
        }
        for (k, per_cpu) in entries(&self.hist) {
            *s.hist.entry(k).or_default() += per_cpu.iter().sum::<u64>();
        }
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
        for (k, per_cpu) in entries(&self.processes) {
            let comm = String::from_utf8_lossy(overlay_agent_common::until_nul(&k)).into_owned();
            let e = out.entry(comm).or_default();
            for v in per_cpu.iter() {
                e.copy_ups += v.copy_ups;
                e.data_bytes += v.data_bytes;
            }
        }
        out
    }

    /// The kernel's missed returns of each tracefs return probe, by program
    /// (kprobe_profile).
    pub fn return_misses(&self) -> Vec<(String, u64)> {
        self.returns
            .iter()
            .filter_map(|(program, event, profile)| {
                Some((program.clone(), super::retprobe::profile(profile, event)?.1))
            })
            .collect()
    }

    /// Drops the counters of devices no longer mounted, so that a reused device
    /// number starts from zero and vanished mounts leave /metrics.
    pub fn forget(&mut self, mut keep: impl FnMut(u32) -> bool) {
        let stale: Vec<CountKey> = self.counts.keys().flatten().filter(|k| !keep(k.dev)).collect();
        for k in stale {
            let _ = self.counts.remove(&k);
        }
        let stale: Vec<HistKey> = self.hist.keys().flatten().filter(|k| k.dev != 0 && !keep(k.dev)).collect();
        for k in stale {
            let _ = self.hist.remove(&k);
        }
    }
}
