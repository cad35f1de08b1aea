//! Who a mount belongs to: the container runtime and container, recognised from
//! where runtimes put their overlays. Runs at discovery (when the mount table
//! changes); exposed only as labels of `overlayfs_mount_info`, so other series
//! keep just `mountpoint` and cardinality stays one series per mount.
//!
//! Layouts: containers/storage (podman, CRI-O: `<storage>/overlay/<layer>/merged`,
//! `overlay-containers/containers.json` maps layers to containers), Docker overlay2
//! (`<root>/overlay2/<mount-id>/merged`, `image/overlay2/layerdb/mounts/<id>/mount-id`,
//! `containers/<id>/config.v2.json`), containerd (`.../io.containerd.runtime.v2.task/<ns>/<id>/rootfs`),
//! Concourse baggageclaim (`.../volumes/live/<handle>/volume`), BuildKit
//! (`.../buildkit/.../executor/<id>/rootfs`). User rules from the config come first.
//!
//! Kubernetes: a container's pod uid comes from the kubelet's cgroup tree (the
//! container's cgroup is a child of the pod's, for the cgroupfs and systemd
//! drivers, cgroup v1 and v2), and the pod's namespace and name from the
//! kubelet's log directory `/var/log/pods/<namespace>_<name>_<uid>`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::Deserialize;

use crate::discovery::{Device, LayerPath, Mount, MountTable};
use crate::pattern::PathRegex;
use crate::sync::RwLockExt;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    pub runtime: String,
    pub container_id: String,
    pub container_name: String,
    /// Concourse: whether the volume is privileged ("true"/"false"), else "".
    pub privileged: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
}

impl Identity {
    fn new(runtime: &str, container_id: String, container_name: String) -> Self {
        Identity { runtime: runtime.to_owned(), container_id, container_name, ..Default::default() }
    }
}

/// The identities of a mount table's mounts, keyed by device: identity's output,
/// beside discovery's [`MountTable`]; the metrics join the two. Mounts no layout
/// recognises have no entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inventory {
    by_device: BTreeMap<Device, Identity>,
}

impl Inventory {
    pub fn get(&self, device: &Device) -> Option<&Identity> {
        self.by_device.get(device)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Device, &Identity)> {
        self.by_device.iter()
    }

    /// Both inventories' entries, `newer`'s where both have one.
    pub fn union(&self, newer: &Inventory) -> Inventory {
        let mut by_device = self.by_device.clone();
        by_device.extend(newer.by_device.iter().map(|(d, i)| (*d, i.clone())));
        Inventory { by_device }
    }
}

/// The current inventory, shared like [`crate::discovery::SharedTable`].
#[derive(Debug, Clone, Default)]
pub struct SharedInventory(Arc<RwLock<Arc<Inventory>>>);

impl SharedInventory {
    pub fn get(&self) -> Arc<Inventory> {
        self.0.read_now().clone()
    }

    pub fn set(&self, inventory: Inventory) {
        *self.0.write_now() = Arc::new(inventory);
    }
}

/// What a user rule matches against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleSource {
    Mountpoint,
    Upperdir,
}

/// A user rule: an anchored regex whose named captures `container_id` and
/// `container_name` (both optional) identify the mount.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityRule {
    pub runtime: String,
    #[serde(default = "default_source")]
    pub source: RuleSource,
    pub regex: PathRegex,
}

fn default_source() -> RuleSource {
    RuleSource::Mountpoint
}

/// The named captures `container_id` and `container_name` ("" when absent).
fn capture(re: &regex::Regex, s: &str) -> Option<(String, String)> {
    let c = re.captures(s)?;
    let get = |n: &str| c.name(n).map(|m| m.as_str().to_owned()).unwrap_or_default();
    Some((get("container_id"), get("container_name")))
}

fn builtin(pattern: &str) -> regex::Regex {
    // Constant patterns, covered by the tests below.
    regex::Regex::new(pattern).unwrap_or_else(|e| panic!("identity pattern {pattern}: {e}"))
}

/// Identifies mounts; `rootfs` is where the host's / is visible (runtime state
/// files are read under it).
pub struct Resolver {
    rootfs: PathBuf,
    rules: Vec<IdentityRule>,
    storage: regex::Regex,
    docker: regex::Regex,
    containerd: regex::Regex,
    concourse: regex::Regex,
    buildkit: regex::Regex,
}

