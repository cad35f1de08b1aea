//! The copy-up core. One copy-up = one ovl_copy_up_one call in which
//! ovl_copy_up_end ran (ovl_copy_up_end runs exactly when ovl_copy_up_start
//! returned 0, i.e. this thread copied; a thread that found the copy done does
//! not count). Counting happens at ovl_copy_up_end, an entry probe that is never
//! missed; the return probe of ovl_copy_up_one only adds errors and cleans up.
//!
//! Kind: a directory, else by whether the entry had an upper dentry at entry
//! (then ovl_copy_up_one skips the full copy: only a deferred data copy or a
//! link-up runs) and whether the data copy (F) ran: no upper + F data, no
//! upper alone metadata, upper + F deferred_data, upper alone other. This is
//! ovl_copy_up_one's own test (`if (!ovl_dentry_upper(dentry))
//! ovl_do_copy_up()`), read once at entry instead of a probe on the metadata
//! copy.

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_task_btf,
    bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes, bpf_task_pt_regs,
};
use aya_ebpf::macros::{kprobe, kretprobe};
use aya_ebpf::programs::{ProbeContext, RetProbeContext};
use overlay_agent_common::{
    kind, ns_to_latency_units, stat, syscall, CountKey, CountValue, Inflight, ProcessValue, ProgramConfig,
    TraceEvent, HIST_BYTES, HIST_LATENCY,
};

use crate::maps::{COUNTS, INFLIGHT, PROCESSES, SYSCALL_CAUSE, TRACE};
use crate::util::{arg_at, bump, config, observe, read, tid, upsert};

const S_IFMT: u16 = 0o170000;
const S_IFDIR: u16 = 0o040000;

/// ovl_copy_up_one(parent, dentry, flags): stable from 4.19 to 7.2. Reads the
/// user registers with bpf_task_pt_regs (5.15+).
#[kprobe]
pub fn one_entry(ctx: ProbeContext) -> u32 {
    bump(stat::ONE_ENTRIES);
    let Some(cfg) = config() else { return 0 };
    // SAFETY: helpers without preconditions; the task pointer is the current
    // task's, which the verifier knows by its BTF type.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    copy_up_entry(&ctx, cfg, regs)
}

/// The same, for kernels without bpf_task_pt_regs (before 5.15): the user
/// registers are the top of the task's kernel stack (task_pt_regs()).
#[kprobe]
pub fn one_entry_stack(ctx: ProbeContext) -> u32 {
    bump(stat::ONE_ENTRIES);
    let Some(cfg) = config() else { return 0 };
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() };
    let stack: u64 = read(task + cfg.task_stack as u64).unwrap_or(0);
    let regs = if stack != 0 { stack + cfg.stack_regs_offset as u64 } else { 0 };
    copy_up_entry(&ctx, cfg, regs)
}

/// The cause, from the system call this thread is in (`orig_ax` of its user
/// registers at `regs`) and the copy-up's open flags: see
/// overlay_agent_common::syscall. Kernel threads and io_uring workers have
/// zeroed user registers (call 0, read, not in the table).
#[inline(always)]
fn cause_now(cfg: &ProgramConfig, regs: u64, flags: u32) -> u8 {
    let mut entry = 0u8;
    if regs != 0 && read::<u64>(regs + cfg.regs_cs as u64) == Some(syscall::USER_CS) {
        let nr = read::<u64>(regs + cfg.regs_orig_ax as u64).unwrap_or(u64::MAX) & !syscall::X32_BIT;
        if nr < syscall::TABLE_SIZE as u64 {
            entry = SYSCALL_CAUSE.get(nr as u32).copied().unwrap_or(0);
        }
    }
    syscall::cause_of(entry, flags)
}

#[inline(always)]
fn copy_up_entry(ctx: &ProbeContext, cfg: &ProgramConfig, regs: u64) -> u32 {
    let t = tid();
    let dentry: u64 = ctx.arg(1).unwrap_or(0);
    // ovl_copy_up_flags, the only caller, passes the open flags down (0 for
    // setattr, xattr, link, rename, create and remove; O_WRONLY for truncate).
    let flags: u64 = ctx.arg(2).unwrap_or(0);
    let c = cause_now(cfg, regs, flags as u32);
    let sb: u64 = read(dentry + cfg.dentry_d_sb as u64).unwrap_or(0);
    let dev: u32 = if sb != 0 { read(sb + cfg.sb_s_dev as u64).unwrap_or(0) } else { 0 };
    let inode: u64 = read(dentry + cfg.dentry_d_inode as u64).unwrap_or(0);
    let mode: u16 = if inode != 0 { read(inode + cfg.inode_i_mode as u64).unwrap_or(0) } else { 0 };
    let upper: u64 = if inode != 0 { read(inode + cfg.ovl_inode_upper as u64).unwrap_or(0) } else { 0 };
    let v = Inflight {
        // SAFETY: helper without preconditions.
        start_ns: unsafe { bpf_ktime_get_ns() },
        dentry,
        dev,
        cause: c,
        is_dir: (mode & S_IFMT == S_IFDIR) as u8,
        had_upper: (upper != 0) as u8,
        active: 1,
        ..Default::default()
    };
    upsert!(INFLIGHT, &t, v, |p| *p = v);
    0
}

