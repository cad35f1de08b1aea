//! Wiring: discovery loop -> scan pool -> collectors -> HTTP, plus signals.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::Notify;

use crate::cli::Cli;
use crate::config::Config;
use crate::discovery::{self, DiscoveryError};
use crate::identity::{Resolver, SharedSnapshot, Snapshot};
use crate::metrics::{self, discovery::DiscoveryStats, server::ServerStats};
use crate::probes::forget::ForgetPolicy;
use crate::probes::{self, ProbeHandle, ProbeOptions, Probes};
use crate::scan::ScanPool;
use crate::server::web_config::WebConfigFile;
use crate::server::{self, ServerState};
use crate::sync::{LockExt, RwLockExt};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("cannot start {what}: {source}")]
    Start { what: &'static str, source: std::io::Error },
}

/// Discovery with the config's procfs root and filters, then identity: the mount
/// table and its mounts' identities.
pub fn discover(config: &Config) -> Result<Snapshot, DiscoveryError> {
    let table = discovery::discover(&config.discovery.procfs, |mp| config.mountpoint_selected(mp))?;
    let identities = Resolver::new(&config.discovery.rootfs, &config.identity.rules).inventory(&table);
    Ok(Snapshot { table, identities })
}

/// Whether an identity may have changed without a mount table change (a renamed
/// Concourse volume, one still in init/): checked every second, off the async
/// threads since it stats files, and only when some identity is watched.
async fn identities_outdated(mounts: &SharedSnapshot) -> bool {
    let snapshot = mounts.get();
    if !snapshot.identities.watched() {
        return false;
    }
    tokio::task::spawn_blocking(move || snapshot.identities.outdated()).await.unwrap_or(false)
}

/// Everything the collectors read, and the exposition that holds them. Every
/// collector is registered here, once, for the daemon and for `once` alike.
struct Pipeline {
    /// The mount table and its identities, published together by `rediscover`.
    mounts: SharedSnapshot,
    stats: Arc<DiscoveryStats>,
    pool: ScanPool,
    probes: Arc<ProbeHandle>,
    exposition: Arc<metrics::Exposition>,
}

impl Pipeline {
    /// `http`: the server's figures, when there is a server (the daemon; `once`
    /// serves nothing, so it exports no HTTP families).
    fn new(config: &Config, http: Option<Arc<ServerStats>>) -> Result<Self, AgentError> {
        let mounts = SharedSnapshot::default();
        let stats = Arc::new(DiscoveryStats::default());
        let probes = Arc::new(ProbeHandle::default());
        let pool = ScanPool::new(&config.scan, probes.activity.clone())
            .map_err(|source| AgentError::Start { what: "scan threads", source })?;
        let exposition = Arc::new(metrics::Exposition::default());
        let collectors: [Box<dyn metrics::Collector>; 6] = [
            Box::new(metrics::mounts::MountCollector::new(mounts.clone())),
            Box::new(metrics::upper::UpperCollector::new(mounts.clone(), pool.store())),
            Box::new(metrics::build::BuildInfoCollector),
            Box::new(metrics::discovery::DiscoveryCollector::new(mounts.clone(), stats.clone())),
            Box::new(metrics::copyup::CopyUpCollector::new(
                mounts.clone(),
                probes.clone(),
                config.ebpf.classic_histograms,
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
        Ok(Pipeline { mounts, stats, pool, probes, exposition })
    }

    /// Re-reads mountinfo; on failure keeps the previous table.
    fn rediscover(&self, config: &Config) -> Result<(), DiscoveryError> {
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        match discover(config) {
            Ok(snapshot) => {
                // Log a bad line once, not at every re-read while it stays.
                let t = &snapshot.table;
                if t.bad_lines != self.mounts.get().table.bad_lines {
                    for bad in &t.bad_lines {
                        tracing::warn!(file = %t.source.display(), line = bad.line, error = %bad.message, "unparsable mountinfo line");
                    }
                }
                // Table and identities in one value: a scrape sees both old or both new.
                self.mounts.set(snapshot);
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
                &self.mounts.get().table,
                config.scan.interval,
                config.scan.timeout,
                &config.discovery.rootfs,
            );
        }
    }
}

/// `overlay-agent once`: discover, attach the probes (so the exposition shows the
/// eBPF state the daemon would have), scan every upper dir, print the exposition.
pub fn once(config: &Config, out: &mut impl Write) -> Result<(), AgentError> {
    crate::caps::warn_if_missing();
    let p = Pipeline::new(config, None)?;
    p.rediscover(config)?;
    let probes = start_probes_blocking(config, &p.probes);
    p.schedule_scans(config);
    p.pool.wait_idle();
    let text = p.exposition.render();
    drop(probes);
    out.write_all(&text).map_err(|source| AgentError::Start { what: "output", source })
}

/// `overlay-agent serve`: run until SIGTERM or SIGINT. `web` is the loaded
/// `web.config_file` (TLS and auth). Build everything, spawn the server, follow
/// the mount table until a stop signal, then drain.
pub async fn serve(cli: &Cli, config: Config, web: WebConfigFile) -> Result<(), AgentError> {
    let mut daemon = Daemon::build(cli, config, web).await?;
    let server = daemon.spawn_server();
    if let Err(e) = daemon.start().await {
        daemon.drain(server).await;
        return Err(e);
    }
    daemon.run().await;
    daemon.drain(server).await;
    Ok(())
}

/// The signals the daemon acts on.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> Result<Self, AgentError> {
        let install =
            |kind| signal(kind).map_err(|source| AgentError::Start { what: "signal handler", source });
        Ok(Signals {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
            hup: install(SignalKind::hangup())?,
        })
    }
}

/// What one turn of the daemon loop was woken by.
enum Wake {
    MountsChanged,
    Tick,
    Reload,
    Stop,
}

/// The running daemon: built by `build`, served by `spawn_server` (503 on
/// /readyz and /metrics until `start` has read the first mount table), driven by `run`.
struct Daemon<'a> {
    cli: &'a Cli,
    config: Config,
    pipeline: Arc<Pipeline>,
    copy_up_probes: Option<Probes>,
    http: Arc<ServerState>,
    listener: Option<tokio::net::TcpListener>,
    signals: Signals,
    mounts_changed: Arc<Notify>,
    _watcher: Option<discovery::watch::MountWatcher>,
    ready: Arc<AtomicBool>,
    /// Which map entries to forget when the mount table changes.
    forget: ForgetPolicy,
}

