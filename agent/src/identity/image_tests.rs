//! The image each runtime records, the user-namespace flag, and idmapped
//! lowers, on state files written the way each runtime writes them.

use std::path::Path;

use super::*;
use crate::discovery::{group_by_superblock, mountinfo};

const L64: &str = "346b03d8cef7525285aa40228ffb61f482e2bc806353b94d8af3476e238b08b9";
const M64: &str = "4a1f0c9e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f";
const C64: &str = "0a3be5681276a5aca7ff3e167f6977ca851b49501d71bd547ae147f3249f70fd";

fn table(mountpoints_and_lowers: &[(&str, &str)]) -> MountTable {
    let lines: String = mountpoints_and_lowers
        .iter()
        .enumerate()
        .map(|(i, (mp, lower))| {
            format!(
                "{} 2 0:{} / {mp} rw - overlay overlay rw,lowerdir={lower},upperdir=/u{i},workdir=/w{i}\n",
                10 + i,
                50 + i
            )
        })
        .collect();
    MountTable {
        mounts: group_by_superblock(mountinfo::parse(lines.as_bytes()).0, |_| true, None),
        ..Default::default()
    }
}

/// A root and a writer of files under it.
fn root() -> (tempfile::TempDir, impl Fn(&str, &str)) {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().to_owned();
    let write = move |p: &str, s: &str| {
        let p = r.join(p.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, s).expect("write");
    };
    (dir, write)
}

fn identify(rootfs: &Path, mp: &str) -> Identity {
    let t = table(&[(mp, "/l")]);
    let m = t.mounts.values().next().expect("mount");
    Resolver::new(rootfs, Path::new("/proc"), &[]).identify(m).unwrap_or_else(|| panic!("{mp}"))
}

#[test]
fn docker_records_the_image_given_to_docker_run() {
    let (dir, write) = root();
    write(&format!("/var/lib/docker/image/overlay2/layerdb/mounts/{C64}/mount-id"), M64);
    write(
        &format!("/var/lib/docker/containers/{C64}/config.v2.json"),
        r#"{"Name":"/db","Config":{"Image":"postgres:16","Env":["A=1"]},"Image":"sha256:ab"}"#,
    );
    write(&format!("/var/lib/docker/containers/{L64}/config.v2.json"), r#"{"Name":"/api"}"#);
    let d = identify(dir.path(), &format!("/var/lib/docker/overlay2/{M64}/merged"));
    assert_eq!((d.container_name.as_str(), d.image.as_str(), d.userns), ("db", "postgres:16", false));
    // The containerd image store; a config without Config: no image.
    let d = identify(dir.path(), &format!("/var/lib/docker/rootfs/overlayfs/{L64}"));
    assert_eq!((d.container_name.as_str(), d.image.as_str()), ("api", ""));
}

#[test]
fn containers_storage_records_image_name_and_id_maps() {
    let (dir, write) = root();
    let crio = "c".repeat(64);
    let other = L64.replace('3', "4");
    write(
        "/var/lib/containers/storage/overlay-containers/containers.json",
        &format!(
            r#"[{{"id":"{C64}","names":["web"],"layer":"{L64}","metadata":"{{\"image-name\":\"docker.io/library/nginx:1.27\",\"image-id\":\"ab\",\"name\":\"web\"}}","uidmap":[{{"container_id":0,"host_id":100000,"size":65536}}],"gidmap":[{{"container_id":0,"host_id":100000,"size":65536}}]}},
               {{"id":"{crio}","names":["k8s_app"],"layer":"{other}","metadata":"{{\"pod-name\":\"app-0\",\"pod-id\":\"9f\",\"image-name\":\"quay.io/org/app@sha256:1234\"}}"}}]"#
        ),
    );
    let p = identify(dir.path(), &format!("/var/lib/containers/storage/overlay/{L64}/merged"));
    assert_eq!(
        (p.runtime.as_str(), p.image.as_str(), p.userns),
        ("podman", "docker.io/library/nginx:1.27", true)
    );
    let c = identify(dir.path(), &format!("/var/lib/containers/storage/overlay/{other}/merged"));
    assert_eq!(
        (c.runtime.as_str(), c.image.as_str(), c.userns),
        ("cri-o", "quay.io/org/app@sha256:1234", false)
    );
}

