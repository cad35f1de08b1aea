//! Cost of rendering /metrics for N mounts, in process (no HTTP, no kernel
//! mounts): a fake mountinfo of N overlays whose upper dirs are real (small)
//! directories, scanned once, then the exposition rendered repeatedly.
//!
//!     cargo run --release --example render-bench -- 1000 200
//!
//! Prints p50/p99 render time and the response size, in the text and the
//! protobuf format; bench/node.py measures the same through HTTP against
//! node_exporter.
//!
//! Then the cost of gzip-compressing each body (what a scrape that takes gzip
//! adds, once per render) at levels 1, 2, 3 and 6, and the compressed size.
//!
//!     cargo run --release --example render-bench -- 1000 200 classic|native
//!
//! adds synthetic per-mount copy-up histograms (latency and bytes, every one of
//! the 11 causes on every mount, 8 observations each over schema-3 buckets), as
//! the per-mount native histograms of issue 17 would export them: `classic`
//! with classic buckets too (text: classic histograms; protobuf: both), `native`
//! without (protobuf only; text leaves them out).
//!
//! `RENDER_BENCH_FORMAT=text` (or `protobuf`) renders that format only, without
//! gzip: what to run under `perf record` to see one encoder alone. Each line
//! gives the CPU time (user, system) and page faults of one render.

use std::time::Instant;

use overlay_agent::config::Config;
use overlay_agent::identity::SharedMountView;
use overlay_agent::metrics;
use overlay_agent::scan::ScanPool;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(200);
    let dir = tempfile::tempdir().expect("tempdir");
    let procfs = dir.path().join("proc");
    std::fs::create_dir_all(procfs.join("self")).expect("mkdir");
    let mut mountinfo = String::new();
    for i in 0..n {
        let base = dir.path().join(format!("m{i}"));
        for d in ["upper/a", "work", "merged"] {
            std::fs::create_dir_all(base.join(d)).expect("mkdir");
        }
        std::fs::write(base.join("upper/a/f"), b"x").expect("write");
        mountinfo.push_str(&format!(
            "{} 1 0:{} / {b}/merged rw,relatime - overlay overlay rw,lowerdir=/l1:/l2,upperdir={b}/upper,workdir={b}/work\n",
            100 + i,
            1000 + i,
            b = base.display()
        ));
    }
    std::fs::write(procfs.join("self/mountinfo"), mountinfo).expect("write mountinfo");
    let mut config = Config::default();
    config.discovery.procfs = procfs;

    let mounts = SharedMountView::default();
    mounts.set(overlay_agent::daemon::discover(&config).expect("discover"));
    let pool = ScanPool::new(&config.scan, Default::default()).expect("pool");
    pool.schedule(
        &mounts.get().table,
        config.scan.interval,
        config.scan.timeout,
        overlay_agent::scan::Roots { rootfs: &config.discovery.rootfs, procfs: &config.discovery.procfs },
    );
    pool.wait_idle();
    let exposition = metrics::Exposition::default();
    let labels = metrics::mount_labels::LabelCache::default();
    exposition.register(Box::new(metrics::mounts::MountCollector::new(mounts.clone(), labels.clone())));
    exposition.register(Box::new(metrics::upper::UpperCollector::new(mounts.clone(), pool.store(), labels)));
    match args.get(3).map(String::as_str) {
        Some("classic") => exposition.register(Box::new(Histograms { mounts: n, classic: true })),
        Some("native") => exposition.register(Box::new(Histograms { mounts: n, classic: false })),
        _ => {}
    }

    let series =
        String::from_utf8_lossy(&exposition.render()).lines().filter(|l| !l.starts_with('#')).count();
    let only = std::env::var("RENDER_BENCH_FORMAT").ok();
    for format in [metrics::Format::Text, metrics::Format::Protobuf] {
        if only.as_deref().is_some_and(|f| !format!("{format:?}").eq_ignore_ascii_case(f)) {
            continue;
        }
        let mut times = Vec::with_capacity(rounds);
        let mut body = Vec::new();
        let before = thread_usage();
        for _ in 0..rounds {
            let t = Instant::now();
            body = exposition.render_as(format);
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let after = thread_usage();
        let size = body.len();
        times.sort_by(f64::total_cmp);
        let pct = |p: f64| times[((times.len() - 1) as f64 * p) as usize];
        let per = |a: f64, b: f64| (b - a) / rounds.max(1) as f64;
        println!(
            "{n} mounts, {format:?}: render p50 {:.2} ms, p99 {:.2} ms, {} KiB, {series} series; \
             per render: CPU {:.1} ms user + {:.1} ms system, {:.0} page faults",
            pct(0.5),
            pct(0.99),
            size / 1024,
            per(before.0, after.0),
            per(before.1, after.1),
            per(before.2, after.2),
        );
        if only.is_none() {
            gzip_levels(format, &body, rounds);
        }
    }
}

