//! The guests' shell helpers (tests/guest/initramfs/helpers.sh) run on the host,
//! under the same busybox and with short bounds: a process that outlives its
//! signal, an agent that accepts a scrape and never answers, and one that has
//! exited each end in a marker or a failure at once, never in a wait that
//! outlasts the host's 600 s deadline for the whole guest.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::repo_root;

struct Run {
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs `script` in busybox sh after sourcing helpers.sh, with busybox's
/// applets first on PATH (as in the guest) and `env` set.
fn run(dir: &Path, script: &str, env: &[(&str, String)]) -> Run {
    let bin = dir.join("bin");
    if !bin.exists() {
        std::fs::create_dir_all(&bin).expect("mkdir bin");
        let status =
            Command::new("/bin/busybox").arg("--install").arg("-s").arg(&bin).status().expect("busybox");
        assert!(status.success(), "busybox --install (scripts/test.sh installs busybox-static)");
    }
    let helpers = repo_root().join("tests/guest/initramfs/helpers.sh");
    let started = Instant::now();
    let out = Command::new("/bin/busybox")
        .args(["sh", "-c", &format!(". '{}'\n{script}", helpers.display())])
        .env("PATH", &bin)
        .env("HUNG", dir.join("hung"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("busybox sh");
    Run {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: started.elapsed(),
    }
}

#[test]
fn terminate_reports_a_process_that_outlives_its_signal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    // The child says when its trap is set: no signal races it.
    let script = format!(
        "sh -c 'trap \"\" TERM; touch {d}/trapped; while :; do sleep 1; done' &
        p=$!
        until [ -e {d}/trapped ]; do usleep 10000; done
        terminate $p TERM STUBBORN
        echo \"stubborn=$?\"
        sleep 30 &
        terminate $! TERM SLEEPER
        echo \"sleeper=$?\""
    );
    let r = run(dir.path(), &script, &[("EXIT_TENTHS", "10".into())]);
    assert!(r.stdout.contains("=== STUBBORN DID NOT EXIT\nstubborn=137\n"), "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.ends_with("sleeper=143\n"), "{}{}", r.stdout, r.stderr);
    assert!(!r.stdout.contains("SLEEPER DID NOT EXIT"), "{}", r.stdout);
    assert!(r.took < Duration::from_secs(20), "took {:?}", r.took);
}

#[test]
fn a_scrape_without_an_answer_is_cut_and_later_ones_fail_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Connections complete in the listen backlog; nothing ever answers them.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let script = "scrape; echo \"first=$?\"; scrape; echo \"second=$?\"; ready; echo \"ready=$?\"";
    let r = run(dir.path(), script, &[("AGENT_ADDR", addr), ("GET_TIMEOUT", "1".into())]);
    assert_eq!(r.stdout, "first=143\nsecond=1\nready=1\n", "{}", r.stderr);
    assert_eq!(r.stderr.matches("=== SCRAPE TIMEOUT").count(), 1, "{}", r.stderr);
    assert!(dir.path().join("hung").exists());
    assert!(r.took < Duration::from_secs(20), "took {:?}", r.took);
}

#[test]
fn ready_answers_at_once_for_a_live_agent_and_for_one_that_exited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = server.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for mut conn in server.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
    });
    let r = run(dir.path(), "ready; echo \"live=$?\"", &[("AGENT_ADDR", addr)]);
    assert_eq!(r.stdout, "live=0\n", "{}", r.stderr);
    // Nothing listens on a port just let go of: without the PID, ready would
    // retry 1200 times (about 2 minutes).
    let freed = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").to_string();
    // Not waited for: a zombie, as the agent is in the guest until terminate.
    let r = run(dir.path(), "sh -c 'exit 3' & p=$!; ready $p; echo \"exited=$?\"", &[("AGENT_ADDR", freed)]);
    assert_eq!(r.stdout, "exited=1\n", "{}", r.stderr);
    assert!(r.took < Duration::from_secs(10), "took {:?}", r.took);
}

#[test]
fn a_step_that_outlasts_its_bound_is_cut_and_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = "step sleep 30; echo \"slow=$?\"; step sh -c 'exit 4'; echo \"failing=$?\"";
    let r = run(dir.path(), script, &[("STEP_TIMEOUT", "1".into())]);
    assert_eq!(r.stdout, "=== STEP TIMEOUT sleep 30\nslow=143\nfailing=4\n", "{}", r.stderr);
    assert!(r.took < Duration::from_secs(20), "took {:?}", r.took);
}
