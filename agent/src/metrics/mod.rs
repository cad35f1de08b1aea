//! Exposition: one source per concern, all reading snapshots that discovery and
//! the scan pool publish; nothing here does I/O on the request path.
//!
//! The sources write the text format directly (`Family`), without building the
//! prometheus crate's protobuf structures: at 1000 mounts (21,000 series) that
//! took the render from 12 ms to about 2 ms (examples/render-bench.rs,
//! docs/performance.md). The output is what the crate's `gather()` and
//! `TextEncoder` printed: families sorted by name, samples by label values, the
//! same escaping and number formatting (the golden test holds it). The crate
//! still provides the process metrics and the type names.

pub mod agent;
pub mod copyup;
pub mod http;
pub mod mounts;
pub mod process;
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

impl Histogram {
    /// The index of the bucket whose upper boundary is `bound`, if it is one.
    pub fn boundary_index(schema: i32, bound: f64) -> Option<i32> {
        let i = bound.log2() * f64::from(1u32 << schema.clamp(0, 8));
        let r = i.round();
        ((i - r).abs() < 1e-9 && r.is_finite()).then_some(r as i32)
    }

    /// Cumulative counts at `bounds` (ascending; each must be a bucket boundary:
    /// see `boundary_index`; one that is not counts up to the boundary below it).
    pub fn classic(&self, bounds: &[f64]) -> Vec<(f64, u64)> {
        let scale = f64::from(1u32 << self.schema.clamp(0, 8));
        let mut out = Vec::with_capacity(bounds.len());
        let (mut acc, mut next) = (self.zero_count, self.buckets.iter().peekable());
        for &le in bounds {
            let top = Self::boundary_index(self.schema, le).unwrap_or((le.log2() * scale).floor() as i32);
            while let Some((_, n)) = next.next_if(|(i, _)| *i <= top) {
                acc += n;
            }
            out.push((le, acc));
        }
        out
    }
}

/// One metric family, built at collect time as text in one buffer.
pub struct Family {
    def: &'static Def,
    /// Each sample's sort key (label values joined by NUL) followed by its lines.
    buf: String,
    /// (key start, key end = lines start, lines end) in `buf`; sorted at render time.
    rows: Vec<(usize, usize, usize)>,
}

impl Family {
    pub fn new(def: &'static Def) -> Self {
        Family { def, buf: String::new(), rows: Vec::new() }
    }

    pub fn name(&self) -> &'static str {
        self.def.name
    }

    fn push_key(&mut self, values: &[&str]) -> usize {
        debug_assert_eq!(values.len(), self.def.labels.len(), "{}", self.def.name);
        let start = self.buf.len();
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.buf.push('\0');
            }
            self.buf.push_str(v);
        }
        start
    }

    /// `name<suffix>{labels[,extra]} value\n`
    fn line(&mut self, suffix: &str, values: &[&str], extra: Option<(&str, &str)>, value: f64) {
        let out = &mut self.buf;
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

    /// Adds a histogram sample: cumulative counts per upper bound (the +Inf
    /// bucket is added from `count`).
    pub fn add_histogram(&mut self, values: &[&str], buckets: &[(f64, u64)], count: u64, sum: f64) {
        let start = self.push_key(values);
        let key_end = self.buf.len();
        for (le, n) in buckets {
            self.line("_bucket", values, Some(("le", &le.to_string())), *n as f64);
        }
        self.line("_bucket", values, Some(("le", "+Inf")), count as f64);
        self.line("_sum", values, None, sum);
        self.line("_count", values, None, count as f64);
        self.rows.push((start, key_end, self.buf.len()));
    }

    /// Adds a kernel histogram. In the text format it is the classic histogram
    /// at `classic` bounds; without bounds it has no text form and is left out.
    pub fn add_kernel_histogram(&mut self, values: &[&str], h: &Histogram, classic: Option<&[f64]>) {
        if let Some(bounds) = classic {
            self.add_histogram(values, &h.classic(bounds), h.count, h.sum);
        }
    }

    /// Adds a sample; `values` are the label values in the order of `def.labels`.
    pub fn add(&mut self, values: &[&str], value: f64) {
        let start = self.push_key(values);
        let key_end = self.buf.len();
        self.line("", values, None, value);
        self.rows.push((start, key_end, self.buf.len()));
    }

    /// Appends HELP, TYPE and the samples (none when the family is empty).
    fn write(mut self, out: &mut String) {
        if self.rows.is_empty() {
            return;
        }
        let buf = &self.buf;
        self.rows.sort_unstable_by(|a, b| buf[a.0..a.1].cmp(&buf[b.0..b.1]));
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
        for (_, key_end, end) in &self.rows {
            out.push_str(&buf[*key_end..*end]);
        }
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
        let mut families: Vec<Family> = {
            let collectors = self.collectors.read_now();
            collectors.iter().flat_map(|c| c.collect()).collect()
        };
        families.sort_by_key(|f| f.name());
        let hint = self.last_len.load(std::sync::atomic::Ordering::Relaxed);
        let mut out = String::with_capacity(hint + hint / 8);
        for f in families {
            f.write(&mut out);
        }
        let mut buf = out.into_bytes();
        // process_* sort after overlayfs_*; TextEncoder only fails on an empty
        // family, which the process collector does not produce.
        if let Err(e) = TextEncoder::new().encode(&self.process.collect(), &mut buf) {
            tracing::error!(error = %e, "encoding the process metrics failed");
        }
        self.last_len.store(buf.len(), std::sync::atomic::Ordering::Relaxed);
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
        f.write(&mut out);
        assert!(out.contains("t_seconds_bucket{c=\"x\",le=\"4\"} 17\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{c=\"x\",le=\"+Inf\"} 24\n"), "{out}");
        assert!(!out.contains("native-only"), "no text form without classic bounds: {out}");
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