/// The HTTP server task and the way to stop it.
struct Server {
    task: tokio::task::JoinHandle<()>,
    stop: Arc<Notify>,
}

impl<'a> Daemon<'a> {
    /// Listener, signals, mountinfo watcher, HTTP state: everything that lets the
    /// server answer (503 until `start`) and that must exist before the first read.
    async fn build(cli: &'a Cli, config: Config, web: WebConfigFile) -> Result<Daemon<'a>, AgentError> {
        crate::caps::warn_if_missing();
        let http_stats = Arc::new(ServerStats::default());
        let pipeline = Arc::new(Pipeline::new(&config, Some(http_stats.clone()))?);

        let addr = config.web.listen_address;
        let listener = tokio::net::TcpListener::bind(addr.0)
            .await
            .map_err(|source| AgentError::Listen { addr: addr.to_string(), source })?;
        let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| addr.to_string());
        tracing::info!(address = %local, tls = web.tls.is_some(), basic_auth = web.requires_auth(), "listening");

        let mounts_changed = Arc::new(Notify::new());
        let mountinfo = discovery::mountinfo::mountinfo_path(&config.discovery.procfs);
        let watcher = match discovery::watch::spawn(&mountinfo, mounts_changed.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(file = %mountinfo.display(), error = %e, "cannot watch mountinfo; relying on periodic resync");
                None
            }
        };
        // Before readiness: a SIGHUP sent once /readyz says 200 must reload, not kill.
        let signals = Signals::install()?;
        let ready = Arc::new(AtomicBool::new(false));
        let http = Arc::new(ServerState::new(
            pipeline.exposition.clone(),
            ready.clone(),
            web,
            config.web.max_connections,
            http_stats,
        ));
        Ok(Daemon {
            cli,
            config,
            pipeline,
            copy_up_probes: None,
            http,
            listener: Some(listener),
            signals,
            mounts_changed,
            _watcher: watcher,
            ready,
            forget: ForgetPolicy::default(),
        })
    }

    /// First discovery (an error stops the start), scans, probes; then ready: the
    /// first mount table is read, the listener serves and the probes' start-up is
    /// over (attached, or off with overlayfs_ebpf_disabled_info saying why), so that
    /// copy-ups after a 200 are counted. Scans do not gate it: a first scan of a big
    /// upper dir can take minutes, and the scan metrics show its progress.
    async fn start(&mut self) -> Result<(), AgentError> {
        let (p, c) = (self.pipeline.clone(), self.config.clone());
        match tokio::task::spawn_blocking(move || p.rediscover(&c)).await {
            Ok(r) => r?,
            Err(e) => return Err(AgentError::Start { what: "discovery", source: std::io::Error::other(e) }),
        }
        self.pipeline.schedule_scans(&self.config);
        self.copy_up_probes = start_probes(&self.config, &self.pipeline.probes).await;
        self.ready.store(true, Ordering::Release);
        tracing::info!(mounts = self.pipeline.mounts.get().table.mounts.len(), "ready");
        Ok(())
    }

    fn spawn_server(&mut self) -> Server {
        let stop = Arc::new(Notify::new());
        let task = match self.listener.take() {
            Some(listener) => {
                let state = self.http.clone();
                let stop = stop.clone();
                tokio::spawn(server::serve(listener, state, async move { stop.notified().await }))
            }
            None => tokio::spawn(async {}),
        };
        Server { task, stop }
    }

    /// Follows the mount table (change notifications, the resync timer, SIGHUP)
    /// until SIGTERM or SIGINT.
    async fn run(&mut self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_read = Instant::now();
        loop {
            let wake = tokio::select! {
                _ = self.mounts_changed.notified() => Wake::MountsChanged,
                _ = tick.tick() => Wake::Tick,
                _ = self.signals.hup.recv() => Wake::Reload,
                _ = self.signals.term.recv() => Wake::Stop,
                _ = self.signals.int.recv() => Wake::Stop,
            };
            let reread = match wake {
                Wake::Stop => break,
                Wake::MountsChanged => true,
                Wake::Tick => {
                    last_read.elapsed() >= self.config.discovery.resync_interval
                        || identities_outdated(&self.pipeline.mounts).await
                }
                Wake::Reload => {
                    reload(self.cli, &mut self.config);
                    reload_web(&self.config, &self.http);
                    true
                }
            };
            if reread {
                last_read = Instant::now();
                self.follow_mounts().await;
            }
            self.pipeline.schedule_scans(&self.config);
        }
    }

    /// Re-reads the mount table off the async threads, attaches the probes once the
    /// overlay module appears, and forgets the counters of vanished devices.
    async fn follow_mounts(&mut self) {
        let before = self.pipeline.mounts.get();
        let (p, c) = (self.pipeline.clone(), self.config.clone());
        match tokio::task::spawn_blocking(move || p.rediscover(&c)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "discovery failed; keeping the last mount table"),
            Err(e) => tracing::error!(error = %e, "discovery task failed"),
        }
        let after = self.pipeline.mounts.get();
        let (before, table) = (&before.table, &after.table);
        let probes = &self.pipeline.probes;
        if self.copy_up_probes.is_none() && waiting_for_overlay(probes) && !table.mounts.is_empty() {
            // The overlay module is loaded on the first overlay mount: try again.
            self.copy_up_probes = start_probes(&self.config, probes).await;
        }
        // Counters of vanished devices go with their mount.
        self.forget.apply(before, table, probes);
    }

    /// Detaches the probes, then stops the server gracefully.
    async fn drain(mut self, server: Server) {
        tracing::info!("shutting down");
        if let Some(probes) = self.copy_up_probes.take() {
            *self.pipeline.probes.maps.locked() = None;
            drop(probes);
            tracing::info!("copy-up probes detached");
        }
        server.stop.notify_one();
        if let Err(e) = server.task.await {
            tracing::error!(error = %e, "HTTP server task failed");
        }
    }
}

/// Loads and attaches the copy-up probes (off the async threads: BTF parsing
/// takes a moment).
async fn start_probes(config: &Config, handle: &Arc<ProbeHandle>) -> Option<Probes> {
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
fn start_probes_blocking(config: &Config, handle: &ProbeHandle) -> Option<Probes> {
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
    matches!(status.disabled, Some(probes::Disabled::NoOverlay(_)))
}

/// SIGHUP: re-read the web config (rotated certificates, changed users); keep the
/// running one when the file is invalid.
fn reload_web(config: &Config, state: &ServerState) {
    match WebConfigFile::from_file(config.web.config_file.as_deref()) {
        Ok(web) => state.set_web(web),
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
            let quota_keys = |s: &crate::config::ScanConfig| {
                (s.quota, s.quota_interval, s.classify_interval, s.assign_project_ids)
            };
            if quota_keys(&new.scan) != quota_keys(&config.scan) {
                tracing::warn!(
                    "scan.quota, scan.quota_interval, scan.classify_interval or scan.assign_project_ids changed: take effect at restart"
                );
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
