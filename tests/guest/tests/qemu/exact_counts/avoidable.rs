//! What each fix would have avoided, on the workload's mounts: the chowns,
//! chmods, utimes and xattr changes copy whole files up on A and B (metacopy
//! off, the kernel's default on every kernel of the tier), none on C
//! (metacopy=on: metadata only); the no-op chowns and chmod on A. None of the
//! three is a container, a build or rootless: no other fix applies. The mounts
//! of layers.rs add fuse_overlayfs (userxattr), and idmapped_mounts on the
//! user-namespaced volume whose lower is not idmapped, never on the one whose
//! lower is.

use std::collections::BTreeSet;

use super::{layers, Guest};
use crate::common::grep;

/// (mount, fix, data bytes avoidable). `metacopy`: the data copy-ups by chown,
/// chmod, utimes and xattr (EXPECTED_BYTES: 30,000 + 41,000 + 6,000 + 7,000 on
/// A; 12,000 on B). `skip_noop`: the no-op share of a cause's bytes, 2 of 3
/// chowns (30,000 x 2/3) and 1 of 2 chmods (41,000 / 2). With
/// layers::expected_avoidable for the kernel.
pub const EXPECTED_AVOIDABLE_BYTES: &[(&str, &str, f64)] = &[
    ("/t/a/merged", "metacopy", 84_000.0),
    ("/t/a/merged", "skip_noop", 40_500.0),
    ("/t/b/merged", "metacopy", 12_000.0),
];

const MOUNTS: [&str; 3] = ["/t/a/merged", "/t/b/merged", "/t/c/merged"];

/// The series of `name` on mounts A, B, C and layers.rs's, as (mount, fix).
fn fixes(g: &Guest, name: &str) -> BTreeSet<(String, String)> {
    g.m.series(name)
        .into_iter()
        .filter_map(|(l, _)| Some((l.get("mountpoint")?.clone(), l.get("fix")?.clone())))
        .filter(|(mp, _)| MOUNTS.contains(&mp.as_str()) || layers::MOUNTS.contains(&mp.as_str()))
        .collect()
}

/// EXPECTED_AVOIDABLE_BYTES, and layers.rs's for this kernel.
pub fn expected(g: &Guest) -> Vec<(&'static str, &'static str, f64)> {
    EXPECTED_AVOIDABLE_BYTES.iter().copied().chain(layers::expected_avoidable(g)).collect()
}

pub fn check_avoidable(g: &Guest) -> Vec<String> {
    let mut problems = Vec::new();
    let expected = expected(g);
    let want: BTreeSet<(String, String)> =
        expected.iter().map(|(mp, fix, _)| (mp.to_string(), fix.to_string())).collect();
    for name in ["overlayfs_copy_up_avoidable_seconds_total", "overlayfs_copy_up_avoidable_data_bytes_total"]
    {
        let got = fixes(g, name);
        if got != want {
            problems.push(format!("{name}: series {got:?}, want {want:?}:\n{}", grep(&g.text, name)));
        }
    }
    for (mp, fix, bytes) in &expected {
        let labels = [("mountpoint", *mp), ("fix", *fix)];
        let got = g.m.get("overlayfs_copy_up_avoidable_data_bytes_total", &labels);
        if got != Some(*bytes) {
            problems.push(format!("avoidable_data_bytes_total{{{mp},{fix}}} = {got:?}, want {bytes}"));
        }
        let secs = g.m.get("overlayfs_copy_up_avoidable_seconds_total", &labels).unwrap_or(0.0);
        let blocked: f64 =
            g.m.series("overlayfs_copy_up_seconds_total")
                .iter()
                .filter(|(l, _)| l.get("mountpoint").is_some_and(|m| m == mp))
                .map(|(_, v)| v)
                .sum();
        if !(secs > 0.0 && secs <= blocked) {
            problems.push(format!("avoidable_seconds_total{{{mp},{fix}}} = {secs}, want in (0, {blocked}]"));
        }
    }
    problems
}
