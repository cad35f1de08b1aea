//! overlay-agent's eBPF programs: copy-up counts, bytes and latency by cause,
//! kind and overlay superblock, aggregated in the kernel.
//!
//! Hook map (kprobes; each program names the kernel prototype it expects):
//! - cause.rs: ovl_setattr, ovl_xattr_set/ovl_set_acl/ovl_fileattr_set, ovl_link,
//!   ovl_rename, ovl_create_object/ovl_create_or_link/ovl_tmpfile, ovl_do_remove
//! - copyup.rs: ovl_copy_up_one, ovl_copy_up_file/_data,
//!   ovl_copy_up_metadata/_inode, ovl_copy_up_end
//! - bare.rs: the benchmark floor (a counting pair), never attached by the agent
#![no_std]
#![no_main]

mod bare;
mod cause;
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
