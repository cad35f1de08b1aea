//! Kubernetes: a container's pod uid comes from the kubelet's cgroup tree (the
//! container's cgroup is a child of the pod's, for the cgroupfs and systemd
//! drivers, cgroup v1 and v2), and the pod's namespace and name from the
//! kubelet's log directory `/var/log/pods/<namespace>_<name>_<uid>`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::Identity;

/// Kubernetes pods by container id, from the kubelet's cgroups and log dirs.
#[derive(Debug, Default)]
pub(super) struct Pods {
    /// container id -> pod uid
    uid_of: HashMap<String, String>,
    /// pod uid -> (namespace, name)
    names: HashMap<String, (String, String)>,
}

/// A pod's cgroup directory name -> its uid: `pod<uid>` (cgroupfs driver) or
/// `kubepods[-<qos>]-pod<uid with _ for ->.slice` (systemd driver).
pub(super) fn pod_uid(dir: &str) -> Option<String> {
    let uid = match dir.strip_suffix(".slice") {
        Some(unit) => unit.rsplit_once("-pod")?.1.replace('_', "-"),
        None => dir.strip_prefix("pod")?.to_owned(),
    };
    (uid.len() == 36 && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-')).then_some(uid)
}

/// A container's cgroup directory name (inside its pod's) -> the container id:
/// `<id>` (cgroupfs) or `<runtime prefix>-<id>.scope` (systemd: cri-containerd-,
/// crio-, docker-). CRI-O's conmon scopes are not containers.
pub(super) fn cgroup_container_id(dir: &str) -> Option<&str> {
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

/// Pods' namespace and name by uid, from the kubelet's log directories
/// `/var/log/pods/<namespace>_<name>_<uid>`.
pub(super) fn pod_names(rootfs: &Path) -> HashMap<String, (String, String)> {
    let mut names = HashMap::new();
    for (name, _) in subdirs(&rootfs.join("var/log/pods")) {
        let mut parts = name.splitn(3, '_');
        if let (Some(ns), Some(pod), Some(uid)) = (parts.next(), parts.next(), parts.next()) {
            names.insert(uid.to_owned(), (ns.to_owned(), pod.to_owned()));
        }
    }
    names
}

impl Pods {
    pub fn read(rootfs: &Path) -> Pods {
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
            pods.names = pod_names(rootfs);
        }
        pods
    }

    pub fn label(&self, i: &mut Identity) {
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

    const C64: &str = "0a3be5681276a5aca7ff3e167f6977ca851b49501d71bd547ae147f3249f70fd";

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
}
