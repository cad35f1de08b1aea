//! The eBPF copy-up probes: load the embedded object, write the run-time config
//! (offsets and argument positions from BTF), attach each program to the
//! functions this kernel has, and report what attached. A probe that cannot
//! attach is a reported state, never a crash: the agent serves everything else.

pub mod batch;
pub mod maps;
pub mod plan;

use std::path::PathBuf;
use std::sync::{Mutex, RwLock};

use aya::maps::{Array, PerCpuArray, PerCpuHashMap};
use aya::programs::KProbe;
use aya::Ebpf;
use overlay_agent_common::Config as ProgramConfig;

use crate::kernel::btf::KernelBtf;
use crate::kernel::symbols::Symbols;
use maps::CopyUpMaps;
use plan::{Mechanism, Planned};

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
            per_mount_histograms: false,
            trace_min_latency: None,
            btf_dir: PathBuf::from("/sys/kernel/btf"),
            kallsyms: PathBuf::from("/proc/kallsyms"),
        }
    }
}

/// Why the probes are off; `code` is a bounded label value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disabled {
    pub code: &'static str,
    pub detail: String,
}

/// One planned attachment and how it went.
#[derive(Debug, Clone)]
pub struct AttachState {
    pub program: &'static str,
    pub function: Option<&'static str>,
    pub mechanism: Mechanism,
    pub attached: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ProbeStatus {
    pub enabled: bool,
    pub disabled: Option<Disabled>,
    pub attachments: Vec<AttachState>,
    /// Whether per-mount histograms are being recorded.
    pub per_mount_histograms: bool,
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
}

/// What the collectors read: the status and, while probes run, their maps.
#[derive(Default)]
pub struct ProbeHandle {
    pub status: RwLock<ProbeStatus>,
    pub maps: Mutex<Option<CopyUpMaps>>,
}

fn disabled(code: &'static str, detail: impl Into<String>) -> ProbeStatus {
    ProbeStatus { disabled: Some(Disabled { code, detail: detail.into() }), ..Default::default() }
}

/// Argument positions where BTF does not describe the overlay module (5.10 has
/// no module BTF): by kernel version, from the kernel sources.
fn fallback_setattr_iattr(version: Option<(u32, u32)>) -> u32 {
    // (dentry, iattr) until 5.11; (userns|idmap, dentry, iattr) from 5.12.
    if version >= Some((5, 12)) {
        2
    } else {
        1
    }
}

fn fallback_len(function: &str, version: Option<(u32, u32)>) -> u32 {
    match function {
        "ovl_copy_up_file" => 3,           // (ofs, dentry, new_file, len[, datasync])
        _ if version >= Some((5, 8)) => 3, // ovl_copy_up_data(ofs, old, new, len)
        _ => 2,                            // ovl_copy_up_data(old, new, len)
    }
}

/// Computes the programs' config from BTF. Errors name what is missing.
fn program_config(btf: &KernelBtf, symbols: &Symbols, opts: &ProbeOptions) -> Result<ProgramConfig, String> {
    let off = |s: &str, m: &str| btf.member_offset(s, m).map_err(|e| e.to_string());
    let version = crate::kernel::version();
    let setattr_iattr_arg = match btf.param_index("ovl_setattr", "attr") {
        Some(i) => i as u32,
        None => fallback_setattr_iattr(version),
    };
    let copy_len_arg = match symbols.first(plan::DATA_FNS) {
        Some(f) => match btf.param_index(f, "len") {
            Some(i) => i as u32,
            None => fallback_len(f, version),
        },
        None => 0,
    };
    Ok(ProgramConfig {
        dentry_d_sb: off("dentry", "d_sb")?,
        dentry_d_inode: off("dentry", "d_inode")?,
        sb_s_dev: off("super_block", "s_dev")?,
        inode_i_mode: off("inode", "i_mode")?,
        setattr_iattr_arg,
        copy_len_arg,
        per_mount_histograms: opts.per_mount_histograms as u32,
        ready: 1,
        dentry_name_ptr: off("dentry", "d_name")? + off("qstr", "name")?,
        _pad: 0,
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
        Err(e) => return (None, disabled("no_kallsyms", format!("{}: {e}", opts.kallsyms.display()))),
    };
    if !symbols.has_overlay() {
        return (
            None,
            disabled("no_overlay", "ovl_copy_up_one is not in kallsyms: overlay module not loaded yet"),
        );
    }
    let btf = match KernelBtf::load(&opts.btf_dir) {
        Ok(b) => b,
        Err(e) => return (None, disabled("no_btf", e.to_string())),
    };
    let cfg = match program_config(&btf, &symbols, opts) {
        Ok(c) => c,
        Err(e) => return (None, disabled("no_btf", e)),
    };
    tracing::debug!(?cfg, overlay_btf = btf.has_overlay_btf(), "eBPF program config");
    raise_memlock();
    let mut ebpf = match Ebpf::load(OBJECT) {
        Ok(e) => e,
        Err(e) => {
            return (None, disabled(load_error_code(&e.to_string()), format!("loading eBPF maps: {e}")))
        }
    };
    if let Err(e) = write_config(&mut ebpf, cfg) {
        return (None, disabled("load_failed", e));
    }
    let mut status = ProbeStatus { per_mount_histograms: opts.per_mount_histograms, ..Default::default() };
    let mut loaded: Vec<&'static str> = Vec::new();
    for p in plan::plan(&symbols) {
        status.attachments.push(attach(&mut ebpf, &p, &mut loaded));
    }
    let core_failure = status.attachments.iter().find(|a| !a.attached && is_core(a.program));
    if let Some(a) = core_failure {
        let detail = format!(
            "{} on {}: {}",
            a.mechanism.as_str(),
            a.function.unwrap_or("?"),
            a.error.clone().unwrap_or_else(|| "function not found".into())
        );
        let code = load_error_code(&detail);
        let attachments = status.attachments.clone();
        return (None, ProbeStatus { attachments, ..disabled(code, detail) });
    }
    match take_maps(&mut ebpf) {
        Ok(maps) => {
            status.enabled = true;
            (Some((Probes { ebpf }, maps)), status)
        }
        Err(e) => (None, disabled("load_failed", e)),
    }
}

/// Attaches only the bare counting pair (bare_entry/bare_exit on
/// ovl_copy_up_one): the floor the probe-overhead benchmark measures against.
pub fn attach_bare() -> Result<Probes, String> {
    raise_memlock();
    let mut ebpf = Ebpf::load(OBJECT).map_err(|e| chain(&e))?;
    let mut loaded = Vec::new();
    for (program, mechanism) in [("bare_entry", Mechanism::Kprobe), ("bare_exit", Mechanism::Kretprobe)] {
        let p = Planned { program, mechanism, function: Some("ovl_copy_up_one"), core: true };
        let state = attach(&mut ebpf, &p, &mut loaded);
        if let Some(e) = state.error {
            return Err(e);
        }
    }
    Ok(Probes { ebpf })
}

fn is_core(program: &str) -> bool {
    plan::HOOKS.iter().any(|h| h.core && h.program == program)
}

/// A bounded reason code from an error text.
fn load_error_code(text: &str) -> &'static str {
    let t = text.to_ascii_lowercase();
    if t.contains("operation not permitted") || t.contains("permission denied") {
        "no_privileges"
    } else if t.contains("no such file") || t.contains("not supported") || t.contains("kprobe") {
        "kprobes_unavailable"
    } else {
        "attach_failed"
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

fn attach(ebpf: &mut Ebpf, p: &Planned, loaded: &mut Vec<&'static str>) -> AttachState {
    let mut state = AttachState {
        program: p.program,
        function: p.function,
        mechanism: p.mechanism,
        attached: false,
        error: None,
    };
    let Some(function) = p.function else {
        state.error = Some("no candidate function on this kernel (inlined or renamed)".into());
        return state;
    };
    let result = (|| -> Result<(), String> {
        let prog =
            ebpf.program_mut(p.program).ok_or_else(|| format!("program {} not in object", p.program))?;
        let kprobe: &mut KProbe = prog.try_into().map_err(|e| chain(&e))?;
        if !loaded.contains(&p.program) {
            kprobe.load().map_err(|e| format!("load: {}", chain(&e)))?;
            loaded.push(p.program);
        }
        kprobe.attach(function, 0).map_err(|e| format!("attach: {}", chain(&e)))?;
        Ok(())
    })();
    match result {
        Ok(()) => state.attached = true,
        Err(e) => {
            tracing::debug!(program = p.program, function, error = %e, "probe not attached");
            state.error = Some(e);
        }
    }
    state
}

fn write_config(ebpf: &mut Ebpf, cfg: ProgramConfig) -> Result<(), String> {
    let map = ebpf.map_mut("CONFIG").ok_or("map CONFIG not in object")?;
    let mut array: Array<_, ProgramConfig> = Array::try_from(map).map_err(|e| e.to_string())?;
    array.set(0, cfg, 0).map_err(|e| format!("writing CONFIG: {e}"))
}

fn take_maps(ebpf: &mut Ebpf) -> Result<CopyUpMaps, String> {
    let mut take = |name: &str| ebpf.take_map(name).ok_or_else(|| format!("map {name} not in object"));
    let counts = PerCpuHashMap::try_from(take("COUNTS")?).map_err(|e| e.to_string())?;
    let hist = PerCpuHashMap::try_from(take("HIST")?).map_err(|e| e.to_string())?;
    let stats = PerCpuArray::try_from(take("STATS")?).map_err(|e| e.to_string())?;
    let processes = PerCpuHashMap::try_from(take("PROCESSES")?).map_err(|e| e.to_string())?;
    Ok(CopyUpMaps { counts, hist, stats, processes })
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

    #[test]
    fn fallbacks_follow_the_kernel_sources() {
        assert_eq!(fallback_setattr_iattr(Some((5, 10))), 1);
        assert_eq!(fallback_setattr_iattr(Some((5, 15))), 2);
        assert_eq!(fallback_len("ovl_copy_up_data", Some((5, 10))), 3);
        assert_eq!(fallback_len("ovl_copy_up_data", Some((4, 19))), 2);
        assert_eq!(fallback_len("ovl_copy_up_file", Some((6, 12))), 3);
    }

    #[test]
    fn reason_codes() {
        assert_eq!(load_error_code("attach: Operation not permitted (os error 1)"), "no_privileges");
        assert_eq!(load_error_code("attach: No such file or directory"), "kprobes_unavailable");
        assert_eq!(load_error_code("weird"), "attach_failed");
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
        assert_eq!(status.disabled.map(|d| d.code), Some("no_overlay"));
    }
}