impl Resolver {
    pub fn new(rootfs: &Path, rules: &[IdentityRule]) -> Self {
        Resolver {
            rootfs: rootfs.to_owned(),
            rules: rules.to_vec(),
            storage: builtin(r"^(?P<storage>/.+)/overlay/(?P<layer>[0-9a-f]{64})/merged$"),
            docker: builtin(r"^(?P<root>/.+)/overlay2/(?P<mount>[0-9a-f]{64})/merged$"),
            containerd: builtin(
                r"/io\.containerd\.runtime\.v2\.task/(?P<ns>[^/]+)/(?P<container_id>[^/]+)/rootfs$",
            ),
            concourse: builtin(r"^(?P<volume>/.*/volumes/live/(?P<container_id>[^/]+))/volume$"),
            buildkit: builtin(r"/buildkit/.*executor/(?P<container_id>[^/]+)/rootfs$"),
        }
    }

    fn host(&self, p: &str) -> PathBuf {
        self.rootfs.join(p.trim_start_matches('/'))
    }

    /// Identifies every mount of a table; the Kubernetes index is built once, and
    /// only when some mount belongs to a container.
    pub fn inventory(&self, table: &MountTable) -> Inventory {
        let mut by_device: BTreeMap<Device, Identity> =
            table.mounts.iter().filter_map(|(dev, m)| Some((*dev, self.identify(m)?))).collect();
        if by_device.values().any(|i| !i.container_id.is_empty()) {
            let pods = Pods::read(&self.rootfs);
            for i in by_device.values_mut() {
                pods.label(i);
            }
        }
        Inventory { by_device }
    }

    pub fn identify(&self, m: &Mount) -> Option<Identity> {
        let mountpoint = m.mountpoint_label();
        let upper = m.options.upper.as_ref().map(LayerPath::label).unwrap_or_default();
        for r in &self.rules {
            let subject = match r.source {
                RuleSource::Mountpoint => &mountpoint,
                RuleSource::Upperdir => &upper,
            };
            if let Some((container_id, container_name)) = capture(r.regex.regex(), subject) {
                return Some(Identity::new(&r.runtime, container_id, container_name));
            }
        }
        if let Some(c) = self.storage.captures(&mountpoint) {
            let (id, name) = self.storage_container(&c["storage"], &c["layer"]).unwrap_or_default();
            return Some(Identity::new("containers-storage", id, name));
        }
        if let Some(c) = self.docker.captures(&mountpoint) {
            let (id, name) = self.docker_container(&c["root"], &c["mount"]).unwrap_or_default();
            return Some(Identity::new("docker", id, name));
        }
        if let Some(c) = self.concourse.captures(&mountpoint) {
            let mut i = Identity::new("concourse", c["container_id"].to_owned(), String::new());
            // baggageclaim writes the volume's privileged flag as a JSON boolean.
            let flag = std::fs::read(self.host(&format!("{}/privileged.json", &c["volume"])))
                .ok()
                .and_then(|b| serde_json::from_slice::<bool>(&b).ok());
            i.privileged = flag.map(|f| f.to_string()).unwrap_or_default();
            return Some(i);
        }
        for (runtime, re) in [("containerd", &self.containerd), ("buildkit", &self.buildkit)] {
            if let Some((container_id, container_name)) = capture(re, &mountpoint) {
                return Some(Identity::new(runtime, container_id, container_name));
            }
        }
        None
    }

    /// containers.json: `[{"id", "names": [..], "layer"}, ...]`.
    fn storage_container(&self, storage: &str, layer: &str) -> Option<(String, String)> {
        #[derive(Deserialize)]
        struct C {
            id: String,
            #[serde(default)]
            names: Vec<String>,
            #[serde(default)]
            layer: String,
        }
        let path = self.host(&format!("{storage}/overlay-containers/containers.json"));
        let list: Vec<C> = serde_json::from_slice(&std::fs::read(&path).ok()?)
            .map_err(|e| tracing::debug!(path = %path.display(), error = %e, "unreadable containers.json"))
            .ok()?;
        let c = list.into_iter().find(|c| c.layer == layer)?;
        Some((c.id, c.names.into_iter().next().unwrap_or_default()))
    }

    /// layerdb/mounts/<container id>/mount-id holds the overlay2 directory name.
    fn docker_container(&self, root: &str, mount: &str) -> Option<(String, String)> {
        let mounts = self.host(&format!("{root}/image/overlay2/layerdb/mounts"));
        let id = std::fs::read_dir(&mounts).ok()?.flatten().find_map(|e| {
            let mid = std::fs::read_to_string(e.path().join("mount-id")).ok()?;
            (mid.trim() == mount).then(|| e.file_name().to_string_lossy().into_owned())
        })?;
        #[derive(Deserialize)]
        struct Config {
            #[serde(rename = "Name", default)]
            name: String,
        }
        let name = std::fs::read(self.host(&format!("{root}/containers/{id}/config.v2.json")))
            .ok()
            .and_then(|b| serde_json::from_slice::<Config>(&b).ok())
            .map(|c| c.name.trim_start_matches('/').to_owned())
            .unwrap_or_default();
        Some((id, name))
    }
}

