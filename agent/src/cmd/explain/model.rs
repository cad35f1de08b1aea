//! From samples to workloads: every per-mount counter is joined to
//! `overlayfs_mount_info` on (instance, mountpoint, mntns) and added to the
//! container, pod or volume that mount belongs to.

use std::collections::{BTreeMap, BTreeSet};

use super::exposition::{Labels, Sample};

pub const AVOIDABLE_SECONDS: &str = "overlayfs_copy_up_avoidable_seconds_total";
pub const AVOIDABLE_BYTES: &str = "overlayfs_copy_up_avoidable_data_bytes_total";
pub const SECONDS: &str = "overlayfs_copy_up_seconds_total";
pub const BYTES: &str = "overlayfs_copy_up_data_bytes_total";
pub const NOOP: &str = "overlayfs_copy_up_noop_total";
pub const MOUNT_INFO: &str = "overlayfs_mount_info";
pub const EBPF_DISABLED: &str = "overlayfs_ebpf_disabled_info";

/// The counters read, each with the label it is broken down by.
pub const COUNTERS: &[(&str, &str)] = &[
    (AVOIDABLE_SECONDS, "fix"),
    (AVOIDABLE_BYTES, "fix"),
    (SECONDS, "cause"),
    (BYTES, "cause"),
    (NOOP, "cause"),
];

/// The labels that name one mount in every per-mount family.
pub const MOUNT_KEY: &[&str] = &["instance", "mountpoint", "mntns"];
/// The labels a series of a mount in another namespace names its holder with.
pub const MNTNS_HOLDER: &[&str] =
    &["mntns_runtime", "mntns_container_id", "mntns_pod_namespace", "mntns_pod_name"];

/// Every metric `explain` reads.
pub fn wanted(name: &str) -> bool {
    name == MOUNT_INFO || name == EBPF_DISABLED || COUNTERS.iter().any(|(n, _)| *n == name)
}

/// The `overlayfs_mount_info` labels a caveat may be about ([`Facts`]).
pub const FACT_LABELS: &[&str] = &["userxattr", "idmapped_lowers", "metacopy"];

/// What the `overlayfs_mount_info` of a workload's mounts says, for the
/// caveats: per label of [`FACT_LABELS`], the values seen.
#[derive(Debug, Default)]
pub struct Facts {
    values: BTreeMap<&'static str, BTreeSet<String>>,
    /// Some mount had no `overlayfs_mount_info`: nothing is known of it.
    unknown: bool,
}

impl Facts {
    fn add(&mut self, info: Option<&Labels>) {
        let Some(info) = info else {
            self.unknown = true;
            return;
        };
        for l in FACT_LABELS {
            self.values.entry(l).or_default().insert(label(info, l).to_owned());
        }
    }

    /// Whether a mount may have `label="value"`: unless every mount is known
    /// (with a value, from an agent that exports the label) to have another.
    pub fn may_have(&self, label: &str, value: &str) -> bool {
        match self.values.get(label) {
            Some(seen) if !self.unknown && !seen.contains("") => seen.contains(value),
            _ => true,
        }
    }
}

/// A container, pod or volume, with the figures of all its mounts.
#[derive(Debug, Default)]
pub struct Workload {
    pub title: String,
    pub runtime: String,
    pub image: String,
    pub mounts: BTreeSet<String>,
    pub facts: Facts,
    /// Per metric, per `fix` or `cause`.
    pub figures: BTreeMap<&'static str, BTreeMap<String, f64>>,
}

impl Workload {
    pub fn by(&self, metric: &str) -> impl Iterator<Item = (&str, f64)> {
        self.figures.get(metric).into_iter().flatten().map(|(k, v)| (k.as_str(), *v))
    }

    pub fn total(&self, metric: &str) -> f64 {
        self.by(metric).fold(0.0, |sum, (_, v)| sum + v)
    }

    pub fn get(&self, metric: &str, key: &str) -> f64 {
        self.figures.get(metric).and_then(|m| m.get(key)).copied().unwrap_or(0.0)
    }

    /// The largest time one fix would have saved.
    pub fn best_saving(&self) -> f64 {
        self.by(AVOIDABLE_SECONDS).map(|(_, v)| v).fold(0.0, f64::max)
    }
}

