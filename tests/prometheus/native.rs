//! Native histograms: a replayed exposition (tests/fixtures/native, see
//! tests/native.rs) served in the format each scrape asks for, ingested by
//! Prometheus 2.42 and 3.5 with and without native histograms; their counts,
//! sums and quantiles must agree with the classic series and the counters.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use overlay_agent::metrics::Format;

use super::common::{self, close, Prometheus};
use super::{prometheus3, NATIVE};

/// Serves tests/fixtures/native in the format each request's Accept prefers
/// (the agent's negotiation), and records which.
struct Replay {
    addr: String,
    served: Arc<Mutex<Vec<Format>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Replay {
    /// Serves tests/fixtures/native/`stem`.pb and `stem`.prom.
    fn start(stem: &str) -> Replay {
        let dir = common::repo_root().join("tests/fixtures/native");
        let pb = std::fs::read(dir.join(format!("{stem}.pb"))).expect("fixture .pb");
        let text = std::fs::read(dir.join(format!("{stem}.prom"))).expect("fixture .prom");
        Replay::serve(pb, text)
    }

    /// Serves `pb` or `text`, as the request's Accept prefers.
    fn serve(pb: Vec<u8>, text: Vec<u8>) -> Replay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (served, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let (served2, stop2) = (served.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Acquire) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut r = BufReader::new(conn.try_clone().expect("clone"));
                let mut accept = None;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line.trim_end().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("accept") {
                            accept = Some(v.trim().to_owned());
                        }
                    }
                }
                let format = Format::negotiate(accept.as_deref());
                served2.lock().expect("lock").push(format);
                let body = if format == Format::Protobuf { &pb } else { &text };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    format.content_type(),
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).and_then(|()| conn.write_all(body));
            }
        });
        Replay { addr, served, stop, thread: Some(thread) }
    }

    fn served(&self) -> Vec<Format> {
        self.served.lock().expect("lock").clone()
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = std::net::TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn replay_config(addr: &str, extra: &str) -> String {
    format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: replay\n{extra}    static_configs:\n      - targets: ['{addr}']\n"
    )
}

/// `promql`'s result as label `by` -> value.
fn by_label(prom: &Prometheus, promql: &str, by: &str) -> BTreeMap<String, f64> {
    prom.query(promql)
        .unwrap_or_default()
        .iter()
        .filter_map(|r| {
            let v = r["value"][1].as_str()?.parse().ok()?;
            Some((r["metric"][by].as_str()?.to_owned(), v))
        })
        .collect()
}

/// Prometheus 3 with native histograms ingests the replayed protobuf: one
/// native series per histogram, whose count equals the classic `_count` and
/// the copy-up counter, whose sum equals the classic `_sum` and the time and
/// byte counters, and whose quantiles fall in the classic bucket the classic
/// quantile falls in (within 1/8 of a power of two of its top: schema 3).
#[test]
fn prometheus_3_ingests_native_histograms() {
    // 3.x keeps the classic buckets beside the native ones with this key.
    ingest_native_histograms(&prometheus3(), "    always_scrape_classic_histograms: true\n", true, SYNTHETIC);
}

/// The same on a real guest's scrapes (Debian 6.1 under QEMU, both formats
/// captured by tests/guest, check_protobuf: kernel-bucketed native
/// histograms), in Prometheus 3.5 with and without the classic buckets kept.
#[test]
fn prometheus_3_ingests_a_real_guests_native_histograms() {
    ingest_native_histograms(&prometheus3(), "    always_scrape_classic_histograms: true\n", true, GUEST);
    ingest_native_histograms(&prometheus3(), "", false, GUEST);
}

/// The same with Prometheus 2.42 and its feature flag. 2.42 has no setting to
/// keep the classic buckets (it rejects scrape_classic_histograms): it keeps
/// the native series only, checked against the counters and the fixture's
/// classic buckets.
#[test]
fn prometheus_2_ingests_native_histograms() {
    ingest_native_histograms(Path::new("prometheus"), "", false, SYNTHETIC);
}

