//! Real container runtimes, started and stopped by the tests: Docker 20.10 with
//! overlay2, Docker 28.5 with the containerd image store (and a BuildKit build
//! step), containerd through `ctr`, podman. Each test runs containers from a
//! busybox image built here (no registry), changes their root filesystems, and
//! checks that `overlay-agent once` labels each container's mount with the
//! runtime's own names for it and counts what the container copied up.
//!
//! The daemons run in a temporary directory with their own data root, state and
//! socket, so they never touch (or need) a system installation: each dockerd gets
//! a containerd of its own through `--containerd` (without it, dockerd uses
//! /run/containerd/containerd.sock whenever that socket exists). Readiness is
//! polled; each daemon runs in its own process group, stopped by its guard
//! (SIGTERM, then SIGKILL to the group after 30 s), and the [`Sandbox`] kills
//! whatever is left tied to the directory (shims, containers) and unmounts.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{mountinfo, podman, Metrics};

/// Debian's docker.io and containerd binaries (a docker client elsewhere in
/// PATH, e.g. /usr/local/bin, may be another version).
const DOCKERD: &str = "/usr/sbin/dockerd";
const DOCKER: &str = "/usr/bin/docker";
const CONTAINERD: &str = "/usr/bin/containerd";
const CTR: &str = "/usr/bin/ctr";

/// A test's temporary directory, holding everything its daemons create. On drop,
/// after the daemons' own guards: every process still tied to the directory is
/// killed (shims and their containers, which containerd starts in process groups
/// of their own and leaves running when it stops, BuildKit steps, clients), then
/// every mount under it is detached, then it is removed.
struct Sandbox(tempfile::TempDir);

impl Sandbox {
    /// Short, in /tmp: daemon sockets live in it, and a unix socket path must fit in 108 bytes.
    fn new(prefix: &str) -> Sandbox {
        Sandbox(tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp").expect("tempdir"))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let dir = self.path();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = processes_of(dir);
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in left {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Deepest first: the daemons bind-mount their roots and mount overlays
        // inside. Again until none is left: a dying shim may still be mounting.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Lossy: another test's mountpoint may not be UTF-8, and must not hide ours.
            let mut left: Vec<String> = mountinfo("/proc/self/mountinfo")
                .lines()
                .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
                .filter(|mp| Path::new(mp).starts_with(dir))
                .collect();
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            left.sort_by_key(|mp| std::cmp::Reverse(mp.len()));
            for mp in left {
                let _ = Command::new("umount").arg("-l").arg(&mp).status();
            }
        }
    }
}

/// The live processes tied to `dir`: a command line naming a path under it (the
/// daemons, shims started with `-address <dir>/...`, clients), a working directory
/// under it (a shim runs in its bundle), or, in another mount namespace, a root
/// filesystem whose mount options name it (a container's processes). Zombies
/// show none of these.
fn processes_of(dir: &Path) -> Vec<rustix::process::Pid> {
    let prefix = format!("{}/", dir.display());
    let own_ns = std::fs::read_link("/proc/self/ns/mnt").ok();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid as u32 != std::process::id())
        .filter(|&pid| {
            let proc = PathBuf::from(format!("/proc/{pid}"));
            let cmdline = std::fs::read(proc.join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&prefix) {
                return true;
            }
            if std::fs::read_link(proc.join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir)) {
                return true;
            }
            let ns = std::fs::read_link(proc.join("ns/mnt")).ok();
            ns.is_some() && ns != own_ns && {
                let mi = mountinfo(proc.join("mountinfo"));
                mi.lines().any(|l| l.split(' ').nth(4) == Some("/") && l.contains(&prefix))
            }
        })
        .filter_map(rustix::process::Pid::from_raw)
        .collect()
}

/// A busybox-static tree with `sh` and `sleep`, tarred (the image's only layer).
fn busybox_layer(dir: &Path) -> PathBuf {
    let tar = dir.join("layer.tar");
    common::busybox_layer_tar(&dir.join("tree"), &tar);
    tar
}

/// A daemon started by a test, in a process group of its own: SIGTERM on drop,
/// and SIGKILL to the whole group if it has not exited after 30 s. What escapes
/// the group (shims, containers) and mounts are the [`Sandbox`]'s to clean up.
struct Daemon {
    child: Child,
    name: &'static str,
    dir: PathBuf,
}

