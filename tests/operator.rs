//! The operator kit against the real tools: promtool on the rules and their unit
//! tests; the Grafana dashboard's structure and PromQL; and every dashboard
//! query run against a real Prometheus that scrapes a real agent watching real
//! overlay mounts, plus a replay of a real QEMU guest's scrape for the eBPF
//! panels (this host cannot run the probes).

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{config_for, repo_root, write_file, Agent, Overlay, Prometheus};
use serde_json::Value;

/// The unit tests rendered from the mixin: the older alerts at 1m, the storm
/// shapes (Concourse-size storm, CI worker, 1 GiB chown, bytes storm, hours of
/// steady traffic) at 60 s and at 15 s.
const RULE_TESTS: &[&str] = &["overlay-agent.rules.test.yml", "overlay-agent.rules.test-15s.yml"];

#[test]
fn rules_pass_promtool_check_and_unit_tests() {
    // In config/prometheus: the unit tests name their files relative to it.
    let dir = repo_root().join("config/prometheus");
    let check = common::promtool(&dir, &["check", "rules", "overlay-agent.rules.yml"], None)
        .unwrap_or_else(|e| panic!("promtool check rules failed: {e}"));
    assert!(check.contains("SUCCESS: 30 rules found"), "{check}");
    let mut args = vec!["test", "rules"];
    args.extend(RULE_TESTS);
    let test =
        common::promtool(&dir, &args, None).unwrap_or_else(|e| panic!("promtool {args:?} failed: {e}"));
    assert_eq!(test.matches("SUCCESS").count(), RULE_TESTS.len(), "{test}");
    // Every alert in the rules has a unit test, a severity, a summary, a
    // description and a runbook (monitoring-mixins conventions).
    let rules: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo_root().join("config/prometheus/overlay-agent.rules.yml"))
            .expect("rules"),
    )
    .expect("rules are YAML");
    let tests: String = RULE_TESTS
        .iter()
        .map(|f| std::fs::read_to_string(repo_root().join("config/prometheus").join(f)).expect("tests"))
        .collect();
    let runbooks = std::fs::read_to_string(repo_root().join("docs/runbooks.md")).expect("docs/runbooks.md");
    let mut alerts = 0;
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let Some(name) = rule["alert"].as_str() else { continue };
            alerts += 1;
            assert!(
                name.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                    && !name.contains(['_', '-', ' ']),
                "{name}: not CamelCase"
            );
            // An alert_rule_test with exact labels and annotations.
            assert!(tests.contains(&format!("alertname: {name}\n")), "alert {name} has no alert_rule_test");
            let sev = rule["labels"]["severity"].as_str().unwrap_or("");
            assert!(["critical", "warning", "info"].contains(&sev), "{name}: severity {sev:?}");
            for a in ["summary", "description", "runbook_url"] {
                assert!(rule["annotations"][a].as_str().is_some_and(|s| !s.is_empty()), "{name}: no {a}");
            }
            let url = rule["annotations"]["runbook_url"].as_str().unwrap_or("");
            let anchor = url.rsplit_once('#').map(|x| x.1).unwrap_or("");
            assert!(
                anchor == name.to_ascii_lowercase() && runbooks.contains(&format!("\n## {name}\n")),
                "{name}: runbook_url {url} does not point to a section of docs/runbooks.md"
            );
        }
    }
    assert_eq!(alerts, 13, "alerts in the rules");
}