/// Mount and cause of the fixture's empty per-mount histograms (tests/native.rs).
const EMPTY: [&str; 2] = ["/t/b/merged", "xattr"];

/// The replay fixtures (tests/fixtures/native): synthetic buckets with empty
/// histograms (tests/native.rs), and a real guest's capture.
const SYNTHETIC: &str = "exposition";
const GUEST: &str = "guest-6.1";

/// Per-CPU reads racing copy-ups give a count that disagrees with the buckets
/// (and unsorted, duplicate indices): Prometheus 3.5 rejects a whole protobuf
/// scrape with such a native histogram (up=0: "3 observations found in
/// buckets, but the Count field is 5"). The agent serves the buckets' count.
#[test]
fn prometheus_3_keeps_a_scrape_with_a_racy_histogram() {
    use overlay_agent::metrics::{Collector, Def, Exposition, Family, NativeHistogram};
    static D: Def = Def {
        name: "overlayfs_copy_up_duration_seconds",
        help: "Racy.",
        kind: prometheus::proto::MetricType::HISTOGRAM,
        labels: &["cause"],
    };
    struct Racy;
    impl Collector for Racy {
        fn collect(&self) -> Vec<Family> {
            let mut f = Family::new(&D);
            let h = NativeHistogram {
                schema: 3,
                zero_count: 0,
                buckets: vec![(8, 1), (-8, 1), (8, 1)],
                count: 5,
                sum: 2.5,
            };
            f.add_kernel_histogram(&["chown"], &h, Some(&[1.0, 2.0]));
            vec![f]
        }
    }
    let e = Exposition::default();
    e.register(Box::new(Racy));
    let replay = Replay::serve(e.render_as(Format::Protobuf), e.render_as(Format::Text));
    let tmp = tempfile::tempdir().expect("tempdir");
    let prom =
        Prometheus::start_with(&prometheus3(), &[NATIVE], &replay_config(&replay.addr, ""), tmp.path());
    let up = common::wait_for("a scrape of the replay", Duration::from_secs(60), || {
        prom.value("up{job=\"replay\"}")
    });
    assert_eq!(up, "1", "the scrape was kept\n{}", prom.log());
    assert!(replay.served().iter().all(|f| *f == Format::Protobuf), "{:?}", replay.served());
    let count = common::wait_for("the native series", Duration::from_secs(30), || {
        prom.value("histogram_count(overlayfs_copy_up_duration_seconds{cause=\"chown\"})")
    });
    assert_eq!(count, "3", "the count of the buckets");
}

/// The fixture's classic buckets of `hist` by cause: (le, cumulative count), ascending.
fn fixture_buckets(stem: &str, hist: &str) -> BTreeMap<String, Vec<(f64, f64)>> {
    let text =
        std::fs::read_to_string(common::repo_root().join(format!("tests/fixtures/native/{stem}.prom")))
            .expect("fixture .prom");
    let mut out: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (labels, value) in common::Metrics::parse(&text).series(&format!("{hist}_bucket")) {
        let le = labels.get("le").expect("le");
        let le = if le == "+Inf" { f64::INFINITY } else { le.parse().expect("le") };
        out.entry(labels.get("cause").expect("cause").clone()).or_default().push((le, value));
    }
    out
}

