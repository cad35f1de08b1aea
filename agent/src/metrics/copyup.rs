//! Collector for the eBPF copy-up maps and the probes' status. Counters are keyed
//! in the kernel by superblock device; here they are joined to mountpoints
//! (`unknown` for a device not in the mount table).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use overlay_agent_common::{
    cause, exported_buckets, kind, stat, HistKey, HIST_BUCKETS, HIST_BYTES, HIST_LATENCY_NS,
};
use prometheus::proto::MetricType;

use super::{Collector, Def, Family};
use crate::discovery::{Device, MountTable, UNKNOWN_MOUNTPOINT};
use crate::identity::SharedSnapshot;
use crate::probes::maps::Snapshot;
use crate::probes::{ProbeHandle, ProbeStatus};
use crate::sync::{LockExt, RwLockExt};

static COPY_UPS: Def = Def {
    name: "overlayfs_copy_up_total",
    help: "Copy-ups that started (counted once per file or directory copied, ancestors included), by cause and kind.",
    kind: MetricType::COUNTER,
    labels: &["mountpoint", "cause", "kind"],
};
static DATA_BYTES: Def = Def {
    name: "overlayfs_copy_up_data_bytes_total",
    help: "Bytes of file data the kernel copied up (the length passed to the data copy), by cause.",
    kind: MetricType::COUNTER,
    labels: &["mountpoint", "cause"],
};
static SECONDS: Def = Def {
    name: "overlayfs_copy_up_seconds_total",
    help: "Time spent in copy-ups (the writing syscall blocked until each copy-up ended), by cause.",
    kind: MetricType::COUNTER,
    labels: &["mountpoint", "cause"],
};
static ERRORS: Def = Def {
    name: "overlayfs_copy_up_errors_total",
    help: "Copy-ups that returned an error, by cause.",
    kind: MetricType::COUNTER,
    labels: &["mountpoint", "cause"],
};
static BYTES_HIST: Def = Def {
    name: "overlayfs_copy_up_bytes",
    help: "Size of the file data of each data copy-up, by cause.",
    kind: MetricType::HISTOGRAM,
    labels: &["cause"],
};
static LATENCY_HIST: Def = Def {
    name: "overlayfs_copy_up_duration_seconds",
    help: "Time from the start of a copy-up to its end, by cause.",
    kind: MetricType::HISTOGRAM,
    labels: &["cause"],
};
static MOUNT_BYTES_HIST: Def = Def {
    name: "overlayfs_mount_copy_up_bytes",
    help: "Size of the file data of each data copy-up, by mount and cause (ebpf.per_mount_histograms).",
    kind: MetricType::HISTOGRAM,
    labels: &["mountpoint", "cause"],
};
static MOUNT_LATENCY_HIST: Def = Def {
    name: "overlayfs_mount_copy_up_duration_seconds",
    help: "Time from the start of a copy-up to its end, by mount and cause (ebpf.per_mount_histograms).",
    kind: MetricType::HISTOGRAM,
    labels: &["mountpoint", "cause"],
};
static ENABLED: Def = Def {
    name: "overlayfs_ebpf_enabled",
    help: "1 when the copy-up probes are counting, 0 when eBPF is off (see overlayfs_ebpf_disabled_info).",
    kind: MetricType::GAUGE,
    labels: &[],
};
static DISABLED: Def = Def {
    name: "overlayfs_ebpf_disabled_info",
    help: "Why the copy-up probes are off; always 1. The log has the details.",
    kind: MetricType::GAUGE,
    labels: &["reason"],
};
static ATTACHED: Def = Def {
    name: "overlayfs_ebpf_probe_attached",
    help: "1 when the program is attached to the kernel function, 0 when it is missing or failed.",
    kind: MetricType::GAUGE,
    labels: &["probe", "function", "mechanism"],
};
static CALLS: Def = Def {
    name: "overlayfs_ebpf_copy_up_calls_total",
    help: "ovl_copy_up_one entries seen by the probes (including calls that found the copy done).",
    kind: MetricType::COUNTER,
    labels: &[],
};
static RETURNS: Def = Def {
    name: "overlayfs_ebpf_copy_up_returns_total",
    help: "ovl_copy_up_one returns seen; calls minus returns (minus copy-ups in flight) were missed by the kretprobe.",
    kind: MetricType::COUNTER,
    labels: &[],
};
static RETURN_MISSES: Def = Def {
    name: "overlayfs_ebpf_return_probe_misses_total",
    help: "Returns the kernel could not report to a return probe (its maxactive instances all in use), by program (tracefs kprobe_profile).",
    kind: MetricType::COUNTER,
    labels: &["probe"],
};
static MAP_FULL: Def = Def {
    name: "overlayfs_ebpf_map_full_total",
    help: "Updates dropped because an eBPF map was full.",
    kind: MetricType::COUNTER,
    labels: &[],
};
static READ_ERRORS: Def = Def {
    name: "overlayfs_ebpf_read_errors_total",
    help: "Kernel memory reads by the probes that failed.",
    kind: MetricType::COUNTER,
    labels: &[],
};

