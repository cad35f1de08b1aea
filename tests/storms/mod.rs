//! The shipped alerts against a recorded storm: a capture of the agent's scrapes,
//! one a second, through steady background copy-ups and then a real `chown -R`
//! (tests/guest/initramfs/modes/storm.sh), turned into promtool input series by
//! scripts/scrapes-to-promtool and evaluated by `promtool test rules`.
//! Shared by tests/guest (storm.rs: a fresh recording) and tests/operator.rs
//! (the committed one, tests/fixtures/qemu-6.1-storm.scrapes).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::common::{promtool, repo_root};

/// The mount the guest storms on, and the alert it must raise.
pub const STORM_MOUNT: &str = "/t/s/merged";
pub const STORM_ALERT: &str = "OverlayfsCopyUpStorm";
/// The alert the guest's chown of one 272 MiB file must raise.
pub const HUGE_ALERT: &str = "OverlayfsHugeCopyUp";
/// The bound: the alert fires within 2 minutes of the storm's start.
pub const WITHIN_SECS: u64 = 120;

/// The converted series and the phases (`# phase NAME FIRST LAST`, test seconds).
pub struct Series {
    pub yaml: String,
    pub step: u64,
    pub phases: BTreeMap<String, (u64, u64)>,
}

pub fn convert(capture: &Path, every: u32) -> Series {
    let out = Command::new(repo_root().join("scripts/scrapes-to-promtool"))
        .arg(capture)
        .args(["--every", &every.to_string()])
        .output()
        .expect("run scripts/scrapes-to-promtool (python3)");
    let yaml = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "scripts/scrapes-to-promtool {} failed: {}",
        capture.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut phases = BTreeMap::new();
    let mut step = 0;
    for l in yaml.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if let ["#", "phase", name, lo, hi] = f.as_slice() {
            phases
                .insert(name.to_string(), (lo.parse().expect("phase start"), hi.parse().expect("phase end")));
        }
        if let Some(s) = l.strip_prefix("interval: ").and_then(|s| s.strip_suffix('s')) {
            step = s.parse().expect("interval");
        }
    }
    assert!(step > 0, "no interval in the converted series");
    Series { yaml, step, phases }
}

/// Runs promtool on one unit test: the series, `exprs` as (expr, eval second,
/// expected samples as YAML), with the shipped rules. Ok when it passes.
fn rule_test(dir: &Path, s: &Series, exprs: &[(String, u64, String)]) -> Result<(), String> {
    let rules = repo_root().join("config/prometheus/overlay-agent.rules.yml");
    let mut t =
        format!("rule_files:\n  - {}\nevaluation_interval: {}s\ntests:\n  - ", rules.display(), s.step);
    // The converted fragment, indented as the test's body.
    let mut first = true;
    for l in s.yaml.lines().filter(|l| !l.starts_with('#')) {
        if !first {
            t.push_str("    ");
        }
        first = false;
        t.push_str(l);
        t.push('\n');
    }
    t.push_str("    promql_expr_test:\n");
    for (expr, at, samples) in exprs {
        t.push_str(&format!(
            "      - expr: '{expr}'\n        eval_time: {at}s\n        exp_samples: {samples}\n"
        ));
    }
    let file = dir.join("recorded.test.yml");
    std::fs::write(&file, t).expect("write the promtool test");
    let file = file.to_str().expect("UTF-8 temporary path");
    promtool(dir, &["test", "rules", file], None).map(drop)
}

fn selector(labels: &[(&str, &str)]) -> String {
    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{{{}}}", l.join(","))
}

/// Checks a capture at 1 s x `every`: no alert pending or firing during the
/// steady phase; OverlayfsCopyUpStorm on the storm mount first fires within
/// WITHIN_SECS of the storm's first scrape, OverlayfsHugeCopyUp (cause chown)
/// within WITHIN_SECS of the huge chown's; at the end these two are the only
/// alerts firing. Returns a report line with the first firing times.
pub fn check(capture: &Path, every: u32) -> Result<String, String> {
    let s = convert(capture, every);
    let dir = tempfile::tempdir().expect("tempdir");
    let phase =
        |p: &str| s.phases.get(p).copied().ok_or_else(|| format!("no {p} phase in {}", capture.display()));
    let (steady_lo, steady_hi) = phase("steady")?;
    let end = s.phases.values().map(|p| p.1).max().unwrap_or(steady_hi);
    let expected = [
        (
            phase("storm")?.0,
            vec![
                ("alertname", STORM_ALERT),
                ("instance", "guest"),
                ("job", "overlay-agent"),
                ("mountpoint", STORM_MOUNT),
                ("severity", "warning"),
            ],
        ),
        (
            phase("huge")?.0,
            vec![
                ("alertname", HUGE_ALERT),
                ("cause", "chown"),
                ("instance", "guest"),
                ("job", "overlay-agent"),
                ("severity", "warning"),
            ],
        ),
    ];
    let first_firing = |labels: &[(&str, &str)]| {
        let mut l = labels.to_vec();
        l.push(("alertstate", "firing"));
        format!("min_over_time(timestamp(ALERTS{})[{end}s:{}s])", selector(&l), s.step)
    };
    let mut checks = vec![
        // Quiet: no alert at all, pending or firing, at any evaluation of the steady phase.
        (format!("count_over_time(ALERTS[{}s])", steady_hi - steady_lo + s.step), steady_hi, "[]".to_owned()),
        // The expected alerts, and nothing else, at the end of the capture.
        (
            "ALERTS{alertstate=\"firing\"}".to_owned(),
            end,
            format!(
                "[{}]",
                expected
                    .iter()
                    .map(|(_, l)| {
                        let mut l = l.clone();
                        l.extend([("__name__", "ALERTS"), ("alertstate", "firing")]);
                        format!("{{labels: '{}', value: 1}}", selector(&l))
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
    ];
    // Each first fired within WITHIN_SECS of its phase's first scrape.
    for (lo, labels) in &expected {
        let mut l = labels.clone();
        l.push(("alertstate", "firing"));
        checks.push((
            format!("({} - {lo}) <= bool {WITHIN_SECS}", first_firing(labels)),
            end,
            format!("[{{labels: '{}', value: 1}}]", selector(&l)),
        ));
    }
    rule_test(dir.path(), &s, &checks).map_err(|e| format!("phases {:?}:\n{e}", s.phases))?;
    // When exactly, for the report: promtool prints what it got.
    let mut when = Vec::new();
    for (lo, labels) in &expected {
        let t = match rule_test(dir.path(), &s, &[(first_firing(labels), end, "[]".to_owned())]) {
            Err(out) => out
                .lines()
                .find_map(|l| l.trim().strip_prefix("got: ")?.rsplit(' ').next()?.parse::<f64>().ok()),
            Ok(()) => None,
        };
        let name = labels.iter().find(|l| l.0 == "alertname").map(|l| l.1).unwrap_or("?");
        when.push(match t {
            Some(t) => format!(
                "{name} first firing at {t} s ({:+} s after its phase's first scrape at {lo} s)",
                t - *lo as f64
            ),
            None => format!("{name}: ?"),
        });
    }
    Ok(format!(
        "{} at {}s: steady {steady_lo}-{steady_hi} s quiet; {}; only these two firing at {end} s",
        capture.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        s.step,
        when.join("; "),
    ))
}
