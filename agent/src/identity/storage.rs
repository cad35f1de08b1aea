//! containers/storage, the image and container store of podman and CRI-O: a
//! container's root is `<storage>/overlay/<layer>/merged`, and
//! `<storage>/overlay-containers/containers.json` maps layers to containers.
//! Each entry's `metadata` (a JSON string) is written by the runtime that made
//! the container: CRI-O's always holds `pod-name` and `pod-id`, podman's never.

use serde::Deserialize;

use super::{builtin, Identity, Layout, Subject};

pub(super) struct Storage {
    merged: regex::Regex,
}

impl Storage {
    pub fn new() -> Self {
        Storage { merged: builtin(r"^(?P<storage>/.+)/overlay/(?P<layer>[0-9a-f]{64})/merged$") }
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
        let list: Vec<Container> =
            s.read_json(&format!("{}/overlay-containers/containers.json", &c["storage"])).unwrap_or_default();
        match list.into_iter().find(|e| e.layer == c["layer"]) {
            Some(e) => {
                let runtime = e.runtime();
                Some(Identity::new(runtime, e.id, e.names.into_iter().next().unwrap_or_default()))
            }
            // A layer no container uses: an image mounted by `podman image mount`
            // or a build step of buildah/podman build (CRI-O mounts only containers).
            None => Some(Identity::new("podman", "", "")),
        }
    }
}
