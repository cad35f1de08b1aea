//! Exposition: one source per concern, all reading snapshots that discovery and
//! the scan pool publish; nothing here does I/O on the request path.
//!
//! The sources record their samples in `Family` (label values in one buffer,
//! values beside them), without building the prometheus crate's protobuf
//! structures: at 1000 mounts (21,000 series) that took the render from 12 ms to
//! about 2 ms (examples/render-bench.rs, docs/performance.md). A family is then
//! written in the format the scrape negotiated (`Format`) by its encoder
//! (`encode`): the text format (`encode::text`), what the crate's `gather()` and
//! `TextEncoder` printed, or delimited `io.prometheus.client` protobuf
//! (`encode::proto`), where a kernel [`NativeHistogram`] (`native`) is a native
//! histogram. The crate still provides the process metrics and the type names.
//!
//! This file holds the model: metric definitions (`Def`), recorded samples
//! (`Family`), their sources (`Collector`) and the registry that renders them
//! (`Exposition`); `format.rs` the formats (`Format`).

pub mod build;
pub mod copyup;
pub mod diagnosis;
pub mod discovery;
pub mod ebpf;
pub mod encode;
mod format;
pub mod mount_labels;
pub mod mounts;
pub mod native;
pub mod process;
pub mod server;
pub mod upper;

#[cfg(test)]
mod fixtures;

use std::sync::RwLock;

use std::sync::Arc;

use prometheus::proto::MetricType;

pub use format::Format;
pub use mount_labels::MountLabels;
pub use native::NativeHistogram;

use crate::sync::RwLockExt;

/// Labels left out of a sample when their value is empty, in both formats:
/// `mntns`, the mount namespace of a per-mount series, is "" in the reference
/// (host) namespace, so host mounts keep the label sets they always had, and so
/// are the `mntns_*` labels of `overlayfs_mount_info` (who holds it; spelled once,
/// in metrics/mounts.rs). Prometheus treats an empty label as an absent one, so
/// this changes no series' identity.
pub fn omitted_when_empty(name: &str) -> bool {
    name == "mntns" || name.starts_with("mntns_")
}

/// Whether a label is written: not one [`omitted_when_empty`] with an empty value.
pub fn written(name: &str, value: &str) -> bool {
    !value.is_empty() || !omitted_when_empty(name)
}

/// A metric definition: the one place a name, its help and its labels are spelled.
pub struct Def {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricType,
    pub labels: &'static [&'static str],
}

/// A histogram sample as its source gave it.
enum HistSample {
    /// Cumulative counts per upper bound (no +Inf), count, sum.
    Classic(Vec<(f64, u64)>, u64, f64),
    /// A kernel histogram and the classic bounds of its text form (None: native only).
    Kernel(NativeHistogram, Option<Vec<f64>>),
}

/// One sample: its label values (in `Family::keys`) and its value.
struct Row {
    /// For a per-mount family ([`Family::per_mount`]), the mount's index in its
    /// [`MountLabels`]: its `mountpoint` and `mntns`, the first two labels, which
    /// `keys` leaves out. [`NO_MOUNT`] otherwise.
    mount: u32,
    /// `keys[start..end]`: the label values joined by NUL, the sort key.
    start: u32,
    end: u32,
    /// Index in `Family::cuts` of the end of each label value.
    cuts: u32,
    /// A plain value, or an index in `Family::hists`.
    value: Value,
}

enum Value {
    Plain(f64),
    Hist(u32),
}

const NO_MOUNT: u32 = u32::MAX;

/// The first labels of every per-mount family.
const MOUNT_LABELS: [&str; 2] = ["mountpoint", "mntns"];

/// One metric family, recorded at collect time in a form both formats write
/// from (label values in one buffer, values beside them), and sorted at render
/// time. Recording costs what formatting the text lines did before, and the
/// text is then written straight into the output.
pub struct Family {
    def: &'static Def,
    keys: String,
    /// End offset in `keys` of each label value of each row.
    cuts: Vec<u32>,
    rows: Vec<Row>,
    hists: Vec<HistSample>,
    /// The mounts of a per-mount family.
    mounts: Option<Arc<MountLabels>>,
}

