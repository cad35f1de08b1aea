//! Command line. Flags are spelled like Prometheus exporters'; they override the
//! config file, which overrides the defaults.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Config, ListenAddress, LogFormat, LogLevel};

#[derive(Debug, Parser)]
#[command(
    name = "overlay-agent",
    version,
    about = "Prometheus exporter for overlayfs: mounts, upper-dir contents and copy-ups"
)]
pub struct Cli {
    /// YAML config file (see config/overlay-agent.yaml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to listen on: host:port, :port or [v6]:port [default: :9864].
    #[arg(long = "web.listen-address", global = true, value_name = "ADDR")]
    pub listen_address: Option<ListenAddress>,

    /// TLS and basic-auth config (the Prometheus exporter toolkit's web config format).
    #[arg(long = "web.config.file", global = true, value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,

    /// procfs mount point; mountinfo is read from DIR/1/mountinfo, else DIR/self/mountinfo [default: /proc].
    #[arg(long = "path.procfs", global = true, value_name = "DIR")]
    pub procfs: Option<PathBuf>,

    /// Host root filesystem; upper dirs are opened under it [default: /].
    #[arg(long = "path.rootfs", global = true, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,

    /// Log level [default: info].
    #[arg(long = "log.level", global = true, value_enum)]
    pub log_level: Option<LogLevel>,

    /// Log format [default: plain].
    #[arg(long = "log.format", global = true, value_enum)]
    pub log_format: Option<LogFormat>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (the default).
    Serve,
    /// Discover and measure once, print the Prometheus exposition to stdout.
    Once,
    /// List overlay mounts, one per superblock.
    Mounts {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print copy-ups live (time, pid, comm, mountpoint, file, cause, kind, bytes, latency).
    Trace {
        /// Only copy-ups at least this slow (e.g. 10ms; default: all).
        #[arg(long = "min-latency", value_name = "DURATION", default_value = "0s", value_parser = crate::config::parse_duration)]
        min_latency: std::time::Duration,
    },
    /// Preflight: what works on this host and what not, why, and the remedy.
    /// Exit 0 every feature works, 3 some do not, 4 the agent cannot run here.
    Check {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Per container or volume: time lost in copy-ups, the fix that avoids it, its saving,
    /// the setting and the runbook. Reads a running agent (default: this host's) or a
    /// Prometheus. Exit 0 nothing to fix, 3 fixes shown, 1 the metrics could not be read.
    Explain {
        /// The agent's metrics URL; http:// when no scheme is given, /metrics when no
        /// path [default: http://localhost:<listen port>/metrics].
        #[arg(long, value_name = "URL", conflicts_with = "prometheus")]
        url: Option<String>,
        /// Read from this Prometheus (its HTTP API, http:// when no scheme is given)
        /// instead, every node it scrapes.
        #[arg(long, value_name = "URL")]
        prometheus: Option<String>,
        /// Only what happened in this period (e.g. 1h). Prometheus: increase() over it
        /// [default: 1h]; an agent: two scrapes this far apart [default: since it started].
        #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
        since: Option<std::time::Duration>,
        /// Every fix that would have avoided anything, however small [default: those
        /// that would have saved at least 1 s or 64 MiB].
        #[arg(long)]
        all: bool,
    },
    /// Validate a config file: exit 0 when valid, 2 with file:line:column otherwise.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
}

impl Cli {
    /// Applies the flags given on the command line over `config`.
    pub fn apply(&self, config: &mut Config) {
        if let Some(a) = self.listen_address {
            config.web.listen_address = a;
        }
        if let Some(f) = &self.web_config_file {
            config.web.config_file = Some(f.clone());
        }
        if let Some(p) = &self.procfs {
            config.discovery.procfs = p.clone();
        }
        if let Some(r) = &self.rootfs {
            config.discovery.rootfs = r.clone();
        }
        if let Some(l) = self.log_level {
            config.log.level = l;
        }
        if let Some(f) = self.log_format {
            config.log.format = f;
        }
    }

    /// Loads the config file (if any) and applies the flags.
    pub fn effective_config(&self) -> Result<Config, crate::config::ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        self.apply(&mut config);
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_config() {
        let cli = Cli::parse_from([
            "overlay-agent",
            "--web.listen-address",
            "127.0.0.1:1",
            "--path.procfs",
            "/host/proc",
            "--log.format",
            "json",
            "once",
        ]);
        let mut c = Config::default();
        c.log.level = LogLevel::Debug;
        cli.apply(&mut c);
        assert_eq!(c.web.listen_address.to_string(), "127.0.0.1:1");
        assert_eq!(c.discovery.procfs, PathBuf::from("/host/proc"));
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.level, LogLevel::Debug, "unset flag keeps the config value");
        assert!(matches!(cli.command, Some(Command::Once)));
    }

    #[test]
    fn global_flags_after_subcommand() {
        let cli = Cli::parse_from(["overlay-agent", "mounts", "--json", "--path.procfs", "/x"]);
        assert_eq!(cli.procfs, Some(PathBuf::from("/x")));
        assert!(matches!(cli.command, Some(Command::Mounts { json: true })));
    }
}
