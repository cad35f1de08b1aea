//! Collector for discovery's health: reads and failed reads of mountinfo, the
//! lines of the last read that could not be parsed, and the mount namespaces
//! read (how many, how changes in them are seen, those beyond the cap).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus::proto::MetricType;

use super::{Collector, Def, Family};
use crate::discovery::node::ReadStats;
use crate::discovery::watch::Mechanism;
use crate::discovery::Census;
use crate::identity::SharedMountView;

static READS: Def = Def {
    name: "overlayfs_discovery_reads_total",
    help: "Reads of mountinfo (at start, on kernel change notifications and on the resync timer).",
    kind: MetricType::COUNTER,
    labels: &[],
};
static ERRORS: Def = Def {
    name: "overlayfs_discovery_errors_total",
    help: "Reads of mountinfo that failed; the last good mount table is kept.",
    kind: MetricType::COUNTER,
    labels: &[],
};
static BAD_LINES: Def = Def {
    name: "overlayfs_discovery_bad_lines",
    help: "Overlay lines of mountinfo that could not be parsed in the last read.",
    kind: MetricType::GAUGE,
    labels: &[],
};

static NAMESPACES: Def = Def {
    name: "overlayfs_discovery_namespaces",
    help: "Mount namespaces whose mount tables are read (the host's included; discovery.mount_namespaces).",
    kind: MetricType::GAUGE,
    labels: &[],
};
static OVER_CAP: Def = Def {
    name: "overlayfs_discovery_namespaces_over_cap",
    help: "Mount namespaces found beyond discovery.max_namespaces at the last census: not read, their overlays not seen.",
    kind: MetricType::GAUGE,
    labels: &[],
};
static CENSUSES: Def = Def {
    name: "overlayfs_discovery_censuses_total",
    help: "Listings of the processes' mount namespaces (every discovery.namespace_interval, and when a watched namespace's process exits).",
    kind: MetricType::COUNTER,
    labels: &[],
};
static NS_READS: Def = Def {
    name: "overlayfs_discovery_namespace_reads_total",
    help: "Reads of one mount namespace's mountinfo (a new namespace, a change in it, the resync).",
    kind: MetricType::COUNTER,
    labels: &[],
};
static NS_ERRORS: Def = Def {
    name: "overlayfs_discovery_namespace_read_errors_total",
    help: "Reads of a mount namespace's mountinfo that failed (its process exited since the census, a table over 64 MiB).",
    kind: MetricType::COUNTER,
    labels: &[],
};
static WATCH: Def = Def {
    name: "overlayfs_discovery_watch_info",
    help: "How changes in other mount namespaces are seen; always 1. notify: at once (POLLPRI on their mountinfo, pidfds); poll: at each census (no pidfd, before Linux 5.3); none: not read (discovery.mount_namespaces off, or no namespace link readable).",
    kind: MetricType::GAUGE,
    labels: &["mechanism"],
};

/// Discovery counters, written by the discovery loop.
#[derive(Debug, Default)]
pub struct DiscoveryStats {
    pub reads: AtomicU64,
    pub errors: AtomicU64,
    namespaces: AtomicUsize,
    over_cap: AtomicUsize,
    censuses: AtomicU64,
    ns_reads: AtomicU64,
    ns_errors: AtomicU64,
    /// 0 none, 1 notify, 2 poll.
    mechanism: AtomicUsize,
}

impl DiscoveryStats {
    /// Records one read; returns the namespaces over the cap when that number
    /// rose from zero (for one log line).
    /// `namespaces_read`: whether other namespaces were read (else the
    /// reference table alone was).
    pub fn record(&self, census: &Census, read: &ReadStats, namespaces_read: bool) -> Option<usize> {
        if read.census {
            self.censuses.fetch_add(1, Ordering::Relaxed);
        }
        let n = if namespaces_read { census.all().count() } else { 1 };
        self.namespaces.store(n, Ordering::Relaxed);
        self.ns_reads.fetch_add(read.refresh.read as u64, Ordering::Relaxed);
        self.ns_errors.fetch_add(read.refresh.failed.len() as u64, Ordering::Relaxed);
        let before = self.over_cap.swap(census.over_cap, Ordering::Relaxed);
        (before == 0 && census.over_cap > 0).then_some(census.over_cap)
    }

    /// How changes in other namespaces are seen: `None` when they are not read.
    pub fn set_mechanism(&self, m: Option<Mechanism>) {
        let v = match m {
            None => 0,
            Some(Mechanism::Notify) => 1,
            Some(Mechanism::Poll) => 2,
        };
        self.mechanism.store(v, Ordering::Relaxed);
    }
}

pub struct DiscoveryCollector {
    mounts: SharedMountView,
    stats: Arc<DiscoveryStats>,
}

impl DiscoveryCollector {
    pub fn new(mounts: SharedMountView, stats: Arc<DiscoveryStats>) -> Self {
        DiscoveryCollector { mounts, stats }
    }
}

impl Collector for DiscoveryCollector {
    fn collect(&self) -> Vec<Family> {
        let mut reads = Family::new(&READS);
        reads.add(&[], self.stats.reads.load(Ordering::Relaxed) as f64);
        let mut errors = Family::new(&ERRORS);
        errors.add(&[], self.stats.errors.load(Ordering::Relaxed) as f64);
        let mut bad = Family::new(&BAD_LINES);
        bad.add(&[], self.mounts.get().table.bad_lines.len() as f64);
        let st = &self.stats;
        let gauge = |def: &'static Def, v: f64| {
            let mut f = Family::new(def);
            f.add(&[], v);
            f
        };
        let mut watch = Family::new(&WATCH);
        let mechanism = ["none", "notify", "poll"].get(st.mechanism.load(Ordering::Relaxed)).copied();
        watch.add(&[mechanism.unwrap_or("none")], 1.0);
        vec![
            reads,
            errors,
            bad,
            gauge(&NAMESPACES, st.namespaces.load(Ordering::Relaxed) as f64),
            gauge(&OVER_CAP, st.over_cap.load(Ordering::Relaxed) as f64),
            gauge(&CENSUSES, st.censuses.load(Ordering::Relaxed) as f64),
            gauge(&NS_READS, st.ns_reads.load(Ordering::Relaxed) as f64),
            gauge(&NS_ERRORS, st.ns_errors.load(Ordering::Relaxed) as f64),
            watch,
        ]
    }
}
