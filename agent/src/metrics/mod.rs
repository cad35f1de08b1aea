//! Exposition: one source per concern, all reading snapshots that discovery and
//! the scan pool publish; nothing here does I/O on the request path.
//!
//! The sources record their samples in `Family` (label values in one buffer,
//! values beside them), without building the prometheus crate's protobuf
//! structures: at 1000 mounts (21,000 series) that took the render from 12 ms to
//! about 2 ms (examples/render-bench.rs, docs/performance.md). A family is then
//! written in the format the scrape negotiated (`Format`): the text format, what
//! the crate's `gather()` and `TextEncoder` printed (families sorted by name,
//! samples by label values, the same escaping and number formatting; the golden
//! test holds it), or delimited `io.prometheus.client` protobuf (`proto`), where a
//! kernel `Histogram` is a native histogram. The crate still provides the process
//! metrics and the type names.

pub mod agent;
pub mod copyup;
pub mod mounts;
pub mod process;
pub mod proto;
pub mod server;
pub mod upper;

use std::fmt::Write as _;
use std::sync::RwLock;

use prometheus::core::Collector as _;
use prometheus::proto::MetricType;
use prometheus::{Encoder, TextEncoder};

use crate::sync::RwLockExt;

/// The Content-Type of the text exposition format, as Prometheus 2 and 3 accept it.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric definition: the one place a name, its help and its labels are spelled.
pub struct Def {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricType,
    pub labels: &'static [&'static str],
}

/// Label value escaping of the text format: `\`, newline and `"`.
fn escape_into(out: &mut String, v: &str, quote: bool) {
    if !v.contains(['\\', '\n', '"']) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// A histogram as the kernel aggregates it: exponential (Prometheus native)
/// buckets at `schema` plus a zero bucket. Classic buckets are sums of these, so
/// their bounds must be bucket boundaries too.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Native schema: 2^schema buckets per power of two.
    pub schema: i32,
    /// Observations of exactly 0 (the native zero bucket, threshold 0).
    pub zero_count: u64,
    /// (index, observations), ascending by index, not cumulative: index `i`
    /// holds values in (2^((i-1)/2^schema), 2^(i/2^schema)] of the base unit.
    pub buckets: Vec<(i32, u64)>,
    /// Observations in all: zero_count plus the buckets' counts.
    pub count: u64,
    /// Sum of the observations, in the base unit.
    pub sum: f64,
}

/// The native schemas Prometheus accepts (2^-4 .. 2^8 buckets per power of two):
/// it rejects a whole scrape with a histogram outside them.
pub const SCHEMAS: std::ops::RangeInclusive<i32> = -4..=8;

impl Histogram {
    /// Buckets per power of two (a fraction for negative schemas).
    fn scale(schema: i32) -> f64 {
        2f64.powi(schema)
    }

    /// The index of the bucket whose upper boundary is `bound`, if it is one.
    pub fn boundary_index(schema: i32, bound: f64) -> Option<i32> {
        let i = bound.log2() * Self::scale(schema);
        let r = i.round();
        ((i - r).abs() < 1e-9 && r.is_finite()).then_some(r as i32)
    }

    /// Sorts the buckets by index, merges duplicate indices and derives the
    /// count from the zero bucket and the buckets. The kernel's per-CPU values
    /// are read while copy-ups update them, so the count read beside them can
    /// be off by the copy-ups in flight; Prometheus rejects a whole scrape whose
    /// native histogram's count differs from its buckets' ("3 observations found
    /// in buckets, but the Count field is 5"). The classic `+Inf` bucket and
    /// `_count` of the text form are this count too, so both formats agree.
    /// The sum is kept as read: nothing checks it against the buckets, and it
    /// stays within the in-flight copy-ups of the sum counter.
    pub fn normalise(&mut self) {
        self.buckets.sort_unstable_by_key(|b| b.0);
        self.buckets.dedup_by(|next, kept| {
            let same = next.0 == kept.0;
            if same {
                kept.1 = kept.1.saturating_add(next.1);
            }
            same
        });
        self.buckets.retain(|b| b.1 > 0);
        self.count = self.buckets.iter().fold(self.zero_count, |n, b| n.saturating_add(b.1));
    }

