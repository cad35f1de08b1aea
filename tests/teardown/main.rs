//! Never in the way: a user's unmount, delete or teardown must not fail, nor leave
//! a filesystem behind, because the agent was scanning it. Real tmpfs and bind
//! mounts of tens of thousands of files, real overlays over them, the real agent
//! scanning every second (and its container image under podman, with the host's
//! root mounted `rslave`). Each test asserts zero failures, and that its cycles
//! did catch scans in flight (else they would test nothing).

#[path = "../common/mod.rs"]
mod common;
mod fixture;
mod holders;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    config_for, free_port, http_get, podman, repo_root, require_root, run, wait_for, Agent, Metrics,
};
use fixture::{
    command_in, dev_of, mount_overlay_in, populate, run_status, umount, walked_tmpfs, Mounted, Stage, CYCLES,
    FS_CYCLES,
};
use holders::{diag, holds, lets_go};

/// The agent's own figures: scans cancelled, and opens on the user's mount.
fn assert_detached(m: &Metrics) {
    let plain: f64 =
        m.matching("overlayfs_scan_upper_opens_total", &[("via", "plain")]).map(|s| s.value).sum();
    assert_eq!(plain, 0.0, "every upper dir opened beneath a detached clone");
    let cancelled = m.get("overlayfs_scan_cancelled_total", &[]).unwrap_or(0.0);
    assert!(cancelled >= 1.0, "scans of mounts that went were cancelled: {cancelled}");
}

/// The cycle: the upper dir on its own filesystem (a bind mount of a
/// 33,000-entry tree), an overlay over it, used for a random time while the agent
/// scans every second, unmounted, then the upper's filesystem at once. 100 cycles,
/// no "target is busy".
#[test]
fn unmounts_during_scans_never_find_the_upper_filesystem_busy() {
    require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let stage = Stage::new(tmp.path());
    let cfg = config_for(tmp.path(), "");
    let agent = Agent::start(tmp.path(), &["--config", &cfg.display().to_string()]);
    let pid = agent.child.id();
    let out = stage.cycles(pid, CYCLES, || None);
    out.assert_clean(CYCLES, || agent.log());
    assert!(lets_go(pid, stage.dev, Duration::from_secs(5)), "the agent still holds the filesystem");
    assert_detached(&agent.metrics());
}

/// The same cycles in another mount namespace (a CI worker's or dind's, in its
/// container): the mounts and unmounts happen there (`nsenter`), the host never
/// sees them, and the agent reaches the upper dir through the namespace. Its
/// clone is made there, so no unmount in it finds the filesystem busy.
#[test]
fn unmounts_in_another_mount_namespace_never_find_the_upper_filesystem_busy() {
    require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut stage = Stage::new(tmp.path());
    let ns = PrivateNs::start();
    stage.ns = Some(ns.pid());
    let cfg = config_for(tmp.path(), "");
    let agent = Agent::start(tmp.path(), &["--config", &cfg.display().to_string()]);
    let pid = agent.child.id();
    let out = stage.cycles(pid, CYCLES, || None);
    out.assert_clean(CYCLES, || agent.log());
    assert!(lets_go(pid, stage.dev, Duration::from_secs(5)), "the agent still holds the filesystem");
    let m = agent.metrics();
    assert_detached(&m);
    // Every cycle's overlay was the namespace's: the host never had one on the tree.
    assert!(m.get("overlayfs_discovery_namespaces", &[]).unwrap_or(0.0) >= 2.0, "{}", agent.log());
}