#[test]
fn containerd_reads_the_bundles_spec_and_kubernetes_names_the_pod() {
    let (dir, write) = root();
    let id = "9f8e7d6c5b4a39281706f5e4d3c2b1a0";
    let uid = "1f2e3d4c-5b6a-4798-8a7b-6c5d4e3f2a1b";
    let bundle = format!("/run/containerd/io.containerd.runtime.v2.task/k8s.io/{id}");
    write(
        &format!("{bundle}/config.json"),
        r#"{"ociVersion":"1.2.0","annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.image-name":"registry.k8s.io/pause:3.10"},"linux":{"uidMappings":[{"containerID":0,"hostID":65536,"size":65536}]}}"#,
    );
    let pod = format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_"));
    write(&format!("/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/{pod}/cri-containerd-{id}.scope/cgroup.procs"), "");
    write(&format!("/var/log/pods/web_front-0_{uid}/c/0.log"), "");
    let t = table(&[(&format!("{bundle}/rootfs"), "/l")]);
    let inv = Resolver::new(dir.path(), Path::new("/proc"), &[]).inventory(&t, None);
    let (_, i) = inv.iter().next().expect("identified");
    assert_eq!(
        (i.image.as_str(), i.userns, i.pod_namespace.as_str(), i.pod_name.as_str()),
        ("registry.k8s.io/pause:3.10", true, "web", "front-0")
    );
    // ctr run and nerdctl: no CRI annotation, no image; no bundle at all: the same.
    write("/run/containerd/io.containerd.runtime.v2.task/default/x/config.json", r#"{"annotations":{}}"#);
    let c = identify(dir.path(), "/run/containerd/io.containerd.runtime.v2.task/default/x/rootfs");
    assert_eq!((c.container_id.as_str(), c.image.as_str(), c.userns), ("x", "", false));
}

#[test]
fn idmapped_lowers_from_runtime_paths_and_the_kernels_mount_options() {
    let (procfs, write) = root();
    write(
        "/1/mountinfo",
        "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
         90 27 0:60 / /srv/idm rw,relatime,idmapped - tmpfs tmpfs rw\n",
    );
    let t = table(&[
        ("/srv/a", "/tmp/ovl-idmapped823885363/0"),
        ("/srv/b", &format!("/var/lib/containers/storage/overlay/{L64}/mapped/0")),
        ("/srv/c", "/srv/idm/lower"),
        ("/srv/d", "/srv/plain/lower:/srv/other"),
    ]);
    let resolver = Resolver::new(Path::new("/nonexistent"), procfs.path(), &[]);
    let inv = resolver.inventory(&t, None);
    let idmapped: Vec<bool> = t.mounts.keys().map(|d| inv.idmapped_lowers(d)).collect();
    assert_eq!(idmapped, [true, true, true, false]);
    // Decided once per mount: the idmapped bind detached after the overlay was
    // mounted does not change the answer; a new mount of the device is read again.
    write("/1/mountinfo", "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n");
    let again = resolver.inventory(&t, Some(&inv));
    assert_eq!(t.mounts.keys().map(|d| again.idmapped_lowers(d)).collect::<Vec<_>>(), idmapped);
    let mut remounted = t.clone();
    remounted.mounts.values_mut().for_each(|m| m.mount_id += 100);
    let fresh = resolver.inventory(&remounted, Some(&again));
    let idmapped: Vec<bool> = remounted.mounts.keys().map(|d| fresh.idmapped_lowers(d)).collect();
    assert_eq!(idmapped, [true, true, false, false]);
}
