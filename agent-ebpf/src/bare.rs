//! The benchmark floor: a kprobe+kretprobe pair on ovl_copy_up_one that only
//! counts. The probe-overhead benchmark (tests/guest, `probe_overhead`) compares
//! the agent's full hook set against this pair. An object of its own
//! (`overlay-bench-bare`, feature `bench`), built for the guest tests
//! (tests/guest/build.rs) and attached by their qemu-bare-probe: the agent's
//! object (`overlay-copyup`) does not hold it.
#![no_std]
#![no_main]

use aya_ebpf::macros::{kprobe, kretprobe, map};
use aya_ebpf::maps::PerCpuArray;
use aya_ebpf::programs::{ProbeContext, RetProbeContext};
use overlay_agent_common::stat;

/// The agent's self-monitoring array (maps.rs), which the pair counts in as it
/// did in the agent's object: one per-CPU slot bumped per event.
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

#[inline(always)]
fn bump(slot: u32) {
    if let Some(p) = STATS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot of this CPU; no other writer runs concurrently.
        unsafe { *p += 1 };
    }
}

#[kprobe]
pub fn bare_entry(_ctx: ProbeContext) -> u32 {
    bump(stat::BARE);
    0
}

#[kretprobe]
pub fn bare_exit(_ctx: RetProbeContext) -> u32 {
    bump(stat::BARE);
    0
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible, as the agent's object: see main.rs.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
