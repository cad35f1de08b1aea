//! Collector for the HTTP server: connections, the cap, shedding, requests in flight,
//! scrapes, renders and their gzip compression;
//! and `ServerStats`, the figures the server fills for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus::proto::MetricType;

use super::{Collector, Def, Family};

static OPEN: Def = Def {
    name: "overlayfs_http_connections",
    help: "HTTP connections open now.",
    kind: MetricType::GAUGE,
    labels: &[],
};
static LIMIT: Def = Def {
    name: "overlayfs_http_connections_limit",
    help: "HTTP connections open at most (web.max_connections, at most the open files limit less a reserve); past it the oldest connection without a request in progress is shed.",
    kind: MetricType::GAUGE,
    labels: &[],
};
static SHED: Def = Def {
    name: "overlayfs_http_connections_shed_total",
    help: "HTTP connections closed to make room at the connection limit: the oldest one without a request in progress.",
    kind: MetricType::COUNTER,
    labels: &[],
};
static REFUSED: Def = Def {
    name: "overlayfs_http_connections_refused_total",
    help: "HTTP connections closed before any request, by reason: timeout (no complete request head, or TLS handshake record, within 10 s), tls_handshake (failed or not finished within 10 s), plain_http (HTTP sent to the TLS port).",
    kind: MetricType::COUNTER,
    labels: &["reason"],
};
static IN_FLIGHT: Def = Def {
    name: "overlayfs_http_requests_in_flight",
    help: "HTTP requests being answered now.",
    kind: MetricType::GAUGE,
    labels: &[],
};
static SCRAPES: Def = Def {
    name: "overlayfs_http_scrapes_total",
    help: "Requests to /metrics answered with an exposition, by format: text (0.0.4) or protobuf (delimited io.prometheus.client, native histograms; what Prometheus asks for with native histograms on).",
    kind: MetricType::COUNTER,
    labels: &["format"],
};
static GZIP_SCRAPES: Def = Def {
    name: "overlayfs_http_gzip_scrapes_total",
    help: "Requests to /metrics whose Accept-Encoding takes gzip (Prometheus' always does), answered with the exposition gzip-compressed; included in overlayfs_http_scrapes_total.",
    kind: MetricType::COUNTER,
    labels: &[],
};
static RESPONSE_BYTES: Def = Def {
    name: "overlayfs_http_response_bytes_total",
    help: "Bytes of /metrics response bodies sent, by content encoding: gzip or identity (not compressed); HEAD requests send none.",
    kind: MetricType::COUNTER,
    labels: &["encoding"],
};
static COMPRESSIONS: Def = Def {
    name: "overlayfs_http_compressions_total",
    help: "gzip compressions of a render of the exposition; the scrapes of one render that take gzip share one compression, so this grows slower than overlayfs_http_gzip_scrapes_total under concurrent scrapes.",
    kind: MetricType::COUNTER,
    labels: &[],
};
static RENDERS: Def = Def {
    name: "overlayfs_http_renders_total",
    help: "Renders of the exposition; scrapes that arrive during a render share the next one, so this grows slower than overlayfs_http_scrapes_total under concurrent scrapes.",
    kind: MetricType::COUNTER,
    labels: &[],
};

/// The server's own figures, written by the HTTP server.
#[derive(Debug, Default)]
pub struct ServerStats {
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
    /// `/metrics` requests that take gzip (in either format), counted as they arrive.
    pub scrapes_gzip: AtomicU64,
    /// Bytes of `/metrics` bodies sent gzip-compressed.
    pub bytes_gzip: AtomicU64,
    /// Bytes of `/metrics` bodies sent plain.
    pub bytes_identity: AtomicU64,
    /// gzip compressions of renders (fewer than gzip scrapes when concurrent ones shared one).
    pub compressions: AtomicU64,
}

pub struct ServerCollector {
    stats: Arc<ServerStats>,
}

impl ServerCollector {
    pub fn new(stats: Arc<ServerStats>) -> Self {
        ServerCollector { stats }
    }
}

impl Collector for ServerCollector {
    fn collect(&self) -> Vec<Family> {
        let s = &self.stats;
        let one = |def: &'static Def, v: &AtomicU64| {
            let mut f = Family::new(def);
            f.add(&[], v.load(Ordering::Relaxed) as f64);
            f
        };
        let mut refused = Family::new(&REFUSED);
        for (reason, v) in [
            ("plain_http", &s.refused_plain_http),
            ("timeout", &s.refused_timeout),
            ("tls_handshake", &s.refused_tls),
        ] {
            refused.add(&[reason], v.load(Ordering::Relaxed) as f64);
        }
        let mut scrapes = Family::new(&SCRAPES);
        scrapes.add(&["protobuf"], s.scrapes_protobuf.load(Ordering::Relaxed) as f64);
        scrapes.add(&["text"], s.scrapes_text.load(Ordering::Relaxed) as f64);
        let mut bytes = Family::new(&RESPONSE_BYTES);
        bytes.add(&["gzip"], s.bytes_gzip.load(Ordering::Relaxed) as f64);
        bytes.add(&["identity"], s.bytes_identity.load(Ordering::Relaxed) as f64);
        vec![
            one(&OPEN, &s.open),
            one(&LIMIT, &s.limit),
            one(&SHED, &s.shed),
            refused,
            one(&IN_FLIGHT, &s.in_flight),
            scrapes,
            one(&RENDERS, &s.renders),
            one(&GZIP_SCRAPES, &s.scrapes_gzip),
            bytes,
            one(&COMPRESSIONS, &s.compressions),
        ]
    }
}
