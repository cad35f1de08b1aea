//! The probe-overhead benchmark's helpers (tests/guest, overhead.rs):
//!
//! - `qemu-bare-probe`: attaches only the bare counting kprobe+kretprobe pair on
//!   ovl_copy_up_one (agent-ebpf's `overlay-bench-bare` object) and waits to be
//!   killed: the floor of the benchmark. The kernel detaches the probes when
//!   the process exits.
//! - `qemu-bare-probe micro`: attaches the cost model (`overlay-bench-micro`:
//!   one program per operation the copy-up programs use) the same way.
//! - `qemu-bare-probe stats`: prints every loaded program's name, runs and
//!   time inside it (kernel.bpf_stats_enabled), one `PROG NAME RUNS NS` line each.

use aya::programs::KProbe;
use aya::{Ebpf, EbpfLoader};
use overlay_agent::kernel::btf::KernelBtf;

/// The benchmark floor's object, left in OUT_DIR by build.rs.
static BARE: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/overlay-bench-bare"));
/// The cost model's object.
static MICRO: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/overlay-bench-micro"));

fn raise_memlock() {
    // Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
    let unlimited = rustix::process::Rlimit { current: None, maximum: None };
    if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::Memlock, unlimited) {
        eprintln!("bare probes: cannot raise RLIMIT_MEMLOCK: {e}");
    }
}

/// Loads the pair and attaches it through aya's perf kprobe and kretprobe (the
/// kernel's default maxactive): the floor of aya's own mechanism.
fn attach_bare() -> Result<Ebpf, String> {
    let mut ebpf = Ebpf::load(BARE).map_err(|e| chain(&e))?;
    attach_all(&mut ebpf, &["bare_entry", "bare_exit"])?;
    Ok(ebpf)
}

/// Loads the cost model, its offsets from this kernel's BTF, and attaches
/// every program of it that loads (5.10 lacks bpf_task_pt_regs: those say so).
fn attach_micro() -> Result<Ebpf, String> {
    let btf = KernelBtf::load(std::path::Path::new("/sys/kernel/btf")).map_err(|e| e.to_string())?;
    let off = |s: &str, m: &str| btf.member_offset(s, m).unwrap_or(0);
    let (orig_ax, real_cred, user_ns) =
        (off("pt_regs", "orig_ax"), off("task_struct", "real_cred"), off("cred", "user_ns"));
    let mut ebpf = EbpfLoader::new()
        .set_global("MC_REGS_ORIG_AX", &orig_ax, true)
        .set_global("MC_TASK_REAL_CRED", &real_cred, true)
        .set_global("MC_CRED_USER_NS", &user_ns, true)
        .load(MICRO)
        .map_err(|e| chain(&e))?;
    let names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_owned()).collect();
    for name in names {
        if let Err(e) = attach_all(&mut ebpf, &[name.as_str()]) {
            println!("micro: {name}: {e}");
        }
    }
    Ok(ebpf)
}

fn attach_all(ebpf: &mut Ebpf, programs: &[&str]) -> Result<(), String> {
    for program in programs {
        let prog = ebpf.program_mut(program).ok_or_else(|| format!("program {program} not in object"))?;
        let kprobe: &mut KProbe = prog.try_into().map_err(|e| chain(&e))?;
        kprobe.load().map_err(|e| format!("load: {}", chain(&e)))?;
        kprobe.attach("ovl_copy_up_one", 0).map_err(|e| format!("attach: {}", chain(&e)))?;
    }
    Ok(())
}

/// Every loaded program's statistics.
fn stats() {
    for p in aya::programs::loaded_programs().flatten() {
        println!("PROG {} {} {}", p.name_as_str().unwrap_or("?"), p.run_count(), p.run_time().as_nanos());
    }
}

/// An error with its causes.
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

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    if mode == "stats" {
        return stats();
    }
    raise_memlock();
    let loaded = if mode == "micro" { attach_micro() } else { attach_bare() };
    match loaded {
        Ok(_probes) => {
            println!("bare probes attached");
            loop {
                std::thread::park();
            }
        }
        Err(e) => {
            eprintln!("bare probes: {e}");
            std::process::exit(1);
        }
    }
}
