//! Render sharing: one render of the exposition at a time per format, shared by
//! the scrapes that waited for it (`Renders`); and at most one gzip compression
//! of each render, shared by those of its scrapes that take gzip (`Render::gzip`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use super::gzip;
use crate::metrics;
use crate::metrics::server::ServerStats;

/// A `/metrics` body, and whether it is gzip-compressed.
pub(super) struct Body {
    pub bytes: Bytes,
    pub gzip: bool,
}

/// One render of the exposition: its text and, once one of its scrapes takes
/// gzip, its compression.
struct Render {
    text: Bytes,
    /// Set by the first scrape that wants gzip, which starts the compression.
    compressing: AtomicBool,
    /// None until the compression has finished; then Some(None) if it failed.
    gzip: watch::Sender<Option<Option<Bytes>>>,
}

impl Render {
    fn new(text: Bytes) -> Arc<Render> {
        Arc::new(Render { text, compressing: AtomicBool::new(false), gzip: watch::Sender::new(None) })
    }

    /// This render gzip-compressed: compressed once, off the async threads, by
    /// the first scrape that asks; the others wait for that compression, and
    /// scrapes that take the text do not. None if it failed (a bug: it panicked).
    async fn gzip(self: &Arc<Self>, stats: &ServerStats) -> Option<Bytes> {
        let mut done = self.gzip.subscribe();
        if !self.compressing.swap(true, Ordering::AcqRel) {
            stats.compressions.fetch_add(1, Ordering::Relaxed);
            let render = self.clone();
            // Not awaited: it publishes its result even if this scrape goes away.
            tokio::task::spawn_blocking(move || {
                let text = &render.text;
                let gz = std::panic::catch_unwind(|| gzip::compress(text, gzip::LEVEL));
                let gz = match gz {
                    Ok(Ok(gz)) => Some(Bytes::from(gz)),
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "compressing the exposition failed");
                        None
                    }
                    Err(_) => {
                        tracing::error!("compressing the exposition panicked");
                        None
                    }
                };
                render.gzip.send_replace(Some(gz));
            });
        }
        let gz = done.wait_for(Option::is_some).await.ok()?.clone();
        gz.flatten()
    }
}

/// One render of the exposition at a time; a request reuses a render that
/// started after it arrived, so the answer is never older than the request. The
/// text (and its compression) is kept only for the requests that waited for it
/// (at 10,000 mounts it is 20 MiB), not until the next scrape.
#[derive(Default)]
pub(super) struct Renders {
    /// Renders started so far.
    started: AtomicU64,
    /// Requests waiting for the lock.
    waiting: AtomicU64,
    /// The last render: its number and, while requests wait for it, the render.
    last: tokio::sync::Mutex<(u64, Option<Arc<Render>>)>,
}

impl Renders {
    /// The exposition in `format`, gzip-compressed if `gzip` (plain if the
    /// compression failed); None if the render failed (a bug: it panicked).
    pub(super) async fn get(
        &self,
        exposition: &Arc<metrics::Exposition>,
        format: metrics::Format,
        gzip: bool,
        stats: &ServerStats,
    ) -> Option<Body> {
        let render = self.render(exposition, format, stats).await?;
        if gzip {
            if let Some(bytes) = render.gzip(stats).await {
                return Some(Body { bytes, gzip: true });
            }
        }
        Some(Body { bytes: render.text.clone(), gzip: false })
    }

