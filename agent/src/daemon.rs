//! Wiring: discovery loop -> scan pool -> collectors -> HTTP, plus signals.

use crate::sync::{LockExt, RwLockExt};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

use crate::cli::Cli;
use crate::config::Config;
use crate::discovery::{self, DiscoveryError, MountTable, SharedTable};
use crate::http::{self, HttpState};
use crate::metrics::{self, agent::DiscoveryStats};
use crate::probes::{self, ProbeHandle, ProbeOptions, Probes};
use crate::scan::ScanPool;
use crate::web_config::WebConfigFile;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("cannot start {what}: {source}")]
    Start { what: &'static str, source: std::io::Error },
}

/// Discovery with the config's procfs root and filters, mounts identified.
pub fn discover(config: &Config) -> Result<MountTable, DiscoveryError> {
    let mut table = discovery::discover(&config.discovery.procfs, |mp| config.mountpoint_selected(mp))?;
    let resolver = crate::identity::Resolver::new(&config.discovery.rootfs, &config.identity.rules);
    table.identities = resolver.identify_all(table.mounts.iter().map(|(dev, m)| (*dev, m)));
    Ok(table)
}

/// Everything the metric sources read, and the exposition that holds them.
struct Pipeline {
    table: SharedTable,
    stats: Arc<DiscoveryStats>,
    pool: ScanPool,
    exposition: Arc<metrics::Exposition>,
}

impl Pipeline {
    fn new(config: &Config) -> Result<Self, AgentError> {
        let table = SharedTable::default();
        let stats = Arc::new(DiscoveryStats::default());
        let pool = ScanPool::new(config.scan.concurrency)
            .map_err(|source| AgentError::Start { what: "scan threads", source })?;
        let exposition = Arc::new(metrics::Exposition::default());
        exposition.register(Box::new(metrics::mounts::MountCollector::new(table.clone())));
        exposition.register(Box::new(metrics::upper::UpperCollector::new(table.clone(), pool.store())));
        exposition.register(Box::new(metrics::agent::AgentCollector::new(table.clone(), stats.clone())));
        Ok(Pipeline { table, stats, pool, exposition })
    }

    /// Re-reads mountinfo; on failure keeps the previous table.
    fn rediscover(&self, config: &Config) -> Result<(), DiscoveryError> {
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        match discover(config) {
            Ok(t) => {
                // Log a bad line once, not at every re-read while it stays.
                if t.bad_lines != self.table.get().bad_lines {
                    for bad in &t.bad_lines {
                        tracing::warn!(file = %t.source.display(), line = bad.line, error = %bad.message, "unparsable mountinfo line");
                    }
                }
                self.table.set(t);
                Ok(())
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn schedule_scans(&self, config: &Config) {
        if config.scan.enabled {
            self.pool.schedule(
                &self.table.get(),
                config.scan.interval,
                config.scan.timeout,
                &config.discovery.rootfs,
            );
        }
    }
}

/// `overlay-agent once`: discover, scan every upper dir, print the exposition.
pub fn once(config: &Config, out: &mut impl Write) -> Result<(), AgentError> {
    crate::caps::warn_if_missing();
    let p = Pipeline::new(config)?;
    p.rediscover(config)?;
    p.schedule_scans(config);
    p.pool.wait_idle();
    out.write_all(&p.exposition.render()).map_err(|source| AgentError::Start { what: "output", source })
}

/// `overlay-agent serve`: run until SIGTERM or SIGINT. `web` is the loaded
/// `web.config_file` (TLS and auth).
pub async fn serve(cli: &Cli, mut config: Config, web: WebConfigFile) -> Result<(), AgentError> {
    crate::caps::warn_if_missing();
    let p = Arc::new(Pipeline::new(&config)?);
    p.rediscover(&config)?;
    let ready = Arc::new(AtomicBool::new(true));
    p.schedule_scans(&config);

    let probe_handle = Arc::new(ProbeHandle::default());
    p.exposition
        .register(Box::new(metrics::copyup::CopyUpCollector::new(p.table.clone(), probe_handle.clone())));
    p.exposition.register(Box::new(metrics::process::ProcessCollector::new(
        probe_handle.clone(),
        config.ebpf.top_processes,
        config.ebpf.top_processes_idle,
    )));
    let mut copy_up_probes = start_probes(&config, &probe_handle).await;

    let addr = config.web.listen_address;
    let listener = tokio::net::TcpListener::bind(addr.0)
        .await
        .map_err(|source| AgentError::Listen { addr: addr.to_string(), source })?;
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| addr.to_string());
    tracing::info!(
        address = %local,
        tls = web.tls.is_some(),
        basic_auth = web.requires_auth(),
        mounts = p.table.get().mounts.len(),
        "listening"
    );

    let changed = Arc::new(Notify::new());
    let mountinfo = discovery::mountinfo::mountinfo_path(&config.discovery.procfs);
    let _watcher = match discovery::watch::spawn(&mountinfo, changed.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(file = %mountinfo.display(), error = %e, "cannot watch mountinfo; relying on periodic resync");
            None
        }
    };

    let start = |what, e| AgentError::Start { what, source: e };
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| start("signal handler", e))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| start("signal handler", e))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(|e| start("signal handler", e))?;

    let stop = Arc::new(Notify::new());
    let http_state = Arc::new(HttpState {
        exposition: p.exposition.clone(),
        ready,
        web: std::sync::RwLock::new(Arc::new(web)),
        max_connections: config.web.max_connections,
    });
    let server = {
        let state = http_state.clone();
        let stop = stop.clone();
        tokio::spawn(http::serve(listener, state, async move { stop.notified().await }))
    };

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_read = Instant::now();
    loop {
        let reread = tokio::select! {
            _ = changed.notified() => true,
            _ = tick.tick() => last_read.elapsed() >= config.discovery.resync_interval,
            _ = sighup.recv() => {
                reload(cli, &mut config);
                reload_web(&config, &http_state);
                true
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        };
        if reread {
            last_read = Instant::now();
            let before = p.table.get();
            let p2 = p.clone();
            let c2 = config.clone();
            match tokio::task::spawn_blocking(move || p2.rediscover(&c2)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "discovery failed; keeping the last mount table"),
                Err(e) => tracing::error!(error = %e, "discovery task failed"),
            }
            let table = p.table.get();
            if copy_up_probes.is_none() && waiting_for_overlay(&probe_handle) && !table.mounts.is_empty() {
                // The overlay module is loaded on the first overlay mount: try again.
                copy_up_probes = start_probes(&config, &probe_handle).await;
            }
            // Counters of vanished devices go with their mount. Walking the maps costs
            // a syscall per key, so only when the set of devices changed.
            if !table.mounts.keys().eq(before.mounts.keys()) {
                if let Some(maps) = probe_handle.maps.locked().as_mut() {
                    maps.forget(|dev| table.mounts.contains_key(&discovery::Device::from_kernel_dev(dev)));
                }
            }
        }
        p.schedule_scans(&config);
    }
    tracing::info!("shutting down");
    if let Some(probes) = copy_up_probes.take() {
        *probe_handle.maps.locked() = None;
        drop(probes);
        tracing::info!("copy-up probes detached");
    }
    stop.notify_one();
    if let Err(e) = server.await {
        tracing::error!(error = %e, "HTTP server task failed");
    }
    Ok(())
}

