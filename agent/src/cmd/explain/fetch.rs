//! Where the samples come from: a running agent's /metrics (the text format), or
//! a Prometheus's HTTP API (`increase` over the period, summed per mount). A
//! small HTTP/1 GET over hyper's client connection: plain http only.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{ACCEPT, HOST};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

use super::exposition::{self, Labels, ParseError, Sample};
use super::model::{self, COUNTERS, EBPF_DISABLED, MNTNS_HOLDER, MOUNT_INFO, MOUNT_KEY};

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(15);
/// The largest answer read (a node's exposition is a few MiB at most).
const MAX_BODY: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}: want an http:// URL (explain speaks plain HTTP only)")]
    Url(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}: {1}")]
    Http(String, String),
    #[error("{0}: no answer within {1:?}")]
    Timeout(String, Duration),
    #[error("{0}: HTTP status {1}: {2}")]
    Status(String, u16, String),
    #[error("{0}: {1}")]
    Parse(String, ParseError),
    #[error("{0}: not a Prometheus query answer: {1}")]
    Api(String, String),
}

/// GETs `url`; the status and the body.
async fn get(url: &str, accept: &str) -> Result<(u16, Bytes), FetchError> {
    match tokio::time::timeout(TIMEOUT, get_now(url, accept)).await {
        Ok(r) => r,
        Err(_) => Err(FetchError::Timeout(url.to_owned(), TIMEOUT)),
    }
}

async fn get_now(url: &str, accept: &str) -> Result<(u16, Bytes), FetchError> {
    let bad_url = || FetchError::Url(url.to_owned());
    let uri: Uri = url.parse().map_err(|_| bad_url())?;
    let (Some("http"), Some(authority)) = (uri.scheme_str(), uri.authority()) else { return Err(bad_url()) };
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let http = |e: &dyn std::fmt::Display| FetchError::Http(url.to_owned(), e.to_string());
    let stream = TcpStream::connect((host, port)).await.map_err(|e| FetchError::Io(url.to_owned(), e))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| http(&e))?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = Request::get(path)
        .header(HOST, authority.as_str())
        .header(ACCEPT, accept)
        .body(Empty::<Bytes>::new())
        .map_err(|e| http(&e))?;
    let response = sender.send_request(request).await.map_err(|e| http(&e))?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), MAX_BODY).collect().await.map_err(|e| http(&e))?;
    Ok((status, body.to_bytes()))
}

fn lossy(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(200).collect()
}

/// One scrape of an agent's /metrics: the samples `explain` reads.
pub async fn scrape(url: &str) -> Result<Vec<Sample>, FetchError> {
    let (status, body) = get(url, "text/plain;version=0.0.4").await?;
    if status != 200 {
        return Err(FetchError::Status(url.to_owned(), status, lossy(&body)));
    }
    let text = String::from_utf8_lossy(&body);
    exposition::parse(&text, model::wanted).map_err(|e| FetchError::Parse(url.to_owned(), e))
}

/// The counters' growth from `before` to `after` (a counter that went down was
/// reset: its value after); every other sample as it is after.
pub fn increase(before: &[Sample], after: Vec<Sample>) -> Vec<Sample> {
    let counter = |n: &str| COUNTERS.iter().any(|(c, _)| *c == n);
    after
        .into_iter()
        .map(|mut s| {
            if counter(&s.name) {
                let old =
                    before.iter().find(|b| b.name == s.name && b.labels == s.labels).map_or(0.0, |b| b.value);
                if s.value >= old {
                    s.value -= old;
                }
            }
            s
        })
        .collect()
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    result: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    metric: Labels,
    value: (f64, String),
}

/// A Prometheus duration: whole hours, minutes or seconds.
pub fn promql_duration(d: Duration) -> String {
    match d.as_secs() {
        0 => format!("{}ms", d.as_millis().max(1)),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Percent-encodes a query parameter (RFC 3986 unreserved characters kept).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// The PromQL queries, each with the metric name its results are read as.
pub fn queries(since: Duration) -> Vec<(&'static str, String)> {
    let d = promql_duration(since);
    let mut by: Vec<&str> = MOUNT_KEY.iter().chain(MNTNS_HOLDER).copied().collect();
    let mut out: Vec<_> = COUNTERS
        .iter()
        .map(|(metric, label)| {
            by.push(label);
            let q = format!("sum by ({}) (increase({metric}[{d}]))", by.join(", "));
            by.pop();
            (*metric, q)
        })
        .collect();
    out.push((MOUNT_INFO, format!("last_over_time({MOUNT_INFO}[{d}])")));
    out.push((EBPF_DISABLED, EBPF_DISABLED.to_owned()));
    out
}

/// Runs `query` at `base` (Prometheus's URL); its vector as samples named `name`.
async fn query(base: &str, name: &str, query: &str) -> Result<Vec<Sample>, FetchError> {
    let url = format!("{}/api/v1/query?query={}", base.trim_end_matches('/'), encode(query));
    let (status, body) = get(&url, "application/json").await?;
    let api = |why: String| FetchError::Api(base.to_owned(), why);
    let answer: Answer = serde_json::from_slice(&body).map_err(|e| api(format!("HTTP {status}: {e}")))?;
    if answer.status != "success" {
        return Err(api(answer.error.unwrap_or(answer.status)));
    }
    let result = answer.data.map(|d| d.result).unwrap_or_default();
    let sample = |i: Item| {
        let value = i.value.1.parse::<f64>().map_err(|_| api(format!("value {:?}", i.value.1)))?;
        Ok(Sample { name: name.to_owned(), labels: i.metric, value })
    };
    result.into_iter().map(sample).collect()
}

/// Every sample `explain` reads, from a Prometheus, over the last `since`.
pub async fn from_prometheus(base: &str, since: Duration) -> Result<Vec<Sample>, FetchError> {
    let mut samples = Vec::new();
    for (name, q) in queries(since) {
        samples.extend(query(base, name, &q).await?);
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_sum_per_mount_and_keep_the_breakdown() {
        let q = queries(Duration::from_secs(3600));
        assert_eq!(
            q[0].1,
            "sum by (instance, mountpoint, mntns, mntns_runtime, mntns_container_id, mntns_pod_namespace, \
             mntns_pod_name, fix) (increase(overlayfs_copy_up_avoidable_seconds_total[1h]))"
        );
        assert!(q.iter().any(|(n, s)| *n == MOUNT_INFO && s == "last_over_time(overlayfs_mount_info[1h])"));
        assert_eq!(promql_duration(Duration::from_secs(90)), "90s");
        assert_eq!(promql_duration(Duration::from_secs(300)), "5m");
        assert_eq!(encode("a b{c=\"/x\"}[5m]"), "a%20b%7Bc%3D%22%2Fx%22%7D%5B5m%5D");
    }

    #[test]
    fn increase_subtracts_and_survives_resets() {
        let s = |v: f64| Sample { name: model::SECONDS.to_owned(), labels: Labels::new(), value: v };
        let info = Sample { name: MOUNT_INFO.to_owned(), labels: Labels::new(), value: 1.0 };
        let out = increase(&[s(10.0), info.clone()], vec![s(12.5), info.clone()]);
        assert_eq!(out, vec![s(2.5), info.clone()]);
        assert_eq!(increase(&[s(10.0)], vec![s(3.0)]), vec![s(3.0)], "reset: the value after");
    }
}