fn ingest_native_histograms(binary: &Path, keep_classic: &str, classic: bool, stem: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let replay = Replay::start(stem);
    let prom =
        Prometheus::start_with(binary, &[NATIVE], &replay_config(&replay.addr, keep_classic), tmp.path());
    let native = common::wait_for("native histograms in Prometheus", Duration::from_secs(60), || {
        let m = by_label(&prom, "histogram_count(overlayfs_copy_up_duration_seconds)", "cause");
        (!m.is_empty()).then_some(m)
    });
    assert!(replay.served().iter().all(|f| *f == Format::Protobuf), "{:?}", replay.served());
    let copy_ups = by_label(&prom, "sum by (cause) (overlayfs_copy_up_total)", "cause");
    assert_eq!(native, copy_ups, "native count vs overlayfs_copy_up_total");
    let classic_count = by_label(&prom, "overlayfs_copy_up_duration_seconds_count", "cause");
    if classic {
        assert_eq!(native, classic_count, "native vs classic count\n{}", prom.log());
    } else {
        assert!(classic_count.is_empty(), "classic series beside native ones: {classic_count:?}");
    }
    per_mount_counts_agree(&prom, stem);
    empty_histograms_are_native(&prom, stem, classic);
    for (hist, counter) in [
        ("overlayfs_copy_up_duration_seconds", "overlayfs_copy_up_seconds_total"),
        ("overlayfs_copy_up_bytes", "overlayfs_copy_up_data_bytes_total"),
    ] {
        let native_sum = by_label(&prom, &format!("histogram_sum({hist})"), "cause");
        let counter_sum = by_label(&prom, &format!("sum by (cause) ({counter})"), "cause");
        let buckets = fixture_buckets(stem, hist);
        assert!(!native_sum.is_empty(), "{hist}");
        assert_eq!(native_sum.keys().collect::<Vec<_>>(), buckets.keys().collect::<Vec<_>>(), "{hist}");
        if classic {
            let classic_sum = by_label(&prom, &format!("{hist}_sum"), "cause");
            assert_eq!(
                native_sum.keys().collect::<Vec<_>>(),
                classic_sum.keys().collect::<Vec<_>>(),
                "{hist}"
            );
            for (cause, s) in &native_sum {
                assert!(
                    close(*s, classic_sum[cause]),
                    "{hist} {cause}: native sum {s} vs classic {}",
                    classic_sum[cause]
                );
            }
        }
        for (cause, s) in &native_sum {
            let c = counter_sum.get(cause).copied().unwrap_or(0.0);
            assert!(close(*s, c), "{hist} {cause}: native sum {s} vs {counter} {c}");
        }
        let native_n = by_label(&prom, &format!("histogram_count({hist})"), "cause");
        for (cause, n) in &native_n {
            let total = buckets[cause].last().map(|b| b.1);
            assert_eq!(Some(*n), total, "{hist} {cause}: native count vs the fixture's +Inf bucket");
        }
        quantiles_in_their_buckets(&prom, stem, classic, hist, &buckets, &native_n);
    }
}

/// Per mount: each native series counts what the counter counts on that mount.
fn per_mount_counts_agree(prom: &Prometheus, stem: &str) {
    let per_mount =
        prom.query("histogram_count(overlayfs_mount_copy_up_duration_seconds)").expect("per mount");
    assert!(!per_mount.is_empty(), "per-mount native series: {per_mount:?}");
    for r in &per_mount {
        let (mp, cause) =
            (r["metric"]["mountpoint"].as_str().expect("mp"), r["metric"]["cause"].as_str().expect("cause"));
        let q = format!("sum(overlayfs_copy_up_total{{mountpoint=\"{mp}\",cause=\"{cause}\"}})");
        if stem == SYNTHETIC && [mp, cause] == EMPTY {
            // No copy-up of that cause on that mount: no counter either.
            assert_eq!(prom.value(&q), None, "{mp} {cause}");
            continue;
        }
        assert_eq!(r["value"][1].as_str(), prom.value(&q).as_deref(), "{mp} {cause}");
    }
}

/// The histograms without observations are native series too (no-op span,
/// zero threshold 2^-128), with no classic series beside them unless
/// classic ones are kept.
fn empty_histograms_are_native(prom: &Prometheus, stem: &str, classic: bool) {
    for hist in ["overlayfs_mount_copy_up_duration_seconds", "overlayfs_mount_copy_up_bytes"] {
        if stem != SYNTHETIC {
            break;
        }
        let sel = format!("{{mountpoint=\"{}\",cause=\"{}\"}}", EMPTY[0], EMPTY[1]);
        assert_eq!(
            prom.value(&format!("histogram_count({hist}{sel})")).as_deref(),
            Some("0"),
            "{hist}: the empty histogram as a native series\n{}",
            prom.log()
        );
        let classic_count = prom.value(&format!("{hist}_count{sel}"));
        assert_eq!(classic_count.is_some(), classic, "{hist}: classic series of the empty histogram");
    }
}