/// The mixin is the one source: the committed rules, rule tests and dashboard are
/// exactly what mixin/render.sh (jsonnet, then mixin/to-yaml.py) renders from mixin/.
#[test]
fn committed_rules_and_dashboard_are_the_mixins_output() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = Command::new(repo_root().join("mixin/render.sh"))
        .arg(tmp.path())
        .output()
        .expect("run mixin/render.sh");
    assert!(
        out.status.success(),
        "mixin/render.sh failed (scripts/deps.sh installs jsonnet, python3, python3-yaml): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files: Vec<String> = RULE_TESTS.iter().map(|f| format!("config/prometheus/{f}")).collect();
    files.push("config/prometheus/overlay-agent.rules.yml".into());
    files.push("dashboards/overlay-agent.json".into());
    // The sources are jsonnetfmt-formatted.
    let sources: Vec<std::path::PathBuf> = [
        "config.libsonnet",
        "mixin.libsonnet",
        "rules.libsonnet",
        "rules.jsonnet",
        "tests.jsonnet",
        "dashboards.jsonnet",
        "dashboards/dashboards.libsonnet",
        "dashboards/lib.libsonnet",
        "dashboards/fixes.libsonnet",
        "tests/existing.libsonnet",
    ]
    .iter()
    .map(|f| repo_root().join("mixin").join(f))
    .collect();
    let fmt = Command::new("jsonnetfmt")
        .arg("--test")
        .args(["--max-blank-lines", "1"])
        .args(&sources)
        .output()
        .expect("jsonnetfmt (Debian package jsonnet)");
    assert!(
        fmt.status.success(),
        "mixin sources not formatted: run jsonnetfmt -i --max-blank-lines 1 on them\n{}",
        String::from_utf8_lossy(&fmt.stderr)
    );
    for path in files {
        let rendered = std::fs::read_to_string(tmp.path().join(&path)).expect("rendered file");
        let committed = std::fs::read_to_string(repo_root().join(&path)).expect("committed file");
        assert!(committed == rendered, "{path} is not the mixin's output: run mixin/render.sh and commit");
    }
}

#[path = "storms/mod.rs"]
mod storms;

/// The alerts on a recorded storm, without QEMU: a Debian 6.1 guest's scrapes,
/// one a second, through 30 s of steady copy-ups on 10 mounts and 4 real
/// `chown -R`s at once (tests/fixtures/qemu-6.1-storm.scrapes, recorded by
/// tests/guest rules_fire_on_a_recorded_storm), converted by
/// scripts/scrapes-to-promtool and evaluated by promtool, as scraped every
/// second and every 15 s (the 8-second storm then falls between two scrapes).
#[test]
fn rules_fire_on_the_recorded_storm_and_stay_quiet_on_steady_traffic() {
    for every in [1, 15] {
        let report = storms::check(&repo_root().join("tests/fixtures/qemu-6.1-storm.scrapes"), every)
            .unwrap_or_else(|e| panic!("every {every} s: {e}"));
        eprintln!("{report}");
    }
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo_root().join("dashboards/overlay-agent.json")).expect("dashboard");
    serde_json::from_str(&text).expect("dashboard is valid JSON")
}

/// Every query of the dashboard: (panel title, expression), variables included.
fn queries(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                p["title"].as_str().unwrap_or("?").to_owned(),
                t["expr"].as_str().unwrap_or("").to_owned(),
            ));
        }
    }
    for v in d["templating"]["list"].as_array().expect("templating") {
        if let Some(def) = v["query"]["query"].as_str() {
            // label_values(<selector>, label): the selector must return data.
            let sel = def
                .trim_start_matches("label_values(")
                .rsplit_once(',')
                .map(|(s, _)| s.trim())
                .unwrap_or(def);
            out.push((format!("variable {}", v["name"]), sel.to_owned()));
        }
    }
    out
}

/// Grafana's variables, as a query run by hand would substitute them.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
        .replace("$instance", ".*")
        .replace("$mountpoint", ".*")
        .replace("$cause", ".*")
        .replace("$cluster", ".*")
}

#[test]
fn dashboard_structure_and_promql() {
    let d = dashboard();
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let vars = d["templating"]["list"].as_array().expect("templating list");
    let ds = vars.iter().find(|v| v["type"] == "datasource").expect("a datasource variable");
    assert_eq!(ds["query"], "prometheus");
    for name in ["instance", "mountpoint"] {
        assert!(vars.iter().any(|v| v["name"] == name), "variable {name}");
    }
    let mut ids = std::collections::HashSet::new();
    for p in d["panels"].as_array().expect("panels") {
        let title = p["title"].as_str().expect("title");
        assert!(ids.insert(p["id"].as_u64().expect("numeric id")), "duplicate panel id in {title}");
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].as_u64().is_some(), "{title}: gridPos.{k}");
        }
        assert!(
            p["gridPos"]["x"].as_u64().unwrap_or(99) + p["gridPos"]["w"].as_u64().unwrap_or(99) <= 24,
            "{title}: wider than the grid"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}: datasource variable");
        assert!(p["description"].as_str().is_some_and(|s| s.len() > 20), "{title}: description");
        assert!(p["fieldConfig"]["defaults"]["unit"].as_str().is_some(), "{title}: unit");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = std::collections::HashSet::new();
        for t in targets {
            assert!(refs.insert(t["refId"].as_str().expect("refId").to_owned()), "{title}: duplicate refId");
        }
    }
    for (title, expr) in queries(&d) {
        let e = substitute(&expr);
        if let Err(err) = promql_parser::parser::parse(&e) {
            panic!("{title}: PromQL does not parse: {err}\n{e}");
        }
    }
}

