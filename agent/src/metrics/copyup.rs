//! Collector for the eBPF copy-up maps and the probes' status. Counters are keyed
//! in the kernel by superblock device; here they are joined to mountpoints
//! (`unknown` for a device not in the mount table).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use overlay_agent_common::{
    cause, exported_buckets, kind, native_index, stat, HistKey, HIST_BYTES, HIST_LATENCY, HIST_SCHEMA,
};
use prometheus::proto::MetricType;

use super::{Collector, Def, Family, NativeHistogram};
use crate::config::ClassicHistograms;
use crate::discovery::{Device, MountTable, UNKNOWN_MOUNTPOINT};
use crate::identity::SharedSnapshot;
use crate::probes::maps::MapReading;
use crate::probes::reading::{self, Reading};
use crate::probes::{ProbeHandle, ProbeStatus};
use crate::sync::RwLockExt;

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
    help: "Size of the file data of each data copy-up, by mount and cause (ebpf.per_mount_histograms; classic buckets with ebpf.classic_histograms: all).",
    kind: MetricType::HISTOGRAM,
    labels: &["mountpoint", "cause"],
};
static MOUNT_LATENCY_HIST: Def = Def {
    name: "overlayfs_mount_copy_up_duration_seconds",
    help: "Time from the start of a copy-up to its end, by mount and cause (ebpf.per_mount_histograms; classic buckets with ebpf.classic_histograms: all).",
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

/// Classic bucket upper bounds of histogram `hist` in its base unit: powers of
/// two, every other one, each a native bucket boundary.
fn classic_bounds(hist: u8) -> Vec<f64> {
    let (lo, hi) = exported_buckets(hist);
    (lo..=hi).step_by(2).map(|k| 2f64.powi(k)).collect()
}

/// The scale from the counters' unit to the base unit (bytes; ns to seconds).
fn sum_scale(hist: u8) -> f64 {
    if hist == HIST_BYTES {
        1.0
    } else {
        1e-9
    }
}

/// One histogram being summed from kernel entries: native buckets in the base
/// unit (ascending: HIST is read in key order, so an insert is almost always a
/// push), and its sum in the counters' unit (bytes, ns). A Vec, not a map: at
/// 1,000 mounts there are 22,000 of these per scrape.
#[derive(Default)]
struct Acc {
    zero: u64,
    buckets: Vec<(i32, u64)>,
    sum: u64,
}

impl Acc {
    fn add(&mut self, hist: u8, bucket: u16, n: u64) {
        match native_index(hist, bucket) {
            Some(i) => self.add_native(i, n),
            None => self.zero += n,
        }
    }

    fn add_native(&mut self, i: i32, n: u64) {
        match self.buckets.last_mut() {
            Some(last) if last.0 == i => last.1 += n,
            Some(last) if last.0 < i => self.buckets.push((i, n)),
            None => self.buckets.push((i, n)),
            Some(_) => match self.buckets.binary_search_by_key(&i, |b| b.0) {
                Ok(at) => self.buckets[at].1 += n,
                Err(at) => self.buckets.insert(at, (i, n)),
            },
        }
    }

    fn into_histogram(self, hist: u8) -> NativeHistogram {
        NativeHistogram {
            schema: HIST_SCHEMA,
            zero_count: self.zero,
            count: self.zero + self.buckets.iter().map(|b| b.1).sum::<u64>(),
            buckets: self.buckets,
            sum: self.sum as f64 * sum_scale(hist),
        }
    }
}

/// One per-mount histogram: its buckets are `flat[start..end]`.
struct Run {
    /// (mount label id, cause, hist)
    key: (u32, u8, u8),
    zero: u64,
    sum: u64,
    start: usize,
    end: usize,
}

pub struct CopyUpCollector {
    mounts: SharedSnapshot,
    probes: Arc<ProbeHandle>,
    classic: ClassicHistograms,
}

impl CopyUpCollector {
    pub fn new(mounts: SharedSnapshot, probes: Arc<ProbeHandle>, classic: ClassicHistograms) -> Self {
        CopyUpCollector { mounts, probes, classic }
    }
}

impl Collector for CopyUpCollector {
    fn collect(&self) -> Vec<Family> {
        let status = self.probes.status.read_now().clone();
        let mut out = status_families(&status);
        let Some(Reading { maps: reading, return_misses }) = reading::read(&self.probes) else {
            return out;
        };
        let labels = MountLabels::new(&self.mounts.get().table, &reading);
        out.extend(counter_families(&reading, &labels));
        out.extend(histogram_families(&reading, &labels, status.per_mount_histograms, self.classic));
        out.extend(self_stat_families(&reading, &return_misses));
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

/// The `mountpoint` label of each device in a reading, looked up once per device
/// (not once per key: 1000 mounts x 11 causes).
struct MountLabels(HashMap<u32, String>);

impl MountLabels {
    fn new(table: &MountTable, reading: &MapReading) -> Self {
        let mut labels = HashMap::new();
        for dev in reading.counts.keys().map(|k| k.dev).chain(reading.hist.keys().map(|k| k.dev)) {
            labels.entry(dev).or_insert_with(|| table.label_of(Device::from_kernel(dev)));
        }
        MountLabels(labels)
    }

    fn get(&self, dev: u32) -> &str {
        self.0.get(&dev).map(String::as_str).unwrap_or(UNKNOWN_MOUNTPOINT)
    }
}

/// Small ids for the mount labels of a reading's devices, one lookup per run
/// of keys of the same device (the maps are read in device order).
#[derive(Default)]
struct LabelIds<'a> {
    last: Option<(u32, u32)>,
    by_dev: HashMap<u32, u32>,
    by_name: HashMap<&'a str, u32>,
    names: Vec<&'a str>,
}

impl<'a> LabelIds<'a> {
    fn of(&mut self, dev: u32, labels: &'a MountLabels) -> u32 {
        if let Some((d, id)) = self.last {
            if d == dev {
                return id;
            }
        }
        let id = match self.by_dev.get(&dev) {
            Some(id) => *id,
            None => {
                let name = labels.get(dev);
                let next = self.names.len() as u32;
                let id = *self.by_name.entry(name).or_insert(next);
                if id == next {
                    self.names.push(name);
                }
                self.by_dev.insert(dev, id);
                id
            }
        };
        self.last = Some((dev, id));
        id
    }

    fn name(&self, id: u32) -> &'a str {
        self.names.get(id as usize).copied().unwrap_or(UNKNOWN_MOUNTPOINT)
    }
}

/// The per-mount counters. Several devices may map to "unknown", so they are
/// summed by label set.
fn counter_families(reading: &MapReading, labels: &MountLabels) -> Vec<Family> {
    let mut copy_ups: BTreeMap<(&str, &str, &str), u64> = BTreeMap::new();
    let mut bytes: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut errors: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut seconds: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for (k, v) in &reading.counts {
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

/// Histograms by cause (node-wide: every device's entries plus what deleted
/// devices counted, so they never go down) and by mount when the kernel keys by
/// device: native buckets from HIST, sums from COUNTS (bytes of data copy-ups,
/// latencies). `classic` says which families carry classic buckets.
fn histogram_families(
    reading: &MapReading,
    labels: &MountLabels,
    per_mount: bool,
    classic: ClassicHistograms,
) -> Vec<Family> {
    // At 1,000 mounts x 11 causes HIST has 22,000 keys and more: no hashing of
    // label strings per key. Node-wide: a table by (hist, cause). Per mount: HIST
    // and COUNTS come sorted by (dev, cause, ...), so each histogram is one run
    // of keys, and its sum is found by walking the per-(dev, cause) sums along.
    // Runs are keyed by a mount label id; devices sharing a label (such as
    // "unknown") are merged after sorting.
    let slot = |hist: u8, c: u8| {
        usize::from(hist != HIST_BYTES) * cause::COUNT + usize::from(c).min(cause::COUNT - 1)
    };
    let mut by_cause: Vec<Option<Acc>> = (0..2 * cause::COUNT).map(|_| None).collect();
    let mut ids = LabelIds::default();
    // Per-mount histograms: runs of one flat bucket array (no allocation per histogram).
    let mut runs: Vec<Run> = Vec::new();
    let mut flat: Vec<(i32, u64)> = Vec::with_capacity(if per_mount { reading.hist.len() } else { 0 });
    // (dev, cause) -> (bytes, ns), ascending.
    let mut sums: Vec<((u32, u8), [u64; 2])> = Vec::new();
    if per_mount {
        for (k, v) in &reading.counts {
            match sums.last_mut() {
                Some((key, s)) if *key == (k.dev, k.cause) => {
                    s[0] += v.data_bytes;
                    s[1] += v.latency_ns;
                }
                _ => sums.push(((k.dev, k.cause), [v.data_bytes, v.latency_ns])),
            }
        }
    }
    let mut cursor = 0;
    // The device of the last run: a run is one device's (cause, hist), so that
    // each device's sum is looked up, even where two devices share a label.
    let mut run_dev = None;
    for (HistKey { dev, cause, hist, bucket }, n) in &reading.hist {
        by_cause[slot(*hist, *cause)].get_or_insert_with(Acc::default).add(*hist, *bucket, *n);
        if !per_mount {
            continue;
        }
        let key = (ids.of(*dev, labels), *cause, *hist);
        if run_dev != Some(*dev) || runs.last().is_none_or(|r| r.key != key) {
            run_dev = Some(*dev);
            while sums.get(cursor).is_some_and(|s| s.0 < (*dev, *cause)) {
                cursor += 1;
            }
            let sum = match sums.get(cursor) {
                Some((k, s)) if *k == (*dev, *cause) => s[usize::from(*hist != HIST_BYTES)],
                _ => 0,
            };
            runs.push(Run { key, zero: 0, sum, start: flat.len(), end: flat.len() });
        }
        if let Some(run) = runs.last_mut() {
            // One device's buckets come ascending and once each.
            match native_index(*hist, *bucket) {
                Some(i) => flat.push((i, *n)),
                None => run.zero += n,
            }
            run.end = flat.len();
        }
    }
    runs.sort_by_key(|r| r.key);
    for ((hist, cause, bucket), n) in &reading.retained.buckets {
        by_cause[slot(*hist, *cause)].get_or_insert_with(Acc::default).add(*hist, *bucket, *n);
    }
    for (k, v) in &reading.counts {
        for (hist, sum) in [(HIST_BYTES, v.data_bytes), (HIST_LATENCY, v.latency_ns)] {
            if let Some(h) = by_cause[slot(hist, k.cause)].as_mut() {
                h.sum += sum;
            }
        }
    }
    for ((hist, cause), sum) in &reading.retained.sums {
        if let Some(h) = by_cause[slot(*hist, *cause)].as_mut() {
            h.sum += sum;
        }
    }
    let bounds = [classic_bounds(HIST_BYTES), classic_bounds(HIST_LATENCY)];
    let bounds_of = |hist: u8, on: bool| on.then(|| bounds[usize::from(hist != HIST_BYTES)].as_slice());
    let node_classic = classic != ClassicHistograms::None;
    let mount_classic = classic == ClassicHistograms::All;
    let mut node = (Family::new(&BYTES_HIST), Family::new(&LATENCY_HIST));
    for (i, h) in by_cause.into_iter().enumerate() {
        let Some(h) = h else { continue };
        let (hist, c) = (if i < cause::COUNT { HIST_BYTES } else { HIST_LATENCY }, (i % cause::COUNT) as u8);
        let fam = if hist == HIST_BYTES { &mut node.0 } else { &mut node.1 };
        fam.add_kernel_histogram(&[cause::name(c)], &h.into_histogram(hist), bounds_of(hist, node_classic));
    }
    let mut mount = (Family::new(&MOUNT_BYTES_HIST), Family::new(&MOUNT_LATENCY_HIST));
    let mut h = NativeHistogram { schema: HIST_SCHEMA, ..Default::default() };
    for group in runs.chunk_by(|a, b| a.key == b.key) {
        let (id, c, hist) = group[0].key;
        h.buckets.clear();
        for r in group {
            h.buckets.extend_from_slice(flat.get(r.start..r.end).unwrap_or_default());
        }
        if group.len() > 1 {
            // Devices sharing a label: merge their buckets.
            h.buckets.sort_unstable_by_key(|b| b.0);
            h.buckets.dedup_by(|later, first| {
                let same = later.0 == first.0;
                if same {
                    first.1 += later.1;
                }
                same
            });
        }
        h.zero_count = group.iter().map(|r| r.zero).sum();
        h.count = h.zero_count + h.buckets.iter().map(|b| b.1).sum::<u64>();
        h.sum = group.iter().map(|r| r.sum).sum::<u64>() as f64 * sum_scale(hist);
        let fam = if hist == HIST_BYTES { &mut mount.0 } else { &mut mount.1 };
        fam.add_kernel_histogram(&[ids.name(id), cause::name(c)], &h, bounds_of(hist, mount_classic));
    }
    vec![node.0, node.1, mount.0, mount.1]
}

/// The programs' own counters and the kernel's return-probe misses.
fn self_stat_families(reading: &MapReading, misses: &[(String, u64)]) -> Vec<Family> {
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
        f.add(&[], reading.stats.get(slot as usize).copied().unwrap_or(0) as f64);
        out.push(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::maps::Retained;
    use overlay_agent_common::{bucket, ns_to_latency_units, CountKey, CountValue};

    fn render(families: Vec<Family>) -> String {
        let mut out = String::new();
        for f in families {
            f.write_text(&mut out);
        }
        out
    }

    /// Two copy-ups on each of two devices: 4 KiB in 1 ms and 1 MiB in 1.5 s.
    fn reading() -> MapReading {
        let mut s = MapReading::default();
        for dev in [1, 2] {
            let k = CountKey { dev, cause: cause::CHOWN, kind: kind::DATA, _pad: [0; 2] };
            s.counts.insert(
                k,
                CountValue {
                    copy_ups: 2,
                    data_bytes: 4096 + (1 << 20),
                    errors: 0,
                    latency_ns: 1_501_000_000,
                },
            );
            for (hist, v) in [
                (HIST_BYTES, 4096),
                (HIST_BYTES, 1 << 20),
                (HIST_LATENCY, ns_to_latency_units(1_000_000)),
                (HIST_LATENCY, ns_to_latency_units(1_500_000_000)),
            ] {
                *s.hist.entry(HistKey { dev, cause: cause::CHOWN, hist, bucket: bucket(v) }).or_default() +=
                    1;
            }
        }
        s
    }

    fn labels(s: &MapReading) -> MountLabels {
        let mut l = MountLabels::new(&MountTable::default(), s);
        l.0.insert(1, "/m/1".into());
        l.0.insert(2, "/m/2".into());
        l
    }

    #[test]
    fn classic_buckets_are_native_boundaries() {
        let lat = classic_bounds(HIST_LATENCY);
        assert_eq!((lat[0], lat.last().copied()), (2f64.powi(-20), Some(64.0)));
        assert_eq!(classic_bounds(HIST_BYTES).first(), Some(&1024.0));
        for hist in [HIST_BYTES, HIST_LATENCY] {
            for b in classic_bounds(hist) {
                assert!(NativeHistogram::boundary_index(HIST_SCHEMA, b).is_some(), "{b}");
            }
        }
    }

    #[test]
    fn node_wide_histograms_sum_the_mounts_and_classic_follows_the_config() {
        let s = reading();
        let l = labels(&s);
        let text = render(histogram_families(&s, &l, true, ClassicHistograms::Node));
        // 1 ms = 2^-9.97 s: in the bucket ending at 2^-8 (~3.9 ms), above 2^-10.
        assert!(
            text.contains(
                "overlayfs_copy_up_duration_seconds_bucket{cause=\"chown\",le=\"0.0009765625\"} 0\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("overlayfs_copy_up_duration_seconds_bucket{cause=\"chown\",le=\"0.00390625\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("overlayfs_copy_up_duration_seconds_bucket{cause=\"chown\",le=\"1\"} 2\n")
                && text.contains("overlayfs_copy_up_duration_seconds_bucket{cause=\"chown\",le=\"4\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("overlayfs_copy_up_duration_seconds_count{cause=\"chown\"} 4\n"), "{text}");
        assert!(
            text.contains(&format!(
                "overlayfs_copy_up_duration_seconds_sum{{cause=\"chown\"}} {}\n",
                3_002_000_000f64 * 1e-9
            )),
            "{text}"
        );
        assert!(
            text.contains("overlayfs_copy_up_bytes_bucket{cause=\"chown\",le=\"4096\"} 2\n"),
            "4 KiB is <= 4096: {text}"
        );
        assert!(text.contains("overlayfs_copy_up_bytes_sum{cause=\"chown\"} 2105344\n"), "{text}");
        assert!(!text.contains("overlayfs_mount_copy_up"), "no classic form per mount with node: {text}");
        let all = render(histogram_families(&s, &l, true, ClassicHistograms::All));
        assert!(
            all.contains(
                "overlayfs_mount_copy_up_duration_seconds_count{mountpoint=\"/m/2\",cause=\"chown\"} 2\n"
            ),
            "{all}"
        );
        let none = render(histogram_families(&s, &l, true, ClassicHistograms::None));
        assert!(!none.contains("_bucket"), "{none}");
    }

    /// In protobuf every histogram is native (schema 3, the kernel's buckets);
    /// with the default classic_histograms: node only the node-wide ones carry
    /// classic buckets.
    #[test]
    fn protobuf_carries_native_histograms_per_mount() {
        let s = reading();
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        for f in histogram_families(&s, &labels(&s), true, ClassicHistograms::Node) {
            f.write_proto(&mut out, &mut scratch);
        }
        let mut buf = out.as_slice();
        let mut fams: Vec<crate::metrics::encode::proto::MetricFamily> = Vec::new();
        while !buf.is_empty() {
            fams.push(prost::Message::decode_length_delimited(&mut buf).expect("a delimited MetricFamily"));
        }
        let hist = |name: &str| {
            let f = fams.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("{name} missing"));
            f.metric.iter().filter_map(|m| m.histogram.clone()).collect::<Vec<_>>()
        };
        let mount = hist("overlayfs_mount_copy_up_duration_seconds");
        assert_eq!(mount.len(), 2, "one per mount");
        for h in &mount {
            assert_eq!((h.schema, h.sample_count, h.bucket.len()), (3, 2, 0), "{h:?}");
            // 1 ms and 1.5 s: native indices ceil(8 log2 0.001) = -79 and ceil(8 log2 1.5) = 5.
            let first = h.positive_span.first().map(|s| s.offset);
            assert_eq!(first, Some(bucket(ns_to_latency_units(1_000_000)) as i32 - 240));
            assert_eq!(h.positive_delta.iter().sum::<i64>() + h.positive_delta[0], 2, "counts 1, 1: {h:?}");
        }
        let node = hist("overlayfs_copy_up_duration_seconds");
        assert_eq!((node[0].sample_count, node[0].bucket.is_empty()), (4, false), "classic buckets too");
    }

    /// Devices with the same label (such as "unknown") add up in one series.
    #[test]
    fn devices_sharing_a_label_are_merged() {
        let s = reading();
        let mut l = labels(&s);
        l.0.insert(2, "/m/1".into());
        let text = render(histogram_families(&s, &l, true, ClassicHistograms::All));
        let want = [
            "overlayfs_mount_copy_up_duration_seconds_count{mountpoint=\"/m/1\",cause=\"chown\"} 4\n",
            "overlayfs_mount_copy_up_duration_seconds_bucket{mountpoint=\"/m/1\",cause=\"chown\",le=\"0.00390625\"} 2\n",
            "overlayfs_mount_copy_up_bytes_sum{mountpoint=\"/m/1\",cause=\"chown\"} 2105344\n",
        ];
        for w in want {
            assert!(text.contains(w), "{w} in {text}");
        }
        assert_eq!(text.matches("overlayfs_mount_copy_up_bytes_count{").count(), 1, "{text}");
        // The first device has a single (cause, hist): the second device's keys
        // would continue its run, and the second device's sum must still count.
        for (unknown, hist) in [(false, HIST_BYTES), (false, HIST_LATENCY), (true, HIST_LATENCY)] {
            let mut s = reading();
            s.hist.retain(|k, _| k.hist == hist);
            let mut l = labels(&s);
            if unknown {
                l.0.clear();
            } else {
                l.0.insert(2, "/m/1".into());
            }
            let text = render(histogram_families(&s, &l, true, ClassicHistograms::All));
            let mp = if unknown { "unknown" } else { "/m/1" };
            let want = if hist == HIST_BYTES {
                format!("overlayfs_mount_copy_up_bytes_sum{{mountpoint=\"{mp}\",cause=\"chown\"}} 2105344\n")
            } else {
                format!(
                    "overlayfs_mount_copy_up_duration_seconds_sum{{mountpoint=\"{mp}\",cause=\"chown\"}} {}\n",
                    3_002_000_000f64 * 1e-9
                )
            };
            assert!(text.contains(&want), "both devices' sums: {want} in {text}");
        }
    }

    /// Deleting a vanished device's entries moves them into Retained: the
    /// node-wide histogram is the same before and after.
    #[test]
    fn node_wide_histograms_keep_what_forgotten_mounts_counted() {
        let before = reading();
        let mut after = before.clone();
        let mut retained = Retained::default();
        after.counts.retain(|k, v| {
            if k.dev == 2 {
                *retained.sums.entry((HIST_BYTES, k.cause)).or_default() += v.data_bytes;
                *retained.sums.entry((HIST_LATENCY, k.cause)).or_default() += v.latency_ns;
            }
            k.dev != 2
        });
        after.hist.retain(|k, n| {
            if k.dev == 2 {
                *retained.buckets.entry((k.hist, k.cause, k.bucket)).or_default() += *n;
            }
            k.dev != 2
        });
        after.retained = retained;
        let node = |s: &MapReading| {
            let text = render(histogram_families(s, &labels(s), true, ClassicHistograms::Node));
            text.lines()
                .filter(|l| l.starts_with("overlayfs_copy_up_"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(node(&before), node(&after));
        let text = render(histogram_families(&after, &labels(&after), true, ClassicHistograms::All));
        assert!(!text.contains("/m/2"), "the forgotten mount has no series: {text}");
    }
}
