//! Collector for upper-dir scans, joined to the mount table by upper dir.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use prometheus::proto::MetricType;

use super::mount_labels::{LabelCache, MountLabels};
use super::{unix_seconds, Collector, Def, Family};
use crate::identity::SharedMountView;
use crate::scan::{ActivitySignal, EntryKind, ScanRecord, ScanStore};

static BYTES: Def = Def {
    name: "overlayfs_upper_bytes",
    help: "Disk space allocated to the upper dir (sum of st_blocks x 512 over distinct inodes, like du -s); from the project quota in quota mode (overlayfs_upper_usage_source_info).",
    kind: MetricType::GAUGE,
    labels: &["mountpoint", "mntns"],
};
static APPARENT: Def = Def {
    name: "overlayfs_upper_apparent_bytes",
    help: "Apparent size of the upper dir (sum of st_size over distinct inodes, like du -s -b).",
    kind: MetricType::GAUGE,
    labels: &["mountpoint", "mntns"],
};
static INODES: Def = Def {
    name: "overlayfs_upper_inodes",
    help: "Distinct inodes in the upper dir, the upper dir itself included; from the project quota in quota mode.",
    kind: MetricType::GAUGE,
    labels: &["mountpoint", "mntns"],
};
static ENTRIES: Def = Def {
    name: "overlayfs_upper_entries",
    help: "Upper-dir entries (names) by kind: dir, opaque_dir, created, copied_up, metacopy, whiteout; every name of a hard-linked inode counts.",
    kind: MetricType::GAUGE,
    labels: &["mountpoint", "mntns", "kind"],
};
static USAGE_SOURCE: Def = Def {
    name: "overlayfs_upper_usage_source_info",
    help: "Where overlayfs_upper_bytes and overlayfs_upper_inodes come from: source=quota (project quota, read every scan.quota_interval) or walk (the full walk, every scan.interval); reason: why not quota (none in quota mode).",
    kind: MetricType::GAUGE,
    labels: &["mountpoint", "mntns", "source", "reason"],
};
static USAGE_TIMESTAMP: Def = Def {
    name: "overlayfs_upper_usage_timestamp_seconds",
    help: "Unix time at which overlayfs_upper_bytes and overlayfs_upper_inodes were read (quota reading, or end of the walk).",
    kind: MetricType::GAUGE,
    labels: &["mountpoint", "mntns"],
};
static QUOTA_PROJECT: Def = Def {
    name: "overlayfs_upper_quota_project_id",
    help: "Project id whose quota gives the upper dir's bytes and inodes (quota mode only).",
    kind: MetricType::GAUGE,
    labels: &["mountpoint", "mntns"],
};
static QUOTA_READS: Def = Def {
    name: "overlayfs_scan_quota_reads_total",
    help:
        "Project quota readings of upper dirs (quotactl plus the few entries the id also covers), by result.",
    kind: MetricType::COUNTER,
    labels: &["result"],
};
static COPIED_UP_BYTES: Def = Def {
    name: "overlayfs_upper_copied_up_bytes",
    help: "Apparent size of the files in the upper dir that were copied up from a lower layer (each inode once).",
    kind: MetricType::GAUGE,
    labels: &["mountpoint", "mntns"],
};
static FS_AVAIL: Def = Def {
    name: "overlayfs_upper_filesystem_avail_bytes",
    help: "Bytes available to unprivileged users on the filesystem holding the upper dir (statvfs f_bavail).",
    kind: MetricType::GAUGE,
    labels: &["mountpoint", "mntns"],
};
static FS_SIZE: Def = Def {
    name: "overlayfs_upper_filesystem_size_bytes",
    help: "Size of the filesystem holding the upper dir (statvfs f_blocks).",
    kind: MetricType::GAUGE,
    labels: &["mountpoint", "mntns"],
};
static DURATION: Def = Def {
    name: "overlayfs_upper_scan_duration_seconds",
    help: "Duration of the last completed scan of the upper dir.",
    kind: MetricType::GAUGE,
    labels: &["mountpoint", "mntns"],
};
static TIMESTAMP: Def = Def {
    name: "overlayfs_upper_scan_timestamp_seconds",
    help: "Unix time at which the last completed scan of the upper dir ended.",
    kind: MetricType::GAUGE,
    labels: &["mountpoint", "mntns"],
};
static SCANS: Def = Def {
    name: "overlayfs_upper_scans_total",
    help: "Completed scans of the upper dir.",
    kind: MetricType::COUNTER,
    labels: &["mountpoint", "mntns"],
};
static ERRORS: Def = Def {
    name: "overlayfs_upper_scan_errors_total",
    help: "Entries (or whole scans) of the upper dir that could not be read, by reason.",
    kind: MetricType::COUNTER,
    labels: &["mountpoint", "mntns", "reason"],
};