/// Offsets into a family's buffers. A family holds far less than 4 GiB: a
/// larger one is a bug, and its offsets saturate rather than wrap.
fn offset(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Family {
    pub fn new(def: &'static Def) -> Self {
        Family {
            def,
            keys: String::new(),
            cuts: Vec::new(),
            rows: Vec::new(),
            hists: Vec::new(),
            mounts: None,
        }
    }

    /// A family whose first labels are `mountpoint` and `mntns`, given for each
    /// sample by the mount's index in `mounts` ([`Family::add_for_mount`]):
    /// written from the labels rendered once per mount table. Room for one
    /// sample per mount is taken at once ([`Family::per_mount_rows`]).
    pub fn per_mount(def: &'static Def, mounts: &Arc<MountLabels>) -> Self {
        Family::per_mount_rows(def, mounts, 1)
    }

    /// [`Family::per_mount`], with room for `rows` samples per mount: a family
    /// grown sample by sample at 10,000 mounts copied itself about 15 times and
    /// went through as many allocations, each a few page faults more with the
    /// static binary's allocator (docs/performance.md).
    pub fn per_mount_rows(def: &'static Def, mounts: &Arc<MountLabels>, rows: usize) -> Self {
        debug_assert!(def.labels.starts_with(&MOUNT_LABELS), "{}", def.name);
        let n = mounts.len().saturating_mul(rows);
        let cuts = n.saturating_mul(def.labels.len().saturating_sub(MOUNT_LABELS.len()));
        Family {
            mounts: Some(mounts.clone()),
            rows: Vec::with_capacity(n),
            cuts: Vec::with_capacity(cuts),
            ..Family::new(def)
        }
    }

    /// Adds a sample of mount `mount` (its index in the family's labels);
    /// `values`: the labels after `mountpoint` and `mntns`.
    pub fn add_for_mount(&mut self, mount: u32, values: &[&str], value: f64) {
        debug_assert!(self.mounts.is_some(), "{}", self.def.name);
        self.push_row(mount, values, Value::Plain(value));
    }

    pub fn name(&self) -> &'static str {
        self.def.name
    }

    fn push(&mut self, values: &[&str], value: Value) {
        debug_assert!(self.mounts.is_none(), "{}: a per-mount family", self.def.name);
        self.push_row(NO_MOUNT, values, value);
    }

    /// The label names a row's `keys` hold: after `mountpoint` and `mntns` in a
    /// per-mount family.
    fn own_labels(&self) -> &'static [&'static str] {
        match self.mounts {
            Some(_) => self.def.labels.get(MOUNT_LABELS.len()..).unwrap_or(&[]),
            None => self.def.labels,
        }
    }

    fn push_row(&mut self, mount: u32, values: &[&str], value: Value) {
        debug_assert_eq!(values.len(), self.own_labels().len(), "{}", self.def.name);
        let start = offset(self.keys.len());
        let cuts = offset(self.cuts.len());
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.keys.push('\0');
            }
            encode::append::str(&mut self.keys, v);
            self.cuts.push(offset(self.keys.len()));
        }
        self.rows.push(Row { mount, start, end: offset(self.keys.len()), cuts, value });
    }

    /// Adds a histogram sample: cumulative counts per upper bound (the +Inf
    /// bucket is added from `count`).
    pub fn add_histogram(&mut self, values: &[&str], buckets: &[(f64, u64)], count: u64, sum: f64) {
        let i = offset(self.hists.len());
        self.hists.push(HistSample::Classic(buckets.to_vec(), count, sum));
        self.push(values, Value::Hist(i));
    }

    /// Adds a kernel histogram. In the text format it is the classic histogram
    /// at `classic` bounds; without bounds it has no text form and is left out.
    /// In protobuf it is a native histogram, with those classic buckets too.
    /// The histogram is normalised first (`NativeHistogram::normalise`). One whose
    /// schema Prometheus does not accept (`native::SCHEMAS`) would make it reject the
    /// whole scrape: it is served as its classic form only (nothing without
    /// bounds), and logged.
    pub fn add_kernel_histogram(&mut self, values: &[&str], h: &NativeHistogram, classic: Option<&[f64]>) {
        let mut h = h.clone();
        h.normalise();
        let sample = if native::SCHEMAS.contains(&h.schema) {
            HistSample::Kernel(h, classic.map(<[f64]>::to_vec))
        } else {
            tracing::error!(
                family = self.def.name,
                schema = h.schema,
                "native schema out of range: classic buckets only"
            );
            match classic {
                Some(bounds) => HistSample::Classic(h.classic(bounds), h.count, h.sum),
                None => return,
            }
        };
        let i = offset(self.hists.len());
        self.hists.push(sample);
        self.push(values, Value::Hist(i));
    }

    /// Adds a sample; `values` are the label values in the order of `def.labels`.
    pub fn add(&mut self, values: &[&str], value: f64) {
        self.push(values, Value::Plain(value));
    }

    /// The mount of a row of a per-mount family.
    fn mount_of(&self, row: &Row) -> Option<&mount_labels::Labelled> {
        self.mounts.as_ref()?.get(row.mount)
    }

    /// The label values a row holds in `keys`, in the order of [`Family::own_labels`].
    fn own_values<'a>(&'a self, row: &Row) -> impl Iterator<Item = &'a str> + 'a {
        let n = self.own_labels().len();
        let cuts = self.cuts.get(row.cuts as usize..row.cuts as usize + n).unwrap_or(&[]);
        let mut from = row.start as usize;
        cuts.iter().map(move |&end| {
            let v = self.keys.get(from..end as usize).unwrap_or("");
            from = end as usize + 1;
            v
        })
    }

    /// The label values of a row, in the order of `def.labels`.
    fn values<'a>(&'a self, row: &Row) -> impl Iterator<Item = &'a str> + 'a {
        let mount = self.mount_of(row).map(|m| [m.mountpoint.as_str(), m.mntns.as_str()]);
        mount.into_iter().flatten().chain(self.own_values(row))
    }

    /// Sorts the rows by their label values: a per-mount family by its mounts'
    /// label order, then by the rest.
    fn sort(&mut self) {
        let (keys, mounts) = (&self.keys, self.mounts.as_deref());
        let rank = |r: &Row| mounts.and_then(|m| m.get(r.mount)).map_or(0, |m| m.rank);
        self.rows.sort_unstable_by(|a, b| {
            rank(a).cmp(&rank(b)).then_with(|| {
                keys[a.start as usize..a.end as usize].cmp(&keys[b.start as usize..b.end as usize])
            })
        });
    }
}

