//! The HTTP server under attack and behind TLS: the real binary, a real client
//! (curl) and certificates made for the test (a CA, the server, a good client, a
//! client from another CA and an expired client).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{http_get, http_request, wait_for, Agent};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// Writes `<name>.crt` and `<name>.key` signed by `ca`.
fn leaf(dir: &Path, name: &str, ca: &CertifiedIssuer<'_, KeyPair>, sans: &[&str], expired: bool) {
    let key = KeyPair::generate().expect("key");
    let mut p =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
    p.distinguished_name.push(DnType::CommonName, name);
    if expired {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2020, 1, 2);
    }
    let cert = p.signed_by(&key, ca).expect("sign");
    std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).expect("write cert");
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).expect("write key");
}

fn make_ca(dir: &Path, name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("CA");
    std::fs::write(dir.join(format!("{name}.crt")), ca.pem()).expect("write CA");
    ca
}

struct Curl {
    code: i32,
    status: String,
    body: String,
}

/// curl against the agent; `args` adds client certificates, credentials, etc.
fn curl<S: AsRef<std::ffi::OsStr>>(url: &str, args: &[S]) -> Curl {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl (the README's test command installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    Curl {
        code: out.status.code().unwrap_or(-1),
        status: status.to_owned(),
        body: format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
    }
}

fn bcrypt_hash(password: &str) -> String {
    // Cost 4 keeps the test fast; real configs use 10 or more.
    bcrypt::hash(password, 4).expect("bcrypt")
}

fn web_config(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    let mut text = String::from(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\nhttp_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\nbasic_auth_users:\n",
    );
    for (u, p) in users {
        text.push_str(&format!("  {u}: '{}'\n", bcrypt_hash(p)));
    }
    let p = dir.join("web.yml");
    std::fs::write(&p, text).expect("write web config");
    p
}

#[test]
fn tls_client_certificates_and_basic_auth_with_curl() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let ca = make_ca(d, "ca");
    let other_ca = make_ca(d, "other-ca");
    leaf(d, "server", &ca, &["127.0.0.1", "localhost"], false);
    leaf(d, "client", &ca, &[], false);
    leaf(d, "stranger", &other_ca, &[], false);
    leaf(d, "expired", &ca, &[], true);
    let web = web_config(d, &[("prom", "s3cret")]);
    let agent = Agent::spawn(d, &["--web.config.file", web.to_str().expect("utf8")]);
    let url = |path: &str| format!("https://{}{path}", agent.addr);
    let s = |p: &str| d.join(p).display().to_string();
    let (cacert, cert, key) = (s("ca.crt"), s("client.crt"), s("client.key"));
    let good: Vec<&str> = vec!["--cacert", &cacert, "--cert", &cert, "--key", &key];
    let with = |extra: &[&'static str]| -> Vec<String> {
        good.iter().chain(extra.iter()).map(|a| a.to_string()).collect()
    };

    wait_for("the TLS agent to be ready", Duration::from_secs(20), || {
        (curl(&url("/readyz"), &with(&["-u", "prom:s3cret"])).status == "200").then_some(())
    });
    let ok = curl(&url("/metrics"), &with(&["-u", "prom:s3cret", "-D", "-"]));
    assert_eq!((ok.code, ok.status.as_str()), (0, "200"), "{}", ok.body);
    assert!(ok.body.contains("overlayfs_mounts "), "metrics over TLS: {}", ok.body);
    assert!(ok.body.to_ascii_lowercase().contains("x-content-type-options: nosniff"), "{}", ok.body);

    let bad = curl(&url("/metrics"), &with(&["-u", "prom:wrong", "-D", "-"]));
    assert_eq!(bad.status, "401", "wrong password: {}", bad.body);
    let headers = bad.body.to_ascii_lowercase();
    assert!(headers.contains("www-authenticate: basic realm="), "{}", bad.body);
    assert!(headers.contains("x-content-type-options: nosniff"), "headers on errors too: {}", bad.body);
    assert_eq!(curl(&url("/metrics"), &with(&["-u", "nobody:s3cret"])).status, "401", "unknown user");
    assert_eq!(curl(&url("/metrics"), &good).status, "401", "no credentials");

    // Client certificates: none, from another CA, expired -> no HTTP at all.
    let (stranger, stranger_key) = (s("stranger.crt"), s("stranger.key"));
    let (expired, expired_key) = (s("expired.crt"), s("expired.key"));
    for (what, args) in [
        ("no client certificate", vec!["--cacert", &cacert, "-u", "prom:s3cret"]),
        (
            "a client certificate from another CA",
            vec!["--cacert", &cacert, "--cert", &stranger, "--key", &stranger_key, "-u", "prom:s3cret"],
        ),
        (
            "an expired client certificate",
            vec!["--cacert", &cacert, "--cert", &expired, "--key", &expired_key, "-u", "prom:s3cret"],
        ),
    ] {
        let r = curl(&url("/metrics"), &args);
        assert!(
            r.code != 0 && r.status == "000",
            "{what}: curl exit {} status {}: {}",
            r.code,
            r.status,
            r.body
        );
    }
    // The client checks the server too: a CA that did not sign it is refused.
    let other = s("other-ca.crt");
    let r =
        curl(&url("/metrics"), &["--cacert", &other, "--cert", &cert, "--key", &key, "-u", "prom:s3cret"]);
    assert!(r.code != 0, "server certificate accepted by the wrong CA: {}", r.body);

    // Plain HTTP to the TLS port: a 400 that says why.
    let plain = http_get(&agent.addr, "/metrics").expect("plain HTTP gets an answer");
    assert_eq!(plain.status, 400);
    assert!(plain.body.contains("HTTP request to an HTTPS server"), "{}", plain.body);

    // SIGHUP with a broken web config keeps the running one; a good one replaces it.
    std::fs::write(&web, "basic_auth_users:\n  prom: plaintext\n").expect("break web config");
    agent.signal(rustix::process::Signal::HUP);
    wait_for("the failed reload to be logged", Duration::from_secs(10), || {
        agent.log().contains("web config reload failed").then_some(())
    });
    assert_eq!(curl(&url("/metrics"), &with(&["-u", "prom:s3cret"])).status, "200", "old config kept");
    web_config(d, &[("prom", "n3w")]);
    agent.signal(rustix::process::Signal::HUP);
    wait_for("the new password to work", Duration::from_secs(10), || {
        (curl(&url("/metrics"), &with(&["-u", "prom:n3w"])).status == "200").then_some(())
    });
    assert_eq!(curl(&url("/metrics"), &with(&["-u", "prom:s3cret"])).status, "401", "old password refused");
}

