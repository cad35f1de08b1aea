//! `overlay-agent check`: a preflight, as `bpftool feature probe` or `tetra probe`
//! are. It tells what will work on this host and what will not, why, and the
//! remedy for each missing piece: the kernel and overlayfs ([`probes`]: kprobes,
//! BTF, lockdown, privileges, and a real load and attach of the probes),
//! and the host as the agent sees it ([`host`]: mount table, mount namespaces,
//! the capabilities the scans need, quota support). Copy-up reasons are the
//! probes' own (`probes::Disabled`, the `reason` of `overlayfs_ebpf_disabled_info`),
//! quota reasons those of `overlayfs_upper_usage_source_info`.
//!
//! Exit codes: 0 every feature works; 3 the agent runs, without some features;
//! 4 it cannot run here (no overlayfs, or no mount table it can read).

mod host;
mod probes;

use std::io::{self, Write};

use serde::Serialize;

use crate::config::Config;

/// Every feature works.
pub const EXIT_OK: u8 = 0;
/// The agent runs, without some features.
pub const EXIT_DEGRADED: u8 = 3;
/// The agent cannot do its work here.
pub const EXIT_CANNOT_RUN: u8 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works, with a limit the detail names.
    Warn,
    /// The feature it belongs to does not work.
    Fail,
    /// Cannot be told from here.
    Unknown,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Unknown => "?",
        }
    }
}

/// The features a finding belongs to, in the order they are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    /// Overlay mounts found and followed (the agent's core).
    MountDiscovery,
    /// Upper dirs walked and their entries classified.
    UpperDirScans,
    /// Copy-ups counted in the kernel.
    CopyUpProbes,
    /// Bytes and inodes from project quotas.
    QuotaMode,
    /// Every process's mount namespace readable.
    MountNamespaces,
}

impl Feature {
    const ALL: [Feature; 5] = [
        Feature::MountDiscovery,
        Feature::UpperDirScans,
        Feature::CopyUpProbes,
        Feature::QuotaMode,
        Feature::MountNamespaces,
    ];

    fn title(self) -> &'static str {
        match self {
            Feature::MountDiscovery => "mount discovery",
            Feature::UpperDirScans => "upper-dir scans",
            Feature::CopyUpProbes => "copy-up probes (eBPF)",
            Feature::QuotaMode => "quota mode",
            Feature::MountNamespaces => "mount namespaces readable",
        }
    }
}

/// One thing checked.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub name: &'static str,
    pub feature: Feature,
    pub status: Status,
    pub detail: String,
    /// What to do, when the status is not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
    /// The reason label the agent's metrics give for it, where they give one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

impl Finding {
    fn new(name: &'static str, feature: Feature, status: Status, detail: impl Into<String>) -> Finding {
        Finding { name, feature, status, detail: detail.into(), remedy: None, reason: None }
    }

    fn remedy(mut self, remedy: impl Into<String>) -> Finding {
        self.remedy = Some(remedy.into());
        self
    }

    fn reason(mut self, reason: &'static str) -> Finding {
        self.reason = Some(reason);
        self
    }
}

/// A feature's verdict: it does not work when one of its findings failed; it
/// works when all are ok or warnings; else (something unknown) `works` is null.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub name: Feature,
    pub works: Option<bool>,
    /// The first failed finding's reason label, else its name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KernelInfo {
    pub release: String,
    pub machine: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub version: &'static str,
    pub kernel: KernelInfo,
    pub checks: Vec<Finding>,
    pub features: Vec<Verdict>,
    pub exit_code: u8,
}

impl Report {
    pub fn new(kernel: KernelInfo, checks: Vec<Finding>) -> Report {
        let features: Vec<Verdict> = Feature::ALL
            .iter()
            .map(|&f| {
                let mine = || checks.iter().filter(|c| c.feature == f);
                let failed = mine().find(|c| c.status == Status::Fail);
                let unknown = mine().find(|c| c.status == Status::Unknown);
                Verdict {
                    name: f,
                    works: if failed.is_some() { Some(false) } else { unknown.is_none().then_some(true) },
                    reason: failed.or(unknown).map(|c| c.reason.unwrap_or(c.name).to_owned()),
                }
            })
            .collect();
        let cannot_run =
            checks.iter().any(|c| c.feature == Feature::MountDiscovery && c.status == Status::Fail);
        let exit_code = if cannot_run {
            EXIT_CANNOT_RUN
        } else if features.iter().any(|f| f.works == Some(false)) {
            EXIT_DEGRADED
        } else {
            EXIT_OK
        };
        Report { version: env!("CARGO_PKG_VERSION"), kernel, checks, features, exit_code }
    }

