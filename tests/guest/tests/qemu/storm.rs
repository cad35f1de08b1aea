//! Mode `storm` on kernel 6.1: a recording of the agent's scrapes through a
//! real `chown -R` storm and one huge copy-up, which the shipped alerts must
//! catch (tests/storms/mod.rs).

use std::path::Path;

use crate::common::{repo_root, require_root, Metrics};
use crate::guest::{hang, kernels, run_guest, section};
use crate::storms;

/// overlayfs_copy_up_seconds_total in the capture: per mount (the storm mount's
/// highest, as it is unmounted before the end), and adding up, with the storm
/// mount's, to the latency histogram's sum (both are the kernel's latency sums)
/// at the last scrape. Returns the storm mount's seconds.
fn check_latency_sums(scrapes: &str, log: &Path) -> f64 {
    let blocks: Vec<Metrics> =
        scrapes.split("=== SCRAPE ").filter_map(|b| Some(Metrics::parse(b.split_once('\n')?.1))).collect();
    let m = blocks.last().expect("scrapes");
    let per_mount: f64 =
        m.matching("overlayfs_copy_up_seconds_total", &[("cause", "chown")]).map(|s| s.value).sum();
    let hist_sum = m.get("overlayfs_copy_up_duration_seconds_sum", &[("cause", "chown")]).unwrap_or(-1.0);
    let storm_secs = blocks
        .iter()
        .filter_map(|m| {
            m.get(
                "overlayfs_copy_up_seconds_total",
                &[("mountpoint", storms::STORM_MOUNT), ("cause", "chown")],
            )
        })
        .fold(0.0, f64::max);
    // The node-wide histogram keeps what the storm mount counted after the agent
    // forgot it (its last value: no copy-up there in its last 32 s), and never
    // goes down. (Unless the huge copy-up's overlay got the storm's device number
    // before the agent read a mount table without it: then nothing was forgotten
    // and the counters, under the new mountpoint, still hold it.)
    let storm_gone = m
        .get("overlayfs_copy_up_seconds_total", &[("mountpoint", storms::STORM_MOUNT), ("cause", "chown")])
        .is_none();
    let forgotten = storm_gone && (per_mount + storm_secs - hist_sum).abs() < 1e-6 * hist_sum.max(1.0);
    let want_sum = per_mount + if forgotten { storm_secs } else { 0.0 };
    let sums: Vec<f64> = blocks
        .iter()
        .filter_map(|m| m.get("overlayfs_copy_up_duration_seconds_sum", &[("cause", "chown")]))
        .collect();
    assert!(
        storm_secs > 0.0
            && (want_sum - hist_sum).abs() < 1e-6 * hist_sum.max(1.0)
            && sums.windows(2).all(|w| w[0] <= w[1]),
        "overlayfs_copy_up_seconds_total: {storm_secs} s on the storm mount (gone at the end: {storm_gone}, forgotten: {forgotten}), {per_mount} s over the mounts left, latency histogram sum {hist_sum} s, want {want_sum} s, never going down (capture: {})",
        log.display()
    );
    storm_secs
}

/// The alerts on real data: the agent scraped every second in a Debian 6.1 guest
/// through steady background copy-ups (10 mounts x 2/s), a real busybox
/// `chown -R` storm and a chown of one 272 MiB file (initramfs/modes/storm.sh).
/// The capture goes to target/qemu-storm-6.1.scrapes
/// (tests/fixtures/qemu-6.1-storm.scrapes is one, committed);
/// scripts/scrapes-to-promtool and promtool do the rest (tests/storms/mod.rs):
/// nothing fires in the steady phase, the storm and huge copy-up alerts fire
/// within 2 minutes, at 1 s and 15 s scrapes.
#[test]
fn rules_fire_on_a_recorded_storm() {
    require_root();
    let version = "6.1";
    let chosen = kernels();
    assert!(
        chosen.iter().any(|k| k == version),
        "the recorded storm runs on kernel {version}, which OVERLAY_AGENT_QEMU_KERNELS ({chosen:?}) leaves out: \
         add it, or leave this test out (--skip rules_fire_on_a_recorded_storm)"
    );
    let (console, log) = run_guest(version, "storm", "qemu-storm");
    for marker in ["INSMOD FAILED", "AGENT NOT READY", "STEADY FAILED", "STORM FAILED", "HUGE FAILED"] {
        assert!(!console.contains(&format!("=== {marker}")), "{marker} (console: {})", log.display());
    }
    assert_eq!(hang(&console), None, "console: {}", log.display());
    let scrapes = section(&console, "=== STORM SCRAPES BEGIN\n", "=== STORM SCRAPES END")
        .unwrap_or_else(|| panic!("no scrapes in the console (console: {})", log.display()));
    let capture = repo_root().join(format!("target/qemu-storm-{version}.scrapes"));
    std::fs::write(&capture, scrapes).expect("write the capture");
    let storm = console.lines().find(|l| l.starts_with("=== STORM 4 x chown")).unwrap_or("=== STORM ?");
    let huge = console.lines().find(|l| l.starts_with("=== HUGE chown")).unwrap_or("=== HUGE ?");
    let storm_secs = check_latency_sums(scrapes, &log);
    match storms::check(&capture, 1).and_then(|a| Ok(format!("{a}; {}", storms::check(&capture, 15)?))) {
        Ok(report) => {
            let line = format!(
                "kernel {version}: {}, {storm_secs:.1} s blocked; {}; {report}\n",
                storm.trim_start_matches("=== "),
                huge.trim_start_matches("=== ")
            );
            eprint!("{line}");
            // scripts/test.sh prints it after the run.
            std::fs::write(repo_root().join("target/qemu-storm-summary.txt"), line).expect("write summary");
        }
        Err(e) => panic!("kernel {version} ({storm}): {e}\ncapture: {}", capture.display()),
    }
}
