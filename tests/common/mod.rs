//! Helpers shared by the integration tests: real overlay mounts (unmounted on
//! drop), the real agent binary (killed on drop), a tiny HTTP client, an
//! exposition parser, and readiness polling with deadlines.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_overlay-agent");

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// Fails loudly when not root: these tests mount real overlays.
pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "integration tests mount overlays and must run as root (use the README's test command)"
    );
}

/// Runs a command, panicking with its output on failure.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A real overlay mount; unmounted (lazily if busy) on drop.
pub struct Overlay {
    pub base: PathBuf,
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub merged: PathBuf,
    mounted: bool,
}

impl Overlay {
    /// Creates `base/{lower,upper,work,<merged_name>}`; the caller fills `lower`
    /// with `populate` before the mount.
    pub fn new(base: &Path, merged_name: &str, extra_opts: &str, populate: impl FnOnce(&Path)) -> Overlay {
        let mut o = Overlay {
            base: base.to_owned(),
            lower: base.join("lower"),
            upper: base.join("upper"),
            work: base.join("work"),
            merged: base.join(merged_name),
            mounted: false,
        };
        for d in [&o.lower, &o.upper, &o.work, &o.merged] {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        populate(&o.lower);
        let mut opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            o.lower.display(),
            o.upper.display(),
            o.work.display()
        );
        if !extra_opts.is_empty() {
            opts.push(',');
            opts.push_str(extra_opts);
        }
        run(Command::new("mount").args(["-t", "overlay", "overlay", "-o", &opts]).arg(&o.merged));
        o.mounted = true;
        o
    }

    pub fn unmount(&mut self) {
        if self.mounted {
            run(Command::new("umount").arg(&self.merged));
            self.mounted = false;
        }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount").arg(&self.merged).status().map(|s| s.success()).unwrap_or(false);
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.merged).status();
            }
        }
    }
}

/// A bind mount, unmounted on drop.
pub struct Bind(pub PathBuf);

impl Bind {
    pub fn new(from: &Path, to: &Path) -> Bind {
        std::fs::create_dir_all(to).expect("mkdir bind target");
        run(Command::new("mount").arg("--bind").arg(from).arg(to));
        Bind(to.to_owned())
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Polls `f` until it returns Some, or panics after `timeout` with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The real agent, started with `serve`; killed on drop.
pub struct Agent {
    pub child: Child,
    pub addr: String,
    pub stderr_log: PathBuf,
}

impl Agent {
    /// Starts the agent on a free port with `args` and waits until /readyz says ready.
    pub fn start(dir: &Path, args: &[&str]) -> Agent {
        let mut agent = Agent::spawn(dir, args);
        wait_for("the agent to be ready", Duration::from_secs(20), || {
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("agent exited early with {status}: {}", agent.log());
            }
            match http_get(&agent.addr, "/readyz") {
                Ok(r) if r.status == 200 => Some(()),
                _ => None,
            }
        });
        agent
    }

    /// Starts the agent without waiting for it (for TLS or auth, where the
    /// caller knows how to reach /readyz).
    pub fn spawn(dir: &Path, args: &[&str]) -> Agent {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let stderr_log = dir.join(format!("agent-{port}.log"));
        let log = std::fs::File::create(&stderr_log).expect("create agent log");
        let child = Command::new(BIN)
            .args(["--web.listen-address", &addr, "--log.level", "debug"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start overlay-agent");
        Agent { child, addr, stderr_log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub fn metrics(&self) -> Metrics {
        let r =
            http_get(&self.addr, "/metrics").unwrap_or_else(|e| panic!("scrape failed: {e}\n{}", self.log()));
        assert_eq!(r.status, 200);
        Metrics::parse(&r.body)
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("pid");
        rustix::process::kill_process(pid, sig).expect("kill");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

pub fn http_get(addr: &str, path: &str) -> std::io::Result<HttpResponse> {
    http_request(addr, "GET", path)
}

/// An HTTP/1.0 request (so no server answers with chunked encoding, which this
/// client does not decode); reads until EOF.
pub fn http_request(addr: &str, method: &str, path: &str) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut r = BufReader::new(s);
    let mut status_line = String::new();
    r.read_line(&mut status_line)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let mut body = String::new();
    if method != "HEAD" {
        r.read_to_string(&mut body)?;
    }
    Ok(HttpResponse { status, headers, body })
}

/// Samples of one exposition, keyed by `name{labels}` exactly as written.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub text: String,
    pub samples: BTreeMap<String, f64>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
            let v: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
            samples.insert(series.to_owned(), v);
        }
        Metrics { text: text.to_owned(), samples }
    }

    /// The value of `name` whose labels contain every `k="v"` pair given.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples.iter().find_map(|(series, v)| {
            let (n, rest) = series.split_once('{').unwrap_or((series.as_str(), ""));
            (n == name && labels.iter().all(|(k, val)| rest.contains(&format!("{k}=\"{}\"", escape(val)))))
                .then_some(*v)
        })
    }

    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        self.samples
            .keys()
            .filter(|series| {
                let (n, rest) = series.split_once('{').unwrap_or((series.as_str(), ""));
                n == name && labels.iter().all(|(k, val)| rest.contains(&format!("{k}=\"{}\"", escape(val))))
            })
            .count()
    }
}