/// Loads and attaches the copy-up probes (off the async threads: BTF parsing
/// takes a moment); logs the outcome once and publishes it for the collector.
async fn start_probes(config: &Config, handle: &Arc<ProbeHandle>) -> Option<Probes> {
    if !config.ebpf.enabled {
        *handle.status.write_now() = probes::ProbeStatus {
            disabled: Some(probes::Disabled {
                code: "disabled_by_config",
                detail: "ebpf.enabled: false".into(),
            }),
            ..Default::default()
        };
        return None;
    }
    let opts = ProbeOptions { per_mount_histograms: config.ebpf.per_mount_histograms, ..Default::default() };
    let (started, status) = match tokio::task::spawn_blocking(move || probes::start(&opts)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "probe start-up task failed");
            return None;
        }
    };
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
            reason = d.code,
            detail = %d.detail,
            "copy-up probes are off; serving mount and upper-dir metrics without them"
        ),
    }
    *handle.status.write_now() = status;
    let (probes, maps) = started?;
    *handle.maps.locked() = Some(maps);
    Some(probes)
}

fn waiting_for_overlay(handle: &ProbeHandle) -> bool {
    let status = handle.status.read_now();
    status.disabled.as_ref().map(|d| d.code == "no_overlay").unwrap_or(false)
}

/// SIGHUP: re-read the web config (rotated certificates, changed users); keep the
/// running one when the file is invalid.
fn reload_web(config: &Config, state: &HttpState) {
    match WebConfigFile::from_file(config.web.config_file.as_deref()) {
        Ok(web) => *state.web.write_now() = Arc::new(web),
        Err(e) => tracing::error!(error = %e, "web config reload failed; keeping the running one"),
    }
}

/// SIGHUP: re-read the config file; keep the running config when it is invalid.
fn reload(cli: &Cli, config: &mut Config) {
    let Some(path) = &cli.config else {
        tracing::info!("SIGHUP: no --config file to reload");
        return;
    };
    match cli.effective_config() {
        Ok(new) => {
            if new.web.listen_address != config.web.listen_address {
                tracing::warn!("web.listen_address changed: takes effect at restart");
            }
            if new.web.max_connections != config.web.max_connections {
                tracing::warn!("web.max_connections changed: takes effect at restart");
            }
            if new.scan.concurrency != config.scan.concurrency {
                tracing::warn!("scan.concurrency changed: takes effect at restart");
            }
            if new.log != config.log {
                tracing::warn!("log settings changed: take effect at restart");
            }
            tracing::info!(file = %path.display(), "config reloaded");
            *config = new;
        }
        Err(e) => tracing::error!(error = %e, "config reload failed; keeping the running config"),
    }
}
