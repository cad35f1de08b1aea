//! The native-histogram replay fixture (tests/fixtures/native/): one agent
//! exposition in both formats, `exposition.pb` (delimited protobuf, native
//! histograms with their classic buckets) and `exposition.prom` (text), which
//! tests/prometheus/native.rs serves to a real Prometheus.
//!
//! The fixture is synthetic, for what a guest run does not produce (empty
//! histograms, observations at known places); a real guest's capture in both
//! formats is tests/fixtures/native/guest-6.1.*, checked by tests/guest (exact_counts). It
//! is built from an older QEMU guest's text capture
//! (tests/fixtures/qemu-6.1-metrics.prom, kernel 6.1): counters and gauges as
//! captured, and each classic histogram turned into a schema-3 native one whose
//! observations sit at its classic bounds rounded to a power of two of the
//! base unit (a native boundary; that guest's 2^10 ns is not one in seconds).
//! Counts and sums are the guest's. That guest ran without per-mount
//! histograms: the fixture's per-mount ones are the by-cause histograms of the
//! causes that only one mount had (8 of 10), under that mount. Regenerate with
//!
//!     UPDATE_NATIVE_FIXTURE=1 cargo test --test native
//!
//! Without the variable, the test renders the fixture again and compares the
//! bytes with the committed files (process metrics left out), so a change to
//! either encoder fails; and it checks the committed files agree with each
//! other: every family, label set and value, classic buckets, and native
//! buckets that sum to the count and fold into the classic buckets. One
//! per-mount histogram per family has no observations (`/t/b/merged`, `xattr`).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::{Metrics, Sample};
use overlay_agent::metrics::encode::proto;
use overlay_agent::metrics::{Collector, Def, Exposition, Family, Format, NativeHistogram};
use prometheus::proto::MetricType;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name)
}

/// A classic histogram sample: buckets (le, cumulative), sum, count.
type Classic = (Vec<(f64, u64)>, f64, u64);

struct Parsed {
    def: &'static Def,
    /// Plain samples: label values, value.
    plain: Vec<(Vec<String>, f64)>,
    /// Histograms by label values: classic buckets (le, cumulative), sum, count.
    hists: BTreeMap<Vec<String>, Classic>,
}

/// The families of a text exposition (process_* left out: the exposition
/// rendering the fixture adds its own).
fn parse(text: &str) -> Vec<Parsed> {
    let mut out: Vec<Parsed> = Vec::new();
    for fam in Metrics::parse(text).families {
        let kind = match fam.kind.as_str() {
            "counter" => MetricType::COUNTER,
            "histogram" => MetricType::HISTOGRAM,
            _ => MetricType::GAUGE,
        };
        let names = |s: &Sample| -> Vec<String> {
            s.labels.iter().map(|(k, _)| k.clone()).filter(|k| k != "le").collect()
        };
        let labels: Vec<&'static str> = fam
            .samples
            .iter()
            .map(names)
            .find(|n| !n.is_empty())
            .unwrap_or_default()
            .into_iter()
            .map(|n| &*n.leak())
            .collect();
        let def = Def { name: fam.name.leak(), help: fam.help.leak(), kind, labels: labels.leak() };
        let mut p = Parsed { def: Box::leak(Box::new(def)), plain: Vec::new(), hists: BTreeMap::new() };
        for s in &fam.samples {
            add_sample(&mut p, s);
        }
        out.push(p);
    }
    out.retain(|f| !f.def.name.starts_with("process_"));
    out
}

/// One sample into its family: a plain value, or a histogram's bucket, sum or count.
fn add_sample(fam: &mut Parsed, s: &Sample) {
    let values: Vec<String> = s.labels.iter().filter(|(k, _)| k != "le").map(|(_, v)| v.clone()).collect();
    if fam.def.kind != MetricType::HISTOGRAM {
        fam.plain.push((values, s.value));
        return;
    }
    let h = fam.hists.entry(values).or_default();
    match (s.name.strip_prefix(fam.def.name), s.label("le")) {
        (Some("_bucket"), Some("+Inf")) => {}
        (Some("_bucket"), Some(le)) => h.0.push((le.parse().expect("le"), s.value as u64)),
        (Some("_sum"), _) => h.1 = s.value,
        (Some("_count"), _) => h.2 = s.value as u64,
        _ => panic!("unexpected sample {} in {}", s.key, fam.def.name),
    }
}

