//! The probe-overhead benchmark's cost model: one program per operation the
//! copy-up programs use, all on ovl_copy_up_one, each timed by the kernel
//! (bpf_stats). A program's time per run less `mc_empty`'s is what its one
//! operation costs. An object of its own (`overlay-bench-micro`, feature
//! `bench`), attached by the guest tests' qemu-bare-probe (mode `micro`).
//! Offsets are x86_64 Debian 6.1's where a program needs one from BTF
//! (qemu-bare-probe writes them, read from BTF, into the .rodata globals).
#![no_std]
#![no_main]
#![allow(internal_features)]
#![feature(core_intrinsics)]

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_ktime_get_ns,
    bpf_probe_read_kernel, bpf_task_pt_regs,
};
use aya_ebpf::macros::{kprobe, map};
use aya_ebpf::maps::{Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, PerCpuHashMap};
use aya_ebpf::programs::ProbeContext;
use overlay_agent_common::{bucket, CountKey, CountValue, HistKey, ProcessValue};

/// Offsets written by the loader (frozen .rodata: constants for the verifier).
#[unsafe(no_mangle)]
static MC_REGS_ORIG_AX: u32 = 0;
#[unsafe(no_mangle)]
static MC_TASK_REAL_CRED: u32 = 0;
#[unsafe(no_mangle)]
static MC_CRED_USER_NS: u32 = 0;

#[inline(always)]
fn ro(v: &u32) -> u64 {
    // SAFETY: a plain read of a static; volatile so that the compiler does not
    // fold the value the object was built with.
    unsafe { core::ptr::read_volatile(v) as u64 }
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Slot {
    tid: u32,
    active: u32,
    a: u64,
    b: u64,
    c: u64,
    d: u64,
}

#[map]
static M_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(8, 0);
#[map]
static M_LRU: LruHashMap<u32, Slot> = LruHashMap::with_max_entries(16384, 0);
#[map]
static M_HASH: HashMap<u32, Slot> = HashMap::with_max_entries(16384, 0);
#[map]
static M_ARRAY: Array<Slot> = Array::with_max_entries(1 << 15, 0);
#[map]
static M_COUNTS: PerCpuHashMap<CountKey, CountValue> = PerCpuHashMap::with_max_entries(16384, 0);
#[map]
static M_HIST: HashMap<HistKey, u64> = HashMap::with_max_entries(1 << 18, 0);
#[map]
static M_PROC: LruPerCpuHashMap<[u8; 16], ProcessValue> = LruPerCpuHashMap::with_max_entries(4096, 0);
#[map]
static M_TABLE: Array<u8> = Array::with_max_entries(512, 0);

fn dentry(ctx: &ProbeContext) -> u64 {
    ctx.arg(1).unwrap_or(0)
}

#[inline(always)]
fn read<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

#[kprobe]
pub fn mc_empty(_ctx: ProbeContext) -> u32 {
    0
}

#[kprobe]
pub fn mc_bump(_ctx: ProbeContext) -> u32 {
    if let Some(p) = M_STATS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { *p += 1 };
    }
    0
}

#[kprobe]
pub fn mc_read8(ctx: ProbeContext) -> u32 {
    let v: u64 = read(dentry(&ctx)).unwrap_or(0);
    v as u32 & 1
}

#[kprobe]
pub fn mc_read64(ctx: ProbeContext) -> u32 {
    let v: [u64; 8] = read(dentry(&ctx)).unwrap_or([0; 8]);
    (v[0] ^ v[7]) as u32 & 1
}

#[kprobe]
pub fn mc_read4x8(ctx: ProbeContext) -> u32 {
    let d = dentry(&ctx);
    let a: u64 = read(d).unwrap_or(0);
    let b: u64 = read(d + 8).unwrap_or(0);
    let c: u64 = read(d + 16).unwrap_or(0);
    let e: u64 = read(d + 24).unwrap_or(0);
    (a ^ b ^ c ^ e) as u32 & 1
}

#[kprobe]
pub fn mc_ktime(_ctx: ProbeContext) -> u32 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() as u32 & 1 }
}

#[kprobe]
pub fn mc_tid(_ctx: ProbeContext) -> u32 {
    bpf_get_current_pid_tgid() as u32 & 1
}

/// The user registers and the system call number by helper reads (today's one_entry).
#[kprobe]
pub fn mc_regs_read(_ctx: ProbeContext) -> u32 {
    // SAFETY: helpers without preconditions.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    let nr: u64 = read(regs + 120).unwrap_or(0);
    let cs: u64 = read(regs + 136).unwrap_or(0);
    (nr ^ cs) as u32 & 1
}

/// The same with direct loads from the BTF pointer, offsets from .rodata.
#[kprobe]
pub fn mc_regs_direct(_ctx: ProbeContext) -> u32 {
    // SAFETY: helpers without preconditions; the loads go through the
    // verifier's BTF-checked (fault-tolerant) memory access.
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as u64;
        let off = ro(&MC_REGS_ORIG_AX);
        let nr = core::ptr::read_volatile((regs + off) as *const u64);
        let cs = core::ptr::read_volatile((regs + off + 16) as *const u64);
        (nr ^ cs) as u32 & 1
    }
}