/// Serves one captured exposition forever (a replay of a QEMU guest's scrape).
fn replay_server(body: String) -> String {
    replay_server_as("text/plain; version=0.0.4; charset=utf-8", body.into_bytes())
}

/// Serves `body` forever with `content_type` (text, or the delimited protobuf
/// of tests/fixtures/native).
fn replay_server_as(content_type: &'static str, body: Vec<u8>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).and_then(|()| s.write_all(&body));
        }
    });
    addr
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    common::require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    // A live agent on real mounts with a copy-up workload, and a scan that fails.
    let ov = Overlay::new(&tmp.path().join("a"), "merged", "", |l| {
        write_file(&l.join("big"), 100_000);
        write_file(&l.join("gone"), 1);
    });
    std::os::unix::fs::chown(ov.merged.join("big"), Some(5), Some(5)).expect("chown");
    std::fs::remove_file(ov.merged.join("gone")).expect("rm");
    let broken = Overlay::new(&tmp.path().join("b"), "merged", "", |l| write_file(&l.join("f"), 1));
    std::fs::rename(&broken.upper, broken.base.join("upper.moved")).expect("move the upper dir away");
    let cfg = config_for(tmp.path(), "");
    let agent = Agent::start(tmp.path(), &["--config", cfg.to_str().expect("utf8")]);
    // The eBPF panels: a real guest's scrape (Debian 6.1 under QEMU), replayed;
    // the "What to fix" panel: a newer one's, with the avoidable families.
    let capture =
        std::fs::read_to_string(repo_root().join("tests/fixtures/qemu-6.1-metrics.prom")).expect("capture");
    let replay = replay_server(capture);
    let newer =
        std::fs::read_to_string(repo_root().join("tests/fixtures/native/guest-6.1.prom")).expect("capture");
    let replay_newer = replay_server(newer);

    let prom = Prometheus::start(
        Path::new("prometheus"),
        &format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nrule_files: ['{}']\nscrape_configs:\n  - job_name: overlay-agent\n    static_configs:\n      - targets: ['{}', '{}', '{}']\n",
            repo_root().join("config/prometheus/overlay-agent.rules.yml").display(),
            agent.addr,
            replay,
            replay_newer
        ),
        tmp.path(),
    );
    // Ready when the three targets are up, the scan error is in, and rates have samples.
    common::wait_for("the three targets scraped, with history", Duration::from_secs(90), || {
        let up = prom.query("sum(up{job=\"overlay-agent\"})")?;
        let n: f64 = up.first()?["value"][1].as_str()?.parse().ok()?;
        let errs = prom.query("overlayfs_upper_scan_errors_total{reason=\"missing\"}")?;
        let hist = prom.query("count_over_time(overlayfs_upper_bytes[1m]) >= 5")?;
        (n == 3.0 && !errs.is_empty() && !hist.is_empty()).then_some(())
    });
    let d = dashboard();
    let mut empty = Vec::new();
    // The native-histogram panels read series that only a Prometheus scraping
    // protobuf has: checked below against Prometheus 3 with native histograms.
    let (native, classic): (Vec<_>, Vec<_>) =
        queries(&d).into_iter().partition(|(t, _)| t.ends_with("(native)"));
    assert!(native.len() >= 5, "native panels: {native:?}");
    let native_empty = std::thread::spawn(move || native_queries_return_data(&native));
    for (title, expr) in classic {
        let e = substitute(&expr);
        match prom.query(&e) {
            Some(r) if !r.is_empty() => {}
            Some(_) => empty.push(format!("{title}: no data for {e}")),
            None => empty.push(format!("{title}: query failed: {e}")),
        }
    }
    // The recording rules evaluate too (they back the heavy panels).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while prom.query("instance_cause_kind:overlayfs_copy_up:rate5m").is_none_or(|r| r.is_empty()) {
        if std::time::Instant::now() > deadline {
            let rules = common::http_get(&prom.addr, "/api/v1/rules").map(|r| r.body).unwrap_or_default();
            panic!("recording rules did not evaluate within 60 s\nrules: {rules}\nlog: {}", prom.log());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    empty.extend(native_empty.join().expect("the native check"));
    assert!(empty.is_empty(), "dashboard queries without data:\n{}", empty.join("\n"));
    per_copy_up_and_what_to_fix_panels(&prom, &d, &replay, &replay_newer);
}

