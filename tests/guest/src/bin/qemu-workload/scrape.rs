//! The agent's /metrics from inside the guest: `record` (a scrape every
//! interval, the storm's capture), `scrape` (latency and size), `metric` (one
//! series' value).

use std::fs;
use std::io::Write;
use std::path::Path;

/// `record HOST:PORT INTERVAL_MS PHASE_FILE`: scrapes /metrics every interval
/// until PHASE_FILE says `stop`, printing each scrape's copy-up samples and
/// overlayfs_ebpf_enabled after a `=== SCRAPE <ms since start> <phase>` header (the input of
/// scripts/scrapes-to-promtool). A tick missed by a slow scrape is skipped.
pub fn record(addr: &str, interval_ms: u64, phase_file: &Path) {
    use std::io::Read;
    let start = std::time::Instant::now();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    loop {
        let phase = fs::read_to_string(phase_file).unwrap_or_default().trim().to_owned();
        if phase == "stop" {
            break;
        }
        let at = start.elapsed().as_millis();
        let mut body = String::new();
        let got = std::net::TcpStream::connect(addr).and_then(|mut s| {
            write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
            s.read_to_string(&mut body)
        });
        if got.is_ok() {
            writeln!(out, "=== SCRAPE {at} {phase}").expect("stdout");
            for l in body
                .lines()
                .filter(|l| l.starts_with("overlayfs_copy_up") || l.starts_with("overlayfs_ebpf_enabled"))
            {
                writeln!(out, "{l}").expect("stdout");
            }
        }
        let next_tick = start.elapsed().as_millis() as u64 / interval_ms + 1;
        let next = std::time::Duration::from_millis(next_tick * interval_ms);
        std::thread::sleep(next.saturating_sub(start.elapsed()));
    }
    out.flush().expect("stdout");
}

/// `scrape HOST:PORT N [proto]`: N GETs of /metrics (in the text format, or
/// with `proto` asking for delimited protobuf as Prometheus does); prints p50 and
/// p99 latency and the size (headers included).
pub fn scrape(addr: &str, n: usize, proto: bool) {
    use std::io::Read;
    let mut lat = Vec::with_capacity(n);
    let mut size = 0;
    for _ in 0..n {
        let t = std::time::Instant::now();
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        let accept = if proto {
            "Accept: application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited\r\n"
        } else {
            ""
        };
        write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n").expect("request");
        let mut body = Vec::new();
        s.read_to_end(&mut body).expect("response");
        lat.push(t.elapsed().as_secs_f64());
        size = body.len();
    }
    lat.sort_by(f64::total_cmp);
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize] * 1e3;
    println!("scrape {n} p50 {:.2} ms p99 {:.2} ms bytes {size}", p(0.5), p(0.99));
}

/// `metric HOST:PORT SERIES`: prints the value of one series (its name and labels
/// exactly as the exposition writes them, e.g.
/// `overlayfs_copy_up_seconds_total{mountpoint="/t/s/merged",cause="chown"}`), 0
/// when the agent does not export it.
pub fn metric(addr: &str, series: &str) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("response");
    let value =
        body.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' '))).unwrap_or("0");
    println!("{value}");
}
