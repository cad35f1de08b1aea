//! HTTP endpoints: `/metrics`, `/healthz`, `/readyz` and a landing page `/`.
//! Only GET and HEAD; HTTP/1.1; graceful shutdown. Optional TLS and basic auth
//! (`--web.config.file`, see web_config.rs).
//!
//! Hardening: at most `max_connections` connections at once (more wait in the
//! kernel's backlog); request headers must arrive within 10 s and fit in 16 KiB;
//! a TLS handshake must finish within 10 s; a client that stops reading its
//! response for 10 s is dropped; a keep-alive connection idle for 10 s is closed.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics;
use crate::sync::RwLockExt;
use crate::web_config::WebConfigFile;

/// Time allowed for request headers, a TLS handshake, and a stalled response write.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted (larger: 431).
const MAX_HEAD: usize = 16 * 1024;

/// What the handlers need.
pub struct HttpState {
    pub exposition: Arc<metrics::Exposition>,
    /// Set once the first discovery has completed.
    pub ready: Arc<AtomicBool>,
    /// TLS and auth; replaced on SIGHUP. New connections use the current one.
    pub web: RwLock<Arc<WebConfigFile>>,
    pub max_connections: usize,
}

impl HttpState {
    fn web(&self) -> Arc<WebConfigFile> {
        self.web.read_now().clone()
    }
}

const LANDING: &str = "<!doctype html>\n<html><head><title>overlay-agent</title></head><body>\n\
<h1>overlay-agent</h1>\n<p>overlayfs mounts, upper-dir contents and copy-ups for Prometheus.</p>\n\
<ul><li><a href=\"/metrics\">/metrics</a></li><li><a href=\"/healthz\">/healthz</a></li>\
<li><a href=\"/readyz\">/readyz</a></li></ul>\n</body></html>\n";

fn response(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Routes one request. Public for tests.
pub fn handle(state: &HttpState, req: &Request<impl Sized>) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
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
    match path {
        "/metrics" => response(StatusCode::OK, metrics::CONTENT_TYPE, state.exposition.render()),
        "/healthz" => response(StatusCode::OK, TEXT, "ok\n"),
        "/readyz" if state.ready.load(Ordering::Acquire) => response(StatusCode::OK, TEXT, "ready\n"),
        "/readyz" => response(StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready: no mount table yet\n"),
        _ => response(StatusCode::OK, "text/html; charset=utf-8", LANDING),
    }
}

/// A stream whose writes fail once they have made no progress for IO_TIMEOUT
/// (a client that stops reading its response).
struct WriteDeadline<T> {
    inner: T,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> WriteDeadline<T> {
    fn new(inner: T) -> Self {
        WriteDeadline { inner, stalled: None }
    }

    fn check<R>(&mut self, cx: &mut Context<'_>, r: Poll<std::io::Result<R>>) -> Poll<std::io::Result<R>> {
        match r {
            Poll::Pending => {
                let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(IO_TIMEOUT)));
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

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, r)
    }
}

/// Answers one request: basic auth (bcrypt off the async threads), then routing,
/// then the web config's extra headers.
async fn respond(
    state: Arc<HttpState>,
    web: Arc<WebConfigFile>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let authorized = if web.requires_auth() {
        let header = req.headers().get(AUTHORIZATION).cloned();
        let w = web.clone();
        tokio::task::spawn_blocking(move || w.authorized(header.as_ref())).await.unwrap_or(false)
    } else {
        true
    };
    let mut r = if authorized {
        handle(&state, &req)
    } else {
        let mut r = response(StatusCode::UNAUTHORIZED, "text/plain; charset=utf-8", "unauthorized\n");
        r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"overlay-agent\""));
        r
    };
    for (n, v) in &web.headers {
        r.headers_mut().insert(n.clone(), v.clone());
    }
    r
}

/// Serves one connection (plain or TLS) with the limits above.
fn connection<I>(io: I, state: Arc<HttpState>, web: Arc<WebConfigFile>, graceful: Watcher) -> ConnFuture
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let (state, web) = (state.clone(), web.clone());
        async move { Ok::<_, Infallible>(respond(state, web, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(IO_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(WriteDeadline::new(io)), service);
    Box::pin(graceful.watch(conn))
}

type ConnFuture = Pin<Box<dyn Future<Output = Result<(), hyper::Error>> + Send>>;

/// A TLS connection: a client speaking plain HTTP gets a 400 that says so; a
/// handshake that fails or takes longer than IO_TIMEOUT closes the connection.
async fn tls_connection(
    stream: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<HttpState>,
    web: Arc<WebConfigFile>,
    graceful: Watcher,
) -> Result<ConnFuture, String> {
    use tokio::io::AsyncWriteExt;
    let mut first = [0u8; 1];
    match tokio::time::timeout(IO_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] != 0x16 => {
            // Not a TLS handshake record: most likely plain HTTP. Read the request
            // head first (closing with unread data would reset the connection).
            use tokio::io::AsyncReadExt;
            let mut stream = stream;
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while head.len() < MAX_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
            })
            .await;
            let _ = tokio::time::timeout(IO_TIMEOUT, async {
                stream
                    .write_all(b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
                    .await?;
                stream.shutdown().await
            })
            .await;
            return Err("plain HTTP on the TLS port".into());
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("no TLS handshake within 10s".into()),
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    match tokio::time::timeout(IO_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Ok(connection(s, state, web, graceful)),
        Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
        Err(_) => Err("TLS handshake did not finish within 10s".into()),
    }
}

/// Serves until `shutdown` resolves, then lets open connections finish (at most 5 s).
pub async fn serve(listener: TcpListener, state: Arc<HttpState>, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(state.max_connections.max(1)));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A free connection slot first; meanwhile new connections wait in the backlog.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let state = state.clone();
        let graceful = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let web = state.web();
            let conn = match web.tls.clone() {
                Some(tls) => match tls_connection(stream, tls, state, web, graceful).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "connection refused");
                        return;
                    }
                },
                None => connection(stream, state, web, graceful),
            };
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection error");
            }
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

    /// A peer that never reads: the write fails after IO_TIMEOUT of no progress,
    /// instead of holding the connection (and its slot) forever.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_write_times_out() {
        let (client, _server_side_unread) = tokio::io::duplex(64);
        let mut w = WriteDeadline::new(client);
        let started = tokio::time::Instant::now();
        let err = w.write_all(&[0u8; 4096]).await.expect_err("the reader never reads");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= IO_TIMEOUT);
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
        let mut w = WriteDeadline::new(client);
        w.write_all(&[0u8; 640]).await.expect("each chunk drains within 10 s");
        assert_eq!(reader.await.expect("reader"), 640);
    }
}
