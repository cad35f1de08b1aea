//! The benchmark floor: a kprobe+kretprobe pair on ovl_copy_up_one that only
//! counts. The probe-overhead benchmark (tests/qemu.rs, `probe_overhead`) compares
//! the agent's full hook set against this pair; the agent never attaches it.

use aya_ebpf::macros::{kprobe, kretprobe};
use aya_ebpf::programs::{ProbeContext, RetProbeContext};
use overlay_agent_common::stat;

use crate::util::bump;

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
