//! The pipeline the daemon and `once` share: discovery -> identity -> scan pool
//! -> collectors, registered once in an exposition; and the copy-up probes'
//! start-up, whose outcome the collectors publish.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::AgentError;
use crate::config::{ClassicHistograms, Config};
use crate::discovery::{Dirty, DiscoveryError, NodeDiscovery};
use crate::identity::{MountView, Resolver, SharedMountView};
use crate::metrics::{self, discovery::DiscoveryStats, server::ServerStats};
use crate::probes::{self, ProbeHandle, ProbeOptions, Probes};
use crate::scan::ScanPool;
use crate::sync::{LockExt, RwLockExt};

/// Discovery of the whole node with the config's procfs root, reach and
/// filters, then identity: the mount table and its mounts' identities.
pub fn discover(config: &Config) -> Result<MountView, DiscoveryError> {
    let mut node = NodeDiscovery::default();
    let d = &config.discovery;
    let select = |mp: &str| config.mountpoint_selected(mp);
    let (table, _) = node.read(&d.procfs, config.reach(), &Dirty::all(), true, select, None)?;
    let table = table.unwrap_or_default();
    let identities = resolver(config).inventory(&table, None);
    Ok(MountView { table, identities })
}

fn resolver(config: &Config) -> Resolver {
    Resolver::new(&config.discovery.rootfs, &config.discovery.procfs, &config.identity.rules)
}

/// Everything the collectors read, and the exposition that holds them. Every
/// collector is registered here, once, for the daemon and for `once` alike.
pub(crate) struct Pipeline {
    /// The mount table and its identities, published together by `rediscover`.
    pub mounts: SharedMountView,
    pub stats: Arc<DiscoveryStats>,
    pub pool: ScanPool,
    pub probes: Arc<ProbeHandle>,
    pub exposition: Arc<metrics::Exposition>,
    /// `ebpf.classic_histograms`, read by the copy-up collector at each scrape.
    pub classic_histograms: Arc<RwLock<ClassicHistograms>>,
    /// Discovery's state between reads (the per-namespace tables).
    node: Mutex<NodeDiscovery>,
    /// The view the scans were last scheduled for, and when.
    scheduled: Mutex<Option<(Instant, Arc<MountView>)>>,
}

/// How often the scans that came due are queued while the mount table stays the
/// same (the daemon's loop wakes every 100 ms for the namespace census; a pass
/// that finds nothing due costs a look at the due index and the scans in flight).
const SCHEDULE_EVERY: Duration = Duration::from_secs(1);

impl Pipeline {
    /// `http`: the server's figures, when there is a server (the daemon; `once`
    /// serves nothing, so it exports no HTTP families).
    pub fn new(config: &Config, http: Option<Arc<ServerStats>>) -> Result<Self, AgentError> {
        let mounts = SharedMountView::default();
        let stats = Arc::new(DiscoveryStats::default());
        let probes = Arc::new(ProbeHandle::default());
        let pool = ScanPool::new(&config.scan, probes.activity.clone())
            .map_err(|source| AgentError::Start { what: "scan threads", source })?;
        let exposition = Arc::new(metrics::Exposition::default());
        let classic_histograms = Arc::new(RwLock::new(config.ebpf.classic_histograms));
        let labels = metrics::mount_labels::LabelCache::default();
        let collectors: [Box<dyn metrics::Collector>; 7] = [
            Box::new(metrics::mounts::MountCollector::new(mounts.clone(), labels.clone())),
            Box::new(metrics::upper::UpperCollector::new(mounts.clone(), pool.store(), labels)),
            Box::new(metrics::build::BuildInfoCollector),
            Box::new(metrics::diagnosis::KernelFeatureCollector),
            Box::new(metrics::discovery::DiscoveryCollector::new(mounts.clone(), stats.clone())),
            Box::new(metrics::copyup::CopyUpCollector::new(
                mounts.clone(),
                probes.clone(),
                classic_histograms.clone(),
            )),
            Box::new(metrics::process::ProcessCollector::new(
                probes.clone(),
                config.ebpf.top_processes,
                config.ebpf.top_processes_idle,
            )),
        ];
        for c in collectors {
            exposition.register(c);
        }
        if let Some(stats) = http {
            exposition.register(Box::new(metrics::server::ServerCollector::new(stats)));
        }
        Ok(Pipeline {
            mounts,
            stats,
            pool,
            probes,
            exposition,
            classic_histograms,
            node: Mutex::default(),
            scheduled: Mutex::default(),
        })
    }

