//! overlay-agent's eBPF programs: copy-up counts, bytes and latency by cause,
//! kind and overlay superblock, aggregated in the kernel.
//!
//! Hooks (agent/src/kernel/hooks.rs is the table of functions, prototypes and
//! what is read from them): copyup.rs on ovl_copy_up_one, ovl_copy_up_file/_data
//! and ovl_copy_up_end. Nothing runs on overlay
//! operations that copy nothing up: the cause is read at copy-up time from the
//! system call the thread is in; the kind from the entry's upper dentry.
//! (bare.rs, the benchmark floor, is another object: the `overlay-bench-bare` bin.)
#![no_std]
#![no_main]
// core::intrinsics::atomic_xadd (util::observe): the bpf target has no AtomicU64 adds.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod copyup;
mod maps;
mod util;

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The kernel checks this string: "Dual MIT/GPL" is GPL-compatible, which the
/// helpers the programs call (bpf_probe_read_kernel, ring buffer output,
/// bpf_get_current_comm) require. It matches this crate's licence, MIT OR GPL-2.0.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
