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
//!   answer is at least as fresh as its request.
//! - A connection costs its socket, a small task and the bytes it sent until it
//!   has sent a whole request head or first TLS record: only then do hyper (about
//!   16 KiB of buffers) and rustls get it (`read_opening`).
//! - Request heads must arrive within 10 s and fit in 16 KiB; a TLS handshake must
//!   finish within 10 s; a client that stops reading its response for 10 s is
//!   dropped; a keep-alive connection idle for 10 s is closed.
//! - bcrypt checks of basic auth run off the async threads, a bounded number at once.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, ACCEPT, ALLOW, AUTHORIZATION, CONTENT_TYPE, VARY, WWW_AUTHENTICATE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::metrics;
use crate::sync::{LockExt, RwLockExt};
use crate::web_config::WebConfigFile;

/// Time allowed for request headers, a TLS handshake, and a stalled response write.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted (larger: 431).
const MAX_HEAD: usize = 16 * 1024;
/// Descriptors kept for everything but connections (mountinfo, scan walks, eBPF
/// maps and programs, the runtime): the connection cap is at most the limit less this.
pub const RESERVED_FDS: u64 = 256;
/// bcrypt checks at once (each takes a core for tens of milliseconds).
const BCRYPT_AT_ONCE: usize = 2;

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

/// The server's own figures, exported by metrics::http.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections open now.
    pub open: AtomicU64,
    /// The connection cap in effect.
    pub limit: AtomicU64,
    /// Connections closed to make room at the cap.
    pub shed: AtomicU64,
    /// Connections closed without a request: no complete head within 10 s of connecting.
    pub refused_timeout: AtomicU64,
    /// TLS handshakes that failed or did not finish within 10 s.
    pub refused_tls: AtomicU64,
    /// Plain HTTP sent to the TLS port.
    pub refused_plain_http: AtomicU64,
    /// Requests being answered now.
    pub in_flight: AtomicU64,
    /// `/metrics` requests answered in the text format.
    pub scrapes_text: AtomicU64,
    /// `/metrics` requests answered in protobuf.
    pub scrapes_protobuf: AtomicU64,
    /// Renders of the exposition for them (fewer when concurrent scrapes shared one).
    pub renders: AtomicU64,
}

/// One open connection, as the cap sees it.
#[derive(Debug, Default)]
struct ConnState {
    /// Requests in progress, plus one while a response write is stalled: never shed while non-zero.
    busy: AtomicU32,
    /// Requests received on it.
    requests: AtomicU64,
    /// Notified when the connection is shed.
    shed: Notify,
}

/// Open connections by accept order (the oldest first).
struct Registry {
    conns: Mutex<BTreeMap<u64, Arc<ConnState>>>,
    next_id: AtomicU64,
    cap: usize,
    /// Notified when a connection closes or finishes a request (room may be free).
    room: Notify,
    stats: Arc<Stats>,
}

