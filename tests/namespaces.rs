//! Mounts in other mount namespaces (root; runs the real binary): made by
//! another user in a user namespace, on a filesystem only that namespace sees,
//! at the same path as a host mount. The agent must see both, tell them apart by
//! `mntns`, measure each upper dir in its own namespace, and forget the
//! namespace's series when it ends.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{config_for, hand_over, write_file, Agent, Metrics, Namespace, Overlay, NOBODY};

/// `sh` that mounts a tmpfs on `priv` (seen by this namespace only), an
/// overlay there whose lower file `big` has `size` bytes, and appends a byte to
/// it through the overlay: one copy-up of `size` + 1 bytes into the upper dir.
fn private_overlay(private: &Path, size: usize) -> String {
    let p = private.display();
    format!(
        "mount -t tmpfs ns-tmp {p}\n\
         mkdir {p}/lower {p}/upper {p}/work {p}/merged\n\
         head -c {size} /dev/zero > {p}/lower/big\n\
         mount -t overlay overlay -o lowerdir={p}/lower,upperdir={p}/upper,workdir={p}/work,userxattr {p}/merged\n\
         printf x >> {p}/merged/big"
    )
}

fn upper(m: &Metrics, family: &str, mp: &str, mntns: &str, extra: &[(&str, &str)]) -> Option<f64> {
    let mut labels = vec![("mountpoint", mp), ("mntns", mntns)];
    labels.extend_from_slice(extra);
    m.get(family, &labels)
}

#[test]
fn another_users_namespace_is_seen_measured_in_place_and_forgotten() {
    common::require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let private = tmp.path().join("priv");
    hand_over(&private, NOBODY);
    let ns = Namespace::start(NOBODY, &private_overlay(&private, 300_000));
    let mntns = ns.mntns();

    // The host mounts an overlay at the very same path, with other contents
    // (the namespace's tmpfs hides them from it; its propagation is private).
    let host = Overlay::new(&private, "merged", "", |_| {});
    write_file(&host.merged.join("host-file"), 1000);
    let mp = host.merged.display().to_string();

    let agent = Agent::start(tmp.path(), &["--config", config_for(tmp.path(), "").to_str().expect("utf-8")]);
    let measured = |m: &Metrics| {
        upper(m, "overlayfs_upper_scans_total", &mp, &mntns, &[]).unwrap_or(0.0) >= 1.0
            && upper(m, "overlayfs_upper_scans_total", &mp, "", &[]).unwrap_or(0.0) >= 1.0
    };
    let m = common::wait_for("both mounts measured", Duration::from_secs(20), || {
        let r = common::http_get(&agent.addr, "/metrics").ok()?;
        let m = Metrics::parse(&r.body);
        if !measured(&m) {
            std::fs::write(tmp.path().join("last.prom"), &r.body).ok()?;
        }
        measured(&m).then_some(m)
    });
    assert_eq!(
        m.count("overlayfs_mount_info", &[("mountpoint", &mp)]),
        2,
        "one per namespace:\n{}",
        agent.log()
    );
    // The namespace's upper dir: on its private tmpfs, with the copied-up file.
    let copied = upper(&m, "overlayfs_upper_entries", &mp, &mntns, &[("kind", "copied_up")]);
    assert_eq!(copied, Some(1.0), "the copy-up of big, read with userxattr");
    let apparent = upper(&m, "overlayfs_upper_apparent_bytes", &mp, &mntns, &[]).expect("apparent bytes");
    assert!((300_001.0..300_001.0 + 4096.0).contains(&apparent), "big and the upper dir: {apparent}");
    // The host's: its own file, not the namespace's.
    assert_eq!(upper(&m, "overlayfs_upper_entries", &mp, "", &[("kind", "created")]), Some(1.0));
    let host_apparent =
        upper(&m, "overlayfs_upper_apparent_bytes", &mp, "", &[]).expect("host apparent bytes");
    assert!(host_apparent < 100_000.0, "the host's upper dir: {host_apparent}");
    let namespaces = m.get("overlayfs_discovery_namespaces", &[]).expect("namespaces gauge");
    assert!(namespaces >= 2.0, "the host's and the user's: {namespaces}");
    // Both opened beneath a detached clone: the user's clone made in the user's
    // namespace, so their unmount there never finds it busy.
    let plain: f64 =
        m.matching("overlayfs_scan_upper_opens_total", &[("via", "plain")]).map(|s| s.value).sum();
    assert_eq!(plain, 0.0, "no upper dir opened on the user's mount:\n{}", agent.log());

    // The namespace ends: its series go, the host's stay.
    ns.end();
    let m = wait_gone(&agent, &mp, &mntns);
    assert_eq!(m.count("overlayfs_mount_info", &[("mountpoint", &mp), ("mntns", "")]), 1);
}

