//! The delimited protobuf exposition format (`io.prometheus.client.MetricFamily`,
//! its messages in `wire`), where a kernel `NativeHistogram` is a native
//! histogram (schema, zero bucket, spans and deltas), with its classic buckets
//! where the source gives classic bounds. Each family is encoded as it is read
//! from the model, without the prometheus crate's object model.
//!
//! Why prost rather than a client library: the prometheus crate's proto (0.14)
//! predates native histograms (no schema, spans or deltas), and
//! prometheus-client's protobuf is the OpenMetrics data model
//! (`openmetrics.MetricSet`), which Prometheus does not scrape.

mod sample;
mod wire;

use prometheus::core::Collector as _;
// The kind of a `Def` (the wire's own enum is `MetricType`).
use prometheus::proto::MetricType as DefKind;

pub use wire::{
    Bucket, BucketSpan, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType, Untyped,
};

use crate::metrics::{Family, HistSample, Value};
use sample::Sample;

/// `Accept` media type and `Content-Type` of the delimited protobuf exposition.
pub const CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// The zero bucket's threshold: 2^-128, client_golang's default. Every real
/// observation is at least 1 ns or 1 byte, so the zero bucket still holds the
/// exact zeros only. Not 0: Prometheus tells a native histogram from a classic
/// one by a positive threshold, a zero count or a span, and an empty one has
/// only the no-op span to show, which not every reader counts (prometheus#12584,
/// 2.46). Measured: Prometheus 2.42 stores the fixture's empty histograms as
/// native with either threshold (tests/prometheus/native.rs), so the threshold is a
/// second marker, the one client_golang writes.
pub const ZERO_THRESHOLD: f64 = 2.938_735_877_055_719e-39;

/// The native part of a histogram: spans and deltas of `buckets` ((index,
/// count), ascending by index without duplicates, non-cumulative: see
/// `NativeHistogram::normalise`; empty buckets are skipped). A histogram without
/// observations gets a no-op span (offset 0, length 0) and, with
/// `ZERO_THRESHOLD`, is still told from a classic histogram.
pub fn native_buckets(buckets: &[(i32, u64)]) -> (Vec<BucketSpan>, Vec<i64>) {
    let mut spans: Vec<BucketSpan> = Vec::new();
    let mut deltas = Vec::with_capacity(buckets.len());
    let (mut prev_index, mut prev_count) = (None::<i32>, 0i64);
    for &(index, count) in buckets.iter().filter(|(_, n)| *n > 0) {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        match (prev_index, spans.last_mut()) {
            (Some(p), Some(last)) if index == p.saturating_add(1) => last.length += 1,
            (Some(p), _) => {
                spans.push(BucketSpan { offset: index.saturating_sub(p).saturating_sub(1), length: 1 })
            }
            (None, _) => spans.push(BucketSpan { offset: index, length: 1 }),
        }
        deltas.push(count.saturating_sub(prev_count));
        (prev_index, prev_count) = (Some(index), count);
    }
    if spans.is_empty() {
        spans.push(BucketSpan { offset: 0, length: 0 });
    }
    (spans, deltas)
}

/// Writes the families (sorted by name), then the process metrics.
pub(in crate::metrics) fn render(
    families: Vec<Family>,
    process: &prometheus::process_collector::ProcessCollector,
    hint: usize,
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(hint / 2);
    let mut scratch = Vec::new();
    for f in families {
        f.write_proto(&mut buf, &mut scratch);
    }
    for f in process_proto(&process.collect()) {
        // Writing into a Vec only fails when it cannot grow.
        if let Err(e) = prost::Message::encode_length_delimited(&f, &mut buf) {
            tracing::error!(error = %e, family = f.name, "encoding a family failed");
        }
    }
    buf
}

