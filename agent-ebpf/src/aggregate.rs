//! Per-CPU aggregation: each key counted in this CPU's slot for it (an array
//! lookup), else in the shared map (a hash lookup). See
//! overlay_agent_common::COUNT_SLOTS for the scheme and how slots are released.

use aya_ebpf::helpers::bpf_get_smp_processor_id;
use overlay_agent_common::{
    slot_of, stat, CountKey, CountValue, HistKey, ProcessKey, ProcessValue, COUNT_SLOTS, HIST_SLOTS,
    PROCESS_SLOTS,
};

use crate::maps::{
    COUNTS, COUNT_DEAD, COUNT_SLOTS_MAP, HIST, HIST_DEAD, HIST_SLOTS_MAP, PROCESSES, PROCESS_SLOTS_MAP,
};
use crate::util::bump;

/// Updates `key`'s value in place (`|p| ...` gets a `*mut V`), or inserts
/// `init` when the key is new, counting a full map in stat::MAP_FULL. The
/// update runs on this CPU's value (per-CPU maps), so nothing else writes it meanwhile.
macro_rules! upsert {
    ($map:expr, $key:expr, $init:expr, |$p:ident| $update:expr) => {
        match $map.get_ptr_mut($key) {
            // SAFETY: see above; the pointer is valid while the program runs.
            Some($p) => unsafe { $update },
            None => {
                if $map.insert($key, &$init, 0).is_err() {
                    bump(stat::MAP_FULL);
                }
            }
        }
    };
}

/// Whether slot `i` may be (re)started: free (generation 0), or released by
/// the agent (its generation written in `dead` at this CPU's row).
#[inline(always)]
fn released(gen: u32, dead: &aya_ebpf::maps::Array<u32>, slots: u32, i: u32) -> bool {
    if gen == 0 {
        return true;
    }
    // SAFETY: a helper without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    dead.get(cpu * slots + i).is_some_and(|d| *d == gen)
}

#[inline(always)]
fn next_gen(gen: u32) -> u32 {
    if gen == u32::MAX {
        1
    } else {
        gen + 1
    }
}

/// One copy-up's counters, added once.
#[inline(always)]
pub fn add_count(key: CountKey, v: &CountValue) {
    let i = slot_of(key.word(), COUNT_SLOTS);
    if let Some(s) = COUNT_SLOTS_MAP.get_ptr_mut(i) {
        // SAFETY: this CPU's slot; programs do not nest on a CPU.
        unsafe {
            let released = released((*s).gen, &COUNT_DEAD, COUNT_SLOTS, i);
            if (*s).gen != 0 && (*s).key.word() == key.word() && !released {
                (*s).value.add(v);
                return;
            }
            if released {
                (*s).key = key;
                (*s).gen = next_gen((*s).gen);
                (*s).value = *v;
                return;
            }
        }
    }
    upsert!(COUNTS, &key, *v, |p| (*p).add(v));
}

/// One observation in a histogram bucket.
#[inline(always)]
pub fn observe(key: HistKey) {
    let i = slot_of(key.word(), HIST_SLOTS);
    if let Some(s) = HIST_SLOTS_MAP.get_ptr_mut(i) {
        // SAFETY: this CPU's slot.
        unsafe {
            let released = released((*s).gen, &HIST_DEAD, HIST_SLOTS, i);
            if (*s).gen != 0 && (*s).key.word() == key.word() && !released {
                (*s).count += 1;
                return;
            }
            if released {
                (*s).key = key;
                (*s).gen = next_gen((*s).gen);
                (*s).count = 1;
                return;
            }
        }
    }
    observe_shared(&key);
}

/// HIST is one map shared by all CPUs, so the count is an atomic add (BPF_XADD:
/// the result is unused, which 5.10's verifier needs). A new key is inserted
/// with BPF_NOEXIST: of two CPUs that insert the same key at once, one inserts
/// and the other adds to its entry, so no observation is lost.
#[inline(always)]
fn observe_shared(key: &HistKey) {
    if add_one(key) {
        return;
    }
    const BPF_NOEXIST: u64 = 1;
    if HIST.insert(key, &1u64, BPF_NOEXIST).is_ok() || add_one(key) {
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

/// One copy-up for the comm of the thread that copied (the actor: a runtime
/// chowning an image, a package manager, the container's own program).
#[inline(always)]
pub fn add_process(comm: &ProcessKey, data_bytes: u64) {
    let word = overlay_agent_common::comm_word(comm);
    let i = slot_of(word, PROCESS_SLOTS);
    if let Some(s) = PROCESS_SLOTS_MAP.get_ptr_mut(i) {
        // SAFETY: this CPU's slot.
        unsafe {
            if (*s).value.copy_ups == 0 {
                (*s).comm = *comm;
            }
            if halves(&(*s).comm) == halves(comm) {
                (*s).value.copy_ups += 1;
                (*s).value.data_bytes += data_bytes;
                return;
            }
        }
    }
    upsert!(PROCESSES, comm, ProcessValue { copy_ups: 1, data_bytes }, |p| {
        (*p).copy_ups += 1;
        (*p).data_bytes += data_bytes;
    });
}

/// A comm as two words (compared without a byte loop).
#[inline(always)]
fn halves(c: &ProcessKey) -> (u64, u64) {
    // SAFETY: 16 bytes read as two unaligned words.
    unsafe {
        (
            core::ptr::read_unaligned(c.as_ptr() as *const u64),
            core::ptr::read_unaligned(c.as_ptr().add(8) as *const u64),
        )
    }
}
