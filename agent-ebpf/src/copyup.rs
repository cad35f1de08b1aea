//! The copy-up core: three programs per copy-up. One copy-up = one
//! ovl_copy_up_one call in which ovl_copy_up_end ran (ovl_copy_up_end runs
//! exactly when ovl_copy_up_start returned 0, i.e. this thread copied; a
//! thread that found the copy done does not count). Counting happens at
//! ovl_copy_up_end, an entry probe that is never missed; no return probe.
//!
//! Kind: a directory, else by whether the entry had an upper dentry at entry
//! (then ovl_copy_up_one skips the full copy: only a deferred data copy or a
//! link-up runs) and whether the data copy (F) ran: no upper + F data, no
//! upper alone metadata, upper + F deferred_data, upper alone other.
//!
//! Errors, from the overlay inode at ovl_copy_up_end, which follows each
//! outcome: a full copy that succeeded sets OVL_UPPERDATA, unless it was
//! metadata-only (metacopy), and installs the upper dentry in any case; a
//! deferred data copy that succeeded sets OVL_UPPERDATA. So: with an upper at
//! entry, an error is a data copy asked for (open flags for write) without
//! OVL_UPPERDATA after; without one, an error is no OVL_UPPERDATA after, where
//! the copy could not have been metadata-only (not a regular file, data
//! copied, or opened for write), else no upper dentry after. A failed link-up
//! (index=on hard links) is not seen.

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes,
};
use aya_ebpf::macros::kprobe;
use aya_ebpf::programs::ProbeContext;
use overlay_agent_common::noop::{Attrs, S_IFDIR, S_IFMT};
use overlay_agent_common::{
    bucket, kind, ns_to_latency_units, stat, state, syscall::cause_of, CountKey, CountValue, HistKey,
    Inflight, TraceEvent, HIST_BYTES, HIST_LATENCY, THREAD_SLOTS,
};

use crate::aggregate::{add_count, add_process, observe};
use crate::maps::{SETTINGS, SPILL, THREADS, TRACE};
use crate::syscall::{entry, is_noop, BtfTask, StackTask, Task};
use crate::util::{arg_at, bump, conf, read, tid, Window};

const S_IFREG: u16 = 0o100000;
/// O_WRONLY | O_RDWR | O_TRUNC: open flags that need the data (ovl_open_flags_need_copy_up).
const NEEDS_DATA: u32 = 0o1 | 0o2 | 0o1000;

/// ovl_copy_up_one(parent, dentry, flags): stable from 4.19 to 7.2. Reads the
/// entry's inode, mount and upper dentry, and the start time.
#[kprobe]
pub fn one_entry(ctx: ProbeContext) -> u32 {
    bump(stat::ONE_ENTRIES);
    let t = tid();
    let dentry: u64 = ctx.arg(1).unwrap_or(0);
    // ovl_copy_up_flags, the only caller, passes the open flags down (0 for
    // setattr, xattr, link, rename, create and remove; O_WRONLY for truncate).
    let flags: u64 = ctx.arg(2).unwrap_or(0);
    let (inode, sb) = inode_and_sb(dentry);
    let dev: u32 = if sb != 0 { read(sb + conf!(sb_s_dev) as u64).unwrap_or(0) } else { 0 };
    let upper: u64 = if inode != 0 { read(inode + conf!(ovl_upper) as u64).unwrap_or(0) } else { 0 };
    let v = Inflight {
        // SAFETY: helper without preconditions.
        start_ns: unsafe { bpf_ktime_get_ns() },
        inode,
        data_bytes: 0,
        dev,
        tid: t,
        flags: flags as u32,
        state: state::ACTIVE | if upper != 0 { state::HAD_UPPER } else { 0 },
    };
    let Some(slot) = THREADS.get_ptr_mut(t & (THREAD_SLOTS - 1)) else { return 0 };
    // SAFETY: the slot of this thread id's low bits; only the thread that
    // holds it (its tid) writes it while it is active.
    unsafe {
        if (*slot).tid == t || (*slot).state & state::ACTIVE == 0 {
            *slot = v;
            return 0;
        }
    }
    bump(stat::SPILLS);
    if SPILL.insert(&t, &v, 0).is_err() {
        bump(stat::MAP_FULL);
    }
    0
}

/// dentry->d_inode and dentry->d_sb: one read when they are close.
#[inline(always)]
fn inode_and_sb(dentry: u64) -> (u64, u64) {
    let (i, s) = (conf!(dentry_d_inode), conf!(dentry_d_sb));
    let lo = if i < s { i } else { s };
    let hi = if i < s { s } else { i };
    if hi - lo <= 56 {
        match Window::read(dentry + lo as u64, hi - lo + 8) {
            Some(w) => (w.u64_at(i - lo), w.u64_at(s - lo)),
            None => (0, 0),
        }
    } else {
        (read(dentry + i as u64).unwrap_or(0), read(dentry + s as u64).unwrap_or(0))
    }
}

/// This thread's ovl_copy_up_one state while the call runs.
#[inline(always)]
fn active() -> Option<*mut Inflight> {
    let t = tid();
    let slot = THREADS.get_ptr_mut(t & (THREAD_SLOTS - 1))?;
    // SAFETY: reading the tag and state of the slot.
    unsafe {
        if (*slot).tid == t {
            return ((*slot).state & state::ACTIVE != 0).then_some(slot);
        }
    }
    // SAFETY: as above, of the spill entry.
    SPILL.get_ptr_mut(&t).filter(|p| unsafe { (**p).state } & state::ACTIVE != 0)
}

