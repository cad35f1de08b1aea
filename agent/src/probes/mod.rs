//! The eBPF copy-up probes: load the embedded object, write the run-time config
//! (offsets and argument positions from BTF), attach each program to the
//! functions this kernel has, and report what attached. A probe that cannot
//! attach is a reported state, never a crash: the agent serves everything else.

mod attach;
pub mod batch;
mod config;
pub mod forget;
pub mod maps;
pub mod plan;
pub mod reading;
mod slots;
mod status;

use std::path::PathBuf;
use std::sync::{Mutex, RwLock};

use aya::maps::{Array, PerCpuArray, PerCpuHashMap};
use aya::{Ebpf, EbpfLoader};
use overlay_agent_common::{syscall, ProgramConfig, COUNT_SLOTS, HIST_SLOTS};

use crate::kernel::btf::KernelBtf;
use crate::kernel::symbols::Symbols;
use attach::Attacher;
use maps::CopyUpMaps;
use status::disabled;
pub use status::{AttachState, Disabled, ProbeStatus};

/// The eBPF object built by agent/build.rs from agent-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/overlay-copyup"));

/// Where the probes look for kernel facts (injectable for tests).
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    pub per_mount_histograms: bool,
    /// Send copy-ups at least this slow to the trace ring buffer (`trace` command).
    pub trace_min_latency: Option<std::time::Duration>,
    pub btf_dir: PathBuf,
    pub kallsyms: PathBuf,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            per_mount_histograms: true,
            trace_min_latency: None,
            btf_dir: PathBuf::from("/sys/kernel/btf"),
            kallsyms: PathBuf::from("/proc/kallsyms"),
        }
    }
}

/// Loaded and attached programs. Dropping it detaches every probe.
pub struct Probes {
    ebpf: Ebpf,
}

impl Probes {
    /// The trace ring buffer (for `overlay-agent trace`).
    pub fn take_trace(&mut self) -> Option<aya::maps::RingBuf<aya::maps::MapData>> {
        aya::maps::RingBuf::try_from(self.ebpf.take_map("TRACE")?).ok()
    }

    /// Turns the per-mount histogram keys on or off in the running programs (a
    /// reload of `ebpf.per_mount_histograms`).
    pub fn set_per_mount_histograms(&mut self, on: bool) -> Result<(), String> {
        write_settings(&mut self.ebpf, on)
    }
}

/// What the collectors read: the status and, while probes run, their maps.
#[derive(Default)]
pub struct ProbeHandle {
    pub status: RwLock<ProbeStatus>,
    pub maps: Mutex<Option<CopyUpMaps>>,
    /// Copy-up counts by device, published at each read of the maps
    /// (`reading::read`) for the scan pool.
    pub activity: std::sync::Arc<crate::activity::Activity>,
}

/// Loads and attaches the probes. Always returns a status; `Some(Probes)` only
/// when copy-ups can be counted.
pub fn start(opts: &ProbeOptions) -> (Option<(Probes, CopyUpMaps)>, ProbeStatus) {
    let result = start_inner(opts);
    release_startup_memory();
    result
}

/// BTF lookups and program loading allocate tens of MiB once; give the freed
/// heap back to the system rather than keep it resident for the agent's life.
fn release_startup_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory at the top of the heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn start_inner(opts: &ProbeOptions) -> (Option<(Probes, CopyUpMaps)>, ProbeStatus) {
    let symbols = match Symbols::read(&opts.kallsyms) {
        Ok(s) => s,
        Err(e) => return (None, disabled(Disabled::NoKallsyms(format!("{}: {e}", opts.kallsyms.display())))),
    };
    if !symbols.has_overlay() {
        return (None, disabled(Disabled::NoOverlay("ovl_copy_up_one is not in kallsyms".into())));
    }
    let btf = match KernelBtf::load(&opts.btf_dir) {
        Ok(b) => b,
        Err(e) => return (None, disabled(Disabled::NoBtf(e.to_string()))),
    };
    let version = crate::kernel::version().unwrap_or((0, 0));
    let cfg = match config::program_config(&btf, &symbols, version, opts) {
        Ok(c) => c,
        Err(e) => return (None, disabled(Disabled::NoBtf(e))),
    };
    tracing::debug!(?cfg, overlay_btf = btf.has_overlay_btf(), "eBPF program config");
    raise_memlock();
    let mut ebpf = match load(&cfg) {
        Ok(e) => e,
        Err(e) => {
            return (None, disabled(Disabled::from_error(&e, format!("loading eBPF maps: {}", chain(&e)))))
        }
    };
    if let Err(e) = write_tables(&mut ebpf, opts.per_mount_histograms) {
        return (None, disabled(Disabled::LoadFailed(e)));
    }
    let mut status = ProbeStatus { per_mount_histograms: opts.per_mount_histograms, ..Default::default() };
    let mut att = Attacher::default();
    for p in plan::plan(&symbols, version) {
        status.attachments.push(att.attach(&mut ebpf, &p));
    }
    let core_failure = status.attachments.iter().find(|a| !a.attached && a.core);
    if let Some(a) = core_failure {
        let detail = format!(
            "{} on {}: {}",
            a.mechanism.as_str(),
            a.function.unwrap_or("?"),
            a.error.clone().unwrap_or_else(|| "function not found".into())
        );
        let why = Disabled::from_errno(a.errno, detail);
        let attachments = status.attachments.clone();
        return (None, ProbeStatus { attachments, ..disabled(why) });
    }
    match take_maps(&mut ebpf) {
        Ok(maps) => {
            status.enabled = true;
            (Some((Probes { ebpf }, maps)), status)
        }
        Err(e) => (None, disabled(Disabled::LoadFailed(e))),
    }
}

