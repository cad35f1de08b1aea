//! What each fix would have avoided, per mount (the copy-up collector calls
//! [`avoidable_families`] with each reading), and what overlay offers the
//! fixes on this kernel ([`KernelFeatureCollector`]). The rules are in
//! crate::diagnosis.

use std::collections::BTreeMap;

use prometheus::proto::MetricType;

use super::{Collector, Def, Family};
use crate::diagnosis::{avoidable, avoidable::ByCauseKind, MountFacts};
use crate::discovery::{Device, MountLabel};
use crate::identity::MountView;
use crate::kernel::features::OverlayFeatures;
use crate::probes::maps::MapReading;

static AVOIDABLE_SECONDS: Def = Def {
    name: "overlayfs_copy_up_avoidable_seconds_total",
    help: "Time spent in copy-ups that a fix would have avoided, by fix (each fix counted on its own: do not add fixes up). Rules: docs/metrics.md.",
    kind: MetricType::COUNTER,
    labels: &["mountpoint", "mntns", "fix"],
};
static AVOIDABLE_BYTES: Def = Def {
    name: "overlayfs_copy_up_avoidable_data_bytes_total",
    help: "Bytes of file data copied up that a fix would have avoided, by fix (each fix counted on its own: do not add fixes up). Rules: docs/metrics.md.",
    kind: MetricType::COUNTER,
    labels: &["mountpoint", "mntns", "fix"],
};
static KERNEL_FEATURE: Def = Def {
    name: "overlayfs_kernel_feature_info",
    help: "What this kernel's overlay offers the fixes: feature metacopy (the module parameter exists) or idmapped_layers (Linux 5.19+); supported true, false or unknown (overlay not loaded); always 1.",
    kind: MetricType::GAUGE,
    labels: &["feature", "supported"],
};

/// The facts of a mount the rules read.
fn facts(view: &MountView, dev: Device) -> Option<MountFacts> {
    let m = view.table.mounts.get(&dev)?;
    let id = view.identities.get(&dev);
    let runtime = id.map(|i| i.runtime.as_str()).unwrap_or("");
    let has_container = id.is_some_and(|i| !i.container_id.is_empty());
    let build = runtime == "buildkit" || (!has_container && matches!(runtime, "podman" | "docker"));
    Some(MountFacts {
        metacopy: m.options.metacopy,
        nfs_export: m.options.nfs_export,
        userxattr: m.options.userxattr,
        idmapped_lowers: view.identities.idmapped_lowers(&dev),
        container: has_container && !build,
        build,
        userns: id.is_some_and(|i| i.userns),
    })
}