/// This thread's ovl_copy_up_one state while the call runs.
#[inline(always)]
fn active() -> Option<*mut Inflight> {
    // SAFETY: reading a flag of this thread's own entry.
    INFLIGHT.get_ptr_mut(&tid()).filter(|p| unsafe { (**p).active } != 0)
}

/// ovl_copy_up_file(ofs, dentry, new_file, len[, datasync]) 6.1+, or
/// ovl_copy_up_data(ofs, old, new, len) 5.x: the length position comes from BTF.
#[kprobe]
pub fn data_entry(ctx: ProbeContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let len = arg_at(&ctx, cfg.copy_len_arg).unwrap_or(0) as i64;
    // 5.x calls the data copy with len 0 for empty files and O_TRUNC opens, where
    // 6.x skips it: no data moves either way, so both count as metadata-only.
    if len <= 0 {
        return 0;
    }
    if let Some(p) = active() {
        // SAFETY: this thread's entry; LRU eviction cannot free it while we run.
        unsafe {
            (*p).copied_data = 1;
            (*p).data_bytes += len as u64;
        }
    }
    0
}

#[inline(always)]
fn kind_of(v: &Inflight) -> u8 {
    if v.is_dir != 0 {
        kind::DIRECTORY
    } else {
        match (v.copied_data != 0, v.had_upper != 0) {
            (true, false) => kind::DATA,
            (false, false) => kind::METADATA,
            (true, true) => kind::DEFERRED_DATA,
            (false, true) => kind::OTHER,
        }
    }
}

#[inline(always)]
fn add_count(key: &CountKey, copy_ups: u64, data_bytes: u64, latency_ns: u64, errors: u64) {
    let init = CountValue { copy_ups, data_bytes, errors, latency_ns };
    upsert!(COUNTS, key, init, |p| {
        (*p).copy_ups += copy_ups;
        (*p).data_bytes += data_bytes;
        (*p).latency_ns += latency_ns;
        (*p).errors += errors;
    });
}

/// One copy-up for the current thread's comm (the actor: a runtime chowning an
/// image, a package manager, the container's own program).
#[inline(always)]
fn add_process(data_bytes: u64) {
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    upsert!(PROCESSES, &comm, ProcessValue { copy_ups: 1, data_bytes }, |p| {
        (*p).copy_ups += 1;
        (*p).data_bytes += data_bytes;
    });
}

/// ovl_copy_up_end(dentry): the copy is done (or failed after it started).
#[kprobe]
pub fn end_entry(_ctx: ProbeContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let Some(p) = active() else { return 0 };
    // SAFETY: this thread's entry, copied out then marked.
    let v = unsafe {
        (*p).counted = 1;
        *p
    };
    let k = kind_of(&v);
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let latency = now.saturating_sub(v.start_ns);
    add_count(&CountKey { dev: v.dev, cause: v.cause, kind: k, _pad: [0; 2] }, 1, v.data_bytes, latency, 0);
    let hist_dev = if cfg.per_mount_histograms != 0 { v.dev } else { 0 };
    if v.copied_data != 0 {
        observe(hist_dev, v.cause, HIST_BYTES, v.data_bytes);
    }
    observe(hist_dev, v.cause, HIST_LATENCY, ns_to_latency_units(latency));
    add_process(v.data_bytes);
    if latency >= cfg.trace_min_latency_ns {
        trace(cfg, &v, k, now, latency);
    }
    0
}

/// Sends one slow copy-up to the TRACE ring buffer (`overlay-agent trace` only).
#[inline(always)]
fn trace(cfg: &ProgramConfig, v: &Inflight, k: u8, now: u64, latency: u64) {
    let Some(mut entry) = TRACE.reserve::<TraceEvent>(0) else {
        bump(stat::TRACE_DROPS);
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut ev = TraceEvent {
        end_ns: now,
        latency_ns: latency,
        data_bytes: v.data_bytes,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        dev: v.dev,
        cause: v.cause,
        kind: k,
        _pad: [0; 2],
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        name: [0; 64],
    };
    let name_ptr: u64 = read(v.dentry + cfg.dentry_name_ptr as u64).unwrap_or(0);
    if name_ptr != 0 {
        // SAFETY: bpf_probe_read_kernel_str_bytes checks the source address.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(name_ptr as *const u8, &mut ev.name) };
    }
    entry.write(ev);
    entry.submit(0);
}

#[kretprobe]
pub fn one_exit(ctx: RetProbeContext) -> u32 {
    bump(stat::ONE_RETURNS);
    let ret: i64 = ctx.ret::<i64>().unwrap_or(0) as i32 as i64;
    if let Some(p) = active() {
        // SAFETY: this thread's entry: copied out, then marked inactive.
        let v = unsafe {
            (*p).active = 0;
            *p
        };
        if ret < 0 && v.counted != 0 {
            add_count(&CountKey { dev: v.dev, cause: v.cause, kind: kind_of(&v), _pad: [0; 2] }, 0, 0, 0, 1);
        }
    }
    0
}