#[test]
fn a_bad_web_config_stops_the_start_with_exit_code_2() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let web = tmp.path().join("web.yml");
    std::fs::write(&web, "tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_overlay-agent"))
        .args(["--web.listen-address", "127.0.0.1:0", "--web.config.file", web.to_str().expect("utf8")])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("web.yml") && err.contains("tls_server_config.cert_file") && err.contains("nope.crt"),
        "{err}"
    );
}

/// A connection that sends nothing, or half a request.
fn idle_connection(addr: &str, partial: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(partial).expect("write");
    s
}

/// Reads until EOF: Ok(bytes) when the server closed the connection.
fn read_to_close(s: &mut TcpStream, limit: Duration) -> std::io::Result<Vec<u8>> {
    s.set_read_timeout(Some(limit))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    Ok(buf)
}

#[test]
fn slow_clients_big_headers_and_connection_limits() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tmp.path().join("agent.yaml");
    std::fs::write(&cfg, "web:\n  max_connections: 4\nscan:\n  enabled: false\nebpf:\n  enabled: false\n")
        .expect("write");
    let agent = Agent::start(tmp.path(), &["--config", cfg.to_str().expect("utf8")]);

    // Headers larger than 16 KiB: 431, not a buffered megabyte.
    let mut s = TcpStream::connect(&agent.addr).expect("connect");
    let big = "x".repeat(64 * 1024);
    let _ = write!(s, "GET /metrics HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n");
    let reply = read_to_close(&mut s, Duration::from_secs(10)).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&reply)
    );

    // Only GET and HEAD; nothing but the four endpoints.
    for method in ["POST", "PUT", "DELETE", "TRACE", "OPTIONS"] {
        assert_eq!(http_request(&agent.addr, method, "/metrics").expect(method).status, 405, "{method}");
    }
    for path in ["/debug/pprof/", "/debug/vars", "/metrics/../etc/passwd", "/admin"] {
        assert_eq!(http_get(&agent.addr, path).expect(path).status, 404, "{path}");
    }

    // Slowloris: half a request line, then silence: closed by the server.
    let mut slow = idle_connection(&agent.addr, b"GET /metrics HTTP/1.1\r\nHost: a\r\nX-Slow: ");
    let closed = read_to_close(&mut slow, Duration::from_secs(30));
    assert!(closed.is_ok(), "a slow client was not disconnected within 30 s: {closed:?}");

    // Four connections that send nothing fill web.max_connections: a fifth
    // client is served at once, the oldest silent one shed to make room.
    let mut hogs: Vec<TcpStream> = (0..4).map(|_| idle_connection(&agent.addr, b"")).collect();
    // Each scrape is a fifth connection once the agent has accepted the four.
    let m = wait_for("a scrape to shed a silent connection", Duration::from_secs(10), || {
        let m = agent.metrics();
        (m.get("overlayfs_http_connections_shed_total", &[]) >= Some(1.0)).then_some(m)
    });
    assert_eq!(m.get("overlayfs_http_connections", &[]), Some(4.0), "three hogs and the scrape");
    assert_eq!(m.get("overlayfs_http_connections_limit", &[]), Some(4.0));
    let r = http_get(&agent.addr, "/healthz").expect("healthz while four connections are held");
    assert_eq!(r.status, 200);
    let oldest = read_to_close(&mut hogs[0], Duration::from_secs(5));
    assert!(oldest.is_ok(), "the oldest silent connection was not shed: {oldest:?}");
    drop(hogs);
    assert_eq!(http_get(&agent.addr, "/healthz").expect("healthz").status, 200);
}