/// A namespace that ends in the middle of a walk of its upper dir (its only
/// process killed, the namespace and its mounts with it): the walk stops,
/// counted as cancelled and not as an error, the namespace's series go, nothing
/// louder than debug is logged, and the agent lets go of the filesystem. A tight
/// scan budget stretches the walk.
#[test]
fn a_namespace_that_ends_during_a_walk_ends_the_walk_cleanly() {
    require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config_for(tmp.path(), "  max_cpu: 0.01\n");
    let agent = Agent::start(tmp.path(), &["--config", &cfg.display().to_string()]);
    let ns = PrivateNs::start();
    let base = tmp.path().join("ns");
    std::fs::create_dir_all(&base).expect("mkdir");
    let in_ns = |p: &std::path::Path| {
        PathBuf::from(format!("/proc/{}/root", ns.pid())).join(p.strip_prefix("/").expect("absolute"))
    };
    run(command_in(Some(ns.pid()), "mount")
        .args(["-t", "tmpfs", "-o", "nr_inodes=400k", "tmpfs"])
        .arg(&base));
    let entries = populate(&in_ns(&base.join("upper")), 20, 30, 20);
    std::fs::create_dir_all(in_ns(&base.join("work"))).expect("mkdir work");
    std::fs::create_dir_all(in_ns(&base.join("lower"))).expect("mkdir lower");
    std::fs::create_dir_all(in_ns(&base.join("merged"))).expect("mkdir merged");
    let dev = dev_of(&in_ns(&base));
    let mntns = std::fs::read_link(format!("/proc/{}/ns/mnt", ns.pid())).expect("ns");
    let mntns = mntns.to_string_lossy().trim_start_matches("mnt:[").trim_end_matches(']').to_owned();
    let at = |d: &str| base.join(d);
    mount_overlay_in(Some(ns.pid()), &at("lower"), &at("upper"), &at("work"), &at("merged"));
    let pid = agent.child.id();
    wait_for("a walk of the namespace's upper dir", Duration::from_secs(30), || {
        holds(pid, dev).then_some(())
    });
    let (skip, _) = log_lines(&agent, 0);
    drop(ns);
    wait_for("the namespace's series to go", Duration::from_secs(20), || {
        let m = agent.metrics();
        (m.all().filter(|s| s.label("mntns") == Some(mntns.as_str())).count() == 0).then_some(())
    });
    assert!(lets_go(pid, dev, Duration::from_secs(5)), "the agent still holds the filesystem");
    // The walk counts itself cancelled as it returns: after its next check of the
    // stop signal, which a throttled walk makes when its pause ends.
    let m = wait_for(
        &format!("the walk of {entries} entries to be counted cancelled"),
        Duration::from_secs(10),
        || {
            let m = agent.metrics();
            (m.get("overlayfs_scan_cancelled_total", &[]).unwrap_or(0.0) >= 1.0).then_some(m)
        },
    );
    assert!(m.all().all(|s| s.label("mntns") != Some(mntns.as_str())), "the namespace's series came back");
    let errors: f64 = m.matching("overlayfs_upper_scan_errors_total", &[]).map(|s| s.value).sum();
    assert_eq!(errors, 0.0, "no error counted");
    let (_, loud) = log_lines(&agent, skip);
    assert!(loud.is_empty(), "nothing above debug: {loud:?}");
    assert_eq!(http_get(&agent.addr, "/readyz").expect("readyz").status, 200);
}

/// A root process in a mount namespace of its own (private propagation): killed
/// on drop, which ends the namespace.
struct PrivateNs(std::process::Child);

