//! The shipped alerts against a recorded storm: a capture of the agent's scrapes,
//! one a second, through steady background copy-ups and then a real `chown -R`
//! (tests/qemu/init.sh, mode storm), turned into promtool input series by
//! scripts/scrapes-to-promtool and evaluated by `promtool test rules`.
//! Shared by tests/qemu.rs (a fresh recording) and tests/operator.rs (the
//! committed one, tests/fixtures/qemu-6.1-storm.scrapes).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// The mount the guest storms on, and the alert it must raise.
pub const STORM_MOUNT: &str = "/t/s/merged";
pub const STORM_ALERT: &str = "OverlayfsCopyUpStorm";
/// The bound: the alert fires within 2 minutes of the storm's start.
pub const WITHIN_SECS: u64 = 120;

fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The converted series and the phases (`# phase NAME FIRST LAST`, test seconds).
pub struct Series {
    pub yaml: String,
    pub step: u64,
    pub phases: BTreeMap<String, (u64, u64)>,
}

pub fn convert(capture: &Path, every: u32) -> Series {
    let out = Command::new(root().join("scripts/scrapes-to-promtool"))
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
fn promtool(dir: &Path, s: &Series, exprs: &[(String, u64, String)]) -> Result<(), String> {
    let rules = root().join("config/prometheus/overlay-agent.rules.yml");
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
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .expect("promtool not found: scripts/deps.sh installs prometheus");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

fn firing(labels: &[(&str, &str)]) -> String {
    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("[{{labels: '{{__name__=\"ALERTS\",alertstate=\"firing\",{}}}', value: 1}}]", l.join(","))
}

/// Checks a capture at 1 s x `every`: no alert pending or firing during the
/// steady phase; the storm alert on the storm mount first fires within
/// WITHIN_SECS of the storm's first scrape and is, at the end, the only alert
/// firing. Returns a report line with the first firing time.
pub fn check(capture: &Path, every: u32) -> Result<String, String> {
    let s = convert(capture, every);
    let dir = tempfile::tempdir().expect("tempdir");
    let phase =
        |p: &str| s.phases.get(p).copied().ok_or_else(|| format!("no {p} phase in {}", capture.display()));
    let (steady_lo, steady_hi) = phase("steady")?;
    let (storm_lo, storm_hi) = phase("storm")?;
    let end = s.phases.values().map(|p| p.1).max().unwrap_or(storm_hi);
    let storm_labels = [
        ("alertname", STORM_ALERT),
        ("instance", "guest"),
        ("mountpoint", STORM_MOUNT),
        ("severity", "warning"),
    ];
    let first_firing = format!(
        "min_over_time(timestamp(ALERTS{{alertname=\"{STORM_ALERT}\",alertstate=\"firing\",mountpoint=\"{STORM_MOUNT}\"}})[{end}s:{}s])",
        s.step
    );
    let checks = [
        // Quiet: no alert at all, pending or firing, at any evaluation of the steady phase.
        (format!("count_over_time(ALERTS[{}s])", steady_hi - steady_lo + s.step), steady_hi, "[]".to_owned()),
        // The storm alert, and nothing else, at the end of the capture.
        ("ALERTS{alertstate=\"firing\"}".to_owned(), end, firing(&storm_labels)),
        // It started firing within WITHIN_SECS of the storm's first scrape.
        (
            format!("({first_firing} - {storm_lo}) <= bool {WITHIN_SECS}"),
            end,
            format!(
                "[{{labels: '{{alertname=\"{STORM_ALERT}\",alertstate=\"firing\",instance=\"guest\",mountpoint=\"{STORM_MOUNT}\",severity=\"warning\"}}', value: 1}}]"
            ),
        ),
    ];
    promtool(dir.path(), &s, &checks)
        .map_err(|e| format!("storm {storm_lo}-{storm_hi} s, steady {steady_lo}-{steady_hi} s:\n{e}"))?;
    // When exactly, for the report: promtool prints what it got.
    let first = match promtool(dir.path(), &s, &[(first_firing, end, "[]".to_owned())]) {
        Err(out) => out
            .lines()
            .find_map(|l| l.trim().strip_prefix("got: ")?.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|t| format!("{t}")),
        Ok(()) => None,
    }
    .unwrap_or_else(|| "?".to_owned());
    Ok(format!(
        "{} at {}s: steady {steady_lo}-{steady_hi} s quiet; storm {storm_lo}-{storm_hi} s; {STORM_ALERT} on {STORM_MOUNT} first firing at {first} s; the only alert firing at {end} s",
        capture.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        s.step,
    ))
}