/// This thread's user and system CPU time (ms) and minor page faults so far.
fn thread_usage() -> (f64, f64, f64) {
    // SAFETY: getrusage writes into the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    assert_eq!(rc, 0, "getrusage: {}", std::io::Error::last_os_error());
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    (ms(u.ru_utime), ms(u.ru_stime), u.ru_minflt as f64)
}

/// gzip `body` at levels 1, 2, 3 and 6: time p50 and compressed size.
fn gzip_levels(format: metrics::Format, body: &[u8], rounds: usize) {
    for level in [1, 2, 3, 6] {
        let mut times = Vec::with_capacity(rounds);
        let mut size = 0;
        for _ in 0..rounds {
            let t = Instant::now();
            size = overlay_agent::server::gzip::compress(body, level).expect("gzip").len();
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "  {format:?}, gzip level {level}{}: p50 {:.2} ms, {} KiB ({:.1}x smaller)",
            if level == overlay_agent::server::gzip::LEVEL { " (served)" } else { "" },
            times[times.len() / 2],
            size / 1024,
            body.len() as f64 / size.max(1) as f64,
        );
    }
}

/// Per-mount copy-up histograms, synthetic: `mounts` x 11 causes x (latency, bytes).
struct Histograms {
    mounts: usize,
    classic: bool,
}

static CAUSES: [&str; 11] = [
    "open", "truncate", "chown", "chmod", "utimes", "setattr", "xattr", "link", "rename", "create", "remove",
];
static LATENCY: metrics::Def = metrics::Def {
    name: "overlayfs_mount_copy_up_duration_seconds",
    help: "Time from the start of a copy-up to its end, by mount and cause.",
    kind: prometheus::proto::MetricType::HISTOGRAM,
    labels: &["mountpoint", "cause"],
};
static BYTES: metrics::Def = metrics::Def {
    name: "overlayfs_mount_copy_up_bytes",
    help: "Size of the file data of each data copy-up, by mount and cause.",
    kind: prometheus::proto::MetricType::HISTOGRAM,
    labels: &["mountpoint", "cause"],
};

impl metrics::Collector for Histograms {
    fn collect(&self) -> Vec<metrics::Family> {
        // Classic bounds every factor of 4: 2^-20 s .. 2^6 s, 2^10 .. 2^34 bytes.
        let lat_bounds: Vec<f64> = (-10..=3).map(|k| 4f64.powi(k)).collect();
        let byte_bounds: Vec<f64> = (5..=17).map(|k| 4f64.powi(k)).collect();
        let (mut lat, mut bytes) = (metrics::Family::new(&LATENCY), metrics::Family::new(&BYTES));
        let mut seed = 12345u64;
        let mut next = move |lo: i32, span: i32| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            lo + ((seed >> 33) % span as u64) as i32
        };
        for m in 0..self.mounts {
            let mp = format!("/var/lib/containers/storage/overlay/{m:064x}/merged");
            for cause in CAUSES {
                for (fam, lo, span, bounds) in
                    [(&mut lat, -120, 60, &lat_bounds), (&mut bytes, 80, 100, &byte_bounds)]
                {
                    let mut idx: Vec<i32> = (0..8).map(|_| next(lo, span)).collect();
                    idx.sort_unstable();
                    let mut buckets: Vec<(i32, u64)> = Vec::new();
                    for i in idx {
                        match buckets.last_mut() {
                            Some((j, n)) if *j == i => *n += 1,
                            _ => buckets.push((i, 1)),
                        }
                    }
                    let sum = buckets.iter().map(|(i, n)| 2f64.powf(f64::from(*i) / 8.0) * *n as f64).sum();
                    let h = metrics::NativeHistogram { schema: 3, zero_count: 0, buckets, count: 8, sum };
                    fam.add_kernel_histogram(&[&mp, cause], &h, self.classic.then_some(bounds.as_slice()));
                }
            }
        }
        vec![lat, bytes]
    }
}