/// Histogram upper bounds: powers of two, every other one, as (log2, value).
fn bounds(hist: u8) -> impl Iterator<Item = (u32, f64)> {
    let (lo, hi, scale) = exported_buckets(hist);
    (lo..=hi).step_by(2).map(move |k| (k, (1u64 << k) as f64 * scale))
}

/// Folds raw log2 buckets into cumulative Prometheus buckets.
fn cumulative(raw: &[u64; HIST_BUCKETS as usize], hist: u8) -> Vec<(f64, u64)> {
    bounds(hist).map(|(k, le)| (le, raw.iter().take(k as usize + 1).sum::<u64>())).collect()
}

struct RawHist {
    buckets: [u64; HIST_BUCKETS as usize],
    sum: u64,
}

impl Default for RawHist {
    fn default() -> Self {
        RawHist { buckets: [0; HIST_BUCKETS as usize], sum: 0 }
    }
}

pub struct CopyUpCollector {
    mounts: SharedSnapshot,
    probes: Arc<ProbeHandle>,
}

impl CopyUpCollector {
    pub fn new(mounts: SharedSnapshot, probes: Arc<ProbeHandle>) -> Self {
        CopyUpCollector { mounts, probes }
    }
}

impl Collector for CopyUpCollector {
    fn collect(&self) -> Vec<Family> {
        let status = self.probes.status.read_now().clone();
        let mut out = status_families(&status);
        let (snapshot, misses) = {
            let maps = self.probes.maps.locked();
            match maps.as_ref() {
                Some(m) => (m.snapshot(), m.return_misses()),
                None => return out,
            }
        };
        let counts = snapshot.counts.iter().map(|(k, v)| (Device::from_kernel_dev(k.dev), v.copy_ups));
        self.probes.activity.publish(counts, std::time::Instant::now());
        let labels = MountLabels::new(&self.mounts.get().table, &snapshot);
        out.extend(counter_families(&snapshot, &labels));
        out.extend(histogram_families(&snapshot, &labels, status.per_mount_histograms));
        out.extend(self_stat_families(&snapshot, &misses));
        out
    }
}

/// Whether the probes run, why not, and what is attached where.
fn status_families(status: &ProbeStatus) -> Vec<Family> {
    let mut enabled = Family::new(&ENABLED);
    enabled.add(&[], if status.enabled { 1.0 } else { 0.0 });
    let mut out = vec![enabled];
    if let Some(d) = &status.disabled {
        let mut f = Family::new(&DISABLED);
        f.add(&[d.reason()], 1.0);
        out.push(f);
    }
    let mut attached = Family::new(&ATTACHED);
    for a in &status.attachments {
        let v = if a.attached { 1.0 } else { 0.0 };
        attached.add(&[a.program, a.function.unwrap_or(""), a.mechanism.as_str()], v);
    }
    out.push(attached);
    out
}

/// The `mountpoint` label of each device in a snapshot, looked up once per device
/// (not once per key: 1000 mounts x 11 causes).
struct MountLabels(HashMap<u32, String>);

impl MountLabels {
    fn new(table: &MountTable, snapshot: &Snapshot) -> Self {
        let mut labels = HashMap::new();
        for dev in snapshot.counts.keys().map(|k| k.dev).chain(snapshot.hist.keys().map(|k| k.dev)) {
            labels.entry(dev).or_insert_with(|| table.label_of(Device::from_kernel_dev(dev)));
        }
        MountLabels(labels)
    }

    fn get(&self, dev: u32) -> &str {
        self.0.get(&dev).map(String::as_str).unwrap_or(UNKNOWN_MOUNTPOINT)
    }
}

/// The per-mount counters. Several devices may map to "unknown", so they are
/// summed by label set.
fn counter_families(snapshot: &Snapshot, labels: &MountLabels) -> Vec<Family> {
    let mut copy_ups: BTreeMap<(&str, &str, &str), u64> = BTreeMap::new();
    let mut bytes: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut errors: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut seconds: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for (k, v) in &snapshot.counts {
        let (mp, c) = (labels.get(k.dev), cause::name(k.cause));
        *copy_ups.entry((mp, c, kind::name(k.kind))).or_default() += v.copy_ups;
        *bytes.entry((mp, c)).or_default() += v.data_bytes;
        *errors.entry((mp, c)).or_default() += v.errors;
        *seconds.entry((mp, c)).or_default() += v.latency_ns;
    }
    let mut f_copy_ups = Family::new(&COPY_UPS);
    for ((mp, c, k), n) in &copy_ups {
        f_copy_ups.add(&[mp, c, k], *n as f64);
    }
    let by_mount_cause = |def: &'static Def, values: &BTreeMap<(&str, &str), u64>, scale: f64| {
        let mut f = Family::new(def);
        for ((mp, c), n) in values {
            f.add(&[mp, c], *n as f64 * scale);
        }
        f
    };
    vec![
        f_copy_ups,
        by_mount_cause(&DATA_BYTES, &bytes, 1.0),
        // Time blocked in copy-ups per mount: the latency sums the kernel keeps per key.
        by_mount_cause(&SECONDS, &seconds, 1e-9),
        by_mount_cause(&ERRORS, &errors, 1.0),
    ]
}