/// A classic histogram as a schema-3 native one: each bucket's observations at
/// its bound rounded to a power of two; those beyond the last bound one power
/// of four above it. Returns it with the rounded bounds.
fn native_of(buckets: &[(f64, u64)], sum: f64, count: u64) -> (NativeHistogram, Vec<f64>) {
    let mut native = Vec::new();
    let mut bounds = Vec::new();
    let (mut prev, mut last) = (0u64, 0i32);
    for &(le, cum) in buckets {
        let k = le.log2().round() as i32;
        bounds.push(2f64.powi(k));
        if cum > prev {
            native.push((k * 8, cum - prev));
        }
        (prev, last) = (cum, k);
    }
    if count > prev {
        native.push(((last + 2) * 8, count - prev));
    }
    (NativeHistogram { schema: 3, zero_count: 0, buckets: native, count, sum }, bounds)
}

/// Per-mount histograms for the causes only one mount had: the by-cause one.
fn per_mount(families: &[Parsed]) -> Vec<Parsed> {
    let mut mounts: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let copy_ups =
        families.iter().find(|f| f.def.name == "overlayfs_copy_up_total").expect("copy-up counter");
    let (mi, ci) = (
        copy_ups.def.labels.iter().position(|l| *l == "mountpoint").expect("mountpoint"),
        copy_ups.def.labels.iter().position(|l| *l == "cause").expect("cause"),
    );
    for (values, _) in &copy_ups.plain {
        let m = mounts.entry(values[ci].as_str()).or_default();
        if !m.contains(&values[mi].as_str()) {
            m.push(values[mi].as_str());
        }
    }
    let mut out = Vec::new();
    for (by_cause, name, help) in [
        (
            "overlayfs_copy_up_duration_seconds",
            "overlayfs_mount_copy_up_duration_seconds",
            "Time from the start of a copy-up to its end, by mount and cause (ebpf.per_mount_histograms).",
        ),
        (
            "overlayfs_copy_up_bytes",
            "overlayfs_mount_copy_up_bytes",
            "Size of the file data of each data copy-up, by mount and cause (ebpf.per_mount_histograms).",
        ),
    ] {
        let src = families.iter().find(|f| f.def.name == by_cause).expect(by_cause);
        let def = Def { name, help, kind: MetricType::HISTOGRAM, labels: &["mountpoint", "cause"] };
        let hists = src
            .hists
            .iter()
            .filter_map(|(values, h)| match mounts.get(values[0].as_str())?.as_slice() {
                [one] => Some((vec![one.to_string(), values[0].clone()], h.clone())),
                _ => None,
            })
            .collect();
        let mut p = Parsed { def: Box::leak(Box::new(def)), plain: Vec::new(), hists };
        // One histogram without observations (a mount and cause that had
        // none), with the classic bounds of the others: Prometheus must ingest
        // it as a native one too (tests/prometheus/native.rs).
        if let Some((_, (buckets, _, _))) = p.hists.iter().next() {
            let empty = buckets.iter().map(|b| (b.0, 0)).collect();
            let key = vec![EMPTY[0].to_owned(), EMPTY[1].to_owned()];
            assert!(!p.hists.contains_key(&key), "{key:?} has observations");
            p.hists.insert(key, (empty, 0.0, 0));
        }
        out.push(p);
    }
    out
}

/// Mount and cause of the fixture's empty per-mount histograms (that mount
/// had no copy-up of that cause).
const EMPTY: [&str; 2] = ["/t/b/merged", "xattr"];

struct Replay(Vec<Parsed>);

impl Collector for Replay {
    fn collect(&self) -> Vec<Family> {
        self.0
            .iter()
            .map(|p| {
                let mut f = Family::new(p.def);
                for (values, v) in &p.plain {
                    f.add(&values.iter().map(String::as_str).collect::<Vec<_>>(), *v);
                }
                for (values, (buckets, sum, count)) in &p.hists {
                    let (h, bounds) = native_of(buckets, *sum, *count);
                    f.add_kernel_histogram(
                        &values.iter().map(String::as_str).collect::<Vec<_>>(),
                        &h,
                        Some(&bounds),
                    );
                }
                f
            })
            .collect()
    }
}

/// The delimited messages before the first process_* family.
fn without_process_pb(mut buf: &[u8]) -> &[u8] {
    let all = buf;
    while !buf.is_empty() {
        let at = all.len() - buf.len();
        let f: proto::MetricFamily =
            prost::Message::decode_length_delimited(&mut buf).expect("a delimited MetricFamily");
        if f.name.starts_with("process_") {
            return &all[..at];
        }
    }
    all
}

/// The text before the process metrics.
fn without_process_text(buf: &[u8]) -> &[u8] {
    let at = buf.windows(15).position(|w| w == b"# HELP process_").unwrap_or(buf.len());
    &buf[..at]
}

