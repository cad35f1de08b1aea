//! The probes' life in a guest run: the agent's exit and detach, the live
//! trace, kprobes gone after SIGTERM and SIGKILL, a restart, the minimal
//! capabilities, the kernel table against the BTF, no runs without a copy-up,
//! and every copy-up accounted for under parallel copy-ups.

use super::Guest;
use crate::common::{grep, Metrics};
use crate::guest::{marker_value, section, section_of};

pub fn check_lifecycle(g: &Guest) -> Vec<String> {
    let mut problems = Vec::new();
    if !g.console.contains("=== AGENT EXIT 0") {
        problems.push("the agent did not exit 0 on SIGTERM".into());
    }
    // The hash maps (per-CPU arrays read slot by slot where the kernel has no
    // batch for them, 5.10: a separate message).
    if g.console.contains("BPF_MAP_LOOKUP_BATCH failed; reading key by key") {
        problems
            .push("the maps were read key by key: BPF_MAP_LOOKUP_BATCH failed (see the agent log)".into());
    }
    if !g.console.contains("copy-up probes detached") {
        problems.push("the agent did not report detaching its probes".into());
    }
    problems
}

/// The live trace: one line per copy-up, with the process, the file and the mount.
pub fn check_trace(g: &Guest) -> Vec<String> {
    let mut problems = Vec::new();
    let want_total = g.want_total();
    let trace = section(&g.console, "=== TRACE BEGIN\n", "=== TRACE END").unwrap_or("");
    let events: Vec<&str> = trace.lines().filter(|l| !l.starts_with('#') && !l.starts_with("TIME")).collect();
    if events.len() as f64 != want_total {
        problems.push(format!("trace printed {} copy-ups, want {want_total}:\n{trace}", events.len()));
    }
    let chown_line = events.iter().find(|l| l.contains(" chown.dat "));
    let ok = chown_line.is_some_and(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(2) == Some(&"qemu-workload")
            && f.get(3) == Some(&"/t/a/merged")
            && f.get(5) == Some(&"chown")
            && f.get(6) == Some(&"data")
            && f.get(7) == Some(&"10000")
    });
    if !ok {
        problems
            .push(format!("no trace line 'qemu-workload /t/a/merged chown.dat chown data 10000':\n{trace}"));
    }
    if !trace.contains("# trace stopped; 0 events dropped in all") || !g.console.contains("=== TRACE EXIT 0")
    {
        problems.push(format!("trace did not stop cleanly on SIGINT:\n{trace}"));
    }
    problems
}

/// Every overlay kprobe goes with the agent, on SIGTERM and on SIGKILL.
pub fn check_kprobes_detached(g: &Guest) -> Vec<String> {
    let kprobes = |what: &str| marker_value::<u32>(&g.console, &format!("KPROBES {what}"));
    match (kprobes("RUNNING"), kprobes("AFTER SIGTERM"), kprobes("AFTER SIGKILL")) {
        (Some(r), Some(0), Some(0)) if r > 0 => vec![],
        other => vec![format!(
            "overlay kprobes (running, after SIGTERM, after SIGKILL) = {other:?}, want (>0, 0, 0)"
        )],
    }
}

/// A restart counts from zero; the minimal capabilities suffice.
pub fn check_restart_and_caps(g: &Guest) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, file, uid_note) in [
        ("RESTART", "restart.dat", "after SIGKILL"),
        ("CAPS", "caps.dat", "with CAP_BPF, CAP_PERFMON, CAP_SYS_RESOURCE only, perf_event_paranoid 2"),
    ] {
        let Some(t) = section_of(&g.console, name) else {
            problems.push(format!("no {name} metrics ({uid_note})"));
            continue;
        };
        let m = Metrics::parse(t);
        let chown = m.get(
            "overlayfs_copy_up_total",
            &[("mountpoint", "/t/b/merged"), ("cause", "chown"), ("kind", "data")],
        );
        let by_comm = m.get("overlayfs_copy_up_process_total", &[("comm", "chown")]);
        if m.get("overlayfs_ebpf_enabled", &[]) != Some(1.0) || chown != Some(1.0) || by_comm != Some(1.0) {
            let log = section(&g.console, &format!("=== {name} LOG BEGIN"), &format!("=== {name} LOG END"))
                .unwrap_or("");
            problems.push(format!(
                "{uid_note}: busybox chown of {file} gave copy_up_total {chown:?} and process_total{{comm=chown}} {by_comm:?}, want 1 and 1:\n{}\n{log}",
                grep(t, "overlayfs_ebpf")
            ));
        }
    }
    problems
}

