//! Cost of rendering /metrics for N mounts, in process (no HTTP, no kernel
//! mounts): a fake mountinfo of N overlays whose upper dirs are real (small)
//! directories, scanned once, then the exposition rendered repeatedly.
//!
//!     cargo run --release --example render-bench -- 1000 200
//!
//! Prints p50/p99 render time and the response size, in the text and the
//! protobuf format; bench/node.py measures the same through HTTP against
//! node_exporter.

use std::time::Instant;

use overlay_agent::config::Config;
use overlay_agent::identity::SharedSnapshot;
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

    let mounts = SharedSnapshot::default();
    mounts.set(overlay_agent::daemon::discover(&config).expect("discover"));
    let pool = ScanPool::new(&config.scan).expect("pool");
    pool.schedule(&mounts.get().table, config.scan.interval, config.scan.timeout, &config.discovery.rootfs);
    pool.wait_idle();
    let exposition = metrics::Exposition::default();
    exposition.register(Box::new(metrics::mounts::MountCollector::new(mounts.clone())));
    exposition.register(Box::new(metrics::upper::UpperCollector::new(mounts.clone(), pool.store())));

    let series =
        String::from_utf8_lossy(&exposition.render()).lines().filter(|l| !l.starts_with('#')).count();
    for format in [metrics::Format::Text, metrics::Format::Protobuf] {
        let mut times = Vec::with_capacity(rounds);
        let mut size = 0;
        for _ in 0..rounds {
            let t = Instant::now();
            let body = exposition.render_as(format);
            times.push(t.elapsed().as_secs_f64() * 1e3);
            size = body.len();
        }
        times.sort_by(f64::total_cmp);
        let pct = |p: f64| times[((times.len() - 1) as f64 * p) as usize];
        println!(
            "{n} mounts, {format:?}: render p50 {:.2} ms, p99 {:.2} ms, {} KiB, {series} series",
            pct(0.5),
            pct(0.99),
            size / 1024,
        );
    }
}