    /// Cumulative counts at `bounds`.
    ///
    /// Contract: `bounds` ascend and each is a native bucket boundary at this
    /// schema (`boundary_index` is `Some`), and the buckets are sorted
    /// (`normalise`). A bound that is not a boundary would split a bucket: it
    /// counts only up to the boundary below it, which debug builds (the tests)
    /// refuse with a panic.
    pub fn classic(&self, bounds: &[f64]) -> Vec<(f64, u64)> {
        let scale = Self::scale(self.schema);
        let mut out = Vec::with_capacity(bounds.len());
        let (mut acc, mut next) = (self.zero_count, self.buckets.iter().peekable());
        for &le in bounds {
            let exact = Self::boundary_index(self.schema, le);
            debug_assert!(
                exact.is_some(),
                "classic bound {le} is not a native boundary at schema {}",
                self.schema
            );
            let top = exact.unwrap_or((le.log2() * scale).floor() as i32);
            while let Some((_, n)) = next.next_if(|(i, _)| *i <= top) {
                acc += n;
            }
            out.push((le, acc));
        }
        out
    }
}

/// The exposition formats `/metrics` serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The text format 0.0.4: classic histograms only.
    Text,
    /// Delimited `io.prometheus.client.MetricFamily` protobuf: native histograms,
    /// with their classic buckets where the source gives classic bounds.
    Protobuf,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => CONTENT_TYPE,
            Format::Protobuf => proto::CONTENT_TYPE,
        }
    }

    /// The format an `Accept` header prefers among the two served: protobuf
    /// when its q value is positive and at least that of every range the text
    /// format matches (`text/plain`, `text/*`, `*/*`); text otherwise, and
    /// without a header. OpenMetrics is not served, so its ranges do not count.
    /// Prometheus sends protobuf first (q=1 in 2.42, q=0.6 in 3.5) only when
    /// native histograms are enabled (tests: the headers logged from both).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let (mut proto_q, mut text_q) = (0.0f64, 0.0f64);
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let (mut q, mut proto, mut delimited) = (1.0f64, false, false);
            for p in parts {
                let Some((k, v)) = p.split_once('=') else { continue };
                let v = v.trim().trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = v.parse::<f64>().ok().filter(|q| (0.0..=1.0).contains(q)).unwrap_or(0.0),
                    "proto" => proto = v == "io.prometheus.client.MetricFamily",
                    "encoding" => delimited = v == "delimited",
                    _ => {}
                }
            }
            match media.as_str() {
                "application/vnd.google.protobuf" if proto && delimited => proto_q = proto_q.max(q),
                "text/plain" | "text/*" | "*/*" => text_q = text_q.max(q),
                _ => {}
            }
        }
        if proto_q > 0.0 && proto_q >= text_q {
            Format::Protobuf
        } else {
            Format::Text
        }
    }
}

/// A histogram sample as its source gave it.
enum HistSample {
    /// Cumulative counts per upper bound (no +Inf), count, sum.
    Classic(Vec<(f64, u64)>, u64, f64),
    /// A kernel histogram and the classic bounds of its text form (None: native only).
    Kernel(Histogram, Option<Vec<f64>>),
}

/// One sample: its label values (in `Family::keys`) and its value.
struct Row {
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
}

