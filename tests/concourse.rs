//! A Concourse volume's whole life, done the way baggageclaim does it
//! (worker/baggageclaim/volume/filesystem.go, driver/overlay_linux.go), on real
//! mounts, with the real agent and a real Prometheus scraping throughout:
//! a parent volume bind-mounted in live/; the child's directory made in init/,
//! its overlay (lowerdir = the parent's live volume, upperdir
//! overlays/<handle>, workdir overlays/work/<handle>, metacopy=on where the
//! kernel has it) mounted at init/<handle>/volume, privileged.json written,
//! every file chowned to the mapped ids (the copy-up storm of an unprivileged
//! volume), the directory renamed to live/, later to dead/, then unmounted.
//!
//! At every step the agent labels the mount runtime="concourse",
//! container_id=<handle> and privileged="false"; what was copied up in init/
//! stays on the handle; no series of a former mountpoint is left. The agent
//! runs with a 5-minute resync interval: renames reach it through its own
//! rename check, not the periodic re-read.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Agent, Metrics, Prometheus};

const HANDLE: &str = "5c2f3e4d-1a2b-4c3d-8e9f-0a1b2c3d4e5f";
const PARENT: &str = "1b0e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5b";
/// Files in the parent volume: the chown copies each one up.
const FILES: usize = 12;
/// The unprivileged namespace's root, as baggageclaim maps it (max id - 1).
const MAPPED_ROOT: u32 = 4294967294;

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs_f64()
}

/// The agent's mount_info series for the handle (exactly one), as text.
fn info_of(m: &Metrics) -> Option<String> {
    let mut it = m.samples.keys().filter(|k| {
        k.starts_with("overlayfs_mount_info{") && k.contains(&format!("container_id=\"{HANDLE}\""))
    });
    let one = it.next()?.clone();
    assert!(it.next().is_none(), "two mount_info series for one handle:\n{}", m.text);
    Some(one)
}

/// Waits until the handle's volume shows at `state`/ with all its labels and,
/// once `copied` is known, the scan's figures; returns that exposition.
fn wait_state(agent: &Agent, volumes: &Path, state: &str, kind: &str, copied: Option<f64>) -> Metrics {
    let mp = format!("{}/{state}/{HANDLE}/volume", volumes.display());
    let m = common::scrape_until(agent, &format!("the volume at {state}/ with its labels"), |m| {
        let Some(info) = info_of(m) else { return false };
        let scanned = m.get("overlayfs_upper_entries", &[("mountpoint", &mp), ("kind", kind)]);
        info.contains(&format!("mountpoint=\"{mp}\""))
            && info.contains("runtime=\"concourse\"")
            && info.contains("privileged=\"false\"")
            && copied.is_none_or(|n| scanned == Some(n))
    });
    // No series of another state's mountpoint: every family moved with the mount.
    for other in ["init", "live", "dead"].into_iter().filter(|s| *s != state) {
        let old = format!("{}/{other}/{HANDLE}/volume", volumes.display());
        assert!(!m.text.contains(&old), "a series still names {old}:\n{}", m.text);
    }
    m
}

#[test]
fn volume_lifecycle_init_live_dead_keeps_its_identity_and_series() {
    common::require_root();
    lifecycle(&Worker::Host);
}

/// The same life, done by a worker that runs in a container of its own (the
/// Helm chart's and docker-compose's deployments): every mount, unmount and the
/// chown happen in the worker's private mount namespace, which the host's mount
/// table does not show.
#[test]
fn volume_lifecycle_in_a_workers_private_namespace() {
    common::require_root();
    let worker = Worker::namespace();
    lifecycle(&worker);
}

/// Where the worker runs: on the host, or in a private mount namespace held by
/// a process of its own (killed on drop, and the namespace's mounts with it).
enum Worker {
    Host,
    Namespace(std::process::Child),
}