static STALE: Def = Def {
    name: "overlayfs_upper_scan_stale",
    help: "1 when the upper dir's figures are stale: the last scan hit scan.timeout, or the current one is stuck in a filesystem call.",
    kind: MetricType::GAUGE,
    labels: &["mountpoint", "mntns"],
};

static COPY_UPS_SEEN: Def = Def {
    name: "overlayfs_upper_copy_ups_seen_total",
    help: "Files found copied-up (origin or metacopy xattr) by a scan that were not at the previous complete scan: copy-ups seen without eBPF, at the scan interval's resolution.",
    kind: MetricType::COUNTER,
    labels: &["mountpoint", "mntns"],
};
static SCAN_CPU: Def = Def {
    name: "overlayfs_scan_cpu_seconds_total",
    help: "CPU time (user and system) spent by the upper-dir scan threads.",
    kind: MetricType::COUNTER,
    labels: &[],
};
static SCAN_THROTTLED: Def = Def {
    name: "overlayfs_scan_throttled_seconds_total",
    help: "Time scan threads paused to stay within scan.max_cpu.",
    kind: MetricType::COUNTER,
    labels: &[],
};
static SCAN_BEHIND: Def = Def {
    name: "overlayfs_scan_behind_schedule_seconds",
    help: "How long the most overdue upper dir has waited past its scan interval for its scan to start (0: on schedule).",
    kind: MetricType::GAUGE,
    labels: &[],
};
static SCAN_BUDGET: Def = Def {
    name: "overlayfs_scan_cpu_budget",
    help: "CPU budget of the scan threads in cores (scan.max_cpu); absent when unlimited.",
    kind: MetricType::GAUGE,
    labels: &[],
};
static SCAN_DIRS: Def = Def {
    name: "overlayfs_scan_dirs_total",
    help: "Directories walked by scans: read (new or changed since the last scan) or cached (unchanged: names from the last scan, entries stat'ed again).",
    kind: MetricType::COUNTER,
    labels: &["how"],
};

static SCAN_PRIORITIZED: Def = Def {
    name: "overlayfs_scan_prioritized_total",
    help: "Scans of upper dirs moved ahead of idle ones because their mount changed since its last scan, by signal: copy_ups (the copy-up probes counted copy-ups on it), upper_changed (the upper dir's own mtime, ctime or inode changed).",
    kind: MetricType::COUNTER,
    labels: &["signal"],
};

static SCAN_CANCELLED: Def = Def {
    name: "overlayfs_scan_cancelled_total",
    help: "Upper-dir scans stopped, queued or running, because their mount left the mount table (unmounted, or replaced by another mount of the same upper dir); not counted in overlayfs_upper_scans_total.",
    kind: MetricType::COUNTER,
    labels: &[],
};
static UPPER_OPENS: Def = Def {
    name: "overlayfs_scan_upper_opens_total",
    help: "Upper dirs (and quota mode's directories) opened by the scan threads: via=detached, beneath a detached clone of the mount (an unmount never finds it busy), or via=plain, on the mount itself (an unmount during a scan can fail with EBUSY), with the reason the clone could not be made: no_open_tree, no_privileges, refused.",
    kind: MetricType::COUNTER,
    labels: &["via", "reason"],
};

pub struct UpperCollector {
    mounts: SharedMountView,
    store: ScanStore,
    labels: LabelCache,
}

impl UpperCollector {
    /// `labels`: shared with the mount collector.
    pub fn new(mounts: SharedMountView, store: ScanStore, labels: LabelCache) -> Self {
        UpperCollector { mounts, store, labels }
    }
}

