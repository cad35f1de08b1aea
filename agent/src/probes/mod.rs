//! The eBPF copy-up probes: load the embedded object, write the run-time config
//! (offsets and argument positions from BTF), attach each program to the
//! functions this kernel has, and report what attached. A probe that cannot
//! attach is a reported state, never a crash: the agent serves everything else.

mod attach;
pub mod batch;
pub mod forget;
pub mod maps;
pub mod plan;
pub mod reading;
pub mod retprobe;
mod status;

use std::path::PathBuf;
use std::sync::{Mutex, RwLock};

use aya::maps::{Array, PerCpuArray, PerCpuHashMap};
use aya::Ebpf;
use overlay_agent_common::{syscall, ProgramConfig};

use crate::kernel::btf::KernelBtf;
use crate::kernel::hooks::{self, Group};
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
    /// Declared first: dropped (detached, events removed) before the programs.
    _retprobes: Vec<retprobe::Retprobe>,
    ebpf: Ebpf,
}

impl Probes {
    /// The trace ring buffer (for `overlay-agent trace`).
    pub fn take_trace(&mut self) -> Option<aya::maps::RingBuf<aya::maps::MapData>> {
        aya::maps::RingBuf::try_from(self.ebpf.take_map("TRACE")?).ok()
    }

    /// Turns the per-mount histogram keys on or off in the running programs (a
    /// reload of `ebpf.per_mount_histograms`): rewrites that field of CONFIG.
    pub fn set_per_mount_histograms(&mut self, on: bool) -> Result<(), String> {
        let map = self.ebpf.map_mut("CONFIG").ok_or("map CONFIG not in object")?;
        let mut array: Array<_, ProgramConfig> = Array::try_from(map).map_err(|e| e.to_string())?;
        let mut cfg = array.get(&0, 0).map_err(|e| format!("reading CONFIG: {e}"))?;
        cfg.per_mount_histograms = on as u32;
        array.set(0, cfg, 0).map_err(|e| format!("writing CONFIG: {e}"))
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

/// x86_64 THREAD_SIZE: 16 KiB, 32 KiB with KASAN (arch/x86/include/asm/page_64_types.h).
fn thread_size(symbols: &Symbols) -> u32 {
    if symbols.kasan {
        32 << 10
    } else {
        16 << 10
    }
}

/// Where the upper dentry sits from the overlay inode's address: from the
/// module's BTF, else (5.10) right after the VFS inode, as in every
/// fs/overlayfs/ovl_entry.h from 4.19 to 7.2 (the QEMU suite checks that
/// layout on the kernels with module BTF).
fn ovl_inode_upper(btf: &KernelBtf) -> Result<u32, String> {
    match (
        btf.module_member_offset("ovl_inode", "vfs_inode"),
        btf.module_member_offset("ovl_inode", "__upperdentry"),
    ) {
        (Ok(vfs), Ok(upper)) if upper > vfs => Ok(upper - vfs),
        _ => Ok(btf.struct_size("inode").map_err(|e| e.to_string())?.next_multiple_of(8)),
    }
}

/// Computes the programs' config from BTF and the table in kernel::hooks.
/// Errors name what is missing.
fn program_config(
    btf: &KernelBtf,
    symbols: &Symbols,
    version: (u32, u32),
    opts: &ProbeOptions,
) -> Result<ProgramConfig, String> {
    let off = |s: &str, m: &str| btf.member_offset(s, m).map_err(|e| e.to_string());
    // The length's position: from the module's BTF where the kernel has it,
    // else from the table's prototype for this kernel (5.10 has no module BTF).
    let copy_len_arg = match plan::chosen(symbols, Group::DataCopy) {
        Some(f) => btf
            .param_index(f, "len")
            .or_else(|| hooks::find(f)?.param_index("len", version))
            .ok_or_else(|| format!("no parameter len of {f} on {version:?}"))? as u32,
        None => 0,
    };
    let regs_size = btf.struct_size("pt_regs").map_err(|e| e.to_string())?;
    Ok(ProgramConfig {
        dentry_d_sb: off("dentry", "d_sb")?,
        dentry_d_inode: off("dentry", "d_inode")?,
        sb_s_dev: off("super_block", "s_dev")?,
        inode_i_mode: off("inode", "i_mode")?,
        copy_len_arg,
        per_mount_histograms: opts.per_mount_histograms as u32,
        ready: 1,
        dentry_name_ptr: off("dentry", "d_name")? + off("qstr", "name")?,
        task_stack: off("task_struct", "stack")?,
        // Before 5.15 (the only kernels that use it) x86_64 has no padding above
        // the registers (TOP_OF_KERNEL_STACK_PADDING is 0 until FRED, 6.9).
        stack_regs_offset: thread_size(symbols).saturating_sub(regs_size),
        regs_orig_ax: off("pt_regs", "orig_ax")?,
        regs_cs: off("pt_regs", "cs")?,
        ovl_inode_upper: ovl_inode_upper(btf)?,
        trace_min_latency_ns: opts
            .trace_min_latency
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(u64::MAX),
    })
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
    let cfg = match program_config(&btf, &symbols, version, opts) {
        Ok(c) => c,
        Err(e) => return (None, disabled(Disabled::NoBtf(e))),
    };
    tracing::debug!(?cfg, overlay_btf = btf.has_overlay_btf(), "eBPF program config");
    raise_memlock();
    let mut ebpf = match Ebpf::load(OBJECT) {
        Ok(e) => e,
        Err(e) => {
            return (None, disabled(Disabled::from_error(&e, format!("loading eBPF maps: {}", chain(&e)))))
        }
    };
    if let Err(e) = write_config(&mut ebpf, cfg) {
        return (None, disabled(Disabled::LoadFailed(e)));
    }
    let mut status = ProbeStatus { per_mount_histograms: opts.per_mount_histograms, ..Default::default() };
    let mut att = Attacher::new(true);
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
            let returns = att
                .returns
                .iter()
                .map(|r| (r.program.clone(), r.event.clone(), r.tracefs_profile()))
                .collect();
            let maps = CopyUpMaps { returns, ..maps };
            (Some((Probes { _retprobes: att.returns, ebpf }, maps)), status)
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

/// Writes CONFIG and the SYSCALL_CAUSE table (cause + 1 by call number).
fn write_config(ebpf: &mut Ebpf, cfg: ProgramConfig) -> Result<(), String> {
    let map = ebpf.map_mut("SYSCALL_CAUSE").ok_or("map SYSCALL_CAUSE not in object")?;
    let mut table: Array<_, u8> = Array::try_from(map).map_err(|e| e.to_string())?;
    for (name, nr, cause) in syscall::X86_64 {
        table.set(*nr, cause + 1, 0).map_err(|e| format!("writing SYSCALL_CAUSE[{name}]: {e}"))?;
    }
    let map = ebpf.map_mut("CONFIG").ok_or("map CONFIG not in object")?;
    let mut array: Array<_, ProgramConfig> = Array::try_from(map).map_err(|e| e.to_string())?;
    array.set(0, cfg, 0).map_err(|e| format!("writing CONFIG: {e}"))
}

fn take_maps(ebpf: &mut Ebpf) -> Result<CopyUpMaps, String> {
    let mut take = |name: &str| ebpf.take_map(name).ok_or_else(|| format!("map {name} not in object"));
    let counts = PerCpuHashMap::try_from(take("COUNTS")?).map_err(|e| e.to_string())?;
    let hist = aya::maps::HashMap::try_from(take("HIST")?).map_err(|e| e.to_string())?;
    let stats = PerCpuArray::try_from(take("STATS")?).map_err(|e| e.to_string())?;
    let processes = PerCpuHashMap::try_from(take("PROCESSES")?).map_err(|e| e.to_string())?;
    Ok(CopyUpMaps { counts, hist, stats, processes, returns: Vec::new(), retained: Default::default() })
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
        for p in hooks::program_names() {
            assert!(obj.programs.contains_key(p), "program {p} missing from the eBPF object");
        }
        assert!(!obj.programs.contains_key("meta_entry"), "no probe on the metadata copy");
        for m in ["CONFIG", "SYSCALL_CAUSE", "COUNTS", "HIST", "STATS", "PROCESSES", "TRACE", "INFLIGHT"] {
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