/// Kubernetes pods by container id, from the kubelet's cgroups and log dirs.
#[derive(Debug, Default)]
struct Pods {
    /// container id -> pod uid
    uid_of: HashMap<String, String>,
    /// pod uid -> (namespace, name)
    names: HashMap<String, (String, String)>,
}

/// A pod's cgroup directory name -> its uid: `pod<uid>` (cgroupfs driver) or
/// `kubepods[-<qos>]-pod<uid with _ for ->.slice` (systemd driver).
fn pod_uid(dir: &str) -> Option<String> {
    let uid = match dir.strip_suffix(".slice") {
        Some(unit) => unit.rsplit_once("-pod")?.1.replace('_', "-"),
        None => dir.strip_prefix("pod")?.to_owned(),
    };
    (uid.len() == 36 && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-')).then_some(uid)
}

/// A container's cgroup directory name (inside its pod's) -> the container id:
/// `<id>` (cgroupfs) or `<runtime prefix>-<id>.scope` (systemd: cri-containerd-,
/// crio-, docker-). CRI-O's conmon scopes are not containers.
fn cgroup_container_id(dir: &str) -> Option<&str> {
    let id = match dir.strip_suffix(".scope") {
        Some(unit) if unit.starts_with("crio-conmon-") => return None,
        Some(unit) => unit.rsplit_once('-')?.1,
        None => dir,
    };
    (id.len() >= 12 && id.chars().all(|c| c.is_ascii_hexdigit())).then_some(id)
}

fn subdirs(dir: &Path) -> impl Iterator<Item = (String, PathBuf)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
}

impl Pods {
    fn read(rootfs: &Path) -> Pods {
        let mut pods = Pods::default();
        let cgroup = rootfs.join("sys/fs/cgroup");
        // kubepods roots: /sys/fs/cgroup/kubepods[.slice] (v2, or v1 named
        // hierarchy) and /sys/fs/cgroup/<controller>/kubepods[.slice] (v1).
        let mut roots: Vec<PathBuf> = Vec::new();
        for (name, path) in subdirs(&cgroup) {
            if name.starts_with("kubepods") {
                roots.push(path);
            } else if !name.ends_with(".slice") && !name.ends_with(".scope") {
                roots.extend(subdirs(&path).filter(|(n, _)| n.starts_with("kubepods")).map(|(_, p)| p));
            }
        }
        // Pods sit at depth 1 (guaranteed) or 2 (burstable, besteffort) below a root.
        let mut stack: Vec<(PathBuf, u32)> = roots.into_iter().map(|p| (p, 0)).collect();
        while let Some((dir, depth)) = stack.pop() {
            for (name, path) in subdirs(&dir) {
                if let Some(uid) = pod_uid(&name) {
                    for (c, _) in subdirs(&path) {
                        if let Some(id) = cgroup_container_id(&c) {
                            pods.uid_of.insert(id.to_owned(), uid.clone());
                        }
                    }
                } else if depth < 2 {
                    stack.push((path, depth + 1));
                }
            }
        }
        if !pods.uid_of.is_empty() {
            for (name, _) in subdirs(&rootfs.join("var/log/pods")) {
                let mut parts = name.splitn(3, '_');
                if let (Some(ns), Some(pod), Some(uid)) = (parts.next(), parts.next(), parts.next()) {
                    pods.names.insert(uid.to_owned(), (ns.to_owned(), pod.to_owned()));
                }
            }
        }
        pods
    }