impl Daemon {
    fn spawn(name: &'static str, dir: &Path, cmd: &mut Command) -> Daemon {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("daemon log");
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?} ({e}): run the README's test command"));
        Daemon { child, name, dir: dir.to_owned() }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.name))).unwrap_or_default()
    }

    /// Polls `ready` until it succeeds; panics with the daemon's log otherwise.
    fn wait_ready(&mut self, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited with {status}:\n{}", self.name, self.log());
            }
            assert!(Instant::now() < deadline, "{} not ready after 60 s:\n{}", self.name, self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) else { return };
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // The group's id is the daemon's pid (process_group(0)); its members may
        // outlive the leader.
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        let _ = self.child.wait();
    }
}

/// A containerd of the test's own for a dockerd, where dockerd would put its
/// managed one (root `<data_root>/containerd/daemon`, state
/// `<exec_root>/containerd/daemon`), passed to dockerd with `--containerd`.
/// Without that flag dockerd uses /run/containerd/containerd.sock whenever that
/// socket exists (a system containerd.service), and the test would write into the
/// host's containerd. `path` finds the containerd shim.
/// Debian's containerd with its config, root and state under `d`, serving `sock`
/// (the ctr tests' own daemon; `containerd_for_dockerd` places one for dockerd).
fn spawn_containerd(d: &Path, sock: &Path) -> Daemon {
    Daemon::spawn(
        "containerd",
        d,
        Command::new(CONTAINERD)
            .arg("--config")
            .arg(d.join("config.toml"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--state")
            .arg(d.join("state"))
            .arg("--address")
            .arg(sock),
    )
}

fn containerd_for_dockerd(
    dir: &Path,
    containerd: &Path,
    ctr: &Path,
    path: &str,
    data_root: &Path,
    exec_root: &Path,
) -> (Daemon, PathBuf) {
    let state = exec_root.join("containerd");
    std::fs::create_dir_all(&state).expect("mkdir");
    let config = dir.join("containerd.toml");
    std::fs::write(&config, "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n")
        .expect("containerd.toml");
    let sock = state.join("containerd.sock");
    let mut daemon = Daemon::spawn(
        "containerd",
        dir,
        Command::new(containerd)
            .env("PATH", path)
            .arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(data_root.join("containerd/daemon"))
            .arg("--state")
            .arg(state.join("daemon"))
            .arg("--address")
            .arg(&sock),
    );
    daemon.wait_ready(|| {
        Command::new(ctr)
            .arg("--address")
            .arg(&sock)
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    (daemon, sock)
}

/// Whether dockerd runs its containers on `sock`'s containerd (its namespace `moby` exists there).
fn assert_uses_containerd(ctr: &Path, sock: &Path) {
    let ns = common::run(Command::new(ctr).arg("--address").arg(sock).args(["namespaces", "ls", "-q"]));
    assert!(
        ns.lines().any(|l| l == "moby"),
        "dockerd did not use the test's containerd at {}: {ns}",
        sock.display()
    );
}

/// `overlay-agent once` watching only mounts under `dir`.
fn agent_once(dir: &Path) -> Metrics {
    let cfg = common::config_for(dir, "");
    let out = common::run(Command::new(common::BIN).arg("--config").arg(&cfg).arg("once"));
    common::promtool_check(&out);
    Metrics::parse(&out)
}

/// The mount_info series labelled with `container_id`, and its mountpoint.
fn mount_of(m: &Metrics, container_id: &str) -> (String, String) {
    let info = m
        .samples
        .keys()
        .find(|k| {
            k.starts_with("overlayfs_mount_info{") && k.contains(&format!("container_id=\"{container_id}\""))
        })
        .unwrap_or_else(|| panic!("no mount labelled with container {container_id}:\n{}", m.text))
        .clone();
    let mp = info.split("mountpoint=\"").nth(1).and_then(|s| s.split('"').next()).expect("mountpoint");
    (info.clone(), mp.to_owned())
}

fn entries(m: &Metrics, mp: &str, kind: &str) -> f64 {
    m.get("overlayfs_upper_entries", &[("mountpoint", mp), ("kind", kind)]).unwrap_or(0.0)
}

/// Docker 20.10, overlay2: two containers, each labelled with its id and name;
/// the one that ran `chown -R` on /bin shows its three entries copied up.
/// Writes `d/daemon.json`: no networking, the nofile/nproc limits this machine
/// allows, and `storage` (the storage driver or the containerd image store).
fn write_daemon_json(d: &Path, storage: &str) {
    let json = format!(
        r#"{{"iptables": false, "ip6tables": false, "bridge": "none", {storage},
 "default-ulimits": {{"nofile": {{"Name": "nofile", "Hard": 20000, "Soft": 20000}},
                     "nproc": {{"Name": "nproc", "Hard": 1024, "Soft": 1024}}}}}}"#
    );
    std::fs::write(d.join("daemon.json"), json).expect("daemon.json");
}

/// Starts `dockerd` (the binary and environment in `cmd`) with everything under
/// `d` and the given containerd; returns it and its `-H` address.
fn start_dockerd(d: &Path, mut cmd: Command, containerd_sock: &Path) -> (Daemon, String) {
    let sock = format!("unix://{}/docker.sock", d.display());
    let dockerd = Daemon::spawn(
        "dockerd",
        d,
        cmd.arg("--containerd")
            .arg(containerd_sock)
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--data-root")
            .arg(d.join("root"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .args(["-H", &sock]),
    );
    (dockerd, sock)
}

/// `docker run -d` of a container that sleeps until the test removes it; its id.
fn run_sleeping(mut docker: Command, name: &str, image: &str) -> String {
    let id = common::run(docker.args([
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        name,
        image,
        "/bin/sleep",
        "600",
    ]));
    id.trim().to_owned()
}

#[test]
fn docker_overlay2_containers_are_identified() {
    common::require_root();
    let sandbox = Sandbox::new("oa-dk");
    let d = sandbox.path();
    write_daemon_json(d, r#""storage-driver": "overlay2""#);
    let path = std::env::var("PATH").unwrap_or_default();
    let (_containerd, containerd_sock) = containerd_for_dockerd(
        d,
        Path::new(CONTAINERD),
        Path::new(CTR),
        &path,
        &d.join("root"),
        &d.join("exec"),
    );
    let (mut dockerd, sock) = start_dockerd(d, Command::new(DOCKERD), &containerd_sock);
    let docker = || {
        let mut c = Command::new(DOCKER);
        c.args(["-H", &sock]);
        c
    };
    dockerd.wait_ready(|| docker().arg("version").output().map(|o| o.status.success()).unwrap_or(false));

    let layer = busybox_layer(d);
    let image = "oa-busybox:test";
    common::run(docker().arg("import").arg(&layer).arg(image));
    let names = ["oa-web", "oa-db"];
    let _containers = Containers(names.iter().map(|n| with_args(docker(), &["rm", "-f", n])).collect());
    let mut ids = Vec::new();
    for name in names {
        ids.push(run_sleeping(docker(), name, image));
    }
    assert_uses_containerd(Path::new(CTR), &containerd_sock);
    common::run(docker().args(["exec", names[0], "/bin/busybox", "chown", "-R", "1:1", "/bin"]));
    for name in names {
        common::run(docker().args(["exec", name, "/bin/sh", "-c", "echo hello > /new-file"]));
    }

    let m = agent_once(d);
    for (i, (name, id)) in names.iter().zip(&ids).enumerate() {
        let (info, mp) = mount_of(&m, id);
        assert!(info.contains("runtime=\"docker\""), "{info}");
        assert!(info.contains(&format!("container_name=\"{name}\"")), "{info}");
        // The image as given to docker run (config.v2.json Config.Image).
        assert!(info.contains(&format!("image=\"{image}\"")), "{info}");
        assert!(
            mp.starts_with(&format!("{}/root/overlay2/", d.display())) && mp.ends_with("/merged"),
            "{mp}"
        );
        assert_eq!(
            entries(&m, &mp, "copied_up"),
            if i == 0 { 3.0 } else { 0.0 },
            "{name}: busybox, sh, sleep"
        );
        assert!(entries(&m, &mp, "created") >= 1.0, "{name}: /new-file");
    }
}

/// Docker-in-Docker's shape: dockerd and its containerd run in a private mount
/// namespace whose data root is a tmpfs only that namespace sees. The agent finds
/// the containers' overlays there, names them from dockerd's state under that
/// namespace's root, measures their upper dirs in place, and says who holds the
/// namespace.
#[test]
fn a_dockerd_in_a_private_mount_namespace_is_seen_identified_and_measured() {
    common::require_root();
    let sandbox = Sandbox::new("oa-dind");
    let d = sandbox.path();
    write_daemon_json(d, r#""storage-driver": "overlay2""#);
    let root = d.join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    // The namespace, held by a shell whose command line names the sandbox (so the
    // sandbox's cleanup finds it): a tmpfs on the data root, seen only there.
    let script = format!("mount -t tmpfs oa-dind {} && while :; do sleep 3600; done", root.display());
    let mut holder = Daemon::spawn(
        "holder",
        d,
        Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &script]),
    );
    let holder_mounts = format!("/proc/{}/mountinfo", holder.child.id());
    holder.wait_ready(|| mountinfo(&holder_mounts).contains(" oa-dind "));
    let ns = std::fs::read_link(format!("/proc/{}/ns/mnt", holder.child.id())).expect("ns");
    let mntns = ns.to_string_lossy().trim_start_matches("mnt:[").trim_end_matches(']').to_owned();
    let in_ns = |bin: &str, name: &str| {
        let wrapper = d.join(name);
        let text = format!("#!/bin/sh\nexec nsenter -t {} -m -- {bin} \"$@\"\n", holder.child.id());
        std::fs::write(&wrapper, text).expect("wrapper");
        std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        wrapper
    };
    let path = std::env::var("PATH").unwrap_or_default();
    let exec = d.join("exec");
    let containerd = in_ns(CONTAINERD, "containerd-in-ns");
    let (_containerd, containerd_sock) =
        containerd_for_dockerd(d, &containerd, Path::new(CTR), &path, &root, &exec);
    let (mut dockerd, sock) =
        start_dockerd(d, Command::new(in_ns(DOCKERD, "dockerd-in-ns")), &containerd_sock);
    let docker = || {
        let mut c = Command::new(DOCKER);
        c.args(["-H", &sock]);
        c
    };
    dockerd.wait_ready(|| docker().arg("version").output().map(|o| o.status.success()).unwrap_or(false));
    common::run(docker().arg("import").arg(busybox_layer(d)).arg("oa-busybox:dind"));
    let _containers = Containers(vec![with_args(docker(), &["rm", "-f", "oa-inner"])]);
    let id = run_sleeping(docker(), "oa-inner", "oa-busybox:dind");
    common::run(docker().args(["exec", "oa-inner", "/bin/busybox", "chown", "-R", "1:1", "/bin"]));
    assert!(
        !mountinfo("/proc/self/mountinfo").contains(&id),
        "the container's mount is private to dockerd's namespace"
    );

    let m = agent_once(d);
    let (info, mp) = mount_of(&m, &id);
    eprintln!("the inner container of a dockerd in a private namespace: {info}");
    for want in
        ["runtime=\"docker\"", "container_name=\"oa-inner\"", "mntns_process=\"sh\"", "mntns_uid=\"0\""]
    {
        assert!(info.contains(want), "{want}: {info}");
    }
    assert!(info.contains(&format!("mntns=\"{mntns}\"")), "{mntns}: {info}");
    assert!(mp.starts_with(&format!("{}/overlay2/", root.display())) && mp.ends_with("/merged"), "{mp}");
    let copied =
        m.get("overlayfs_upper_entries", &[("mountpoint", &mp), ("mntns", &mntns), ("kind", "copied_up")]);
    assert_eq!(copied, Some(3.0), "busybox, sh, sleep, copied up in the tmpfs upper dir");
}

fn with_args(mut c: Command, args: &[&str]) -> Command {
    c.args(args);
    c
}

/// Docker 28.5 (Debian forky's, unpacked into .cache by tests/fetch-docker28.sh)
/// with the containerd image store, Docker 29's default: a container under
/// `<root>/rootfs/overlayfs/<id>` is labelled with its id and name, and a
/// BuildKit RUN step, caught while it runs, with the step's executor id.
#[test]
fn docker_containerd_image_store_and_buildkit_are_identified() {
    common::require_root();
    let cache = common::repo_root().join(".cache");
    let out = Command::new(common::repo_root().join("tests/fetch-docker28.sh"))
        .arg(&cache)
        .output()
        .expect("fetch");
    assert!(out.status.success(), "fetching Docker 28 failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let bin = cache.join("docker28");
    // containerd finds its shim in PATH; the CLI finds buildx in DOCKER_CONFIG.
    let path = format!(
        "{}:{}:{}",
        bin.join("usr/bin").display(),
        bin.join("usr/sbin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let sandbox = Sandbox::new("oa-d28");
    let d = sandbox.path();
    std::fs::create_dir_all(d.join("cli/cli-plugins")).expect("mkdir");
    std::os::unix::fs::symlink(
        bin.join("usr/libexec/docker/cli-plugins/docker-buildx"),
        d.join("cli/cli-plugins/docker-buildx"),
    )
    .expect("buildx plugin");
    write_daemon_json(d, r#""features": {"containerd-snapshotter": true}"#);
    let ctr = bin.join("usr/bin/ctr");
    let (_containerd, containerd_sock) = containerd_for_dockerd(
        d,
        &bin.join("usr/bin/containerd"),
        &ctr,
        &path,
        &d.join("root"),
        &d.join("exec"),
    );
    let mut dockerd_cmd = Command::new(bin.join("usr/sbin/dockerd"));
    dockerd_cmd.env("PATH", &path);
    let (mut dockerd, sock) = start_dockerd(d, dockerd_cmd, &containerd_sock);
    let docker = || {
        let mut c = Command::new(bin.join("usr/bin/docker"));
        c.env("PATH", &path).env("DOCKER_CONFIG", d.join("cli")).args(["-H", &sock]);
        c
    };
    dockerd.wait_ready(|| docker().arg("version").output().map(|o| o.status.success()).unwrap_or(false));
    let info = common::run(docker().args(["info", "--format", "{{.Driver}} {{.DriverStatus}}"]));
    assert!(info.contains("io.containerd.snapshotter"), "not the containerd image store: {info}");

    let image = "oa-busybox:test";
    common::run(docker().arg("import").arg(busybox_layer(d)).arg(image));
    let name = "oa-api";
    let _containers = Containers(vec![with_args(docker(), &["rm", "-f", name])]);
    let id = run_sleeping(docker(), name, image);
    let id = id.as_str();
    assert_uses_containerd(&ctr, &containerd_sock);
    common::run(docker().args(["exec", name, "/bin/busybox", "chown", "-R", "1:1", "/bin"]));

    // A RUN step that lasts until the test is done with it.
    std::fs::write(d.join("Dockerfile"), format!("FROM {image}\nRUN /bin/sleep 120\n")).expect("Dockerfile");
    let log = std::fs::File::create(d.join("build.log")).expect("build log");
    let build = docker()
        .args(["build", "--network", "none", "-t", "oa-built:test"])
        .arg(d)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("docker build");
    let _build = Killed(build);
    let executor = format!("{}/root/buildkit/executor/", d.display());
    let step = common::wait_for("the RUN step's executor mount", Duration::from_secs(60), || {
        let mi = mountinfo("/proc/self/mountinfo");
        mi.lines().find_map(|l| {
            let mp = l.split(' ').nth(4)?;
            mp.strip_prefix(&executor)?.strip_suffix("/rootfs").map(str::to_owned)
        })
    });

    let m = agent_once(d);
    let (info, mp) = mount_of(&m, id);
    assert!(info.contains("runtime=\"docker\""), "{info}");
    assert!(info.contains(&format!("container_name=\"{name}\"")), "{info}");
    assert!(info.contains("/containerd/daemon/io.containerd.snapshotter.v1.overlayfs/snapshots/"), "{info}");
    assert_eq!(mp, format!("{}/root/rootfs/overlayfs/{id}", d.display()));
    assert_eq!(entries(&m, &mp, "copied_up"), 3.0, "busybox, sh, sleep chowned");
    let (info, _) = mount_of(&m, &step);
    assert!(info.contains("runtime=\"buildkit\""), "{info}");
}

/// A child killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Commands run on drop (container removal before the daemon stops).
struct Containers(Vec<Command>);

impl Drop for Containers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }
}

/// A docker-archive image (what `docker save` writes) holding one layer, for
/// `ctr images import`: manifest.json, the image config, the layer.
fn docker_archive(dir: &Path, layer: &Path, tag: &str) -> PathBuf {
    let arch = dir.join("archive");
    std::fs::create_dir_all(&arch).expect("mkdir");
    std::fs::copy(layer, arch.join("layer.tar")).expect("copy layer");
    let sum = common::run(Command::new("sha256sum").arg(arch.join("layer.tar")));
    let digest = sum.split_whitespace().next().expect("sha256sum output");
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{digest}")]},
    });
    std::fs::write(arch.join("config.json"), config.to_string()).expect("config");
    let manifest = serde_json::json!([{"Config": "config.json", "RepoTags": [tag], "Layers": ["layer.tar"]}]);
    std::fs::write(arch.join("manifest.json"), manifest.to_string()).expect("manifest");
    let tar = dir.join("image.tar");
    common::run(Command::new("tar").arg("-C").arg(&arch).arg("-cf").arg(&tar).args([
        "manifest.json",
        "config.json",
        "layer.tar",
    ]));
    tar
}

/// containerd 1.6 through ctr: a task in its own namespace is labelled with the
/// namespace and the container id, and its chown -R shows as copy-ups.
#[test]
fn containerd_task_is_identified_with_its_namespace() {
    common::require_root();
    let sandbox = Sandbox::new("oa-cd");
    let d = sandbox.path();
    std::fs::write(
        d.join("config.toml"),
        "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
    )
    .expect("config.toml");
    let sock = d.join("containerd.sock");
    let mut containerd = spawn_containerd(d, &sock);
    let ns = format!("oa-test-{}", std::process::id());
    let ctr = || {
        let mut c = Command::new(CTR);
        c.arg("--address").arg(&sock).args(["--namespace", &ns]);
        c
    };
    containerd.wait_ready(|| ctr().arg("version").output().map(|o| o.status.success()).unwrap_or(false));

    let image = "docker.io/library/oa-busybox:test";
    let archive = docker_archive(d, &busybox_layer(d), "oa-busybox:test");
    common::run(ctr().args(["images", "import"]).arg(&archive));
    let id = "oa-task";
    common::run(ctr().args(["run", "-d", image, id, "/bin/sleep", "600"]));
    // The task's shim outlives containerd: kill and remove the task first (the
    // sandbox kills what a failed kill leaves).
    let _task = Containers(vec![
        with_args(ctr(), &["task", "kill", "--signal", "SIGKILL", id]),
        with_args(ctr(), &["task", "rm", "--force", id]),
        with_args(ctr(), &["containers", "rm", id]),
        // runc's state dir for the namespace, outside containerd's --state.
        with_args(Command::new("rmdir"), &[&format!("/run/containerd/runc/{ns}")]),
    ]);
    common::run(ctr().args([
        "task",
        "exec",
        "--exec-id",
        "chown",
        id,
        "/bin/busybox",
        "chown",
        "-R",
        "1:1",
        "/bin",
    ]));

    let m = agent_once(d);
    let (info, mp) = mount_of(&m, id);
    assert!(info.contains("runtime=\"containerd\""), "{info}");
    assert!(info.contains(&format!("containerd_namespace=\"{ns}\"")), "{info}");
    assert_eq!(mp, format!("{}/state/io.containerd.runtime.v2.task/{ns}/{id}/rootfs", d.display()));
    assert_eq!(entries(&m, &mp, "copied_up"), 3.0, "busybox, sh, sleep chowned");
}

/// Two real podman containers: each mount is labelled runtime="podman" with its
/// container id and name, and its upper dir shows what the container copied up.
#[test]
fn podman_containers_are_identified() {
    common::require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let podman = podman(tmp.path());
    let layer = busybox_layer(tmp.path());
    let pid = std::process::id();
    let image = format!("localhost/overlay-agent-bb:{pid}");
    common::run(podman().arg("import").arg("-q").arg(&layer).arg(&image));
    let names = [format!("oa-web-{pid}"), format!("oa-db-{pid}")];
    let mut cleanup: Vec<Command> =
        names.iter().map(|n| with_args(podman(), &["rm", "-f", "-t", "0", n])).collect();
    cleanup.push(with_args(podman(), &["rmi", "-f", &image]));
    let _cleanup = Containers(cleanup);
    let mut ids = Vec::new();
    for name in &names {
        let id = common::run(podman().args(["run", "-d", "--name", name, &image, "/bin/sleep", "600"]));
        ids.push(id.trim().to_owned());
    }
    common::run(podman().args(["exec", &names[0], "/bin/busybox", "chown", "-R", "1:1", "/bin"]));
    for name in &names {
        common::run(podman().args(["exec", name, "/bin/sh", "-c", "echo hello > /new-file"]));
    }
    // podman's storage is the host's: no include filter, every mount is read.
    let out = common::run(Command::new(common::BIN).args(["once"]));
    common::promtool_check(&out);
    let m = Metrics::parse(&out);
    for (i, (name, id)) in names.iter().zip(&ids).enumerate() {
        let (info, mp) = mount_of(&m, id);
        assert!(info.contains("runtime=\"podman\""), "{info}");
        assert!(info.contains(&format!("container_name=\"{name}\"")), "{info}");
        // The image as containers-storage records it (metadata image-name).
        assert!(info.contains(&format!("image=\"{image}\"")), "{info}");
        assert_eq!(
            entries(&m, &mp, "copied_up"),
            if i == 0 { 3.0 } else { 0.0 },
            "{name}: busybox, sh, sleep"
        );
        assert!(entries(&m, &mp, "created") >= 1.0);
    }
}

/// What a daemon leaves when it stops without cleaning up (a `ctr task kill`
/// that failed, a dockerd killed after its deadline): containerd stopped with a
/// task running leaves the task's shim (in a process group of its own) and the
/// container's processes, and the rootfs mounted. The sandbox kills them all and
/// detaches the mount.
#[test]
fn sandbox_kills_shims_and_containers_a_stopped_daemon_leaves() {
    common::require_root();
    let sandbox = Sandbox::new("oa-sb");
    let d = sandbox.path().to_owned();
    std::fs::write(
        d.join("config.toml"),
        "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
    )
    .expect("config.toml");
    let sock = d.join("containerd.sock");
    // runc keeps its state in /run/containerd/runc/<namespace>, whatever containerd's --state.
    let ns = format!("oa-left-{}", std::process::id());
    let runc_state = Path::new("/run/containerd/runc").join(&ns);
    let mut containerd = spawn_containerd(&d, &sock);
    let ctr = || {
        let mut c = Command::new(CTR);
        c.arg("--address").arg(&sock).args(["--namespace", &ns]);
        c
    };
    containerd.wait_ready(|| ctr().arg("version").output().is_ok_and(|o| o.status.success()));
    let archive = docker_archive(&d, &busybox_layer(&d), "oa-busybox:test");
    common::run(ctr().args(["images", "import"]).arg(&archive));
    common::run(ctr().args([
        "run",
        "-d",
        "docker.io/library/oa-busybox:test",
        "oa-left",
        "/bin/sleep",
        "600",
    ]));
    let rootfs = d.join(format!("state/io.containerd.runtime.v2.task/{ns}/oa-left/rootfs"));
    let init: i32 = std::fs::read_to_string(rootfs.with_file_name("init.pid"))
        .expect("init.pid")
        .trim()
        .parse()
        .expect("pid");
    drop(containerd);
    let left: Vec<i32> = processes_of(&d).into_iter().map(|p| p.as_raw_nonzero().get()).collect();
    assert!(left.contains(&init), "the container outlives containerd: {left:?}, init {init}");
    assert!(left.len() >= 2, "and so does its shim: {left:?}");
    let mounted = || mountinfo("/proc/self/mountinfo").contains(&format!(" {} ", rootfs.display()));
    assert!(mounted(), "the task's rootfs stays mounted");
    drop(sandbox);
    let _ = std::fs::remove_dir_all(&runc_state);
    let alive = |pid: &i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z"))
    };
    assert_eq!(left.iter().filter(|p| alive(p)).collect::<Vec<_>>(), Vec::<&i32>::new(), "killed");
    assert!(!mounted(), "rootfs detached");
    assert!(!d.exists(), "directory removed");
}
