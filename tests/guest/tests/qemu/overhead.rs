//! Benchmarks that print figures (not part of the test suite): the probes'
//! overhead against no probes and the bare counting pair (modes bench and
//! bpfstats), and the cost of reading the eBPF maps per scrape (mode maps).

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::require_root;
use crate::guest::{kernels, run_guest};

/// The in-program statistics per probe set ("=== BENCH bpfstats agent 70700
/// runs 123456789 ns"): the median round by in-program time, (runs, ns).
fn bpf_medians(console: &str) -> BTreeMap<String, (f64, f64)> {
    let mut rounds: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for line in console.lines().filter_map(|l| l.strip_prefix("=== BENCH bpfstats ")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let (Some(cfg), Some(Ok(runs)), Some(Ok(ns))) =
            (f.first(), f.get(1).map(|s| s.parse::<f64>()), f.get(3).map(|s| s.parse::<f64>()))
        {
            rounds.entry(cfg.to_string()).or_default().push((runs, ns));
        }
    }
    rounds
        .into_iter()
        .map(|(cfg, mut v)| {
            v.sort_by(|a, b| a.1.total_cmp(&b.1));
            (cfg, v[v.len() / 2])
        })
        .collect()
}

/// Each program's figures per probe set ("=== PROG agent one_entry 10100 runs
/// 45000000 ns", one line per program and storm): (probe set, program) ->
/// (runs, ns) of the median storm by time inside that program.
fn program_medians(console: &str) -> BTreeMap<(String, String), (f64, f64)> {
    let mut rounds: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
    for line in console.lines().filter_map(|l| l.strip_prefix("=== PROG ")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let (Some(cfg), Some(name), Some(Ok(runs)), Some(Ok(ns))) =
            (f.first(), f.get(1), f.get(2).map(|s| s.parse::<f64>()), f.get(4).map(|s| s.parse::<f64>()))
        {
            rounds.entry((cfg.to_string(), name.to_string())).or_default().push((runs, ns));
        }
    }
    rounds
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_by(|a, b| a.1.total_cmp(&b.1));
            (k, v[v.len() / 2])
        })
        .collect()
}

/// The timed runs by (place, probe set) ("=== BENCH overlay bare storm 10100
/// entries 1.234567 s", "=== BENCH churn none churn 100000 ops 1.2 s"), and the
/// entries of the overlay storm.
fn timed_runs(console: &str) -> (BTreeMap<(String, String), Vec<f64>>, u64) {
    let mut runs: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    let mut entries = 0u64;
    for line in console
        .lines()
        .filter_map(|l| l.strip_prefix("=== BENCH "))
        .filter(|l| !l.starts_with("bpfstats") && !l.starts_with("churnstats"))
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(place), Some(cfg), Some(n), Some(secs)) = (f.first(), f.get(1), f.get(3), f.get(5)) else {
            continue;
        };
        if *place == "overlay" {
            entries = n.parse().unwrap_or(entries);
        }
        if let Ok(s) = secs.parse::<f64>() {
            runs.entry((place.to_string(), cfg.to_string())).or_default().push(s);
        }
    }
    (runs, entries)
}