#[test]
fn native_fixture_agrees_with_itself() {
    let (pb_path, text_path) = (fixture("native/exposition.pb"), fixture("native/exposition.prom"));
    let source = std::fs::read_to_string(fixture("qemu-6.1-metrics.prom")).expect("guest capture");
    let e = Exposition::default();
    let mut families = parse(&source);
    let mounts = per_mount(&families);
    families.extend(mounts);
    e.register(Box::new(Replay(families)));
    let (pb, text) = (e.render_as(Format::Protobuf), e.render_as(Format::Text));
    if std::env::var_os("UPDATE_NATIVE_FIXTURE").is_some() {
        std::fs::create_dir_all(pb_path.parent().expect("dir")).expect("mkdir");
        std::fs::write(&pb_path, &pb).expect("write pb");
        std::fs::write(&text_path, &text).expect("write text");
    }
    // The encoders still write the committed bytes (the process metrics, which
    // change from run to run, left out): a change to either format fails here
    // until the fixture is regenerated and its diff reviewed.
    let committed_pb = std::fs::read(&pb_path).expect("exposition.pb (UPDATE_NATIVE_FIXTURE=1 writes it)");
    let committed_text = std::fs::read(&text_path).expect("exposition.prom");
    assert!(
        without_process_pb(&pb) == without_process_pb(&committed_pb),
        "protobuf rendering differs from tests/fixtures/native/exposition.pb (UPDATE_NATIVE_FIXTURE=1 regenerates it)"
    );
    assert_eq!(
        String::from_utf8_lossy(without_process_text(&text)),
        String::from_utf8_lossy(without_process_text(&committed_text)),
        "text rendering differs from tests/fixtures/native/exposition.prom (UPDATE_NATIVE_FIXTURE=1 regenerates it)"
    );
    let pb =
        common::decode(&std::fs::read(&pb_path).expect("exposition.pb (UPDATE_NATIVE_FIXTURE=1 writes it)"))
            .expect("delimited MetricFamily messages");
    let text = parse(&std::fs::read_to_string(&text_path).expect("exposition.prom"));
    let ours: Vec<&proto::MetricFamily> = pb.iter().filter(|f| !f.name.starts_with("process_")).collect();
    assert_eq!(
        ours.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
        text.iter().map(|p| p.def.name).collect::<Vec<_>>(),
        "the same families in both formats, in the same order"
    );
    let mut natives = 0;
    for (f, t) in ours.iter().zip(&text) {
        assert_eq!(f.help, t.def.help, "{}", f.name);
        let labels = |m: &proto::Metric| -> Vec<String> {
            assert_eq!(
                m.label.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
                t.def.labels,
                "{}",
                f.name
            );
            m.label.iter().map(|l| l.value.clone()).collect()
        };
        if t.def.kind != MetricType::HISTOGRAM {
            let want = if t.def.kind == MetricType::COUNTER {
                proto::MetricType::Counter
            } else {
                proto::MetricType::Gauge
            };
            assert_eq!(f.r#type, want as i32, "{}", f.name);
            let got: Vec<(Vec<String>, f64)> = f
                .metric
                .iter()
                .map(|m| {
                    (
                        labels(m),
                        m.counter
                            .as_ref()
                            .map(|c| c.value)
                            .or(m.gauge.as_ref().map(|g| g.value))
                            .expect("value"),
                    )
                })
                .collect();
            assert_eq!(got, t.plain, "{}", f.name);
            continue;
        }
        assert_eq!(f.r#type, proto::MetricType::Histogram as i32, "{}", f.name);
        assert_eq!(f.metric.len(), t.hists.len(), "{}", f.name);
        for m in &f.metric {
            let h = m.histogram.as_ref().expect("histogram");
            let (buckets, sum, count) = t.hists.get(&labels(m)).expect("same label sets");
            let classic: Vec<(f64, u64)> =
                h.bucket.iter().map(|b| (b.upper_bound, b.cumulative_count)).collect();
            assert_eq!((&classic, h.sample_sum, h.sample_count), (buckets, *sum, *count), "{}", f.name);
            assert_eq!(h.schema, 3);
            // Native buckets: absolute counts from the deltas, indices from the spans.
            let native: Vec<(i32, u64)> = common::native_buckets(h)
                .expect("a delta per bucket")
                .into_iter()
                .map(|(i, n)| (i, n as u64))
                .collect();
            assert_eq!(native.iter().map(|x| x.1).sum::<u64>() + h.zero_count, h.sample_count, "{}", f.name);
            let folded = NativeHistogram {
                schema: 3,
                zero_count: h.zero_count,
                buckets: native,
                count: *count,
                sum: *sum,
            }
            .classic(&classic.iter().map(|b| b.0).collect::<Vec<_>>());
            assert_eq!(folded, classic, "{}: native buckets fold into the classic ones", f.name);
            natives += 1;
        }
    }
    assert!(natives >= 10, "native histograms in the fixture: {natives}");
}
