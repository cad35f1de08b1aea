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

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::MountRegex;
use crate::discovery::{LayerPath, Mount};

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    pub runtime: String,
    pub container_id: String,
    pub container_name: String,
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
    pub regex: MountRegex,
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
            concourse: builtin(r"/volumes/live/(?P<container_id>[^/]+)/volume$"),
            buildkit: builtin(r"/buildkit/.*executor/(?P<container_id>[^/]+)/rootfs$"),
        }
    }

    fn host(&self, p: &str) -> PathBuf {
        self.rootfs.join(p.trim_start_matches('/'))
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
                return Some(Identity { runtime: r.runtime.clone(), container_id, container_name });
            }
        }
        if let Some(c) = self.storage.captures(&mountpoint) {
            let (id, name) = self.storage_container(&c["storage"], &c["layer"]).unwrap_or_default();
            return Some(Identity {
                runtime: "containers-storage".into(),
                container_id: id,
                container_name: name,
            });
        }
        if let Some(c) = self.docker.captures(&mountpoint) {
            let (id, name) = self.docker_container(&c["root"], &c["mount"]).unwrap_or_default();
            return Some(Identity { runtime: "docker".into(), container_id: id, container_name: name });
        }
        for (runtime, re) in
            [("containerd", &self.containerd), ("concourse", &self.concourse), ("buildkit", &self.buildkit)]
        {
            if let Some((container_id, container_name)) = capture(re, &mountpoint) {
                return Some(Identity { runtime: runtime.into(), container_id, container_name });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{mountinfo, MountTable};

    fn mount(line: &str) -> Mount {
        let t = MountTable::from_lines(mountinfo::parse(line.as_bytes()).0, |_| true);
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
        assert_eq!((cc.runtime.as_str(), cc.container_id.as_str()), ("concourse", "5c2f-1a2b"));
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

    #[test]
    fn user_rules_come_first() {
        let rule = IdentityRule {
            runtime: "ci".into(),
            source: RuleSource::Upperdir,
            regex: MountRegex::new(r"/ci/jobs/(?P<container_id>\d+)-(?P<container_name>[a-z]+)/upper")
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
