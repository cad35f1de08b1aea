//! Collector for who triggers copy-ups: the top K comms (thread names) by
//! copy-up data bytes, the rest summed in `comm="other"`, so the series count
//! stays at most K + 1 whatever runs on the node.
//!
//! The kernel counts per comm in an LRU map (PROCESSES); here the counts become
//! counters that never go back: each scrape adds the increase since the last one
//! to the comm's series when it is shown, or to `other` when it is not. A comm
//! enters the shown set when it outranks a shown one by total data bytes (then
//! copy-ups); a shown comm idle for `idle` leaves it. A newly shown comm starts at
//! its full total (its earlier copy-ups stay in `other` too; `rate()` and
//! `increase()` are unaffected, since a new series' first sample adds nothing).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use overlay_agent_common::ProcessValue;
use prometheus::proto::MetricType;

use super::{Collector, Def, Family};
use crate::probes::ProbeHandle;
use crate::sync::LockExt;

static COPY_UPS: Def = Def {
    name: "overlayfs_copy_up_process_total",
    help: "Copy-ups by the comm of the thread that triggered them: the top K comms by copy-up data bytes (ebpf.top_processes), the rest in comm=\"other\".",
    kind: MetricType::COUNTER,
    labels: &["comm"],
};
static DATA_BYTES: Def = Def {
    name: "overlayfs_copy_up_process_data_bytes_total",
    help: "Bytes of file data copied up, by the comm of the thread that triggered the copy-up (top K, the rest in comm=\"other\").",
    kind: MetricType::COUNTER,
    labels: &["comm"],
};

/// The label of everything outside the top K.
pub const OTHER: &str = "other";

#[derive(Debug, Clone, Copy)]
struct Shown {
    total: ProcessValue,
    active_at: Instant,
}

/// Turns the kernel's per-comm totals into bounded, monotonic counters.
#[derive(Debug)]
pub struct TopProcesses {
    k: usize,
    idle: Duration,
    /// Kernel totals at the previous update (to compute increases).
    last: HashMap<String, ProcessValue>,
    shown: BTreeMap<String, Shown>,
    other: ProcessValue,
}

fn add(a: &mut ProcessValue, b: ProcessValue) {
    a.copy_ups += b.copy_ups;
    a.data_bytes += b.data_bytes;
}

/// Ranking: more data bytes first, then more copy-ups, then the name.
fn rank(v: ProcessValue) -> (std::cmp::Reverse<u64>, std::cmp::Reverse<u64>) {
    (std::cmp::Reverse(v.data_bytes), std::cmp::Reverse(v.copy_ups))
}

impl TopProcesses {
    pub fn new(k: usize, idle: Duration) -> Self {
        TopProcesses { k, idle, last: HashMap::new(), shown: BTreeMap::new(), other: ProcessValue::default() }
    }

    /// Folds in the kernel's current per-comm totals.
    pub fn update(&mut self, now: Instant, current: BTreeMap<String, ProcessValue>) {
        // Increase since the last read; a value that went back (the kernel's LRU
        // dropped the entry and it started again) counts from zero.
        let mut increase: BTreeMap<&str, ProcessValue> = BTreeMap::new();
        for (comm, v) in &current {
            let prev = self.last.get(comm).copied().unwrap_or_default();
            let d = if v.copy_ups < prev.copy_ups || v.data_bytes < prev.data_bytes {
                *v
            } else {
                ProcessValue {
                    copy_ups: v.copy_ups - prev.copy_ups,
                    data_bytes: v.data_bytes - prev.data_bytes,
                }
            };
            if d.copy_ups > 0 || d.data_bytes > 0 {
                increase.insert(comm.as_str(), d);
            }
        }
        // Shown comms idle too long make room.
        let idle = self.idle;
        self.shown
            .retain(|comm, s| increase.contains_key(comm.as_str()) || now.duration_since(s.active_at) < idle);

        // The shown set: the best K of the shown comms and the comms active now.
        let mut candidates: Vec<(&str, ProcessValue)> = self
            .shown
            .iter()
            .map(|(c, s)| (c.as_str(), s.total))
            .chain(
                increase
                    .keys()
                    .filter(|c| **c != OTHER && !self.shown.contains_key(**c))
                    .filter_map(|c| Some((*c, *current.get(*c)?))),
            )
            .collect();
        candidates.sort_by(|a, b| rank(a.1).cmp(&rank(b.1)).then(a.0.cmp(b.0)));
        let keep: Vec<String> = candidates.iter().take(self.k).map(|(c, _)| c.to_string()).collect();

        let mut shown = BTreeMap::new();
        for comm in keep {
            let d = increase.get(comm.as_str()).copied().unwrap_or_default();
            let entry = match self.shown.get(&comm) {
                Some(s) => {
                    let mut s = *s;
                    add(&mut s.total, d);
                    if d.copy_ups > 0 {
                        s.active_at = now;
                    }
                    s
                }
                None => Shown { total: current.get(&comm).copied().unwrap_or_default(), active_at: now },
            };
            shown.insert(comm, entry);
        }
        for (comm, d) in &increase {
            if !shown.contains_key(*comm) {
                add(&mut self.other, *d);
            }
        }
        self.shown = shown;
        self.last = current.into_iter().collect();
    }

    /// (comm, copy-ups, data bytes): the shown comms, then `other`.
    pub fn series(&self) -> Vec<(&str, ProcessValue)> {
        let mut out: Vec<(&str, ProcessValue)> =
            self.shown.iter().map(|(c, s)| (c.as_str(), s.total)).collect();
        out.push((OTHER, self.other));
        out
    }
}