/// "This chown took 787 ms for 1 GB": the per-copy-up panel gives, for the
/// guest's chown on /t/a/merged (10,000 bytes a copy-up), the seconds and bytes
/// the replayed exposition has; the "What to fix" panel names fix metacopy for
/// that mount, with the data the newer capture counts.
fn per_copy_up_and_what_to_fix_panels(prom: &Prometheus, d: &Value, older: &str, newer_addr: &str) {
    let m = common::Metrics::parse(
        &std::fs::read_to_string(repo_root().join("tests/fixtures/qemu-6.1-metrics.prom")).expect("capture"),
    );
    let labels = [("mountpoint", "/t/a/merged"), ("cause", "chown")];
    let want_secs = m.get("overlayfs_copy_up_seconds_total", &labels).expect("seconds in the capture");
    let panel = d["panels"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["title"].as_str().is_some_and(|t| t.starts_with("Per copy-up"))))
        .expect("the per-copy-up panel");
    let got = |i: usize| -> f64 {
        let e = substitute(panel["targets"][i]["expr"].as_str().expect("expr"));
        let r = prom.query(&e).unwrap_or_default();
        r.iter()
            .find(|s| {
                s["metric"]["instance"] == older
                    && s["metric"]["mountpoint"] == "/t/a/merged"
                    && s["metric"]["cause"] == "chown"
            })
            .and_then(|s| s["value"][1].as_str()?.parse().ok())
            .unwrap_or_else(|| panic!("no /t/a/merged chown row for {e}: {r:?}"))
    };
    let (secs, bytes) = (got(0), got(1));
    assert!(
        (secs - want_secs).abs() < 1e-9 && bytes == 10_000.0,
        "per copy-up: {secs} s and {bytes} bytes, want {want_secs} s and 10000 bytes"
    );
    let panel = d["panels"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["title"].as_str().is_some_and(|t| t.starts_with("What to fix"))))
        .expect("the what-to-fix panel");
    let newer = common::Metrics::parse(
        &std::fs::read_to_string(repo_root().join("tests/fixtures/native/guest-6.1.prom")).expect("capture"),
    );
    let labels = [("mountpoint", "/t/a/merged"), ("fix", "metacopy")];
    let want =
        newer.get("overlayfs_copy_up_avoidable_data_bytes_total", &labels).expect("avoidable in the capture");
    let e = substitute(panel["targets"][1]["expr"].as_str().expect("expr"));
    let r = prom.query(&e).unwrap_or_default();
    let got = r
        .iter()
        .find(|s| {
            s["metric"]["instance"] == newer_addr
                && s["metric"]["mountpoint"] == "/t/a/merged"
                && s["metric"]["fix"] == "metacopy"
        })
        .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok());
    assert_eq!(got, Some(want), "what to fix, /t/a/merged metacopy data: {e}\n{r:?}");
}

/// The native panels' queries, and the native recording rules, against
/// Prometheus 3 with `--enable-feature=native-histograms` scraping the protobuf
/// replay fixture (tests/fixtures/native, from a real guest's capture); the
/// queries that returned nothing.
fn native_queries_return_data(queries: &[(String, String)]) -> Vec<String> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = repo_root().join(".cache");
    let out =
        Command::new(repo_root().join("tests/fetch-prometheus3.sh")).arg(&cache).output().expect("fetch");
    assert!(out.status.success(), "fetching Prometheus 3 failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let pb = std::fs::read(repo_root().join("tests/fixtures/native/exposition.pb")).expect("native fixture");
    // Counters and histograms that grow from scrape to scrape: a static replay
    // has rate() 0 and quantiles NaN, which would still count as data.
    let replay = growing_replay(pb);
    let prom = Prometheus::start_with(
        &cache.join("prometheus3/prometheus"),
        &["--enable-feature=native-histograms"],
        &format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nrule_files: ['{}']\nscrape_configs:\n  - job_name: overlay-agent\n    static_configs:\n      - targets: ['{}']\n",
            repo_root().join("config/prometheus/overlay-agent.rules.yml").display(),
            replay
        ),
        tmp.path(),
    );
    common::wait_for("native histograms with history", Duration::from_secs(90), || {
        let r = prom.query("count_over_time(overlayfs_copy_up_duration_seconds[1m]) >= 5")?;
        (!r.is_empty()).then_some(())
    });
    let mut empty = Vec::new();
    for (title, expr) in queries {
        let e = substitute(expr);
        match prom.query(&e) {
            Some(r) if r.iter().any(finite_and_positive) => {}
            Some(r) if !r.is_empty() => {
                empty.push(format!("{title}: no finite positive value for {e}: {r:?}"))
            }
            Some(_) => empty.push(format!("{title}: no data for {e}")),
            None => empty.push(format!("{title}: query failed: {e}")),
        }
    }
    for rule in [
        "instance_cause:overlayfs_copy_up_duration_seconds:rate5m",
        "instance_cause:overlayfs_copy_up_bytes:rate5m",
        "instance_mountpoint_cause:overlayfs_mount_copy_up_duration_seconds:rate5m",
        "instance_mountpoint_cause:overlayfs_mount_copy_up_bytes:rate5m",
        "instance_cause:overlayfs_copy_up_duration_seconds:p99_native_rate5m",
    ] {
        let got = common::wait_for(rule, Duration::from_secs(60), || {
            prom.query(rule).filter(|r| r.iter().any(finite_and_positive))
        });
        assert!(!got.is_empty(), "{rule}");
    }
    empty
}

