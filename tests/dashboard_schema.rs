//! The dashboard against Grafana's own schema: the `Dashboard` type of npm
//! `@grafana/schema`, checked by `tsc` (both installed by scripts/deps.sh into
//! .cache/tools/npm, pinned), as committed and as rendered with the mixin's
//! multi-cluster view on; and the mixin's sources formatted as node-mixin's are.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::repo_root;
use serde_json::Value;

fn npm_dir() -> PathBuf {
    let dir = repo_root().join(".cache/tools/npm");
    assert!(
        dir.join("node_modules/.bin/tsc").exists() && dir.join("node_modules/@grafana/schema").exists(),
        "{} lacks tsc or @grafana/schema: scripts/deps.sh ensure_grafana_schema installs them",
        dir.display()
    );
    dir
}

/// Type-checks `dashboard` as an object literal of type `Dashboard` (so that
/// excess keys are errors too); returns tsc's output on failure.
fn tsc(dashboard: &Value) -> Result<(), String> {
    let npm = npm_dir();
    let tmp = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(npm.join("node_modules"), tmp.path().join("node_modules")).expect("symlink");
    let ts = format!(
        "import type {{ Dashboard }} from '@grafana/schema';\nexport const dashboard: Dashboard = {};\n",
        serde_json::to_string_pretty(dashboard).expect("json")
    );
    std::fs::write(tmp.path().join("dashboard.ts"), ts).expect("write");
    let out = Command::new(npm.join("node_modules/.bin/tsc"))
        .args([
            "--noEmit",
            "--strict",
            "--moduleResolution",
            "bundler",
            "--module",
            "esnext",
            "--target",
            "es2022",
        ])
        .arg("dashboard.ts")
        .current_dir(tmp.path())
        .output()
        .expect("run tsc");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

fn committed() -> Value {
    let text = std::fs::read_to_string(repo_root().join("dashboards/overlay-agent.json")).expect("dashboard");
    serde_json::from_str(&text).expect("JSON")
}

/// The dashboard as the mixin renders it with `config` merged into `_config`.
fn rendered_with(config: &str) -> Value {
    let mixin = repo_root().join("mixin");
    let code = format!(
        "((import 'mixin.libsonnet') + {{ _config+:: {config} }}).grafanaDashboards['overlay-agent.json']"
    );
    let out = Command::new("jsonnet").arg("-J").arg(&mixin).arg("-e").arg(code).output().expect("jsonnet");
    assert!(out.status.success(), "jsonnet: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn exprs(d: &Value) -> Vec<String> {
    let mut out: Vec<String> = d["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    for v in d["templating"]["list"].as_array().expect("variables") {
        if v["name"] != "cluster" {
            out.extend(v["query"]["query"].as_str().map(str::to_owned));
        }
    }
    out
}

fn variable<'a>(d: &'a Value, name: &str) -> &'a Value {
    d["templating"]["list"]
        .as_array()
        .and_then(|l| l.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no variable {name}"))
}

#[test]
fn dashboard_type_checks_against_grafana_schema() {
    let d = committed();
    if let Err(e) = tsc(&d) {
        panic!("dashboards/overlay-agent.json does not type-check as @grafana/schema's Dashboard:\n{e}");
    }
    // The check bites: the keys the schema refused before are refused still.
    let mut bad = d.clone();
    bad["templating"]["list"][2]["definition"] = Value::from("label_values(up, instance)");
    let e = tsc(&bad).expect_err("a variable with `definition` must not type-check");
    assert!(e.contains("definition\"' does not exist in type 'VariableModel'"), "{e}");
    let mut bad = d;
    bad["templating"]["list"][2]["current"] = serde_json::json!({});
    let e = tsc(&bad).expect_err("`current: {}` must not type-check");
    assert!(e.contains("missing the following properties from type 'VariableOption'"), "{e}");
}

/// node-mixin's convention: a cluster variable, hidden unless showMultiCluster,
/// selected by every query; with it on, the dashboard still type-checks.
#[test]
fn multi_cluster_view_follows_node_mixin() {
    let single = committed();
    assert_eq!(single, rendered_with("{}"), "the committed dashboard is the mixin's default rendering");
    assert_eq!(variable(&single, "cluster")["hide"], 2, "hidden without showMultiCluster");
    let multi = rendered_with("{ showMultiCluster: true, clusterLabel: 'k8s_cluster' }");
    let cluster = variable(&multi, "cluster");
    assert_eq!(cluster["hide"], 0);
    assert_eq!(
        cluster["query"]["query"],
        "label_values(overlayfs_mounts{job=\"overlay-agent\"}, k8s_cluster)"
    );
    for (d, label) in [(&single, "cluster"), (&multi, "k8s_cluster")] {
        let unselected: Vec<String> =
            exprs(d).into_iter().filter(|e| !e.contains(&format!("{label}=~\"$cluster\""))).collect();
        assert!(unselected.is_empty(), "queries without the cluster selector:\n{}", unselected.join("\n"));
    }
    let joins: Vec<String> = exprs(&multi).into_iter().filter(|e| e.contains("on (instance")).collect();
    assert!(joins.is_empty(), "joins that ignore the cluster in multi-cluster view:\n{}", joins.join("\n"));
    if let Err(e) = tsc(&multi) {
        panic!("the multi-cluster dashboard does not type-check:\n{e}");
    }
}

/// The mixin's sources are jsonnetfmt-clean with node-mixin's Makefile flags.
#[test]
fn mixin_sources_are_formatted_as_node_mixins() {
    let mixin = repo_root().join("mixin");
    let mut sources = Vec::new();
    collect(&mixin, &mut sources);
    assert!(sources.len() >= 8, "{sources:?}");
    let out = Command::new("jsonnetfmt")
        .args(["-n", "2", "--max-blank-lines", "2", "--string-style", "s", "--comment-style", "s", "--test"])
        .args(&sources)
        .output()
        .expect("jsonnetfmt (Debian package jsonnet)");
    assert!(
        out.status.success(),
        "not formatted (jsonnetfmt -i -n 2 --max-blank-lines 2 --string-style s --comment-style s): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read mixin").flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|x| x == "jsonnet" || x == "libsonnet") {
            out.push(p);
        }
    }
}
