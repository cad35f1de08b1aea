//! The layouts on state files written the way each runtime writes them.

use super::*;
use crate::discovery::{group_by_superblock, mountinfo};

fn mount(line: &str) -> Mount {
    let t = group_by_superblock(mountinfo::parse(line.as_bytes()).0, |_| true, None);
    t.into_values().next().expect("one mount")
}

const L64: &str = "346b03d8cef7525285aa40228ffb61f482e2bc806353b94d8af3476e238b08b9";
const M64: &str = "4a1f0c9e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f";
const C64: &str = "0a3be5681276a5aca7ff3e167f6977ca851b49501d71bd547ae147f3249f70fd";

fn line(mp: &str, upper: &str) -> String {
    format!("1 2 0:50 / {mp} rw - overlay overlay rw,lowerdir=/l,upperdir={upper},workdir=/w\n")
}

/// A root holding runtime state files: `write(path, contents)` under it.
fn state_root() -> (tempfile::TempDir, impl Fn(&str, &str)) {
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path().to_owned();
    let write = move |p: &str, s: &str| {
        let p = r.join(p.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, s).expect("write");
    };
    (root, write)
}

fn triple(i: &Identity) -> (&str, &str, &str) {
    (i.runtime.as_str(), i.container_id.as_str(), i.container_name.as_str())
}

#[test]
fn containers_storage_tells_podman_from_cri_o() {
    let (root, write) = state_root();
    let other = L64.replace('3', "4");
    let crio = "c".repeat(64);
    write(
        "/var/lib/containers/storage/overlay-containers/containers.json",
        &format!(
            r#"[{{"id":"{C64}","names":["web"],"layer":"{L64}","metadata":"{{\"image-name\":\"localhost/bb:1\",\"image-id\":\"ab\",\"name\":\"web\",\"created-at\":1764500000}}"}},
               {{"id":"{crio}","names":["k8s_runner_runner-0_ci_x_0"],"layer":"{other}","metadata":"{{\"pod-name\":\"runner-0\",\"pod-id\":\"9f\",\"name\":\"k8s_runner_runner-0_ci_x_0\"}}"}}]"#
        ),
    );
    let resolver = Resolver::new(root.path(), std::path::Path::new("/proc"), &[]);
    let id = |layer: &str| {
        resolver
            .identify(&mount(&line(&format!("/var/lib/containers/storage/overlay/{layer}/merged"), "/u")))
            .expect("containers/storage")
    };
    assert_eq!(triple(&id(L64)), ("podman", C64, "web"));
    assert_eq!(triple(&id(&other)), ("cri-o", crio.as_str(), "k8s_runner_runner-0_ci_x_0"));
    // A layer no container uses (podman image mount, a build step): podman, no container.
    assert_eq!(triple(&id(&"5".repeat(64))), ("podman", "", ""));
}