/// A query result whose value (or native histogram's count) is a finite
/// number above 0: not NaN from a quantile of nothing, not 0 from a flat rate.
fn finite_and_positive(r: &Value) -> bool {
    let v = match (r["value"][1].as_str(), r["histogram"][1]["count"].as_str()) {
        (Some(v), _) | (None, Some(v)) => v.parse::<f64>().ok(),
        _ => None,
    };
    v.is_some_and(|v| v.is_finite() && v > 0.0)
}

/// A delimited protobuf exposition with every counter and histogram multiplied
/// by `k` (gauges as they are).
fn scaled(pb: &[u8], k: u64) -> Vec<u8> {
    use overlay_agent::metrics::encode::proto::MetricFamily;
    let (mut buf, mut out) = (pb, Vec::new());
    while !buf.is_empty() {
        let mut f: MetricFamily =
            prost::Message::decode_length_delimited(&mut buf).expect("a delimited MetricFamily");
        for m in &mut f.metric {
            if let Some(c) = m.counter.as_mut() {
                c.value *= k as f64;
            }
            if let Some(h) = m.histogram.as_mut() {
                h.sample_count *= k;
                h.sample_sum *= k as f64;
                h.zero_count *= k;
                h.bucket.iter_mut().for_each(|b| b.cumulative_count *= k);
                h.positive_delta.iter_mut().for_each(|d| *d *= k as i64);
            }
        }
        prost::Message::encode_length_delimited(&f, &mut out).expect("encode");
    }
    out
}

/// Serves `pb` scaled by the number of the scrape (1, 2, ...): counters grow.
fn growing_replay(pb: Vec<u8>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for (k, stream) in listener.incoming().enumerate() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = scaled(&pb, k as u64 + 1);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                overlay_agent::metrics::encode::proto::CONTENT_TYPE,
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).and_then(|()| s.write_all(&body));
        }
    });
    addr
}

