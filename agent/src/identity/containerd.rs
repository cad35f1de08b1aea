//! containerd's task root filesystems: `<state>/io.containerd.runtime.v2.task/<namespace>/<id>/rootfs`
//! (`ctr run`, nerdctl, the CRI plugin in namespace `k8s.io`). The bundle's
//! OCI spec, `config.json` beside `rootfs`, names the image in the CRI
//! plugin's `io.kubernetes.cri.image-name` annotation (`ctr run` and nerdctl
//! record their image in containerd's metadata database only, which the agent
//! does not read), and holds the user namespace's `uidMappings`.

use serde::Deserialize;

use super::{builtin, Identity, Layout, Subject};

/// The CRI plugin's annotation of the image a container was created from.
const CRI_IMAGE_NAME: &str = "io.kubernetes.cri.image-name";

pub(super) struct Containerd {
    task: regex::Regex,
}

impl Containerd {
    pub fn new() -> Self {
        Containerd {
            task: builtin(
                r"^(?P<bundle>.*/io\.containerd\.runtime\.v2\.task/(?P<ns>[^/]+)/(?P<container_id>[^/]+))/rootfs$",
            ),
        }
    }
}

/// The parts of a bundle's OCI spec the agent reads.
#[derive(Deserialize, Default)]
struct Spec {
    #[serde(default)]
    annotations: std::collections::HashMap<String, String>,
    #[serde(default)]
    linux: Option<Linux>,
}

#[derive(Deserialize, Default)]
struct Linux {
    #[serde(rename = "uidMappings", default)]
    uid_mappings: Vec<serde_json::Value>,
}

impl Layout for Containerd {
    fn identify(&self, s: &Subject) -> Option<Identity> {
        let c = self.task.captures(&s.mountpoint)?;
        let spec: Spec = s.read_json(&format!("{}/config.json", &c["bundle"])).unwrap_or_default();
        let image = spec.annotations.get(CRI_IMAGE_NAME).cloned().unwrap_or_default();
        let mut i = Identity::new("containerd", &c["container_id"], "").with_image(image);
        i.containerd_namespace = c["ns"].to_owned();
        i.userns = spec.linux.is_some_and(|l| !l.uid_mappings.is_empty());
        Some(i)
    }
}