impl Family {
    /// Appends the family as one delimited protobuf `MetricFamily` (nothing
    /// when empty). Each metric is written into `scratch` straight from the
    /// row's borrowed label values (`sample`): no allocation per sample but for
    /// histograms (owned label strings per sample made the prometheus crate's
    /// model cost 3x the text, docs/performance.md).
    pub(in crate::metrics) fn write_proto(mut self, out: &mut Vec<u8>, scratch: &mut Vec<u8>) {
        if self.rows.is_empty() {
            return;
        }
        self.sort();
        let kind = match self.def.kind {
            DefKind::COUNTER => MetricType::Counter,
            DefKind::HISTOGRAM => MetricType::Histogram,
            DefKind::SUMMARY => MetricType::Summary,
            DefKind::UNTYPED => MetricType::Untyped,
            _ => MetricType::Gauge,
        };
        scratch.clear();
        let header = MetricFamily {
            name: self.def.name.to_owned(),
            help: self.def.help.to_owned(),
            r#type: kind as i32,
            metric: Vec::new(),
        };
        // Encoding into a Vec cannot run out of room; the fields of a message
        // are its encoding, so the metrics (field 4) can follow the header.
        let _ = prost::Message::encode(&header, scratch);
        let mut labels: Vec<(&str, &str)> = Vec::with_capacity(self.def.labels.len());
        for row in &self.rows {
            labels.clear();
            let values = self.def.labels.iter().copied().zip(self.values(row));
            labels.extend(values.filter(|(n, v)| super::super::written(n, v)));
            let hist;
            let value = match (&row.value, kind) {
                (Value::Plain(v), MetricType::Counter) => Sample::Counter(*v),
                (Value::Plain(v), MetricType::Untyped) => Sample::Untyped(*v),
                (Value::Plain(v), _) => Sample::Gauge(*v),
                (Value::Hist(i), _) => match self.hists.get(*i as usize) {
                    Some(h) => {
                        hist = histogram_proto(h);
                        Sample::Histogram(&hist)
                    }
                    None => continue,
                },
            };
            sample::write(scratch, &labels, &value);
        }
        prost::encoding::encode_varint(scratch.len() as u64, out);
        out.extend_from_slice(scratch);
    }
}

fn histogram_proto(h: &HistSample) -> Histogram {
    let classic = |buckets: &[(f64, u64)]| {
        buckets.iter().map(|(le, n)| Bucket { cumulative_count: *n, upper_bound: *le }).collect()
    };
    match h {
        HistSample::Classic(buckets, count, sum) => Histogram {
            sample_count: *count,
            sample_sum: *sum,
            bucket: classic(buckets),
            ..Default::default()
        },
        HistSample::Kernel(h, bounds) => {
            let (positive_span, positive_delta) = native_buckets(&h.buckets);
            Histogram {
                sample_count: h.count,
                sample_sum: h.sum,
                bucket: bounds.as_deref().map(|b| classic(&h.classic(b))).unwrap_or_default(),
                schema: h.schema,
                zero_threshold: ZERO_THRESHOLD,
                zero_count: h.zero_count,
                positive_span,
                positive_delta,
            }
        }
    }
}

/// Process metrics of the prometheus crate, as protobuf messages.
fn process_proto(families: &[prometheus::proto::MetricFamily]) -> Vec<MetricFamily> {
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
                        .map(|l| LabelPair { name: l.name().to_owned(), value: l.value().to_owned() })
                        .collect();
                    let mut out = Metric { label, ..Default::default() };
                    match kind {
                        DefKind::COUNTER => {
                            out.counter = Some(Counter { value: m.get_counter().get_value() })
                        }
                        _ => out.gauge = Some(Gauge { value: m.get_gauge().get_value() }),
                    }
                    out
                })
                .collect();
            MetricFamily {
                name: f.name().to_owned(),
                help: f.help().to_owned(),
                r#type: if kind == DefKind::COUNTER { MetricType::Counter } else { MetricType::Gauge } as i32,
                metric,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