/// Label value escaping of the text format.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `promtool check metrics` on an exposition; panics with its output on failure.
pub fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: run the README's test command, which installs it");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `du` on a directory with extra flags; returns the first number.
pub fn du(flags: &[&str], dir: &Path) -> f64 {
    let out = run(Command::new("du").args(flags).arg(dir));
    out.split_whitespace().next().and_then(|n| n.parse().ok()).expect("du number")
}

/// Writes an agent config that only watches mounts under `base` and scans every second.
pub fn config_for(base: &Path, extra: &str) -> PathBuf {
    let path = base.join("agent.yaml");
    let text = format!(
        "discovery:\n  include_mountpoints: ['{}/.*']\n  resync_interval: 1s\nscan:\n  interval: 1s\n{extra}",
        regex::escape(&base.display().to_string()).replace('\'', "''")
    );
    std::fs::write(&path, text).expect("write agent config");
    path
}

/// Scrapes until `f` accepts the metrics (scans run in the background).
pub fn scrape_until(agent: &Agent, what: &str, f: impl Fn(&Metrics) -> bool) -> Metrics {
    wait_for(what, Duration::from_secs(20), || {
        let m = agent.metrics();
        f(&m).then_some(m)
    })
}

/// Creates a file of `len` bytes of non-zero data.
pub fn write_file(path: &Path, len: usize) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(path, vec![b'x'; len]).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A real Prometheus server on a free loopback port, with a TSDB in `dir`;
/// killed on drop.
pub struct Prometheus {
    child: Child,
    pub addr: String,
    dir: PathBuf,
}

/// Percent-encodes a query parameter (PromQL in the HTTP API's URLs).
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Prometheus {
    /// Starts `binary` with `config` (prometheus.yml text).
    pub fn start(binary: &Path, config: &str, dir: &Path) -> Prometheus {
        Self::start_with(binary, &[], config, dir)
    }

    /// Starts `binary` with extra flags (`--enable-feature=...`) and `config`.
    pub fn start_with(binary: &Path, flags: &[&str], config: &str, dir: &Path) -> Prometheus {
        let addr = format!("127.0.0.1:{}", free_port());
        let cfg = dir.join("prometheus.yml");
        std::fs::write(&cfg, config).expect("write prometheus.yml");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address={addr}"))
            .args(flags)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("prometheus log"))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{} not found ({e}): run the README's test command", binary.display())
            });
        Prometheus { child, addr, dir: dir.to_owned() }
    }

    /// An instant query; None until Prometheus answers with success.
    pub fn query(&self, promql: &str) -> Option<Vec<serde_json::Value>> {
        let q = url_encode(promql);
        let r = http_get(&self.addr, &format!("/api/v1/query?query={q}")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        (v["status"] == "success").then(|| v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// A range query from `start` to `end` (Unix seconds) every `step` seconds;
    /// None until Prometheus answers with success.
    pub fn query_range(
        &self,
        promql: &str,
        start: f64,
        end: f64,
        step: f64,
    ) -> Option<Vec<serde_json::Value>> {
        let q = url_encode(promql);
        let path = format!("/api/v1/query_range?query={q}&start={start:.3}&end={end:.3}&step={step}");
        let r = http_get(&self.addr, &path).ok()?;
        let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        (v["status"] == "success").then(|| v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The first sample's value of an instant query, as text.
    pub fn value(&self, promql: &str) -> Option<String> {
        self.query(promql)?.first()?["value"][1].as_str().map(str::to_owned)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// podman with the settings this kind of machine needs (runc, no network
/// namespace, modest ulimits), through a containers.conf in `dir`.
pub fn podman(dir: &Path) -> impl Fn() -> Command + '_ {
    let conf = dir.join("containers.conf");
    if !conf.exists() {
        std::fs::write(
            &conf,
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=1024:1024\"]\nnetns = \"none\"\n[engine]\nruntime = \"runc\"\n",
        )
        .expect("containers.conf");
    }
    move || {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", dir.join("containers.conf"));
        c
    }
}

/// Every MetricFamily of a delimited protobuf exposition (the agent's answer to
/// Prometheus with native histograms on).
pub fn decode_delimited(
    mut buf: &[u8],
) -> Result<Vec<overlay_agent::metrics::encode::proto::MetricFamily>, prost::DecodeError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        out.push(prost::Message::decode_length_delimited(&mut buf)?);
    }
    Ok(out)
}

/// A native histogram's buckets as (index, count): indices from the spans,
/// absolute counts from the deltas; None when there are fewer deltas than the
/// spans' buckets.
pub fn native_buckets(h: &overlay_agent::metrics::encode::proto::Histogram) -> Option<Vec<(i32, i64)>> {
    let (mut index, mut count, mut out) = (0i32, 0i64, Vec::new());
    let mut deltas = h.positive_delta.iter();
    for (i, span) in h.positive_span.iter().enumerate() {
        index += span.offset + if i == 0 { 0 } else { 1 };
        for j in 0..span.length {
            count += deltas.next()?;
            out.push((index + j as i32, count));
        }
        index += span.length as i32 - 1;
    }
    Some(out)
}
