//! Collector for the mount table: which overlays exist and how they are built.

use prometheus::proto::MetricType;

use super::mount_labels::LabelCache;
use super::{Collector, Def, Family};
use crate::discovery::{LayerPath, OverlayOptions};
use crate::identity::SharedMountView;

static MOUNTS: Def = Def {
    name: "overlayfs_mounts",
    help: "Number of overlay superblocks the agent watches (after include/exclude filters).",
    kind: MetricType::GAUGE,
    labels: &[],
};
static INFO: Def = Def {
    name: "overlayfs_mount_info",
    help: "Overlay mount metadata; always 1. Join on mountpoint and mntns for the other overlayfs_ series. mntns_* name the container, pod or process holding the mount namespace (left out for the host's).",
    kind: MetricType::GAUGE,
    labels: &[
        "mountpoint",
        "mntns",
        "device",
        "upperdir",
        "workdir",
        "readonly",
        "metacopy",
        "index",
        "redirect_dir",
        "xino",
        "volatile",
        "fsync",
        "userxattr",
        "idmapped_lowers",
        "runtime",
        "container_id",
        "container_name",
        "image",
        "containerd_namespace",
        "privileged",
        "pod_namespace",
        "pod_name",
        "pod_uid",
        "mntns_runtime",
        "mntns_container_id",
        "mntns_pod_namespace",
        "mntns_pod_name",
        "mntns_pod_uid",
        "mntns_process",
        "mntns_uid",
    ],
};
static LOWER: Def = Def {
    name: "overlayfs_mount_lower_layers",
    help: "Number of lower layers of the overlay (data-only layers not included).",
    kind: MetricType::GAUGE,
    labels: &["mountpoint", "mntns"],
};
static DATA: Def = Def {
    name: "overlayfs_mount_data_layers",
    help: "Number of data-only lower layers of the overlay (lowerdir '::' or datadir+).",
    kind: MetricType::GAUGE,
    labels: &["mountpoint", "mntns"],
};
static RELATIVE: Def = Def {
    name: "overlayfs_mount_relative_paths",
    help: "Layer paths given relative to the mounter's working directory; they cannot be located, so a relative upperdir is not scanned.",
    kind: MetricType::GAUGE,
    labels: &["mountpoint", "mntns"],
};
static MOUNTPOINTS: Def = Def {
    name: "overlayfs_mount_mountpoints",
    help: "Number of places the overlay is mounted: 1 + bind mounts + places in other mount namespaces (a container's root, binds into containers).",
    kind: MetricType::GAUGE,
    labels: &["mountpoint", "mntns"],
};

/// Joins discovery's mount table with identity's inventory, by device, both
/// from one snapshot.
pub struct MountCollector {
    mounts: SharedMountView,
    labels: LabelCache,
}

impl MountCollector {
    /// `labels`: shared with the upper-dir collector.
    pub fn new(mounts: SharedMountView, labels: LabelCache) -> Self {
        MountCollector { mounts, labels }
    }
}

fn on_off(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "on",
        Some(false) => "off",
        None => "",
    }
}

/// The `fsync=` mode (`volatile`, `auto`, `strict`; 7.0, backported to 6.12): it
/// decides whether a copy-up waits for an fsync. The older `volatile` flag is
/// `fsync=volatile`; "" when the kernel prints neither (its default applies).
fn fsync(o: &OverlayOptions) -> &str {
    match o.fsync.as_deref() {
        Some(mode) => mode,
        None if o.volatile => "volatile",
        None => "",
    }
}

fn bool_str(v: bool) -> &'static str {
    if v {
        "true"
    } else {
        "false"
    }
}

