//! Packaging, checked with the real tools: the systemd unit with systemd-analyze,
//! and the container image built offline and run with podman against the host.
//! (The Helm chart and the raw Kubernetes manifests: chart.rs; podman's
//! container identity: runtimes.rs.)

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{free_port, podman, repo_root, write_file, Overlay};

fn unit_capabilities() -> Vec<String> {
    let unit =
        std::fs::read_to_string(repo_root().join("packaging/systemd/overlay-agent.service")).expect("unit");
    let line =
        unit.lines().find_map(|l| l.strip_prefix("CapabilityBoundingSet=")).expect("CapabilityBoundingSet");
    let mut caps: Vec<String> =
        line.split_whitespace().map(|c| c.trim_start_matches("CAP_").to_owned()).collect();
    caps.sort();
    caps
}

#[test]
fn systemd_unit_verifies() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let unit =
        std::fs::read_to_string(repo_root().join("packaging/systemd/overlay-agent.service")).expect("unit");
    // Point ExecStart at the built binary: verify checks that it exists.
    let unit = unit.replace("/usr/bin/overlay-agent", common::BIN);
    let path = tmp.path().join("overlay-agent.service");
    std::fs::write(&path, unit).expect("write unit");
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().expect("systemd-analyze");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.trim().is_empty(), "systemd-analyze verify:\n{text}");
    assert_eq!(
        unit_capabilities(),
        ["BPF", "DAC_READ_SEARCH", "PERFMON", "SYS_ADMIN", "SYS_PTRACE", "SYS_RESOURCE"],
        "the capabilities README 'Privileges' documents"
    );
}

/// podman with a private storage under `dir` (nothing lands in the host's image
/// store) and the tests' containers.conf.
fn private_podman(dir: &Path) -> impl Fn() -> Command + '_ {
    let podman = podman(dir);
    move || {
        let mut c = podman();
        c.arg("--root").arg(dir.join("storage")).arg("--runroot").arg(dir.join("run"));
        c.args(["--storage-driver", "vfs"]);
        c
    }
}

/// A podman container, removed on drop (also when the test fails).
struct Container<'a>(String, &'a dyn Fn() -> Command);

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = (self.1)().args(["rm", "-f", "-t", "0", &self.0]).output();
    }
}

/// The image as scripts/package.sh ships it: packaging/image/build.sh makes the
/// manifest list from the static binary; the list's archive is run as the
/// DaemonSet runs it (host PID namespace, the host's /proc, / and BTF, six
/// capabilities), and the agent in it scans an overlay mounted on the host.
#[test]
fn container_image_runs_against_the_host() {
    common::require_root();
    let musl = repo_root().join("target/x86_64-unknown-linux-musl/release/overlay-agent");
    assert!(musl.exists(), "{} missing: scripts/test.sh builds it", musl.display());
    let tmp = tempfile::tempdir().expect("tempdir");
    let dist = tmp.path().join("dist");
    common::run(
        Command::new(repo_root().join("packaging/image/build.sh"))
            .arg(&dist)
            .arg("x86_64-unknown-linux-musl"),
    );
    let version = env!("CARGO_PKG_VERSION");
    let list = dist.join(format!("overlay-agent_{version}_oci-image.tar"));
    let single = dist.join(format!("overlay-agent_{version}_linux-amd64.oci.tar"));
    assert!(single.exists(), "{} missing", single.display());
    let platforms = common::list_platforms(&list);
    assert_eq!(platforms, ["linux/amd64"], "the manifest list's platforms");

    let podman = private_podman(tmp.path());
    let ov = Overlay::new(tmp.path(), "merged", "", |l| write_file(&l.join("f"), 1234));
    std::os::unix::fs::chown(ov.merged.join("f"), Some(9), Some(9)).expect("chown");
    let mp = ov.merged.display().to_string();
    let addr = format!("127.0.0.1:{}", free_port());
    let name = format!("overlay-agent-test-{}", std::process::id());
    let image = format!("oci-archive:{}", list.display());
    common::run(podman().args([
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "--pid",
        "host",
        "--cap-drop",
        "all",
        "--cap-add",
        "SYS_ADMIN,DAC_READ_SEARCH,SYS_PTRACE,BPF,PERFMON,SYS_RESOURCE",
        "-v",
        "/proc:/host/proc:ro",
        "-v",
        "/:/host:ro,rslave",
        "-v",
        "/sys/kernel/btf:/sys/kernel/btf:ro",
        &image,
        "--web.listen-address",
        &addr,
    ]));
    let _container = Container(name.clone(), &podman);
    let m = common::wait_for(
        "the containerized agent to scan the host's overlay",
        Duration::from_secs(60),
        || {
            let r = common::http_get(&addr, "/metrics").ok()?;
            // 503 until the agent has read its first mount table.
            if r.status != 200 {
                return None;
            }
            let m = common::Metrics::parse(&r.body);
            (m.get("overlayfs_upper_scans_total", &[("mountpoint", &mp)])? >= 1.0).then_some(m)
        },
    );
    assert_eq!(m.get("overlayfs_upper_entries", &[("mountpoint", &mp), ("kind", "copied_up")]), Some(1.0));
    assert_eq!(m.get("overlayfs_upper_copied_up_bytes", &[("mountpoint", &mp)]), Some(1234.0));
    common::promtool_check(&m.text);
}
