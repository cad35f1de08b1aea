//! overlay-agent's eBPF programs: copy-up counts, bytes, latency and no-op
//! copy-ups by cause, kind and overlay superblock, aggregated in the kernel.
//!
//! Hooks (agent/src/kernel/hooks.rs is the table of functions, prototypes and
//! what is read from them): copyup.rs on ovl_copy_up_one, ovl_copy_up_file/_data
//! and ovl_copy_up_end, three programs per copy-up. Nothing runs on overlay
//! operations that copy nothing up: the cause is read at copy-up time from the
//! system call the thread is in (syscall.rs); the kind from the entry's upper
//! dentry and the data copy; counts go to per-CPU slots (aggregate.rs).
//! (bare.rs and micro.rs, the benchmark's floor and cost model, are other
//! objects: the `overlay-bench-*` bins.)
#![no_std]
#![no_main]
// core::intrinsics::atomic_xadd (aggregate::add_one): the bpf target has no AtomicU64 adds.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod aggregate;
mod copyup;
mod maps;
mod syscall;
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
