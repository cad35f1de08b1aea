//! Mode `agent` on every kernel: the workload's known copy-ups
//! (qemu-workload run, uring, parallel) counted exactly, what `explain` makes
//! of them, and the probes' life (trace, restart, capabilities, detach), one
//! named check each.

mod avoidable;
mod counts;
mod explain;
mod histograms;
mod layers;
mod lifecycle;
mod preflight;
mod protobuf;

use std::time::Instant;

use crate::common::{repo_root, require_root, Metrics};
use crate::guest::{arm64_kernels, hang, kernels, run_guest_on, section, Arch};

/// What the workload does, and what the agent must count: (mount, cause, kind,
/// copy-ups); with the rows of the mounts the kernel accepted, layers.rs
/// ([`Guest::expected`]). The same for the tables below.
pub const EXPECTED: &[(&str, &str, &str, f64)] = &[
    ("/t/a/merged", "chown", "data", 3.0), // chown.dat; noop_chown.dat, noop_chgrp.dat (no-ops)
    ("/t/a/merged", "chmod", "data", 2.0), // chmod.dat; noop_chmod.dat (a no-op)
    ("/t/a/merged", "truncate", "data", 1.0),
    ("/t/a/merged", "open", "data", 2.0), // append + 8 concurrent writers on one file
    ("/t/a/merged", "open", "metadata", 1.0), // O_TRUNC open
    ("/t/a/merged", "utimes", "data", 1.0),
    ("/t/a/merged", "xattr", "data", 1.0),
    ("/t/a/merged", "link", "data", 1.0),
    ("/t/a/merged", "rename", "data", 1.0),
    ("/t/a/merged", "create", "directory", 2.0), // d1, d2
    ("/t/a/merged", "remove", "directory", 2.0), // r1, r2
    ("/t/b/merged", "chown", "data", 1.0),
    ("/t/c/merged", "chown", "metadata", 1.0),
    ("/t/c/merged", "open", "deferred_data", 1.0),
];

pub const EXPECTED_BYTES: &[(&str, &str, f64)] = &[
    ("/t/a/merged", "chown", 30_000.0), // 10,000 + 9,500 + 10,500
    ("/t/a/merged", "chmod", 41_000.0), // 20,000 + 21,000
    ("/t/a/merged", "truncate", 30_000.0),
    ("/t/a/merged", "open", 51_000.0), // 40,000 appended + 11,000 shared; O_TRUNC copies none
    ("/t/a/merged", "utimes", 6_000.0),
    ("/t/a/merged", "xattr", 7_000.0),
    ("/t/a/merged", "link", 8_000.0),
    ("/t/a/merged", "rename", 9_000.0),
    ("/t/a/merged", "create", 0.0),
    ("/t/a/merged", "remove", 0.0),
    ("/t/b/merged", "chown", 12_000.0),
    ("/t/c/merged", "chown", 0.0),
    ("/t/c/merged", "open", 13_000.0),
];

/// The copy-ups that set what the file already had: (mount, cause, no-ops).
/// Every (mount, cause) of a chown, chmod or utimes copy-up has its series, 0
/// where every such copy-up changed something.
pub const EXPECTED_NOOP: &[(&str, &str, f64)] = &[
    ("/t/a/merged", "chown", 2.0), // noop_chown.dat, noop_chgrp.dat; chown.dat to 1:1 changes
    ("/t/a/merged", "chmod", 1.0), // noop_chmod.dat; chmod.dat to 0600 changes
    ("/t/a/merged", "utimes", 0.0), // times 1 and 2: a change
    ("/t/b/merged", "chown", 0.0), // other.dat to 2:2
    ("/t/c/merged", "chown", 0.0), // meta.dat to 3:3 (metacopy)
];

/// One guest run of mode `agent`: the console and the main scrape.
pub struct Guest {
    pub arch: Arch,
    pub version: String,
    pub console: String,
    pub text: String,
    pub m: Metrics,
}

impl Guest {
    /// EXPECTED, and the copy-ups of layers.rs's mounts this kernel accepted.
    pub fn expected(&self) -> Vec<(&'static str, &'static str, &'static str, f64)> {
        EXPECTED.iter().copied().chain(layers::expected(self)).collect()
    }

    /// EXPECTED_BYTES, and layers.rs's for this kernel.
    pub fn expected_bytes(&self) -> Vec<(&'static str, &'static str, f64)> {
        EXPECTED_BYTES.iter().copied().chain(layers::expected_bytes(self)).collect()
    }

    /// EXPECTED_NOOP, and layers.rs's for this kernel.
    pub fn expected_noop(&self) -> Vec<(&'static str, &'static str, f64)> {
        EXPECTED_NOOP.iter().copied().chain(layers::expected_noop(self)).collect()
    }

    pub fn want_total(&self) -> f64 {
        self.expected().iter().map(|e| e.3).sum()
    }

    pub fn version(&self) -> (u32, u32) {
        let mut it = self.version.split('.').map(|p| p.parse().unwrap_or(0));
        (it.next().unwrap_or(0), it.next().unwrap_or(0))
    }
}