fn wait_gone(agent: &Agent, mp: &str, mntns: &str) -> Metrics {
    common::wait_for("the namespace's series to go", Duration::from_secs(20), || {
        let m = agent.metrics();
        let left = m.all().filter(|s| s.label("mntns") == Some(mntns)).count();
        (left == 0 && m.count("overlayfs_mount_info", &[("mountpoint", mp)]) == 1).then_some(m)
    })
}

/// The user rootless podman runs as in these tests: created if missing, with a
/// subordinate id range for newuidmap (podman refuses to start without one).
const ROOTLESS_USER: &str = "oa-rootless";

fn rootless_user() -> u32 {
    let id = |flag: &str| std::process::Command::new("id").args([flag, ROOTLESS_USER]).output();
    if !id("-u").is_ok_and(|o| o.status.success()) {
        common::run(std::process::Command::new("useradd").args([
            "--no-create-home",
            "--shell",
            "/bin/sh",
            ROOTLESS_USER,
        ]));
    }
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if !text.lines().any(|l| l.starts_with(&format!("{ROOTLESS_USER}:"))) {
            let line = format!("{ROOTLESS_USER}:300000:65536\n");
            std::fs::write(file, text + &line).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }
    let out = id("-u").expect("id -u");
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("uid")
}

/// Rootless podman, as its users run it: an unprivileged user, native overlay
/// (storage.conf), the mount in the namespace of podman's pause process, on the
/// user's own storage. A `chown -R` in the container copies up through the user
/// namespace. The agent must name the container from the user's containers.json,
/// see `userxattr`, and measure the upper dir in place.
#[test]
fn rootless_podman_containers_are_seen_identified_and_measured() {
    common::require_root();
    let uid = rootless_user();
    let tmp = tempfile::tempdir_in("/tmp").expect("tempdir");
    let home = tmp.path().join("home");
    let run = tmp.path().join("run");
    for d in [&home, &run] {
        hand_over(d, uid);
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod");
    }
    let conf = home.join(".config/containers");
    std::fs::create_dir_all(&conf).expect("mkdir");
    std::fs::write(conf.join("storage.conf"), "[storage]\ndriver = \"overlay\"\n").expect("storage.conf");
    std::fs::write(
        conf.join("containers.conf"),
        "[containers]\nnetns = \"none\"\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
    )
    .expect("containers.conf");
    common::run(std::process::Command::new("chown").args(["-R", &format!("{uid}:{uid}")]).arg(&home));
    let layer = tmp.path().join("layer.tar");
    common::busybox_layer_tar(&tmp.path().join("tree"), &layer);
    std::fs::set_permissions(&layer, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
    let podman = |args: &[&str]| {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid", &uid.to_string(), "--regid", &uid.to_string(), "--init-groups", "podman"])
            .args(args)
            .env("HOME", &home)
            .env("XDG_RUNTIME_DIR", &run)
            .current_dir(&home);
        c
    };
    let mut kill = std::process::Command::new("pkill");
    kill.args(["-KILL", "-u", ROOTLESS_USER]);
    let _cleanup = Cleanup(vec![podman(&["rm", "-f", "-t", "0", "-a"]), kill]);
    common::run(podman(&["import", "-q"]).arg(&layer).arg("oa-busybox:rootless"));
    let id = common::run(&mut podman(&[
        "run",
        "-d",
        "--name",
        "oa-rootless-c",
        "oa-busybox:rootless",
        "/bin/sleep",
        "600",
    ]));
    let id = id.trim().to_owned();
    common::run(&mut podman(&["exec", "oa-rootless-c", "/bin/busybox", "chown", "-R", "1:1", "/bin"]));
    let driver = common::run(&mut podman(&["info", "--format", "{{.Store.GraphDriverName}}"]));
    assert_eq!(driver.trim(), "overlay", "native overlay, not vfs or fuse-overlayfs");

    let cfg = config_for(&home, "");
    let out = common::run(std::process::Command::new(common::BIN).arg("--config").arg(&cfg).arg("once"));
    common::promtool_check(&out);
    let m = Metrics::parse(&out);
    let info = m
        .all()
        .find(|s| s.name == "overlayfs_mount_info" && s.label("container_id") == Some(id.as_str()))
        .unwrap_or_else(|| panic!("no mount of container {id}:\n{}", common::grep(&out, "mount_info")))
        .clone();
    eprintln!("a rootless podman container: {}", info.key);
    assert_eq!(info.label("runtime"), Some("podman"));
    assert_eq!(info.label("container_name"), Some("oa-rootless-c"));
    assert_eq!(info.label("userxattr"), Some("true"), "rootless overlay mounts with userxattr");
    assert_eq!(info.label("mntns_uid"), Some(uid.to_string().as_str()), "held by the user's pause process");
    let (mp, mntns) =
        (info.label("mountpoint").expect("mp"), info.label("mntns").expect("in podman's namespace"));
    assert!(mp.starts_with(&format!("{}/.local/share/containers/storage/overlay/", home.display())), "{mp}");
    let copied =
        m.get("overlayfs_upper_entries", &[("mountpoint", mp), ("mntns", mntns), ("kind", "copied_up")]);
    assert_eq!(copied, Some(1.0), "busybox, chowned through the user namespace");
    // The symlinks sh and sleep are copied up too, but the kernel allows no
    // user.* xattr on a symlink, so on a userxattr mount they carry no origin and
    // cannot be told from new files (docs/metrics.md).
    let created =
        m.get("overlayfs_upper_entries", &[("mountpoint", mp), ("mntns", mntns), ("kind", "created")]);
    assert!(
        created.is_some_and(|n| n >= 2.0),
        "sh and sleep, and the files podman makes at start: {created:?}"
    );
}

/// Commands run on drop (container removal), whatever the test's outcome.
struct Cleanup(Vec<std::process::Command>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.output();
        }
    }
}

