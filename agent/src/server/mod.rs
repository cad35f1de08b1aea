//! HTTP endpoints: `/metrics`, `/healthz`, `/readyz` and a landing page `/`.
//! Only GET and HEAD; HTTP/1.1; graceful shutdown. Optional TLS and basic auth
//! (`--web.config.file`, see web_config.rs).
//!
//! Hardening, so that a scrape is answered whatever other clients do:
//! - Every connection is accepted at once, up to `web.max_connections` (clamped to
//!   the descriptor limit less a reserve). At the cap, the oldest connection that
//!   has no request in progress (silent, sending its head byte by byte, idle in
//!   keep-alive or in a TLS handshake) is shed to make room: a flood cannot keep a
//!   real scrape in the listen backlog, and a scraper sends its head at once, so it
//!   is never the oldest. Only when every open connection has a request in
//!   progress does a new one wait (for the first to finish).
//! - One render of `/metrics` at a time per format (text, or protobuf when the
//!   `Accept` header prefers it: `metrics::Format::negotiate`): scrapes that arrive
//!   during a render wait for the next one of their format and share it, so 100
//!   clients scraping back to back cost one render at a time, not 100, and every
//!   answer is at least as fresh as its request. Scrapes whose `Accept-Encoding`
//!   takes gzip (Prometheus' always does) get it, and those of one render share
//!   one compression of it.
//! - A connection costs its socket, a small task and the bytes it sent until it
//!   has sent a whole request head or first TLS record: only then do hyper (about
//!   16 KiB of buffers) and rustls get it (`read_opening`).
//! - Request heads must arrive within 10 s and fit in 16 KiB; a TLS handshake must
//!   finish within 10 s; a client that stops reading its response for 10 s is
//!   dropped; a keep-alive connection idle for 10 s is closed.
//! - bcrypt checks of basic auth run off the async threads, a bounded number at once.
//!
//! Here: `serve` (the accept loop), `ServerState` and the limits. Below, each
//! file importing only from this one and the files after it: `conn.rs` (admission at the cap,
//! shedding, the per-connection driver), `io.rs` (reading the opening, write
//! deadlines, the response body), `routes.rs` (auth, routing, `handle`),
//! `render.rs` (render sharing per format), `gzip.rs` (`Accept-Encoding` and the
//! compression), `web_config.rs` (the web config
//! file: TLS, basic auth, headers). The server's figures (`ServerStats`) live
//! with their collector in `metrics::server`.

mod conn;
pub mod gzip;
mod io;
mod render;
mod routes;
pub mod web_config;

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use self::conn::Registry;
pub use self::conn::{connection_cap, RESERVED_FDS};
use self::render::Renders;
pub use self::routes::handle;
use self::web_config::WebConfigFile;
use crate::metrics;
use crate::metrics::server::ServerStats;
use crate::sync::RwLockExt;

/// Time allowed for request headers, a TLS handshake, and a stalled response write.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted (larger: 431).
const MAX_HEAD: usize = 16 * 1024;
/// bcrypt checks at once (each takes a core for tens of milliseconds).
const BCRYPT_AT_ONCE: usize = 2;

/// What the handlers need.
pub struct ServerState {
    exposition: Arc<metrics::Exposition>,
    /// Set once the first mount table has been read.
    ready: Arc<AtomicBool>,
    /// TLS and auth; replaced on SIGHUP. New connections use the current one.
    web: RwLock<Arc<WebConfigFile>>,
    max_connections: usize,
    stats: Arc<ServerStats>,
    /// Text renders, and protobuf ones: a scrape shares only a render of its format.
    renders: (Renders, Renders),
    bcrypt: Arc<tokio::sync::Semaphore>,
}

impl ServerState {
    /// `ready`: set by the daemon once the first mount table has been read.
    pub fn new(
        exposition: Arc<metrics::Exposition>,
        ready: Arc<AtomicBool>,
        web: WebConfigFile,
        max_connections: usize,
        stats: Arc<ServerStats>,
    ) -> Self {
        ServerState {
            exposition,
            ready,
            web: RwLock::new(Arc::new(web)),
            max_connections,
            stats,
            renders: Default::default(),
            bcrypt: Arc::new(tokio::sync::Semaphore::new(BCRYPT_AT_ONCE)),
        }
    }

    /// SIGHUP: new connections use `web`.
    pub fn set_web(&self, web: WebConfigFile) {
        *self.web.write_now() = Arc::new(web);
    }

    fn web(&self) -> Arc<WebConfigFile> {
        self.web.read_now().clone()
    }
}

/// Serves until `shutdown` resolves, then lets open connections finish (at most 5 s).
pub async fn serve(listener: TcpListener, state: Arc<ServerState>, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let nofile = crate::rlimit::nofile();
    let cap = connection_cap(state.max_connections, nofile);
    if cap < state.max_connections {
        tracing::warn!(
            configured = state.max_connections,
            cap,
            open_files_limit = nofile.unwrap_or(0),
            "web.max_connections lowered to fit the open files limit"
        );
    }
    let registry = Arc::new(Registry::new(cap, state.stats.clone()));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like: wait for descriptors to be freed.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // As Go's net/http does: a response's last segment is not held back for an ACK.
        let _ = stream.set_nodelay(true);
        let Some(guard) = registry.admit_or_wait(shutdown.as_mut()).await else { break };
        conn::spawn(stream, peer, guard, &state, graceful.watcher());
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await.is_err() {
        tracing::warn!("open HTTP connections did not finish within 5s");
    }
}

/// What the server's unit tests share: a state, a request, and a way to have
/// concurrent requests all arrive before the first render ends.
#[cfg(test)]
mod testing {
    use std::future::Future;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use hyper::Request;

    use super::web_config::WebConfigFile;
    use super::ServerState;

    pub(super) fn state(ready: bool) -> ServerState {
        ServerState::new(
            Arc::default(),
            Arc::new(AtomicBool::new(ready)),
            WebConfigFile::from_file(None).expect("no web config"),
            8,
            Arc::default(),
        )
    }

    pub(super) fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).expect("request")
    }

    pub(super) async fn futures_join<F: Future>(fs: Vec<F>) -> Vec<F::Output> {
        let mut out = Vec::new();
        let mut fs: Vec<_> = fs.into_iter().map(Box::pin).collect();
        // Poll all once so that they all arrive before the first render ends.
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut done: Vec<Option<F::Output>> = fs
            .iter_mut()
            .map(|f| match f.as_mut().poll(&mut cx) {
                Poll::Ready(v) => Some(v),
                Poll::Pending => None,
            })
            .collect();
        for (f, d) in fs.iter_mut().zip(done.iter_mut()) {
            if d.is_none() {
                *d = Some(f.await);
            }
        }
        for d in done {
            out.extend(d);
        }
        out
    }
}
