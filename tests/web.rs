//! The HTTP server under attack and behind TLS: the real binary, a real client
//! (curl) and certificates made for the test (a CA, the server, a good client, a
//! client from another CA and an expired client).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
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
    // client waits in the backlog, then is served as soon as a slot frees.
    let mut hogs: Vec<TcpStream> = (0..4).map(|_| idle_connection(&agent.addr, b"")).collect();
    let addr = agent.addr.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(http_get(&addr, "/healthz").map(|r| r.status));
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(2)).is_err(),
        "a fifth connection was served while four held every slot"
    );
    hogs.pop();
    let status = rx.recv_timeout(Duration::from_secs(20)).expect("served once a slot was free");
    assert_eq!(status.expect("healthz"), 200);
    drop(hogs);
    assert_eq!(http_get(&agent.addr, "/healthz").expect("healthz").status, 200);
}
