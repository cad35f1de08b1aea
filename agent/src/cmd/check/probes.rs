//! What the copy-up probes need from the kernel and from the agent's privileges,
//! each with its remedy, then a real load and attach of the probes (detached at
//! once). The reasons are `probes::Disabled`'s: the prediction from the kernel's
//! features and the attempt use the same classification as the metric.

use std::path::Path;

use super::{Feature, Finding, Status};
use crate::config::Config;
use crate::kernel::features::{KernelFeatures, Presence};
use crate::probes::{self, Disabled, ProbeOptions};

/// Architectures the probes are built for (the syscall table and pt_regs
/// offsets of agent-common and agent-ebpf).
pub const PROBE_ARCHES: &[&str] = &["x86_64", "aarch64"];

const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_RESOURCE: u32 = 24;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

pub(super) fn findings(config: &Config, k: &KernelFeatures, caps: Option<u64>) -> Vec<Finding> {
    let btf_dir = ProbeOptions::default().btf_dir;
    let mut out = vec![kernel(k), overlay(k), kprobes(k), btf(k, &btf_dir), privileges(k, caps)];
    out.extend(lockdown());
    out.push(attempt(config, Disabled::predict(k, btf_dir.join("vmlinux").exists(), caps)));
    out
}

fn kernel(k: &KernelFeatures) -> Finding {
    let f = |s, d: String| Finding::new("kernel", Feature::CopyUpProbes, s, d);
    let arch = std::env::consts::ARCH;
    if !PROBE_ARCHES.contains(&arch) {
        return f(
            Status::Fail,
            format!("{} {arch}: the probes are built for {} only", k.release, PROBE_ARCHES.join(", ")),
        )
        .reason("load_failed")
        .remedy("run the agent on x86_64 or aarch64; everything but the copy-up counts works here");
    }
    let version = k.version().unwrap_or((0, 0));
    if version < (5, 8) || k.ring_buffers() == Presence::Missing {
        return f(Status::Fail, format!("{}: older than 5.8 (no BPF ring buffers)", k.release))
            .reason("load_failed")
            .remedy("boot a kernel 5.8 or newer (Debian 11+, Ubuntu 20.10+, RHEL 9)");
    }
    f(Status::Ok, format!("{} {arch}: 5.8 or newer", k.release))
}

fn overlay(k: &KernelFeatures) -> Finding {
    let f = |s, d: &str| Finding::new("overlay", Feature::MountDiscovery, s, d);
    match k.overlay() {
        Presence::Present if k.overlay_is_module() => f(Status::Ok, "module, loaded"),
        Presence::Present => f(Status::Ok, "built in"),
        Presence::Loadable => f(Status::Warn, "module, not loaded: no overlay mount can exist yet")
            .reason("no_overlay")
            .remedy(Disabled::NoOverlay(String::new()).remedy()),
        Presence::Missing => f(Status::Fail, "this kernel has no overlayfs (CONFIG_OVERLAY_FS)")
            .remedy("boot a kernel built with CONFIG_OVERLAY_FS=y or =m (every distribution kernel has it)"),
        Presence::Unknown => {
            f(Status::Unknown, &format!("not loaded, and no module index at {}", k.modules_dir().display()))
                .remedy("`modprobe overlay`")
        }
    }
}

fn kprobes(k: &KernelFeatures) -> Finding {
    let f = |s, d: &str| Finding::new("kprobes", Feature::CopyUpProbes, s, d);
    match k.kprobes() {
        Presence::Present => f(Status::Ok, "CONFIG_KPROBES (register_kprobe in /proc/kallsyms)"),
        Presence::Unknown => f(Status::Unknown, "/proc/kallsyms cannot be read")
            .reason("no_kallsyms")
            .remedy(Disabled::NoKallsyms(String::new()).remedy()),
        _ => {
            let d = Disabled::KprobesUnavailable(String::new());
            f(Status::Fail, "CONFIG_KPROBES is not set (no register_kprobe in /proc/kallsyms)")
                .reason(d.reason())
                .remedy(d.remedy())
        }
    }
}

fn btf(k: &KernelFeatures, dir: &Path) -> Finding {
    let f = |s, d: String| Finding::new("btf", Feature::CopyUpProbes, s, d);
    let vmlinux = dir.join("vmlinux");
    if let Err(e) = crate::kernel::btf::KernelBtf::load(dir) {
        let d = Disabled::NoBtf(e.to_string());
        return f(Status::Fail, format!("{}: {e}", vmlinux.display())).reason(d.reason()).remedy(d.remedy());
    }
    if !k.overlay_is_module() {
        return f(Status::Ok, format!("{}; overlay's types are in it (built in)", vmlinux.display()));
    }
    if dir.join("overlay").exists() {
        return f(Status::Ok, format!("{} and {}", vmlinux.display(), dir.join("overlay").display()));
    }
    f(
        Status::Warn,
        format!(
            "{}, but no overlay module BTF: the overlay inode layout of kernels 4.19-7.2 is assumed \
             (as on Debian 5.10)",
            vmlinux.display()
        ),
    )
    .remedy("a kernel built with CONFIG_DEBUG_INFO_BTF_MODULES=y (5.11+) gives the exact layout")
}