    /// A render that started after this request arrived: a new one, or the one
    /// another request started meanwhile.
    async fn render(
        &self,
        exposition: &Arc<metrics::Exposition>,
        format: metrics::Format,
        stats: &ServerStats,
    ) -> Option<Arc<Render>> {
        // Counted as waiting before reading `started`: a render that starts after
        // this point keeps its text for this request.
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let arrived = self.started.load(Ordering::Acquire);
        let mut last = self.last.lock().await;
        let others = self.waiting.fetch_sub(1, Ordering::AcqRel) - 1;
        if last.0 > arrived {
            if let Some(render) = last.1.clone() {
                if others == 0 {
                    last.1 = None;
                }
                return Some(render);
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
                let render = Render::new(text);
                let keep = self.waiting.load(Ordering::Acquire) > 0;
                *last = (number, keep.then(|| render.clone()));
                Some(render)
            }
            Err(e) => {
                tracing::error!(error = %e, "rendering the exposition failed");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::time::Duration;

    use http_body_util::BodyExt as _;
    use hyper::header::CONTENT_ENCODING;
    use hyper::{Request, StatusCode};

    use super::*;
    use crate::server::routes::handle;
    use crate::server::testing::{futures_join, get, state};

    /// A render that takes a while, as at 10,000 mounts: concurrent scrapes
    /// all arrive before it ends.
    struct Slow;
    impl metrics::Collector for Slow {
        fn collect(&self) -> Vec<metrics::Family> {
            std::thread::sleep(Duration::from_millis(50));
            Vec::new()
        }
    }

    fn gunzip(gz: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(gz).read_to_end(&mut out).expect("a gzip body");
        out
    }

    /// A scrape reuses a render only when it started after the scrape arrived.
    #[tokio::test]
    async fn a_scrape_never_gets_an_older_render() {
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

    /// Concurrent scrapes that take gzip share one compression of their render
    /// and get exactly its text once decompressed; the plain scrapes beside
    /// them get the text; plain scrapes alone compress nothing.
    #[tokio::test]
    async fn gzip_scrapes_of_one_render_share_one_compression() {
        let s = state(true);
        s.exposition.register(Box::new(Slow));
        let plain = get("/metrics");
        let gz = Request::get("/metrics").header("accept-encoding", "gzip").body(()).expect("request");
        futures_join((0..10).map(|_| handle(&s, &plain)).collect()).await;
        assert_eq!(s.stats.compressions.load(Ordering::Relaxed), 0, "plain scrapes compress nothing");

        let before = s.stats.renders.load(Ordering::Relaxed);
        let many: Vec<_> = (0..20).map(|i| handle(&s, if i % 2 == 1 { &gz } else { &plain })).collect();
        let (mut texts, mut gzipped) = (Vec::new(), Vec::new());
        for r in futures_join(many).await {
            assert_eq!(r.status(), StatusCode::OK);
            let gzip = r.headers().get(CONTENT_ENCODING).map(|v| v.as_bytes().to_vec());
            let body = r.into_body().collect().await.expect("body").to_bytes();
            match gzip.as_deref() {
                Some(b"gzip") => gzipped.push(body),
                None => texts.push(body),
                Some(other) => panic!("Content-Encoding {other:?}"),
            }
        }
        assert_eq!((texts.len(), gzipped.len()), (10, 10), "gzip exactly for the scrapes that take it");
        let renders = s.stats.renders.load(Ordering::Relaxed) - before;
        let compressions = s.stats.compressions.load(Ordering::Relaxed);
        assert!(
            (1..=renders).contains(&compressions),
            "10 concurrent gzip scrapes: at most one compression per render: {compressions}, {renders} renders"
        );
        for body in &gzipped {
            let text = gunzip(body);
            assert!(
                texts.iter().any(|t| *t == text),
                "a gzip body decompresses to a plain one of its render"
            );
        }
        assert!(s.renders.0.last.lock().await.1.is_none(), "the render is not kept once every waiter has it");
    }

    /// A scrape that goes away while its compression runs does not lose it:
    /// the next scrape of that render gets it, and it ran once.
    #[tokio::test]
    async fn a_compression_outlives_the_scrape_that_started_it() {
        let text: Vec<u8> = (0..50_000).flat_map(|i| format!("m{{i=\"{i}\"}} 1\n").into_bytes()).collect();
        let (render, stats) = (Render::new(Bytes::from(text.clone())), ServerStats::default());
        {
            let mut first = std::pin::pin!(render.gzip(&stats));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let _ = std::future::Future::poll(first.as_mut(), &mut cx);
        }
        let gz = render.gzip(&stats).await.expect("compressed");
        assert_eq!(stats.compressions.load(Ordering::Relaxed), 1);
        assert_eq!(gunzip(&gz), text);
    }
}