impl Collector for UpperCollector {
    fn collect(&self) -> Vec<Family> {
        let mounts = self.mounts.get();
        let labels = self.labels.get(&mounts);
        let store = self.store.lock();
        let mut per_mount = MountFamilies::new(&labels);
        let now = std::time::Instant::now();
        let behind = store.values().map(|r| r.behind(now)).max().unwrap_or_default();
        for (i, l) in labels.iter() {
            let Some(m) = mounts.table.mounts.get(&l.device) else { continue };
            let Some(rec) = m.upper().and_then(|u| store.get(&u)) else { continue };
            per_mount.add(i, rec);
        }
        let pool = self.pool_families(behind);
        per_mount.into_vec(pool)
    }
}

/// The entry kinds in the order of their label values: each mount's `entries`
/// rows go in sorted, so the render's sort of 60,000 rows at 10,000 mounts
/// only checks them.
const KINDS_BY_NAME: [EntryKind; 6] = [
    EntryKind::CopiedUp,
    EntryKind::Created,
    EntryKind::Dir,
    EntryKind::Metacopy,
    EntryKind::OpaqueDir,
    EntryKind::Whiteout,
];

/// The families with a `mountpoint` label, one series set per scanned upper dir.
struct MountFamilies {
    bytes: Family,
    apparent: Family,
    inodes: Family,
    entries: Family,
    copied: Family,
    fs_avail: Family,
    fs_size: Family,
    duration: Family,
    timestamp: Family,
    scans: Family,
    errors: Family,
    stale: Family,
    seen: Family,
    source: Family,
    usage_ts: Family,
    project: Family,
}

impl MountFamilies {
    fn new(labels: &Arc<MountLabels>) -> Self {
        let family = |def| Family::per_mount(def, labels);
        MountFamilies {
            bytes: family(&BYTES),
            apparent: family(&APPARENT),
            inodes: family(&INODES),
            entries: Family::per_mount_rows(&ENTRIES, labels, EntryKind::ALL.len()),
            copied: family(&COPIED_UP_BYTES),
            fs_avail: family(&FS_AVAIL),
            fs_size: family(&FS_SIZE),
            duration: family(&DURATION),
            timestamp: family(&TIMESTAMP),
            scans: family(&SCANS),
            errors: family(&ERRORS),
            stale: family(&STALE),
            seen: family(&COPY_UPS_SEEN),
            source: family(&USAGE_SOURCE),
            usage_ts: family(&USAGE_TIMESTAMP),
            project: family(&QUOTA_PROJECT),
        }
    }

    /// The series of one mount's upper dir: staleness and errors always, the
    /// rest once a scan completed.
    fn add(&mut self, m: u32, rec: &ScanRecord) {
        self.stale.add_for_mount(m, &[], if rec.stale { 1.0 } else { 0.0 });
        for (reason, n) in &rec.errors_total {
            self.errors.add_for_mount(m, &[reason.as_str()], *n as f64);
        }
        let (Some(r), Some(end)) = (&rec.last, rec.last_end) else { return };
        match (&rec.quota, rec.usage) {
            (Ok(t), Some((u, at))) => {
                self.bytes.add_for_mount(m, &[], u.allocated_bytes as f64);
                self.inodes.add_for_mount(m, &[], u.inodes as f64);
                self.source.add_for_mount(m, &["quota", "none"], 1.0);
                self.usage_ts.add_for_mount(m, &[], unix_seconds(at));
                self.project.add_for_mount(m, &[], f64::from(t.project_id));
            }
            (q, _) => {
                self.bytes.add_for_mount(m, &[], r.allocated_bytes as f64);
                self.inodes.add_for_mount(m, &[], r.inodes as f64);
                let reason = q.as_ref().err().copied().unwrap_or(crate::scan::quota::Unavailable::Unknown);
                self.source.add_for_mount(m, &["walk", reason.as_str()], 1.0);
                self.usage_ts.add_for_mount(m, &[], unix_seconds(end));
            }
        }
        self.apparent.add_for_mount(m, &[], r.apparent_bytes as f64);
        for kind in KINDS_BY_NAME {
            self.entries.add_for_mount(m, &[kind.as_str()], r.entries(kind) as f64);
        }
        self.copied.add_for_mount(m, &[], r.copied_up_bytes as f64);
        self.fs_avail.add_for_mount(m, &[], r.fs_avail_bytes as f64);
        self.fs_size.add_for_mount(m, &[], r.fs_size_bytes as f64);
        self.duration.add_for_mount(m, &[], rec.last_duration.as_secs_f64());
        self.timestamp.add_for_mount(m, &[], unix_seconds(end));
        self.scans.add_for_mount(m, &[], rec.scans_total as f64);
        self.seen.add_for_mount(m, &[], rec.copy_ups_seen_total as f64);
    }

