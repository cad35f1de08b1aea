//! Requests: basic auth, routing (`/metrics`, `/healthz`, `/readyz`, the landing
//! page `/`), methods (GET and HEAD only), readiness, the format and the
//! encoding (gzip or not) a scrape asks for, and the web config's extra headers.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ACCEPT, ALLOW, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, VARY, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};

use super::gzip;
use super::web_config::WebConfigFile;
use super::ServerState;
use crate::metrics;

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
pub async fn handle(state: &ServerState, req: &Request<impl Sized>) -> Response<Full<Bytes>> {
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
        "/metrics" => metrics(state, req).await,
        "/healthz" => response(StatusCode::OK, TEXT, "ok\n"),
        "/readyz" if ready => response(StatusCode::OK, TEXT, "ready\n"),
        "/readyz" => response(StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready: no mount table yet\n"),
        _ => response(StatusCode::OK, "text/html; charset=utf-8", LANDING),
    }
}

/// A scrape: the exposition in the format its `Accept` prefers, gzip-compressed
/// when its `Accept-Encoding` takes gzip.
async fn metrics(state: &ServerState, req: &Request<impl Sized>) -> Response<Full<Bytes>> {
    let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
    let format = metrics::Format::negotiate(accept);
    let stats = &state.stats;
    match format {
        metrics::Format::Text => &stats.scrapes_text,
        metrics::Format::Protobuf => &stats.scrapes_protobuf,
    }
    .fetch_add(1, Ordering::Relaxed);
    let renders = match format {
        metrics::Format::Text => &state.renders.0,
        metrics::Format::Protobuf => &state.renders.1,
    };
    // Counted before the render, as the format is: a scrape's own exposition counts it.
    let gzip = gzip::accepts(req.headers());
    if gzip {
        stats.scrapes_gzip.fetch_add(1, Ordering::Relaxed);
    }
    let Some(body) = renders.get(&state.exposition, format, gzip, stats).await else {
        return response(StatusCode::INTERNAL_SERVER_ERROR, TEXT, "rendering failed\n");
    };
    let sent = if body.gzip { &stats.bytes_gzip } else { &stats.bytes_identity };
    // HEAD: the same head, Content-Length included; hyper sends no body.
    if req.method() != Method::HEAD {
        sent.fetch_add(body.bytes.len() as u64, Ordering::Relaxed);
    }
    let mut r = response(StatusCode::OK, format.content_type(), body.bytes);
    let h = r.headers_mut();
    h.insert(VARY, HeaderValue::from_static("Accept, Accept-Encoding"));
    if body.gzip {
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    r
}

/// Basic auth: a cached credential at once; a bcrypt check off the async threads,
/// BCRYPT_AT_ONCE at a time, so a flood of wrong passwords costs at most that many cores.
async fn authorized(state: &ServerState, web: &Arc<WebConfigFile>, req: &Request<Incoming>) -> bool {
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
pub(super) async fn respond(
    state: Arc<ServerState>,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::server::testing::{futures_join, get, state};

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
        assert_eq!(head.headers().get(VARY).map(|v| v.as_bytes()), Some(&b"Accept, Accept-Encoding"[..]));

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

    /// 500 series that do not change: two renders differ only in the process metrics.
    struct Fixed;
    impl metrics::Collector for Fixed {
        fn collect(&self) -> Vec<metrics::Family> {
            static D: metrics::Def = metrics::Def {
                name: "t_total",
                help: "t",
                kind: prometheus::proto::MetricType::COUNTER,
                labels: &["i"],
            };
            let mut f = metrics::Family::new(&D);
            for i in 0..500 {
                f.add(&[&i.to_string()], 3.0);
            }
            vec![f]
        }
    }

    fn req(method: &Method, path: &str, accept: &str, encoding: Option<&str>) -> Request<()> {
        let mut b = Request::builder().method(method.clone()).uri(path).header("accept", accept);
        if let Some(e) = encoding {
            b = b.header("accept-encoding", e);
        }
        b.body(()).expect("request")
    }

    /// gzip only on /metrics and only when `Accept-Encoding` takes it; HEAD
    /// answers the same head; the body decompresses to the plain exposition,
    /// in both formats; what was sent is counted by encoding.
    #[tokio::test]
    async fn gzip_when_the_scraper_takes_it() {
        use std::io::Read as _;

        use http_body_util::BodyExt as _;
        let s = state(false);
        s.exposition.register(Box::new(Fixed));
        let r = handle(&s, &req(&Method::GET, "/metrics", "*/*", Some("gzip"))).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers().get(CONTENT_ENCODING).is_none(), "a 503 is plain");
        s.ready.store(true, Ordering::Release);
        for path in ["/", "/healthz", "/readyz", "/nope"] {
            let r = handle(&s, &req(&Method::GET, path, "*/*", Some("gzip"))).await;
            assert!(r.headers().get(CONTENT_ENCODING).is_none(), "{path} is plain");
        }
        let encoding = |r: &Response<Full<Bytes>>| r.headers().get(CONTENT_ENCODING).cloned();
        let vary = |r: &Response<Full<Bytes>>| r.headers().get(VARY).cloned();
        let proto = metrics::encode::proto::CONTENT_TYPE;
        let mut protobufs = 0;
        for (accept, encodings) in [("text/plain", "gzip"), (proto, "deflate, gzip;q=0.8"), ("*/*", "*")] {
            let accept = format!("{accept};proto=io.prometheus.client.MetricFamily;encoding=delimited");
            let head = handle(&s, &req(&Method::HEAD, "/metrics", &accept, Some(encodings))).await;
            let get = handle(&s, &req(&Method::GET, "/metrics", &accept, Some(encodings))).await;
            let plain = handle(&s, &req(&Method::GET, "/metrics", &accept, Some("gzip;q=0"))).await;
            for (what, r) in [("HEAD", &head), ("GET", &get)] {
                assert_eq!(
                    encoding(r).as_ref().map(|v| v.as_bytes()),
                    Some(&b"gzip"[..]),
                    "{what} {encodings}"
                );
            }
            assert_eq!(encoding(&plain), None, "gzip;q=0 refuses gzip");
            for r in [&head, &get, &plain] {
                assert_eq!(r.status(), StatusCode::OK);
                assert_eq!(vary(r).as_ref().map(|v| v.as_bytes()), Some(&b"Accept, Accept-Encoding"[..]));
                assert_eq!(r.headers().get(CONTENT_TYPE), get.headers().get(CONTENT_TYPE));
            }
            let protobuf = get.headers().get(CONTENT_TYPE).is_some_and(|v| v == proto);
            let gz = get.into_body().collect().await.expect("body").to_bytes();
            let plain = plain.into_body().collect().await.expect("body").to_bytes();
            let mut text = Vec::new();
            flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut text).expect("gzip");
            // Two renders: the process metrics may differ, the collector's may not.
            let upto = |b: &[u8]| b.split(|c| *c == b'\n').take(502).map(<[u8]>::to_vec).collect::<Vec<_>>();
            protobufs += usize::from(protobuf);
            if !protobuf {
                assert_eq!(upto(&text), upto(&plain), "gzip decompresses to the text");
            } else {
                let mut buf = &text[..];
                let f: metrics::encode::proto::MetricFamily =
                    prost::Message::decode_length_delimited(&mut buf).expect("delimited protobuf");
                assert_eq!((f.name.as_str(), f.metric.len()), ("t_total", 500), "{accept}");
            }
            assert!(gz.len() * 4 < plain.len(), "{} bytes compressed from {}", gz.len(), plain.len());
        }
        assert_eq!(protobufs, 1, "one format each: text, protobuf, text");
        let st = &s.stats;
        assert_eq!(st.scrapes_gzip.load(Ordering::Relaxed), 6, "3 GET and 3 HEAD");
        assert_eq!(st.compressions.load(Ordering::Relaxed), 6, "sequential: one compression each");
        let (gz, plain) = (st.bytes_gzip.load(Ordering::Relaxed), st.bytes_identity.load(Ordering::Relaxed));
        assert!(gz > 0 && gz * 4 < plain, "bytes sent: {gz} gzip, {plain} identity (HEAD sends none)");
    }
}