    fn label(&self, i: &mut Identity) {
        let Some(uid) = self.uid_of.get(&i.container_id) else { return };
        i.pod_uid = uid.clone();
        if let Some((ns, name)) = self.names.get(uid) {
            i.pod_namespace = ns.clone();
            i.pod_name = name.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{group_by_superblock, mountinfo};

    fn mount(line: &str) -> Mount {
        let t = group_by_superblock(mountinfo::parse(line.as_bytes()).0, |_| true);
        t.into_values().next().expect("one mount")
    }

    const L64: &str = "346b03d8cef7525285aa40228ffb61f482e2bc806353b94d8af3476e238b08b9";
    const M64: &str = "4a1f0c9e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f";
    const C64: &str = "0a3be5681276a5aca7ff3e167f6977ca851b49501d71bd547ae147f3249f70fd";

    #[test]
    fn runtime_layouts_on_fixture_roots() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        let write = |p: &str, s: &str| {
            let p = r.join(p.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, s).expect("write");
        };
        write(
            "/var/lib/containers/storage/overlay-containers/containers.json",
            &format!(r#"[{{"id":"{C64}","names":["web"],"layer":"{L64}","metadata":"{{}}"}}]"#),
        );
        write(&format!("/var/lib/docker/image/overlay2/layerdb/mounts/{C64}/mount-id"), M64);
        write(&format!("/var/lib/docker/containers/{C64}/config.v2.json"), r#"{"Name":"/db","State":{}}"#);
        write("/worker/volumes/live/5c2f-1a2b/privileged.json", "true\n");
        write("/worker/volumes/live/77aa/privileged.json", "false\n");
        let resolver = Resolver::new(r, &[]);
        let id = |line: String| resolver.identify(&mount(&line));
        let line = |mp: String| {
            format!("1 2 0:50 / {mp} rw - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w\n")
        };

        let podman = id(line(format!("/var/lib/containers/storage/overlay/{L64}/merged"))).expect("podman");
        assert_eq!(
            (podman.runtime.as_str(), podman.container_id.as_str(), podman.container_name.as_str()),
            ("containers-storage", C64, "web")
        );
        let docker = id(line(format!("/var/lib/docker/overlay2/{M64}/merged"))).expect("docker");
        assert_eq!(
            (docker.runtime.as_str(), docker.container_id.as_str(), docker.container_name.as_str()),
            ("docker", C64, "db")
        );
        let cd = id(line("/run/containerd/io.containerd.runtime.v2.task/k8s.io/9f8e7d/rootfs".into()))
            .expect("containerd");
        assert_eq!((cd.runtime.as_str(), cd.container_id.as_str()), ("containerd", "9f8e7d"));
        let cc = id(line("/worker/volumes/live/5c2f-1a2b/volume".into())).expect("concourse");
        assert_eq!(
            (cc.runtime.as_str(), cc.container_id.as_str(), cc.privileged.as_str()),
            ("concourse", "5c2f-1a2b", "true")
        );
        let cc = id(line("/worker/volumes/live/77aa/volume".into())).expect("concourse");
        assert_eq!(cc.privileged, "false");
        let cc = id(line("/worker/volumes/live/no-flag/volume".into())).expect("concourse");
        assert_eq!(cc.privileged, "", "no privileged.json: unknown, not false");
        let bk =
            id(line("/var/lib/buildkit/runc-overlayfs/executor/k3j4h5g6/rootfs".into())).expect("buildkit");
        assert_eq!((bk.runtime.as_str(), bk.container_id.as_str()), ("buildkit", "k3j4h5g6"));
        // A layer no container uses (an image build step): runtime known, no container.
        let other = L64.replace('3', "4");
        let orphan =
            id(line(format!("/var/lib/containers/storage/overlay/{other}/merged"))).expect("storage");
        assert_eq!((orphan.runtime.as_str(), orphan.container_id.as_str()), ("containers-storage", ""));
        assert_eq!(id(line("/mnt/plain".into())), None);
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
            mounts: group_by_superblock(mountinfo::parse(lines.as_bytes()).0, |_| true),
            ..Default::default()
        };
        let ids = Resolver::new(r, &[]).inventory(&t);
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
    fn pod_and_container_cgroup_names() {
        let uid = "1f2e3d4c-5b6a-4798-8a7b-6c5d4e3f2a1b";
        assert_eq!(pod_uid(&format!("pod{uid}")).as_deref(), Some(uid));
        assert_eq!(pod_uid(&format!("kubepods-pod{}.slice", uid.replace('-', "_"))).as_deref(), Some(uid));
        assert_eq!(pod_uid("kubepods-burstable.slice"), None);
        assert_eq!(pod_uid("pod-not-a-uid"), None);
        assert_eq!(cgroup_container_id(&format!("docker-{C64}.scope")), Some(C64));
        assert_eq!(cgroup_container_id(&format!("crio-conmon-{C64}.scope")), None);
        assert_eq!(cgroup_container_id("init.scope"), None);
        assert_eq!(cgroup_container_id(C64), Some(C64));
    }

    #[test]
    fn user_rules_come_first() {
        let rule = IdentityRule {
            runtime: "ci".into(),
            source: RuleSource::Upperdir,
            regex: PathRegex::new(r"/ci/jobs/(?P<container_id>\d+)-(?P<container_name>[a-z]+)/upper")
                .expect("regex"),
        };
        let resolver = Resolver::new(Path::new("/"), &[rule]);
        let m = mount("1 2 0:50 / /run/containerd/io.containerd.runtime.v2.task/x/y/rootfs rw - overlay overlay rw,lowerdir=/l,upperdir=/ci/jobs/42-build/upper,workdir=/w\n");
        let i = resolver.identify(&m).expect("rule");
        assert_eq!(
            (i.runtime.as_str(), i.container_id.as_str(), i.container_name.as_str()),
            ("ci", "42", "build")
        );
    }
}
