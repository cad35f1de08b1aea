//! `overlay-agent check --json` in a guest whose kernel has everything the agent
//! needs (kprobes, BTF, the overlay module loaded, root): every feature
//! works, exit 0, and the probes it attached for the check are the plan's.

use super::Guest;
use crate::guest::{marker_value, section};

pub fn check_preflight(g: &Guest) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(text) = section(&g.console, "=== CHECK BEGIN\n", "=== CHECK END") else {
        return vec!["no check output in the console".into()];
    };
    let report: serde_json::Value = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => return vec![format!("check --json is not JSON ({e}):\n{text}")],
    };
    if marker_value::<i32>(&g.console, "CHECK EXIT") != Some(0) || report["exit_code"] != 0 {
        problems.push(format!("check did not exit 0:\n{text}"));
    }
    let find = |name: &str| {
        report["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == name))
            .cloned()
            .unwrap_or_default()
    };
    for name in ["kernel", "kprobes", "privileges_ebpf", "probes_attach", "mount_table"] {
        let c = find(name);
        if c["status"] != "ok" {
            problems.push(format!("check {name}: {c}"));
        }
    }
    // Everything the probes need works; quota support may be unknown (no
    // module index in the initramfs), which is not a failure.
    let verdict = |name: &str| {
        report["features"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["name"] == name))
            .cloned()
            .unwrap_or_default()
    };
    for name in ["mount_discovery", "upper_dir_scans", "copy_up_probes", "mount_namespaces"] {
        if verdict(name)["works"] != true {
            problems.push(format!("feature {name}: {}", verdict(name)));
        }
    }
    if find("overlay")["detail"] != "module, loaded" {
        problems.push(format!("check overlay: {}", find("overlay")));
    }
    // 5.10 has no module BTF: a warning (the layout is assumed), not a failure.
    let btf = find("btf");
    let want_btf = if g.version() < (5, 11) { "warn" } else { "ok" };
    if btf["status"] != want_btf {
        problems.push(format!("check btf: want {want_btf}: {btf}"));
    }
    // The five overlays of mode agent (A to E) are in the table.
    let table = find("mount_table");
    if !table["detail"].as_str().is_some_and(|d| d.ends_with(": 5 overlay mounts")) {
        problems.push(format!("check mount_table: {table}"));
    }
    let attached = g.m.matching("overlayfs_ebpf_probe_attached", &[]).filter(|s| s.value == 1.0).count();
    let attach = find("probes_attach");
    let want = format!("loaded and attached {attached} of {attached}:");
    if !attach["detail"].as_str().is_some_and(|d| d.starts_with(&want)) {
        problems.push(format!("check probes_attach: want '{want} ...' as the agent attached: {attach}"));
    }
    problems
}
