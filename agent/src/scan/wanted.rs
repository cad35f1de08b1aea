//! The upper dirs of a mount table, and where the scan threads reach each one:
//! under the host's root, or under its own mount namespace's root.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::reach::{Join, Place};
use super::XattrNamespace;
use crate::discovery::{Mount, MountTable, UpperDir};

/// The upper dirs of a mount table: by upper dir (with its namespace), the
/// xattr namespace and the mounts that use it.
pub(super) type Wanted<'t> = HashMap<UpperDir, (XattrNamespace, Vec<&'t Mount>)>;

/// Where the agent reaches the files of mount `m`'s namespace: the host's root
/// (`rootfs`), or another namespace's root through one of its processes
/// (`<procfs>/<pid>/root`), with that namespace to join (`<procfs>/<pid>/ns/mnt`).
fn root_of(m: &Mount, roots: &Roots<'_>) -> (PathBuf, Option<Join>) {
    match m.namespace {
        None => (roots.rootfs.to_owned(), None),
        Some(ns) => (
            ns.proc_path(roots.procfs, "root"),
            Some(Join {
                root: ns.proc_path(roots.procfs, "root"),
                ns_file: ns.proc_path(roots.procfs, "ns/mnt"),
                id: ns.id.0,
            }),
        ),
    }
}

pub(super) fn upper_dirs_of<'t>(table: &'t MountTable) -> Wanted<'t> {
    let mut wanted: Wanted = HashMap::new();
    for m in table.mounts.values() {
        let Some(upper) = m.upper() else { continue };
        let ns = if m.options.userxattr { XattrNamespace::User } else { XattrNamespace::Trusted };
        let w = wanted.entry(upper).or_insert((ns, Vec::new()));
        w.0 = ns;
        w.1.push(m);
    }
    wanted
}

/// Where the agent opens an upper dir (under the first of its `mounts`' root)
/// and its work dir (the first mount's that has one): built only for the
/// scans queued, not for every mount at every schedule.
pub(super) fn places_of(upper: &UpperDir, mounts: &[&Mount], roots: &Roots<'_>) -> (Place, Option<PathBuf>) {
    let under = |m: &Mount, p: &Path| root_of(m, roots).0.join(p.strip_prefix("/").unwrap_or(p));
    let work = mounts.iter().find_map(|m| Some(under(m, m.options.work.as_ref()?.absolute()?)));
    let Some(first) = mounts.first() else {
        return (Place { path: upper.path.clone(), join: None }, work);
    };
    let (root, join) = root_of(first, roots);
    (Place { path: root.join(upper.path.strip_prefix("/").unwrap_or(&upper.path)), join }, work)
}

/// The roots paths are reached under: the host's root filesystem as the agent
/// sees it (`discovery.rootfs`), and the procfs through which other mount
/// namespaces' roots are reached (`discovery.procfs`).
#[derive(Debug, Clone, Copy)]
pub struct Roots<'a> {
    pub rootfs: &'a Path,
    pub procfs: &'a Path,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{Device, LayerPath, MountNs, NsId, OverlayOptions};

    fn mount_at(minor: u32, upper: &str, namespace: Option<MountNs>) -> Mount {
        Mount {
            mount_id: minor as i32,
            device: Device { major: 0, minor },
            mountpoint: PathBuf::from("/merged"),
            namespace,
            other_mountpoints: Vec::new(),
            elsewhere: 0,
            source: "overlay".to_owned(),
            read_only: false,
            options: OverlayOptions { upper: Some(LayerPath::Absolute(upper.into())), ..Default::default() },
        }
    }

    /// One path in two namespaces is two upper dirs, each reached under its
    /// namespace's root; a host mount under the host's root.
    #[test]
    fn an_upper_dir_is_named_and_reached_in_its_namespace() {
        let path = "/var/lib/containerd/snapshots/1/fs";
        let ns = |id, pid| Some(MountNs { id: NsId(id), pid });
        let mounts = [mount_at(1, path, None), mount_at(2, path, ns(7, 40)), mount_at(3, path, ns(8, 50))];
        let table =
            MountTable { mounts: mounts.into_iter().map(|m| (m.device, m)).collect(), ..Default::default() };
        let roots = Roots { rootfs: Path::new("/host"), procfs: Path::new("/hostproc") };
        let wanted = upper_dirs_of(&table);
        assert_eq!(wanted.len(), 3);
        let open_at = |mntns| {
            let upper = UpperDir { mntns, path: path.into() };
            places_of(&upper, &wanted[&upper].1, &roots).0
        };
        assert_eq!(open_at(None), Place::own("/host/var/lib/containerd/snapshots/1/fs"));
        let joined = |pid, id| Place {
            path: format!("/hostproc/{pid}/root/var/lib/containerd/snapshots/1/fs").into(),
            join: Some(Join {
                root: format!("/hostproc/{pid}/root").into(),
                ns_file: format!("/hostproc/{pid}/ns/mnt").into(),
                id,
            }),
        };
        assert_eq!(open_at(Some(NsId(7))), joined(40, 7));
        assert_eq!(open_at(Some(NsId(8))), joined(50, 8));
    }
}
