//! The copy-up counters of a guest run: by mount, cause and kind; data bytes;
//! no errors; no-op copy-ups; by process; through io_uring.

use super::Guest;
use crate::common::{grep, Metrics};
use crate::guest::section_of;

pub fn check_counts(g: &Guest) -> Vec<String> {
    let mut problems = Vec::new();
    for (mp, cause, kind, want) in &g.expected() {
        let got = g.m.get("overlayfs_copy_up_total", &[("mountpoint", mp), ("cause", cause), ("kind", kind)]);
        if got != Some(*want) {
            problems.push(format!("copy_up_total{{{mp},{cause},{kind}}} = {got:?}, want {want}"));
        }
    }
    let total: f64 =
        g.m.samples.iter().filter(|(k, _)| k.starts_with("overlayfs_copy_up_total{")).map(|(_, v)| v).sum();
    let want_total = g.want_total();
    if total != want_total {
        problems.push(format!(
            "{total} copy-ups in all, want {want_total}:\n{}",
            grep(&g.text, "overlayfs_copy_up_total")
        ));
    }
    if g.m.get("overlayfs_ebpf_enabled", &[]) != Some(1.0) {
        problems.push("overlayfs_ebpf_enabled is not 1".into());
    }
    problems
}

pub fn check_bytes(g: &Guest) -> Vec<String> {
    let mut problems = Vec::new();
    for (mp, cause, want) in &g.expected_bytes() {
        let got = g.m.get("overlayfs_copy_up_data_bytes_total", &[("mountpoint", mp), ("cause", cause)]);
        if got != Some(*want) {
            problems.push(format!("copy_up_data_bytes_total{{{mp},{cause}}} = {got:?}, want {want}"));
        }
    }
    problems
}

pub fn check_no_errors(g: &Guest) -> Vec<String> {
    if g.m.samples.iter().any(|(k, v)| k.starts_with("overlayfs_copy_up_errors_total") && *v > 0.0) {
        vec![format!("errors counted:\n{}", grep(&g.text, "overlayfs_copy_up_errors_total"))]
    } else {
        vec![]
    }
}

/// The no-op copy-ups, exact, and one series per (mount, cause) of a chown,
/// chmod or utimes copy-up: none for other causes, none more.
pub fn check_noop(g: &Guest) -> Vec<String> {
    let mut problems = Vec::new();
    let expected = g.expected_noop();
    for (mp, cause, want) in &expected {
        let got = g.m.get("overlayfs_copy_up_noop_total", &[("mountpoint", mp), ("cause", cause)]);
        if got != Some(*want) {
            problems.push(format!("copy_up_noop_total{{{mp},{cause}}} = {got:?}, want {want}"));
        }
    }
    let series = g.m.series("overlayfs_copy_up_noop_total");
    if series.len() != expected.len() {
        problems.push(format!(
            "{} overlayfs_copy_up_noop_total series, want {}:\n{}",
            series.len(),
            expected.len(),
            grep(&g.text, "overlayfs_copy_up_noop_total")
        ));
    }
    problems
}

/// Who copied up: the workload's main threads for all but mount B's chown,
/// done by thread actor-b, which with top_processes: 1 lands in comm="other".
pub fn check_processes(g: &Guest) -> Vec<String> {
    let mut problems = Vec::new();
    let want_total = g.want_total();
    let want_bytes: f64 = g.expected_bytes().iter().map(|e| e.2).sum();
    for (comm, n, bytes) in
        [("qemu-workload", want_total - 1.0, want_bytes - 12_000.0), ("other", 1.0, 12_000.0)]
    {
        let got = (
            g.m.get("overlayfs_copy_up_process_total", &[("comm", comm)]),
            g.m.get("overlayfs_copy_up_process_data_bytes_total", &[("comm", comm)]),
        );
        if got != (Some(n), Some(bytes)) {
            problems.push(format!(
                "process {{comm={comm}}} = {got:?}, want ({n}, {bytes}):\n{}",
                grep(&g.text, "overlayfs_copy_up_process")
            ));
        }
    }
    let process_series = g.text.lines().filter(|l| l.starts_with("overlayfs_copy_up_process_total{")).count();
    if process_series != 2 {
        problems
            .push(format!("{process_series} overlayfs_copy_up_process_total series, want 2 (K=1 + other)"));
    }
    problems
}

/// io_uring: an openat for write is an `open` (from the copy-up's flags); a
/// renameat (5.11+, and Debian's 5.10, which carries the 5.15 io_uring) runs
/// outside any rename system call and counts as `other`.
pub fn check_io_uring(g: &Guest) -> Vec<String> {
    let mut problems = Vec::new();
    if g.console.contains("=== URING FAILED") {
        problems.push("the io_uring workload failed".into());
    }
    let Some(t) = section_of(&g.console, "URING") else {
        return vec!["no URING metrics".into()];
    };
    let m = Metrics::parse(t);
    let rename_supported = g.console.contains("workload: io_uring renameat: ok");
    if g.version() >= (5, 11) && !rename_supported {
        problems.push(format!("io_uring renameat did not run on kernel {}", g.version));
    }
    let want: &[(&str, &str, f64, f64)] = if rename_supported {
        &[("open", "data", 1.0, 16_000.0), ("other", "data", 1.0, 17_000.0)]
    } else {
        &[("open", "data", 1.0, 16_000.0)]
    };
    for (cause, kind, n, bytes) in want {
        let labels = [("mountpoint", "/t/d/merged"), ("cause", cause), ("kind", kind)];
        let got = m.get("overlayfs_copy_up_total", &labels);
        let got_bytes =
            m.get("overlayfs_copy_up_data_bytes_total", &[("mountpoint", "/t/d/merged"), ("cause", cause)]);
        if (got, got_bytes) != (Some(*n), Some(*bytes)) {
            problems.push(format!(
                "io_uring {cause}/{kind} on /t/d/merged = ({got:?}, {got_bytes:?}), want ({n}, {bytes}):\n{}",
                grep(t, "overlayfs_copy_up_total{mountpoint=\"/t/d")
            ));
        }
    }
    let on_d: f64 = m
        .samples
        .iter()
        .filter(|(k, _)| k.starts_with("overlayfs_copy_up_total{mountpoint=\"/t/d/merged\""))
        .map(|(_, v)| v)
        .sum();
    if on_d != want.iter().map(|w| w.2).sum::<f64>() {
        problems.push(format!("{on_d} copy-ups on /t/d/merged:\n{}", grep(t, "overlayfs_copy_up_total")));
    }
    problems
}