/// How the connections of a flood behave.
#[derive(Clone, Copy, Debug)]
enum Flood {
    /// Connect and send nothing.
    Idle,
    /// Send a request head that never ends, one byte per connection every 100 ms.
    ByteByByte,
    /// Start a TLS handshake (a record header) and stall.
    StalledTls,
}

/// `n` flood connections to `addr`, renewed as the server closes them, from one
/// thread; stopped on drop.
struct Flooder {
    stop: Arc<AtomicBool>,
    /// Connections open now (from the client's side) and opened in all.
    held: Arc<AtomicUsize>,
    opened: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flooder {
    fn start(addr: &str, n: usize, kind: Flood) -> Flooder {
        let addr: std::net::SocketAddr = addr.parse().expect("loopback address");
        assert!(addr.ip().is_loopback(), "floods only go to loopback");
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicUsize::new(0));
        let opened = Arc::new(AtomicUsize::new(0));
        let (s, h, o) = (stop.clone(), held.clone(), opened.clone());
        let thread = std::thread::spawn(move || {
            let head = b"GET /metrics HTTP/1.1\r\nHost: flood\r\nX-Slow: ";
            let mut conns: Vec<Option<(TcpStream, usize)>> = (0..n).map(|_| None).collect();
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                let round = std::time::Instant::now();
                for c in conns.iter_mut() {
                    if s.load(Ordering::Relaxed) {
                        break;
                    }
                    if c.is_none() {
                        if let Ok(mut st) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                            if matches!(kind, Flood::StalledTls) {
                                // A handshake record header, and nothing of the ClientHello.
                                let _ = st.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]);
                            }
                            let _ = st.set_nonblocking(true);
                            o.fetch_add(1, Ordering::Relaxed);
                            *c = Some((st, 0));
                        }
                        continue;
                    }
                    let Some((st, sent)) = c.as_mut() else { continue };
                    let alive = match st.read(&mut buf) {
                        Ok(0) => false,
                        Ok(_) => true,
                        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                    };
                    let alive = alive
                        && match kind {
                            Flood::ByteByByte => {
                                let byte = head.get(*sent).copied().unwrap_or(b'a');
                                *sent += 1;
                                !matches!(st.write(&[byte]), Err(e) if e.kind() != std::io::ErrorKind::WouldBlock)
                            }
                            _ => true,
                        };
                    if !alive {
                        *c = None;
                    }
                }
                h.store(conns.iter().filter(|c| c.is_some()).count(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100).saturating_sub(round.elapsed()));
            }
        });
        Flooder { stop, held, opened, thread: Some(thread) }
    }

    /// Waits until the flood holds at least `n` connections.
    fn wait_holding(&self, n: usize) {
        wait_for(&format!("the flood to hold {n} connections"), Duration::from_secs(60), || {
            (self.held.load(Ordering::Relaxed) >= n).then_some(())
        });
    }

    /// Waits until the flood has opened `n` connections in all (renewing the shed ones).
    fn wait_opened(&self, n: usize) {
        wait_for(&format!("the flood to open {n} connections"), Duration::from_secs(60), || {
            (self.opened.load(Ordering::Relaxed) >= n).then_some(())
        });
    }
}