/// Quantiles: in the classic bucket that holds the rank (as the classic
/// quantile, when Prometheus has the classic series), and within that
/// bucket's top 1/8 power of two.
fn quantiles_in_their_buckets(
    prom: &Prometheus,
    stem: &str,
    classic: bool,
    hist: &str,
    buckets: &BTreeMap<String, Vec<(f64, f64)>>,
    native_n: &BTreeMap<String, f64>,
) {
    for q in [0.5, 0.9, 0.99] {
        let nq = by_label(prom, &format!("histogram_quantile({q}, {hist})"), "cause");
        let cq = by_label(prom, &format!("histogram_quantile({q}, {hist}_bucket)"), "cause");
        for (cause, n) in native_n.iter().filter(|(_, n)| **n > 0.0) {
            let b = &buckets[cause];
            let rank = q * n;
            let i = b.iter().position(|(_, c)| *c >= rank).expect("a bucket holds the rank");
            // A rank exactly at a bucket's cumulative count may resolve to
            // the top of that bucket or the bottom of the next one that has
            // observations: both are the quantile.
            let last = match b.iter().skip(i + 1).position(|(_, c)| *c > b[i].1) {
                Some(j) if (b[i].1 - rank).abs() < 1e-9 => i + 1 + j,
                _ => i,
            };
            let lo = if i == 0 { 0.0 } else { b[i - 1].0 };
            let nv = nq[cause];
            let ctx = format!("{hist} {cause} q{q}: native {nv}, classic {:?}, buckets {b:?}", cq.get(cause));
            if classic {
                let cv = cq[cause];
                assert!(lo < cv && cv <= b[last].0, "classic outside the bucket: {ctx}");
            }
            let k = b.iter().position(|(le, _)| nv <= *le * (1.0 + 1e-9)).expect("native in a bucket");
            assert!(
                (i..=last).contains(&k) && (k == 0 || nv > b[k - 1].0),
                "native outside the bucket: {ctx}"
            );
            // The synthetic fixture's observations sit at the classic bounds.
            if stem == SYNTHETIC && b[k].0.is_finite() {
                let top = b[k].0 * 2f64.powf(-1.0 / 8.0) * (1.0 - 1e-9);
                assert!(nv >= top, "native not within the bucket's top eighth power of two: {ctx}");
            }
        }
    }
}

/// Prometheus 2.42 and 3.5 without the feature ask for text and get the
/// agent's text: classic histograms only, no native series.
#[test]
fn prometheus_without_native_histograms_scrapes_text() {
    for binary in [Path::new("prometheus").to_owned(), prometheus3()] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let replay = Replay::start(SYNTHETIC);
        let prom = Prometheus::start(&binary, &replay_config(&replay.addr, ""), tmp.path());
        let count = common::wait_for("classic histograms in Prometheus", Duration::from_secs(60), || {
            let m = by_label(&prom, "overlayfs_copy_up_duration_seconds_count", "cause");
            (m.len() >= 10).then_some(m)
        });
        let served = replay.served();
        assert!(
            !served.is_empty() && served.iter().all(|f| *f == Format::Text),
            "{}: {served:?}",
            binary.display()
        );
        assert_eq!(count, by_label(&prom, "sum by (cause) (overlayfs_copy_up_total)", "cause"));
        let native = prom.query("histogram_count(overlayfs_copy_up_duration_seconds)").expect("query");
        assert!(native.is_empty(), "{}: no native series from text: {native:?}", binary.display());
    }
}
