//! containerd's task root filesystems: `<state>/io.containerd.runtime.v2.task/<namespace>/<id>/rootfs`
//! (`ctr run`, nerdctl, the CRI plugin in namespace `k8s.io`).

use super::{builtin, Identity, Layout, Subject};

pub(super) struct Containerd {
    task: regex::Regex,
}

impl Containerd {
    pub fn new() -> Self {
        Containerd {
            task: builtin(
                r"/io\.containerd\.runtime\.v2\.task/(?P<ns>[^/]+)/(?P<container_id>[^/]+)/rootfs$",
            ),
        }
    }
}

impl Layout for Containerd {
    fn identify(&self, s: &Subject) -> Option<Identity> {
        let c = self.task.captures(&s.mountpoint)?;
        let mut i = Identity::new("containerd", &c["container_id"], "");
        i.containerd_namespace = c["ns"].to_owned();
        Some(i)
    }
}
