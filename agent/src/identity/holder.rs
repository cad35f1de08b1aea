//! The outer identity of a mount namespace: which container, pod or process
//! holds it. A Concourse worker in a Docker container, a dind daemon in a pod,
//! a rootless podman's pause process: the mounts in their namespaces belong to
//! them, whatever the containers inside are called.
//!
//! Read from the process the agent reads the namespace through (its lowest
//! pid): its cgroup path (`/proc/<pid>/cgroup`, as the agent's cgroup namespace
//! sees it), its command name and its owner. The cgroup names that runtimes
//! give their containers' scopes are well known (systemd and cgroupfs drivers,
//! cgroup v1 and v2):
//!
//! | runtime | cgroup path component |
//! |---|---|
//! | docker | `docker-<id>.scope`, `docker/<id>` |
//! | containerd (CRI) | `cri-containerd-<id>.scope` |
//! | cri-o | `crio-<id>.scope` |
//! | podman | `libpod-<id>.scope`, `libpod_parent/libpod-<id>`; a rootless pause process: `podman-pause-*.scope` |
//! | kubernetes | a pod's `pod<uid>` or `kubepods-*-pod<uid>.slice` above the container |

use std::path::Path;

use super::kubernetes::{cgroup_container_id, pod_uid};
use crate::discovery::MountNs;

/// Who holds a mount namespace. Empty strings where the process's cgroup names
/// no container.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Holder {
    /// `docker`, `containerd`, `cri-o`, `podman`, or "" (a plain process).
    pub runtime: String,
    pub container_id: String,
    pub pod_uid: String,
    pub pod_namespace: String,
    pub pod_name: String,
    /// The command name of the process (`/proc/<pid>/comm`).
    pub process: String,
    /// The process's owner, as a decimal uid ("" when unreadable).
    pub uid: String,
}

/// The runtime and container id a cgroup path component names.
fn container_scope<'a>(component: &'a str, parent: Option<&str>) -> Option<(&'static str, &'a str)> {
    const SCOPES: [(&str, &str); 4] =
        [("docker-", "docker"), ("cri-containerd-", "containerd"), ("crio-", "cri-o"), ("libpod-", "podman")];
    if let Some(unit) = component.strip_suffix(".scope") {
        let (prefix, runtime) = SCOPES.iter().find(|(p, _)| unit.starts_with(p))?;
        let id = &unit[prefix.len()..];
        return cgroup_container_id(component).filter(|i| *i == id).map(|i| (*runtime, i));
    }
    match parent {
        Some("docker") => cgroup_container_id(component).map(|i| ("docker", i)),
        Some("libpod_parent") => {
            component.strip_prefix("libpod-").and_then(cgroup_container_id).map(|i| ("podman", i))
        }
        _ => None,
    }
}

/// The holder a cgroup path names: the innermost container scope, and the pod
/// above it.
pub fn from_cgroup_path(path: &str) -> Holder {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut h = Holder::default();
    for (i, part) in parts.iter().enumerate() {
        let parent = i.checked_sub(1).map(|p| parts[p]);
        if let Some(uid) = pod_uid(part) {
            h.pod_uid = uid;
        } else if let Some((runtime, id)) = container_scope(part, parent) {
            (h.runtime, h.container_id) = (runtime.to_owned(), id.to_owned());
        } else if !h.pod_uid.is_empty()
            && h.container_id.is_empty()
            && parent.is_some_and(|p| pod_uid(p).is_some())
        {
            // cgroupfs driver: the container's directory is its bare id.
            if let Some(id) = cgroup_container_id(part) {
                h.container_id = id.to_owned();
            }
        } else if part.starts_with("podman-pause-") && part.ends_with(".scope") {
            h.runtime = "podman".to_owned();
        }
    }
    h
}

/// The cgroup path of `/proc/<pid>/cgroup`: the unified (v2) line, else the
/// systemd (v1 `name=systemd`) line, else the first.
pub fn cgroup_path(text: &str) -> Option<&str> {
    let lines: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
            Some((ctrl, path))
        })
        .collect();
    let pick = |want: &str| lines.iter().find(|(c, _)| *c == want).map(|(_, p)| *p);
    pick("").or_else(|| pick("name=systemd")).or_else(|| lines.first().map(|(_, p)| *p))
}

/// The holder of namespace `ns`, through its process. Whatever cannot be read
/// (the process exited) is left empty.
pub fn holder_of(procfs: &Path, ns: MountNs) -> Holder {
    let read = |rel: &str| std::fs::read(ns.proc_path(procfs, rel)).ok();
    let cgroup = read("cgroup").map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let mut h = cgroup_path(&cgroup).map(from_cgroup_path).unwrap_or_default();
    h.process = read("comm").map(|b| String::from_utf8_lossy(&b).trim_end().to_owned()).unwrap_or_default();
    h.uid = std::fs::metadata(ns.proc_path(procfs, ""))
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m).to_string())
        .unwrap_or_default();
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    const C64: &str = "0a3be5681276a5aca7ff3e167f6977ca851b49501d71bd547ae147f3249f70fd";
    const UID: &str = "1f2e3d4c-5b6a-4798-8a7b-6c5d4e3f2a1b";

    fn h(runtime: &str, id: &str, pod: &str) -> (String, String, String) {
        (runtime.to_owned(), id.to_owned(), pod.to_owned())
    }

    fn of(path: &str) -> (String, String, String) {
        let x = from_cgroup_path(path);
        (x.runtime, x.container_id, x.pod_uid)
    }

    #[test]
    fn cgroup_paths_name_their_container_and_pod() {
        let pod_slice = format!("kubepods-burstable-pod{}.slice", UID.replace('-', "_"));
        let cases = [
            (format!("/system.slice/docker-{C64}.scope"), h("docker", C64, "")),
            (format!("/docker/{C64}"), h("docker", C64, "")),
            (format!("/machine.slice/libpod-{C64}.scope/container"), h("podman", C64, "")),
            (format!("/libpod_parent/libpod-{C64}"), h("podman", C64, "")),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{C64}.scope/container"
                ),
                h("podman", C64, ""),
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/user.slice/podman-pause-1a2b3c.scope".into(),
                h("podman", "", ""),
            ),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/{pod_slice}/cri-containerd-{C64}.scope"),
                h("containerd", C64, UID),
            ),
            (format!("/kubepods.slice/{pod_slice}/crio-{C64}.scope"), h("cri-o", C64, UID)),
            (format!("/kubepods/burstable/pod{UID}/{C64}"), h("", C64, UID)),
            ("/system.slice/concourse-worker.service".into(), h("", "", "")),
            ("/".into(), h("", "", "")),
            (format!("/system.slice/crio-conmon-{C64}.scope"), h("", "", "")),
            ("/system.slice/docker-notanid.scope".into(), h("", "", "")),
        ];
        for (path, want) in cases {
            assert_eq!(of(&path), want, "{path}");
        }
    }

    #[test]
    fn the_unified_line_else_systemd_else_the_first() {
        assert_eq!(cgroup_path("0::/a/b\n"), Some("/a/b"));
        assert_eq!(cgroup_path("12:memory:/m\n1:name=systemd:/s\n0::/\n"), Some("/"));
        assert_eq!(cgroup_path("12:memory:/m\n1:name=systemd:/s\n"), Some("/s"));
        assert_eq!(cgroup_path("12:memory:/m\n"), Some("/m"));
        assert_eq!(cgroup_path("garbage"), None);
        assert_eq!(cgroup_path(""), None);
    }
}
