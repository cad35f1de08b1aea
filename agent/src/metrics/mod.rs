//! Exposition: one collector per source, all reading snapshots that discovery and
//! the scan pool publish; nothing here does I/O on the request path.

pub mod agent;
pub mod copyup;
pub mod mounts;
pub mod process;
pub mod upper;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};

/// The Content-Type of the text exposition format, as Prometheus 2 and 3 accept it.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric definition: the one place a name, its help and its labels are spelled.
pub struct Def {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricType,
    pub labels: &'static [&'static str],
}

impl Def {
    fn desc(&self) -> Desc {
        let labels = self.labels.iter().map(|l| (*l).to_owned()).collect();
        // Names and labels are compile-time constants covered by tests.
        Desc::new(self.name.to_owned(), self.help.to_owned(), labels, Default::default())
            .unwrap_or_else(|e| panic!("invalid metric definition {}: {e}", self.name))
    }
}

/// Descs for a collector's definitions.
pub fn descs(defs: &[&Def]) -> Vec<Desc> {
    defs.iter().map(|d| d.desc()).collect()
}

/// Builds one metric family at collect time.
pub struct Family {
    def: &'static Def,
    metrics: Vec<Metric>,
}

impl Family {
    pub fn new(def: &'static Def) -> Self {
        Family { def, metrics: Vec::new() }
    }

    fn labels(&self, values: &[&str]) -> Vec<LabelPair> {
        debug_assert_eq!(values.len(), self.def.labels.len(), "{}", self.def.name);
        self.def
            .labels
            .iter()
            .zip(values)
            .map(|(n, v)| {
                let mut lp = LabelPair::default();
                lp.set_name((*n).to_owned());
                lp.set_value((*v).to_owned());
                lp
            })
            .collect()
    }

    /// Adds a histogram sample: cumulative counts per upper bound (without +Inf,
    /// which the encoder adds from `count`).
    pub fn add_histogram(&mut self, values: &[&str], buckets: &[(f64, u64)], count: u64, sum: f64) {
        let mut h = Histogram::default();
        h.set_sample_count(count);
        h.set_sample_sum(sum);
        h.set_bucket(
            buckets
                .iter()
                .map(|(le, n)| {
                    let mut b = Bucket::default();
                    b.set_upper_bound(*le);
                    b.set_cumulative_count(*n);
                    b
                })
                .collect(),
        );
        let mut m = Metric::from_label(self.labels(values));
        m.set_histogram(h);
        self.metrics.push(m);
    }

    /// Adds a sample; `values` are the label values in the order of `def.labels`.
    pub fn add(&mut self, values: &[&str], value: f64) {
        let mut m = Metric::from_label(self.labels(values));
        match self.def.kind {
            MetricType::COUNTER => {
                let mut c = Counter::default();
                c.set_value(value);
                m.set_counter(c);
            }
            _ => {
                let mut g = Gauge::default();
                g.set_value(value);
                m.set_gauge(g);
            }
        }
        self.metrics.push(m);
    }

    pub fn finish(self) -> MetricFamily {
        let mut mf = MetricFamily::default();
        mf.set_name(self.def.name.to_owned());
        mf.set_help(self.def.help.to_owned());
        mf.set_field_type(self.def.kind);
        mf.set_metric(self.metrics);
        mf
    }
}

/// Renders everything registered in the text format.
pub fn render(registry: &Registry) -> Vec<u8> {
    let mut buf = Vec::with_capacity(16 * 1024);
    // TextEncoder only fails on an empty family, which gather() has pruned, or
    // on a write error, which a Vec does not have.
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut buf) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    buf
}

/// Registers a collector, logging instead of failing on a duplicate.
pub fn register(registry: &Registry, c: Box<dyn Collector>) {
    if let Err(e) = registry.register(c) {
        tracing::error!(error = %e, "registering a collector failed");
    }
}

/// Seconds since the Unix epoch.
pub fn unix_seconds(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}