#[test]
fn docker_overlay2_and_containerd_image_store() {
    let (root, write) = state_root();
    write(&format!("/var/lib/docker/image/overlay2/layerdb/mounts/{C64}/mount-id"), M64);
    write(&format!("/var/lib/docker/containers/{C64}/config.v2.json"), r#"{"Name":"/db","State":{}}"#);
    write(&format!("/var/lib/docker/containers/{L64}/config.v2.json"), r#"{"Name":"/api"}"#);
    let resolver = Resolver::new(root.path(), std::path::Path::new("/proc"), &[]);
    let id = |mp: &str, upper: &str| resolver.identify(&mount(&line(mp, upper)));
    let d = id(&format!("/var/lib/docker/overlay2/{M64}/merged"), "/u").expect("overlay2");
    assert_eq!(triple(&d), ("docker", C64, "db"));
    let snap = "/var/lib/docker/containerd/daemon/io.containerd.snapshotter.v1.overlayfs/snapshots/31/fs";
    let d = id(&format!("/var/lib/docker/rootfs/overlayfs/{L64}"), snap).expect("containerd store");
    assert_eq!(triple(&d), ("docker", L64, "api"));
    // A snapshot mounted outside a container (a build step): docker, no container.
    let d = id("/tmp/containerd-mount2218", snap).expect("containerd store snapshot");
    assert_eq!(triple(&d), ("docker", "", ""));
    // An overlay2 layer no container holds.
    let d = id(&format!("/var/lib/docker/overlay2/{}/merged", "e".repeat(64)), "/u").expect("overlay2");
    assert_eq!(triple(&d), ("docker", "", ""));
}

#[test]
fn containerd_and_buildkit() {
    let resolver = Resolver::new(Path::new("/nonexistent"), std::path::Path::new("/proc"), &[]);
    let id = |mp: &str, upper: &str| resolver.identify(&mount(&line(mp, upper)));
    let cd =
        id("/run/containerd/io.containerd.runtime.v2.task/k8s.io/9f8e7d/rootfs", "/u").expect("containerd");
    assert_eq!(triple(&cd), ("containerd", "9f8e7d", ""));
    assert_eq!(cd.containerd_namespace, "k8s.io");
    for mp in [
        "/var/lib/buildkit/runc-overlayfs/executor/k3j4h5g6/rootfs",
        "/var/lib/docker/buildkit/executor/k3j4h5g6/rootfs",
        "/var/lib/docker/buildkit/containerd-overlayfs/executor/k3j4h5g6/rootfs",
    ] {
        assert_eq!(triple(&id(mp, "/u").expect(mp)), ("buildkit", "k3j4h5g6", ""), "{mp}");
    }
    let bk = id("/tmp/buildkit-mount1234", "/var/lib/buildkit/runc-overlayfs/snapshots/snapshots/12/fs")
        .expect("buildkit snapshot");
    assert_eq!(triple(&bk), ("buildkit", "", ""));
    let bk =
        id("/var/lib/docker/buildkit/containerd-overlayfs/cachemounts/buildkit1/x", "/u").expect("worker");
    assert_eq!(triple(&bk), ("buildkit", "", ""));
    // As dockerd 28 mounts a RUN step: the snapshot under cachemounts/ (the
    // primary mountpoint), bound at executor/<id>/rootfs: the bind names the step.
    let snap = "/var/lib/docker/containerd/daemon/io.containerd.snapshotter.v1.overlayfs/snapshots/7/fs";
    let lines = format!(
        "40 2 0:52 / /var/lib/docker/buildkit/containerd-overlayfs/cachemounts/buildkit391 rw - overlay overlay rw,lowerdir=/l,upperdir={snap},workdir=/w\n\
         41 2 0:52 / /var/lib/docker/buildkit/executor/z80h4kx/rootfs rw - overlay overlay rw,lowerdir=/l,upperdir={snap},workdir=/w\n"
    );
    let step = resolver.identify(&mount(&lines)).expect("build step");
    assert_eq!(triple(&step), ("buildkit", "z80h4kx", ""));
    assert_eq!(id("/mnt/plain", "/u"), None);
}

/// baggageclaim's states: the handle and privileged flag in each, the flag read
/// wherever the handle's directory is now (mountinfo may lag a rename).
#[test]
fn concourse_volume_in_every_state() {
    let (root, write) = state_root();
    let resolver = Resolver::new(root.path(), std::path::Path::new("/proc"), &[]);
    let h = "5c2f-1a2b";
    let id = |state: &str| {
        resolver
            .identify(&mount(&line(
                &format!("/worker/volumes/{state}/{h}/volume"),
                &format!("/worker/overlays/{h}"),
            )))
            .expect("concourse")
    };
    // Mounted in init/, privileged.json not written yet: unknown, and settling.
    let i = id("init");
    assert_eq!((i.runtime.as_str(), i.container_id.as_str(), i.privileged.as_str()), ("concourse", h, ""));
    assert!(i.settling);
    assert_eq!(i.renamed_unless_exists, None, "a directory the agent cannot see is not watched");
    write(&format!("/worker/volumes/init/{h}/privileged.json"), "false\n");
    let i = id("init");
    assert_eq!((i.privileged.as_str(), i.settling), ("false", false), "settled once the flag is read");
    // Renamed to live/ while mountinfo still says init/: the flag is found in live/.
    std::fs::rename(root.path().join("worker/volumes/init"), root.path().join("worker/volumes/live"))
        .expect("rename");
    let i = id("init");
    assert_eq!((i.container_id.as_str(), i.privileged.as_str()), (h, "false"));
    // Identified from a table older than the rename (a census re-identifies from
    // the table it has): outdated at once, so the table is read again.
    assert!(i.outdated(), "{:?}", i.renamed_unless_exists);
    let i = id("live");
    assert_eq!((i.container_id.as_str(), i.privileged.as_str(), i.settling), (h, "false", false));
    let watched = i.renamed_unless_exists.expect("the handle's directory is watched");
    assert!(watched.ends_with(format!("worker/volumes/live/{h}")) && watched.exists());
    std::fs::rename(root.path().join("worker/volumes/live"), root.path().join("worker/volumes/dead"))
        .expect("rename");
    assert!(!watched.exists(), "the rename to dead/ makes the live identity outdated");
    let i = id("dead");
    assert_eq!((i.container_id.as_str(), i.privileged.as_str(), i.settling), (h, "false", false));
    write("/worker/volumes/live/77aa/privileged.json", "true\n");
    let i = resolver
        .identify(&mount(&line("/worker/volumes/live/77aa/volume", "/worker/overlays/77aa")))
        .expect("concourse");
    assert_eq!(i.privileged, "true");
    write("/worker/volumes/live/bad/privileged.json", "yes\n");
    let i = resolver
        .identify(&mount(&line("/worker/volumes/live/bad/volume", "/worker/overlays/bad")))
        .expect("concourse");
    assert_eq!(i.privileged, "", "not a JSON boolean: unknown, not false");
}

/// What the daemon's one-second check asks of an inventory holding a volume
/// stuck in init/: outdated (a mountinfo read and re-identification every
/// second) only until privileged.json is read; after that only the rename to
/// live/ makes it outdated.
#[test]
fn concourse_init_volume_settles_once_privileged_json_is_read() {
    let (root, write) = state_root();
    let h = "9d1e-stuck";
    write(&format!("/worker/volumes/init/{h}/properties.json"), "{}\n");
    let table = || MountTable {
        mounts: group_by_superblock(
            mountinfo::parse(
                line(&format!("/worker/volumes/init/{h}/volume"), "/worker/overlays/x").as_bytes(),
            )
            .0,
            |_| true,
            None,
        ),
        ..Default::default()
    };
    let resolver = Resolver::new(root.path(), std::path::Path::new("/proc"), &[]);
    let ids = resolver.inventory(&table(), None);
    assert!(ids.watched() && outdated(&ids), "no privileged.json yet: re-read every second");
    write(&format!("/worker/volumes/init/{h}/privileged.json"), "true\n");
    let ids = resolver.inventory(&table(), None);
    assert_eq!(
        ids.iter().map(|(_, i)| (i.privileged.as_str(), i.settling)).collect::<Vec<_>>(),
        [("true", false)]
    );
    for _ in 0..3 {
        assert!(ids.watched() && !outdated(&ids), "stuck in init/ with its flag read: nothing to re-read");
    }
    std::fs::create_dir_all(root.path().join("worker/volumes/live")).expect("mkdir");
    std::fs::rename(
        root.path().join(format!("worker/volumes/init/{h}")),
        root.path().join(format!("worker/volumes/live/{h}")),
    )
    .expect("rename");
    assert!(outdated(&ids), "the rename to live/ is still caught");
}

/// Kubelet cgroup layouts: systemd driver on cgroup v2 (containerd), cgroupfs
/// driver on cgroup v1 (CRI-O, guaranteed and burstable pods), and a mount whose
/// container has no pod (a plain podman container on the same node).
#[test]
fn kubernetes_pods_from_cgroup_paths() {
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path();
    let mkdir = |p: &str| std::fs::create_dir_all(r.join(p.trim_start_matches('/'))).expect("mkdir");
    let (cd_id, crio_id, crio_g_id) = (C64, L64, M64);
    let uid_a = "1f2e3d4c-5b6a-4798-8a7b-6c5d4e3f2a1b";
    let uid_b = "aa11bb22-cc33-4d44-8e55-ff6677889900";
    let uid_g = "0b1c2d3e-4f50-4617-8829-3a4b5c6d7e8f";
    mkdir(&format!(
        "/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{cd_id}.scope",
        uid_a.replace('-', "_")
    ));
    mkdir(&format!("/sys/fs/cgroup/memory/kubepods/besteffort/pod{uid_b}/{crio_id}"));
    mkdir(&format!("/sys/fs/cgroup/memory/kubepods/besteffort/pod{uid_b}/crio-conmon-{crio_id}.scope"));
    mkdir(&format!("/sys/fs/cgroup/pids/kubepods/pod{uid_g}/crio-{crio_g_id}.scope"));
    mkdir("/sys/fs/cgroup/system.slice/podman.service");
    mkdir(&format!("/var/log/pods/web_frontend-7d9f8-x2k4q_{uid_a}/nginx"));
    mkdir(&format!("/var/log/pods/ci_runner-0_{uid_b}/runner"));
    let write = |p: &str, s: &str| {
        let p = r.join(p.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, s).expect("write");
    };
    let other = "5".repeat(64);
    write(
        "/var/lib/containers/storage/overlay-containers/containers.json",
        &format!(
            r#"[{{"id":"{crio_id}","names":["k8s_runner"],"layer":"{}"}},{{"id":"{crio_g_id}","layer":"{}"}},{{"id":"{other}","names":["plain"],"layer":"{}"}}]"#,
            "1".repeat(64),
            "2".repeat(64),
            "3".repeat(64)
        ),
    );
    let lines = [
        format!("/run/containerd/io.containerd.runtime.v2.task/k8s.io/{cd_id}/rootfs"),
        format!("/var/lib/containers/storage/overlay/{}/merged", "1".repeat(64)),
        format!("/var/lib/containers/storage/overlay/{}/merged", "2".repeat(64)),
        format!("/var/lib/containers/storage/overlay/{}/merged", "3".repeat(64)),
    ]
    .iter()
    .enumerate()
    .map(|(i, mp)| {
        format!(
            "{} 2 0:{} / {mp} rw - overlay overlay rw,lowerdir=/l,upperdir=/u{i},workdir=/w{i}\n",
            10 + i,
            50 + i
        )
    })
    .collect::<String>();
    let t = MountTable {
        mounts: group_by_superblock(mountinfo::parse(lines.as_bytes()).0, |_| true, None),
        ..Default::default()
    };
    let ids = Resolver::new(r, std::path::Path::new("/proc"), &[]).inventory(&t, None);
    assert!(!ids.watched() && !outdated(&ids));
    let mut got: Vec<(String, String, String, String)> = ids
        .iter()
        .map(|(_, i)| {
            (i.container_id.clone(), i.pod_namespace.clone(), i.pod_name.clone(), i.pod_uid.clone())
        })
        .collect();
    got.sort();
    let mut want = vec![
        (cd_id.to_owned(), "web".to_owned(), "frontend-7d9f8-x2k4q".to_owned(), uid_a.to_owned()),
        (crio_id.to_owned(), "ci".to_owned(), "runner-0".to_owned(), uid_b.to_owned()),
        // A pod without a log dir: the uid, no name.
        (crio_g_id.to_owned(), String::new(), String::new(), uid_g.to_owned()),
        (other, String::new(), String::new(), String::new()),
    ];
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn user_rules_come_first() {
    let rule = IdentityRule {
        runtime: "ci".into(),
        source: RuleSource::Upperdir,
        regex: PathRegex::new(r"/ci/jobs/(?P<container_id>\d+)-(?P<container_name>[a-z]+)/upper")
            .expect("regex"),
    };
    let resolver = Resolver::new(Path::new("/"), std::path::Path::new("/proc"), &[rule]);
    let m = mount("1 2 0:50 / /run/containerd/io.containerd.runtime.v2.task/x/y/rootfs rw - overlay overlay rw,lowerdir=/l,upperdir=/ci/jobs/42-build/upper,workdir=/w\n");
    let i = resolver.identify(&m).expect("rule");
    assert_eq!(
        (i.runtime.as_str(), i.container_id.as_str(), i.container_name.as_str()),
        ("ci", "42", "build")
    );
}

fn outdated(ids: &Inventory) -> bool {
    ids.iter().any(|(_, i)| i.outdated())
}

/// The holder of a namespace is read once per namespace process: a later
/// inventory keeps it (even when the process's files say otherwise, as a fake
/// procfs can), and reads it again for another process of the namespace.
#[test]
fn a_namespace_holder_is_read_once_per_process() {
    let proc = tempfile::tempdir().expect("tempdir");
    let write_comm = |pid: i32, comm: &str| {
        let d = proc.path().join(pid.to_string());
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("comm"), comm).expect("write");
        std::fs::write(d.join("cgroup"), "0::/user.slice\n").expect("write");
    };
    write_comm(40, "dockerd\n");
    let table_via = |pid: i32| {
        let mut m = mount(&line("/merged", "/u"));
        m.namespace = Some(MountNs { id: crate::discovery::NsId(7), pid });
        MountTable { mounts: [(m.device, m)].into_iter().collect(), ..Default::default() }
    };
    let resolver = Resolver::new(proc.path(), proc.path(), &[]);
    let t = table_via(40);
    let first = resolver.inventory(&t, None);
    let process = |ids: &Inventory, t: &MountTable| {
        let m = t.mounts.values().next().expect("mount");
        ids.holder(m).map(|h| h.process.clone())
    };
    assert_eq!(process(&first, &t).as_deref(), Some("dockerd"));
    write_comm(40, "changed\n");
    let again = resolver.inventory(&t, Some(&first));
    assert_eq!(process(&again, &t).as_deref(), Some("dockerd"), "kept, not read again");
    write_comm(41, "containerd\n");
    let t41 = table_via(41);
    let other = resolver.inventory(&t41, Some(&again));
    assert_eq!(process(&other, &t41).as_deref(), Some("containerd"), "another process: read");
}