/// What the samples say, node or fleet wide.
#[derive(Debug, Default)]
pub struct Overview {
    /// Sorted by the time their best fix saves, largest first.
    pub workloads: Vec<Workload>,
    pub mounts: usize,
    /// `overlayfs_ebpf_disabled_info` reasons: copy-ups are not counted there.
    pub probes_off: BTreeSet<String>,
}

impl Overview {
    pub fn total(&self, metric: &str) -> f64 {
        self.workloads.iter().fold(0.0, |sum, w| sum + w.total(metric))
    }
}

fn key(labels: &Labels) -> Vec<&str> {
    MOUNT_KEY.iter().map(|k| labels.get(*k).map_or("", String::as_str)).collect()
}

fn label<'a>(labels: &'a Labels, name: &str) -> &'a str {
    labels.get(name).map_or("", String::as_str)
}

/// The workload's name: from its mount's `overlayfs_mount_info`, else from the
/// series' own `mntns_*` labels, else the mountpoint.
fn title(info: Option<&Labels>, series: &Labels) -> String {
    let from = |l: &Labels, prefix: &str| {
        let get = |n: &str| label(l, &format!("{prefix}{n}")).to_owned();
        (get("runtime"), get("container_id"), get("pod_namespace"), get("pod_name"))
    };
    let (runtime, id, pod_ns, pod) = match info {
        Some(i) => from(i, ""),
        None => from(series, "mntns_"),
    };
    let name = info.map_or("", |i| label(i, "container_name"));
    let short: String = id.chars().take(12).collect();
    if !pod.is_empty() {
        let container = if name.is_empty() { String::new() } else { format!(", container {name}") };
        return format!("pod {pod_ns}/{pod}{container}");
    }
    if runtime == "concourse" && !id.is_empty() {
        return format!("concourse volume {id}");
    }
    let runtime = if runtime.is_empty() { "container".to_owned() } else { format!("{runtime} container") };
    match (name.is_empty(), id.is_empty()) {
        (false, false) => format!("{runtime} {name} ({short})"),
        (false, true) => format!("{runtime} {name}"),
        (true, false) => format!("{runtime} {short}"),
        (true, true) => format!("mount {}", label(series, "mountpoint")),
    }
}

/// Groups the samples by workload.
pub fn build(samples: &[Sample]) -> Overview {
    let infos: BTreeMap<Vec<&str>, &Labels> =
        samples.iter().filter(|s| s.name == MOUNT_INFO).map(|s| (key(&s.labels), &s.labels)).collect();
    let mut groups: BTreeMap<(String, String), Workload> = BTreeMap::new();
    for s in samples {
        let Some((metric, by)) = COUNTERS.iter().find(|(n, _)| *n == s.name) else { continue };
        if s.value.is_nan() || s.value <= 0.0 {
            continue;
        }
        let info = infos.get(&key(&s.labels)).copied();
        let instance = label(&s.labels, "instance");
        let mut title = title(info, &s.labels);
        if !instance.is_empty() {
            title = format!("{title} on {instance}");
        }
        let w = groups.entry((instance.to_owned(), title.clone())).or_default();
        if w.title.is_empty() {
            w.title = title;
        }
        if let Some(i) = info {
            w.runtime = label(i, "runtime").to_owned();
            w.image = label(i, "image").to_owned();
        }
        if w.mounts.insert(label(&s.labels, "mountpoint").to_owned()) {
            w.facts.add(info);
        }
        let slot = w.figures.entry(metric).or_default().entry(label(&s.labels, by).to_owned()).or_default();
        *slot += s.value;
    }
    let mut workloads: Vec<Workload> = groups.into_values().collect();
    workloads.sort_by(|a, b| b.best_saving().total_cmp(&a.best_saving()).then_with(|| a.title.cmp(&b.title)));
    let probes_off = samples
        .iter()
        .filter(|s| s.name == EBPF_DISABLED && s.value > 0.0)
        .map(|s| label(&s.labels, "reason").to_owned());
    Overview { workloads, mounts: infos.len(), probes_off: probes_off.collect() }
}