impl PrivateNs {
    fn start() -> PrivateNs {
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sleep", "1000000"])
            .spawn()
            .expect("unshare");
        let ns = PrivateNs(child);
        let mine = std::fs::read_link("/proc/self/ns/mnt").expect("own ns");
        wait_for("the namespace", Duration::from_secs(10), || {
            let theirs = std::fs::read_link(format!("/proc/{}/ns/mnt", ns.pid())).ok()?;
            (theirs != mine).then_some(())
        });
        ns
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for PrivateNs {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The agent's log lines after the first `skip`, and those of them at WARN or ERROR.
fn log_lines(agent: &Agent, skip: usize) -> (usize, Vec<String>) {
    let log = agent.log();
    let lines: Vec<&str> = log.lines().skip(skip).collect();
    let loud = lines
        .iter()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(|l| l.to_string())
        .collect();
    (lines.len(), loud)
}

/// `rm -rf` of an upper dir and its work dir while the agent walks it, the overlay
/// still mounted, then the teardown at once: unmount the overlay, and the upper
/// dir's filesystem. The first cycle removes half of the upper dir before and
/// waits for a walk of the rest: the walks counted what went away as `vanished`,
/// each entry once at most, and nothing else. No unmount fails, and there is no log flood (the agent's log
/// lines are counted). A tight scan budget (`scan.max_cpu`) stretches the walks,
/// as on a busy node.
#[test]
fn rm_rf_of_an_upper_dir_during_a_walk() {
    require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let cfg = config_for(base, "  max_cpu: 0.01\n");
    let agent = Agent::start(base, &["--config", &cfg.display().to_string()]);
    let (pid, mp) = (agent.child.id(), base.join("merged").display().to_string());
    let before = agent.log().lines().count();
    let mut failures = Vec::new();
    for cycle in 0..RM_CYCLES {
        let (t, dev, sizes) = walked_tmpfs(base, pid, &[("a", 10), ("b", 10)]);
        if cycle == 0 {
            run(Command::new("rm").arg("-rf").arg(t.0.join("upper/a")));
            failures.extend(vanished_once(&agent, &mp, sizes[0]));
            wait_for("the next walk", Duration::from_secs(60), || holds(pid, dev).then_some(()));
        }
        let teardown = run_status(Command::new("rm").arg("-rf").arg(t.0.join("upper")).arg(t.0.join("work")))
            .and_then(|()| umount(&base.join("merged"), false))
            .and_then(|()| umount(&t.0, false));
        if let Err(e) = teardown {
            failures.push(format!("cycle {cycle}: {e}; {}", diag(pid, dev)));
        }
    }
    let (lines, loud) = log_lines(&agent, before);
    eprintln!("{lines} log lines over {RM_CYCLES} cycles");
    assert!(failures.is_empty(), "{}\n{}", failures.join("\n"), agent.log());
    assert!(loud.is_empty(), "warnings or errors logged: {loud:?}");
    assert!(lines <= 3 * RM_CYCLES, "{lines} log lines over {RM_CYCLES} cycles:\n{}", agent.log());
}

/// Cycles of the `rm -rf` test.
const RM_CYCLES: usize = 8;

/// Waits for a walk that began after `removed` entries went (the 6,000 files of
/// `b` alone): the errors of `mp` must be `vanished` ones, at most one per entry.
fn vanished_once(agent: &Agent, mp: &str, removed: u64) -> Vec<String> {
    let m = wait_for("a walk of what is left", Duration::from_secs(60), || {
        let m = agent.metrics();
        let created = m.get("overlayfs_upper_entries", &[("mountpoint", mp), ("kind", "created")]);
        (created == Some(6000.0)).then_some(m)
    });
    let errors: Vec<(String, f64)> = m
        .matching("overlayfs_upper_scan_errors_total", &[("mountpoint", mp)])
        .map(|s| (s.label("reason").unwrap_or_default().to_owned(), s.value))
        .collect();
    eprintln!("errors after removing {removed} entries during a walk: {errors:?}");
    errors
        .iter()
        .filter(|(reason, n)| reason != "vanished" || *n > removed as f64)
        .map(|(reason, n)| format!("{n} errors with reason {reason} ({removed} entries removed)"))
        .collect()
}

/// The upper dir's filesystem lazily unmounted (`umount -l`) while the agent walks
/// it, then the overlay: the filesystem lives on while anything holds it, so the
/// agent must let go of it as soon as the overlay is gone (2 s at most here; the
/// figure is in docs/reliability.md).
#[test]
fn a_lazily_unmounted_upper_filesystem_is_let_go() {
    require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let cfg = config_for(base, "  max_cpu: 0.02\n");
    let agent = Agent::start(base, &["--config", &cfg.display().to_string()]);
    let pid = agent.child.id();
    let mut failures = Vec::new();
    for cycle in 0..FS_CYCLES {
        let (t, dev, _) = walked_tmpfs(base, pid, &[("a", 30)]);
        if let Err(e) = umount(&t.0, true) {
            failures.push(format!("cycle {cycle}: umount -l: {e}"));
        }
        if let Err(e) = umount(&base.join("merged"), false) {
            failures.push(format!("cycle {cycle}: umount of the overlay: {e}"));
        }
        let gone = Instant::now();
        if lets_go(pid, dev, Duration::from_secs(2)) {
            eprintln!("cycle {cycle}: let go {:?} after the overlay's unmount", gone.elapsed());
        } else {
            failures.push(format!(
                "cycle {cycle}: {:?} after the overlay's unmount, {}",
                gone.elapsed(),
                diag(pid, dev)
            ));
        }
    }
    assert!(failures.is_empty(), "{}\n{}", failures.join("\n"), agent.log());
    assert_detached(&agent.metrics());
}

/// The agent in its container form (packaging/image/Containerfile: the static binary,
/// host root at /host `rslave`, podman), against the cycle: no host
/// unmount fails, and no unmounted filesystem stays mounted in the agent's mount
/// namespace. The host's tree is made a shared mount, as systemd makes `/`, so
/// that mounts and unmounts propagate into the container.
#[test]
fn in_its_container_the_agent_never_keeps_a_host_mount() {
    require_root();
    let musl = repo_root().join("target/x86_64-unknown-linux-musl/release/overlay-agent");
    assert!(musl.exists(), "{} missing: scripts/test.sh builds it", musl.display());
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().join("host");
    let shared = Mounted::bind(&base, &base);
    run(Command::new("mount").arg("--make-shared").arg(&shared.0));
    let stage = Stage::new(&base);
    let podman = podman(tmp.path());
    let tag = format!("localhost/overlay-agent:teardown-{}", std::process::id());
    run(podman()
        .args(["build", "-q", "-f", "packaging/image/Containerfile", "-t", &tag, "."])
        .current_dir(repo_root()));
    let cfg = config_for(&base, "");
    let addr = format!("127.0.0.1:{}", free_port());
    let name = format!("overlay-agent-teardown-{}", std::process::id());
    let config_mount = format!("{}:/etc/overlay-agent/overlay-agent.yaml:ro", cfg.display());
    run(podman()
        .args(["run", "-d", "--name", &name, "--network", "host", "--pid", "host", "--cap-drop", "all"])
        .args(["--cap-add", "SYS_ADMIN,DAC_READ_SEARCH,SYS_PTRACE,BPF,PERFMON,SYS_RESOURCE"])
        .args(["-v", "/proc:/host/proc:ro", "-v", "/:/host:ro,rslave", "-v", &config_mount, &tag])
        .args(["--web.listen-address", &addr]));
    let _container = Container { name: name.clone(), podman: tmp.path().to_owned(), tag };
    let logs = || {
        String::from_utf8_lossy(
            &podman().args(["logs", &name]).output().map(|o| o.stderr).unwrap_or_default(),
        )
        .into_owned()
    };
    wait_for("the containerized agent to be ready", Duration::from_secs(60), || {
        http_get(&addr, "/readyz").ok().filter(|r| r.status == 200)
    });
    let pid: u32 =
        run(podman().args(["inspect", "-f", "{{.State.Pid}}", &name])).trim().parse().expect("agent pid");
    let in_agent = format!(" /host{} ", stage.t.display());
    let out = stage.cycles(pid, CYCLES, || {
        let table = common::mountinfo(format!("/proc/{pid}/mountinfo"));
        table
            .contains(&in_agent)
            .then(|| format!("{} still mounted in the agent's namespace", stage.t.display()))
    });
    out.assert_clean(CYCLES, logs);
    let metrics = http_get(&addr, "/metrics").expect("scrape");
    assert_detached(&Metrics::parse(&metrics.body));
}

/// The podman container and its image, removed on drop.
struct Container {
    name: String,
    podman: PathBuf,
    tag: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        let podman = podman(&self.podman);
        let _ = podman().args(["rm", "-f", "-t", "0", &self.name]).output();
        let _ = podman().args(["rmi", "-f", &self.tag]).output();
    }
}