impl Registry {
    fn new(cap: usize, stats: Arc<Stats>) -> Self {
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
}

/// A registered connection; unregistered on drop.
struct ConnGuard {
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
struct Busy {
    conn: Arc<ConnState>,
    room: Option<Arc<Registry>>,
}

impl Busy {
    fn new(conn: Arc<ConnState>, room: Option<Arc<Registry>>) -> Self {
        conn.busy.fetch_add(1, Ordering::AcqRel);
        Busy { conn, room }
    }
}

impl Drop for Busy {
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
    _busy: Busy,
    stats: Arc<Stats>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that holds its request's InFlight guard.
pub struct Tracked {
    body: Full<Bytes>,
    _in_flight: Option<InFlight>,
}

impl From<Full<Bytes>> for Tracked {
    fn from(body: Full<Bytes>) -> Self {
        Tracked { body, _in_flight: None }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// One render of the exposition at a time; a request reuses a render that
/// started after it arrived, so the answer is never older than the request. The
/// text is kept only for the requests that waited for it (at 10,000 mounts it is
/// 20 MiB), not until the next scrape.
#[derive(Default)]
struct Renders {
    /// Renders started so far.
    started: AtomicU64,
    /// Requests waiting for the lock.
    waiting: AtomicU64,
    /// The last render: its number and, while requests wait for it, its text.
    last: tokio::sync::Mutex<(u64, Option<Bytes>)>,
}

impl Renders {
    /// The exposition in `format`; None if the render failed (a bug: it panicked).
    async fn get(
        &self,
        exposition: &Arc<metrics::Exposition>,
        format: metrics::Format,
        stats: &Stats,
    ) -> Option<Bytes> {
        // Counted as waiting before reading `started`: a render that starts after
        // this point keeps its text for this request.
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let arrived = self.started.load(Ordering::Acquire);
        let mut last = self.last.lock().await;
        let others = self.waiting.fetch_sub(1, Ordering::AcqRel) - 1;
        if last.0 > arrived {
            if let Some(text) = last.1.clone() {
                if others == 0 {
                    last.1 = None;
                }
                return Some(text);
            }
        }
        let number = self.started.fetch_add(1, Ordering::AcqRel) + 1;
        stats.renders.fetch_add(1, Ordering::Relaxed);
        let e = exposition.clone();
        // Off the async threads: at 10,000 mounts a render takes tens of milliseconds.
        let render = move || {
            let text = Bytes::from(e.render_as(format));
            crate::memory::release_free_memory();
            text
        };
        match tokio::task::spawn_blocking(render).await {
            Ok(text) => {
                let keep = self.waiting.load(Ordering::Acquire) > 0;
                *last = (number, keep.then(|| text.clone()));
                Some(text)
            }
            Err(e) => {
                tracing::error!(error = %e, "rendering the exposition failed");
                None
            }
        }
    }
}

/// What the handlers need.
pub struct HttpState {
    exposition: Arc<metrics::Exposition>,
    /// Set once the first mount table has been read.
    ready: Arc<AtomicBool>,
    /// TLS and auth; replaced on SIGHUP. New connections use the current one.
    web: RwLock<Arc<WebConfigFile>>,
    max_connections: usize,
    stats: Arc<Stats>,
    /// Text renders, and protobuf ones: a scrape shares only a render of its format.
    renders: (Renders, Renders),
    bcrypt: Arc<tokio::sync::Semaphore>,
}

impl HttpState {
    /// `ready`: set by the daemon once the first mount table has been read.
    pub fn new(
        exposition: Arc<metrics::Exposition>,
        ready: Arc<AtomicBool>,
        web: WebConfigFile,
        max_connections: usize,
        stats: Arc<Stats>,
    ) -> Self {
        HttpState {
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

const LANDING: &str = "<!doctype html>\n<html><head><title>overlay-agent</title></head><body>\n\
<h1>overlay-agent</h1>\n<p>overlayfs mounts, upper-dir contents and copy-ups for Prometheus.</p>\n\
<ul><li><a href=\"/metrics\">/metrics</a></li><li><a href=\"/healthz\">/healthz</a></li>\
<li><a href=\"/readyz\">/readyz</a></li></ul>\n</body></html>\n";

const TEXT: &str = "text/plain; charset=utf-8";

fn response(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Routes one request. Public for tests.
pub async fn handle(state: &HttpState, req: &Request<impl Sized>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let known = matches!(path, "/" | "/metrics" | "/healthz" | "/readyz");
    if !known {
        return response(StatusCode::NOT_FOUND, TEXT, "not found\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = response(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n");
        r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let ready = state.ready.load(Ordering::Acquire);
    match path {
        "/metrics" if !ready => {
            // No exposition rather than one that says "no mounts".
            response(StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready: no mount table yet\n")
        }
        "/metrics" => {
            let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
            let format = metrics::Format::negotiate(accept);
            match format {
                metrics::Format::Text => &state.stats.scrapes_text,
                metrics::Format::Protobuf => &state.stats.scrapes_protobuf,
            }
            .fetch_add(1, Ordering::Relaxed);
            let renders = match format {
                metrics::Format::Text => &state.renders.0,
                metrics::Format::Protobuf => &state.renders.1,
            };
            match renders.get(&state.exposition, format, &state.stats).await {
                Some(body) => {
                    let mut r = response(StatusCode::OK, format.content_type(), body);
                    r.headers_mut().insert(VARY, HeaderValue::from_static("Accept"));
                    r
                }
                None => response(StatusCode::INTERNAL_SERVER_ERROR, TEXT, "rendering failed\n"),
            }
        }
        "/healthz" => response(StatusCode::OK, TEXT, "ok\n"),
        "/readyz" if ready => response(StatusCode::OK, TEXT, "ready\n"),
        "/readyz" => response(StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready: no mount table yet\n"),
        _ => response(StatusCode::OK, "text/html; charset=utf-8", LANDING),
    }
}

/// A stream whose writes fail once they have made no progress for IO_TIMEOUT
/// (a client that stops reading its response). While a write is stalled the
/// connection counts as busy: a response is never cut to make room.
struct WriteDeadline<T> {
    inner: T,
    stalled: Option<(Pin<Box<tokio::time::Sleep>>, Busy)>,
    conn: Arc<ConnState>,
    registry: Option<Arc<Registry>>,
}

impl<T> WriteDeadline<T> {
    fn new(inner: T, conn: Arc<ConnState>, registry: Option<Arc<Registry>>) -> Self {
        WriteDeadline { inner, stalled: None, conn, registry }
    }

    fn check<R>(&mut self, cx: &mut Context<'_>, r: Poll<std::io::Result<R>>) -> Poll<std::io::Result<R>> {
        match r {
            Poll::Pending => {
                let (conn, registry) = (&self.conn, &self.registry);
                let (sleep, _) = self.stalled.get_or_insert_with(|| {
                    (Box::pin(tokio::time::sleep(IO_TIMEOUT)), Busy::new(conn.clone(), registry.clone()))
                });
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::ErrorKind::TimedOut.into())),
                    Poll::Pending => Poll::Pending,
                }
            }
            done => {
                self.stalled = None;
                done
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, r)
    }

    /// Forwarded: without it hyper copies each response body into its own buffer
    /// (20 MiB per scrape at 10,000 mounts) instead of writing it as it is.
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, r)
    }
}

/// Basic auth: a cached credential at once; a bcrypt check off the async threads,
/// BCRYPT_AT_ONCE at a time, so a flood of wrong passwords costs at most that many cores.
async fn authorized(state: &HttpState, web: &Arc<WebConfigFile>, req: &Request<Incoming>) -> bool {
    if !web.requires_auth() {
        return true;
    }
    let header = req.headers().get(AUTHORIZATION).cloned();
    if let Some(cached) = web.authorized_cached(header.as_ref()) {
        return cached;
    }
    let Ok(_permit) = state.bcrypt.clone().acquire_owned().await else { return false };
    let w = web.clone();
    tokio::task::spawn_blocking(move || w.authorized(header.as_ref())).await.unwrap_or(false)
}

/// Answers one request: basic auth, then routing, then the web config's extra headers.
async fn respond(
    state: Arc<HttpState>,
    web: Arc<WebConfigFile>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let mut r = if authorized(&state, &web, &req).await {
        handle(&state, &req).await
    } else {
        let mut r = response(StatusCode::UNAUTHORIZED, TEXT, "unauthorized\n");
        r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"overlay-agent\""));
        r
    };
    for (n, v) in &web.headers {
        r.headers_mut().insert(n.clone(), v.clone());
    }
    r
}

/// What one connection needs besides its stream.
struct ConnCtx {
    state: Arc<HttpState>,
    web: Arc<WebConfigFile>,
    conn: Arc<ConnState>,
    registry: Arc<Registry>,
    graceful: Watcher,
}

type ConnFuture = Pin<Box<dyn Future<Output = Result<(), hyper::Error>> + Send>>;

/// Serves one connection (plain or TLS) with the limits above.
fn connection<I>(io: I, cx: ConnCtx) -> ConnFuture
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ConnCtx { state, web, conn, registry, graceful } = cx;
    let io = WriteDeadline::new(io, conn.clone(), Some(registry.clone()));
    let service = service_fn(move |req: Request<Incoming>| {
        let (state, web) = (state.clone(), web.clone());
        // Busy from the complete head until hyper has taken the whole body.
        conn.requests.fetch_add(1, Ordering::Relaxed);
        state.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard =
            InFlight { _busy: Busy::new(conn.clone(), Some(registry.clone())), stats: state.stats.clone() };
        async move {
            let r = respond(state, web, req).await;
            let (parts, body) = r.into_parts();
            Ok::<_, Infallible>(Response::from_parts(parts, Tracked { body, _in_flight: Some(guard) }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(IO_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(io), service);
    Box::pin(graceful.watch(conn))
}

/// Why a connection was closed before HTTP.
enum Refused {
    Timeout,
    Closed,
    Io(std::io::Error),
    Tls(String),
    PlainHttp,
}

/// TLS record type of a handshake (the first byte a TLS client sends).
const TLS_HANDSHAKE: u8 = 0x16;

/// What a client sent first, read with a buffer the size of what arrived: a
/// complete HTTP request head (or MAX_HEAD bytes of one), or a complete first
/// TLS record. hyper (about 16 KiB of buffers per connection) and rustls are only
/// given a connection once it has sent that much, so a flood of silent, slow-head
/// or stalled-handshake connections costs little more than their sockets.
/// Hand-written because neither library can start with smaller buffers.
async fn read_opening(stream: &TcpStream) -> Result<Vec<u8>, Refused> {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        stream.readable().await.map_err(Refused::Io)?;
        let want = opening_missing(&got).min(buf.len());
        match stream.try_read(&mut buf[..want]) {
            Ok(0) => return Err(Refused::Closed),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if opening_complete(&got, n) {
                    return Ok(got);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(Refused::Io(e)),
        }
    }
}

/// Whether `got` holds a whole first TLS record, a whole HTTP head, or MAX_HEAD
/// bytes; the last `new` bytes just arrived (only they and the 2 before are searched
/// for the head's end, so a head sent byte by byte costs linear time).
fn opening_complete(got: &[u8], new: usize) -> bool {
    match got.first() {
        None => false,
        Some(&TLS_HANDSHAKE) => opening_missing(got) == 0,
        Some(_) => {
            let tail = &got[got.len().saturating_sub(new + 2)..];
            got.len() >= MAX_HEAD
                || tail.windows(2).any(|w| w == b"\n\n")
                || tail.windows(3).any(|w| w == b"\n\r\n")
        }
    }
}

/// Bytes still to read: the rest of a TLS record, or up to MAX_HEAD of a head.
fn opening_missing(got: &[u8]) -> usize {
    match got {
        [TLS_HANDSHAKE, _, _, hi, lo, body @ ..] => {
            (usize::from(*hi) << 8 | usize::from(*lo)).saturating_sub(body.len())
        }
        [TLS_HANDSHAKE, ..] => 5 - got.len(),
        _ => MAX_HEAD.saturating_sub(got.len()),
    }
}

/// A stream that first yields bytes already read from it.
struct Prefixed<T> {
    prefix: Vec<u8>,
    pos: usize,
    inner: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
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
    let io = Prefixed { prefix: opening, pos: 0, inner: stream };
    match tokio::time::timeout(IO_TIMEOUT, acceptor.accept(io)).await {
        Ok(Ok(s)) => Ok(connection(s, cx)),
        Ok(Err(e)) => Err(Refused::Tls(format!("TLS handshake failed: {e}"))),
        Err(_) => Err(Refused::Tls("TLS handshake did not finish within 10s".into())),
    }
}

/// Serves one accepted connection to its end.
async fn serve_connection(stream: TcpStream, peer: std::net::SocketAddr, cx: ConnCtx) {
    let stats = cx.state.stats.clone();
    let conn = cx.conn.clone();
    let tls = cx.web.tls.clone();
    let opened = match tokio::time::timeout(IO_TIMEOUT, read_opening(&stream)).await {
        Ok(r) => r,
        Err(_) => Err(Refused::Timeout),
    };
    let served = match (opened, tls) {
        (Ok(opening), Some(tls)) => Box::pin(tls_connection(stream, opening, tls, cx)).await,
        (Ok(opening), None) => Ok(connection(Prefixed { prefix: opening, pos: 0, inner: stream }, cx)),
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

/// Serves until `shutdown` resolves, then lets open connections finish (at most 5 s).
pub async fn serve(listener: TcpListener, state: Arc<HttpState>, shutdown: impl Future<Output = ()>) {
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
    'serve: loop {
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
        let guard = loop {
            let room = registry.room.notified();
            if let Some(g) = registry.admit() {
                break g;
            }
            // Every open connection has a request in progress: this one waits for
            // the first to finish (the next ones in the backlog meanwhile).
            tokio::select! {
                _ = room => {}
                _ = &mut shutdown => break 'serve,
            }
        };
        let cx = ConnCtx {
            state: state.clone(),
            web: state.web(),
            conn: guard.state.clone(),
            registry: registry.clone(),
            graceful: graceful.watcher(),
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
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await.is_err() {
        tracing::warn!("open HTTP connections did not finish within 5s");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn deadline<T>(inner: T) -> WriteDeadline<T> {
        WriteDeadline::new(inner, Arc::default(), None)
    }

    /// A peer that never reads: the write fails after IO_TIMEOUT of no progress,
    /// instead of holding the connection (and its slot) forever; while it is
    /// stalled, the connection counts as busy.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_write_times_out() {
        let (client, _server_side_unread) = tokio::io::duplex(64);
        let mut w = deadline(client);
        let conn = w.conn.clone();
        let started = tokio::time::Instant::now();
        let err = w.write_all(&[0u8; 4096]).await.expect_err("the reader never reads");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= IO_TIMEOUT);
        assert_eq!(conn.busy.load(Ordering::Relaxed), 1, "busy while stalled");
        drop(w);
        assert_eq!(conn.busy.load(Ordering::Relaxed), 0, "not busy once dropped");
    }

    /// A slow but steady reader is not cut off: progress resets the deadline.
    #[tokio::test(start_paused = true)]
    async fn progress_resets_the_deadline() {
        use tokio::io::AsyncReadExt;
        let (client, mut server) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let mut total = 0;
            while total < 640 {
                tokio::time::sleep(Duration::from_secs(5)).await;
                total += server.read(&mut buf).await.expect("read");
            }
            total
        });
        let mut w = deadline(client);
        w.write_all(&[0u8; 640]).await.expect("each chunk drains within 10 s");
        assert_eq!(reader.await.expect("reader"), 640);
        assert_eq!(w.conn.busy.load(Ordering::Relaxed), 0, "not busy once written");
    }

    /// At the cap the oldest connection without a request in progress is shed;
    /// busy ones are kept; with every one busy, nothing is admitted.
    #[tokio::test]
    async fn the_cap_sheds_the_oldest_idle_connection() {
        let stats = Arc::new(Stats::default());
        let r = Arc::new(Registry::new(3, stats.clone()));
        let a = r.admit().expect("room");
        let b = r.admit().expect("room");
        let c = r.admit().expect("room");
        let busy_a = Busy::new(a.state.clone(), Some(r.clone()));
        let d = r.admit().expect("b is idle: shed");
        assert_eq!(stats.shed.load(Ordering::Relaxed), 1);
        // b was told, a (busy, older) and c (younger) were not.
        tokio::time::timeout(Duration::from_secs(1), b.state.shed.notified()).await.expect("b shed");
        assert!(tokio::time::timeout(Duration::from_millis(10), a.state.shed.notified()).await.is_err());
        assert!(tokio::time::timeout(Duration::from_millis(10), c.state.shed.notified()).await.is_err());
        drop(b);
        assert_eq!(stats.open.load(Ordering::Relaxed), 3, "a, c, d");
        let _busy_c = Busy::new(c.state.clone(), Some(r.clone()));
        let _busy_d = Busy::new(d.state.clone(), Some(r.clone()));
        assert!(r.admit().is_none(), "every connection busy: the new one waits");
        drop(busy_a);
        let e = r.admit().expect("a idle again: shed");
        assert_eq!(stats.shed.load(Ordering::Relaxed), 2);
        drop((a, c, d, e));
        assert_eq!(stats.open.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_opening_is_a_whole_head_or_a_whole_tls_record() {
        let whole = |b: &[u8]| opening_complete(b, b.len());
        assert!(!whole(b""));
        assert!(!whole(b"GET / HTTP/1.1\r\nHost: a\r\n"));
        assert!(whole(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(whole(b"GET / HTTP/1.0\n\n"));
        assert!(whole(&vec![b'x'; MAX_HEAD]), "too long: hyper answers 431");
        // Byte by byte: the end is found in the last byte and the two before it.
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let ends: Vec<bool> = (1..=head.len()).map(|n| opening_complete(&head[..n], 1)).collect();
        assert_eq!(ends.iter().position(|e| *e), Some(head.len() - 1));
        assert_eq!(opening_missing(b"GET"), MAX_HEAD - 3);
        assert_eq!(opening_missing(&[0x16, 3, 1]), 2, "the record header first");
        assert_eq!(opening_missing(&[0x16, 3, 1, 0x02, 0x00]), 512);
        let mut record = vec![0x16, 3, 1, 0, 3, 1, 2];
        assert!(!whole(&record));
        record.push(3);
        assert!(whole(&record));
    }

    /// The bytes read before hyper or rustls take over are given back first.
    #[tokio::test]
    async fn a_prefixed_stream_replays_its_prefix() {
        use tokio::io::AsyncReadExt;
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.expect("write");
        drop(client);
        let mut p = Prefixed { prefix: b"hello".to_vec(), pos: 0, inner: server };
        let mut out = String::new();
        p.read_to_string(&mut out).await.expect("read");
        assert_eq!(out, "hello world");
    }

    #[test]
    fn the_cap_fits_the_descriptor_limit() {
        assert_eq!(connection_cap(1024, Some(20_000)), 1024);
        assert_eq!(connection_cap(1024, Some(1024)), 1024 - RESERVED_FDS as usize);
        assert_eq!(connection_cap(1024, Some(10)), 1);
        assert_eq!(connection_cap(64, None), 64);
    }

    fn state(ready: bool) -> HttpState {
        HttpState::new(
            Arc::default(),
            Arc::new(AtomicBool::new(ready)),
            WebConfigFile::from_file(None).expect("no web config"),
            8,
            Arc::default(),
        )
    }

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).expect("request")
    }

    /// /readyz and /metrics say 503 until the first mount table has been read.
    #[tokio::test]
    async fn not_ready_until_the_first_mount_table() {
        let s = state(false);
        assert_eq!(handle(&s, &get("/readyz")).await.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(handle(&s, &get("/metrics")).await.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(handle(&s, &get("/healthz")).await.status(), StatusCode::OK);
        s.ready.store(true, Ordering::Release);
        assert_eq!(handle(&s, &get("/readyz")).await.status(), StatusCode::OK);
        assert_eq!(handle(&s, &get("/metrics")).await.status(), StatusCode::OK);
    }

    /// A scrape reuses a render only when it started after the scrape arrived.
    #[tokio::test]
    async fn a_scrape_never_gets_an_older_render() {
        /// A render that takes a while, as at 10,000 mounts: concurrent scrapes
        /// all arrive before it ends.
        struct Slow;
        impl metrics::Collector for Slow {
            fn collect(&self) -> Vec<metrics::Family> {
                std::thread::sleep(Duration::from_millis(50));
                Vec::new()
            }
        }
        let s = state(true);
        s.exposition.register(Box::new(Slow));
        for _ in 0..3 {
            assert_eq!(handle(&s, &get("/metrics")).await.status(), StatusCode::OK);
        }
        assert_eq!(s.stats.renders.load(Ordering::Relaxed), 3, "sequential scrapes: one render each");
        let req = get("/metrics");
        let many: Vec<_> = (0..20).map(|_| handle(&s, &req)).collect();
        for r in futures_join(many).await {
            assert_eq!(r.status(), StatusCode::OK);
        }
        let renders = s.stats.renders.load(Ordering::Relaxed) - 3;
        assert!((1..=2).contains(&renders), "20 concurrent scrapes share at most 2 renders: {renders}");
        assert!(s.renders.0.last.lock().await.1.is_none(), "the text is not kept once every waiter has it");
    }

    /// The `Accept` header chooses the format; each format shares renders only
    /// with scrapes of its own; HEAD and 503 behave the same in both.
    #[tokio::test]
    async fn protobuf_when_the_scraper_prefers_it() {
        use http_body_util::BodyExt as _;
        struct Slow;
        impl metrics::Collector for Slow {
            fn collect(&self) -> Vec<metrics::Family> {
                static D: metrics::Def = metrics::Def {
                    name: "t_total",
                    help: "t",
                    kind: prometheus::proto::MetricType::COUNTER,
                    labels: &[],
                };
                std::thread::sleep(Duration::from_millis(50));
                let mut f = metrics::Family::new(&D);
                f.add(&[], 3.0);
                vec![f]
            }
        }
        // What Prometheus 3.5 sends with native histograms enabled.
        let proto_accept = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";
        let with = |method: Method, accept: &str| {
            Request::builder()
                .method(method)
                .uri("/metrics")
                .header("accept", accept)
                .body(())
                .expect("request")
        };
        let s = state(false);
        s.exposition.register(Box::new(Slow));
        let r = handle(&s, &with(Method::GET, proto_accept)).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "not ready in protobuf either");
        s.ready.store(true, Ordering::Release);
        let ct = |r: &Response<Full<Bytes>>| {
            r.headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .expect("content-type")
        };
        let head = handle(&s, &with(Method::HEAD, proto_accept)).await;
        assert_eq!(
            (head.status(), ct(&head).as_str()),
            (StatusCode::OK, metrics::encode::proto::CONTENT_TYPE)
        );
        assert_eq!(head.headers().get(VARY).map(|v| v.as_bytes()), Some(&b"Accept"[..]));

        let (text_req, proto_req) = (get("/metrics"), with(Method::GET, proto_accept));
        let before = s.stats.renders.load(Ordering::Relaxed);
        let many: Vec<_> =
            (0..20).map(|i| handle(&s, if i % 2 == 0 { &text_req } else { &proto_req })).collect();
        for (i, r) in futures_join(many).await.into_iter().enumerate() {
            assert_eq!(r.status(), StatusCode::OK);
            let content_type = ct(&r);
            let body = r.into_body().collect().await.expect("body").to_bytes();
            if i % 2 == 0 {
                assert_eq!(content_type, metrics::encode::text::CONTENT_TYPE);
                assert!(
                    body.starts_with(b"# HELP t_total t\n# TYPE t_total counter\nt_total 3\n"),
                    "text {i}"
                );
            } else {
                assert_eq!(content_type, metrics::encode::proto::CONTENT_TYPE);
                let mut buf = &body[..];
                let f: metrics::encode::proto::MetricFamily =
                    prost::Message::decode_length_delimited(&mut buf).expect("delimited protobuf");
                assert_eq!(
                    (f.name.as_str(), f.metric[0].counter.as_ref().map(|c| c.value)),
                    ("t_total", Some(3.0))
                );
            }
        }
        let scrapes =
            (s.stats.scrapes_text.load(Ordering::Relaxed), s.stats.scrapes_protobuf.load(Ordering::Relaxed));
        assert_eq!(scrapes, (10, 11), "scrapes counted per format (the HEAD in protobuf)");
        let renders = s.stats.renders.load(Ordering::Relaxed) - before;
        assert!(
            (2..=4).contains(&renders),
            "10 + 10 concurrent scrapes: at most 2 renders per format: {renders}"
        );
    }

    async fn futures_join<F: Future>(fs: Vec<F>) -> Vec<F::Output> {
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
