//! The histograms of a guest run against the counters: per mount and node-wide,
//! counts and sums, classic buckets, the chown and create figures, and the
//! node-wide ones keeping a forgotten mount's copy-ups.

use std::collections::BTreeMap;

use super::Guest;
use crate::common::{close, grep, Metrics};
use crate::guest::section_of;

/// (copy-ups, data copy-ups, seconds, bytes)
type Sums = (f64, f64, f64, f64);

/// The counters' sums by (mountpoint, cause).
fn counter_sums(m: &Metrics) -> BTreeMap<(String, String), Sums> {
    let mut want: BTreeMap<(String, String), Sums> = BTreeMap::new();
    for (l, v) in m.series("overlayfs_copy_up_total") {
        let e = want.entry((l["mountpoint"].clone(), l["cause"].clone())).or_default();
        e.0 += v;
        if l["kind"] == "data" || l["kind"] == "deferred_data" {
            e.1 += v;
        }
    }
    for (l, v) in m.series("overlayfs_copy_up_seconds_total") {
        want.entry((l["mountpoint"].clone(), l["cause"].clone())).or_default().2 = v;
    }
    for (l, v) in m.series("overlayfs_copy_up_data_bytes_total") {
        want.entry((l["mountpoint"].clone(), l["cause"].clone())).or_default().3 = v;
    }
    want
}

/// The per-mount histograms' counts and sums against the counters; the sums
/// by cause over the mounts, for the node-wide ones.
fn mount_problems(
    m: &Metrics,
    want: &BTreeMap<(String, String), Sums>,
) -> (Vec<String>, BTreeMap<String, Sums>) {
    let mut problems = Vec::new();
    let mut node: BTreeMap<String, Sums> = BTreeMap::new();
    for ((mp, cause), (n, data, secs, bytes)) in want {
        let e = node.entry(cause.clone()).or_default();
        (e.0, e.1, e.2, e.3) = (e.0 + n, e.1 + data, e.2 + secs, e.3 + bytes);
        let labels = [("mountpoint", mp.as_str()), ("cause", cause.as_str())];
        for (fam, count, sum) in [
            ("overlayfs_mount_copy_up_duration_seconds", *n, *secs),
            ("overlayfs_mount_copy_up_bytes", *data, *bytes),
        ] {
            let got = (m.get(&format!("{fam}_count"), &labels), m.get(&format!("{fam}_sum"), &labels));
            let want = if count > 0.0 { (Some(count), Some(sum)) } else { (None, None) };
            if got != want {
                problems.push(format!("{fam}{{{mp},{cause}}} (count, sum) = {got:?}, want {want:?}"));
            }
        }
    }
    (problems, node)
}

/// The node-wide histograms' counts and sums against the mounts' sums.
fn node_problems(m: &Metrics, node: &BTreeMap<String, Sums>) -> Vec<String> {
    let mut problems = Vec::new();
    for (cause, (n, data, secs, bytes)) in node {
        let labels = [("cause", cause.as_str())];
        for (fam, count, sum) in
            [("overlayfs_copy_up_duration_seconds", *n, *secs), ("overlayfs_copy_up_bytes", *data, *bytes)]
        {
            let got_n = m.get(&format!("{fam}_count"), &labels);
            let got_sum = m.get(&format!("{fam}_sum"), &labels);
            let ok = if count > 0.0 {
                got_n == Some(count) && got_sum.is_some_and(|s| close(s, sum))
            } else {
                got_n.is_none()
            };
            if !ok {
                problems.push(format!(
                    "{fam}{{cause={cause}}} (count, sum) = ({got_n:?}, {got_sum:?}), want ({count}, {sum}) over the mounts"
                ));
            }
        }
    }
    problems
}

/// Classic buckets: cumulative up to +Inf = count, at the classic bounds (+Inf
/// included): bytes 2^10 .. 2^34, seconds 2^-20 .. 2^6, every factor of 4.
fn bucket_problems(m: &Metrics) -> Vec<String> {
    let mut problems = Vec::new();
    for (fam, bounds) in [
        ("overlayfs_copy_up_duration_seconds", 15),
        ("overlayfs_copy_up_bytes", 14),
        ("overlayfs_mount_copy_up_duration_seconds", 15),
        ("overlayfs_mount_copy_up_bytes", 14),
    ] {
        // labels without le -> (le, cumulative count)
        type Buckets = Vec<(f64, f64)>;
        let mut by_series: BTreeMap<Vec<(String, String)>, Buckets> = BTreeMap::new();
        for (mut l, v) in m.series(&format!("{fam}_bucket")) {
            let le = l.remove("le").unwrap_or_default();
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) };
            by_series.entry(l.into_iter().collect()).or_default().push((le, v));
        }
        for (l, mut b) in by_series {
            b.sort_by(|x, y| x.0.total_cmp(&y.0));
            let labels: Vec<(&str, &str)> = l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let count = m.get(&format!("{fam}_count"), &labels);
            if !b.windows(2).all(|w| w[0].1 <= w[1].1) || b.last().map(|x| x.1) != count || b.len() != bounds
            {
                problems.push(format!("{fam}{l:?}: buckets {b:?}, count {count:?}"));
            }
        }
    }
    problems
}

