//! Collector for discovery's health: reads and failed reads of mountinfo, and
//! the lines of the last read that could not be parsed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus::proto::MetricType;

use super::{Collector, Def, Family};
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

/// Discovery counters, written by the discovery loop.
#[derive(Debug, Default)]
pub struct DiscoveryStats {
    pub reads: AtomicU64,
    pub errors: AtomicU64,
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
        vec![reads, errors, bad]
    }
}