impl Collector for MountCollector {
    fn collect(&self) -> Vec<Family> {
        let snapshot = self.mounts.get();
        let (table, identities) = (&snapshot.table, &snapshot.identities);
        let labels = self.labels.get(&snapshot);
        let mut count = Family::new(&MOUNTS);
        let mut info = Family::per_mount(&INFO, &labels);
        let mut lower = Family::per_mount(&LOWER, &labels);
        let mut data = Family::per_mount(&DATA, &labels);
        let mut relative = Family::per_mount(&RELATIVE, &labels);
        let mut mountpoints = Family::per_mount(&MOUNTPOINTS, &labels);
        count.add(&[], table.mounts.len() as f64);
        for (i, l) in labels.iter() {
            let Some(m) = table.mounts.get(&l.device) else { continue };
            let o = &m.options;
            let upper = o.upper.as_ref().map(LayerPath::label).unwrap_or_default();
            let work = o.work.as_ref().map(LayerPath::label).unwrap_or_default();
            let device = m.device.to_string();
            let id = identities.get(&m.device);
            let holder = identities.holder(m);
            info.add_for_mount(
                i,
                &[
                    &device,
                    &upper,
                    &work,
                    bool_str(m.read_only || o.upper.is_none()),
                    on_off(o.metacopy),
                    on_off(o.index),
                    o.redirect_dir.as_deref().unwrap_or(""),
                    o.xino.as_deref().unwrap_or(""),
                    bool_str(o.is_volatile()),
                    fsync(o),
                    bool_str(o.userxattr),
                    bool_str(identities.idmapped_lowers(&m.device)),
                    id.map(|i| i.runtime.as_str()).unwrap_or(""),
                    id.map(|i| i.container_id.as_str()).unwrap_or(""),
                    id.map(|i| i.container_name.as_str()).unwrap_or(""),
                    id.map(|i| i.image.as_str()).unwrap_or(""),
                    id.map(|i| i.containerd_namespace.as_str()).unwrap_or(""),
                    id.map(|i| i.privileged.as_str()).unwrap_or(""),
                    id.map(|i| i.pod_namespace.as_str()).unwrap_or(""),
                    id.map(|i| i.pod_name.as_str()).unwrap_or(""),
                    id.map(|i| i.pod_uid.as_str()).unwrap_or(""),
                    holder.map(|h| h.runtime.as_str()).unwrap_or(""),
                    holder.map(|h| h.container_id.as_str()).unwrap_or(""),
                    holder.map(|h| h.pod_namespace.as_str()).unwrap_or(""),
                    holder.map(|h| h.pod_name.as_str()).unwrap_or(""),
                    holder.map(|h| h.pod_uid.as_str()).unwrap_or(""),
                    holder.map(|h| h.process.as_str()).unwrap_or(""),
                    holder.map(|h| h.uid.as_str()).unwrap_or(""),
                ],
                1.0,
            );
            lower.add_for_mount(i, &[], o.lower.len() as f64);
            data.add_for_mount(i, &[], o.data.len() as f64);
            relative.add_for_mount(i, &[], o.relative_paths() as f64);
            mountpoints.add_for_mount(i, &[], m.places() as f64);
        }
        vec![count, info, lower, data, relative, mountpoints]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{group_by_superblock, mountinfo, MountTable};
    use crate::identity::{MountView, Resolver};

    /// A table holding containerd tasks `ids` (one device each) and their identities.
    fn snapshot(ids: &[u32]) -> MountView {
        let lines: String = ids
            .iter()
            .map(|i| format!("{i} 2 0:{i} / /run/containerd/io.containerd.runtime.v2.task/ns/c{i}/rootfs rw - overlay overlay rw,lowerdir=/l,upperdir=/u{i},workdir=/w{i}\n"))
            .collect();
        let table = MountTable {
            mounts: group_by_superblock(mountinfo::parse(lines.as_bytes()).0, |_| true, None),
            ..Default::default()
        };
        let identities = Resolver::new(std::path::Path::new("/"), std::path::Path::new("/proc"), &[])
            .inventory(&table, None);
        MountView { table, identities }
    }

    /// Scrapes while the mount table flips between two sets of mounts (one
    /// appearing, one vanishing each time): every mount_info series a scrape
    /// shows carries its container's labels; none is paired with the other
    /// table's identities.
    #[test]
    fn every_scrape_pairs_a_table_with_its_own_identities() {
        let shared = SharedMountView::default();
        let (a, b) = (snapshot(&[50, 51]), snapshot(&[51, 52]));
        shared.set(a.clone());
        let exposition = crate::metrics::Exposition::default();
        exposition.register(Box::new(MountCollector::new(shared.clone(), LabelCache::default())));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut flip = false;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    shared.set(if flip { a.clone() } else { b.clone() });
                    flip = !flip;
                }
            })
        };
        for _ in 0..1000 {
            let text = String::from_utf8(exposition.render()).expect("utf-8");
            for line in text.lines().filter(|l| l.starts_with("overlayfs_mount_info{")) {
                let mp = line.split("mountpoint=\"").nth(1).and_then(|s| s.split('"').next()).expect("mp");
                let id = mp.split('/').nth_back(1).expect("id");
                assert!(line.contains(&format!("container_id=\"{id}\"")), "{line}");
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().expect("writer");
    }
}
