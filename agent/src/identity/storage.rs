//! containers/storage, the image and container store of podman and CRI-O: a
//! container's root is `<storage>/overlay/<layer>/merged`, and
//! `<storage>/overlay-containers/containers.json` maps layers to containers.
//! Each entry's `metadata` (a JSON string) is written by the runtime that made
//! the container: CRI-O's always holds `pod-name` and `pod-id`, podman's never.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Deserialize;

use super::{builtin, Identity, Layout, Subject};
use crate::sync::LockExt;

pub(super) struct Storage {
    merged: regex::Regex,
    /// Per storage root (as the agent reaches it), the containers by layer, read
    /// once per mount table.
    by_layer: Mutex<HashMap<PathBuf, Arc<HashMap<String, Identity>>>>,
}

impl Storage {
    pub fn new() -> Self {
        Storage {
            merged: builtin(r"^(?P<storage>/.+)/overlay/(?P<layer>[0-9a-f]{64})/merged$"),
            by_layer: Mutex::default(),
        }
    }

    fn containers(&self, s: &Subject, storage: &str) -> Arc<HashMap<String, Identity>> {
        let key = s.path(storage);
        if let Some(c) = self.by_layer.locked().get(&key) {
            return c.clone();
        }
        let list: Vec<Container> =
            s.read_json(&format!("{storage}/overlay-containers/containers.json")).unwrap_or_default();
        let by_layer: HashMap<String, Identity> = list
            .into_iter()
            .map(|e| {
                let runtime = e.runtime();
                let name = e.names.into_iter().next().unwrap_or_default();
                (e.layer, Identity::new(runtime, e.id, name))
            })
            .collect();
        let by_layer = Arc::new(by_layer);
        self.by_layer.locked().insert(key, by_layer.clone());
        by_layer
    }
}

/// One entry of containers.json.
#[derive(Deserialize)]
struct Container {
    id: String,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    layer: String,
    #[serde(default)]
    metadata: String,
}

/// The fields of the runtime's metadata that tell CRI-O from podman.
#[derive(Deserialize, Default)]
struct Metadata {
    #[serde(rename = "pod-id", default)]
    pod_id: String,
    #[serde(rename = "pod-name", default)]
    pod_name: String,
}

impl Container {
    fn runtime(&self) -> &'static str {
        let md: Metadata = serde_json::from_str(&self.metadata).unwrap_or_default();
        if md.pod_id.is_empty() && md.pod_name.is_empty() {
            "podman"
        } else {
            "cri-o"
        }
    }
}

impl Layout for Storage {
    fn identify(&self, s: &Subject) -> Option<Identity> {
        let c = self.merged.captures(&s.mountpoint)?;
        match self.containers(s, &c["storage"]).get(&c["layer"]) {
            Some(i) => Some(i.clone()),
            // A layer no container uses: an image mounted by `podman image mount`
            // or a build step of buildah/podman build (CRI-O mounts only containers).
            None => Some(Identity::new("podman", "", "")),
        }
    }

    fn forget(&self) {
        self.by_layer.locked().clear();
    }
}