/// Hostile input: a user makes more namespaces than `discovery.max_namespaces`,
/// each with an overlay at a hostile path. The agent reads no more than the cap,
/// says so in a metric and a log line, and its series stay well-formed.
#[test]
fn namespaces_beyond_the_cap_are_counted_and_logged_not_read() {
    common::require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut held = Vec::new();
    for i in 0..4 {
        let private = tmp.path().join(format!("n{i}"));
        hand_over(&private, NOBODY);
        let hostile = format!("{}/q\"uote\\\\back sp{i}", private.display());
        let script = format!(
            "mkdir -p {p}/l {p}/u {p}/w '{hostile}'\nmount -t overlay overlay -o lowerdir={p}/l,upperdir={p}/u,workdir={p}/w,userxattr '{hostile}'",
            p = private.display()
        );
        held.push(Namespace::start(NOBODY, &script));
    }
    let cfg = tmp.path().join("capped.yaml");
    let include = regex::escape(&tmp.path().display().to_string());
    let text = format!("discovery:\n  include_mountpoints: ['{include}/.*']\n  max_namespaces: 2\n");
    std::fs::write(&cfg, text).expect("config");
    let agent = Agent::start(tmp.path(), &["--config", cfg.to_str().expect("utf-8")]);
    let m = common::scrape_until(&agent, "a census past the cap", |m| {
        m.get("overlayfs_discovery_namespaces_over_cap", &[]).is_some_and(|n| n >= 2.0)
    });
    let seen = m.count("overlayfs_mount_info", &[]);
    assert!(seen <= 2, "at most the cap's namespaces are read: {seen}");
    assert!(agent.log().contains("more mount namespaces than discovery.max_namespaces"), "{}", agent.log());
    common::promtool_check(&m.text);
}