impl Flooder {
    /// Runs `scrapes` while the flood goes on, and checks that it did: with no cap
    /// the flood held all its connections at the end, with a cap it kept renewing
    /// the shed ones (at least 100 during the scrapes).
    fn scrapes_during(
        &self,
        what: &str,
        cap: Option<usize>,
        scrapes: impl FnOnce() -> Vec<Duration>,
    ) -> Vec<Duration> {
        let opened = self.opened.load(Ordering::Relaxed);
        let times = scrapes();
        let held = self.held.load(Ordering::Relaxed);
        let renewed = self.opened.load(Ordering::Relaxed) - opened;
        println!("{what}: the flood held {held} connections and opened {renewed} during the scrapes");
        match cap {
            None => assert!(held >= 1000, "{what}: the flood did not hold on ({held})"),
            Some(_) => assert!(renewed >= 100, "{what}: the flood did not go on ({renewed} renewed)"),
        }
        times
    }
}

impl Drop for Flooder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Latencies of `rounds` GETs of /metrics and /healthz, each on a new connection
/// (as Prometheus after a failed scrape). Panics on any failure or non-200.
fn timed_scrapes(
    addr: &str,
    rounds: usize,
    get: &dyn Fn(&str, &str) -> Result<u16, String>,
) -> Vec<Duration> {
    let mut times = Vec::new();
    for i in 0..rounds {
        for path in ["/metrics", "/healthz"] {
            let t = std::time::Instant::now();
            let status = get(addr, path).unwrap_or_else(|e| panic!("{path} (round {i}) failed: {e}"));
            times.push(t.elapsed());
            assert_eq!(status, 200, "{path} (round {i})");
        }
        // A scrape cadence (not a wait for readiness): the flood goes on between rounds.
        std::thread::sleep(Duration::from_millis(50));
    }
    times
}

fn plain_get(addr: &str, path: &str) -> Result<u16, String> {
    http_get(addr, path).map(|r| r.status).map_err(|e| e.to_string())
}

/// p50, p99 and max of latencies, in milliseconds.
fn summary(times: &[Duration]) -> String {
    let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    format!("n={} p50={:.1} ms p99={:.1} ms max={:.1} ms", ms.len(), at(0.5), at(0.99), at(1.0))
}

/// A scrape must finish well inside Prometheus's default 10 s scrape timeout. The
/// issue's target is 1 s; the measured margin is printed (and in the benchmark,
/// `flood_figures`): the deadline here is generous because the flood and the test
/// share two loaded cores with other builds.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(5);

fn assert_within_deadline(what: &str, times: &[Duration]) {
    println!("{what}: {}", summary(times));
    let worst = times.iter().max().copied().unwrap_or_default();
    assert!(worst < SCRAPE_DEADLINE, "{what}: a scrape took {worst:?}: {}", summary(times));
}

fn quiet_agent(dir: &Path, web: &str) -> Agent {
    let cfg = dir.join("agent.yaml");
    std::fs::write(&cfg, format!("web:\n{web}scan:\n  enabled: false\nebpf:\n  enabled: false\n"))
        .expect("write config");
    Agent::start(dir, &["--config", cfg.to_str().expect("utf8")])
}

fn gauge(agent: &Agent, name: &str) -> f64 {
    agent.metrics().get(name, &[]).unwrap_or_else(|| panic!("{name} missing"))
}

