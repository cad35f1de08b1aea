//! The protobuf encoder's tests: spans and deltas, the exposition decoded with
//! prost, and the kernel histograms' normalisation and schemas as served.

use super::*;
use crate::metrics::fixtures::{decode_all, WithKernel, G, H};
use crate::metrics::{Exposition, Format, NativeHistogram};

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

/// Per-CPU reads racing copy-ups: a count that disagrees with the buckets,
/// unsorted and duplicate indices. Both formats serve the count of the
/// buckets (Prometheus rejects the whole scrape otherwise) and sorted,
/// merged buckets (no negative span offsets).
#[test]
fn inconsistent_kernel_histograms_are_normalised() {
    let racy = NativeHistogram {
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
    assert_eq!(NativeHistogram::boundary_index(-1, 16.0), Some(2));
    assert_eq!(NativeHistogram::boundary_index(-1, 2.0), None);
    assert_eq!(NativeHistogram::boundary_index(-4, 65536.0), Some(1));
    let h = NativeHistogram { schema: -1, zero_count: 0, buckets: vec![(1, 2), (2, 1)], count: 3, sum: 20.0 };
    assert_eq!(h.classic(&[4.0, 16.0]), [(4.0, 2), (16.0, 3)]);
    let mut f = Family::new(&H);
    f.add_kernel_histogram(&["neg"], &h, None);
    f.add_kernel_histogram(&["nine"], &NativeHistogram { schema: 9, ..h.clone() }, Some(&[4.0, 16.0]));
    f.add_kernel_histogram(&["nine-native-only"], &NativeHistogram { schema: 9, ..h.clone() }, None);
    let mut pb = Vec::new();
    f.write_proto(&mut pb, &mut Vec::new());
    let fam = decode_all(&pb);
    let by = |c: &str| fam[0].metric.iter().find(|m| m.label[0].value == c).and_then(|m| m.histogram.clone());
    assert_eq!(by("neg").map(|h| h.schema), Some(-1));
    let nine = by("nine").expect("classic form kept");
    assert!(nine.positive_span.is_empty() && nine.schema == 0 && nine.zero_threshold == 0.0, "{nine:?}");
    assert_eq!(nine.bucket.len(), 2);
    assert!(by("nine-native-only").is_none(), "nothing to serve without classic bounds");
}

#[test]
fn zero_threshold_is_two_to_the_minus_128() {
    assert_eq!(ZERO_THRESHOLD, 2f64.powi(-128));
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
    assert_eq!(cpu.r#type, MetricType::Counter as i32);
    assert!(cpu.metric[0].counter.is_some());

    let total = fam("t_total");
    assert_eq!((total.r#type, total.help.as_str()), (MetricType::Counter as i32, "n"));
    assert_eq!(total.metric[0].counter.as_ref().map(|c| c.value), Some(7.0));

    let g = fam("t_gauge");
    assert_eq!(g.r#type, MetricType::Gauge as i32);
    assert_eq!(g.help, G.help, "help unescaped in protobuf");
    let labels = |m: &Metric| -> Vec<(String, String)> {
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
    assert_eq!(k.r#type, MetricType::Histogram as i32);
    let by =
        |c: &str| k.metric.iter().find(|m| m.label[0].value == c).and_then(|m| m.histogram.clone()).expect(c);
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
    assert_eq!(empty.positive_span, [BucketSpan { offset: 0, length: 0 }], "no-op span");
    assert!(fam("t_empty").metric[0].histogram.is_some(), "native-only family kept in protobuf");

    let text = String::from_utf8(e.render()).expect("utf8");
    assert!(text.contains("t_kernel_seconds_bucket{cause=\"write\",le=\"4\"} 17\n"), "{text}");
    assert!(!text.contains("cause=\"open\""), "{text}");
    assert!(!text.contains("t_empty"), "a family with no text form has no HELP either: {text}");
}

/// `mntns` is left out where it is empty (host mounts keep their label sets)
/// and written where it is not, in both formats; the label after it still follows.
#[test]
fn an_empty_mount_namespace_label_is_left_out() {
    static D: crate::metrics::Def = crate::metrics::Def {
        name: "m_total",
        help: "m",
        kind: prometheus::proto::MetricType::COUNTER,
        labels: &["mountpoint", "mntns", "cause"],
    };
    struct Two;
    impl crate::metrics::Collector for Two {
        fn collect(&self) -> Vec<Family> {
            let mut f = Family::new(&D);
            f.add(&["/merged", "", "chown"], 1.0);
            f.add(&["/merged", "4026532174", "chown"], 2.0);
            f.add(&["/next", "", "open"], 3.0);
            vec![f]
        }
    }
    let e = Exposition::default();
    e.register(Box::new(Two));
    let text = String::from_utf8(e.render_as(Format::Text)).expect("utf8");
    assert!(text.contains("m_total{mountpoint=\"/merged\",cause=\"chown\"} 1\n"), "{text}");
    assert!(
        text.contains("m_total{mountpoint=\"/merged\",mntns=\"4026532174\",cause=\"chown\"} 2\n"),
        "{text}"
    );
    assert!(text.contains("m_total{mountpoint=\"/next\",cause=\"open\"} 3\n"), "{text}");
    let fams = decode_all(&e.render_as(Format::Protobuf));
    let f = fams.iter().find(|f| f.name == "m_total").expect("family");
    let sets: Vec<Vec<(String, String)>> = f
        .metric
        .iter()
        .map(|m| m.label.iter().map(|l| (l.name.clone(), l.value.clone())).collect())
        .collect();
    let pair = |n: &str, v: &str| (n.to_owned(), v.to_owned());
    assert!(sets.contains(&vec![pair("mountpoint", "/merged"), pair("cause", "chown")]), "{sets:?}");
    assert!(sets.contains(&vec![
        pair("mountpoint", "/merged"),
        pair("mntns", "4026532174"),
        pair("cause", "chown")
    ]));
    assert!(sets.contains(&vec![pair("mountpoint", "/next"), pair("cause", "open")]), "{sets:?}");
}