pub struct ProcessCollector {
    probes: Arc<ProbeHandle>,
    top: Mutex<TopProcesses>,
}

impl ProcessCollector {
    pub fn new(probes: Arc<ProbeHandle>, k: usize, idle: Duration) -> Self {
        ProcessCollector { probes, top: Mutex::new(TopProcesses::new(k, idle)) }
    }
}

impl Collector for ProcessCollector {
    fn collect(&self) -> Vec<Family> {
        let current = {
            let maps = self.probes.maps.locked();
            match maps.as_ref() {
                Some(m) => m.processes(),
                None => return Vec::new(),
            }
        };
        let mut top = self.top.locked();
        top.update(Instant::now(), current);
        let mut copy_ups = Family::new(&COPY_UPS);
        let mut bytes = Family::new(&DATA_BYTES);
        for (comm, v) in top.series() {
            let comm = if comm.is_empty() { "unknown" } else { comm };
            copy_ups.add(&[comm], v.copy_ups as f64);
            bytes.add(&[comm], v.data_bytes as f64);
        }
        vec![copy_ups, bytes]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(copy_ups: u64, data_bytes: u64) -> ProcessValue {
        ProcessValue { copy_ups, data_bytes }
    }

    fn map(entries: &[(&str, u64, u64)]) -> BTreeMap<String, ProcessValue> {
        entries.iter().map(|(c, n, b)| (c.to_string(), v(*n, *b))).collect()
    }

    fn series(t: &TopProcesses) -> Vec<(String, u64, u64)> {
        t.series().into_iter().map(|(c, v)| (c.to_owned(), v.copy_ups, v.data_bytes)).collect()
    }

    #[test]
    fn top_k_by_bytes_rest_in_other() {
        let t0 = Instant::now();
        let mut t = TopProcesses::new(2, Duration::from_secs(600));
        t.update(t0, map(&[("dpkg", 10, 5000), ("chown", 100, 0), ("tar", 3, 9000), ("sh", 1, 10)]));
        assert_eq!(
            series(&t),
            vec![("dpkg".into(), 10, 5000), ("tar".into(), 3, 9000), ("other".into(), 101, 10)]
        );
        // tar keeps copying; chown overtakes dpkg by bytes and takes its place.
        t.update(
            t0 + Duration::from_secs(15),
            map(&[("dpkg", 10, 5000), ("chown", 200, 8000), ("tar", 4, 9100), ("sh", 1, 10)]),
        );
        assert_eq!(
            series(&t),
            vec![("chown".into(), 200, 8000), ("tar".into(), 4, 9100), ("other".into(), 101, 10)]
        );
        // dpkg, out of the top, copies again: its increase goes to other.
        t.update(
            t0 + Duration::from_secs(30),
            map(&[("dpkg", 12, 5100), ("chown", 200, 8000), ("tar", 4, 9100), ("sh", 1, 10)]),
        );
        assert_eq!(series(&t).last(), Some(&("other".into(), 103, 110)));
    }

    #[test]
    fn counters_never_go_back_and_series_stay_bounded() {
        let t0 = Instant::now();
        let mut t = TopProcesses::new(3, Duration::from_secs(60));
        let mut prev: HashMap<String, (u64, u64)> = HashMap::new();
        // 500 short-lived comms, each copying up once, then gone from the kernel
        // map (LRU); a steady actor throughout whose kernel entry restarts once.
        for i in 0..500u64 {
            let n = if i < 250 { i + 1 } else { i - 249 };
            let mut m = BTreeMap::new();
            m.insert(format!("job-{i}"), v(1, i * 7 % 1000));
            m.insert("steady".to_owned(), v(n, 100 * n));
            t.update(t0 + Duration::from_secs(i * 10), m);
            let s = series(&t);
            assert!(s.len() <= 4, "K + 1 series at most, got {}", s.len());
            for (c, n, b) in s {
                if let Some((pn, pb)) = prev.get(&c) {
                    if c == OTHER || c == "steady" {
                        assert!(n >= *pn && b >= *pb, "{c} went back: {pn}->{n}, {pb}->{b}");
                    }
                }
                prev.insert(c, (n, b));
            }
        }
        // 500 copy-ups by steady, none lost to the reset of its kernel entry.
        assert_eq!(prev.get("steady"), Some(&(500, 50_000)));
    }

    #[test]
    fn idle_comms_leave_and_a_real_comm_named_other_is_folded() {
        let t0 = Instant::now();
        let mut t = TopProcesses::new(1, Duration::from_secs(60));
        t.update(t0, map(&[("big", 1, 1_000_000)]));
        t.update(t0 + Duration::from_secs(30), map(&[("big", 1, 1_000_000), ("small", 1, 10)]));
        assert_eq!(series(&t)[0].0, "big", "still within the idle time");
        t.update(
            t0 + Duration::from_secs(120),
            map(&[("big", 1, 1_000_000), ("small", 2, 20), ("other", 5, 50)]),
        );
        assert_eq!(series(&t), vec![("small".into(), 2, 20), ("other".into(), 6, 60)]);
        let mut zero = TopProcesses::new(0, Duration::from_secs(60));
        zero.update(t0, map(&[("a", 1, 1), ("b", 2, 2)]));
        assert_eq!(series(&zero), vec![("other".into(), 3, 3)]);
    }
}
