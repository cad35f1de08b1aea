//! Mode `quota` (initramfs/modes/quota.sh) on every kernel: where an upper dir
//! has a project id on a filesystem that accounts project quotas, bytes and
//! inodes come from the quota (no walk after the first) and equal a walk's at
//! the same moment; the agent assigns ids only where none is set; it says why
//! it walks elsewhere. And the benchmark of quota mode's cost.

use crate::common::{promtool_check, repo_root, require_root, Metrics};
use crate::guest::{hang, kernels, marker_value, quota_bench, run_guest, section, section_of};

/// overlayfs_upper_usage_source_info{mountpoint, source, reason}.
fn source(q: &Metrics, mp: &str, source: &str, reason: &str) -> Option<f64> {
    q.get("overlayfs_upper_usage_source_info", &[("mountpoint", mp), ("source", source), ("reason", reason)])
}

/// A to D in quota mode with a walk's figures (pushed to `figures`), one walk
/// each; E and I walked for want of an id.
fn usage_problems(q: &Metrics, w: &Metrics, figures: &mut Vec<String>) -> Vec<String> {
    let mut errors = Vec::new();
    for m in ["a", "b", "c", "d"] {
        let mp = format!("/q/{m}/merged");
        if source(q, &mp, "quota", "none") != Some(1.0) {
            errors.push(format!("{mp}: not in quota mode"));
        }
        for metric in ["overlayfs_upper_bytes", "overlayfs_upper_inodes"] {
            let (qv, wv) = (q.get(metric, &[("mountpoint", &mp)]), w.get(metric, &[("mountpoint", &mp)]));
            if qv != wv || qv.is_none() {
                errors.push(format!("{mp}: {metric} quota {qv:?} != walk {wv:?}"));
            }
        }
        let scans = q.get("overlayfs_upper_scans_total", &[("mountpoint", &mp)]);
        if scans != Some(1.0) {
            errors.push(format!(
                "{mp}: {scans:?} walks, want 1 (classify_interval 1h: the rest from the quota)"
            ));
        }
        figures.push(format!(
            "{m} {}B/{}i",
            q.get("overlayfs_upper_bytes", &[("mountpoint", &mp)]).unwrap_or(-1.0),
            q.get("overlayfs_upper_inodes", &[("mountpoint", &mp)]).unwrap_or(-1.0)
        ));
    }
    if source(q, "/q/e/merged", "walk", "no_project_id") != Some(1.0) {
        errors.push("/q/e/merged: a file with another id: want no id assigned (reason no_project_id)".into());
    }
    if source(q, "/q/i/merged", "walk", "no_project_id") != Some(1.0) {
        errors.push("/q/i/merged: whiteouts: want no id assigned (reason no_project_id)".into());
    }
    errors
}

/// E and I refused once each, logged once each (they walk every second and are
/// not tried again for an hour); H's copy-ups during its tagging (pushed to
/// `figures`) all succeeded; F shares its grandparent's id.
fn assignment_problems(
    console: &str,
    agent_log: &str,
    q: &Metrics,
    figures: &mut Vec<String>,
) -> Vec<String> {
    let mut errors = Vec::new();
    let refusals = console.lines().find_map(|l| l.strip_prefix("=== ASSIGN REFUSALS ")).map(str::trim);
    let refused = |upper: &str, reason: &str| {
        agent_log
            .lines()
            .any(|l| l.contains(&format!("upper={upper} ")) && l.contains(&format!("reason=\"{reason}\"")))
    };
    if refusals != Some("2") || !refused("/q/e/upper", "other_id") || !refused("/q/i/upper", "untaggable") {
        errors.push(format!(
            "{refusals:?} refusals logged, want 2 (E: other_id, I: untaggable, the whiteouts)"
        ));
    }
    // H: copy-ups while the agent tagged its trees all succeeded.
    let race = console.lines().find_map(|l| l.strip_prefix("=== RACE ")).unwrap_or("").trim().to_owned();
    let r: Vec<u64> = race.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    match r[..] {
        [during, after, 0, copied] if during > 0 && copied == during + after => {
            figures.push(format!("h: {during} copy-ups during the assignment"))
        }
        _ => errors.push(format!(
            "H: copy-ups during the assignment: {race:?}, want some, 0 failed, all in the upper dir"
        )),
    }
    if source(q, "/q/f/l/merged", "walk", "shared_project_id") != Some(1.0) {
        errors.push("/q/f/l/merged: want reason shared_project_id".into());
    }
    errors
}

