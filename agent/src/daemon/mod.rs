//! The daemon (`overlay-agent serve`): builds the [`pipeline`], serves HTTP,
//! follows the mount table (change notifications, the resync timer) and the
//! signals (SIGHUP: [`reload`]; SIGTERM, SIGINT: drain and stop).

pub(crate) mod pipeline;
mod reload;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::Notify;

use crate::cli::Cli;
use crate::config::Config;
use crate::discovery::watch::Mechanism;
use crate::discovery::{self, Dirty, DiscoveryError};
use crate::identity::SharedMountView;
use crate::metrics::server::ServerStats;
use crate::probes::forget::ForgetPolicy;
use crate::probes::Probes;
use crate::server::web_config::WebConfigFile;
use crate::server::{self, ServerState};
use pipeline::{start_probes, stop_probes, waiting_for_overlay, Pipeline};

pub use pipeline::discover;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("cannot start {what}: {source}")]
    Start { what: &'static str, source: std::io::Error },
}

/// The mount tables to re-read because an identity may have changed without a
/// mount table change (a renamed Concourse volume, one still in init/): checked
/// every second, off the async threads since it stats files, and only when some
/// identity is watched.
async fn identities_outdated(mounts: &SharedMountView) -> Dirty {
    let snapshot = mounts.get();
    if !snapshot.identities.watched() {
        return Dirty::default();
    }
    tokio::task::spawn_blocking(move || snapshot.outdated()).await.unwrap_or_default()
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
    watcher: Option<discovery::watch::MountWatcher>,
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
        let procfs = &config.discovery.procfs;
        let mountinfo = discovery::mountinfo::mountinfo_path(procfs);
        let watcher = match discovery::watch::spawn(procfs, &mountinfo, mounts_changed.clone()) {
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
            watcher,
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
        match tokio::task::spawn_blocking(move || p.rediscover(&c, &Dirty::all(), true)).await {
            Ok(r) => r?,
            Err(e) => return Err(AgentError::Start { what: "discovery", source: std::io::Error::other(e) }),
        }
        self.watch_namespaces();
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

    /// Follows the mount tables (change notifications, censuses of the mount
    /// namespaces, the resync timer, SIGHUP) until SIGTERM or SIGINT.
    async fn run(&mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut last_read, mut last_census, mut last_identity) =
            (Instant::now(), Instant::now(), Instant::now());
        loop {
            let wake = tokio::select! {
                _ = self.mounts_changed.notified() => Wake::MountsChanged,
                _ = tick.tick() => Wake::Tick,
                _ = self.signals.hup.recv() => Wake::Reload,
                _ = self.signals.term.recv() => Wake::Stop,
                _ = self.signals.int.recv() => Wake::Stop,
            };
            let d = &self.config.discovery;
            let mut census = d.mount_namespaces && last_census.elapsed() >= d.namespace_interval;
            let mut dirty = Dirty::default();
            match wake {
                Wake::Stop => break,
                Wake::MountsChanged => {}
                Wake::Tick => {
                    if last_read.elapsed() >= d.resync_interval {
                        dirty = Dirty::all();
                    } else if last_identity.elapsed() >= Duration::from_secs(1) {
                        last_identity = Instant::now();
                        dirty = identities_outdated(&self.pipeline.mounts).await;
                    }
                }
                Wake::Reload => {
                    self.reload().await;
                    dirty = Dirty::all();
                }
            }
            if let Some(w) = &self.watcher {
                let changes = w.take();
                dirty.reference |= changes.reference;
                dirty.namespaces.extend(changes.namespaces);
                census |= changes.exited;
                // Without pidfds nothing tells a namespace changed: re-read all at each census.
                dirty.all |= census && w.mechanism() == Mechanism::Poll;
            }
            if census || dirty != Dirty::default() {
                if dirty.all {
                    last_read = Instant::now();
                }
                if census {
                    last_census = Instant::now();
                }
                self.follow_mounts(dirty, census).await;
            }
            self.pipeline.schedule_scans(&self.config);
        }
    }

    /// Re-reads what changed off the async threads (scans of mounts that left the
    /// table stop there, before identities are looked up: `Pipeline::rediscover`),
    /// attaches the probes once the overlay module appears, and forgets the
    /// counters of vanished devices.
    async fn follow_mounts(&mut self, dirty: Dirty, census: bool) {
        let before = self.pipeline.mounts.get();
        let (p, c) = (self.pipeline.clone(), self.config.clone());
        match tokio::task::spawn_blocking(move || p.rediscover(&c, &dirty, census)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "discovery failed; keeping the last mount table"),
            Err(e) => tracing::error!(error = %e, "discovery task failed"),
        }
        if census {
            self.watch_namespaces();
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

    /// Watches the namespaces of the last census for changes (none when
    /// namespaces are off), and says how in the discovery metrics.
    fn watch_namespaces(&self) {
        let Some(w) = &self.watcher else { return };
        let on = self.config.discovery.mount_namespaces;
        let namespaces = if on { self.pipeline.namespaces() } else { Vec::new() };
        let read = on && self.pipeline.mounts.get().table.namespaces_read;
        self.pipeline.stats.set_mechanism(read.then(|| w.mechanism()));
        w.watch(namespaces);
    }

    /// Detaches the probes, then stops the server gracefully.
    async fn drain(mut self, server: Server) {
        tracing::info!("shutting down");
        if let Some(probes) = self.copy_up_probes.take() {
            stop_probes(probes, &self.pipeline.probes);
            tracing::info!("copy-up probes detached");
        }
        server.stop.notify_one();
        if let Err(e) = server.task.await {
            tracing::error!(error = %e, "HTTP server task failed");
        }
    }
}
