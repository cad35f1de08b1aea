//! `overlay-agent check` on this host, against what the host really offers,
//! found out independently: kprobes from kallsyms and the perf kprobe PMU,
//! quota support by mounting an ext4 image with project quotas, an overlay
//! mounted for the mount table, and exit codes a script can use.

mod common;

use std::path::Path;
use std::process::Command;

use common::{require_root, write_file, Overlay};
use serde_json::Value;

fn check(args: &[&str]) -> (i32, Value) {
    let out = Command::new(common::BIN).arg("check").arg("--json").args(args).output().expect("run check");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check --json: {e}\n{}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().expect("exit code"), report)
}

fn finding<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"))
}

fn feature<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["features"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no feature {name} in {report:#}"))
}

/// Whether this kernel has kprobes, as a shell would tell: a `register_kprobe`
/// text symbol, and the perf PMU the agent attaches through.
fn host_has_kprobes() -> bool {
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").expect("kallsyms");
    let symbol = kallsyms.lines().any(|l| l.split_whitespace().nth(2) == Some("register_kprobe"));
    let pmu = Path::new("/sys/bus/event_source/devices/kprobe").exists();
    assert_eq!(symbol, pmu, "kallsyms and the kprobe PMU disagree");
    symbol
}

/// Whether this kernel mounts ext4 with project quotas: tried on a loop image.
fn host_mounts_prjquota(dir: &Path) -> bool {
    let img = dir.join("q.img");
    let mnt = dir.join("q");
    std::fs::create_dir(&mnt).expect("mkdir");
    common::run(Command::new("truncate").args(["-s", "64M"]).arg(&img));
    common::run(Command::new("mkfs.ext4").args(["-q", "-O", "project,quota"]).arg(&img));
    let ok = Command::new("mount").args(["-o", "loop,prjquota"]).arg(&img).arg(&mnt).status().expect("mount");
    if ok.success() {
        common::run(Command::new("umount").arg(&mnt));
    }
    ok.success()
}

#[test]
fn check_tells_what_this_host_lacks_and_the_remedy() {
    require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let ov = Overlay::new(tmp.path(), "merged", "", |l| write_file(&l.join("f"), 10));
    let kprobes = host_has_kprobes();
    let prjquota = host_mounts_prjquota(tmp.path());
    let (code, r) = check(&[]);
    eprintln!("{r:#}");

    let k = finding(&r, "kprobes");
    let attach = finding(&r, "probes_attach");
    if kprobes {
        assert_eq!(k["status"], "ok", "{k}");
    } else {
        assert_eq!(k["status"], "fail", "{k}");
        for f in [k, attach] {
            assert_eq!(f["reason"], "kprobes_unavailable", "the metric's reason: {f}");
            assert!(f["remedy"].as_str().is_some_and(|s| s.contains("CONFIG_KPROBES=y")), "{f}");
        }
        let probes = feature(&r, "copy_up_probes");
        assert_eq!(
            (&probes["works"], &probes["reason"]),
            (&Value::Bool(false), &Value::from("kprobes_unavailable"))
        );
    }
    let q = finding(&r, "quota");
    if prjquota {
        assert!(q["detail"].as_str().is_some_and(|d| d.contains("ext4 project quotas yes")), "{q}");
        assert_ne!(q["status"], "fail", "{q}");
    } else {
        assert_eq!(q["status"], "fail", "ext4 refused prjquota: {q}");
        assert_eq!(q["reason"], "kernel_without_quota", "the metric's reason: {q}");
        assert!(q["remedy"].as_str().is_some_and(|s| s.contains("CONFIG_QFMT_V2")), "{q}");
        assert_eq!(feature(&r, "quota_mode")["works"], false);
    }
    // The overlay mounted above is in the host's table, its upper dir classified.
    let table = finding(&r, "mount_table");
    assert_eq!(table["status"], "ok", "{table}");
    let mounts: usize = table["detail"]
        .as_str()
        .and_then(|d| d.split(": ").nth(1)?.split_whitespace().next()?.parse().ok())
        .expect("n overlay mounts");
    assert!(mounts >= 1, "{table}");
    assert!(q["detail"].as_str().is_some_and(|d| d.contains("upper dirs in quota mode")), "{q}");
    assert_eq!(feature(&r, "mount_discovery")["works"], true);
    let some_fail = r["features"].as_array().expect("features").iter().any(|f| f["works"] == false);
    assert_eq!(code, if some_fail { 3 } else { 0 }, "exit code: {r:#}");
    assert_eq!(r["exit_code"], code);
    drop(ov);
}

/// The text report carries the same findings, each failure with its remedy.
#[test]
fn text_report_names_each_failure_with_its_remedy() {
    require_root();
    let out = Command::new(common::BIN).arg("check").output().expect("run check");
    let text = String::from_utf8_lossy(&out.stdout);
    let (_, r) = check(&[]);
    for f in r["checks"].as_array().expect("checks") {
        let name = f["name"].as_str().expect("name");
        let line = text.lines().find(|l| l.split_whitespace().nth(1) == Some(name));
        assert!(line.is_some(), "{name} missing from the text report:\n{text}");
        if f["status"] == "fail" {
            let remedy = f["remedy"].as_str().expect("a failure has a remedy");
            assert!(text.contains(&format!("remedy: {remedy}")), "{name}: remedy missing:\n{text}");
        }
    }
    assert!(text.contains(&format!("\nexit {}: ", r["exit_code"])), "{text}");
    assert_eq!(out.status.code(), r["exit_code"].as_i64().map(|c| c as i32));
}

/// No mount table to read: exit 4, and the report says where it looked.
#[test]
fn exit_4_when_no_mount_table_can_be_read() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (code, r) = check(&["--path.procfs", tmp.path().to_str().expect("utf8")]);
    assert_eq!(code, 4, "{r:#}");
    let table = finding(&r, "mount_table");
    assert_eq!(table["status"], "fail", "{table}");
    assert!(table["remedy"].as_str().is_some_and(|s| s.contains("hostPID")), "{table}");
    assert_eq!(feature(&r, "mount_discovery")["works"], false);
}

/// `ebpf.enabled: false` is reported as the daemon reports it.
#[test]
fn probes_off_by_config_are_reported_with_the_metrics_reason() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tmp.path().join("c.yaml");
    std::fs::write(&cfg, "ebpf:\n  enabled: false\n").expect("write");
    let (code, r) = check(&["--config", cfg.to_str().expect("utf8")]);
    let attach = finding(&r, "probes_attach");
    assert_eq!(attach["reason"], "disabled_by_config", "{attach}");
    assert_eq!(attach["remedy"], "set `ebpf.enabled: true` in the config file (the default)");
    assert_ne!(code, 0);
}
