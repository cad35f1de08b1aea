//! Configuration file: YAML, every key optional, unknown keys rejected.
//!
//! Errors name the file, the line and column, and the key (serde_yaml reports the
//! path of the offending key, e.g. `scan.interval`). Values that need more than a
//! type check (durations, regexes, addresses) are validated while deserializing so
//! that their errors carry a location too.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::pattern::PathRegex;

mod restart;
pub use restart::{RestartOnly, RESTART_ONLY};

/// Default port: in the exporters' 9100-9999 range, not used by well-known exporters.
pub const DEFAULT_PORT: u16 = 9864;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config file: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Parse { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub web: WebConfig,
    pub discovery: DiscoveryConfig,
    pub scan: ScanConfig,
    pub ebpf: EbpfConfig,
    pub identity: IdentityConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Rules for layouts the agent does not know, tried before the built-in ones.
    pub rules: Vec<crate::identity::IdentityRule>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EbpfConfig {
    /// Attach the copy-up probes (needs root: CAP_BPF + CAP_PERFMON, or CAP_SYS_ADMIN).
    pub enabled: bool,
    /// Also key the bytes and latency histograms by mount, in the kernel
    /// (overlayfs_mount_copy_up_*; the node-wide ones are their sums).
    pub per_mount_histograms: bool,
    /// Which histogram families carry classic buckets (their text form).
    pub classic_histograms: ClassicHistograms,
    /// Comms shown in overlayfs_copy_up_process_*_total (the rest: comm="other").
    pub top_processes: usize,
    /// A shown comm without copy-ups for this long makes room for another.
    #[serde(deserialize_with = "de_duration")]
    pub top_processes_idle: Duration,
}

impl Default for EbpfConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            per_mount_histograms: true,
            classic_histograms: ClassicHistograms::Node,
            top_processes: 10,
            top_processes_idle: Duration::from_secs(15 * 60),
        }
    }
}

/// Which copy-up histograms have classic buckets (`le` series, the only form
/// the text format has). Native buckets need no such choice: one series each.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClassicHistograms {
    /// The node-wide overlayfs_copy_up_{bytes,duration_seconds}{cause}.
    #[default]
    Node,
    /// Those and the per-mount overlayfs_mount_copy_up_*{mountpoint,cause}:
    /// mounts x causes x 16 classic series.
    All,
    /// None: the histograms are served in the protobuf format only.
    None,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// `host:port`, `:port` (all interfaces) or `[v6]:port`.
    pub listen_address: ListenAddress,
    /// TLS and basic auth, in the exporter toolkit's web config format.
    pub config_file: Option<PathBuf>,
    /// Connections open at once (at most the open files limit less a reserve). At
    /// the cap, the oldest connection without a request in progress is closed to make room.
    pub max_connections: usize,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            listen_address: ListenAddress(SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))),
            config_file: None,
            max_connections: 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// procfs root; mountinfo is read from `<procfs>/1/mountinfo`, else `<procfs>/self/mountinfo`.
    pub procfs: PathBuf,
    /// Where the host's root filesystem is visible: upper dirs named in mountinfo
    /// are opened under it (`/host` when the agent runs in a container with `/:/host`).
    pub rootfs: PathBuf,
    /// Only mountpoints matching one of these (anchored) regexes are exported; empty = all.
    pub include_mountpoints: Vec<PathRegex>,
    /// Mountpoints matching one of these (anchored) regexes are not exported.
    pub exclude_mountpoints: Vec<PathRegex>,
    /// Re-read mountinfo at least this often, even without a kernel change notification.
    #[serde(deserialize_with = "de_duration")]
    pub resync_interval: Duration,
    /// Read the mount table of every mount namespace on the node (containers,
    /// Docker-in-Docker, rootless podman, CI workers), not only the host's.
    pub mount_namespaces: bool,
    /// At most this many mount namespaces besides the host's are read; the rest
    /// are counted (overlayfs_discovery_namespaces_over_cap) and logged.
    pub max_namespaces: usize,
    /// How often the processes are listed for new and ended mount namespaces.
    #[serde(deserialize_with = "de_duration")]
    pub namespace_interval: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            procfs: PathBuf::from("/proc"),
            rootfs: PathBuf::from("/"),
            include_mountpoints: Vec::new(),
            exclude_mountpoints: Vec::new(),
            resync_interval: Duration::from_secs(30),
            mount_namespaces: true,
            max_namespaces: 4096,
            namespace_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScanConfig {
    /// Walk upper dirs at all.
    pub enabled: bool,
    /// Time between the end of one scan of an upper dir and the start of the next.
    #[serde(deserialize_with = "de_duration")]
    pub interval: Duration,
    /// Upper dirs scanned at the same time (each on its own thread).
    pub concurrency: usize,
    /// A scan running longer stops (partial figures, reason="timeout"); one stuck
    /// in a hung filesystem is marked stale and its worker replaced.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Run scan threads at SCHED_IDLE and idle I/O priority.
    pub idle_priority: bool,
    /// CPU budget of all scan threads together, a share of one core (0.25 = a
    /// quarter); scans pause to stay within it. `None`: unlimited.
    pub max_cpu: Option<f64>,
    /// Read bytes and inodes from the upper dir's project quota where it has one
    /// (read-only: FS_IOC_FSGETXATTR and quotactl).
    pub quota: bool,
    /// In quota mode: time between quota readings of an upper dir.
    #[serde(deserialize_with = "de_duration")]
    pub quota_interval: Duration,
    /// In quota mode: time between full walks (entry classification), instead of
    /// `interval`.
    #[serde(deserialize_with = "de_duration")]
    pub classify_interval: Duration,
    /// Opt-in, WRITES TO THE FILESYSTEM: give upper dirs (and their work dirs) that
    /// have no project id one from this range, so that they get quota mode.
    pub assign_project_ids: Option<ProjectIdRange>,
}

