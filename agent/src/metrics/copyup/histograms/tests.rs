//! Tests of the copy-up histograms: node-wide and per-mount sums, classic
//! buckets per config, devices sharing a label, forgotten devices.

use super::*;
use crate::discovery::MountTable;
use crate::probes::maps::Retained;
use overlay_agent_common::{bucket, kind, ns_to_latency_units, CountKey, CountValue};

fn render(families: Vec<Family>) -> String {
    let mut out = String::new();
    for f in families {
        f.write_text(&mut out);
    }
    out
}

/// Two copy-ups on each of two devices: 4 KiB in 1 ms and 1 MiB in 1.5 s.
fn reading() -> MapReading {
    let mut s = MapReading::default();
    for dev in [1, 2] {
        let k = CountKey { dev, cause: cause::CHOWN, kind: kind::DATA, _pad: [0; 2] };
        s.counts.insert(
            k,
            CountValue {
                copy_ups: 2,
                data_bytes: 4096 + (1 << 20),
                errors: 0,
                latency_ns: 1_501_000_000,
                noop: 0,
            },
        );
        for (hist, v) in [
            (HIST_BYTES, 4096),
            (HIST_BYTES, 1 << 20),
            (HIST_LATENCY, ns_to_latency_units(1_000_000)),
            (HIST_LATENCY, ns_to_latency_units(1_500_000_000)),
        ] {
            *s.hist.entry(HistKey { dev, cause: cause::CHOWN, hist, bucket: bucket(v) }).or_default() += 1;
        }
    }
    s
}

fn labels(s: &MapReading) -> MountLabels {
    let mut l = MountLabels::new(&MountTable::default(), s);
    l.insert(1, "/m/1");
    l.insert(2, "/m/2");
    l
}

#[test]
fn classic_buckets_are_native_boundaries() {
    let lat = classic_bounds(HIST_LATENCY);
    assert_eq!((lat[0], lat.last().copied()), (2f64.powi(-20), Some(64.0)));
    assert_eq!(classic_bounds(HIST_BYTES).first(), Some(&1024.0));
    for hist in [HIST_BYTES, HIST_LATENCY] {
        for b in classic_bounds(hist) {
            assert!(NativeHistogram::boundary_index(HIST_SCHEMA, b).is_some(), "{b}");
        }
    }
}

#[test]
fn node_wide_histograms_sum_the_mounts_and_classic_follows_the_config() {
    let s = reading();
    let l = labels(&s);
    let text = render(histogram_families(&s, &l, true, ClassicHistograms::Node));
    // 1 ms = 2^-9.97 s: in the bucket ending at 2^-8 (~3.9 ms), above 2^-10.
    assert!(
        text.contains("overlayfs_copy_up_duration_seconds_bucket{cause=\"chown\",le=\"0.0009765625\"} 0\n"),
        "{text}"
    );
    assert!(
        text.contains("overlayfs_copy_up_duration_seconds_bucket{cause=\"chown\",le=\"0.00390625\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("overlayfs_copy_up_duration_seconds_bucket{cause=\"chown\",le=\"1\"} 2\n")
            && text.contains("overlayfs_copy_up_duration_seconds_bucket{cause=\"chown\",le=\"4\"} 4\n"),
        "{text}"
    );
    assert!(text.contains("overlayfs_copy_up_duration_seconds_count{cause=\"chown\"} 4\n"), "{text}");
    assert!(
        text.contains(&format!(
            "overlayfs_copy_up_duration_seconds_sum{{cause=\"chown\"}} {}\n",
            3_002_000_000f64 * 1e-9
        )),
        "{text}"
    );
    assert!(
        text.contains("overlayfs_copy_up_bytes_bucket{cause=\"chown\",le=\"4096\"} 2\n"),
        "4 KiB is <= 4096: {text}"
    );
    assert!(text.contains("overlayfs_copy_up_bytes_sum{cause=\"chown\"} 2105344\n"), "{text}");
    assert!(!text.contains("overlayfs_mount_copy_up"), "no classic form per mount with node: {text}");
    let all = render(histogram_families(&s, &l, true, ClassicHistograms::All));
    assert!(
        all.contains(
            "overlayfs_mount_copy_up_duration_seconds_count{mountpoint=\"/m/2\",cause=\"chown\"} 2\n"
        ),
        "{all}"
    );
    let none = render(histogram_families(&s, &l, true, ClassicHistograms::None));
    assert!(!none.contains("_bucket"), "{none}");
}

/// In protobuf every histogram is native (schema 3, the kernel's buckets);
/// with the default classic_histograms: node only the node-wide ones carry
/// classic buckets.
#[test]
fn protobuf_carries_native_histograms_per_mount() {
    let s = reading();
    let (mut out, mut scratch) = (Vec::new(), Vec::new());
    for f in histogram_families(&s, &labels(&s), true, ClassicHistograms::Node) {
        f.write_proto(&mut out, &mut scratch);
    }
    let mut buf = out.as_slice();
    let mut fams: Vec<crate::metrics::encode::proto::MetricFamily> = Vec::new();
    while !buf.is_empty() {
        fams.push(prost::Message::decode_length_delimited(&mut buf).expect("a delimited MetricFamily"));
    }
    let hist = |name: &str| {
        let f = fams.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("{name} missing"));
        f.metric.iter().filter_map(|m| m.histogram.clone()).collect::<Vec<_>>()
    };
    let mount = hist("overlayfs_mount_copy_up_duration_seconds");
    assert_eq!(mount.len(), 2, "one per mount");
    for h in &mount {
        assert_eq!((h.schema, h.sample_count, h.bucket.len()), (3, 2, 0), "{h:?}");
        // 1 ms and 1.5 s: native indices ceil(8 log2 0.001) = -79 and ceil(8 log2 1.5) = 5.
        let first = h.positive_span.first().map(|s| s.offset);
        assert_eq!(first, Some(bucket(ns_to_latency_units(1_000_000)) as i32 - 240));
        assert_eq!(h.positive_delta.iter().sum::<i64>() + h.positive_delta[0], 2, "counts 1, 1: {h:?}");
    }
    let node = hist("overlayfs_copy_up_duration_seconds");
    assert_eq!((node[0].sample_count, node[0].bucket.is_empty()), (4, false), "classic buckets too");
}