/// As booted (Debian: perf_event_paranoid 3), the same capabilities are refused
/// by perf_event_open, and the agent says why.
pub fn check_paranoid(g: &Guest) -> Vec<String> {
    let paranoid: Option<u32> = marker_value(&g.console, "PERF_EVENT_PARANOID");
    match (paranoid, section_of(&g.console, "CAPS_BOOTED").map(Metrics::parse)) {
        (Some(p), Some(m)) if p >= 3 => {
            if m.get("overlayfs_ebpf_disabled_info", &[("reason", "no_privileges")]) != Some(1.0) {
                return vec![format!(
                    "perf_event_paranoid {p} without CAP_SYS_ADMIN: want reason no_privileges:\n{}",
                    grep(&m.text, "overlayfs_ebpf")
                )];
            }
            vec![]
        }
        (Some(_), Some(m)) => {
            if m.get("overlayfs_ebpf_enabled", &[]) != Some(1.0) {
                return vec![format!(
                    "perf_event_paranoid <= 2: want eBPF on:\n{}",
                    grep(&m.text, "overlayfs_ebpf")
                )];
            }
            vec![]
        }
        other => vec![format!("no CAPS_BOOTED run: {:?}", other.0)],
    }
}

/// The kernel table (kernel::hooks) matches this kernel's BTF: every drift is
/// printed by qemu-btf-check naming the function and the kernel.
pub fn check_btf_table(g: &Guest) -> Vec<String> {
    let lines: Vec<&str> = g.console.lines().filter(|l| l.starts_with("btf-check: ")).collect();
    let ok =
        g.console.contains("=== BTF CHECK EXIT 0") && lines.iter().any(|l| l.starts_with("btf-check: ok "));
    // Where the module has BTF (6.1+), every row must have been compared.
    let compared_all =
        g.version() < (6, 1) || lines.iter().any(|l| l.contains("not compared (no overlay BTF): none"));
    if ok && compared_all {
        vec![]
    } else {
        vec![format!("the kernel table does not match this kernel's BTF:\n{}", lines.join("\n"))]
    }
}

/// 8,000 overlay operations on upper-only files (create, write, chown, chmod,
/// rename, link, unlink): zero runs of the agent's programs.
pub fn check_churn(g: &Guest) -> Vec<String> {
    let runs: Option<i64> = marker_value(&g.console, "CHURN RUNS");
    let done = g.console.lines().any(|l| l.starts_with("churn 8000 ops"));
    match runs {
        Some(0) if done => vec![],
        other => vec![format!(
            "program runs during 8000 upper-only operations: {other:?} (churn done: {done}), want 0"
        )],
    }
}

/// Each program's runs during the 64 parallel copy-ups ("=== PARALLEL PROG
/// NAME RUNS", bpf_stats deltas), by program name.
pub fn parallel_runs(console: &str) -> Vec<(String, u64)> {
    console
        .lines()
        .filter_map(|l| {
            let mut f = l.strip_prefix("=== PARALLEL PROG ")?.split_whitespace();
            Some((f.next()?.to_owned(), f.next()?.parse().ok()?))
        })
        .collect()
}

/// 64 processes copying up distinct 2 MiB files at once, each copy-up
/// accounted for: 64 counted with their bytes; during the storm each of the
/// three programs ran exactly 64 times (every ovl_copy_up_one entry reached
/// its ovl_copy_up_end, where it is counted: nothing left in flight, nothing
/// counted twice); no map full, no failed read.
pub fn check_parallel(g: &Guest) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(t) = section_of(&g.console, "PARALLEL") else {
        return vec!["no PARALLEL metrics".into()];
    };
    let m = Metrics::parse(t);
    let labels = [("mountpoint", "/t/e/merged"), ("cause", "open"), ("kind", "data")];
    let n = m.get("overlayfs_copy_up_total", &labels);
    let bytes =
        m.get("overlayfs_copy_up_data_bytes_total", &[("mountpoint", "/t/e/merged"), ("cause", "open")]);
    if (n, bytes) != (Some(64.0), Some(64.0 * (2 << 20) as f64)) {
        problems.push(format!("64 parallel copy-ups gave ({n:?}, {bytes:?}), want (64, 134217728)"));
    }
    let runs = parallel_runs(&g.console);
    let run = |prefix: &str| runs.iter().filter(|(p, _)| p.starts_with(prefix)).map(|(_, n)| n).sum::<u64>();
    let got = (run("one_entry"), run("data_entry"), run("end_entry"));
    if got != (64, 64, 64) || runs.iter().filter(|(_, n)| *n > 0).count() != 3 {
        problems.push(format!(
            "program runs during the 64 parallel copy-ups (one_entry, data_entry, end_entry) = {got:?} \
             over {runs:?}, want (64, 64, 64) and no other program run"
        ));
    }
    for (name, want) in [("overlayfs_ebpf_map_full_total", 0.0), ("overlayfs_ebpf_read_errors_total", 0.0)] {
        if m.get(name, &[]) != Some(want) {
            problems.push(format!(
                "{name} = {:?}, want {want}:\n{}",
                m.get(name, &[]),
                grep(t, "overlayfs_ebpf")
            ));
        }
    }
    problems
}
