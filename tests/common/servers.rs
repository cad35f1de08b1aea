//! Real servers and tools the tests drive: Prometheus (killed on drop) and podman.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::host::free_port;
use super::http::{http_get, url_encode};

/// A real Prometheus server on a free loopback port, with a TSDB in `dir`;
/// killed on drop.
pub struct Prometheus {
    child: Child,
    pub addr: String,
    dir: PathBuf,
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
