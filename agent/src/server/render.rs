//! Render sharing: one render of the exposition at a time per format, shared by
//! the scrapes that waited for it (`Renders`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::metrics;
use crate::metrics::server::ServerStats;

/// One render of the exposition at a time; a request reuses a render that
/// started after it arrived, so the answer is never older than the request. The
/// text is kept only for the requests that waited for it (at 10,000 mounts it is
/// 20 MiB), not until the next scrape.
#[derive(Default)]
pub(super) struct Renders {
    /// Renders started so far.
    started: AtomicU64,
    /// Requests waiting for the lock.
    waiting: AtomicU64,
    /// The last render: its number and, while requests wait for it, its text.
    last: tokio::sync::Mutex<(u64, Option<Bytes>)>,
}

impl Renders {
    /// The exposition in `format`; None if the render failed (a bug: it panicked).
    pub(super) async fn get(
        &self,
        exposition: &Arc<metrics::Exposition>,
        format: metrics::Format,
        stats: &ServerStats,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hyper::StatusCode;

    use super::*;
    use crate::server::routes::handle;
    use crate::server::testing::{futures_join, get, state};

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
}