/// 1,000 connections held idle and 1,000 sending their heads byte by byte, each
/// renewed as the agent drops them. With the default cap the agent holds them all;
/// with a cap of 500 it sheds the oldest. Either way every scrape is answered.
#[test]
fn scrapes_answer_under_a_flood_of_idle_and_slow_connections() {
    common::require_root();
    for (cap, kind) in [
        (None, Flood::Idle),
        (None, Flood::ByteByByte),
        (Some(500), Flood::Idle),
        (Some(500), Flood::ByteByByte),
    ] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let web = cap.map(|c| format!("  max_connections: {c}\n")).unwrap_or_default();
        let agent = quiet_agent(tmp.path(), &web);
        let flood = Flooder::start(&agent.addr, 1000, kind);
        match cap {
            None => flood.wait_holding(1000),
            // At the cap the agent sheds as fast as the flood reconnects.
            Some(_) => flood.wait_opened(3000),
        }
        let what = format!("{kind:?} flood of 1000, cap {}", cap.map_or("default".into(), |c| c.to_string()));
        match cap {
            // The agent itself holds the whole flood (and the scrape).
            None => wait_for("the agent to hold the flood", Duration::from_secs(30), || {
                (gauge(&agent, "overlayfs_http_connections") >= 1000.0).then_some(())
            }),
            Some(c) => {
                assert!(gauge(&agent, "overlayfs_http_connections") <= c as f64);
                assert!(gauge(&agent, "overlayfs_http_connections_shed_total") >= 900.0, "{what}: shed");
            }
        }
        let times = flood.scrapes_during(&what, cap, || timed_scrapes(&agent.addr, 20, &plain_get));
        assert_within_deadline(&what, &times);
    }
}

/// 100 clients scraping /metrics back to back: one render at a time, shared by
/// the scrapes that wait for it; a scrape among them is answered promptly.
#[test]
fn scrapes_answer_while_100_clients_hammer_metrics() {
    common::require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let agent = quiet_agent(tmp.path(), "");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let hammers: Vec<_> = (0..100)
        .map(|_| {
            let (addr, stop, done) = (agent.addr.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(r) = http_get(&addr, "/metrics") {
                        assert_eq!(r.status, 200, "a hammering client got {}", r.status);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    wait_for("the hammering to start", Duration::from_secs(30), || {
        (done.load(Ordering::Relaxed) >= 1000).then_some(())
    });
    let before = agent.metrics();
    let times = timed_scrapes(&agent.addr, 20, &plain_get);
    let after = agent.metrics();
    stop.store(true, Ordering::Relaxed);
    for h in hammers {
        h.join().expect("hammering client");
    }
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.get(name, labels).expect(name) - before.get(name, labels).expect(name)
    };
    let (scrapes, renders) = (
        delta("overlayfs_http_scrapes_total", &[("format", "text")]),
        delta("overlayfs_http_renders_total", &[]),
    );
    println!("100 hammering clients: {scrapes} scrapes served by {renders} renders meanwhile");
    assert!(renders < scrapes / 2.0, "scrapes did not share renders: {scrapes} scrapes, {renders} renders");
    assert_within_deadline("scrape among 100 hammering clients", &times);
}

/// A blocking TLS client trusting `ca`: GET `path`, the status code.
fn tls_get(ca: &rustls::pki_types::CertificateDer<'static>, addr: &str, path: &str) -> Result<u16, String> {
    tls_fetch(ca, addr, path).map(|(status, _)| status)
}

/// GET `path` over TLS: the status code and the whole reply (head and body).
fn tls_fetch(
    ca: &rustls::pki_types::CertificateDer<'static>,
    addr: &str,
    path: &str,
) -> Result<(u16, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| e.to_string())?;
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    // The request goes out in several records: no Nagle wait for the server's delayed ACK.
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(tls, "GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    match tls.read_to_end(&mut reply) {
        Ok(_) => {}
        // The server closes without close_notify after HTTP/1.0: what was read counts.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e.to_string()),
    }
    let text = String::from_utf8_lossy(&reply).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    status.map(|s| (s, text.clone())).ok_or_else(|| format!("no status in {text:?}"))
}

/// The TLS port under 1,000 stalled handshakes, renewed as dropped: a TLS scrape
/// is answered, with the default cap and with a cap of 500.
#[test]
fn tls_scrapes_answer_under_a_flood_of_stalled_handshakes() {
    common::require_root();
    for cap in [None, Some(500)] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path();
        let ca = make_ca(d, "ca");
        leaf(d, "server", &ca, &["127.0.0.1", "localhost"], false);
        std::fs::write(
            d.join("web.yml"),
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
        )
        .expect("write web config");
        let web = format!(
            "  config_file: {}\n{}",
            d.join("web.yml").display(),
            cap.map(|c| format!("  max_connections: {c}\n")).unwrap_or_default()
        );
        let cfg = d.join("agent.yaml");
        std::fs::write(&cfg, format!("web:\n{web}scan:\n  enabled: false\nebpf:\n  enabled: false\n"))
            .expect("write config");
        let agent = Agent::spawn(d, &["--config", cfg.to_str().expect("utf8")]);
        let der = ca.der().clone();
        wait_for("the TLS agent to be ready", Duration::from_secs(20), || {
            (tls_get(&der, &agent.addr, "/readyz") == Ok(200)).then_some(())
        });
        let flood = Flooder::start(&agent.addr, 1000, Flood::StalledTls);
        match cap {
            None => flood.wait_holding(1000),
            Some(_) => flood.wait_opened(3000),
        }
        let what =
            format!("stalled TLS handshakes x1000, cap {}", cap.map_or("default".into(), |c| c.to_string()));
        let get = |addr: &str, path: &str| tls_get(&der, addr, path);
        let times = flood.scrapes_during(&what, cap, || timed_scrapes(&agent.addr, 20, &get));
        assert_within_deadline(&what, &times);
        if cap.is_some() {
            let shed = tls_metric(&der, &agent.addr, "overlayfs_http_connections_shed_total");
            assert!(shed >= 900.0, "{what}: {shed} shed");
        }
    }
}

/// One unlabelled sample of the agent's exposition over TLS.
fn tls_metric(ca: &rustls::pki_types::CertificateDer<'static>, addr: &str, name: &str) -> f64 {
    let (status, body) = tls_fetch(ca, addr, "/metrics").expect("TLS scrape");
    assert_eq!(status, 200);
    let body = body.split_once("\r\n\r\n").map_or(body.as_str(), |(_, b)| b);
    common::Metrics::parse(body).get(name, &[]).unwrap_or_else(|| panic!("{name} missing"))
}

/// VmRSS of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kib / 1024.0
}

