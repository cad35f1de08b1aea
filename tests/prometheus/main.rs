//! A real Prometheus scrapes the real agent watching a real overlay mount; the
//! figures must arrive intact through Prometheus' parser. Both generations:
//! 2.x (Debian 12's package) and 3.x (Debian forky's, fetched into .cache; 3.x
//! refuses scrapes whose Content-Type it does not know).
//!
//! Native histograms: Prometheus 3 with `--enable-feature=native-histograms`
//! asks for the protobuf format; it scrapes the agent that way, and ingests the
//! native histograms of a replayed exposition (native.rs; tests/fixtures/native, see
//! tests/native.rs) whose counts, sums and quantiles must agree with the
//! classic series and the counters. Without the feature, and with 2.x, the
//! same server is asked for text and serves it. In every case Prometheus asks
//! for gzip and gets it (the agent's own counters, as Prometheus scraped them).

#[path = "../common/mod.rs"]
mod common;
mod native;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use overlay_agent::metrics::encode::proto;

use common::{config_for, write_file, Agent, Overlay, Prometheus};

#[test]
fn prometheus_2_scrapes_the_agent() {
    scrape_with(Path::new("prometheus"), &[]);
}

#[test]
fn prometheus_3_scrapes_the_agent() {
    scrape_with(&prometheus3(), &[]);
}

/// With native histograms on, Prometheus 3 asks for protobuf: the agent serves
/// it, and the figures arrive intact through Prometheus' protobuf parser.
#[test]
fn prometheus_3_native_scrapes_the_agent_in_protobuf() {
    scrape_with(&prometheus3(), &[NATIVE]);
}

const NATIVE: &str = "--enable-feature=native-histograms";

/// What Prometheus 3.5 sends with native histograms on (logged from 3.5.3).
const ACCEPT_3_NATIVE: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";

fn prometheus3() -> std::path::PathBuf {
    let cache = common::repo_root().join(".cache");
    let out = Command::new(common::repo_root().join("tests/fetch-prometheus3.sh"))
        .arg(&cache)
        .output()
        .expect("fetch");
    assert!(out.status.success(), "fetching Prometheus 3 failed:\n{}", String::from_utf8_lossy(&out.stderr));
    cache.join("prometheus3/prometheus")
}

/// GET `path` with an Accept header; the raw body.
fn get_accepting(addr: &str, path: &str, accept: &str) -> (String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: {accept}\r\n\r\n").expect("write");
    let mut r = BufReader::new(s);
    let mut content_type = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("head");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("content-type: ").or(line.strip_prefix("Content-Type: ")) {
            content_type = v.to_owned();
        }
    }
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut body).expect("body");
    (content_type, body)
}

fn scrape_with(prometheus: &Path, flags: &[&str]) {
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
    let prom = Prometheus::start_with(
        prometheus,
        flags,
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
    // What Prometheus was served, as the agent counted it before anything
    // else asked (the sample Prometheus stored counts its own earlier scrapes).
    let served = |format: &str| -> Option<f64> {
        let q = format!("overlayfs_http_scrapes_total{{job=\"overlay-agent\",format=\"{format}\"}}");
        prom.value(&q)?.parse().ok()
    };
    let (text, protobuf) = common::wait_for("two scrapes counted", Duration::from_secs(30), || {
        let (t, p) = (served("text")?, served("protobuf")?);
        (t + p >= 2.0).then_some((t, p))
    });
    if flags.contains(&NATIVE) {
        assert!(
            protobuf >= 2.0 && text == 0.0,
            "Prometheus was served protobuf: {protobuf} protobuf, {text} text scrapes"
        );
    } else {
        assert!(
            text >= 2.0 && protobuf == 0.0,
            "Prometheus was served text: {text} text, {protobuf} protobuf scrapes"
        );
    }
    served_gzip(&prom);
    if flags.contains(&NATIVE) {
        // The agent's protobuf, fetched by the test, has the same figure.
        let (content_type, body) = get_accepting(&agent.addr, "/metrics", ACCEPT_3_NATIVE);
        assert_eq!(content_type, proto::CONTENT_TYPE);
        let fams = common::decode(&body).expect("delimited MetricFamily messages");
        let entries =
            fams.iter().find(|f| f.name == "overlayfs_upper_entries").expect("upper entries family");
        let copied = entries.metric.iter().find(|m| {
            m.label.iter().any(|l| l.name == "kind" && l.value == "copied_up")
                && m.label.iter().any(|l| l.name == "mountpoint" && l.value == mp)
        });
        assert_eq!(copied.and_then(|m| m.gauge.as_ref()).map(|g| g.value), Some(1.0));
        let families = fams.len() as f64;
        let in_prometheus: f64 = prom
            .value("count(count by (__name__) ({job=\"overlay-agent\",__name__!~\"up|scrape_.*\"}))")
            .and_then(|s| s.parse().ok())
            .expect("family count");
        assert_eq!(in_prometheus, families, "every family served arrived");
    }
}

/// Prometheus always asks for gzip: every scrape it made was answered
/// compressed (both counters from one sample), and no plain byte was sent.
fn served_gzip(prom: &Prometheus) {
    let job = "{job=\"overlay-agent\"}";
    let gzip = format!("overlayfs_http_gzip_scrapes_total{job}");
    let plain = format!("sum(overlayfs_http_scrapes_total{job}) - sum({gzip})");
    assert_eq!(prom.value(&plain).as_deref(), Some("0"), "scrapes without gzip");
    let gzip: f64 = prom.value(&gzip).and_then(|v| v.parse().ok()).expect("gzip scrapes");
    assert!(gzip >= 2.0, "{gzip} gzip scrapes");
    let sent = |encoding: &str| -> Option<f64> {
        let q =
            format!("overlayfs_http_response_bytes_total{{job=\"overlay-agent\",encoding=\"{encoding}\"}}");
        prom.value(&q)?.parse().ok()
    };
    let (gz, identity) = (sent("gzip").expect("gzip bytes"), sent("identity").expect("identity bytes"));
    assert!(gz > 0.0 && identity == 0.0, "bytes sent: {gz} gzip, {identity} identity");
}