/// Where the families come from: one collector per concern (one per file, as in
/// node_exporter).
pub trait Collector: Send + Sync {
    fn collect(&self) -> Vec<Family>;
}

/// Every registered collector, plus the process metrics of the prometheus crate.
pub struct Exposition {
    collectors: RwLock<Vec<Box<dyn Collector>>>,
    process: prometheus::process_collector::ProcessCollector,
    /// Size of the last rendering, to allocate the next one at once.
    last_len: std::sync::atomic::AtomicUsize,
}

impl Default for Exposition {
    fn default() -> Self {
        Exposition {
            collectors: RwLock::default(),
            process: prometheus::process_collector::ProcessCollector::for_self(),
            last_len: std::sync::atomic::AtomicUsize::new(64 * 1024),
        }
    }
}

impl Exposition {
    pub fn register(&self, collector: Box<dyn Collector>) {
        self.collectors.write_now().push(collector);
    }

    /// Renders everything in the text format.
    pub fn render(&self) -> Vec<u8> {
        self.render_as(Format::Text)
    }

    /// Renders everything in `format`.
    pub fn render_as(&self, format: Format) -> Vec<u8> {
        let mut families: Vec<Family> = {
            let collectors = self.collectors.read_now();
            collectors.iter().flat_map(|c| c.collect()).collect()
        };
        families.sort_by_key(|f| f.name());
        let hint = self.last_len.load(std::sync::atomic::Ordering::Relaxed);
        let buf = match format {
            Format::Text => encode::text::render(families, &self.process, hint),
            Format::Protobuf => encode::proto::render(families, &self.process, hint),
        };
        // The text size: a protobuf rendering is not a hint for the next text one.
        if format == Format::Text {
            self.last_len.store(buf.len(), std::sync::atomic::Ordering::Relaxed);
        }
        buf
    }
}

/// Seconds since the Unix epoch.
pub fn unix_seconds(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}
