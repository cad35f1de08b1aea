//! The guest's protobuf scrape (what Prometheus with native histograms asks
//! for) against its text scrape and the counters.

use overlay_agent::metrics::encode::proto::Histogram;

use super::Guest;
use crate::common::{decode, native_buckets, repo_root};
use crate::guest::section;

/// The guest's protobuf scrape (decoded from the console's base64).
fn protobuf_capture(console: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let b64 = section(console, "=== PROTO BEGIN\n", "=== PROTO END").ok_or("no PROTO section")?;
    let b64: String = b64.split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| format!("PROTO base64: {e}"))
}

/// The guest's /metrics in protobuf (what Prometheus with native histograms
/// asks for), taken right after the text scrape with the workload idle. Every
/// copy-up histogram is a schema-3 native one whose buckets add up to its
/// count; count and sum equal the text scrape's (which `histograms` ties to the
/// counters); its buckets fold into the text's classic buckets exactly; and the
/// per-mount latency counts equal overlayfs_copy_up_total on that mount.
pub fn check_protobuf(g: &Guest) -> Vec<String> {
    let pb = match protobuf_capture(&g.console) {
        Ok(pb) => pb,
        Err(e) => return vec![e],
    };
    let fams = match decode(&pb) {
        Ok(f) => f,
        Err(e) => return vec![format!("the protobuf scrape: {e}")],
    };
    let mut problems = Vec::new();
    let mut natives = 0;
    for name in [
        "overlayfs_copy_up_duration_seconds",
        "overlayfs_copy_up_bytes",
        "overlayfs_mount_copy_up_duration_seconds",
        "overlayfs_mount_copy_up_bytes",
    ] {
        let Some(fam) = fams.iter().find(|f| f.name == name) else {
            problems.push(format!("{name}: not in the protobuf scrape"));
            continue;
        };
        for m in &fam.metric {
            let labels: Vec<(&str, &str)> =
                m.label.iter().map(|l| (l.name.as_str(), l.value.as_str())).collect();
            let Some(h) = &m.histogram else {
                problems.push(format!("{name}{labels:?}: not a histogram"));
                continue;
            };
            natives += 1;
            problems.extend(native_problems(g, name, &labels, h));
        }
    }
    if natives == 0 {
        problems.push("no native histogram in the protobuf scrape".into());
    }
    // The capture of one kernel is the replay fixture of tests/prometheus/native.rs.
    if g.version == "6.1" && problems.is_empty() && std::env::var_os("UPDATE_NATIVE_FIXTURE").is_some() {
        let dir = repo_root().join("tests/fixtures/native");
        std::fs::write(dir.join("guest-6.1.pb"), &pb).expect("write guest-6.1.pb");
        std::fs::write(dir.join("guest-6.1.prom"), &g.text).expect("write guest-6.1.prom");
    }
    problems
}

/// One native histogram `name{labels}`: schema 3, its buckets adding up to its
/// count, count and sum as in the text, folding into the text's classic
/// buckets; per mount, its latency count is the mount's copy-ups.
fn native_problems(g: &Guest, name: &str, labels: &[(&str, &str)], h: &Histogram) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(native) = native_buckets(h) else {
        return vec![format!("{name}{labels:?}: fewer deltas than the spans' buckets")];
    };
    if h.schema != 3 || native.iter().any(|(_, n)| *n < 0) {
        return vec![format!("{name}{labels:?}: schema {}, buckets {native:?}", h.schema)];
    }
    let in_buckets = h.zero_count + native.iter().map(|(_, n)| *n as u64).sum::<u64>();
    if in_buckets != h.sample_count {
        problems.push(format!("{name}{labels:?}: {in_buckets} in buckets, count {}", h.sample_count));
    }
    let text = (g.m.get(&format!("{name}_count"), labels), g.m.get(&format!("{name}_sum"), labels));
    if text != (Some(h.sample_count as f64), Some(h.sample_sum)) {
        problems.push(format!(
            "{name}{labels:?}: protobuf (count, sum) ({}, {}), text {text:?}",
            h.sample_count, h.sample_sum
        ));
    }
    // Classic buckets from the native ones: the upper bound of index i is 2^(i/8).
    for (l, want) in g.m.series(&format!("{name}_bucket")) {
        let same = labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v));
        let Some(le) = l.get("le").filter(|_| same && l.len() == labels.len() + 1) else { continue };
        let Ok(le) = le.parse::<f64>() else { continue }; // +Inf: the count, checked above
        let top = (le.log2() * 8.0).round() as i32;
        let got = h.zero_count as f64
            + native.iter().filter(|(i, _)| *i <= top).map(|(_, n)| *n as f64).sum::<f64>();
        if got != want {
            problems.push(format!("{name}{labels:?} le={le}: native buckets give {got}, text {want}"));
        }
    }
    if name == "overlayfs_mount_copy_up_duration_seconds" {
        let copy_ups: f64 =
            g.m.series("overlayfs_copy_up_total")
                .iter()
                .filter(|(l, _)| labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
                .map(|(_, v)| v)
                .sum();
        if copy_ups != h.sample_count as f64 {
            problems.push(format!(
                "{name}{labels:?}: native count {} vs copy_up_total {copy_ups}",
                h.sample_count
            ));
        }
    }
    problems
}
