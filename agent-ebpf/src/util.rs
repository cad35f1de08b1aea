//! Small helpers shared by the hooks.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel};
use aya_ebpf::programs::ProbeContext;
use overlay_agent_common::{stat, HistKey, ProgramConfig};

use crate::maps::{CONFIG, HIST, STATS};

#[inline(always)]
pub fn tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// Argument `i` (0-based) of the probed function, for a position known only at
/// run time (read from BTF by the agent). Every argument register is loaded with
/// a volatile read at a constant offset and one is picked by value: the verifier
/// rejects a ctx access at a variable offset, which a plain `ctx.arg(i)` with a
/// run-time `i` compiles to. x86_64 calling convention.
#[inline(always)]
pub fn arg_at(ctx: &ProbeContext, i: u32) -> Option<u64> {
    let regs = ctx.regs;
    // SAFETY: ctx.regs points at the probed task's saved registers for the
    // duration of the program; each field is read at its fixed offset.
    let (a0, a1, a2, a3, a4, a5) = unsafe {
        (
            core::ptr::read_volatile(&(*regs).rdi),
            core::ptr::read_volatile(&(*regs).rsi),
            core::ptr::read_volatile(&(*regs).rdx),
            core::ptr::read_volatile(&(*regs).rcx),
            core::ptr::read_volatile(&(*regs).r8),
            core::ptr::read_volatile(&(*regs).r9),
        )
    };
    match i {
        0 => Some(a0),
        1 => Some(a1),
        2 => Some(a2),
        3 => Some(a3),
        4 => Some(a4),
        5 => Some(a5),
        _ => None,
    }
}

/// The agent's config, once it has been written.
#[inline(always)]
pub fn config() -> Option<&'static ProgramConfig> {
    CONFIG.get(0).filter(|c| c.ready != 0)
}

#[inline(always)]
pub fn bump(slot: u32) {
    if let Some(p) = STATS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot of this CPU; no other writer runs concurrently.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn read<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an error.
    match unsafe { bpf_probe_read_kernel(addr as *const T) } {
        Ok(v) => Some(v),
        Err(_) => {
            bump(stat::READ_ERRORS);
            None
        }
    }
}

/// Updates `key`'s value in place (`|p| ...` gets a `*mut V`), or inserts
/// `init` when the key is new, counting a full map in stat::MAP_FULL. The
/// update runs on this CPU's value (per-CPU maps) or this thread's entry
/// (maps keyed by thread id), so nothing else writes it meanwhile.
macro_rules! upsert {
    ($map:expr, $key:expr, $init:expr, |$p:ident| $update:expr) => {
        match $map.get_ptr_mut($key) {
            // SAFETY: see above; the pointer is valid while the program runs.
            Some($p) => unsafe { $update },
            None => {
                if $map.insert($key, &$init, 0).is_err() {
                    $crate::util::bump(overlay_agent_common::stat::MAP_FULL);
                }
            }
        }
    };
}
pub(crate) use upsert;

/// Counts `v` in its native histogram bucket (the sums are kept in COUNTS).
/// HIST is one map shared by all CPUs (its memory does not grow with them), so
/// the count is an atomic add (BPF_XADD: the result is unused, which 5.10's
/// verifier needs). A new key is inserted with BPF_NOEXIST: of two CPUs that
/// insert the same key at once, one inserts and the other adds to its entry,
/// so no observation is lost.
#[inline(always)]
pub fn observe(dev: u32, cause: u8, hist: u8, v: u64) {
    let key = HistKey { dev, cause, hist, bucket: overlay_agent_common::bucket(v) };
    if add_one(&key) {
        return;
    }
    const BPF_NOEXIST: u64 = 1;
    if HIST.insert(&key, &1u64, BPF_NOEXIST).is_ok() || add_one(&key) {
        return;
    }
    bump(stat::MAP_FULL);
}

#[inline(always)]
fn add_one(key: &HistKey) -> bool {
    match HIST.get_ptr_mut(key) {
        Some(p) => {
            // SAFETY: a valid, aligned u64 of the map's value while the program
            // runs; every writer adds atomically. The bpf target has no
            // AtomicU64::fetch_add (no compare-and-swap before v3), so the
            // intrinsic: with its result unused LLVM emits BPF_XADD.
            unsafe {
                core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(p, 1)
            };
            true
        }
        None => false,
    }
}
