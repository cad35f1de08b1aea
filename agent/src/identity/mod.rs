//! Who a mount belongs to: the container runtime and container, recognised from
//! where runtimes put their overlays and read from the runtime's own state on disk.
//! Runs after discovery (when the mount table changes) and produces an
//! [`Inventory`] keyed by device, published with its [`MountTable`] as one
//! [`MountView`]; exposed only as
//! labels of `overlayfs_mount_info`, so other series keep just `mountpoint` and
//! cardinality stays one series per mount.
//!
//! One file per runtime family, tried in this order after the user's rules:
//! [`storage`] (podman, CRI-O), [`docker`] (overlay2 and the containerd image
//! store), [`concourse`] (baggageclaim volumes in init/, live/ and dead/),
//! [`containerd`] (task rootfs), [`buildkit`]; then [`kubernetes`] names the
//! pods of the containers found.

mod buildkit;
mod concourse;
mod containerd;
mod docker;
mod holder;
mod kubernetes;
pub mod root;
mod storage;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::Deserialize;

use crate::discovery::{Device, Dirty, LayerPath, Mount, MountNs, MountTable};
use crate::pattern::PathRegex;
use crate::sync::RwLockExt;
pub use holder::Holder;
use root::StateRoot;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    /// `podman`, `cri-o`, `docker`, `containerd`, `concourse`, `buildkit`, or a rule's name.
    pub runtime: String,
    pub container_id: String,
    pub container_name: String,
    /// containerd: the namespace of the container (`default`, `k8s.io`, `moby`), else "".
    pub containerd_namespace: String,
    /// Concourse: whether the volume is privileged ("true"/"false"), else "".
    pub privileged: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    /// Not final yet: a Concourse volume still in init/, whose privileged.json
    /// may not be written yet. See [`Inventory::outdated`].
    #[serde(skip)]
    pub settling: bool,
    /// A host path that exists for as long as this identity holds: a Concourse
    /// volume's directory, which baggageclaim renames (init/ -> live/ -> dead/)
    /// while the overlay stays mounted. mountinfo does not announce renames.
    #[serde(skip)]
    pub renamed_unless_exists: Option<PathBuf>,
}

impl Identity {
    /// Whether this identity may have changed since it was read: still
    /// settling, or a directory it was read from has been renamed. Stats one
    /// path at most.
    pub fn outdated(&self) -> bool {
        self.settling
            || self.renamed_unless_exists.as_ref().is_some_and(|p| std::fs::symlink_metadata(p).is_err())
    }

    fn new(runtime: &str, container_id: impl Into<String>, container_name: impl Into<String>) -> Self {
        Identity {
            runtime: runtime.to_owned(),
            container_id: container_id.into(),
            container_name: container_name.into(),
            ..Default::default()
        }
    }
}

/// The identities of a mount table's mounts, keyed by device: identity's output,
/// beside discovery's [`MountTable`]; the metrics join the two. Mounts no layout
/// recognises have no entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inventory {
    by_device: BTreeMap<Device, Identity>,
    /// Who holds each mount namespace that has an overlay (not the host's).
    /// By namespace and the process it is read through.
    holders: BTreeMap<MountNs, Holder>,
}

impl Inventory {
    /// Who holds the namespace of mount `m` (None for the host's).
    pub fn holder(&self, m: &Mount) -> Option<&Holder> {
        self.holders.get(&m.namespace?)
    }

    pub fn get(&self, device: &Device) -> Option<&Identity> {
        self.by_device.get(device)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Device, &Identity)> {
        self.by_device.iter()
    }

    /// Whether [`MountView::outdated`] has anything to check.
    pub fn watched(&self) -> bool {
        self.by_device.values().any(|i| i.settling || i.renamed_unless_exists.is_some())
    }
}

/// One mount table and the identities of its mounts: what discovery and
/// identity produce together, and what every collector reads.
#[derive(Debug, Clone, Default)]
pub struct MountView {
    pub table: MountTable,
    pub identities: Inventory,
}

impl MountView {
    /// The mount tables to read again because an identity read from them may
    /// have changed without a mount table change (a Concourse volume renamed
    /// from init/ to live/, or still settling in init/): the daemon asks every
    /// second, instead of waiting for the resync interval. Only the namespaces
    /// of those mounts are marked.
    pub fn outdated(&self) -> Dirty {
        let mut dirty = Dirty::default();
        for (dev, _) in self.identities.iter().filter(|(_, i)| i.outdated()) {
            match self.table.mounts.get(dev).and_then(|m| m.namespace) {
                Some(ns) => {
                    dirty.namespaces.insert(ns.id);
                }
                None => dirty.reference = true,
            }
        }
        dirty
    }
}

/// The current [`MountView`], published whole: a scrape sees a table with the
/// identities read for that table, never an older table with a newer inventory.
#[derive(Debug, Clone, Default)]
pub struct SharedMountView(Arc<RwLock<Arc<MountView>>>);

impl SharedMountView {
    pub fn get(&self) -> Arc<MountView> {
        self.0.read_now().clone()
    }

    pub fn set(&self, snapshot: MountView) {
        *self.0.write_now() = Arc::new(snapshot);
    }
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
    pub regex: PathRegex,
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

/// A built-in layout's pattern. Constant patterns, each covered by the tests.
fn builtin(pattern: &str) -> regex::Regex {
    regex::Regex::new(pattern).unwrap_or_else(|e| panic!("identity pattern {pattern}: {e}"))
}

/// What a layout sees of a mount: its mountpoint and upper dir as labels, and
/// where the runtime's state files are (the host's root, or the root of the
/// mount's namespace).
pub(crate) struct Subject<'a> {
    pub mountpoint: String,
    pub upper: String,
    pub root: &'a StateRoot,
}