fn privileges(k: &KernelFeatures, caps: Option<u64>) -> Finding {
    let f = |s, d: String| Finding::new("privileges_ebpf", Feature::CopyUpProbes, s, d);
    let Some(c) = caps else {
        return f(Status::Unknown, "cannot read CapEff from /proc/self/status".into());
    };
    let has = |n: u32| c & (1 << n) != 0;
    let names = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON"), (CAP_SYS_RESOURCE, "CAP_SYS_RESOURCE")];
    let held: Vec<&str> = names.iter().filter(|(n, _)| has(*n)).map(|(_, s)| *s).collect();
    let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    let detail = format!(
        "euid {}, CAP_SYS_ADMIN {}, {}; kernel.perf_event_paranoid {}",
        rustix::process::geteuid().as_raw(),
        if has(CAP_SYS_ADMIN) { "yes" } else { "no" },
        if held.is_empty() {
            "none of CAP_BPF, CAP_PERFMON, CAP_SYS_RESOURCE".into()
        } else {
            held.join(" ")
        },
        paranoid.map_or("unknown".into(), |p| p.to_string()),
    );
    let no_privileges = Disabled::NoPrivileges(String::new());
    let can_load_and_attach = has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON));
    if !can_load_and_attach {
        return f(Status::Fail, detail).reason(no_privileges.reason()).remedy(no_privileges.remedy());
    }
    if !has(CAP_SYS_ADMIN) && paranoid.is_some_and(|p| p > 2) {
        return f(
            Status::Warn,
            format!("{detail}: Debian's and Ubuntu's kernels then refuse perf_event_open"),
        )
        .reason(no_privileges.reason())
        .remedy(no_privileges.remedy());
    }
    if !has(CAP_SYS_RESOURCE) && !has(CAP_SYS_ADMIN) && k.version().is_some_and(|v| v < (5, 11)) {
        return f(Status::Warn, format!("{detail}: before 5.11 BPF maps count against RLIMIT_MEMLOCK"))
            .remedy("grant CAP_SYS_RESOURCE (the agent raises RLIMIT_MEMLOCK at start)");
    }
    f(Status::Ok, detail)
}

/// Kernel lockdown, where securityfs shows it: confidentiality forbids the
/// kernel-memory reads the probes make.
fn lockdown() -> Option<Finding> {
    let text = std::fs::read_to_string("/sys/kernel/security/lockdown").ok()?;
    let mode = text.split_whitespace().find(|w| w.starts_with('['))?.trim_matches(['[', ']']).to_owned();
    let f = |s, d: String| Finding::new("lockdown", Feature::CopyUpProbes, s, d);
    Some(if mode == "confidentiality" {
        f(Status::Fail, "lockdown=confidentiality: BPF programs may not read kernel memory".into())
            .reason("load_failed")
            .remedy("boot with lockdown=integrity or none (kernel command line `lockdown=integrity`)")
    } else {
        f(Status::Ok, format!("lockdown={mode}"))
    })
}

/// Loads and attaches the probes as the daemon would, then detaches them.
fn attempt(config: &Config, predicted: Option<Disabled>) -> Finding {
    let f = |s, d: String| Finding::new("probes_attach", Feature::CopyUpProbes, s, d);
    if !config.ebpf.enabled {
        let d = Disabled::DisabledByConfig;
        return f(Status::Fail, d.to_string()).reason(d.reason()).remedy(d.remedy());
    }
    let opts = ProbeOptions { per_mount_histograms: config.ebpf.per_mount_histograms, ..Default::default() };
    let (started, status) = probes::start(&opts);
    drop(started);
    match status.disabled {
        None => {
            let attached: Vec<String> = status
                .attachments
                .iter()
                .filter(|a| a.attached)
                .map(|a| format!("{} {}", a.mechanism.as_str(), a.function.unwrap_or("-")))
                .collect();
            f(
                Status::Ok,
                format!(
                    "loaded and attached {} of {}: {}",
                    attached.len(),
                    status.attachments.len(),
                    attached.join(", ")
                ),
            )
        }
        Some(d) => {
            let mut detail = format!("load and attach: {d}");
            if let Some(p) = predicted.filter(|p| p.reason() != d.reason()) {
                detail.push_str(&format!(" (the kernel's features predicted {})", p.reason()));
            }
            f(Status::Fail, detail).reason(d.reason()).remedy(d.remedy())
        }
    }
}
