//! Attaches only the bare counting kprobe+kretprobe pair on ovl_copy_up_one
//! (agent-ebpf's `overlay-bench-bare` object, which build.rs builds) and waits
//! to be killed: the floor of the probe-overhead benchmark (tests/guest,
//! overhead.rs). The kernel detaches the probes when the process exits.

use aya::programs::KProbe;
use aya::Ebpf;

/// The benchmark floor's object, left in OUT_DIR by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/overlay-bench-bare"));

/// Loads the pair and attaches it through aya's perf kprobe and kretprobe (the
/// kernel's default maxactive): the floor of aya's own mechanism.
fn attach() -> Result<Ebpf, String> {
    // Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
    let unlimited = rustix::process::Rlimit { current: None, maximum: None };
    if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::Memlock, unlimited) {
        eprintln!("bare probes: cannot raise RLIMIT_MEMLOCK: {e}");
    }
    let mut ebpf = Ebpf::load(OBJECT).map_err(|e| chain(&e))?;
    for program in ["bare_entry", "bare_exit"] {
        let prog = ebpf.program_mut(program).ok_or_else(|| format!("program {program} not in object"))?;
        let kprobe: &mut KProbe = prog.try_into().map_err(|e| chain(&e))?;
        kprobe.load().map_err(|e| format!("load: {}", chain(&e)))?;
        kprobe.attach("ovl_copy_up_one", 0).map_err(|e| format!("attach: {}", chain(&e)))?;
    }
    Ok(ebpf)
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
    match attach() {
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