/// One kernel's table of the benchmark (mode bench).
fn print_table(version: &str, console: &str, log: &Path) {
    let bpf = bpf_medians(console);
    let (runs, entries) = timed_runs(console);
    // "=== BENCH churnstats agent 0 runs 100000 ops"
    let churn_runs: Option<f64> = console
        .lines()
        .find_map(|l| l.strip_prefix("=== BENCH churnstats agent ")?.split_whitespace().next()?.parse().ok());
    let median = |place: &str, cfg: &str| -> f64 {
        let mut v = runs.get(&(place.to_owned(), cfg.to_owned())).cloned().unwrap_or_default();
        assert!(!v.is_empty(), "no {place}/{cfg} runs in {}", log.display());
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (none, bare, agent) =
        (median("overlay", "none"), median("overlay", "bare"), median("overlay", "agent"));
    let (plain_none, plain_agent) = (median("plain", "none"), median("plain", "agent"));
    let (churn_none, churn_agent) = (median("churn", "none"), median("churn", "agent"));
    let per = |t: f64| (t - none) / entries as f64 * 1e6;
    let plain_entries = entries * 3;
    let stat = |cfg: &str| bpf.get(cfg).map(|(r, ns)| (r / entries as f64, ns / entries as f64 / 1e3));
    let (bare_runs, bare_us) = stat("bare").unwrap_or((f64::NAN, f64::NAN));
    let (agent_runs, agent_us) = stat("agent").unwrap_or((f64::NAN, f64::NAN));
    println!("\nkernel {version} (QEMU TCG, 2 vCPUs), one boot, medians of alternating runs:");
    println!("| workload | no probes | bare kprobe+kretprobe pair | overlay-agent |");
    println!("|---|---|---|---|");
    println!(
        "| overlay, no copy-up: 100,000 creates/writes/chowns/chmods/renames/links/unlinks of upper-only files (5 runs) | {churn_none:.3} s | | {churn_agent:.3} s ({:.3}x) |",
        churn_agent / churn_none
    );
    println!(
        "| program runs per operation (bpf_stats) | | | {} |",
        churn_runs.map(|r| format!("{:.3}", r / 100_000.0)).unwrap_or("?".into())
    );
    println!(
        "| copy-up storm: {entries} lchowns, each a data copy-up (7 runs) | {none:.3} s | {bare:.3} s ({:.3}x) | {agent:.3} s ({:.3}x) |",
        bare / none,
        agent / none
    );
    println!("| added per copy-up (wall) | | {:.1} us | {:.1} us |", per(bare), per(agent));
    println!("| program runs per copy-up (bpf_stats) | | {bare_runs:.1} | {agent_runs:.1} |");
    println!(
        "| time inside the programs per copy-up (bpf_stats, median of 5 storms) | | {bare_us:.2} us | {agent_us:.2} us ({:.2}x the pair) |",
        agent_us / bare_us
    );
    println!(
        "| non-overlay: {plain_entries} lchowns on plain tmpfs (7 runs) | {plain_none:.3} s | | {plain_agent:.3} s ({:.3}x) |",
        plain_agent / plain_none
    );
    println!(
        "\nper program (bpf_stats, median of 5 storms): runs per copy-up, time per run, time per copy-up"
    );
    for ((cfg, name), (runs, ns)) in program_medians(console) {
        let (per_cu, per_run) = (runs / entries as f64, if runs > 0.0 { ns / runs / 1e3 } else { 0.0 });
        println!(
            "  {cfg} {name}: {per_cu:.2} runs, {per_run:.2} us/run, {:.2} us/copy-up",
            ns / entries as f64 / 1e3
        );
    }
}

/// Probe overhead, a benchmark that prints figures (not part of the test suite):
/// OVERLAY_AGENT_QEMU_KERNELS=6.1 cargo test --release -p overlay-agent-guest-tests --features qemu --test qemu -- --ignored --nocapture probe_overhead
#[test]
#[ignore = "benchmark: run on demand, prints figures"]
fn probe_overhead() {
    require_root();
    for version in kernels() {
        // OVERLAY_AGENT_BENCH=bpfstats: only the in-program statistics (no timed storms).
        let mode = std::env::var("OVERLAY_AGENT_BENCH").unwrap_or_else(|_| "bench".into());
        let (console, log) = run_guest(&version, &mode, &format!("qemu-{mode}"));
        if mode == "bpfstats" || mode == "micro" {
            for l in console.lines().filter(|l| {
                l.starts_with("=== PROG ") || l.starts_with("=== BENCH ") || l.starts_with("=== CLOCKSOURCE")
            }) {
                println!("{l}");
            }
            continue;
        }
        print_table(&version, &console, &log);
    }
}

/// The cost of reading the eBPF maps per scrape at 1000 mounts x every cause, a
/// benchmark that prints figures (not part of the test suite):
/// OVERLAY_AGENT_QEMU_KERNELS=6.1 cargo test --release -p overlay-agent-guest-tests --features qemu --test qemu -- --ignored --nocapture map_read_cost
#[test]
#[ignore = "benchmark: run on demand, prints figures"]
fn map_read_cost() {
    require_root();
    for version in kernels() {
        let (console, log) = run_guest(&version, "maps", "qemu-maps");
        let lines: Vec<&str> = console.lines().filter_map(|l| l.strip_prefix("=== MAPS ")).collect();
        assert!(lines.len() >= 4, "no map figures in {}", log.display());
        println!("\nkernel {version} (QEMU TCG), 1000 overlay mounts, 50 scrapes each way:");
        for l in lines {
            println!("  {l}");
        }
    }
}