/// Offsets into a family's buffers. A family holds far less than 4 GiB: a
/// larger one is a bug, and its offsets saturate rather than wrap.
fn offset(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Family {
    pub fn new(def: &'static Def) -> Self {
        Family { def, keys: String::new(), cuts: Vec::new(), rows: Vec::new(), hists: Vec::new() }
    }

    pub fn name(&self) -> &'static str {
        self.def.name
    }

    fn push(&mut self, values: &[&str], value: Value) {
        debug_assert_eq!(values.len(), self.def.labels.len(), "{}", self.def.name);
        let start = offset(self.keys.len());
        let cuts = offset(self.cuts.len());
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.keys.push('\0');
            }
            self.keys.push_str(v);
            self.cuts.push(offset(self.keys.len()));
        }
        self.rows.push(Row { start, end: offset(self.keys.len()), cuts, value });
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
    /// The histogram is normalised first (`Histogram::normalise`). One whose
    /// schema Prometheus does not accept (`SCHEMAS`) would make it reject the
    /// whole scrape: it is served as its classic form only (nothing without
    /// bounds), and logged.
    pub fn add_kernel_histogram(&mut self, values: &[&str], h: &Histogram, classic: Option<&[f64]>) {
        let mut h = h.clone();
        h.normalise();
        let sample = if SCHEMAS.contains(&h.schema) {
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

    /// The label values of a row, in the order of `def.labels`.
    fn values<'a>(&'a self, row: &Row) -> impl Iterator<Item = &'a str> + 'a {
        let n = self.def.labels.len();
        let cuts = self.cuts.get(row.cuts as usize..row.cuts as usize + n).unwrap_or(&[]);
        let mut from = row.start as usize;
        cuts.iter().map(move |&end| {
            let v = self.keys.get(from..end as usize).unwrap_or("");
            from = end as usize + 1;
            v
        })
    }

    fn sort(&mut self) {
        let keys = &self.keys;
        self.rows.sort_unstable_by(|a, b| {
            keys[a.start as usize..a.end as usize].cmp(&keys[b.start as usize..b.end as usize])
        });
    }

    /// Appends HELP, TYPE and the samples in the text format (nothing when the
    /// family is empty; nothing for a native-only histogram).
    fn write_text(mut self, out: &mut String) {
        let text = |r: &Row| match r.value {
            Value::Plain(_) => true,
            Value::Hist(i) => !matches!(self.hists.get(i as usize), Some(HistSample::Kernel(_, None)) | None),
        };
        if !self.rows.iter().any(text) {
            return;
        }
        self.sort();
        out.push_str("# HELP ");
        out.push_str(self.def.name);
        out.push(' ');
        escape_into(out, self.def.help, false);
        out.push_str("\n# TYPE ");
        out.push_str(self.def.name);
        out.push(' ');
        out.push_str(match self.def.kind {
            MetricType::COUNTER => "counter",
            MetricType::HISTOGRAM => "histogram",
            MetricType::SUMMARY => "summary",
            MetricType::UNTYPED => "untyped",
            _ => "gauge",
        });
        out.push('\n');
        let mut line_values: Vec<&str> = Vec::with_capacity(self.def.labels.len());
        for row in &self.rows {
            line_values.clear();
            line_values.extend(self.values(row));
            match &row.value {
                Value::Plain(v) => self.line(out, "", &line_values, None, *v),
                Value::Hist(i) => match self.hists.get(*i as usize) {
                    Some(HistSample::Classic(buckets, count, sum)) => {
                        self.classic_lines(out, &line_values, buckets, *count, *sum)
                    }
                    Some(HistSample::Kernel(h, Some(bounds))) => {
                        self.classic_lines(out, &line_values, &h.classic(bounds), h.count, h.sum)
                    }
                    _ => {}
                },
            }
        }
    }

    fn classic_lines(&self, out: &mut String, values: &[&str], buckets: &[(f64, u64)], count: u64, sum: f64) {
        for (le, n) in buckets {
            self.line(out, "_bucket", values, Some(("le", &le.to_string())), *n as f64);
        }
        self.line(out, "_bucket", values, Some(("le", "+Inf")), count as f64);
        self.line(out, "_sum", values, None, sum);
        self.line(out, "_count", values, None, count as f64);
    }

    /// `name<suffix>{labels[,extra]} value\n`
    fn line(&self, out: &mut String, suffix: &str, values: &[&str], extra: Option<(&str, &str)>, value: f64) {
        out.push_str(self.def.name);
        out.push_str(suffix);
        let mut sep = '{';
        for (n, v) in self.def.labels.iter().zip(values).map(|(n, v)| (*n, *v)).chain(extra) {
            out.push(sep);
            out.push_str(n);
            out.push_str("=\"");
            escape_into(out, v, true);
            out.push('"');
            sep = ',';
        }
        if sep == ',' {
            out.push('}');
        }
        // f64's Display, as the crate's encoder writes values; whole numbers
        // (most samples) through the integer formatter, which prints the same.
        if value.fract() == 0.0 && value.abs() < 9e15 && !(value == 0.0 && value.is_sign_negative()) {
            let _ = write!(out, " {}", value as i64);
        } else {
            let _ = write!(out, " {value}");
        }
        out.push('\n');
    }

    /// Appends the family as one delimited protobuf `MetricFamily` (nothing
    /// when empty). Each metric is encoded as it is built, into `scratch`, with
    /// one `Metric` whose label strings are reused: no allocation per sample
    /// but for histograms (owned label strings per sample made the prometheus
    /// crate's model cost 3x the text, docs/performance.md).
    fn write_proto(mut self, out: &mut Vec<u8>, scratch: &mut Vec<u8>) {
        if self.rows.is_empty() {
            return;
        }
        self.sort();
        let kind = match self.def.kind {
            MetricType::COUNTER => proto::MetricType::Counter,
            MetricType::HISTOGRAM => proto::MetricType::Histogram,
            MetricType::SUMMARY => proto::MetricType::Summary,
            MetricType::UNTYPED => proto::MetricType::Untyped,
            _ => proto::MetricType::Gauge,
        };
        scratch.clear();
        let header = proto::MetricFamily {
            name: self.def.name.to_owned(),
            help: self.def.help.to_owned(),
            r#type: kind as i32,
            metric: Vec::new(),
        };
        // Encoding into a Vec cannot run out of room; the fields of a message
        // are its encoding, so the metrics (field 4) can follow the header.
        let _ = prost::Message::encode(&header, scratch);
        let mut m = proto::Metric {
            label: self
                .def
                .labels
                .iter()
                .map(|n| proto::LabelPair { name: (*n).to_owned(), value: String::new() })
                .collect(),
            ..Default::default()
        };
        for row in &self.rows {
            for (l, v) in m.label.iter_mut().zip(self.values(row)) {
                l.value.clear();
                l.value.push_str(v);
            }
            match (&row.value, kind) {
                (Value::Plain(v), proto::MetricType::Counter) => {
                    m.counter = Some(proto::Counter { value: *v })
                }
                (Value::Plain(v), proto::MetricType::Untyped) => {
                    m.untyped = Some(proto::Untyped { value: *v })
                }
                (Value::Plain(v), _) => m.gauge = Some(proto::Gauge { value: *v }),
                (Value::Hist(i), _) => match self.hists.get(*i as usize) {
                    Some(h) => m.histogram = Some(histogram_proto(h)),
                    None => continue,
                },
            }
            prost::encoding::message::encode(4, &m, scratch);
        }
        prost::encoding::encode_varint(scratch.len() as u64, out);
        out.extend_from_slice(scratch);
    }
}