/// OverlayfsHugeCopyUp and OverlayfsSlowCopyUps on a real Prometheus 3.5 and
/// 2.42, each in text (classic series: 3.5 stores le="2.68435456e+08", 2.42
/// le="268435456") and in protobuf with native histograms (native series only,
/// the defaults of 3.5 and all 2.42 can do): copy-ups of 1 GiB taking 4 s,
/// growing every scrape. HugeCopyUp fires (it has no `for`); SlowCopyUps is at
/// least pending (its `for` is 15m).
#[test]
fn copy_up_alerts_fire_on_classic_and_native_series_in_prometheus_2_and_3() {
    let cache = repo_root().join(".cache");
    let out =
        Command::new(repo_root().join("tests/fetch-prometheus3.sh")).arg(&cache).output().expect("fetch");
    assert!(out.status.success(), "fetching Prometheus 3 failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let p3 = cache.join("prometheus3/prometheus");
    let runs: Vec<_> = [
        (Path::new("prometheus").to_path_buf(), false),
        (Path::new("prometheus").to_path_buf(), true),
        (p3.clone(), false),
        (p3, true),
    ]
    .into_iter()
    .map(|(bin, native)| std::thread::spawn(move || copy_up_alerts(&bin, native)))
    .collect();
    let results: Vec<_> = runs.into_iter().map(|r| r.join()).collect();
    for r in results {
        if let Err(e) = r {
            std::panic::resume_unwind(e)
        }
    }
}

fn copy_up_alerts(binary: &Path, native: bool) {
    use overlay_agent::metrics::{Collector, Def, Exposition, Family, Format, NativeHistogram};
    use std::sync::atomic::{AtomicU64, Ordering};
    static BYTES: Def = Def {
        name: "overlayfs_copy_up_bytes",
        help: "Size of the file data of each data copy-up, by cause.",
        kind: prometheus::proto::MetricType::HISTOGRAM,
        labels: &["cause"],
    };
    static SECONDS: Def = Def {
        name: "overlayfs_copy_up_duration_seconds",
        help: "Time from the start of a copy-up to its end, by cause.",
        kind: prometheus::proto::MetricType::HISTOGRAM,
        labels: &["cause"],
    };
    /// k copy-ups of 1 GiB taking 4 s at the k-th scrape.
    struct Growing(AtomicU64);
    impl Collector for Growing {
        fn collect(&self) -> Vec<Family> {
            let k = self.0.fetch_add(1, Ordering::Relaxed) + 1;
            let (mut b, mut s) = (Family::new(&BYTES), Family::new(&SECONDS));
            let bounds: Vec<f64> = (0..=12).map(|i| 1024.0 * 4f64.powi(i)).collect();
            let bytes = NativeHistogram {
                schema: 3,
                zero_count: 0,
                buckets: vec![(240, k)],
                count: k,
                sum: k as f64 * 2f64.powi(30),
            };
            b.add_kernel_histogram(&["chown"], &bytes, Some(&bounds));
            let bounds: Vec<f64> = (-10..=3).map(|i| 4f64.powi(i)).collect();
            let secs = NativeHistogram {
                schema: 3,
                zero_count: 0,
                buckets: vec![(16, k)],
                count: k,
                sum: 4.0 * k as f64,
            };
            s.add_kernel_histogram(&["chown"], &secs, Some(&bounds));
            vec![b, s]
        }
    }
    let e = std::sync::Arc::new(Exposition::default());
    e.register(Box::new(Growing(AtomicU64::new(0))));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let served = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (e2, served2) = (e.clone(), served.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let accept = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("accept").then(|| v.trim().to_owned())
            });
            let format = Format::negotiate(accept.as_deref());
            served2.lock().expect("lock").push(format);
            let body = e2.render_as(format);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                format.content_type(),
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).and_then(|()| s.write_all(&body));
        }
    });
    let tmp = tempfile::tempdir().expect("tempdir");
    let flags: &[&str] = if native { &["--enable-feature=native-histograms"] } else { &[] };
    let prom = Prometheus::start_with(
        binary,
        flags,
        &format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nrule_files: ['{}']\nscrape_configs:\n  - job_name: overlay-agent\n    static_configs:\n      - targets: ['{addr}']\n",
            repo_root().join("config/prometheus/overlay-agent.rules.yml").display(),
        ),
        tmp.path(),
    );
    let what = format!("{} {}", binary.display(), if native { "protobuf" } else { "text" });
    let alert = |name: &str, state: &str| {
        prom.query(&format!("ALERTS{{alertname=\"{name}\",alertstate=\"{state}\",cause=\"chown\"}}"))
            .is_some_and(|r| !r.is_empty())
    };
    common::wait_for(&format!("OverlayfsHugeCopyUp firing ({what})"), Duration::from_secs(60), || {
        alert("OverlayfsHugeCopyUp", "firing").then_some(())
    });
    common::wait_for(&format!("OverlayfsSlowCopyUps pending ({what})"), Duration::from_secs(30), || {
        alert("OverlayfsSlowCopyUps", "pending").then_some(())
    });
    let want = if native { Format::Protobuf } else { Format::Text };
    let served = served.lock().expect("lock").clone();
    assert!(served.iter().all(|f| *f == want), "{what}: served {served:?}");
    let classic = prom.query("overlayfs_copy_up_bytes_bucket").unwrap_or_default();
    assert_eq!(classic.is_empty(), native, "{what}: classic series only from text: {classic:?}");
    if !native {
        // The bound as this Prometheus spells it: the rule must match it.
        let le: Vec<&str> = classic.iter().filter_map(|r| r["metric"]["le"].as_str()).collect();
        let huge = if binary.ends_with("prometheus3/prometheus") { "2.68435456e+08" } else { "268435456" };
        assert!(le.contains(&huge), "{what}: le values {le:?}");
    }
}