/// The project ids left on each directory: others' kept, the agent's (C, H)
/// one of its range each, and C's the one it exports.
fn project_problems(console: &str, q: &Metrics) -> Vec<String> {
    let mut errors = Vec::new();
    let project = |p: &str| -> Option<u32> { marker_value(console, &format!("PROJECT {p}")) };
    let want = [
        ("a", Some(100)),
        ("a/diff", Some(100)),
        ("b/upper", Some(200)),
        ("d/upper", Some(300)),
        ("d/work", Some(300)),
        ("e/upper", Some(0)),
        ("e/work", Some(0)),
        ("i/upper", Some(0)),
        ("i/work", Some(0)),
        ("e/upper/foreign", Some(400)),
        ("f/l/upper", Some(500)),
    ];
    for (p, id) in want {
        if project(p) != id {
            errors.push(format!("project id of {p}: {:?}, want {id:?}", project(p)));
        }
    }
    let assigned = project("c/upper");
    if !assigned.is_some_and(|id| (1000..=1099).contains(&id)) || project("c/work") != assigned {
        errors.push(format!(
            "C: assigned ids {assigned:?} / {:?}, want one id of 1000..1099 on both",
            project("c/work")
        ));
    }
    let h = project("h/upper");
    if !h.is_some_and(|id| (1000..=1099).contains(&id) && Some(id) != assigned) || project("h/work") != h {
        errors.push(format!(
            "H: assigned ids {h:?} / {:?}, want one id of 1000..1099 on both",
            project("h/work")
        ));
    }
    if q.get("overlayfs_upper_quota_project_id", &[("mountpoint", "/q/c/merged")]).map(|v| v as u32)
        != assigned
    {
        errors.push("C: overlayfs_upper_quota_project_id is not the assigned id".into());
    }
    errors
}

/// Mode `quota` on one kernel: the summary line, or what went wrong.
fn check_quota(version: &str) -> Result<String, String> {
    let (console, log) = run_guest(version, "quota", "qemu-quota");
    let fail = |what: String| Err(format!("kernel {version}: {what} (console: {})", log.display()));
    let agent_log = section(&console, "=== AGENT LOG BEGIN", "=== AGENT LOG END").unwrap_or("").to_owned();
    if let Some(l) = hang(&console).or_else(|| {
        console.lines().find(|l| l.contains("FAILED") || l.contains("NOT READY") || l.contains("NO FRESH"))
    }) {
        return fail(format!("{l}\nagent log:\n{agent_log}"));
    }
    let (Some(q), Some(w)) = (section_of(&console, "QUOTA"), section_of(&console, "WALK")) else {
        return fail("no QUOTA/WALK metrics".into());
    };
    promtool_check(q);
    let (q, w) = (Metrics::parse(q), Metrics::parse(w));
    let mut figures = Vec::new();
    let mut errors = usage_problems(&q, &w, &mut figures);
    errors.extend(assignment_problems(&console, &agent_log, &q, &mut figures));
    errors.extend(project_problems(&console, &q));
    if !errors.is_empty() {
        return fail(format!("{}\nagent log:\n{agent_log}", errors.join("\n")));
    }
    let bench = console.lines().find_map(|l| l.strip_prefix("=== BENCH ")).unwrap_or("?").trim().to_owned();
    if bench.split_whitespace().count() != 7 {
        return fail(format!("no bench figures: {bench:?}"));
    }
    Ok(format!(
        "kernel {version}: quota = walk on 4 mounts ({}); bench inodes, cold quota/walk/du us, warm quota/walk/du us: {bench}",
        figures.join(", ")
    ))
}

#[test]
fn project_quotas_give_the_walks_figures_on_real_kernels() {
    require_root();
    let mut failures = Vec::new();
    let mut summary = String::new();
    for v in kernels() {
        match check_quota(&v) {
            Ok(line) => summary.push_str(&format!("{line}\n")),
            Err(e) => failures.push(e),
        }
    }
    std::fs::write(repo_root().join("target/qemu-quota-summary.txt"), &summary).expect("write summary");
    eprint!("{summary}");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Quota mode's cost, a benchmark that prints figures (bench/quota.py runs it):
/// OVERLAY_AGENT_QUOTA_BENCH="1000 10 100000" OVERLAY_AGENT_QEMU_KERNELS=6.1 \
///   cargo test --release -p overlay-agent-guest-tests --features qemu --test qemu -- --ignored --nocapture quota_mode_cost
#[test]
#[ignore = "benchmark: run on demand, prints figures"]
fn quota_mode_cost() {
    require_root();
    assert!(quota_bench().is_some(), "set OVERLAY_AGENT_QUOTA_BENCH=\"MOUNTS FILES BIG\"");
    for version in kernels() {
        let (console, log) = run_guest(&version, "quota", "qemu-quota-bench");
        println!("kernel {version} (console: {})", log.display());
        for l in
            console.lines().filter(|l| l.starts_with("=== ") && !l.contains("KERNEL") && !l.contains("CLOCK"))
        {
            println!("{l}");
        }
    }
}
