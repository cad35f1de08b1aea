//! A real Prometheus scrapes the real agent watching a real overlay mount; the
//! figures must arrive intact through Prometheus' parser. Both generations:
//! 2.x (Debian 12's package) and 3.x (Debian forky's, fetched into .cache; 3.x
//! refuses scrapes whose Content-Type it does not know).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{config_for, write_file, Agent, Overlay, Prometheus};

#[test]
fn prometheus_2_scrapes_the_agent() {
    scrape_with(Path::new("prometheus"));
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

fn scrape_with(prometheus: &Path) {
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
    let prom = Prometheus::start(
        prometheus,
        &format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: overlay-agent\n    static_configs:\n      - targets: ['{}']\n",
            agent.addr
        ),
        tmp.path(),
    );
    let mp = ov.merged.display().to_string();
    common::wait_for("Prometheus to scrape the agent", Duration::from_secs(60), || {
        (prom.value("up{job=\"overlay-agent\"}")? == "1").then_some(())
    });
    let copied = format!("overlayfs_upper_entries{{kind=\"copied_up\",mountpoint=\"{mp}\"}}");
    let value = common::wait_for("the copied_up series in Prometheus", Duration::from_secs(30), || {
        prom.value(&copied)
    });
    assert_eq!(value, "1", "{}", prom.log());
    let wh = prom.value(&format!("overlayfs_upper_entries{{kind=\"whiteout\",mountpoint=\"{mp}\"}}"));
    assert_eq!(wh.as_deref(), Some("1"));
    // Scrape health as Prometheus sees it: every sample kept.
    let scraped: f64 = prom
        .value("scrape_samples_scraped{job=\"overlay-agent\"}")
        .and_then(|s| s.parse().ok())
        .expect("scrape_samples_scraped");
    assert!(scraped > 20.0, "only {scraped} samples scraped");
}