/// The histograms against the counters, over the same keys: per mount and
/// cause, the latency histogram counts every copy-up and sums
/// overlayfs_copy_up_seconds_total; the bytes histogram counts the copy-ups
/// that copied data (kinds data and deferred_data) and sums
/// overlayfs_copy_up_data_bytes_total; the node-wide ones are the mounts'
/// sums; classic buckets are cumulative up to +Inf = count.
fn histogram_problems(m: &Metrics) -> Vec<String> {
    let (mut problems, node) = mount_problems(m, &counter_sums(m));
    problems.extend(node_problems(m, &node));
    problems.extend(bucket_problems(m));
    problems
}

/// One sample per data copy-up, the bytes adding up; every histogram against
/// the counters; the bucket boundaries the native ones.
pub fn check_histograms(g: &Guest) -> Vec<String> {
    let mut problems = histogram_problems(&g.m);
    // 3 on A, 1 on B (C is metadata-only), and layers.rs's for this kernel.
    let want_n: f64 = g.expected().iter().filter(|e| e.1 == "chown" && e.2 == "data").map(|e| e.3).sum();
    let chown_bytes = g.m.get("overlayfs_copy_up_bytes_count", &[("cause", "chown")]);
    if chown_bytes != Some(want_n) {
        problems
            .push(format!("overlayfs_copy_up_bytes_count{{cause=chown}} = {chown_bytes:?}, want {want_n}"));
    }
    // 42,000 on A and B, and layers.rs's.
    let want_sum: f64 = g.expected_bytes().iter().filter(|e| e.1 == "chown").map(|e| e.2).sum();
    let chown_sum = g.m.get("overlayfs_copy_up_bytes_sum", &[("cause", "chown")]);
    if chown_sum != Some(want_sum) {
        problems.push(format!("overlayfs_copy_up_bytes_sum{{cause=chown}} = {chown_sum:?}, want {want_sum}"));
    }
    let lat = g.m.get("overlayfs_copy_up_duration_seconds_count", &[("cause", "create")]);
    if lat != Some(2.0) {
        problems.push(format!("overlayfs_copy_up_duration_seconds_count{{cause=create}} = {lat:?}, want 2"));
    }
    // 9,500, 10,000, 10,500 and 12,000 bytes on A and B: all in (2^13, 2^14] =
    // (8192, 16384]; layers.rs's 22,000 to 25,000 in (2^14, 2^16].
    for (le, want) in [("4096", 0.0), ("16384", 4.0), ("65536", want_n)] {
        let got = g.m.get("overlayfs_copy_up_bytes_bucket", &[("cause", "chown"), ("le", le)]);
        if got != Some(want) {
            problems.push(format!(
                "overlayfs_copy_up_bytes_bucket{{cause=chown,le={le}}} = {got:?}, want {want}"
            ));
        }
    }
    let first_le = g.m.get(
        "overlayfs_copy_up_duration_seconds_bucket",
        &[("cause", "create"), ("le", "0.00000095367431640625")],
    );
    if first_le.is_none() {
        problems.push("no latency bucket at le=2^-20 s (0.00000095367431640625)".into());
    }
    problems
}

/// After mount E is unmounted and forgotten: no series names it, and the
/// node-wide histograms still hold its 64 open copy-ups (counts and sums the
/// same as before the unmount).
pub fn check_forgotten_mount(g: &Guest) -> Vec<String> {
    let mut problems = Vec::new();
    let (Some(before), Some(after)) =
        (section_of(&g.console, "PARALLEL"), section_of(&g.console, "FORGOTTEN"))
    else {
        return vec!["no PARALLEL or FORGOTTEN metrics".into()];
    };
    let (before, after) = (Metrics::parse(before), Metrics::parse(after));
    if after.text.contains("/t/e/merged") {
        problems.push(format!("series still name /t/e/merged:\n{}", grep(&after.text, "overlayfs_")));
    }
    let e_open = before.get(
        "overlayfs_mount_copy_up_duration_seconds_count",
        &[("mountpoint", "/t/e/merged"), ("cause", "open")],
    );
    if e_open != Some(64.0) {
        problems.push(format!("mount E's open copy-ups before the unmount: {e_open:?}, want 64"));
    }
    for fam in ["overlayfs_copy_up_duration_seconds", "overlayfs_copy_up_bytes"] {
        for suffix in ["_count", "_sum", "_bucket"] {
            let name = format!("{fam}{suffix}");
            let (b, a) = (before.series(&name), after.series(&name));
            if b != a || b.is_empty() {
                problems.push(format!("{name} changed when mount E was forgotten: {b:?} -> {a:?}"));
            }
        }
    }
    problems
}