impl Subject<'_> {
    /// A path of the mount's namespace as the agent reaches it.
    pub fn path(&self, p: &str) -> PathBuf {
        self.root.path(p)
    }

    /// A JSON file of the runtime's state; None when absent or unreadable (logged at debug).
    pub fn read_json<T: serde::de::DeserializeOwned>(&self, p: &str) -> Option<T> {
        let bytes = self.root.read(p).ok()?;
        serde_json::from_slice(&bytes)
            .map_err(
                |e| tracing::debug!(path = %self.path(p).display(), error = %e, "unreadable runtime state"),
            )
            .ok()
    }
}

/// One runtime family's layouts.
trait Layout: Send + Sync {
    fn identify(&self, s: &Subject) -> Option<Identity>;

    /// Drops the runtime state read while identifying one mount table (state
    /// files shared by many mounts are read once per table, not once per mount).
    fn forget(&self) {}
}

/// Identifies mounts; `rootfs` is where the host's / is visible (runtime state
/// files are read under it).
pub struct Resolver {
    rootfs: PathBuf,
    procfs: PathBuf,
    rules: Vec<IdentityRule>,
    layouts: Vec<Box<dyn Layout>>,
}

impl Resolver {
    pub fn new(rootfs: &Path, procfs: &Path, rules: &[IdentityRule]) -> Self {
        Resolver {
            rootfs: rootfs.to_owned(),
            procfs: procfs.to_owned(),
            rules: rules.to_vec(),
            // Mountpoint layouts first; the upper-dir fallbacks (Docker's and
            // BuildKit's snapshot dirs, for mounts outside a container) last.
            layouts: vec![
                Box::new(storage::Storage::new()),
                Box::new(docker::Docker::new()),
                Box::new(concourse::Concourse::new()),
                Box::new(containerd::Containerd::new()),
                Box::new(buildkit::BuildKit::new()),
                Box::new(docker::DockerSnapshots::new()),
            ],
        }
    }

    /// Identifies every mount of a table; the Kubernetes index is built once, and
    /// only when some mount belongs to a container.
    /// The identity of every mount of `table`, and the holder of every namespace
    /// with a mount. A holder found in `previous` for the same namespace and
    /// process is kept: it is read once per namespace process (its cgroup, comm
    /// and owner), not at every change of the node's mount tables.
    pub fn inventory(&self, table: &MountTable, previous: Option<&Inventory>) -> Inventory {
        self.forget();
        let mut by_device: BTreeMap<Device, Identity> =
            table.mounts.iter().filter_map(|(dev, m)| Some((*dev, self.identify_mount(m)?))).collect();
        self.forget();
        if by_device.values().any(|i| !i.container_id.is_empty()) {
            let pods = kubernetes::Pods::read(&self.rootfs);
            for i in by_device.values_mut() {
                pods.label(i);
            }
        }
        Inventory { by_device, holders: self.holders(table, previous) }
    }

    /// The holder of every namespace that has a mount in `table`.
    fn holders(&self, table: &MountTable, previous: Option<&Inventory>) -> BTreeMap<MountNs, Holder> {
        let namespaces: BTreeSet<MountNs> = table.mounts.values().filter_map(|m| m.namespace).collect();
        let known = |ns: &MountNs| previous.and_then(|p| p.holders.get(ns)).cloned();
        let mut holders: BTreeMap<MountNs, Holder> = namespaces
            .into_iter()
            .map(|ns| (ns, known(&ns).unwrap_or_else(|| holder::holder_of(&self.procfs, ns))))
            .collect();
        if holders.values().any(|h| !h.pod_uid.is_empty()) {
            let names = kubernetes::pod_names(&self.rootfs);
            for h in holders.values_mut() {
                if let Some((ns, name)) = names.get(&h.pod_uid) {
                    (h.pod_namespace, h.pod_name) = (ns.clone(), name.clone());
                }
            }
        }
        holders
    }

    /// The primary mountpoint decides, unless it names no container and a bind
    /// mount of the same superblock does: BuildKit mounts a build step's snapshot
    /// under its worker directory, then binds it at `executor/<id>/rootfs`.
    pub fn identify(&self, m: &Mount) -> Option<Identity> {
        let i = self.identify_mount(m);
        self.forget();
        i
    }

    fn forget(&self) {
        for l in &self.layouts {
            l.forget();
        }
    }

    fn identify_mount(&self, m: &Mount) -> Option<Identity> {
        let upper = m.options.upper.as_ref().map(LayerPath::label).unwrap_or_default();
        let root = match m.namespace {
            Some(ns) => StateRoot::namespace(&self.procfs, ns),
            None => StateRoot::host(&self.rootfs),
        };
        let mut first = None;
        for mp in std::iter::once(&m.mountpoint).chain(&m.other_mountpoints) {
            let s =
                Subject { mountpoint: crate::discovery::path_label(mp), upper: upper.clone(), root: &root };
            match self.identify_at(&s) {
                Some(i) if !i.container_id.is_empty() => return Some(i),
                Some(i) => first = first.or(Some(i)),
                None => {}
            }
        }
        first
    }

    fn identify_at(&self, s: &Subject) -> Option<Identity> {
        for r in &self.rules {
            let subject = match r.source {
                RuleSource::Mountpoint => &s.mountpoint,
                RuleSource::Upperdir => &s.upper,
            };
            if let Some((container_id, container_name)) = capture(r.regex.regex(), subject) {
                return Some(Identity::new(&r.runtime, container_id, container_name));
            }
        }
        self.layouts.iter().find_map(|l| l.identify(s))
    }
}

#[cfg(test)]
mod tests;