/// A named check of a guest run: it returns its problems.
type Check = (&'static str, fn(&Guest) -> Vec<String>);

/// Every check of a guest run.
const CHECKS: &[Check] = &[
    ("copy_ups_by_cause_and_kind", counts::check_counts),
    ("data_bytes", counts::check_bytes),
    ("no_errors", counts::check_no_errors),
    ("noop_copy_ups", counts::check_noop),
    ("avoidable_copy_ups", avoidable::check_avoidable),
    ("explain", explain::check_explain),
    ("mount_outcomes", layers::check_outcomes),
    ("mount_info_userxattr_idmapped", layers::check_mount_info),
    ("histograms", histograms::check_histograms),
    ("forgotten_mount", histograms::check_forgotten_mount),
    ("protobuf_native_histograms", protobuf::check_protobuf),
    ("processes", counts::check_processes),
    ("lifecycle", lifecycle::check_lifecycle),
    ("trace", lifecycle::check_trace),
    ("kprobes_detached", lifecycle::check_kprobes_detached),
    ("restart_and_capabilities", lifecycle::check_restart_and_caps),
    ("perf_event_paranoid", lifecycle::check_paranoid),
    ("btf_table", lifecycle::check_btf_table),
    ("io_uring", counts::check_io_uring),
    ("no_runs_without_copy_up", lifecycle::check_churn),
    ("every_copy_up_accounted", lifecycle::check_parallel),
    ("preflight_check", preflight::check_preflight),
];

fn check_kernel(arch: Arch, version: &str) -> Result<String, String> {
    let started = Instant::now();
    let (console, log) = run_guest_on(arch, version, "agent", "qemu");
    let secs = started.elapsed().as_secs_f64();
    let fail = |what: String| {
        Err(format!("kernel {version} ({}): {what} (console: {})", arch.debian(), log.display()))
    };
    for marker in [
        "INSMOD FAILED",
        "PREPARE FAILED",
        "AGENT NOT READY",
        "PROBES OFF",
        "TRACE NOT READY",
        "WORKLOAD FAILED",
        "RESTART NOT READY",
        "CAPS NOT READY",
        "CAPS_BOOTED NOT READY",
        "PARALLEL FAILED",
        "FORGET TIMEOUT",
        "DISCOVERY TIMEOUT",
    ] {
        if console.contains(&format!("=== {marker}")) {
            let agent_log = section(&console, "=== AGENT LOG BEGIN", "=== AGENT LOG END").unwrap_or("");
            return fail(format!("{marker}\n{agent_log}"));
        }
    }
    if let Some(line) = hang(&console) {
        return fail(line.to_owned());
    }
    let Some(text) = section(&console, "=== METRICS BEGIN\n", "=== METRICS END") else {
        return fail("no metrics in the console output".into());
    };
    let g = Guest {
        arch,
        version: version.to_owned(),
        m: Metrics::parse(text),
        text: text.to_owned(),
        console: console.clone(),
    };
    explain::save(&g);
    let mut problems = Vec::new();
    for (name, check) in CHECKS {
        for p in check(&g) {
            problems.push(format!("[{name}] {p}"));
        }
    }
    if problems.is_empty() {
        Ok(summary(&g, secs))
    } else {
        fail(problems.join("\n"))
    }
}

/// The summary line of a kernel whose checks all passed.
fn summary(g: &Guest, secs: f64) -> String {
    let attached = g.m.matching("overlayfs_ebpf_probe_attached", &[]).filter(|s| s.value == 1.0).count();
    format!(
        "kernel {} ({}): all {} copy-ups exact, {} checks passed, boot+test {secs:.1}s, {attached} probes attached; \
         64 parallel copy-ups: {} program runs each; {}",
        g.version,
        g.arch.debian(),
        g.want_total(),
        CHECKS.len(),
        lifecycle::parallel_runs(&g.console)
            .iter()
            .map(|(p, n)| format!("{p} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        layers::summary(g),
    )
}

/// Every check on each kernel of `arch`; the summary goes to target/`summary_file`.
fn check_kernels(arch: Arch, versions: Vec<String>, summary_file: &str) {
    require_root();
    let mut failures = Vec::new();
    let mut summary = String::new();
    for v in versions {
        match check_kernel(arch, &v) {
            Ok(line) => summary.push_str(&format!("{line}\n")),
            Err(e) => failures.push(e),
        }
    }
    // scripts/test.sh prints this after the run (cargo captures a passing test's output).
    std::fs::write(repo_root().join("target").join(summary_file), &summary).expect("write summary");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn copy_ups_are_counted_exactly_on_real_kernels() {
    check_kernels(Arch::Amd64, kernels(), "qemu-summary.txt");
}

/// The same workload and checks on Debian's arm64 kernels (qemu-system-aarch64,
/// TCG): its own test, so that it runs beside the x86_64 guests.
#[test]
fn copy_ups_are_counted_exactly_on_arm64_kernels() {
    check_kernels(Arch::Arm64, arm64_kernels(), "qemu-arm64-summary.txt");
}
