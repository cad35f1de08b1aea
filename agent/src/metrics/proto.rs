//! The Prometheus protobuf exposition format (`io.prometheus.client`), as prost
//! messages derived by hand from the official `metrics.proto`
//! (prometheus/client_model `io/prometheus/client/metrics.proto`, the copy
//! Prometheus itself parses: prompb/io/prometheus/client/metrics.proto). Field
//! numbers are that file's; no protoc at build time. Only the fields this agent
//! writes are declared (exemplars, timestamps, float counts and summaries are
//! left out: an unknown field is never written, and prost skips it on decode).
//!
//! Why prost rather than a client library: the prometheus crate's proto (0.14)
//! predates native histograms (no schema, spans or deltas), and
//! prometheus-client's protobuf is the OpenMetrics data model
//! (`openmetrics.MetricSet`), which Prometheus does not scrape.
//!
//! Scalars are proto3-style (written when not zero), as Prometheus' own copy
//! declares them; a reader of the proto2 original gets the same defaults.

/// `Accept` media type and `Content-Type` of the delimited protobuf exposition.
pub const CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// `enum MetricType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum MetricType {
    Counter = 0,
    Gauge = 1,
    Summary = 2,
    Untyped = 3,
    Histogram = 4,
    GaugeHistogram = 5,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelPair {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Gauge {
    #[prost(double, tag = "1")]
    pub value: f64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Counter {
    #[prost(double, tag = "1")]
    pub value: f64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Untyped {
    #[prost(double, tag = "1")]
    pub value: f64,
}

/// A classic bucket: cumulative count of observations <= upper_bound.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Bucket {
    #[prost(uint64, tag = "1")]
    pub cumulative_count: u64,
    #[prost(double, tag = "2")]
    pub upper_bound: f64,
}

/// `length` consecutive native buckets, `offset` after the previous span (or
/// starting at index `offset`, for the first).
#[derive(Clone, PartialEq, prost::Message)]
pub struct BucketSpan {
    #[prost(sint32, tag = "1")]
    pub offset: i32,
    #[prost(uint32, tag = "2")]
    pub length: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Histogram {
    #[prost(uint64, tag = "1")]
    pub sample_count: u64,
    #[prost(double, tag = "2")]
    pub sample_sum: f64,
    /// Classic buckets, ascending; the +Inf bucket is optional (left out).
    #[prost(message, repeated, tag = "3")]
    pub bucket: Vec<Bucket>,
    #[prost(sint32, tag = "5")]
    pub schema: i32,
    #[prost(double, tag = "6")]
    pub zero_threshold: f64,
    #[prost(uint64, tag = "7")]
    pub zero_count: u64,
    #[prost(message, repeated, tag = "12")]
    pub positive_span: Vec<BucketSpan>,
    /// Each bucket's count minus the previous bucket's (the first: minus 0).
    #[prost(sint64, repeated, tag = "13")]
    pub positive_delta: Vec<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    #[prost(message, repeated, tag = "1")]
    pub label: Vec<LabelPair>,
    #[prost(message, optional, tag = "2")]
    pub gauge: Option<Gauge>,
    #[prost(message, optional, tag = "3")]
    pub counter: Option<Counter>,
    #[prost(message, optional, tag = "5")]
    pub untyped: Option<Untyped>,
    #[prost(message, optional, tag = "7")]
    pub histogram: Option<Histogram>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricFamily {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub help: String,
    #[prost(enumeration = "MetricType", tag = "3")]
    pub r#type: i32,
    #[prost(message, repeated, tag = "4")]
    pub metric: Vec<Metric>,
}

/// The zero bucket's threshold: 2^-128, client_golang's default. Every real
/// observation is at least 1 ns or 1 byte, so the zero bucket still holds the
/// exact zeros only. Not 0: Prometheus tells a native histogram from a classic
/// one by a positive threshold, a zero count or a span, and an empty one has
/// only the no-op span to show, which not every reader counts (prometheus#12584,
/// 2.46). Measured: Prometheus 2.42 stores the fixture's empty histograms as
/// native with either threshold (tests/prometheus.rs), so the threshold is a
/// second marker, the one client_golang writes.
pub const ZERO_THRESHOLD: f64 = 2.938_735_877_055_719e-39;

/// The native part of a histogram: spans and deltas of `buckets` ((index,
/// count), ascending by index without duplicates, non-cumulative: see
/// `Histogram::normalise`; empty buckets are skipped). A histogram without
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_deltas() {
        let (spans, deltas) = native_buckets(&[(-3, 2), (-2, 5), (0, 0), (1, 1), (2, 4), (10, 4)]);
        assert_eq!(
            spans,
            vec![
                BucketSpan { offset: -3, length: 2 },
                BucketSpan { offset: 2, length: 2 },
                BucketSpan { offset: 7, length: 1 }
            ]
        );
        assert_eq!(deltas, vec![2, 3, -4, 3, 0]);
        let (spans, deltas) = native_buckets(&[]);
        assert_eq!(spans, vec![BucketSpan { offset: 0, length: 0 }], "no-op span when empty");
        assert!(deltas.is_empty());
    }
}