    /// Re-reads what `dirty` says changed (after a census when `census` is set
    /// or one is due); on failure keeps the previous table. The scan pool learns
    /// of the new table first, before identities are looked up: scans of mounts
    /// that left stop at once (`ScanPool::follow`).
    pub fn rediscover(&self, config: &Config, dirty: &Dirty, census: bool) -> Result<(), DiscoveryError> {
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        let start = std::time::Instant::now();
        let previous = self.mounts.get();
        let d = &config.discovery;
        let select = |mp: &str| config.mountpoint_selected(mp);
        let mut node = self.node.locked();
        let read = node.read(&d.procfs, config.reach(), dirty, census, select, Some(&previous.table));
        let (table, read) = match read {
            Ok(r) => r,
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        if let Some(n) = self.stats.record(
            node.census(),
            &read,
            table.as_ref().map_or(previous.table.namespaces_read, |t| t.namespaces_read),
        ) {
            tracing::warn!(
                over_cap = n,
                max = d.max_namespaces,
                "more mount namespaces than discovery.max_namespaces: the rest are not read"
            );
        }
        drop(node);
        let read_at = start.elapsed();
        let Some(table) = table else {
            tracing::trace!(read_us = read_at.as_micros() as u64, "mount tables unchanged");
            return Ok(());
        };
        self.pool.follow(&table);
        // Log a bad line once, not at every re-read while it stays.
        if table.bad_lines != previous.table.bad_lines {
            for bad in &table.bad_lines {
                tracing::warn!(file = %table.source.display(), line = bad.line, error = %bad.message, "unparsable mountinfo line");
            }
        }
        let followed_at = start.elapsed();
        let identities = resolver(config).inventory(&table, Some(&previous.identities));
        tracing::trace!(
            census,
            mounts = table.mounts.len(),
            read_us = read_at.as_micros() as u64,
            follow_us = (followed_at - read_at).as_micros() as u64,
            identify_us = (start.elapsed() - followed_at).as_micros() as u64,
            "mount tables read"
        );
        // Table and identities in one value: a scrape sees both old or both new.
        self.mounts.set(MountView { table, identities });
        // The previous table (unless a scrape still holds it), the tables' texts
        // and the merge's scratch are free now: give their pages back (10,000
        // mounts, 10 changes: RSS 86.0 MiB at the end without this).
        crate::memory::release_free_memory();
        Ok(())
    }

    /// The namespaces of the last census, besides the reference one.
    pub fn namespaces(&self) -> Vec<crate::discovery::MountNs> {
        self.node.locked().census().others.values().copied().collect()
    }

    /// Queues the scans that are due: at once for a new mount table (a pass over
    /// every mount), else at most every [`SCHEDULE_EVERY`] (a pass over the upper
    /// dirs that came due, [`ScanPool::schedule_due`]).
    pub fn schedule_scans(&self, config: &Config) {
        let view = self.mounts.get();
        let new_table = {
            let mut last = self.scheduled.locked();
            let same = last.as_ref().is_some_and(|(_, seen)| Arc::ptr_eq(seen, &view));
            if same && last.as_ref().is_some_and(|(at, _)| at.elapsed() < SCHEDULE_EVERY) {
                return;
            }
            if !config.scan.enabled {
                *last = None; // scans turned on by a reload start with a full pass
                return;
            }
            *last = Some((Instant::now(), view.clone()));
            !same
        };
        let roots = crate::scan::Roots { rootfs: &config.discovery.rootfs, procfs: &config.discovery.procfs };
        let (interval, timeout) = (config.scan.interval, config.scan.timeout);
        if new_table {
            self.pool.schedule(&view.table, interval, timeout, roots);
        } else {
            self.pool.schedule_due(&view.table, interval, timeout, roots);
        }
    }
}

/// Loads and attaches the copy-up probes (off the async threads: BTF parsing
/// takes a moment).
pub async fn start_probes(config: &Config, handle: &Arc<ProbeHandle>) -> Option<Probes> {
    let (config, handle) = (config.clone(), handle.clone());
    match tokio::task::spawn_blocking(move || start_probes_blocking(&config, &handle)).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "probe start-up task failed");
            None
        }
    }
}

/// Loads and attaches the copy-up probes; logs the outcome once and publishes it
/// for the collectors.
pub fn start_probes_blocking(config: &Config, handle: &ProbeHandle) -> Option<Probes> {
    if !config.ebpf.enabled {
        *handle.status.write_now() =
            probes::ProbeStatus { disabled: Some(probes::Disabled::DisabledByConfig), ..Default::default() };
        return None;
    }
    let opts = ProbeOptions { per_mount_histograms: config.ebpf.per_mount_histograms, ..Default::default() };
    let (started, status) = probes::start(&opts);
    match &status.disabled {
        None => {
            let attached = status.attachments.iter().filter(|a| a.attached).count();
            let missing: Vec<String> = status
                .attachments
                .iter()
                .filter(|a| !a.attached)
                .map(|a| format!("{}({})", a.program, a.function.unwrap_or("-")))
                .collect();
            tracing::info!(attached, ?missing, "copy-up probes attached");
        }
        Some(d) => tracing::warn!(
            reason = d.reason(),
            detail = %d,
            remedy = d.remedy(),
            "copy-up probes are off; serving mount and upper-dir metrics without them"
        ),
    }
    *handle.status.write_now() = status;
    let (probes, maps) = started?;
    *handle.maps.locked() = Some(maps);
    Some(probes)
}

/// Detaches the copy-up probes: the collectors stop reading their maps first.
pub fn stop_probes(probes: Probes, handle: &ProbeHandle) {
    *handle.maps.locked() = None;
    drop(probes);
}

pub fn waiting_for_overlay(handle: &ProbeHandle) -> bool {
    let status = handle.status.read_now();
    matches!(status.disabled, Some(probes::Disabled::NoOverlay(_)))
}
