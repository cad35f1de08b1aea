//! The command line contract, on fixtures: `once` against a golden exposition,
//! `mounts`, `check-config`, exit codes.

mod common;

use std::process::Command;

use common::{repo_root, BIN};

fn fixture_procfs() -> String {
    repo_root().join("tests/fixtures/procfs").display().to_string()
}

/// Drops the process_* families: they describe the test process, not the fixture.
fn without_process_metrics(text: &str) -> String {
    text.lines()
        .filter(|l| {
            let name = l.trim_start_matches("# HELP ").trim_start_matches("# TYPE ");
            !name.starts_with("process_")
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn golden_once_on_fixture_procfs() {
    let rootfs = repo_root().join("tests/fixtures/rootfs");
    let config = repo_root().join("tests/fixtures/once-ebpf-off.yaml");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["once", "--path.procfs", &fixture_procfs(), "--path.rootfs"])
        .arg(&rootfs)
        .output()
        .expect("run overlay-agent once");
    assert!(out.status.success(), "once failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("exposition is UTF-8");
    // promtool lints the golden file in the e2e tier (tests/operator.rs).
    let got = without_process_metrics(&text);
    let golden = repo_root().join("tests/fixtures/golden/once.prom");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &got).expect("write golden file");
    }
    let want = std::fs::read_to_string(&golden).expect("golden file (UPDATE_GOLDEN=1 to create)");
    if got != want {
        let diff: Vec<String> = want
            .lines()
            .filter(|l| !got.lines().any(|g| g == *l))
            .map(|l| format!("- {l}"))
            .chain(got.lines().filter(|l| !want.lines().any(|w| w == *l)).map(|l| format!("+ {l}")))
            .collect();
        panic!(
            "exposition differs from {} (UPDATE_GOLDEN=1 to accept):\n{}",
            golden.display(),
            diff.join("\n")
        );
    }
}

#[test]
fn once_reports_every_fixture_superblock_once() {
    let out = common::run(Command::new(BIN).args(["once", "--path.procfs", &fixture_procfs()]));
    let m = common::Metrics::parse(&out);
    // 16 overlay superblocks: 17 well-formed overlay lines, one of them a bind mount.
    assert_eq!(m.get("overlayfs_mounts", &[]), Some(16.0));
    assert_eq!(m.count("overlayfs_mount_info", &[]), 16);
    assert_eq!(m.get("overlayfs_discovery_bad_lines", &[]), Some(1.0));
    let podman = "/var/lib/containers/storage/overlay/9a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f/merged";
    assert_eq!(m.get("overlayfs_mount_mountpoints", &[("mountpoint", podman)]), Some(2.0));
    assert_eq!(
        m.get("overlayfs_mount_lower_layers", &[("mountpoint", "/var/lib/images/many/merged")]),
        Some(60.0)
    );
    assert_eq!(m.get("overlayfs_mount_relative_paths", &[("mountpoint", "/var/lib/docker/overlay2/7b2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e/merged")]), Some(5.0));
    assert_eq!(
        m.get("overlayfs_mount_info", &[("mountpoint", "/mnt/with space\ttab\\back"), ("upperdir", "/u sp")]),
        Some(1.0)
    );
    assert_eq!(m.get("overlayfs_mount_info", &[("mountpoint", "/mnt/q\"uote\nnl")]), Some(1.0));
    assert_eq!(
        m.get("overlayfs_mount_info", &[("mountpoint", "/mnt/ro-image"), ("readonly", "true")]),
        Some(1.0)
    );
    assert_eq!(m.get("overlayfs_mount_data_layers", &[("mountpoint", "/composefs")]), Some(1.0));
    // Upper dirs that do not exist are reported, never invented; relative and
    // read-only ones are not scanned at all.
    assert_eq!(
        m.get(
            "overlayfs_upper_scan_errors_total",
            &[("mountpoint", "/mnt/q\"uote\nnl"), ("reason", "missing")]
        ),
        Some(1.0)
    );
    assert_eq!(m.count("overlayfs_upper_scan_errors_total", &[("mountpoint", "/mnt/ro-image")]), 0);
    assert_eq!(m.count("overlayfs_upper_bytes", &[]), 0);
}

#[test]
fn mounts_table_and_json() {
    let table = common::run(Command::new(BIN).args(["mounts", "--path.procfs", &fixture_procfs()]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 17, "header + 16 superblocks:\n{table}");
    assert!(lines[0].starts_with("MOUNT_ID\tDEVICE\tMNTNS\tHELD_BY\tMOUNTPOINT\tUPPERDIR"));
    assert!(table.contains("2007\t0:107\t-\t-\t/mnt/ro-image\t-\t-\t2\tro"), "{table}");
    assert!(table.contains("relative_paths=5"), "{table}");
    assert!(table.contains("\t/mnt/with space\\011tab\\134back\t"), "{table}");
    assert!(table.contains("\t/mnt/q\"uote\\012nl\t"), "{table}");

    let json = common::run(Command::new(BIN).args(["mounts", "--json", "--path.procfs", &fixture_procfs()]));
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let list = v.as_array().expect("array");
    assert_eq!(list.len(), 16);
    let escaped = list.iter().find(|m| m["device"] == "0:108").expect("0:108");
    assert_eq!(escaped["mountpoint"], "/mnt/with space\ttab\\back");
    assert_eq!(escaped["options"]["lower"][0]["path"], "/l:colon");
    assert_eq!(escaped["options"]["lower"][1]["path"], "/l2,comma");
    let docker_rel = list.iter().find(|m| m["device"] == "0:102").expect("0:102");
    assert_eq!(docker_rel["options"]["upper"]["kind"], "relative");
    assert_eq!(docker_rel["lower_layers"], 3);
}

#[test]
fn check_config_accepts_the_example_and_rejects_with_location() {
    let example = repo_root().join("config/overlay-agent.yaml");
    let out = Command::new(BIN).arg("check-config").arg(&example).output().expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "web:\n  listen_address: :9864\nscan:\n  interval: 30s\n  concurency: 2\n")
        .expect("write");
    let out = Command::new(BIN).arg("check-config").arg(&bad).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:5:3:", bad.display())), "{err}");
    assert!(err.contains("scan.concurency"), "{err}");

    // The same file given to the daemon: exit 2 before anything starts.
    let out = Command::new(BIN).arg("--config").arg(&bad).arg("once").output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let out =
        Command::new(BIN).arg("check-config").arg(dir.path().join("absent.yaml")).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("absent.yaml"));
}

#[test]
fn bad_flags_exit_2_and_version_prints() {
    let out = Command::new(BIN).args(["--log.format", "xml"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let out = common::run(Command::new(BIN).arg("--version"));
    assert!(out.starts_with("overlay-agent "), "{out}");
}

#[test]
fn unreadable_procfs_fails_with_the_path() {
    let out = Command::new(BIN).args(["once", "--path.procfs", "/nonexistent-procfs"]).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent-procfs/self/mountinfo"));
}