fn histogram_proto(h: &HistSample) -> proto::Histogram {
    let classic = |buckets: &[(f64, u64)]| {
        buckets.iter().map(|(le, n)| proto::Bucket { cumulative_count: *n, upper_bound: *le }).collect()
    };
    match h {
        HistSample::Classic(buckets, count, sum) => proto::Histogram {
            sample_count: *count,
            sample_sum: *sum,
            bucket: classic(buckets),
            ..Default::default()
        },
        HistSample::Kernel(h, bounds) => {
            let (positive_span, positive_delta) = proto::native_buckets(&h.buckets);
            proto::Histogram {
                sample_count: h.count,
                sample_sum: h.sum,
                bucket: bounds.as_deref().map(|b| classic(&h.classic(b))).unwrap_or_default(),
                schema: h.schema,
                zero_threshold: proto::ZERO_THRESHOLD,
                zero_count: h.zero_count,
                positive_span,
                positive_delta,
            }
        }
    }
}

/// Process metrics of the prometheus crate, as protobuf messages.
fn process_proto(families: &[prometheus::proto::MetricFamily]) -> Vec<proto::MetricFamily> {
    families
        .iter()
        .map(|f| {
            let kind = f.get_field_type();
            let metric = f
                .get_metric()
                .iter()
                .map(|m| {
                    let label = m
                        .get_label()
                        .iter()
                        .map(|l| proto::LabelPair { name: l.name().to_owned(), value: l.value().to_owned() })
                        .collect();
                    let mut out = proto::Metric { label, ..Default::default() };
                    match kind {
                        MetricType::COUNTER => {
                            out.counter = Some(proto::Counter { value: m.get_counter().get_value() })
                        }
                        _ => out.gauge = Some(proto::Gauge { value: m.get_gauge().get_value() }),
                    }
                    out
                })
                .collect();
            proto::MetricFamily {
                name: f.name().to_owned(),
                help: f.help().to_owned(),
                r#type: if kind == MetricType::COUNTER {
                    proto::MetricType::Counter
                } else {
                    proto::MetricType::Gauge
                } as i32,
                metric,
            }
        })
        .collect()
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
            Format::Text => {
                let mut out = String::with_capacity(hint + hint / 8);
                for f in families {
                    f.write_text(&mut out);
                }
                let mut buf = out.into_bytes();
                // process_* sort after overlayfs_*; TextEncoder only fails on an empty
                // family, which the process collector does not produce.
                if let Err(e) = TextEncoder::new().encode(&self.process.collect(), &mut buf) {
                    tracing::error!(error = %e, "encoding the process metrics failed");
                }
                buf
            }
            Format::Protobuf => {
                let mut buf = Vec::with_capacity(hint / 2);
                let mut scratch = Vec::new();
                for f in families {
                    f.write_proto(&mut buf, &mut scratch);
                }
                for f in process_proto(&self.process.collect()) {
                    // Writing into a Vec only fails when it cannot grow.
                    if let Err(e) = prost::Message::encode_length_delimited(&f, &mut buf) {
                        tracing::error!(error = %e, family = f.name, "encoding a family failed");
                    }
                }
                buf
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    static G: Def = Def {
        name: "t_gauge",
        help: "A \\ help\nline with \"quotes\".",
        kind: MetricType::GAUGE,
        labels: &["a", "b"],
    };
    static H: Def = Def { name: "t_seconds", help: "h", kind: MetricType::HISTOGRAM, labels: &["c"] };
    static N: Def = Def { name: "t_total", help: "n", kind: MetricType::COUNTER, labels: &[] };
    static E: Def = Def { name: "t_empty", help: "e", kind: MetricType::GAUGE, labels: &[] };

    enum Sample {
        Plain(&'static Def, Vec<&'static str>, f64),
        Hist(&'static Def, Vec<&'static str>, Vec<(f64, u64)>, u64, f64),
    }

    fn samples() -> Vec<Sample> {
        use Sample::*;
        vec![
            Plain(&N, vec![], 7.0),
            Plain(&G, vec!["b\"q\\\nx", "2"], 1.5),
            Plain(&G, vec!["a", "z"], 2.0),
            Plain(&G, vec!["a", ""], 1e21),
            Plain(&G, vec!["c", "int"], 1234567.0),
            Plain(&G, vec!["c", "neg"], -3.0),
            Plain(&G, vec!["c", "negzero"], -0.0),
            Plain(&G, vec!["c", "frac"], 0.000123),
            Plain(&G, vec!["c", "big"], 9.1e15),
            Plain(&G, vec!["ab", "a"], 1.0),
            Hist(&H, vec!["x"], vec![(0.001, 1), (1.0, 3), (1024.0, 3)], 4, 2.25),
            Hist(&H, vec!["a\\"], vec![(1.024e-6, 0)], 0, 0.0),
        ]
    }

    struct Ours;
    impl Collector for Ours {
        fn collect(&self) -> Vec<Family> {
            let mut fams: Vec<Family> =
                vec![Family::new(&N), Family::new(&G), Family::new(&H), Family::new(&E)];
            for s in samples() {
                match s {
                    Sample::Plain(d, v, x) => {
                        fams.iter_mut().find(|f| f.name() == d.name).expect("family").add(&v, x)
                    }
                    Sample::Hist(d, v, b, c, sum) => fams
                        .iter_mut()
                        .find(|f| f.name() == d.name)
                        .expect("family")
                        .add_histogram(&v, &b, c, sum),
                }
            }
            fams
        }
    }

    /// The same samples as the prometheus crate's protobuf model.
    struct Theirs;
    impl prometheus::core::Collector for Theirs {
        fn desc(&self) -> Vec<&prometheus::core::Desc> {
            Vec::new()
        }
        fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
            use prometheus::proto::*;
            let label = |d: &Def, v: &[&str]| -> Vec<LabelPair> {
                d.labels
                    .iter()
                    .zip(v)
                    .map(|(n, v)| {
                        let mut lp = LabelPair::default();
                        lp.set_name(n.to_string());
                        lp.set_value(v.to_string());
                        lp
                    })
                    .collect()
            };
            let mut out: Vec<MetricFamily> = Vec::new();
            for s in samples() {
                let (d, m) = match s {
                    Sample::Plain(d, v, x) => {
                        let mut m = Metric::from_label(label(d, &v));
                        if d.kind == MetricType::COUNTER {
                            let mut c = Counter::default();
                            c.set_value(x);
                            m.set_counter(c);
                        } else {
                            let mut g = Gauge::default();
                            g.set_value(x);
                            m.set_gauge(g);
                        }
                        (d, m)
                    }
                    Sample::Hist(d, v, b, c, sum) => {
                        let mut h = Histogram::default();
                        h.set_sample_count(c);
                        h.set_sample_sum(sum);
                        h.set_bucket(
                            b.iter()
                                .map(|(le, n)| {
                                    let mut k = Bucket::default();
                                    k.set_upper_bound(*le);
                                    k.set_cumulative_count(*n);
                                    k
                                })
                                .collect(),
                        );
                        let mut m = Metric::from_label(label(d, &v));
                        m.set_histogram(h);
                        (d, m)
                    }
                };
                match out.iter_mut().find(|f| f.name() == d.name) {
                    Some(f) => f.mut_metric().push(m),
                    None => {
                        let mut f = MetricFamily::default();
                        f.set_name(d.name.to_owned());
                        f.set_help(d.help.to_owned());
                        f.set_field_type(d.kind);
                        f.set_metric(vec![m]);
                        out.push(f);
                    }
                }
            }
            out
        }
    }

    #[test]
    fn classic_buckets_are_sums_of_native_ones() {
        // schema 3: 8 buckets per power of two; index 8 ends at 2, index 16 at 4.
        let h = Histogram {
            schema: 3,
            zero_count: 2,
            buckets: vec![(-1, 1), (0, 1), (1, 4), (8, 3), (9, 5), (16, 1), (40, 7)],
            count: 24,
            sum: 100.0,
        };
        assert_eq!(Histogram::boundary_index(3, 2.0), Some(8));
        assert_eq!(Histogram::boundary_index(3, 2f64.powf(-20.0)), Some(-160));
        assert_eq!(Histogram::boundary_index(3, 1.024e-6), None, "2^10 ns is not a boundary in seconds");
        let c = h.classic(&[0.5, 1.0, 2.0, 4.0, 16.0]);
        assert_eq!(c, vec![(0.5, 2), (1.0, 4), (2.0, 11), (4.0, 17), (16.0, 17)]);
        let mut f = Family::new(&H);
        f.add_kernel_histogram(&["x"], &h, Some(&[1.0, 4.0]));
        f.add_kernel_histogram(&["native-only"], &h, None);
        let mut out = String::new();
        f.write_text(&mut out);
        assert!(out.contains("t_seconds_bucket{c=\"x\",le=\"4\"} 17\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{c=\"x\",le=\"+Inf\"} 24\n"), "{out}");
        assert!(!out.contains("native-only"), "no text form without classic bounds: {out}");
    }

    /// Per-CPU reads racing copy-ups: a count that disagrees with the buckets,
    /// unsorted and duplicate indices. Both formats serve the count of the
    /// buckets (Prometheus rejects the whole scrape otherwise) and sorted,
    /// merged buckets (no negative span offsets).
    #[test]
    fn inconsistent_kernel_histograms_are_normalised() {
        let racy = Histogram {
            schema: 3,
            zero_count: 1,
            buckets: vec![(9, 2), (-1, 1), (9, 3), (0, 0), (8, 1)],
            count: 5,
            sum: 9.5,
        };
        let mut f = Family::new(&H);
        f.add_kernel_histogram(&["x"], &racy, Some(&[1.0, 2.0]));
        let mut pb = Vec::new();
        f.write_proto(&mut pb, &mut Vec::new());
        let fam = decode_all(&pb);
        let h = fam[0].metric[0].histogram.clone().expect("histogram");
        assert_eq!((h.sample_count, h.sample_sum, h.zero_count), (8, 9.5, 1), "count from the buckets");
        let spans: Vec<(i32, u32)> = h.positive_span.iter().map(|s| (s.offset, s.length)).collect();
        assert_eq!(spans, [(-1, 1), (8, 2)], "sorted, merged, no negative offset after the first");
        assert_eq!(h.positive_delta, [1, 0, 4]);
        let b: Vec<(f64, u64)> = h.bucket.iter().map(|b| (b.upper_bound, b.cumulative_count)).collect();
        assert_eq!(b, [(1.0, 2), (2.0, 3)]);
        let mut f = Family::new(&H);
        f.add_kernel_histogram(&["x"], &racy, Some(&[1.0, 2.0]));
        let mut text = String::new();
        f.write_text(&mut text);
        assert!(text.contains("t_seconds_bucket{c=\"x\",le=\"2\"} 3\n"), "{text}");
        assert!(text.contains("t_seconds_bucket{c=\"x\",le=\"+Inf\"} 8\n"), "{text}");
        assert!(text.contains("t_seconds_count{c=\"x\"} 8\n"), "text agrees with protobuf: {text}");
        assert!(text.contains("t_seconds_sum{c=\"x\"} 9.5\n"), "{text}");
    }

    /// Valid schemas are -4..=8; a negative one has buckets wider than a power
    /// of two; one outside the range is served classic only.
    #[test]
    fn schemas_outside_prometheus_range_are_not_encoded() {
        // schema -1: index i ends at 4^i.
        assert_eq!(Histogram::boundary_index(-1, 16.0), Some(2));
        assert_eq!(Histogram::boundary_index(-1, 2.0), None);
        assert_eq!(Histogram::boundary_index(-4, 65536.0), Some(1));
        let h = Histogram { schema: -1, zero_count: 0, buckets: vec![(1, 2), (2, 1)], count: 3, sum: 20.0 };
        assert_eq!(h.classic(&[4.0, 16.0]), [(4.0, 2), (16.0, 3)]);
        let mut f = Family::new(&H);
        f.add_kernel_histogram(&["neg"], &h, None);
        f.add_kernel_histogram(&["nine"], &Histogram { schema: 9, ..h.clone() }, Some(&[4.0, 16.0]));
        f.add_kernel_histogram(&["nine-native-only"], &Histogram { schema: 9, ..h.clone() }, None);
        let mut pb = Vec::new();
        f.write_proto(&mut pb, &mut Vec::new());
        let fam = decode_all(&pb);
        let by =
            |c: &str| fam[0].metric.iter().find(|m| m.label[0].value == c).and_then(|m| m.histogram.clone());
        assert_eq!(by("neg").map(|h| h.schema), Some(-1));
        let nine = by("nine").expect("classic form kept");
        assert!(nine.positive_span.is_empty() && nine.schema == 0 && nine.zero_threshold == 0.0, "{nine:?}");
        assert_eq!(nine.bucket.len(), 2);
        assert!(by("nine-native-only").is_none(), "nothing to serve without classic bounds");
    }

    #[test]
    #[should_panic(expected = "not a native boundary")]
    fn classic_bounds_must_be_boundaries() {
        let h = Histogram { schema: 3, zero_count: 0, buckets: vec![(0, 1)], count: 1, sum: 1.0 };
        let _ = h.classic(&[1.024e-6]);
    }

    #[test]
    fn zero_threshold_is_two_to_the_minus_128() {
        assert_eq!(proto::ZERO_THRESHOLD, 2f64.powi(-128));
    }

    static K: Def =
        Def { name: "t_kernel_seconds", help: "k", kind: MetricType::HISTOGRAM, labels: &["cause"] };

    fn kernel_hist() -> Histogram {
        Histogram {
            schema: 3,
            zero_count: 2,
            buckets: vec![(-1, 1), (0, 1), (1, 4), (8, 3), (9, 5), (16, 1), (40, 7)],
            count: 24,
            sum: 100.0,
        }
    }

    struct WithKernel;
    impl Collector for WithKernel {
        fn collect(&self) -> Vec<Family> {
            let mut f = Family::new(&K);
            f.add_kernel_histogram(&["write"], &kernel_hist(), Some(&[1.0, 4.0]));
            f.add_kernel_histogram(&["open"], &kernel_hist(), None);
            f.add_kernel_histogram(&["empty"], &Histogram { schema: 3, ..Default::default() }, None);
            // Native only, all of them: no text form at all.
            let mut n = Family::new(&E);
            n.add_kernel_histogram(&[], &kernel_hist(), None);
            let mut o = Ours.collect();
            o.extend([f, n]);
            o
        }
    }

    fn decode_all(mut buf: &[u8]) -> Vec<proto::MetricFamily> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            out.push(prost::Message::decode_length_delimited(&mut buf).expect("a delimited MetricFamily"));
        }
        out
    }

    /// The protobuf exposition decodes (with prost, from the official field
    /// numbers) into what was recorded: names, types, labels, values, classic
    /// buckets, native schema, zero bucket, spans and deltas, process metrics.
    #[test]
    fn protobuf_round_trip() {
        let e = Exposition::default();
        e.register(Box::new(WithKernel));
        let fams = decode_all(&e.render_as(Format::Protobuf));
        let names: Vec<&str> = fams.iter().map(|f| f.name.as_str()).collect();
        let ours: Vec<&str> = names.iter().copied().filter(|n| n.starts_with("t_")).collect();
        assert_eq!(
            ours,
            ["t_empty", "t_gauge", "t_kernel_seconds", "t_seconds", "t_total"],
            "sorted, empty left out"
        );
        assert!(names.contains(&"process_resident_memory_bytes"), "{names:?}");
        assert!(names.contains(&"process_cpu_seconds_total"), "{names:?}");
        let fam = |n: &str| fams.iter().find(|f| f.name == n).expect(n);
        let cpu = fam("process_cpu_seconds_total");
        assert_eq!(cpu.r#type, proto::MetricType::Counter as i32);
        assert!(cpu.metric[0].counter.is_some());

        let total = fam("t_total");
        assert_eq!((total.r#type, total.help.as_str()), (proto::MetricType::Counter as i32, "n"));
        assert_eq!(total.metric[0].counter.as_ref().map(|c| c.value), Some(7.0));

        let g = fam("t_gauge");
        assert_eq!(g.r#type, proto::MetricType::Gauge as i32);
        assert_eq!(g.help, G.help, "help unescaped in protobuf");
        let labels = |m: &proto::Metric| -> Vec<(String, String)> {
            m.label.iter().map(|l| (l.name.clone(), l.value.clone())).collect()
        };
        assert_eq!(labels(&g.metric[0]), [("a".into(), "a".into()), ("b".into(), "".into())]);
        assert_eq!(g.metric[0].gauge.as_ref().map(|v| v.value), Some(1e21));
        let quoted = g.metric.iter().find(|m| m.label[0].value.starts_with('b')).expect("b");
        assert_eq!(quoted.label[0].value, "b\"q\\\nx", "label values raw, not escaped");
        let negzero = g.metric.iter().find(|m| m.label[1].value == "negzero").expect("negzero");
        assert!(negzero.gauge.as_ref().is_some_and(|v| v.value == 0.0));

        let classic = fam("t_seconds");
        let x = classic.metric.iter().find(|m| m.label[0].value == "x").and_then(|m| m.histogram.as_ref());
        let x = x.expect("histogram x");
        assert_eq!((x.sample_count, x.sample_sum), (4, 2.25));
        let b: Vec<(f64, u64)> = x.bucket.iter().map(|b| (b.upper_bound, b.cumulative_count)).collect();
        assert_eq!(b, [(0.001, 1), (1.0, 3), (1024.0, 3)]);
        assert!(x.positive_span.is_empty(), "a classic-only histogram has no native part");

        let k = fam("t_kernel_seconds");
        assert_eq!(k.r#type, proto::MetricType::Histogram as i32);
        let by = |c: &str| {
            k.metric.iter().find(|m| m.label[0].value == c).and_then(|m| m.histogram.clone()).expect(c)
        };
        let w = by("write");
        assert_eq!(
            (w.sample_count, w.sample_sum, w.schema, w.zero_count, w.zero_threshold),
            (24, 100.0, 3, 2, 2f64.powi(-128))
        );
        let b: Vec<(f64, u64)> = w.bucket.iter().map(|b| (b.upper_bound, b.cumulative_count)).collect();
        assert_eq!(b, [(1.0, 4), (4.0, 17)], "classic buckets beside the native ones");
        let spans: Vec<(i32, u32)> = w.positive_span.iter().map(|s| (s.offset, s.length)).collect();
        assert_eq!(spans, [(-1, 3), (6, 2), (6, 1), (23, 1)]);
        assert_eq!(w.positive_delta, [1, 0, 3, -1, 2, -4, 6]);
        // The native buckets sum to the count with the zero bucket.
        let mut n = 0i64;
        let total: i64 = w
            .positive_delta
            .iter()
            .map(|d| {
                n += d;
                n
            })
            .sum();
        assert_eq!(total as u64 + w.zero_count, w.sample_count);
        let o = by("open");
        assert!(o.bucket.is_empty(), "native only without classic bounds");
        assert_eq!(o.positive_delta, w.positive_delta);
        let empty = by("empty");
        assert_eq!(empty.positive_span, [proto::BucketSpan { offset: 0, length: 0 }], "no-op span");
        assert!(fam("t_empty").metric[0].histogram.is_some(), "native-only family kept in protobuf");

        let text = String::from_utf8(e.render()).expect("utf8");
        assert!(text.contains("t_kernel_seconds_bucket{cause=\"write\",le=\"4\"} 17\n"), "{text}");
        assert!(!text.contains("cause=\"open\""), "{text}");
        assert!(!text.contains("t_empty"), "a family with no text form has no HELP either: {text}");
    }

    /// Real `Accept` headers, logged from Prometheus 2.42.0 and 3.5.3 scraping
    /// a test server, with and without `--enable-feature=native-histograms`.
    #[test]
    fn negotiation_follows_prometheus() {
        let p2 = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let p2n = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let p3 = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        let p3n = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";
        for (accept, want) in [
            (Some(p2), Format::Text),
            (Some(p2n), Format::Protobuf),
            (Some(p3), Format::Text),
            (Some(p3n), Format::Protobuf),
            (None, Format::Text),
            (Some(""), Format::Text),
            (Some("*/*"), Format::Text),
            (Some(proto::CONTENT_TYPE), Format::Protobuf),
            (Some("text/plain;q=0.9, application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited; q=0.5"), Format::Text),
            (Some("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0"), Format::Text),
            (Some("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text"), Format::Text),
            (Some("application/vnd.google.protobuf;proto=other.Message;encoding=delimited"), Format::Text),
            (Some("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=bogus"), Format::Text),
            (Some("APPLICATION/VND.GOOGLE.PROTOBUF; PROTO=io.prometheus.client.MetricFamily; ENCODING=delimited, */*;q=0.1"), Format::Protobuf),
        ] {
            assert_eq!(Format::negotiate(accept), want, "{accept:?}");
        }
    }

    /// Byte for byte what the prometheus crate's gather() + TextEncoder print for
    /// the same samples: names sorted, samples by label values, escaping of
    /// labels and help, number formatting, histogram buckets; empty families left out.
    #[test]
    fn text_matches_the_crate_encoder() {
        let e = Exposition::default();
        e.register(Box::new(Ours));
        let text = String::from_utf8(e.render()).expect("utf8");
        let ours = text.split("# HELP process_").next().unwrap_or("");
        let registry = prometheus::Registry::new();
        registry.register(Box::new(Theirs)).expect("register");
        let theirs = TextEncoder::new().encode_to_string(&registry.gather()).expect("encode");
        assert_eq!(ours, theirs);
        assert!(ours.contains("t_gauge{a=\"c\",b=\"negzero\"} -0\n"), "{ours}");
        assert!(text.contains("# TYPE process_resident_memory_bytes gauge"));
    }
}