/// ovl_copy_up_file(ofs, dentry, new_file, len[, datasync]) 6.1+, or
/// ovl_copy_up_data(ofs, old, new, len) 5.x: the length position comes from BTF.
#[kprobe]
pub fn data_entry(ctx: ProbeContext) -> u32 {
    let len = arg_at(&ctx, conf!(copy_len_arg)).unwrap_or(0) as i64;
    // 5.x calls the data copy with len 0 for empty files and O_TRUNC opens, where
    // 6.x skips it: no data moves either way, so both count as metadata-only.
    if len <= 0 {
        return 0;
    }
    if let Some(p) = active() {
        // SAFETY: this thread's state.
        unsafe {
            (*p).state |= state::COPIED_DATA;
            (*p).data_bytes += len as u64;
        }
    }
    0
}

/// ovl_copy_up_end(dentry), 5.15+: the registers and the task through BTF pointers.
#[kprobe]
pub fn end_entry(ctx: ProbeContext) -> u32 {
    copy_up_end(&ctx, &BtfTask::current())
}

/// The same before 5.15: the registers at the top of the task's kernel stack.
#[kprobe]
pub fn end_entry_stack(ctx: ProbeContext) -> u32 {
    copy_up_end(&ctx, &StackTask::current())
}

/// The copy-up is over (or failed after it started): counted here, once.
#[inline(always)]
fn copy_up_end<T: Task>(ctx: &ProbeContext, task: &T) -> u32 {
    let Some(p) = active() else { return 0 };
    // SAFETY: this thread's state, copied out then released.
    let v = unsafe {
        (*p).state &= !state::ACTIVE;
        *p
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let latency = now.saturating_sub(v.start_ns);
    let (attrs, upperdata) = inode_state(v.inode);
    let copied = v.state & state::COPIED_DATA != 0;
    let k = kind_of(&v, &attrs);
    let failed = failed(&v, &attrs, upperdata);
    let e = entry(task);
    let cause = cause_of(e, v.flags);
    let noop = e != 0 && !failed && is_noop(task, e, attrs, v.inode);
    let value = CountValue {
        copy_ups: 1,
        data_bytes: v.data_bytes,
        errors: failed as u64,
        latency_ns: latency,
        noop: noop as u64,
    };
    add_count(CountKey { dev: v.dev, cause, kind: k, _pad: [0; 2] }, &value);
    let per_mount = SETTINGS.get(0).is_some_and(|s| *s != 0);
    let hist_dev = if per_mount { v.dev } else { 0 };
    if copied {
        observe(HistKey { dev: hist_dev, cause, hist: HIST_BYTES, bucket: bucket(v.data_bytes) });
    }
    let lat = bucket(ns_to_latency_units(latency));
    observe(HistKey { dev: hist_dev, cause, hist: HIST_LATENCY, bucket: lat });
    add_process(&task.comm(), v.data_bytes);
    if latency >= conf!(trace_min_latency_ns) {
        trace(ctx.arg(0).unwrap_or(0), &v, cause, k, noop, now, latency);
    }
    0
}

/// The overlay inode's mode, owner and group, and its OVL_UPPERDATA flag, in
/// one read: ovl_inode.flags sits just before the VFS inode.
#[inline(always)]
fn inode_state(inode: u64) -> (Attrs, bool) {
    let back = conf!(ovl_flags_back);
    let (m, u, g) = (conf!(inode_i_mode), conf!(inode_i_uid), conf!(inode_i_gid));
    let hi = if m > u { m } else { u };
    let hi = if hi > g { hi } else { g };
    match Window::read(inode.wrapping_sub(back as u64), back + hi + 4) {
        Some(w) => {
            let attrs = Attrs { mode: w.u16_at(back + m), uid: w.u32_at(back + u), gid: w.u32_at(back + g) };
            (attrs, w.u64_at(0) >> conf!(upperdata_bit) & 1 != 0)
        }
        None => (Attrs::default(), true),
    }
}

#[inline(always)]
fn kind_of(v: &Inflight, a: &Attrs) -> u8 {
    if a.mode & S_IFMT == S_IFDIR {
        return kind::DIRECTORY;
    }
    match (v.state & state::COPIED_DATA != 0, v.state & state::HAD_UPPER != 0) {
        (true, false) => kind::DATA,
        (false, false) => kind::METADATA,
        (true, true) => kind::DEFERRED_DATA,
        (false, true) => kind::OTHER,
    }
}

/// Whether the copy-up failed (the module comment has the rule).
#[inline(always)]
fn failed(v: &Inflight, a: &Attrs, upperdata: bool) -> bool {
    let wants_data = v.flags & NEEDS_DATA != 0;
    if v.state & state::HAD_UPPER != 0 {
        return wants_data && !upperdata;
    }
    if upperdata {
        return false;
    }
    let could_be_metacopy = a.mode & S_IFMT == S_IFREG && v.state & state::COPIED_DATA == 0 && !wants_data;
    if !could_be_metacopy {
        return true;
    }
    read::<u64>(v.inode + conf!(ovl_upper) as u64).unwrap_or(1) == 0
}

/// Sends one slow copy-up to the TRACE ring buffer (`overlay-agent trace` only;
/// the daemon's config sends none, and the verifier drops this code there).
#[inline(always)]
fn trace(dentry: u64, v: &Inflight, cause: u8, k: u8, noop: bool, now: u64, latency: u64) {
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
        cause,
        kind: k,
        noop: noop as u8,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        name: [0; 64],
    };
    let name_ptr: u64 = read(dentry + conf!(dentry_name_ptr) as u64).unwrap_or(0);
    if name_ptr != 0 {
        // SAFETY: bpf_probe_read_kernel_str_bytes checks the source address.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(name_ptr as *const u8, &mut ev.name) };
    }
    entry.write(ev);
    entry.submit(0);
}