    pub fn write_text(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(
            out,
            "overlay-agent {} check: kernel {} ({})\n",
            self.version, self.kernel.release, self.kernel.machine
        )?;
        for c in &self.checks {
            writeln!(out, "{:<5} {:<18} {}", c.status.label(), c.name, c.detail)?;
            if let Some(reason) = c.reason.filter(|_| c.status != Status::Ok) {
                writeln!(out, "{:24}reason: {reason}", "")?;
            }
            if let Some(r) = &c.remedy {
                writeln!(out, "{:24}remedy: {r}", "")?;
            }
        }
        writeln!(out)?;
        for f in &self.features {
            let reason = f.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
            let verdict = match f.works {
                Some(true) => "works",
                Some(false) => "does not",
                None => "unknown",
            };
            writeln!(out, "{verdict:<9} {}{reason}", f.name.title())?;
        }
        let summary = match self.exit_code {
            EXIT_OK => "every feature works here",
            EXIT_DEGRADED => "the agent runs here, without the features above that do not work",
            _ => "the agent cannot do its work here",
        };
        writeln!(out, "\nexit {}: {summary}", self.exit_code)
    }
}

/// Runs every check and writes the report; returns the exit code.
pub fn run(config: &Config, json: bool, out: &mut impl Write) -> io::Result<u8> {
    let kernel = crate::kernel::features::KernelFeatures::read();
    let caps = crate::caps::effective();
    let mut checks = probes::findings(config, &kernel, caps);
    checks.extend(host::findings(config, &kernel, caps));
    let report =
        Report::new(KernelInfo { release: kernel.release.clone(), machine: kernel.machine.clone() }, checks);
    if json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        report.write_text(out)?;
    }
    Ok(report.exit_code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> KernelInfo {
        KernelInfo { release: "6.1.0".into(), machine: "x86_64".into() }
    }

    #[test]
    fn exit_codes_follow_the_features() {
        let ok = Finding::new("overlay", Feature::MountDiscovery, Status::Ok, "built in");
        let warn = Finding::new("btf", Feature::CopyUpProbes, Status::Warn, "no overlay module BTF");
        assert_eq!(Report::new(kernel(), vec![ok.clone(), warn.clone()]).exit_code, EXIT_OK);
        let kprobes = Finding::new("kprobes", Feature::CopyUpProbes, Status::Fail, "no")
            .reason("kprobes_unavailable")
            .remedy("boot another kernel");
        let r = Report::new(kernel(), vec![ok, warn, kprobes.clone()]);
        assert_eq!(r.exit_code, EXIT_DEGRADED);
        let probes = r.features.iter().find(|f| f.name == Feature::CopyUpProbes).expect("feature");
        assert_eq!((probes.works, probes.reason.as_deref()), (Some(false), Some("kprobes_unavailable")));
        let quota = Finding::new("quota", Feature::QuotaMode, Status::Unknown, "no module index");
        let r = Report::new(kernel(), vec![quota]);
        assert_eq!((r.features[3].works, r.exit_code), (None, EXIT_OK), "unknown is not a failure");
        let none = Finding::new("overlay", Feature::MountDiscovery, Status::Fail, "no overlayfs");
        let r = Report::new(kernel(), vec![none, kprobes]);
        assert_eq!(r.exit_code, EXIT_CANNOT_RUN);
        let mut text = Vec::new();
        r.write_text(&mut text).expect("write");
        let text = String::from_utf8(text).expect("utf8");
        assert!(text.contains("remedy: boot another kernel"), "{text}");
        assert!(text.contains("does not  copy-up probes (eBPF) (kprobes_unavailable)"), "{text}");
        assert!(text.ends_with("exit 4: the agent cannot do its work here\n"), "{text}");
    }
}