/// Histograms by cause (all devices), and by mount when recorded: bucket counts
/// from HIST, sums from COUNTS (bytes of data copy-ups, latencies).
fn histogram_families(snapshot: &Snapshot, labels: &MountLabels, per_mount: bool) -> Vec<Family> {
    let mut by_cause: BTreeMap<(u8, u8), RawHist> = BTreeMap::new();
    let mut by_mount: BTreeMap<(&str, u8, u8), RawHist> = BTreeMap::new();
    for (HistKey { dev, cause, hist, bucket, .. }, n) in &snapshot.hist {
        let add = |h: &mut RawHist| {
            if let Some(b) = h.buckets.get_mut(*bucket as usize) {
                *b += n;
            }
        };
        add(by_cause.entry((*hist, *cause)).or_default());
        if per_mount {
            add(by_mount.entry((labels.get(*dev), *hist, *cause)).or_default());
        }
    }
    for (k, v) in &snapshot.counts {
        for (hist, sum) in [(HIST_BYTES, v.data_bytes), (HIST_LATENCY_NS, v.latency_ns)] {
            if let Some(h) = by_cause.get_mut(&(hist, k.cause)) {
                h.sum += sum;
            }
            if per_mount {
                if let Some(h) = by_mount.get_mut(&(labels.get(k.dev), hist, k.cause)) {
                    h.sum += sum;
                }
            }
        }
    }
    let mut out = Vec::with_capacity(4);
    let mut by_cause_fams = (Family::new(&BYTES_HIST), Family::new(&LATENCY_HIST));
    for ((hist, c), h) in &by_cause {
        add_histogram(&mut by_cause_fams, *hist, &[cause::name(*c)], h);
    }
    out.extend([by_cause_fams.0, by_cause_fams.1]);
    let mut by_mount_fams = (Family::new(&MOUNT_BYTES_HIST), Family::new(&MOUNT_LATENCY_HIST));
    for ((mp, hist, c), h) in &by_mount {
        add_histogram(&mut by_mount_fams, *hist, &[mp, cause::name(*c)], h);
    }
    out.extend([by_mount_fams.0, by_mount_fams.1]);
    out
}

/// Adds one raw log2 histogram to the bytes or the latency family of a pair.
fn add_histogram(fams: &mut (Family, Family), hist: u8, values: &[&str], h: &RawHist) {
    let fam = if hist == HIST_BYTES { &mut fams.0 } else { &mut fams.1 };
    let count = h.buckets.iter().sum();
    fam.add_histogram(values, &cumulative(&h.buckets, hist), count, h.sum as f64 * exported_buckets(hist).2);
}

/// The programs' own counters and the kernel's return-probe misses.
fn self_stat_families(snapshot: &Snapshot, misses: &[(String, u64)]) -> Vec<Family> {
    let mut f = Family::new(&RETURN_MISSES);
    for (program, n) in misses {
        f.add(&[program], *n as f64);
    }
    let mut out = vec![f];
    for (def, slot) in [
        (&CALLS, stat::ONE_ENTRIES),
        (&RETURNS, stat::ONE_RETURNS),
        (&MAP_FULL, stat::MAP_FULL),
        (&READ_ERRORS, stat::READ_ERRORS),
    ] {
        let mut f = Family::new(def);
        f.add(&[], snapshot.stats.get(slot as usize).copied().unwrap_or(0) as f64);
        out.push(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_buckets() {
        let mut raw = [0u64; HIST_BUCKETS as usize];
        raw[0] = 1; // 0..1 byte
        raw[12] = 2; // (2048, 4096]
        raw[13] = 3; // (4096, 8192]
        let c = cumulative(&raw, HIST_BYTES);
        assert_eq!(c[0], (1024.0, 1));
        assert_eq!(c[1], (4096.0, 3), "4096-byte files are <= 4096");
        assert_eq!(c[2], (16384.0, 6));
        assert_eq!(c.last().map(|x| x.0), Some((1u64 << 34) as f64));
        let lat = cumulative(&raw, HIST_LATENCY_NS);
        assert!((lat[0].0 - 1.024e-6).abs() < 1e-12);
    }
}