/// An error with its causes: aya's own messages name the file or call, the
/// source says what went wrong with it.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Loads the object with the config as its frozen global, and the released-slot
/// arrays sized to the possible CPUs.
fn load(cfg: &ProgramConfig) -> Result<Ebpf, aya::EbpfError> {
    let cpus = aya::util::nr_cpus().map(|n| n as u32).unwrap_or(1).max(1);
    EbpfLoader::new()
        .set_global("CONFIG", cfg, true)
        .set_max_entries("COUNT_DEAD", COUNT_SLOTS * cpus)
        .set_max_entries("HIST_DEAD", HIST_SLOTS * cpus)
        .load(OBJECT)
}

/// Writes the SYSCALL_CAUSE table (encoded entries by call number) and SETTINGS.
fn write_tables(ebpf: &mut Ebpf, per_mount_histograms: bool) -> Result<(), String> {
    let abi = syscall::NATIVE.ok_or("no system-call table for this arch")?;
    let map = ebpf.map_mut("SYSCALL_CAUSE").ok_or("map SYSCALL_CAUSE not in object")?;
    let mut table: Array<_, u16> = Array::try_from(map).map_err(|e| e.to_string())?;
    for (name, nr) in abi.numbers {
        let call = syscall::find(name).ok_or_else(|| format!("{name}: not in the call table"))?;
        table
            .set(*nr, syscall::encode(call), 0)
            .map_err(|e| format!("writing SYSCALL_CAUSE[{name}]: {e}"))?;
    }
    write_settings(ebpf, per_mount_histograms)
}

fn write_settings(ebpf: &mut Ebpf, per_mount_histograms: bool) -> Result<(), String> {
    let map = ebpf.map_mut("SETTINGS").ok_or("map SETTINGS not in object")?;
    let mut array: Array<_, u32> = Array::try_from(map).map_err(|e| e.to_string())?;
    array.set(0, per_mount_histograms as u32, 0).map_err(|e| format!("writing SETTINGS: {e}"))
}

fn take_maps(ebpf: &mut Ebpf) -> Result<CopyUpMaps, String> {
    let mut take = |name: &str| ebpf.take_map(name).ok_or_else(|| format!("map {name} not in object"));
    let counts = PerCpuHashMap::try_from(take("COUNTS")?).map_err(|e| e.to_string())?;
    let hist = aya::maps::HashMap::try_from(take("HIST")?).map_err(|e| e.to_string())?;
    let stats = PerCpuArray::try_from(take("STATS")?).map_err(|e| e.to_string())?;
    let processes = PerCpuHashMap::try_from(take("PROCESSES")?).map_err(|e| e.to_string())?;
    let slots = slots::Slots {
        counts: PerCpuArray::try_from(take("COUNT_SLOTS_MAP")?).map_err(|e| e.to_string())?,
        count_dead: Array::try_from(take("COUNT_DEAD")?).map_err(|e| e.to_string())?,
        hist: PerCpuArray::try_from(take("HIST_SLOTS_MAP")?).map_err(|e| e.to_string())?,
        hist_dead: Array::try_from(take("HIST_DEAD")?).map_err(|e| e.to_string())?,
        processes: PerCpuArray::try_from(take("PROCESS_SLOTS_MAP")?).map_err(|e| e.to_string())?,
        released: Default::default(),
    };
    Ok(CopyUpMaps { counts, hist, stats, processes, slots, retained: Default::default() })
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
fn raise_memlock() {
    let unlimited = rustix::process::Rlimit { current: None, maximum: None };
    if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::Memlock, unlimited) {
        tracing::debug!(error = %e, "cannot raise RLIMIT_MEMLOCK");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded object has every program and map the plan and the loader
    /// name (parsed offline, nothing loaded).
    #[test]
    fn object_has_every_planned_program_and_map() {
        let obj = aya_obj::Object::parse(OBJECT).expect("parse the embedded eBPF object");
        for p in crate::kernel::hooks::program_names() {
            assert!(obj.programs.contains_key(p), "program {p} missing from the eBPF object");
        }
        assert!(!obj.programs.contains_key("meta_entry"), "no probe on the metadata copy");
        assert!(!obj.programs.contains_key("one_exit"), "no return probe");
        for m in [
            "SETTINGS",
            "SYSCALL_CAUSE",
            "THREADS",
            "SPILL",
            "COUNT_SLOTS_MAP",
            "COUNTS",
            "COUNT_DEAD",
            "HIST_SLOTS_MAP",
            "HIST",
            "HIST_DEAD",
            "PROCESS_SLOTS_MAP",
            "PROCESSES",
            "STATS",
            "TRACE",
        ] {
            assert!(obj.maps.contains_key(m), "map {m} missing from the eBPF object");
        }
    }

    /// On a kernel without overlay symbols the probes report it and stay off.
    #[test]
    fn reports_missing_overlay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kallsyms = dir.path().join("kallsyms");
        std::fs::write(&kallsyms, "ffffffff81000000 T _stext\n").expect("write");
        let opts = ProbeOptions { kallsyms, ..Default::default() };
        let (probes, status) = start(&opts);
        assert!(probes.is_none() && !status.enabled);
        assert_eq!(status.disabled.map(|d| d.reason()), Some("no_overlay"));
    }
}
