//! A real Prometheus scrapes the real agent watching a real overlay mount; the
//! figures must arrive intact through Prometheus' parser. Both generations:
//! 2.x (Debian 12's package) and 3.x (Debian forky's, fetched into .cache; 3.x
//! refuses scrapes whose Content-Type it does not know).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{config_for, write_file, Agent, Overlay};

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn query(addr: &str, promql: &str) -> Option<serde_json::Value> {
    let q: String = promql
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let r = common::http_get(addr, &format!("/api/v1/query?query={q}")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    (v["status"] == "success").then(|| v["data"]["result"].clone())
}

#[test]
fn prometheus_2_scrapes_the_agent() {
    scrape_with(std::path::Path::new("prometheus"));
}

#[test]
fn prometheus_3_scrapes_the_agent() {
    let cache = common::repo_root().join(".cache");
    let out = Command::new(common::repo_root().join("tests/fetch-prometheus3.sh"))
        .arg(&cache)
        .output()
        .expect("fetch");
    assert!(out.status.success(), "fetching Prometheus 3 failed:\n{}", String::from_utf8_lossy(&out.stderr));
    scrape_with(&cache.join("prometheus3/prometheus"));
}

fn scrape_with(prometheus: &std::path::Path) {
    common::require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let ov = Overlay::new(tmp.path(), "merged", "", |l| {
        write_file(&l.join("a"), 4096);
        write_file(&l.join("b"), 10);
    });
    std::os::unix::fs::chown(ov.merged.join("a"), Some(3), Some(3)).expect("chown");
    std::fs::remove_file(ov.merged.join("b")).expect("rm");
    let cfg = config_for(tmp.path(), "");
    let agent = Agent::start(tmp.path(), &["--config", cfg.to_str().expect("utf8")]);

    let prom_port = common::free_port();
    let prom_addr = format!("127.0.0.1:{prom_port}");
    let prom_cfg = tmp.path().join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: overlay-agent\n    static_configs:\n      - targets: ['{}']\n",
            agent.addr
        ),
    )
    .expect("write prometheus.yml");
    let prom = Command::new(prometheus)
        .arg(format!("--config.file={}", prom_cfg.display()))
        .arg(format!("--storage.tsdb.path={}", tmp.path().join("tsdb").display()))
        .arg(format!("--web.listen-address={prom_addr}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("prometheus.log")).expect("log"))
        .spawn()
        .expect("prometheus not found: run the README's test command, which installs it");
    let _prom = Prometheus(prom);

    let mp = ov.merged.display().to_string();
    let up = common::wait_for("Prometheus to scrape the agent", Duration::from_secs(60), || {
        let r = query(&prom_addr, "up{job=\"overlay-agent\"}")?;
        let v = r.get(0)?["value"][1].as_str()?.to_owned();
        (v == "1").then_some(v)
    });
    assert_eq!(up, "1");
    let promql = format!("overlayfs_upper_entries{{kind=\"copied_up\",mountpoint=\"{mp}\"}}");
    let value = common::wait_for("the copied_up series in Prometheus", Duration::from_secs(30), || {
        let r = query(&prom_addr, &promql)?;
        r.get(0)?["value"][1].as_str().map(str::to_owned)
    });
    assert_eq!(value, "1");
    let wh = query(&prom_addr, &format!("overlayfs_upper_entries{{kind=\"whiteout\",mountpoint=\"{mp}\"}}"))
        .expect("query");
    assert_eq!(wh[0]["value"][1], "1");
    // Scrape health as Prometheus sees it: no samples dropped or rejected.
    let scraped = query(&prom_addr, "scrape_samples_scraped{job=\"overlay-agent\"}").expect("query");
    let n: f64 = scraped[0]["value"][1].as_str().and_then(|s| s.parse().ok()).expect("number");
    assert!(n > 20.0, "only {n} samples scraped");
}
