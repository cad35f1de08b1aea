//! Wiring: discovery loop -> scan pool -> collectors -> HTTP, plus signals.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::Registry;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

use crate::cli::Cli;
use crate::config::Config;
use crate::discovery::{self, DiscoveryError, MountTable, SharedTable};
use crate::http::{self, HttpState};
use crate::metrics::{self, agent::DiscoveryStats};
use crate::scan::ScanPool;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("cannot start {what}: {source}")]
    Start { what: &'static str, source: std::io::Error },
}

/// Discovery with the config's procfs root and filters.
pub fn discover(config: &Config) -> Result<MountTable, DiscoveryError> {
    discovery::discover(&config.discovery.procfs, |mp| config.mountpoint_selected(mp))
}

/// Everything the collectors read, and the registry that holds them.
struct Pipeline {
    table: SharedTable,
    stats: Arc<DiscoveryStats>,
    pool: ScanPool,
    registry: Registry,
}

impl Pipeline {
    fn new(config: &Config) -> Result<Self, AgentError> {
        let table = SharedTable::default();
        let stats = Arc::new(DiscoveryStats::default());
        let pool = ScanPool::new(config.scan.concurrency)
            .map_err(|source| AgentError::Start { what: "scan threads", source })?;
        let registry = Registry::new();
        metrics::register(&registry, Box::new(metrics::mounts::MountCollector::new(table.clone())));
        metrics::register(
            &registry,
            Box::new(metrics::upper::UpperCollector::new(table.clone(), pool.store())),
        );
        metrics::register(
            &registry,
            Box::new(metrics::agent::AgentCollector::new(table.clone(), stats.clone())),
        );
        metrics::register(&registry, Box::new(prometheus::process_collector::ProcessCollector::for_self()));
        Ok(Pipeline { table, stats, pool, registry })
    }

    /// Re-reads mountinfo; on failure keeps the previous table.
    fn rediscover(&self, config: &Config) -> Result<(), DiscoveryError> {
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        match discover(config) {
            Ok(t) => {
                for bad in &t.bad_lines {
                    tracing::warn!(file = %t.source.display(), line = bad.line, error = %bad.message, "unparsable mountinfo line");
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
            self.pool.schedule(&self.table.get(), config.scan.interval, &config.discovery.rootfs);
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
    out.write_all(&metrics::render(&p.registry))
        .map_err(|source| AgentError::Start { what: "output", source })
}

/// `overlay-agent serve`: run until SIGTERM or SIGINT.
pub async fn serve(cli: &Cli, mut config: Config) -> Result<(), AgentError> {
    crate::caps::warn_if_missing();
    let p = Arc::new(Pipeline::new(&config)?);
    p.rediscover(&config)?;
    let ready = Arc::new(AtomicBool::new(true));
    p.schedule_scans(&config);

    let addr = config.web.listen_address;
    let listener = tokio::net::TcpListener::bind(addr.0)
        .await
        .map_err(|source| AgentError::Listen { addr: addr.to_string(), source })?;
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| addr.to_string());
    tracing::info!(address = %local, mounts = p.table.get().mounts.len(), "listening");

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
    let server = {
        let state = Arc::new(HttpState { registry: p.registry.clone(), ready });
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
                true
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        };
        if reread {
            last_read = Instant::now();
            let p2 = p.clone();
            let c2 = config.clone();
            match tokio::task::spawn_blocking(move || p2.rediscover(&c2)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "discovery failed; keeping the last mount table"),
                Err(e) => tracing::error!(error = %e, "discovery task failed"),
            }
        }
        p.schedule_scans(&config);
    }
    tracing::info!("shutting down");
    stop.notify_one();
    if let Err(e) = server.await {
        tracing::error!(error = %e, "HTTP server task failed");
    }
    Ok(())
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
