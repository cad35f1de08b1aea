//! One `Metric` message (field 4 of a `MetricFamily`), written from borrowed
//! label values: the bytes prost writes for the same `wire::Metric`, without
//! first copying each label name and value into an owned `String` of it.
//!
//! At 10,000 mounts a protobuf render writes 240,000 metrics. Filling a reused
//! `wire::Metric` cost a copy of every label value into it, the message's length
//! walk and its encoding, and a clone of its label list for every row after one
//! that left an empty `mntns` out (every host mount): with the static binary's
//! musl allocator and `memcpy`, 200-280 ms per render against 71-76 ms with
//! glibc (docs/performance.md). prost still writes the family's header, the
//! histograms and every varint; the tests compare each byte with prost's.

use prost::encoding::{encode_varint, encoded_len_varint};

use super::wire::Histogram;
use crate::metrics::encode::append;

/// Wire types of a field key.
const LEN: u8 = 2;
const I64: u8 = 1;

/// Field numbers: `MetricFamily.metric`, `Metric.label`, `LabelPair.name` and
/// `.value`, and the `value` of `Gauge`, `Counter` and `Untyped` (the value
/// fields of `Metric` itself: [`Sample::tag`]).
const FAMILY_METRIC: u8 = 4;
const METRIC_LABEL: u8 = 1;
const LABEL_NAME: u8 = 1;
const LABEL_VALUE: u8 = 2;
const DOUBLE_VALUE: u8 = 1;

/// A sample's value, as the `Metric` field it goes in.
pub enum Sample<'a> {
    Gauge(f64),
    Counter(f64),
    Untyped(f64),
    Histogram(&'a Histogram),
}

impl Sample<'_> {
    /// The `Metric` field number.
    fn tag(&self) -> u8 {
        match self {
            Sample::Gauge(_) => 2,
            Sample::Counter(_) => 3,
            Sample::Untyped(_) => 5,
            Sample::Histogram(_) => 7,
        }
    }

    /// The length of its field, key included.
    fn field_len(&self) -> usize {
        match self {
            Sample::Histogram(h) => prost::encoding::message::encoded_len(self.tag().into(), *h),
            Sample::Gauge(v) | Sample::Counter(v) | Sample::Untyped(v) => 2 + double_len(*v),
        }
    }
}

/// The length of a `Gauge`/`Counter`/`Untyped` body: its `double value = 1`,
/// left out when zero (proto3 scalars, as `wire` declares them).
fn double_len(v: f64) -> usize {
    if v != 0.0 {
        9
    } else {
        0
    }
}

fn key(out: &mut Vec<u8>, tag: u8, wire: u8) {
    out.push(tag << 3 | wire);
}

/// The length of a string field (key, length, bytes); an empty one is left out.
fn string_len(s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        1 + encoded_len_varint(s.len() as u64) + s.len()
    }
}

fn string(out: &mut Vec<u8>, tag: u8, s: &str) {
    if !s.is_empty() {
        key(out, tag, LEN);
        encode_varint(s.len() as u64, out);
        append::bytes(out, s.as_bytes());
    }
}

/// Appends `MetricFamily.metric` (field 4): a `Metric` with `labels` (name,
/// value; those to leave out are already left out) and the sample.
pub fn write(out: &mut Vec<u8>, labels: &[(&str, &str)], sample: &Sample<'_>) {
    let pair_len = |(n, v): &(&str, &str)| string_len(n) + string_len(v);
    let labels_len: usize = labels.iter().map(pair_len).map(|n| 1 + encoded_len_varint(n as u64) + n).sum();
    key(out, FAMILY_METRIC, LEN);
    encode_varint((labels_len + sample.field_len()) as u64, out);
    for l in labels {
        key(out, METRIC_LABEL, LEN);
        encode_varint(pair_len(l) as u64, out);
        string(out, LABEL_NAME, l.0);
        string(out, LABEL_VALUE, l.1);
    }
    match sample {
        Sample::Histogram(h) => prost::encoding::message::encode(sample.tag().into(), *h, out),
        Sample::Gauge(v) | Sample::Counter(v) | Sample::Untyped(v) => {
            key(out, sample.tag(), LEN);
            out.push(double_len(*v) as u8);
            if *v != 0.0 {
                key(out, DOUBLE_VALUE, I64);
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::encode::proto::wire::{
        Bucket, BucketSpan, Counter, Gauge, LabelPair, Metric, Untyped,
    };

    fn prost_bytes(labels: &[(&str, &str)], sample: &Sample<'_>) -> Vec<u8> {
        let mut m = Metric {
            label: labels
                .iter()
                .map(|(n, v)| LabelPair { name: (*n).to_owned(), value: (*v).to_owned() })
                .collect(),
            ..Default::default()
        };
        match sample {
            Sample::Gauge(v) => m.gauge = Some(Gauge { value: *v }),
            Sample::Counter(v) => m.counter = Some(Counter { value: *v }),
            Sample::Untyped(v) => m.untyped = Some(Untyped { value: *v }),
            Sample::Histogram(h) => m.histogram = Some((*h).clone()),
        }
        let mut out = Vec::new();
        prost::encoding::message::encode(4, &m, &mut out);
        out
    }

    /// Byte for byte what prost writes: no labels, empty values, names and
    /// values whose lengths take one or two varint bytes, messages past 127
    /// bytes, zero, negative zero, NaN and infinities, and a histogram.
    #[test]
    fn writes_the_bytes_prost_writes() {
        let long = "/var/lib/containers/storage/overlay/".repeat(5);
        let h = Histogram {
            sample_count: 24,
            sample_sum: 1.5,
            bucket: vec![Bucket { cumulative_count: 3, upper_bound: 0.25 }],
            schema: 3,
            zero_threshold: 2.9e-39,
            zero_count: 1,
            positive_span: vec![BucketSpan { offset: -4, length: 2 }],
            positive_delta: vec![2, -1],
        };
        let empty = Histogram::default();
        let label_sets: [&[(&str, &str)]; 5] = [
            &[],
            &[("mountpoint", "/merged")],
            &[("mountpoint", "/merged"), ("cause", "")],
            &[("mountpoint", long.as_str()), ("mntns", "4026532174"), ("kind", "whiteout")],
            &[("", "x"), ("reason", long.as_str())],
        ];
        let values = [0.0, -0.0, 1.0, -2.5e-7, 1e300, f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
        for labels in label_sets {
            let mut samples: Vec<Sample<'_>> = Vec::new();
            for v in values {
                samples.extend([Sample::Gauge(v), Sample::Counter(v), Sample::Untyped(v)]);
            }
            samples.push(Sample::Histogram(&h));
            samples.push(Sample::Histogram(&empty));
            for s in &samples {
                let mut ours = vec![7u8];
                write(&mut ours, labels, s);
                let mut theirs = vec![7u8];
                theirs.extend(prost_bytes(labels, s));
                assert_eq!(ours, theirs, "{labels:?} {:?}", s.tag());
            }
        }
    }
}
