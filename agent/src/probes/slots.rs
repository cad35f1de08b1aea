//! The programs' per-CPU slots (overlay_agent_common::COUNT_SLOTS has the
//! scheme): read at each scrape beside the shared maps, and released for the
//! devices that vanished. A released slot is skipped until the programs start
//! it afresh (its generation moves on).

use std::collections::HashMap;

use aya::maps::{Array, MapData, PerCpuArray};
use aya::Pod;
use overlay_agent_common::{
    CountKey, CountSlot, CountValue, HistKey, HistSlot, ProcessKey, ProcessSlot, ProcessValue, COUNT_SLOTS,
    HIST_SLOTS,
};

use super::maps::Retained;

/// Which slot array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Table {
    Counts,
    Hist,
}

pub struct Slots {
    pub(super) counts: PerCpuArray<MapData, CountSlot>,
    pub(super) count_dead: Array<MapData, u32>,
    pub(super) hist: PerCpuArray<MapData, HistSlot>,
    pub(super) hist_dead: Array<MapData, u32>,
    pub(super) processes: PerCpuArray<MapData, ProcessSlot>,
    /// Slots released by the agent, by (table, cpu, slot): their generation then.
    pub(super) released: HashMap<(Table, u32, u32), u32>,
}

/// Every slot of a per-CPU array as (slot, its value on each CPU): in one batch
/// where the kernel can, else slot by slot.
fn all<V: Pod>(map: &PerCpuArray<MapData, V>, slots: u32) -> Vec<(u32, Vec<V>)> {
    match super::batch::per_cpu_entries(map, slots as usize) {
        Ok(e) => e,
        Err(e) => {
            // Per-CPU arrays have no batch lookup before 5.13 (ENOTSUPP on 5.10): said once.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::debug!(error = %e, "BPF_MAP_LOOKUP_BATCH failed on an array; reading slot by slot")
            });
            (0..slots).filter_map(|i| Some((i, map.get(&i, 0).ok()?.iter().copied().collect()))).collect()
        }
    }
}

impl Slots {
    /// Whether slot (cpu, i) of `table` at generation `gen` counts: in use and
    /// not released (a slot started afresh since has another generation).
    fn live(&self, table: Table, cpu: usize, i: u32, gen: u32) -> bool {
        gen != 0 && self.released.get(&(table, cpu as u32, i)) != Some(&gen)
    }

    /// The counters held in slots, one entry per (CPU, slot).
    pub fn counts(&self) -> Vec<(CountKey, CountValue)> {
        let mut out = Vec::new();
        for (i, per_cpu) in all(&self.counts, COUNT_SLOTS) {
            for (cpu, s) in per_cpu.iter().enumerate() {
                if self.live(Table::Counts, cpu, i, s.gen) {
                    out.push((s.key, s.value));
                }
            }
        }
        out
    }

    /// The histogram buckets held in slots.
    pub fn hist(&self) -> Vec<(HistKey, u64)> {
        let mut out = Vec::new();
        for (i, per_cpu) in all(&self.hist, HIST_SLOTS) {
            for (cpu, s) in per_cpu.iter().enumerate() {
                if self.live(Table::Hist, cpu, i, s.gen) {
                    out.push((s.key, s.count));
                }
            }
        }
        out
    }

    /// The per-comm counts held in slots.
    pub fn processes(&self) -> Vec<(ProcessKey, ProcessValue)> {
        let n = overlay_agent_common::PROCESS_SLOTS;
        all(&self.processes, n)
            .into_iter()
            .flat_map(|(_, per_cpu)| per_cpu.into_iter().filter(|s| s.value.copy_ups > 0))
            .map(|s| (s.comm, s.value))
            .collect()
    }

    /// Releases the slots of the devices `keep` refuses, adding what they hold
    /// to `retained` (the node-wide histograms' share of gone devices).
    pub fn release(&mut self, keep: &mut impl FnMut(u32) -> bool, retained: &mut Retained) {
        let mut gone = Vec::new();
        let mut current: HashMap<(Table, u32, u32), u32> = HashMap::new();
        for (i, per_cpu) in all(&self.counts, COUNT_SLOTS) {
            for (cpu, s) in per_cpu.iter().enumerate() {
                current.insert((Table::Counts, cpu as u32, i), s.gen);
                if self.live(Table::Counts, cpu, i, s.gen) && !keep(s.key.dev) {
                    retained.add_counts(&s.key, &s.value);
                    gone.push((Table::Counts, cpu as u32, i, s.gen));
                }
            }
        }
        for (i, per_cpu) in all(&self.hist, HIST_SLOTS) {
            for (cpu, s) in per_cpu.iter().enumerate() {
                current.insert((Table::Hist, cpu as u32, i), s.gen);
                if s.key.dev != 0 && self.live(Table::Hist, cpu, i, s.gen) && !keep(s.key.dev) {
                    retained.add_bucket(&s.key, s.count);
                    gone.push((Table::Hist, cpu as u32, i, s.gen));
                }
            }
        }
        // Releases of slots started afresh since are done with.
        self.released.retain(|k, gen| current.get(k) == Some(gen));
        for (table, cpu, i, gen) in gone {
            let (dead, slots) = match table {
                Table::Counts => (&mut self.count_dead, COUNT_SLOTS),
                Table::Hist => (&mut self.hist_dead, HIST_SLOTS),
            };
            match dead.set(cpu * slots + i, gen, 0) {
                Ok(()) => {
                    self.released.insert((table, cpu, i), gen);
                }
                Err(e) => tracing::warn!(error = %e, "cannot release a copy-up slot"),
            }
        }
    }
}
