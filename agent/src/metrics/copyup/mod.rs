//! Collector for the eBPF copy-up maps. Counters are keyed in the kernel by
//! superblock device; here they are joined to mountpoints (`unknown` for a
//! device not in the mount table). The histograms are in `histograms`; the
//! probes' status and own counters, written beside them, in `metrics::ebpf`.

mod histograms;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use overlay_agent_common::{cause, kind};
use prometheus::proto::MetricType;

use super::{ebpf, Collector, Def, Family};
use crate::config::ClassicHistograms;
use crate::discovery::{Device, MountLabel, MountTable};
use crate::identity::SharedMountView;
use crate::probes::maps::MapReading;
use crate::probes::reading::{self, Reading};
use crate::probes::ProbeHandle;
use crate::sync::RwLockExt;

static COPY_UPS: Def = Def {
    name: "overlayfs_copy_up_total",
    help: "Copy-ups that started (counted once per file or directory copied, ancestors included), by cause and kind.",
    kind: MetricType::COUNTER,
    labels: &["mountpoint", "mntns", "cause", "kind"],
};
static DATA_BYTES: Def = Def {
    name: "overlayfs_copy_up_data_bytes_total",
    help: "Bytes of file data the kernel copied up (the length passed to the data copy), by cause.",
    kind: MetricType::COUNTER,
    labels: &["mountpoint", "mntns", "cause"],
};
static SECONDS: Def = Def {
    name: "overlayfs_copy_up_seconds_total",
    help: "Time spent in copy-ups (the writing syscall blocked until each copy-up ended), by cause.",
    kind: MetricType::COUNTER,
    labels: &["mountpoint", "mntns", "cause"],
};
static NOOP: Def = Def {
    name: "overlayfs_copy_up_noop_total",
    help: "Copy-ups by a chown, chmod or utimes that set what the file already had (owner, group, mode, times), by cause; also in overlayfs_copy_up_total.",
    kind: MetricType::COUNTER,
    labels: &["mountpoint", "mntns", "cause"],
};
static ERRORS: Def = Def {
    name: "overlayfs_copy_up_errors_total",
    help: "Copy-ups that returned an error, by cause.",
    kind: MetricType::COUNTER,
    labels: &["mountpoint", "mntns", "cause"],
};

pub struct CopyUpCollector {
    mounts: SharedMountView,
    probes: Arc<ProbeHandle>,
    /// `ebpf.classic_histograms`, which a reload may change.
    classic: Arc<RwLock<ClassicHistograms>>,
}

impl CopyUpCollector {
    pub fn new(
        mounts: SharedMountView,
        probes: Arc<ProbeHandle>,
        classic: Arc<RwLock<ClassicHistograms>>,
    ) -> Self {
        CopyUpCollector { mounts, probes, classic }
    }
}

impl Collector for CopyUpCollector {
    fn collect(&self) -> Vec<Family> {
        let status = self.probes.status.read_now().clone();
        let mut out = ebpf::status_families(&status);
        let Some(Reading { maps }) = reading::read(&self.probes) else {
            return out;
        };
        let labels = MountLabels::new(&self.mounts.get().table, &maps);
        out.extend(counter_families(&maps, &labels));
        out.extend(histograms::histogram_families(
            &maps,
            &labels,
            status.per_mount_histograms,
            *self.classic.read_now(),
        ));
        out.extend(ebpf::self_stat_families(&maps));
        out
    }
}

/// The `mountpoint` and `mntns` labels of each device in a reading, looked up
/// once per device (not once per key: 1000 mounts x 11 causes).
struct MountLabels {
    by_dev: HashMap<u32, MountLabel>,
    unknown: MountLabel,
}

impl MountLabels {
    fn new(table: &MountTable, reading: &MapReading) -> Self {
        let mut by_dev = HashMap::new();
        for dev in reading.counts.keys().map(|k| k.dev).chain(reading.hist.keys().map(|k| k.dev)) {
            by_dev.entry(dev).or_insert_with(|| table.labels_of(Device::from_kernel(dev)));
        }
        MountLabels { by_dev, unknown: MountLabel::unknown() }
    }

    fn get(&self, dev: u32) -> &MountLabel {
        self.by_dev.get(&dev).unwrap_or(&self.unknown)
    }

    /// A device in the reference namespace mounted at `mountpoint`.
    #[cfg(test)]
    fn insert(&mut self, dev: u32, mountpoint: &str) {
        self.by_dev.insert(dev, MountLabel { mountpoint: mountpoint.to_owned(), mntns: String::new() });
    }
}

/// The per-mount counters. Several devices may map to "unknown", so they are
/// summed by label set.
fn counter_families(reading: &MapReading, labels: &MountLabels) -> Vec<Family> {
    type ByCause<'a> = BTreeMap<(&'a MountLabel, &'static str), u64>;
    let mut copy_ups: BTreeMap<(&MountLabel, &str, &str), u64> = BTreeMap::new();
    let mut bytes: ByCause = BTreeMap::new();
    let mut errors: ByCause = BTreeMap::new();
    let mut seconds: ByCause = BTreeMap::new();
    let mut noop: ByCause = BTreeMap::new();
    for (k, v) in &reading.counts {
        let (l, c) = (labels.get(k.dev), cause::name(k.cause));
        *copy_ups.entry((l, c, kind::name(k.kind))).or_default() += v.copy_ups;
        *bytes.entry((l, c)).or_default() += v.data_bytes;
        *errors.entry((l, c)).or_default() += v.errors;
        *seconds.entry((l, c)).or_default() += v.latency_ns;
        // Only the causes that can set what the file has: no series of zeros for the others.
        if NOOP_CAUSES.contains(&k.cause) {
            *noop.entry((l, c)).or_default() += v.noop;
        }
    }
    let mut f_copy_ups = Family::new(&COPY_UPS);
    for ((l, c, k), n) in &copy_ups {
        f_copy_ups.add(&[&l.mountpoint, &l.mntns, c, k], *n as f64);
    }
    let by_mount_cause = |def: &'static Def, values: &ByCause, scale: f64| {
        let mut f = Family::new(def);
        for ((l, c), n) in values {
            f.add(&[&l.mountpoint, &l.mntns, c], *n as f64 * scale);
        }
        f
    };
    vec![
        f_copy_ups,
        by_mount_cause(&DATA_BYTES, &bytes, 1.0),
        // Time blocked in copy-ups per mount: the latency sums the kernel keeps per key.
        by_mount_cause(&SECONDS, &seconds, 1e-9),
        by_mount_cause(&ERRORS, &errors, 1.0),
        by_mount_cause(&NOOP, &noop, 1.0),
    ]
}

/// The causes of `overlayfs_copy_up_noop_total`.
const NOOP_CAUSES: [u8; 3] = [cause::CHOWN, cause::CHMOD, cause::UTIMES];
