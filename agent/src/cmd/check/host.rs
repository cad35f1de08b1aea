//! The host as the agent sees it: the mount table it reads, every process's
//! mount namespace, the capabilities the upper-dir scans need, and quota
//! support (the kernel's, then each upper dir's, classified as the scans do:
//! `scan::quota::probe`, the `reason` of `overlayfs_upper_usage_source_info`).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use super::{Feature, Finding, Status};
use crate::config::Config;
use crate::discovery::{self, LayerPath, MountTable};
use crate::kernel::features::{KernelFeatures, Presence};
use crate::scan::quota::{self, Unavailable};

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_ADMIN: u32 = 21;

const PID_NAMESPACE: &str =
    "run in the host's PID namespace with its procfs at --path.procfs (podman/docker \
     `--pid host -v /proc:/host/proc:ro`, Kubernetes `hostPID: true`), as root or with CAP_SYS_PTRACE";

pub(super) fn findings(config: &Config, k: &KernelFeatures, caps: Option<u64>) -> Vec<Finding> {
    let procfs = &config.discovery.procfs;
    let table = discovery::discover(procfs, |mp| config.mountpoint_selected(mp));
    let mut out = vec![mount_table(procfs, &table), namespaces(procfs), scan_privileges(caps)];
    out.push(quota_support(config, k, table.as_ref().ok()));
    out
}

fn mount_table(procfs: &Path, table: &Result<MountTable, discovery::DiscoveryError>) -> Finding {
    let f = |s, d: String| Finding::new("mount_table", Feature::MountDiscovery, s, d);
    match table {
        Err(e) => f(Status::Fail, e.to_string()).remedy(PID_NAMESPACE),
        Ok(t) => {
            let n = t.mounts.len();
            if t.source == procfs.join("1/mountinfo") {
                f(Status::Ok, format!("{}: {n} overlay mounts", t.source.display()))
            } else {
                f(
                    Status::Warn,
                    format!(
                        "{} (no {}/1/mountinfo): only this process's mount namespace, {n} overlay mounts",
                        t.source.display(),
                        procfs.display()
                    ),
                )
                .remedy(PID_NAMESPACE)
            }
        }
    }
}

/// Every process's mount namespace, as `readlink /proc/PID/ns/mnt` gives it.
fn namespaces(procfs: &Path) -> Finding {
    let f = |s, d: String| Finding::new("mount_namespaces", Feature::MountNamespaces, s, d);
    let entries = match std::fs::read_dir(procfs) {
        Ok(e) => e,
        Err(e) => return f(Status::Fail, format!("{}: {e}", procfs.display())).remedy(PID_NAMESPACE),
    };
    let (mut seen, mut unreadable, mut processes) = (HashSet::new(), Vec::new(), 0usize);
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        match std::fs::read_link(e.path().join("ns/mnt")) {
            Ok(ns) => {
                processes += 1;
                seen.insert(ns);
            }
            // Gone meanwhile: not a process any more.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                processes += 1;
                let comm = String::from_utf8_lossy(&std::fs::read(e.path().join("comm")).unwrap_or_default())
                    .into_owned();
                unreadable.push(format!("{} ({}): {err}", e.file_name().to_string_lossy(), comm.trim()));
            }
        }
    }
    let detail = format!(
        "{processes} processes in {} mount namespaces under {}; {} unreadable",
        seen.len(),
        procfs.display(),
        unreadable.len()
    );
    if unreadable.is_empty() {
        return f(Status::Ok, detail);
    }
    let shown: Vec<&str> = unreadable.iter().take(3).map(String::as_str).collect();
    f(Status::Fail, format!("{detail}: {}", shown.join(", "))).remedy(format!(
        "{PID_NAMESPACE}; a process holding capabilities the agent lacks, from a parent user namespace, \
         stays unreadable without CAP_SYS_PTRACE there"
    ))
}

/// What the walks need: trusted.overlay.* xattrs and directories of any owner.
fn scan_privileges(caps: Option<u64>) -> Finding {
    let f = |s, d: String| Finding::new("privileges_scans", Feature::UpperDirScans, s, d);
    let Some(c) = caps else {
        return f(Status::Unknown, "cannot read CapEff from /proc/self/status".into());
    };
    let mut missing = Vec::new();
    if c & (1 << CAP_SYS_ADMIN) == 0 {
        missing.push(
            "CAP_SYS_ADMIN (trusted.overlay.* xattrs: copied-up, metacopy and opaque entries would count as \
             created and dir)",
        );
    }
    if c & (1 << CAP_DAC_READ_SEARCH) == 0 {
        missing.push("CAP_DAC_READ_SEARCH (upper dirs of other users: permission_denied scan errors)");
    }
    if missing.is_empty() {
        return f(Status::Ok, "CAP_SYS_ADMIN and CAP_DAC_READ_SEARCH".into());
    }
    // Walks still run: figures are partial, not absent.
    f(Status::Warn, format!("no {}", missing.join("; no "))).remedy(
        "run as root, or grant CAP_SYS_ADMIN and CAP_DAC_READ_SEARCH (the packaged unit and chart do)",
    )
}

