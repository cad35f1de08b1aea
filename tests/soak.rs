//! Soak: the real agent under mount churn, a copy-up workload and a scrape every
//! 100 ms, watched over time: resident memory, open file descriptors and series
//! must stay flat, and no series may outlive its mount.
//!
//! The test command runs 2 minutes. The full soak is 30 minutes:
//!     SOAK_SECONDS=1800 cargo test --release --test soak -- --nocapture

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{config_for, http_get, require_root, wait_for, write_file, Agent, Metrics, Overlay};

struct Sample {
    at: Duration,
    rss_mib: f64,
    fds: usize,
    series: usize,
    mounts: f64,
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Series that must be the same before and after the churn: all but the scan
/// error counters, which a scan racing the copy-up workload may add.
fn stable_series(m: &Metrics) -> Vec<String> {
    m.all()
        .filter(|s| !s.name.starts_with("overlayfs_upper_scan_errors_total"))
        .map(|s| s.key.clone())
        .collect()
}

#[test]
fn soak_memory_fds_and_series_stay_flat() {
    require_root();
    let secs: u64 = std::env::var("SOAK_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(120);
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    // Ten steady mounts with files to copy up.
    let steady: Vec<Overlay> = (0..10)
        .map(|i| {
            Overlay::new(&base.join(format!("steady{i}")), "merged", "", |l| {
                for f in 0..2000 {
                    write_file(&l.join(format!("d{}/f{f}", f % 20)), 100);
                }
            })
        })
        .collect();
    let cfg = config_for(base, "");
    let agent = Agent::start(base, &["--config", cfg.to_str().expect("utf8")]);
    let pid = agent.child.id();
    let steady_series = || {
        wait_for("the steady mounts measured", Duration::from_secs(30), || {
            let m = agent.metrics();
            (m.get("overlayfs_mounts", &[]) == Some(10.0)
                && m.count("overlayfs_upper_scans_total", &[]) == 10)
                .then(|| stable_series(&m))
        })
    };
    let before = steady_series();

    let stop = Arc::new(AtomicBool::new(false));
    let churned = Arc::new(AtomicU64::new(0));
    let copied = Arc::new(AtomicU64::new(0));
    // Mount churn: create and destroy overlays, about 10 a second.
    let churn = {
        let (stop, churned, base) = (stop.clone(), churned.clone(), base.to_owned());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let dir = base.join(format!("churn/{}", i % 50));
                let _ = std::fs::remove_dir_all(&dir);
                {
                    let _o = Overlay::new(&dir, "merged", "", |l| write_file(&l.join("f"), 10));
                    std::thread::sleep(Duration::from_millis(100));
                }
                churned.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    // Copy-ups: chown lower files through the steady mounts; when all are copied
    // up, delete and recreate to keep the upper dirs changing.
    let workload = {
        let (stop, copied) = (stop.clone(), copied.clone());
        let merged: Vec<_> = steady.iter().map(|o| o.merged.clone()).collect();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let m = &merged[(n % 10) as usize];
                let f = m.join(format!("d{}/f{}", n % 20, (n / 10) % 2000));
                if std::os::unix::fs::chown(&f, Some((n % 1000) as u32), None).is_ok() {
                    copied.fetch_add(1, Ordering::Relaxed);
                } else {
                    let _ = std::fs::write(&f, b"again");
                }
                n += 1;
                if n % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        })
    };

    // Scrape every 100 ms; sample the agent ten times over the run.
    let started = Instant::now();
    let run = Duration::from_secs(secs);
    let mut samples: Vec<Sample> = Vec::new();
    let mut scrapes = 0u64;
    let mut next_sample = Duration::ZERO;
    while started.elapsed() < run {
        let r = http_get(&agent.addr, "/metrics")
            .unwrap_or_else(|e| panic!("scrape failed: {e}\n{}", agent.log()));
        assert_eq!(r.status, 200);
        scrapes += 1;
        if started.elapsed() >= next_sample {
            let m = Metrics::parse(&r.body);
            samples.push(Sample {
                at: started.elapsed(),
                rss_mib: m.get("process_resident_memory_bytes", &[]).unwrap_or(0.0) / (1u64 << 20) as f64,
                fds: open_fds(pid),
                series: m.all().count(),
                mounts: m.get("overlayfs_mounts", &[]).unwrap_or(0.0),
            });
            next_sample += run / 10;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    churn.join().expect("churn thread");
    workload.join().expect("workload thread");

    println!(
        "\nsoak: {secs} s, {scrapes} scrapes, {} mounts created and destroyed, {} chowns through the overlays (20,000 files copied up, then rewritten)",
        churned.load(Ordering::Relaxed),
        copied.load(Ordering::Relaxed)
    );
    println!("| t (s) | RSS (MiB) | open fds | series | overlay mounts |");
    println!("|---|---|---|---|---|");
    for s in &samples {
        println!(
            "| {:.0} | {:.1} | {} | {} | {} |",
            s.at.as_secs_f64(),
            s.rss_mib,
            s.fds,
            s.series,
            s.mounts
        );
    }

    // No leaked series: with the churn stopped, the exposition is the steady one.
    let after = steady_series();
    assert_eq!(after, before, "series before the churn and after it differ");
    assert!(!after.iter().any(|s| s.contains("/churn/")), "a churned mount left series behind");
    // Flat: after warm-up (the first quarter), memory grows by at most 20% + 4 MiB,
    // and the descriptors by at most a handful (scan threads, connections).
    let warm: Vec<&Sample> = samples.iter().filter(|s| s.at >= run / 4).collect();
    assert!(warm.len() >= 3, "too few samples: {}", samples.len());
    let (first, last) = (warm[0], warm[warm.len() - 1]);
    let peak = warm.iter().map(|s| s.rss_mib).fold(0.0, f64::max);
    assert!(peak <= first.rss_mib * 1.2 + 4.0, "RSS grew from {:.1} to {peak:.1} MiB", first.rss_mib);
    assert!(last.fds <= first.fds + 8, "open fds grew from {} to {}", first.fds, last.fds);
    assert!(churned.load(Ordering::Relaxed) > secs * 3, "the churn did not run");
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
    drop(steady);
}