/// Project ids the agent may assign, `first..=last`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProjectIdRange {
    pub first: u32,
    pub last: u32,
}

impl Default for ScanConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(60),
            concurrency: 2,
            timeout: Duration::from_secs(600),
            idle_priority: true,
            max_cpu: None,
            quota: true,
            quota_interval: Duration::from_secs(5),
            classify_interval: Duration::from_secs(600),
            assign_project_ids: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: LogLevel,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: LogLevel::Info, format: LogFormat::Plain }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Plain,
    Json,
}

/// A listen address in the spelling Prometheus exporters accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddress(pub SocketAddr);

impl std::str::FromStr for ListenAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let full = if s.starts_with(':') { format!("0.0.0.0{s}") } else { s.to_owned() };
        full.parse::<SocketAddr>()
            .map(ListenAddress)
            .map_err(|_| format!("invalid listen address {s:?}: want host:port, :port or [v6]:port"))
    }
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for ListenAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(ParseVisitor(str::parse, "a listen address"))
    }
}

/// Parses a string inside the deserializer call, so that the error is reported
/// with the key's full path and location.
struct ParseVisitor<T>(fn(&str) -> Result<T, String>, &'static str);

impl<T> de::Visitor<'_> for ParseVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.1)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.0)(v).map_err(E::custom)
    }
}

/// Parses Prometheus-style durations: `500ms`, `30s`, `5m`, `1h`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}: want e.g. 500ms, 30s, 5m, 1h");
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86400)),
            _ => return Err(bad()),
        };
        total = total.saturating_add(unit);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_str(ParseVisitor(parse_duration, "a duration such as 30s"))
}

/// Deserializes YAML; errors carry `file:line:column` and the full key path. An
/// empty file (or one holding only comments) means "all defaults".
pub fn parse_yaml<T: serde::de::DeserializeOwned + Default>(
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    if text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
        return Ok(T::default());
    }
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let (line, column) = inner.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
        let mut message = inner.to_string();
        // serde_yaml appends " at line L column C" and may prefix a partial
        // path; the location goes in front and the full key path is ours.
        if let Some(i) = message.rfind(" at line ") {
            message.truncate(i);
        }
        if let Some((prefix, rest)) = message.split_once(": ") {
            if !prefix.contains(' ') {
                message = rest.to_owned();
            }
        }
        let message = if key.is_empty() || key == "." { message } else { format!("{key}: {message}") };
        ConfigError::Parse { path: path.to_owned(), line, column, message }
    })
}

impl Config {
    /// How far discovery reaches.
    pub fn reach(&self) -> crate::discovery::Reach {
        crate::discovery::Reach {
            namespaces: self.discovery.mount_namespaces,
            max_namespaces: self.discovery.max_namespaces,
            census_every: self.discovery.namespace_interval,
        }
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(path, &text)
    }

    /// Parses config text; `path` is only used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let config: Config = parse_yaml(path, text)?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid { path: path.to_owned(), message });
        if self.scan.concurrency == 0 || self.scan.concurrency > 64 {
            return invalid(format!(
                "scan.concurrency: must be between 1 and 64, got {}",
                self.scan.concurrency
            ));
        }
        if let Some(c) = self.scan.max_cpu {
            if !(0.001..=64.0).contains(&c) {
                return invalid(format!("scan.max_cpu: must be between 0.001 and 64 (cores), got {c}"));
            }
        }
        if self.scan.timeout < Duration::from_secs(1) {
            return invalid("scan.timeout: must be at least 1s".to_owned());
        }
        if self.scan.quota_interval < Duration::from_secs(1) {
            return invalid("scan.quota_interval: must be at least 1s".to_owned());
        }
        if self.scan.classify_interval < self.scan.interval {
            return invalid("scan.classify_interval: must be at least scan.interval".to_owned());
        }
        if let Some(r) = self.scan.assign_project_ids {
            if r.first == 0 || r.first > r.last || r.last == u32::MAX {
                return invalid(format!(
                    "scan.assign_project_ids: want 1 <= first <= last < 4294967295, got first {} last {}",
                    r.first, r.last
                ));
            }
        }
        if self.scan.interval < Duration::from_secs(1) {
            return invalid("scan.interval: must be at least 1s".to_owned());
        }
        if self.discovery.max_namespaces > 100_000 {
            return invalid(format!(
                "discovery.max_namespaces: must be at most 100000, got {}",
                self.discovery.max_namespaces
            ));
        }
        if self.discovery.namespace_interval < Duration::from_millis(100) {
            return invalid("discovery.namespace_interval: must be at least 100ms".to_owned());
        }
        if self.discovery.resync_interval < Duration::from_secs(1) {
            return invalid("discovery.resync_interval: must be at least 1s".to_owned());
        }
        if self.web.max_connections == 0 || self.web.max_connections > 10_000 {
            return invalid(format!(
                "web.max_connections: must be between 1 and 10000, got {}",
                self.web.max_connections
            ));
        }
        if self.ebpf.top_processes > 1000 {
            return invalid(format!(
                "ebpf.top_processes: must be between 0 and 1000 (one series each), got {}",
                self.ebpf.top_processes
            ));
        }
        Ok(())
    }

    /// Whether a mountpoint passes the include/exclude filters.
    pub fn mountpoint_selected(&self, mountpoint: &str) -> bool {
        let d = &self.discovery;
        let included =
            d.include_mountpoints.is_empty() || d.include_mountpoints.iter().any(|r| r.is_match(mountpoint));
        included && !d.exclude_mountpoints.iter().any(|r| r.is_match(mountpoint))
    }
}

#[cfg(test)]
mod tests;