/// The golden exposition, which tests/cli.rs compares `once` with byte for byte
/// in the plain tier, passes promtool's lint (promtool is installed for this tier).
#[test]
fn golden_exposition_passes_promtool_check_metrics() {
    let golden = repo_root().join("tests/fixtures/golden/once.prom");
    let text = std::fs::read_to_string(&golden).unwrap_or_else(|e| panic!("{}: {e}", golden.display()));
    common::promtool_check(&text);
}

/// The recorded storm replayed in real time to a real Prometheus, 2.x and 3.x
/// (whose range windows are left-open): a server hands out the capture's scrapes
/// at the pace they were taken, Prometheus scrapes it and evaluates the rules
/// every second. Nothing may fire during the steady phase; OverlayfsCopyUpStorm
/// on the storm mount must fire within 2 minutes of the storm's first scrape and
/// be the only alert at the end. (Prometheus starts fresh, so this exercises the
/// increase() side of the storm rule; promtool above covers the fresh-series side.)
#[test]
fn prometheus_2_and_3_raise_the_storm_alert_on_the_replayed_storm() {
    let cache = repo_root().join(".cache");
    let out =
        Command::new(repo_root().join("tests/fetch-prometheus3.sh")).arg(&cache).output().expect("fetch");
    assert!(out.status.success(), "fetching Prometheus 3 failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let p3 = cache.join("prometheus3/prometheus");
    let runs: Vec<_> = [Path::new("prometheus").to_path_buf(), p3]
        .into_iter()
        .map(|bin| std::thread::spawn(move || live_storm(&bin)))
        .collect();
    // Every run joined (each drops, so kills, its Prometheus) before a failure is raised.
    let results: Vec<_> = runs.into_iter().map(|r| r.join()).collect();
    for r in results {
        match r {
            Ok(line) => eprintln!("{line}"),
            Err(e) => std::panic::resume_unwind(e),
        }
    }
}

/// One scrape of a capture: (milliseconds since the recording started, phase, body).
fn capture_scrapes(text: &str) -> Vec<(u64, String, String)> {
    let mut out: Vec<(u64, String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("=== SCRAPE ") {
            let mut f = h.split_whitespace();
            let ms = f.next().and_then(|m| m.parse().ok()).expect("=== SCRAPE <ms>");
            out.push((ms, f.next().unwrap_or("-").to_owned(), String::new()));
        } else if let Some(last) = out.last_mut() {
            last.2.push_str(line);
            last.2.push('\n');
        }
    }
    out
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn query_at(prom: &Prometheus, promql: &str, at: Option<f64>) -> Vec<Value> {
    let q = common::url_encode(promql);
    let time = at.map(|t| format!("&time={t:.3}")).unwrap_or_default();
    let r =
        common::http_get(&prom.addr, &format!("/api/v1/query?query={q}{time}")).expect("query Prometheus");
    let v: Value = serde_json::from_str(&r.body).expect("Prometheus answers JSON");
    assert_eq!(v["status"], "success", "{promql}: {}", r.body);
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn live_storm(binary: &Path) -> String {
    type Clock = (Option<std::time::Instant>, std::collections::BTreeMap<String, f64>);
    let capture =
        std::fs::read_to_string(repo_root().join("tests/fixtures/qemu-6.1-storm.scrapes")).expect("capture");
    let scrapes = std::sync::Arc::new(capture_scrapes(&capture));
    let last_ms = scrapes.last().map(|s| s.0).expect("scrapes");
    // The replay clock starts at the first request; the first scrape of each
    // phase is noted (unix time) when it is first served.
    let clock: std::sync::Arc<std::sync::Mutex<Clock>> = Default::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    {
        let (scrapes, clock) = (scrapes.clone(), clock.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let body = {
                    let mut c = clock.lock().unwrap_or_else(|p| p.into_inner());
                    let start = *c.0.get_or_insert_with(std::time::Instant::now);
                    let now = start.elapsed().as_millis() as u64;
                    let (_, phase, body) = scrapes.iter().rev().find(|s| s.0 <= now).unwrap_or(&scrapes[0]);
                    c.1.entry(phase.clone()).or_insert_with(unix_now);
                    body.clone()
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                    body.len(),
                    body
                );
            }
        });
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let prom = Prometheus::start(
        binary,
        &format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nrule_files: ['{}']\nscrape_configs:\n  - job_name: overlay-agent\n    static_configs:\n      - targets: ['{addr}']\n",
            repo_root().join("config/prometheus/overlay-agent.rules.yml").display(),
        ),
        tmp.path(),
    );
    let version = common::wait_for("Prometheus answers", Duration::from_secs(30), || {
        let r = common::http_get(&prom.addr, "/api/v1/status/buildinfo").ok()?;
        let v: Value = serde_json::from_str(&r.body).ok()?;
        v["data"]["version"].as_str().map(str::to_owned)
    });
    // The whole capture served, and a few evaluations more.
    let started = common::wait_for("the replay starts", Duration::from_secs(30), || {
        clock.lock().unwrap_or_else(|p| p.into_inner()).0
    });
    let end = Duration::from_millis(last_ms) + Duration::from_secs(5);
    std::thread::sleep(end.saturating_sub(started.elapsed()));
    let phases = clock.lock().unwrap_or_else(|p| p.into_inner()).1.clone();
    let at = |p: &str| *phases.get(p).unwrap_or_else(|| panic!("phase {p} not served: {phases:?}"));
    let replay_at = unix_now() - started.elapsed().as_secs_f64();
    let label = format!("Prometheus {version}");
    // Quiet through the steady phase: no ALERTS sample from the replay's start to
    // just before the storm's first scrape.
    let steady = query_at(
        &prom,
        &format!("count_over_time(ALERTS[{:.0}s])", at("storm") - replay_at + 1.0),
        Some(at("storm") - 0.5),
    );
    assert!(steady.is_empty(), "{label}: alerts during the steady phase: {steady:?}\n{}", prom.log());
    // At the end: the storm alert on the storm mount and the huge copy-up (chown).
    let firing = query_at(&prom, "ALERTS{alertstate=\"firing\"}", None);
    let mut got: Vec<String> = firing
        .iter()
        .map(|s| {
            let m = &s["metric"];
            format!(
                "{} {}",
                m["alertname"].as_str().unwrap_or(""),
                m["mountpoint"].as_str().or(m["cause"].as_str()).unwrap_or("")
            )
        })
        .collect();
    got.sort();
    let mut want =
        [format!("{} chown", storms::HUGE_ALERT), format!("{} {}", storms::STORM_ALERT, storms::STORM_MOUNT)];
    want.sort();
    assert_eq!(got, want, "{label}: alerts firing at the end\n{}", prom.log());
    let mut report = vec![format!("{label}, live replay at 1 s: nothing during the steady phase")];
    for (alert, phase) in [(storms::STORM_ALERT, "storm"), (storms::HUGE_ALERT, "huge")] {
        let first = query_at(
            &prom,
            &format!(
                "min_over_time(timestamp(ALERTS{{alertname=\"{alert}\",alertstate=\"firing\"}})[2m:1s])"
            ),
            None,
        );
        let t: f64 =
            first.first().and_then(|s| s["value"][1].as_str()?.parse().ok()).expect("first firing time");
        let after = t - at(phase);
        assert!(
            after <= storms::WITHIN_SECS as f64,
            "{label}: {alert} first fired {after:.1} s after the {phase} phase's first scrape"
        );
        report.push(format!("{alert} {after:.1} s after the {phase} phase's first scrape"));
    }
    report.push("only these two at the end".into());
    report.join("; ")
}

/// scripts/scrapes-to-promtool names the file and line of what it cannot read.
#[test]
fn scrapes_to_promtool_rejects_bad_captures_with_file_and_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (text, want) in [
        ("overlayfs_copy_up_total 1\n", ":1: a sample before the first `=== SCRAPE` header"),
        ("=== SCRAPE 0 steady\noverlayfs_copy_up_total{a=\"b\"} x\n", ":2: value 'x' is not a number"),
        ("=== SCRAPE 0 steady\nnot a sample\n", ":2: not an exposition sample"),
        ("=== SCRAPE 0 a\n=== SCRAPE 100 b\n", ":2: two scrapes in slot 0"),
        ("", "no `=== SCRAPE` blocks"),
    ] {
        let f = tmp.path().join("bad.scrapes");
        std::fs::write(&f, text).expect("write");
        let out =
            Command::new(repo_root().join("scripts/scrapes-to-promtool")).arg(&f).output().expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(&format!("{}", f.display())) && err.contains(want),
            "{text:?}: want an error with the file and {want:?}, got: {err}"
        );
    }
}
