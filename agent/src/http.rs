//! HTTP endpoints: `/metrics`, `/healthz`, `/readyz` and a landing page `/`.
//! Only GET and HEAD; HTTP/1.1; graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::Registry;
use tokio::net::TcpListener;

use crate::metrics;

/// What the handlers need.
pub struct HttpState {
    pub registry: Registry,
    /// Set once the first discovery has completed.
    pub ready: Arc<AtomicBool>,
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
        "/metrics" => response(StatusCode::OK, metrics::CONTENT_TYPE, metrics::render(&state.registry)),
        "/healthz" => response(StatusCode::OK, TEXT, "ok\n"),
        "/readyz" if state.ready.load(Ordering::Acquire) => response(StatusCode::OK, TEXT, "ready\n"),
        "/readyz" => response(StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready: no mount table yet\n"),
        _ => response(StatusCode::OK, "text/html; charset=utf-8", LANDING),
    }
}

/// Serves until `shutdown` resolves, then lets open connections finish (at most 5 s).
pub async fn serve(listener: TcpListener, state: Arc<HttpState>, shutdown: impl Future<Output = ()>) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let state = state.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let r = handle(&state, &req);
                    async move { Ok::<_, Infallible>(r) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await.is_err() {
        tracing::warn!("open HTTP connections did not finish within 5s");
    }
}
