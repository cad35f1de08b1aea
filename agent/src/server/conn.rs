//! Connections: admission at the cap and shedding (`Registry`, `connection_cap`),
//! what keeps a connection from being shed (`RequestInProgress`), and the driver
//! that takes an admitted connection from its opening (plain or TLS) through hyper
//! to its end.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::io::{read_opening, Prefixed, Refused, Tracked, WriteDeadline, TLS_HANDSHAKE};
use super::routes::respond;
use super::web_config::WebConfigFile;
use super::{ServerState, IO_TIMEOUT, MAX_HEAD};
use crate::metrics::server::ServerStats;
use crate::sync::LockExt;

/// Descriptors kept for everything but connections (mountinfo, scan walks, eBPF
/// maps and programs, the runtime): the connection cap is at most the limit less this.
pub const RESERVED_FDS: u64 = 256;

/// The connection cap in effect: the configured one, at most the open-files limit
/// (`nofile`, None when unlimited) less RESERVED_FDS, at least 1.
pub fn connection_cap(configured: usize, nofile: Option<u64>) -> usize {
    match nofile {
        Some(n) => {
            configured.min(usize::try_from(n.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX)).max(1)
        }
        None => configured.max(1),
    }
}

/// One open connection, as the cap sees it.
#[derive(Debug, Default)]
pub(super) struct ConnState {
    /// Requests in progress, plus one while a response write is stalled: never shed while non-zero.
    pub(super) busy: AtomicU32,
    /// Requests received on it.
    requests: AtomicU64,
    /// Notified when the connection is shed.
    shed: Notify,
}

/// Open connections by accept order (the oldest first).
pub(super) struct Registry {
    conns: Mutex<BTreeMap<u64, Arc<ConnState>>>,
    next_id: AtomicU64,
    cap: usize,
    /// Notified when a connection closes or finishes a request (room may be free).
    room: Notify,
    stats: Arc<ServerStats>,
}

impl Registry {
    pub(super) fn new(cap: usize, stats: Arc<ServerStats>) -> Self {
        stats.limit.store(cap as u64, Ordering::Relaxed);
        Registry { conns: Mutex::default(), next_id: AtomicU64::new(0), cap, room: Notify::new(), stats }
    }

    /// Registers a new connection. At the cap, sheds the oldest connection without
    /// a request in progress; None when every one has a request in progress.
    ///
    /// Oldest first, at once, as nginx and HAProxy drop slow heads: a scraper
    /// sends its head (or TLS handshake) right after connecting, so it survives
    /// unless the cap's worth of newer connections arrive before that (a few ms).
    /// Waiting, or refusing the newcomer, was tried and is worse: a flood beyond
    /// the cap then fills the kernel's accept queue, and a scrape's SYN is dropped
    /// and retried after 1 s, 3 s, 7 s (a cap of 100 under 1,000: scrapes of 11 s).
    fn admit(self: &Arc<Self>) -> Option<ConnGuard> {
        let mut conns = self.conns.locked();
        if conns.len() >= self.cap {
            let id = conns.iter().find(|(_, c)| c.busy.load(Ordering::Acquire) == 0).map(|(id, _)| *id)?;
            if let Some(shed) = conns.remove(&id) {
                shed.shed.notify_one();
                self.stats.shed.fetch_add(1, Ordering::Relaxed);
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState::default());
        conns.insert(id, state.clone());
        self.stats.open.store(conns.len() as u64, Ordering::Relaxed);
        Some(ConnGuard { id, state, registry: self.clone() })
    }

    /// Registers a new connection (`admit`); while every open connection has a
    /// request in progress, waits for the first to finish (the next ones in the
    /// backlog meanwhile). None: `shutdown` came first.
    pub(super) async fn admit_or_wait(
        self: &Arc<Self>,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Option<ConnGuard> {
        loop {
            let room = self.room.notified();
            if let Some(g) = self.admit() {
                return Some(g);
            }
            tokio::select! {
                _ = room => {}
                _ = &mut shutdown => return None,
            }
        }
    }
}

/// A registered connection; unregistered on drop.
pub(super) struct ConnGuard {
    id: u64,
    state: Arc<ConnState>,
    registry: Arc<Registry>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut conns = self.registry.conns.locked();
        conns.remove(&self.id);
        self.registry.stats.open.store(conns.len() as u64, Ordering::Relaxed);
        drop(conns);
        self.registry.room.notify_one();
    }
}

/// Marks a connection busy while it lives (a request in progress, a stalled write).
pub(super) struct RequestInProgress {
    conn: Arc<ConnState>,
    room: Option<Arc<Registry>>,
}

impl RequestInProgress {
    pub(super) fn new(conn: Arc<ConnState>, room: Option<Arc<Registry>>) -> Self {
        conn.busy.fetch_add(1, Ordering::AcqRel);
        RequestInProgress { conn, room }
    }
}

impl Drop for RequestInProgress {
    fn drop(&mut self) {
        if self.conn.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(r) = &self.room {
                r.room.notify_one();
            }
        }
    }
}

