//! The copy-up histograms: by cause (node-wide) and by mount and cause, native
//! buckets from the HIST map and sums from COUNTS, classic buckets as
//! `ebpf.classic_histograms` says.

use std::collections::HashMap;

use overlay_agent_common::{
    cause, exported_buckets, native_index, HistKey, HIST_BYTES, HIST_LATENCY, HIST_SCHEMA,
};
use prometheus::proto::MetricType;

use super::MountLabels;
use crate::config::ClassicHistograms;
use crate::discovery::{MountLabel, UNKNOWN_MOUNTPOINT};
use crate::metrics::{Def, Family, NativeHistogram};
use crate::probes::maps::MapReading;

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
    labels: &["mountpoint", "mntns", "cause"],
};
static MOUNT_LATENCY_HIST: Def = Def {
    name: "overlayfs_mount_copy_up_duration_seconds",
    help: "Time from the start of a copy-up to its end, by mount and cause (ebpf.per_mount_histograms; classic buckets with ebpf.classic_histograms: all).",
    kind: MetricType::HISTOGRAM,
    labels: &["mountpoint", "mntns", "cause"],
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

/// Small ids for the mount labels of a reading's devices, one lookup per run
/// of keys of the same device (the maps are read in device order).
#[derive(Default)]
struct LabelIds<'a> {
    last: Option<(u32, u32)>,
    by_dev: HashMap<u32, u32>,
    by_label: HashMap<&'a MountLabel, u32>,
    labels: Vec<&'a MountLabel>,
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
                let label = labels.get(dev);
                let next = self.labels.len() as u32;
                let id = *self.by_label.entry(label).or_insert(next);
                if id == next {
                    self.labels.push(label);
                }
                self.by_dev.insert(dev, id);
                id
            }
        };
        self.last = Some((dev, id));
        id
    }

    fn label(&self, id: u32) -> (&'a str, &'a str) {
        self.labels.get(id as usize).map_or((UNKNOWN_MOUNTPOINT, ""), |l| (&l.mountpoint, &l.mntns))
    }
}

/// Histograms by cause (node-wide: every device's entries plus what deleted
/// devices counted, so they never go down) and by mount when the kernel keys by
/// device: native buckets from HIST, sums from COUNTS (bytes of data copy-ups,
/// latencies). `classic` says which families carry classic buckets.
pub(super) fn histogram_families(
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
    let mut node = ByCause::new();
    let mut mount = PerMount::new(reading, per_mount);
    for (k, n) in &reading.hist {
        node.add(k.hist, k.cause, k.bucket, *n);
        if per_mount {
            mount.add(k, *n, labels);
        }
    }
    node.add_retained_and_sums(reading);
    let bounds = ClassicBounds::new();
    let node_classic = classic != ClassicHistograms::None;
    let mount_classic = classic == ClassicHistograms::All;
    let (node_bytes, node_latency) = node.families(|hist| bounds.of(hist, node_classic));
    let (mount_bytes, mount_latency) = mount.families(|hist| bounds.of(hist, mount_classic));
    vec![node_bytes, node_latency, mount_bytes, mount_latency]
}

/// The classic bounds of both histograms (`classic_bounds`), computed once per scrape.
struct ClassicBounds([Vec<f64>; 2]);

impl ClassicBounds {
    fn new() -> Self {
        ClassicBounds([classic_bounds(HIST_BYTES), classic_bounds(HIST_LATENCY)])
    }

    /// The bounds of histogram `hist` when its family carries classic buckets.
    fn of(&self, hist: u8, on: bool) -> Option<&[f64]> {
        on.then(|| self.0[usize::from(hist != HIST_BYTES)].as_slice())
    }
}

/// The node-wide histograms: a table by (hist, cause).
struct ByCause(Vec<Option<Acc>>);

impl ByCause {
    fn new() -> Self {
        ByCause((0..2 * cause::COUNT).map(|_| None).collect())
    }

    fn slot(hist: u8, c: u8) -> usize {
        usize::from(hist != HIST_BYTES) * cause::COUNT + usize::from(c).min(cause::COUNT - 1)
    }

    fn add(&mut self, hist: u8, cause: u8, bucket: u16, n: u64) {
        self.0[Self::slot(hist, cause)].get_or_insert_with(Acc::default).add(hist, bucket, n);
    }