    /// All families: these, with the scan pool's (`quota_reads` first, then the
    /// rest) in the order the collector has always returned them.
    fn into_vec(self, pool: PoolFamilies) -> Vec<Family> {
        vec![
            self.bytes,
            self.source,
            self.usage_ts,
            self.project,
            pool.quota_reads,
            self.apparent,
            self.inodes,
            self.entries,
            self.copied,
            self.fs_avail,
            self.fs_size,
            self.duration,
            self.timestamp,
            self.scans,
            self.errors,
            self.stale,
            self.seen,
            pool.cpu,
            pool.throttled,
            pool.late,
            pool.cores,
            pool.dirs,
            pool.prioritized,
            pool.cancelled,
            pool.opens,
        ]
    }
}

/// The scan pool's own families (no `mountpoint` label).
struct PoolFamilies {
    quota_reads: Family,
    cpu: Family,
    throttled: Family,
    late: Family,
    cores: Family,
    dirs: Family,
    prioritized: Family,
    cancelled: Family,
    opens: Family,
}

impl UpperCollector {
    /// CPU, throttling, schedule, budget, directories, priorities and quota
    /// readings of the scan pool; `behind`: how late the most overdue upper dir is.
    fn pool_families(&self, behind: std::time::Duration) -> PoolFamilies {
        let budget = self.store.budget();
        let mut cpu = Family::new(&SCAN_CPU);
        cpu.add(&[], budget.cpu().as_secs_f64());
        let mut throttled = Family::new(&SCAN_THROTTLED);
        throttled.add(&[], budget.throttled().as_secs_f64());
        let mut late = Family::new(&SCAN_BEHIND);
        late.add(&[], behind.as_secs_f64());
        let mut cores = Family::new(&SCAN_BUDGET);
        if let Some(c) = budget.max_cpu() {
            cores.add(&[], c);
        }
        let (read, cached) = self.store.dirs();
        let mut dirs = Family::new(&SCAN_DIRS);
        dirs.add(&["read"], read as f64);
        dirs.add(&["cached"], cached as f64);
        let mut prioritized = Family::new(&SCAN_PRIORITIZED);
        for signal in ActivitySignal::ALL {
            prioritized.add(&[signal.as_str()], self.store.prioritized(signal) as f64);
        }
        let q = self.store.quota();
        let (reads, read_errors) = (q.reads.load(Relaxed), q.read_errors.load(Relaxed));
        let mut quota_reads = Family::new(&QUOTA_READS);
        quota_reads.add(&["ok"], reads.saturating_sub(read_errors) as f64);
        quota_reads.add(&["error"], read_errors as f64);
        let mut cancelled = Family::new(&SCAN_CANCELLED);
        cancelled.add(&[], self.store.cancelled() as f64);
        let mut opens = Family::new(&UPPER_OPENS);
        for (via, n) in crate::scan::reach::opens() {
            let (via, reason) = via.labels();
            opens.add(&[via, reason], n as f64);
        }
        PoolFamilies { quota_reads, cpu, throttled, late, cores, dirs, prioritized, cancelled, opens }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_kinds_by_name_are_every_kind_in_label_order() {
        let names = KINDS_BY_NAME.map(EntryKind::as_str);
        assert!(names.is_sorted(), "{names:?}");
        for kind in EntryKind::ALL {
            assert!(KINDS_BY_NAME.contains(&kind), "{kind:?}");
        }
    }
}
