//! The eBPF probes' own families: whether they count (enabled, why not), what
//! is attached where, and their self-monitoring counters (calls, map full,
//! read errors). The copy-up collector writes
//! them beside the copy-up counts, from the same status and map reading.

use overlay_agent_common::stat;
use prometheus::proto::MetricType;

use super::{Def, Family};
use crate::probes::maps::MapReading;
use crate::probes::ProbeStatus;

static ENABLED: Def = Def {
    name: "overlayfs_ebpf_enabled",
    help: "1 when the copy-up probes are counting, 0 when eBPF is off (see overlayfs_ebpf_disabled_info).",
    kind: MetricType::GAUGE,
    labels: &[],
};
static DISABLED: Def = Def {
    name: "overlayfs_ebpf_disabled_info",
    help: "Why the copy-up probes are off; always 1. The log has the details.",
    kind: MetricType::GAUGE,
    labels: &["reason"],
};
static ATTACHED: Def = Def {
    name: "overlayfs_ebpf_probe_attached",
    help: "1 when the program is attached to the kernel function, 0 when it is missing or failed.",
    kind: MetricType::GAUGE,
    labels: &["probe", "function", "mechanism"],
};
static CALLS: Def = Def {
    name: "overlayfs_ebpf_copy_up_calls_total",
    help: "ovl_copy_up_one entries seen by the probes (including calls that found the copy done).",
    kind: MetricType::COUNTER,
    labels: &[],
};
static MAP_FULL: Def = Def {
    name: "overlayfs_ebpf_map_full_total",
    help: "Updates dropped because an eBPF map was full.",
    kind: MetricType::COUNTER,
    labels: &[],
};
static READ_ERRORS: Def = Def {
    name: "overlayfs_ebpf_read_errors_total",
    help: "Kernel memory reads by the probes that failed.",
    kind: MetricType::COUNTER,
    labels: &[],
};

/// Whether the probes run, why not, and what is attached where.
pub(super) fn status_families(status: &ProbeStatus) -> Vec<Family> {
    let mut enabled = Family::new(&ENABLED);
    enabled.add(&[], if status.enabled { 1.0 } else { 0.0 });
    let mut out = vec![enabled];
    if let Some(d) = &status.disabled {
        let mut f = Family::new(&DISABLED);
        f.add(&[d.reason()], 1.0);
        out.push(f);
    }
    let mut attached = Family::new(&ATTACHED);
    for a in &status.attachments {
        let v = if a.attached { 1.0 } else { 0.0 };
        attached.add(&[a.program, a.function.unwrap_or(""), a.mechanism.as_str()], v);
    }
    out.push(attached);
    out
}

/// The programs' own counters.
pub(super) fn self_stat_families(reading: &MapReading) -> Vec<Family> {
    let mut out = Vec::new();
    for (def, slot) in
        [(&CALLS, stat::ONE_ENTRIES), (&MAP_FULL, stat::MAP_FULL), (&READ_ERRORS, stat::READ_ERRORS)]
    {
        let mut f = Family::new(def);
        f.add(&[], reading.stats.get(slot as usize).copied().unwrap_or(0) as f64);
        out.push(f);
    }
    out
}