    /// What deleted devices counted (`Retained`), then the sums: from COUNTS
    /// and from the deleted devices, for the histograms that have buckets.
    fn add_retained_and_sums(&mut self, reading: &MapReading) {
        for ((hist, cause, bucket), n) in &reading.retained.buckets {
            self.add(*hist, *cause, *bucket, *n);
        }
        for (k, v) in &reading.counts {
            for (hist, sum) in [(HIST_BYTES, v.data_bytes), (HIST_LATENCY, v.latency_ns)] {
                if let Some(h) = self.0[Self::slot(hist, k.cause)].as_mut() {
                    h.sum += sum;
                }
            }
        }
        for ((hist, cause), sum) in &reading.retained.sums {
            if let Some(h) = self.0[Self::slot(*hist, *cause)].as_mut() {
                h.sum += sum;
            }
        }
    }

    /// The bytes and latency families, by cause.
    fn families<'b>(self, bounds_of: impl Fn(u8) -> Option<&'b [f64]>) -> (Family, Family) {
        let mut node = (Family::new(&BYTES_HIST), Family::new(&LATENCY_HIST));
        for (i, h) in self.0.into_iter().enumerate() {
            let Some(h) = h else { continue };
            let (hist, c) =
                (if i < cause::COUNT { HIST_BYTES } else { HIST_LATENCY }, (i % cause::COUNT) as u8);
            let fam = if hist == HIST_BYTES { &mut node.0 } else { &mut node.1 };
            fam.add_kernel_histogram(&[cause::name(c)], &h.into_histogram(hist), bounds_of(hist));
        }
        node
    }
}

/// The per-mount histograms: runs of one flat bucket array (no allocation per
/// histogram), each run one device's (cause, hist).
struct PerMount<'a> {
    ids: LabelIds<'a>,
    runs: Vec<Run>,
    flat: Vec<(i32, u64)>,
    /// (dev, cause) -> (bytes, ns), ascending.
    sums: Vec<((u32, u8), [u64; 2])>,
    /// Where the walk along `sums` is.
    cursor: usize,
    /// The device of the last run: a run is one device's (cause, hist), so that
    /// each device's sum is looked up, even where two devices share a label.
    run_dev: Option<u32>,
}

impl<'a> PerMount<'a> {
    fn new(reading: &MapReading, per_mount: bool) -> Self {
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
        PerMount {
            ids: LabelIds::default(),
            runs: Vec::new(),
            flat: Vec::with_capacity(if per_mount { reading.hist.len() } else { 0 }),
            sums,
            cursor: 0,
            run_dev: None,
        }
    }

    /// Adds a HIST entry (in key order): a new run at each new device, cause or hist.
    fn add(&mut self, k: &HistKey, n: u64, labels: &'a MountLabels) {
        let HistKey { dev, cause, hist, bucket } = *k;
        let key = (self.ids.of(dev, labels), cause, hist);
        if self.run_dev != Some(dev) || self.runs.last().is_none_or(|r| r.key != key) {
            self.run_dev = Some(dev);
            while self.sums.get(self.cursor).is_some_and(|s| s.0 < (dev, cause)) {
                self.cursor += 1;
            }
            let sum = match self.sums.get(self.cursor) {
                Some((k, s)) if *k == (dev, cause) => s[usize::from(hist != HIST_BYTES)],
                _ => 0,
            };
            let at = self.flat.len();
            self.runs.push(Run { key, zero: 0, sum, start: at, end: at });
        }
        if let Some(run) = self.runs.last_mut() {
            // One device's buckets come ascending and once each.
            match native_index(hist, bucket) {
                Some(i) => self.flat.push((i, n)),
                None => run.zero += n,
            }
            run.end = self.flat.len();
        }
    }

    /// The bytes and latency families, by mount and cause; the runs of devices
    /// sharing a label merged.
    fn families<'b>(mut self, bounds_of: impl Fn(u8) -> Option<&'b [f64]>) -> (Family, Family) {
        self.runs.sort_by_key(|r| r.key);
        let mut mount = (Family::new(&MOUNT_BYTES_HIST), Family::new(&MOUNT_LATENCY_HIST));
        let mut h = NativeHistogram { schema: HIST_SCHEMA, ..Default::default() };
        for group in self.runs.chunk_by(|a, b| a.key == b.key) {
            let (id, c, hist) = group[0].key;
            h.buckets.clear();
            for r in group {
                h.buckets.extend_from_slice(self.flat.get(r.start..r.end).unwrap_or_default());
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
            let (mp, ns) = self.ids.label(id);
            fam.add_kernel_histogram(&[mp, ns, cause::name(c)], &h, bounds_of(hist));
        }
        mount
    }
}

#[cfg(test)]
mod tests;
