//! `overlay-agent explain`: per container, pod or volume, the time lost in
//! copy-ups, the bytes, the causes, and the fix that would have avoided them,
//! with its expected saving, the exact setting and the runbook. It reads a
//! running agent's /metrics ([`fetch::scrape`]) or a Prometheus
//! ([`fetch::from_prometheus`]), joins the per-mount counters to
//! `overlayfs_mount_info` ([`model`]), and writes text ([`render`]) from the
//! one advice table ([`advice`]).
//!
//! A fix is shown when it would have saved at least 1 s or 64 MiB; `--all`
//! shows every fix that would have avoided anything ([`Shown`]).
//!
//! Exit codes: 0 nothing to fix (one calm line); 3 fixes were shown; 1 the
//! metrics could not be read (and 2, from the argument parser, bad usage).

pub mod advice;
pub mod exposition;
pub mod fetch;
pub mod model;
pub mod render;
#[cfg(test)]
mod tests;

use std::io::Write;
use std::time::Duration;

pub use fetch::FetchError;
pub use render::Shown;

/// Nothing to fix.
pub const EXIT_NOTHING_TO_FIX: u8 = 0;
/// At least one fix was shown.
pub const EXIT_FIXES_SHOWN: u8 = 3;

/// Prometheus's period when `--since` is not given.
pub const DEFAULT_PROMETHEUS_SINCE: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("writing the report: {0}")]
    Write(#[from] std::io::Error),
}

/// Where to read and over which period.
#[derive(Debug, Clone)]
pub enum Source {
    /// An agent's /metrics URL; with a period, two scrapes that far apart.
    Agent { url: String, since: Option<Duration> },
    /// A Prometheus's base URL.
    Prometheus { url: String, since: Duration },
}

impl Source {
    /// From the command line: `--prometheus` wins; else `--url`, else the local
    /// agent on `port`. A URL without a scheme (`localhost:9864`) is http; one
    /// without a path gets /metrics.
    pub fn new(url: Option<&str>, prometheus: Option<&str>, since: Option<Duration>, port: u16) -> Source {
        if let Some(p) = prometheus {
            return Source::Prometheus {
                url: with_scheme(p),
                since: since.unwrap_or(DEFAULT_PROMETHEUS_SINCE),
            };
        }
        let url = url.map_or_else(|| format!("http://localhost:{port}/metrics"), with_scheme);
        let has_path =
            url.split_once("://").is_some_and(|(_, rest)| rest.trim_end_matches('/').contains('/'));
        let url = if has_path { url } else { format!("{}/metrics", url.trim_end_matches('/')) };
        Source::Agent { url, since }
    }

    /// The period the figures cover, as the report says it.
    pub fn period(&self) -> String {
        match self {
            Source::Agent { since: None, .. } => "since the agent started".to_owned(),
            Source::Agent { since: Some(d), .. } | Source::Prometheus { since: d, .. } => {
                format!("in the last {}", fetch::promql_duration(*d))
            }
        }
    }

    async fn samples(&self) -> Result<Vec<exposition::Sample>, FetchError> {
        match self {
            Source::Agent { url, since: None } => fetch::scrape(url).await,
            Source::Agent { url, since: Some(d) } => {
                let before = fetch::scrape(url).await?;
                tokio::time::sleep(*d).await;
                Ok(fetch::increase(&before, fetch::scrape(url).await?))
            }
            Source::Prometheus { url, since } => fetch::from_prometheus(url, *since).await,
        }
    }
}

/// `url` with `http://` in front when it names no scheme.
fn with_scheme(url: &str) -> String {
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

/// Reads `source`, writes the report with the fixes `shown` asks for; the exit code.
pub async fn run(source: &Source, shown: Shown, out: &mut impl Write) -> Result<u8, ExplainError> {
    let samples = source.samples().await?;
    let overview = model::build(&samples);
    let shown = render::report(&overview, &source.period(), shown, out)?;
    out.flush()?;
    Ok(if shown { EXIT_FIXES_SHOWN } else { EXIT_NOTHING_TO_FIX })
}
