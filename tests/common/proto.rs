//! The protobuf exposition (delimited MetricFamily messages, what Prometheus
//! with native histograms asks for): decoding, and native buckets as counts.

use overlay_agent::metrics::encode::proto::{Histogram, MetricFamily};

/// Every MetricFamily of a delimited protobuf exposition.
pub fn decode(mut buf: &[u8]) -> Result<Vec<MetricFamily>, prost::DecodeError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        out.push(prost::Message::decode_length_delimited(&mut buf)?);
    }
    Ok(out)
}

/// A native histogram's buckets as (index, count): indices from the spans,
/// absolute counts from the deltas; None when there are fewer deltas than the
/// spans' buckets.
pub fn native_buckets(h: &Histogram) -> Option<Vec<(i32, i64)>> {
    let (mut index, mut count, mut out) = (0i32, 0i64, Vec::new());
    let mut deltas = h.positive_delta.iter();
    for (i, span) in h.positive_span.iter().enumerate() {
        index += span.offset + if i == 0 { 0 } else { 1 };
        for j in 0..span.length {
            count += deltas.next()?;
            out.push((index + j as i32, count));
        }
        index += span.length as i32 - 1;
    }
    Some(out)
}
