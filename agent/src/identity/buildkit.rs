//! BuildKit, standalone (`/var/lib/buildkit/<worker>/`, e.g. `runc-overlayfs`) or
//! inside dockerd (`/var/lib/docker/buildkit/`, `containerd-overlayfs` with the
//! containerd image store). A build step's container root is
//! `.../executor/<id>/rootfs`; other mounts of its snapshots (diffs, cache
//! mounts) are recognised by their upper dir,
//! `.../buildkit/<worker>/snapshots/snapshots/<n>/fs`, or by a mountpoint under
//! a worker's directory.

use super::{builtin, capture, Identity, Layout, Subject};

pub(super) struct BuildKit {
    executor: regex::Regex,
    worker_mount: regex::Regex,
    snapshot_upper: regex::Regex,
}

impl BuildKit {
    pub fn new() -> Self {
        BuildKit {
            executor: builtin(r"/buildkit/(?:.*/)?executor/(?P<container_id>[^/]+)/rootfs$"),
            worker_mount: builtin(r"/buildkit/[^/]+-overlayfs/"),
            snapshot_upper: builtin(r"/buildkit/[^/]+/snapshots/snapshots/[0-9]+/fs$"),
        }
    }
}

impl Layout for BuildKit {
    fn identify(&self, s: &Subject) -> Option<Identity> {
        if let Some((id, name)) = capture(&self.executor, &s.mountpoint) {
            return Some(Identity::new("buildkit", id, name));
        }
        (self.worker_mount.is_match(&s.mountpoint) || self.snapshot_upper.is_match(&s.upper))
            .then(|| Identity::new("buildkit", "", ""))
    }
}