/// The kernel's quota support, then each upper dir's quota mode.
fn quota_support(config: &Config, k: &KernelFeatures, table: Option<&MountTable>) -> Finding {
    let f = |s, d: String| Finding::new("quota", Feature::QuotaMode, s, d);
    if !config.scan.quota {
        return f(Status::Fail, "scan.quota: false".into())
            .reason(Unavailable::Disabled.as_str())
            .remedy("set `scan.quota: true` (the default)");
    }
    let (quotactl, core) = k.quota_core();
    let (ext4, xfs) = (k.ext4_quota(), k.xfs_quota());
    let kernel = format!(
        "quotactl {}, CONFIG_QUOTA {}, ext4 project quotas {}, XFS project quotas {}",
        word(quotactl),
        word(core),
        word(ext4),
        word(xfs)
    );
    let uppers = table.map(|t| upper_dirs(t, &config.discovery.rootfs)).unwrap_or_default();
    let usable = |p| matches!(p, Presence::Present | Presence::Loadable);
    let kernel_says_no = uppers.contains_key(Unavailable::KernelWithoutQuota.as_str());
    if kernel_says_no
        || (!usable(ext4) && !usable(xfs) && ext4 != Presence::Unknown && xfs != Presence::Unknown)
    {
        return f(Status::Fail, format!("{kernel}; {}", summary(&uppers)))
            .reason(Unavailable::KernelWithoutQuota.as_str())
            .remedy(
                "boot a kernel with CONFIG_QUOTA, CONFIG_QUOTACTL and CONFIG_QFMT_V2 (ext4) or CONFIG_XFS_QUOTA \
                 (XFS), as Debian's and Ubuntu's are; until then bytes and inodes come from walks",
            );
    }
    let status = if usable(ext4) || usable(xfs) { Status::Ok } else { Status::Unknown };
    let remedy = (uppers.keys().any(|r| *r != "quota")).then_some(
        "quota mode needs upper dirs on XFS or ext4 (`mkfs.ext4 -O project,quota`) mounted with prjquota, \
         each with a project id: Docker overlay2 and containers/storage set one with a size limit, or \
         `scan.assign_project_ids`",
    );
    let finding = f(status, format!("{kernel}; {}", summary(&uppers)));
    match remedy {
        Some(r) => finding.remedy(r),
        None => finding,
    }
}

fn word(p: Presence) -> &'static str {
    match p {
        Presence::Present => "yes",
        Presence::Loadable => "yes (module)",
        Presence::Missing => "no",
        Presence::Unknown => "unknown",
    }
}

/// Upper dirs by what quota mode says of them: "quota", or the reason label.
fn upper_dirs(table: &MountTable, rootfs: &Path) -> BTreeMap<&'static str, usize> {
    let under_root = |p: &Path| rootfs.join(p.strip_prefix("/").unwrap_or(p));
    let mut by = BTreeMap::new();
    for m in table.mounts.values() {
        let Some(upper) = m.upper_dir().map(under_root) else { continue };
        let work = m.options.work.as_ref().and_then(LayerPath::absolute).map(under_root);
        let key = match quota::probe(&upper, work.as_deref(), &table.source) {
            Ok(_) => "quota",
            Err(u) => u.as_str(),
        };
        *by.entry(key).or_insert(0) += 1;
    }
    by
}

fn summary(uppers: &BTreeMap<&'static str, usize>) -> String {
    let total: usize = uppers.values().sum();
    let quota = uppers.get("quota").copied().unwrap_or(0);
    let rest: Vec<String> =
        uppers.iter().filter(|(k, _)| **k != "quota").map(|(k, n)| format!("{k} {n}")).collect();
    if rest.is_empty() {
        format!("{quota} of {total} upper dirs in quota mode")
    } else {
        format!("{quota} of {total} upper dirs in quota mode (walked: {})", rest.join(", "))
    }
}