/// The caller's user namespace: task->real_cred->user_ns, direct loads.
#[kprobe]
pub fn mc_cred_direct(_ctx: ProbeContext) -> u32 {
    // SAFETY: as above.
    unsafe {
        let task = bpf_get_current_task_btf() as u64;
        let cred = core::ptr::read_volatile((task + ro(&MC_TASK_REAL_CRED)) as *const u64);
        let ns = core::ptr::read_volatile((cred + ro(&MC_CRED_USER_NS)) as *const u64);
        ns as u32 & 1
    }
}

#[kprobe]
pub fn mc_table(ctx: ProbeContext) -> u32 {
    let i = ctx.arg::<u64>(2).unwrap_or(0) as u32 & 511;
    M_TABLE.get(i).copied().unwrap_or(0) as u32
}

#[inline(always)]
fn slot() -> Slot {
    Slot { tid: bpf_get_current_pid_tgid() as u32, active: 1, a: 1, b: 2, c: 3, d: 4 }
}

#[kprobe]
pub fn mc_lru_tid(_ctx: ProbeContext) -> u32 {
    let s = slot();
    match M_LRU.get_ptr_mut(&s.tid) {
        // SAFETY: this thread's entry.
        Some(p) => unsafe { *p = s },
        None => {
            let _ = M_LRU.insert(&s.tid, &s, 0);
        }
    }
    0
}

#[kprobe]
pub fn mc_hash_tid(_ctx: ProbeContext) -> u32 {
    let s = slot();
    match M_HASH.get_ptr_mut(&s.tid) {
        // SAFETY: this thread's entry.
        Some(p) => unsafe { *p = s },
        None => {
            let _ = M_HASH.insert(&s.tid, &s, 0);
        }
    }
    0
}

/// A constant key: the first run inserts, every other one finds it.
#[kprobe]
pub fn mc_hash_const(_ctx: ProbeContext) -> u32 {
    let s = slot();
    match M_HASH.get_ptr_mut(&7) {
        // SAFETY: the entry of this benchmark only.
        Some(p) => unsafe { (*p).a += 1 },
        None => {
            let _ = M_HASH.insert(&7, &s, 0);
        }
    }
    0
}

/// The lookup alone (the entry exists after mc_hash_tid's first run).
#[kprobe]
pub fn mc_hash_get(_ctx: ProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    match M_HASH.get_ptr_mut(&tid) {
        // SAFETY: a read of this thread's entry.
        Some(p) => unsafe { (*p).active },
        None => 7,
    }
}

#[kprobe]
pub fn mc_array_tid(_ctx: ProbeContext) -> u32 {
    let s = slot();
    if let Some(p) = M_ARRAY.get_ptr_mut(s.tid & ((1 << 15) - 1)) {
        // SAFETY: this thread's slot.
        unsafe { *p = s };
    }
    0
}

#[kprobe]
pub fn mc_counts(_ctx: ProbeContext) -> u32 {
    let k = CountKey { dev: 40, cause: 2, kind: 0, _pad: [0; 2] };
    match M_COUNTS.get_ptr_mut(&k) {
        // SAFETY: this CPU's value.
        Some(p) => unsafe {
            (*p).copy_ups += 1;
            (*p).data_bytes += 100;
            (*p).latency_ns += 1000;
        },
        None => {
            let _ = M_COUNTS.insert(&k, &CountValue { copy_ups: 1, ..Default::default() }, 0);
        }
    }
    0
}

#[kprobe]
pub fn mc_bucket(ctx: ProbeContext) -> u32 {
    bucket(dentry(&ctx) >> 7) as u32
}

#[kprobe]
pub fn mc_hist(_ctx: ProbeContext) -> u32 {
    let k = HistKey { dev: 40, cause: 2, hist: 0, bucket: 100 };
    match M_HIST.get_ptr_mut(&k) {
        // SAFETY: an atomic add on a map value.
        Some(p) => unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(p, 1);
        },
        None => {
            let _ = M_HIST.insert(&k, &1, 1);
        }
    }
    0
}

#[kprobe]
pub fn mc_comm(_ctx: ProbeContext) -> u32 {
    bpf_get_current_comm().map(|c| c[0] as u32).unwrap_or(0)
}

#[kprobe]
pub fn mc_proc(_ctx: ProbeContext) -> u32 {
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    match M_PROC.get_ptr_mut(&comm) {
        // SAFETY: this CPU's value.
        Some(p) => unsafe {
            (*p).copy_ups += 1;
            (*p).data_bytes += 100;
        },
        None => {
            let _ = M_PROC.insert(&comm, &ProcessValue { copy_ups: 1, data_bytes: 100 }, 0);
        }
    }
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