/// The avoidable families of one reading. Devices not in the mount table have
/// no facts and no saving.
pub fn avoidable_families(reading: &MapReading, view: &MountView) -> Vec<Family> {
    let mut by_dev: BTreeMap<u32, ByCauseKind> = BTreeMap::new();
    for (k, v) in &reading.counts {
        let f = by_dev.entry(k.dev).or_default().entry((k.cause, k.kind)).or_default();
        f.copy_ups += v.copy_ups;
        f.data_bytes += v.data_bytes;
        f.latency_ns += v.latency_ns;
        f.noop += v.noop;
    }
    let kernel = OverlayFeatures::running();
    let mut savings: BTreeMap<(MountLabel, &'static str), (u64, u64)> = BTreeMap::new();
    for (dev, figures) in &by_dev {
        let dev = Device::from_kernel(*dev);
        let Some(m) = facts(view, dev) else { continue };
        let label = view.table.labels_of(dev);
        for (fix, s) in avoidable(figures, &m, &kernel) {
            let e = savings.entry((label.clone(), fix.name())).or_default();
            e.0 += s.latency_ns;
            e.1 += s.data_bytes;
        }
    }
    let mut seconds = Family::new(&AVOIDABLE_SECONDS);
    let mut bytes = Family::new(&AVOIDABLE_BYTES);
    for ((l, fix), (ns, b)) in &savings {
        seconds.add(&[&l.mountpoint, &l.mntns, fix], *ns as f64 * 1e-9);
        bytes.add(&[&l.mountpoint, &l.mntns, fix], *b as f64);
    }
    vec![seconds, bytes]
}

/// `overlayfs_kernel_feature_info`, read at each scrape (two stats).
pub struct KernelFeatureCollector;

impl Collector for KernelFeatureCollector {
    fn collect(&self) -> Vec<Family> {
        let k = OverlayFeatures::running();
        let mut f = Family::new(&KERNEL_FEATURE);
        f.add(&["metacopy", k.metacopy.label()], 1.0);
        f.add(&["idmapped_layers", k.idmapped_layers.label()], 1.0);
        vec![f]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{group_by_superblock, mountinfo, MountTable};
    use crate::identity::Resolver;
    use overlay_agent_common::{cause, kind, CountKey, CountValue};

    /// A BuildKit step's mount and a metacopy=on mount with one no-op chown
    /// of three: the families carry each mount's labels and only the fixes
    /// that apply; skip_noop takes the kernel's no-op count.
    #[test]
    fn families_join_the_reading_to_the_mounts_facts() {
        let lines = "1 2 0:50 / /var/lib/buildkit/runc-overlayfs/executor/ab/rootfs rw - overlay overlay rw,lowerdir=/l,upperdir=/var/lib/buildkit/runc-overlayfs/snapshots/snapshots/12/fs,workdir=/w\n\
                     2 2 0:51 / /srv/m rw - overlay overlay rw,lowerdir=/l2,upperdir=/u2,workdir=/w2,metacopy=on\n";
        let table = MountTable {
            mounts: group_by_superblock(mountinfo::parse(lines.as_bytes()).0, |_| true, None),
            ..Default::default()
        };
        let identities =
            Resolver::new(std::path::Path::new("/nonexistent"), std::path::Path::new("/proc"), &[])
                .inventory(&table, None);
        let view = MountView { table, identities };
        let mut reading = MapReading::default();
        let v = CountValue { copy_ups: 3, data_bytes: 3000, latency_ns: 3_000_000_000, ..Default::default() };
        for dev in [50u32, 51, 99] {
            let v = if dev == 51 { CountValue { noop: 1, ..v } } else { v };
            reading.counts.insert(CountKey { dev, cause: cause::CHOWN, kind: kind::DATA, _pad: [0; 2] }, v);
        }
        struct Fixed(MapReading, MountView);
        impl Collector for Fixed {
            fn collect(&self) -> Vec<Family> {
                avoidable_families(&self.0, &self.1)
            }
        }
        let exposition = crate::metrics::Exposition::default();
        exposition.register(Box::new(Fixed(reading, view)));
        let text = String::from_utf8(exposition.render()).expect("utf-8");
        let text: Vec<String> = text.lines().map(str::to_owned).collect();
        let mp = "/var/lib/buildkit/runc-overlayfs/executor/ab/rootfs";
        assert!(
            text.contains(&format!(
                "overlayfs_copy_up_avoidable_seconds_total{{mountpoint=\"{mp}\",fix=\"copy_chown\"}} 3"
            )),
            "{text:#?}"
        );
        assert!(
            text.contains(&format!(
                "overlayfs_copy_up_avoidable_data_bytes_total{{mountpoint=\"{mp}\",fix=\"copy_chown\"}} 3000"
            )),
            "{text:#?}"
        );
        let srv_m: Vec<&String> = text.iter().filter(|l| l.contains("/srv/m")).collect();
        assert_eq!(
            srv_m,
            [
                "overlayfs_copy_up_avoidable_data_bytes_total{mountpoint=\"/srv/m\",fix=\"skip_noop\"} 1000",
                "overlayfs_copy_up_avoidable_seconds_total{mountpoint=\"/srv/m\",fix=\"skip_noop\"} 1",
            ],
            "metacopy=on, not a build: only the no-op share"
        );
        assert!(!text.iter().any(|l| l.contains("unknown")), "no facts, no saving: {text:#?}");
    }
}
