//! Docker, both storage back ends:
//! - overlay2 (the default up to Docker 28): `<root>/overlay2/<mount-id>/merged`;
//!   `<root>/image/overlay2/layerdb/mounts/<container id>/mount-id` holds the
//!   mount id;
//! - the containerd image store (`"features": {"containerd-snapshotter": true}`,
//!   the default of fresh Docker 29 installs): `<root>/rootfs/overlayfs/<container id>`,
//!   upper dir `<root>/containerd/daemon/io.containerd.snapshotter.v1.overlayfs/snapshots/<n>/fs`.
//!
//! Either way the container's name is in `<root>/containers/<id>/config.v2.json`.
//! [`DockerSnapshots`] recognises mounts of the containerd store's snapshots
//! that are not a container's root (build steps) by their upper dir.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Deserialize;

use super::{builtin, Identity, Layout, Subject};
use crate::sync::LockExt;

pub(super) struct Docker {
    overlay2: regex::Regex,
    containerd_store: regex::Regex,
    /// Per data root (as the agent reaches it: two daemons in two namespaces may
    /// both use /var/lib/docker), overlay2 mount id -> container id, read once
    /// per mount table.
    containers: Mutex<HashMap<PathBuf, Arc<HashMap<String, String>>>>,
}

impl Docker {
    pub fn new() -> Self {
        Docker {
            overlay2: builtin(r"^(?P<root>/.+)/overlay2/(?P<mount>[0-9a-f]{64})/merged$"),
            containerd_store: builtin(r"^(?P<root>/.+)/rootfs/overlayfs/(?P<container_id>[0-9a-f]{64})$"),
            containers: Mutex::default(),
        }
    }

    /// The container whose layerdb mount holds `mount`.
    fn overlay2_container(&self, s: &Subject, root: &str, mount: &str) -> Option<String> {
        let key = s.path(root);
        let cached = self.containers.locked().get(&key).cloned();
        let by_mount = cached.unwrap_or_else(|| {
            let by_mount = Arc::new(overlay2_containers(s, root));
            self.containers.locked().insert(key, by_mount.clone());
            by_mount
        });
        by_mount.get(mount).cloned()
    }
}

/// The container's name, from the daemon's config.v2.json ("" when unreadable).
fn container_name(s: &Subject, root: &str, id: &str) -> String {
    #[derive(Deserialize)]
    struct Config {
        #[serde(rename = "Name", default)]
        name: String,
    }
    s.read_json::<Config>(&format!("{root}/containers/{id}/config.v2.json"))
        .map(|c| c.name.trim_start_matches('/').to_owned())
        .unwrap_or_default()
}

/// layerdb/mounts/<container id>/mount-id of every container: mount id -> container id.
fn overlay2_containers(s: &Subject, root: &str) -> HashMap<String, String> {
    let mounts = format!("{root}/image/overlay2/layerdb/mounts");
    let Ok(names) = s.root.list(&mounts) else { return HashMap::new() };
    names
        .into_iter()
        .filter_map(|name| {
            let name = name.to_string_lossy().into_owned();
            let mid = s.root.read(&format!("{mounts}/{name}/mount-id")).ok()?;
            Some((String::from_utf8_lossy(&mid).trim().to_owned(), name))
        })
        .collect()
}

impl Layout for Docker {
    fn identify(&self, s: &Subject) -> Option<Identity> {
        if let Some(c) = self.overlay2.captures(&s.mountpoint) {
            let Some(id) = self.overlay2_container(s, &c["root"], &c["mount"]) else {
                return Some(Identity::new("docker", "", ""));
            };
            let name = container_name(s, &c["root"], &id);
            return Some(Identity::new("docker", id, name));
        }
        let c = self.containerd_store.captures(&s.mountpoint)?;
        let id = &c["container_id"];
        Some(Identity::new("docker", id, container_name(s, &c["root"], id)))
    }

    fn forget(&self) {
        self.containers.locked().clear();
    }
}

/// A mount of a snapshot of Docker's containerd store that is not a container's
/// root: runtime `docker`, no container.
pub(super) struct DockerSnapshots {
    upper: regex::Regex,
}

impl DockerSnapshots {
    pub fn new() -> Self {
        DockerSnapshots {
            upper: builtin(
                r"^/.+/containerd/daemon/io\.containerd\.snapshotter\.v1\.overlayfs/snapshots/[0-9]+/fs$",
            ),
        }
    }
}

impl Layout for DockerSnapshots {
    fn identify(&self, s: &Subject) -> Option<Identity> {
        self.upper.is_match(&s.upper).then(|| Identity::new("docker", "", ""))
    }
}