/// The benchmark behind the figures in docs/performance.md ("Hostile clients"):
/// scrape latency and agent RSS under each flood, default config. Not in the test
/// command; run it on a release build:
/// `cargo test --release -p overlay-agent --features e2e --test web -- --ignored --nocapture flood_figures`
#[test]
#[ignore = "benchmark: prints figures"]
fn flood_figures() {
    common::require_root();
    let mut rows = Vec::new();
    for kind in [None, Some(Flood::Idle), Some(Flood::ByteByByte), Some(Flood::StalledTls), None] {
        let hammer = rows.len() == 4;
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path();
        let ca = make_ca(d, "ca");
        leaf(d, "server", &ca, &["127.0.0.1", "localhost"], false);
        let tls = matches!(kind, Some(Flood::StalledTls));
        let web = if tls {
            std::fs::write(
                d.join("web.yml"),
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
            )
            .expect("write web config");
            format!("  config_file: {}\n", d.join("web.yml").display())
        } else {
            String::new()
        };
        let cfg = d.join("agent.yaml");
        std::fs::write(&cfg, format!("web:\n{web}scan:\n  enabled: false\nebpf:\n  enabled: false\n"))
            .expect("write config");
        let agent = Agent::spawn(d, &["--config", cfg.to_str().expect("utf8")]);
        let der = ca.der().clone();
        let get =
            move |addr: &str, path: &str| if tls { tls_get(&der, addr, path) } else { plain_get(addr, path) };
        wait_for("the agent to be ready", Duration::from_secs(20), || {
            (get(&agent.addr, "/readyz") == Ok(200)).then_some(())
        });
        let _ = timed_scrapes(&agent.addr, 20, &get);
        let idle = rss_mib(agent.child.id());
        let flood = kind.map(|k| {
            let f = Flooder::start(&agent.addr, 1000, k);
            f.wait_holding(1000);
            f
        });
        let stop = Arc::new(AtomicBool::new(false));
        let hammers: Vec<_> = (0..if hammer { 100 } else { 0 })
            .map(|_| {
                let (addr, stop) = (agent.addr.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let _ = http_get(&addr, "/metrics");
                    }
                })
            })
            .collect();
        let times = timed_scrapes(&agent.addr, 100, &get);
        let loaded = rss_mib(agent.child.id());
        stop.store(true, Ordering::Relaxed);
        for h in hammers {
            h.join().expect("hammer");
        }
        drop(flood);
        let what = match (kind, hammer) {
            (_, true) => "100 clients scraping /metrics back to back".to_owned(),
            (None, _) => "none".to_owned(),
            (Some(k), _) => format!("1,000 connections: {k:?}"),
        };
        rows.push(format!(
            "| {what} | {} | {idle:.1} MiB | {loaded:.1} MiB | {:+.1} MiB |",
            summary(&times),
            loaded - idle
        ));
    }
    println!("| load | /metrics + /healthz latency | RSS idle | RSS loaded | added |\n|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