/// Devices with the same label (such as "unknown") add up in one series.
#[test]
fn devices_sharing_a_label_are_merged() {
    let s = reading();
    let mut l = labels(&s);
    l.insert(2, "/m/1");
    let text = render(histogram_families(&s, &l, true, ClassicHistograms::All));
    let want = [
        "overlayfs_mount_copy_up_duration_seconds_count{mountpoint=\"/m/1\",cause=\"chown\"} 4\n",
        "overlayfs_mount_copy_up_duration_seconds_bucket{mountpoint=\"/m/1\",cause=\"chown\",le=\"0.00390625\"} 2\n",
        "overlayfs_mount_copy_up_bytes_sum{mountpoint=\"/m/1\",cause=\"chown\"} 2105344\n",
    ];
    for w in want {
        assert!(text.contains(w), "{w} in {text}");
    }
    assert_eq!(text.matches("overlayfs_mount_copy_up_bytes_count{").count(), 1, "{text}");
    // The first device has a single (cause, hist): the second device's keys
    // would continue its run, and the second device's sum must still count.
    for (unknown, hist) in [(false, HIST_BYTES), (false, HIST_LATENCY), (true, HIST_LATENCY)] {
        let mut s = reading();
        s.hist.retain(|k, _| k.hist == hist);
        let mut l = labels(&s);
        if unknown {
            l.by_dev.clear();
        } else {
            l.insert(2, "/m/1");
        }
        let text = render(histogram_families(&s, &l, true, ClassicHistograms::All));
        let mp = if unknown { "unknown" } else { "/m/1" };
        let want = if hist == HIST_BYTES {
            format!("overlayfs_mount_copy_up_bytes_sum{{mountpoint=\"{mp}\",cause=\"chown\"}} 2105344\n")
        } else {
            format!(
                "overlayfs_mount_copy_up_duration_seconds_sum{{mountpoint=\"{mp}\",cause=\"chown\"}} {}\n",
                3_002_000_000f64 * 1e-9
            )
        };
        assert!(text.contains(&want), "both devices' sums: {want} in {text}");
    }
}

/// Deleting a vanished device's entries moves them into Retained: the
/// node-wide histogram is the same before and after.
#[test]
fn node_wide_histograms_keep_what_forgotten_mounts_counted() {
    let before = reading();
    let mut after = before.clone();
    let mut retained = Retained::default();
    after.counts.retain(|k, v| {
        if k.dev == 2 {
            *retained.sums.entry((HIST_BYTES, k.cause)).or_default() += v.data_bytes;
            *retained.sums.entry((HIST_LATENCY, k.cause)).or_default() += v.latency_ns;
        }
        k.dev != 2
    });
    after.hist.retain(|k, n| {
        if k.dev == 2 {
            *retained.buckets.entry((k.hist, k.cause, k.bucket)).or_default() += *n;
        }
        k.dev != 2
    });
    after.retained = retained;
    let node = |s: &MapReading| {
        let text = render(histogram_families(s, &labels(s), true, ClassicHistograms::Node));
        text.lines().filter(|l| l.starts_with("overlayfs_copy_up_")).map(str::to_owned).collect::<Vec<_>>()
    };
    assert_eq!(node(&before), node(&after));
    let text = render(histogram_families(&after, &labels(&after), true, ClassicHistograms::All));
    assert!(!text.contains("/m/2"), "the forgotten mount has no series: {text}");
}