impl Worker {
    fn namespace() -> Worker {
        let mut child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", "echo ready; exec sleep 1000000"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("unshare");
        let mut line = String::new();
        let out = child.stdout.take().expect("stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).expect("read");
        assert_eq!(line.trim(), "ready");
        Worker::Namespace(child)
    }

    /// `program`, run where the worker runs.
    fn cmd(&self, program: &str) -> Command {
        match self {
            Worker::Host => Command::new(program),
            Worker::Namespace(child) => {
                let mut c = Command::new("nsenter");
                c.args(["-t", &child.id().to_string(), "-m", "--", program]);
                c
            }
        }
    }

    /// The `mntns` label of the worker's mounts.
    fn mntns(&self) -> String {
        match self {
            Worker::Host => String::new(),
            Worker::Namespace(child) => {
                let link = std::fs::read_link(format!("/proc/{}/ns/mnt", child.id())).expect("ns");
                link.to_string_lossy().trim_start_matches("mnt:[").trim_end_matches(']').to_owned()
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Worker::Namespace(child) = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn lifecycle(worker: &Worker) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path().join("worker");
    let volumes = work.join("volumes");
    let overlays = work.join("overlays");
    for d in ["init", "live", "dead"] {
        std::fs::create_dir_all(volumes.join(d)).expect("mkdir");
    }
    std::fs::create_dir_all(overlays.join("work")).expect("mkdir");

    // The parent: an empty-strategy volume (a bind mount of overlays/<parent>)
    // filled by a resource, then initialised (renamed to live/).
    let parent_layer = overlays.join(PARENT);
    for (i, dir) in ["bin", "lib"].iter().enumerate() {
        for f in 0..FILES / 2 {
            common::write_file(&parent_layer.join(dir).join(format!("f{f}")), 1000 * (i + 1) + f);
        }
    }
    std::fs::create_dir_all(volumes.join("init").join(PARENT).join("volume")).expect("mkdir");
    std::fs::write(volumes.join("init").join(PARENT).join("privileged.json"), "true\n").expect("write");
    common::run(
        worker
            .cmd("mount")
            .arg("--bind")
            .arg(&parent_layer)
            .arg(volumes.join("init").join(PARENT).join("volume")),
    );
    std::fs::rename(volumes.join("init").join(PARENT), volumes.join("live").join(PARENT)).expect("rename");
    let _parent = Mounted(worker, volumes.join("live").join(PARENT).join("volume"));

    let cfg = tmp.path().join("agent.yaml");
    std::fs::write(
        &cfg,
        format!(
            "discovery:\n  include_mountpoints: ['{}/.*']\n  resync_interval: 5m\nscan:\n  interval: 1s\n",
            regex::escape(&tmp.path().display().to_string())
        ),
    )
    .expect("agent config");
    let agent = Agent::start(tmp.path(), &["--config", cfg.to_str().expect("utf8")]);
    let prom = Prometheus::start(
        Path::new("prometheus"),
        &format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: overlay-agent\n    static_configs:\n      - targets: ['{}']\n",
            agent.addr
        ),
        tmp.path(),
    );
    common::wait_for("Prometheus to scrape the agent", Duration::from_secs(60), || {
        (prom.value("up{job=\"overlay-agent\"}")? == "1").then_some(())
    });

    // NewVolume + CreateCopyOnWriteLayer: init/<handle>/volume, the overlay on it.
    let init = volumes.join("init").join(HANDLE);
    std::fs::create_dir_all(init.join("volume")).expect("mkdir");
    std::fs::write(init.join("properties.json"), "{}\n").expect("properties.json");
    let (upper, workdir) = (overlays.join(HANDLE), overlays.join("work").join(HANDLE));
    std::fs::create_dir_all(&upper).expect("mkdir");
    std::fs::create_dir_all(&workdir).expect("mkdir");
    let mut opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        volumes.join("live").join(PARENT).join("volume").display(),
        upper.display(),
        workdir.display()
    );
    if Path::new("/sys/module/overlay/parameters/metacopy").exists() {
        opts.push_str(",metacopy=on");
    }
    common::run(worker.cmd("mount").args(["-t", "overlay", "overlay", "-o", &opts]).arg(init.join("volume")));
    let mut mount = Mounted(worker, volumes.join("init").join(HANDLE).join("volume"));
    // StorePrivileged, then the namespacing of an unprivileged volume.
    std::fs::write(init.join("privileged.json"), "false\n").expect("privileged.json");
    let metacopy = opts.contains("metacopy=on");
    // What the chown leaves in the upper dir, per file: metadata only with metacopy.
    let kind = if metacopy { "metacopy" } else { "copied_up" };
    let m = wait_state(&agent, &volumes, "init", kind, None);
    let info = info_of(&m).expect("mount_info");
    let mntns = worker.mntns();
    eprintln!("the volume in init/: {info}");
    assert_eq!(info.contains(&format!("mntns=\"{mntns}\"")), !mntns.is_empty(), "{info}");
    assert!(info.contains(&format!("metacopy=\"{}\"", if metacopy { "on" } else { "" })), "{info}");
    let id = MAPPED_ROOT.to_string();
    common::run(worker.cmd("chown").arg("-R").arg(format!("{id}:{id}")).arg(init.join("volume")));
    let copied = FILES as f64;
    let in_init = wait_state(&agent, &volumes, "init", kind, Some(copied));
    let attributed = format!(
        "sum by (container_id) (overlayfs_upper_entries{{kind=\"{kind}\"}} * on (mountpoint) group_left (container_id) overlayfs_mount_info{{container_id=\"{HANDLE}\"}})"
    );
    common::wait_for("Prometheus to scrape the copied-up files in init/", Duration::from_secs(30), || {
        (prom.value(&attributed)?.parse::<f64>().ok()? == copied).then_some(())
    });
    let t_counted = now();

    // Initialize: rename init/<handle> -> live/<handle>.
    std::fs::rename(&init, volumes.join("live").join(HANDLE)).expect("rename to live");
    mount.1 = volumes.join("live").join(HANDLE).join("volume");
    let in_live = wait_state(&agent, &volumes, "live", kind, Some(copied));
    let mp = |s: &str| format!("{}/{s}/{HANDLE}/volume", volumes.display());
    for family in ["overlayfs_upper_bytes", "overlayfs_upper_inodes", "overlayfs_upper_scans_total"] {
        assert!(in_init.get(family, &[("mountpoint", &mp("init"))]).is_some(), "{family} in init/");
        assert!(in_live.get(family, &[("mountpoint", &mp("live"))]).is_some(), "{family} in live/");
    }
    // The scan record moved with the mount: its scans counter kept counting.
    let scans = |m: &Metrics, s: &str| m.get("overlayfs_upper_scans_total", &[("mountpoint", &mp(s))]);
    assert!(scans(&in_live, "live") >= scans(&in_init, "init"), "scans restarted after the rename");
    // Let Prometheus see the live/ state for a few scrapes.
    common::wait_for("Prometheus to see the volume in live/", Duration::from_secs(30), || {
        let q = format!("count_over_time(overlayfs_mount_info{{mountpoint=\"{}\"}}[1m]) >= 3", mp("live"));
        prom.query(&q).filter(|r| !r.is_empty())
    });

    // Destroy: rename to dead/, then unmount.
    std::fs::rename(volumes.join("live").join(HANDLE), volumes.join("dead").join(HANDLE))
        .expect("rename to dead");
    mount.1 = volumes.join("dead").join(HANDLE).join("volume");
    wait_state(&agent, &volumes, "dead", kind, Some(copied));
    common::wait_for("Prometheus to see the volume in dead/", Duration::from_secs(30), || {
        let q = format!("count_over_time(overlayfs_mount_info{{mountpoint=\"{}\"}}[1m]) >= 2", mp("dead"));
        prom.query(&q).filter(|r| !r.is_empty())
    });
    let t_dead = now();
    mount.unmount();
    common::scrape_until(&agent, "the unmounted volume to go", |m| info_of(m).is_none());

    // Through Prometheus: at every instant from the storm to the teardown, one
    // mount_info series for the handle, and the copied-up files attributed to it.
    let one = format!("count by (container_id) (overlayfs_mount_info{{container_id=\"{HANDLE}\"}})");
    for (q, want) in [(one, 1.0), (attributed, copied)] {
        let r = prom.query_range(&q, t_counted, t_dead, 1.0).expect("range query");
        assert_eq!(r.len(), 1, "{q}: {r:?}");
        let values = r[0]["values"].as_array().expect("values");
        assert!(values.len() as f64 >= (t_dead - t_counted) - 1.0, "{q}: gaps: {values:?}");
        for v in values {
            let got: f64 = v[1].as_str().and_then(|s| s.parse().ok()).expect("value");
            assert_eq!(got, want, "{q} at {}: {values:?}", v[0]);
        }
    }
    // The series moved: three mountpoints over the volume's life, none left now.
    let moved = prom
        .query(&format!(
            "count by (mountpoint) (last_over_time(overlayfs_mount_info{{container_id=\"{HANDLE}\"}}[10m]))"
        ))
        .expect("query");
    let mut seen: Vec<String> =
        moved.iter().filter_map(|r| r["metric"]["mountpoint"].as_str().map(str::to_owned)).collect();
    seen.sort();
    assert_eq!(seen, vec![mp("dead"), mp("init"), mp("live")]);
    common::wait_for("the handle's series to go stale in Prometheus", Duration::from_secs(30), || {
        prom.query(&format!("overlayfs_mount_info{{container_id=\"{HANDLE}\"}}")).filter(|r| r.is_empty())
    });
}

/// A volume's mount in the worker, wherever its directory has been renamed to;
/// detached on drop.
struct Mounted<'a>(&'a Worker, std::path::PathBuf);

impl Mounted<'_> {
    fn unmount(&mut self) {
        common::run(self.0.cmd("umount").arg(&self.1));
        self.1 = std::path::PathBuf::new();
    }
}

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        if !self.1.as_os_str().is_empty() {
            let _ = self.0.cmd("umount").arg("-l").arg(&self.1).status();
        }
    }
}
