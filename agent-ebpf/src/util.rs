//! Small helpers shared by the hooks: the config, kernel memory (helper reads
//! and BTF-checked direct loads), windows of a struct read at once.
//!
//! Architecture-specific register access is in two places, each with an x86_64
//! and an aarch64 variant chosen by aya-build's `bpf_target_arch`: [`arg_at`]
//! here names the argument registers of the probed function (rdi..r9;
//! regs[0..5]), and syscall.rs compares the native-caller register (all of
//! `cs`; the mode bits of `pstate`) and reads the call number (8 bytes of
//! `orig_ax`; the s32 `syscallno`). Everything else reaches registers through
//! aya's `ProbeContext::arg` (arch-aware itself) or through offsets the agent
//! writes into [`CONFIG`] (the user registers of the system call:
//! overlay_agent_common::syscall::Abi).

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel};
use aya_ebpf::programs::ProbeContext;
use overlay_agent_common::{stat, ProgramConfig};

use crate::maps::STATS;

/// The agent's config, written before load into .rodata and frozen: the
/// verifier reads every field as a constant.
#[unsafe(no_mangle)]
pub static CONFIG: ProgramConfig = ProgramConfig {
    dentry_d_inode: 0,
    dentry_d_sb: 0,
    dentry_name_ptr: 0,
    sb_s_dev: 0,
    inode_i_mode: 0,
    inode_i_uid: 0,
    inode_i_gid: 0,
    inode_times: [0; 4],
    ovl_upper: 0,
    ovl_flags_back: 0,
    upperdata_bit: 0,
    copy_len_arg: 0,
    task_stack: 0,
    stack_regs_offset: 0,
    regs_nr: 0,
    regs_native: 0,
    regs_args: [0; 6],
    task_real_cred: 0,
    task_comm: 0,
    cred_user_ns: 0,
    userns_level: 0,
    userns_uid_map: 0,
    userns_gid_map: 0,
    idmap_extent: 0,
    _pad: 0,
    native_value: 0,
    nr_mask_off: 0,
    trace_min_latency_ns: u64::MAX,
};

/// A field of [`CONFIG`], read so that the compiler cannot fold the value the
/// object was built with (the loader writes the real one).
macro_rules! conf {
    ($($field:tt)+) => {
        // SAFETY: a read of a static.
        unsafe { core::ptr::read_volatile(&$crate::util::CONFIG.$($field)+) }
    };
}
pub(crate) use conf;

#[inline(always)]
pub fn tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// Argument `i` (0-based) of the probed function, for a position known only at
/// load (read from BTF by the agent): every argument register is loaded at a
/// constant offset and one is picked. x86_64 calling convention.
#[cfg(not(bpf_target_arch = "aarch64"))]
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
    pick(i, [a0, a1, a2, a3, a4, a5])
}

/// The same on aarch64: the arguments are x0..x5, `regs[0..5]` of the
/// user_pt_regs aya gives kprobes there.
#[cfg(bpf_target_arch = "aarch64")]
#[inline(always)]
pub fn arg_at(ctx: &ProbeContext, i: u32) -> Option<u64> {
    let regs = ctx.regs;
    // SAFETY: as above; regs[0..5] are within the 31 saved registers.
    let (a0, a1, a2, a3, a4, a5) = unsafe {
        (
            core::ptr::read_volatile(&(*regs).regs[0]),
            core::ptr::read_volatile(&(*regs).regs[1]),
            core::ptr::read_volatile(&(*regs).regs[2]),
            core::ptr::read_volatile(&(*regs).regs[3]),
            core::ptr::read_volatile(&(*regs).regs[4]),
            core::ptr::read_volatile(&(*regs).regs[5]),
        )
    };
    pick(i, [a0, a1, a2, a3, a4, a5])
}

#[inline(always)]
fn pick(i: u32, [a0, a1, a2, a3, a4, a5]: [u64; 6]) -> Option<u64> {
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

#[inline(always)]
pub fn bump(slot: u32) {
    if let Some(p) = STATS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot of this CPU; no other writer runs concurrently.
        unsafe { *p += 1 };
    }
}

/// A helper read of a `T` at `addr`; failures are counted.
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

/// Up to 64 bytes of kernel memory from `addr`, `len` of them (a config
/// constant: the verifier knows which bytes are written), in one helper call.
pub struct Window {
    buf: [u64; 8],
}

impl Window {
    #[inline(always)]
    pub fn read(addr: u64, len: u32) -> Option<Window> {
        let mut w = Window { buf: [0; 8] };
        let len = if len > 64 { 64 } else { len };
        // SAFETY: the helper writes at most `len` <= 64 bytes into the buffer
        // and checks the source address.
        let rc = unsafe {
            aya_ebpf::helpers::r#gen::bpf_probe_read_kernel(
                w.buf.as_mut_ptr() as *mut _,
                len,
                addr as *const _,
            )
        };
        if rc != 0 {
            bump(stat::READ_ERRORS);
            return None;
        }
        Some(w)
    }

    /// The 8 bytes at `off` (a multiple of 4; read as two aligned words when
    /// it is not a multiple of 8).
    #[inline(always)]
    pub fn u64_at(&self, off: u32) -> u64 {
        let i = (off >> 3) as usize & 7;
        if off & 7 == 0 {
            self.buf[i]
        } else {
            self.u32_at(off) as u64 | (self.u32_at(off + 4) as u64) << 32
        }
    }

    /// The 4 bytes at `off` (a multiple of 4), little-endian.
    #[inline(always)]
    pub fn u32_at(&self, off: u32) -> u32 {
        let w = self.buf[(off >> 3) as usize & 7];
        (if off & 4 == 0 { w } else { w >> 32 }) as u32
    }

    /// The 2 bytes at `off` (a multiple of 2), little-endian.
    #[inline(always)]
    pub fn u16_at(&self, off: u32) -> u16 {
        let w = self.buf[(off >> 3) as usize & 7];
        (w >> ((off & 6) * 8)) as u16
    }
}

/// Kernel memory through a pointer the verifier knows by its BTF type
/// (bpf_get_current_task_btf, bpf_task_pt_regs): a plain load it makes fault
/// tolerant, no helper call. `off` must be a verifier constant (a CONFIG field).
#[inline(always)]
pub fn load_u64(btf_ptr: u64, off: u32) -> u64 {
    // SAFETY: the verifier checks the access against the BTF type and turns
    // it into a fault-tolerant load (BPF_PROBE_MEM).
    unsafe { core::ptr::read_volatile((btf_ptr + off as u64) as *const u64) }
}

#[inline(always)]
pub fn load_u32(btf_ptr: u64, off: u32) -> u32 {
    // SAFETY: as load_u64.
    unsafe { core::ptr::read_volatile((btf_ptr + off as u64) as *const u32) }
}