/// A request in progress: keeps its connection busy and counts it in flight
/// until hyper has taken the whole response body.
struct InFlight {
    _busy: RequestInProgress,
    stats: Arc<ServerStats>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What one connection needs besides its stream.
struct ConnCtx {
    state: Arc<ServerState>,
    web: Arc<WebConfigFile>,
    conn: Arc<ConnState>,
    registry: Arc<Registry>,
    graceful: Watcher,
}

type ConnFuture = Pin<Box<dyn Future<Output = Result<(), hyper::Error>> + Send>>;

/// Serves an admitted connection on a task of its own, to its end or until it is shed.
pub(super) fn spawn(
    stream: TcpStream,
    peer: SocketAddr,
    guard: ConnGuard,
    state: &Arc<ServerState>,
    graceful: Watcher,
) {
    let cx = ConnCtx {
        state: state.clone(),
        web: state.web(),
        conn: guard.state.clone(),
        registry: guard.registry.clone(),
        graceful,
    };
    tokio::spawn(async move {
        let shed = guard.state.clone();
        tokio::select! {
            _ = serve_connection(stream, peer, cx) => {}
            _ = shed.shed.notified() => {
                tracing::debug!(%peer, "connection shed: at web.max_connections, and the oldest without a request");
            }
        }
        drop(guard);
    });
}

/// Serves one connection (plain or TLS) with the limits above.
fn connection<I>(io: I, cx: ConnCtx) -> ConnFuture
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ConnCtx { state, web, conn, registry, graceful } = cx;
    let (c, r) = (conn.clone(), registry.clone());
    let io = WriteDeadline::new(io, move || RequestInProgress::new(c.clone(), Some(r.clone())));
    let service = service_fn(move |req: Request<Incoming>| {
        let (state, web) = (state.clone(), web.clone());
        // Busy from the complete head until hyper has taken the whole body.
        conn.requests.fetch_add(1, Ordering::Relaxed);
        state.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight {
            _busy: RequestInProgress::new(conn.clone(), Some(registry.clone())),
            stats: state.stats.clone(),
        };
        async move {
            let r = respond(state, web, req).await;
            let (parts, body) = r.into_parts();
            Ok::<_, Infallible>(Response::from_parts(parts, Tracked::new(body, guard)))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(IO_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(io), service);
    Box::pin(graceful.watch(conn))
}

/// A TLS connection: a client speaking plain HTTP gets a 400 that says so; a
/// handshake that fails or takes longer than IO_TIMEOUT closes the connection.
async fn tls_connection(
    mut stream: TcpStream,
    opening: Vec<u8>,
    tls: Arc<rustls::ServerConfig>,
    cx: ConnCtx,
) -> Result<ConnFuture, Refused> {
    if opening.first() != Some(&TLS_HANDSHAKE) {
        // Most likely plain HTTP; its head is read (closing with unread data
        // would reset the connection before the client reads the answer).
        use tokio::io::AsyncWriteExt;
        let _ = tokio::time::timeout(IO_TIMEOUT, async {
            stream
                .write_all(b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
                .await?;
            stream.shutdown().await
        })
        .await;
        return Err(Refused::PlainHttp);
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let io = Prefixed::new(opening, stream);
    match tokio::time::timeout(IO_TIMEOUT, acceptor.accept(io)).await {
        Ok(Ok(s)) => Ok(connection(s, cx)),
        Ok(Err(e)) => Err(Refused::Tls(format!("TLS handshake failed: {e}"))),
        Err(_) => Err(Refused::Tls("TLS handshake did not finish within 10s".into())),
    }
}

/// Serves one accepted connection to its end.
async fn serve_connection(stream: TcpStream, peer: SocketAddr, cx: ConnCtx) {
    let stats = cx.state.stats.clone();
    let conn = cx.conn.clone();
    let tls = cx.web.tls.clone();
    let opened = match tokio::time::timeout(IO_TIMEOUT, read_opening(&stream)).await {
        Ok(r) => r,
        Err(_) => Err(Refused::Timeout),
    };
    let served = match (opened, tls) {
        (Ok(opening), Some(tls)) => Box::pin(tls_connection(stream, opening, tls, cx)).await,
        (Ok(opening), None) => Ok(connection(Prefixed::new(opening, stream), cx)),
        (Err(why), _) => Err(why),
    };
    let result = match served {
        Ok(c) => c.await,
        Err(why) => {
            let (counter, detail) = match why {
                Refused::Timeout => {
                    (Some(&stats.refused_timeout), "nothing complete sent within 10s".to_owned())
                }
                Refused::Closed => (None, "closed before a request".to_owned()),
                Refused::Io(e) => (None, e.to_string()),
                Refused::Tls(e) => (Some(&stats.refused_tls), e),
                Refused::PlainHttp => {
                    (Some(&stats.refused_plain_http), "plain HTTP on the TLS port".to_owned())
                }
            };
            if let Some(c) = counter {
                c.fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(%peer, error = %detail, "connection closed before HTTP");
            return;
        }
    };
    if let Err(e) = result {
        if e.is_timeout() && conn.requests.load(Ordering::Relaxed) == 0 {
            stats.refused_timeout.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(%peer, error = %e, "connection error");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// At the cap the oldest connection without a request in progress is shed;
    /// busy ones are kept; with every one busy, nothing is admitted.
    #[tokio::test]
    async fn the_cap_sheds_the_oldest_idle_connection() {
        let stats = Arc::new(ServerStats::default());
        let r = Arc::new(Registry::new(3, stats.clone()));
        let a = r.admit().expect("room");
        let b = r.admit().expect("room");
        let c = r.admit().expect("room");
        let busy_a = RequestInProgress::new(a.state.clone(), Some(r.clone()));
        let d = r.admit().expect("b is idle: shed");
        assert_eq!(stats.shed.load(Ordering::Relaxed), 1);
        // b was told, a (busy, older) and c (younger) were not.
        tokio::time::timeout(Duration::from_secs(1), b.state.shed.notified()).await.expect("b shed");
        assert!(tokio::time::timeout(Duration::from_millis(10), a.state.shed.notified()).await.is_err());
        assert!(tokio::time::timeout(Duration::from_millis(10), c.state.shed.notified()).await.is_err());
        drop(b);
        assert_eq!(stats.open.load(Ordering::Relaxed), 3, "a, c, d");
        let _busy_c = RequestInProgress::new(c.state.clone(), Some(r.clone()));
        let _busy_d = RequestInProgress::new(d.state.clone(), Some(r.clone()));
        assert!(r.admit().is_none(), "every connection busy: the new one waits");
        drop(busy_a);
        let e = r.admit().expect("a idle again: shed");
        assert_eq!(stats.shed.load(Ordering::Relaxed), 2);
        drop((a, c, d, e));
        assert_eq!(stats.open.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_cap_fits_the_descriptor_limit() {
        assert_eq!(connection_cap(1024, Some(20_000)), 1024);
        assert_eq!(connection_cap(1024, Some(1024)), 1024 - RESERVED_FDS as usize);
        assert_eq!(connection_cap(1024, Some(10)), 1);
        assert_eq!(connection_cap(64, None), 64);
    }
}
