//! The real agent binary of this package, started with `serve` on a free port
//! (killed on drop), its config, and scrapes of it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::exposition::Metrics;
use super::host::{free_port, wait_for, wait_for_explained};
use super::http::http_get;

pub const BIN: &str = env!("CARGO_BIN_EXE_overlay-agent");

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

/// Scrapes until `f` accepts the metrics (scans run in the background). On a
/// timeout, the panic lists the mounts of the last scrape, with their labels.
pub fn scrape_until(agent: &Agent, what: &str, f: impl Fn(&Metrics) -> bool) -> Metrics {
    let last_mounts = std::cell::Cell::new(String::new());
    let scrape = || {
        let m = agent.metrics();
        if f(&m) {
            return Some(m);
        }
        let mounts: Vec<&str> = m.text.lines().filter(|l| l.starts_with("overlayfs_mount_info{")).collect();
        last_mounts.set(mounts.join("\n"));
        None
    };
    let explain = || format!("; the last scrape's mounts:\n{}", last_mounts.take());
    wait_for_explained(what, Duration::from_secs(20), scrape, explain)
}
