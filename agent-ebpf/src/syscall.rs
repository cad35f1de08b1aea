//! The system call the copying thread is in, read at copy-up time from its
//! saved user registers: the cause of the copy-up, and whether a chown, chmod
//! or utimes sets what the file already has (overlay_agent_common::noop has
//! the rules). Nothing runs on overlay operations that copy nothing up.
//!
//! Two ways to the registers and the task: on 5.15+ through pointers the
//! verifier knows by their BTF type (bpf_get_current_task_btf,
//! bpf_task_pt_regs), read with plain loads; before, the registers at the top
//! of the task's kernel stack and helper reads. Which register holds what is
//! the agent's config (overlay_agent_common::syscall::Abi, offsets from BTF).

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_task, bpf_get_current_task_btf, bpf_task_pt_regs,
};
use overlay_agent_common::noop::{self, Attrs};
use overlay_agent_common::syscall::{self, entry_arg, entry_sets, entry_time_format};
use overlay_agent_common::ProcessKey;

use crate::maps::SYSCALL_CAUSE;
use crate::util::{conf, load_u32, load_u64, read, Window};

/// The copying task, as one of the two ways reads it.
pub trait Task {
    /// The 8 bytes at `off` in the user registers.
    fn reg(&self, off: u32) -> u64;
    /// The 4 bytes at `off` in the user registers (aarch64's s32 `syscallno`:
    /// the verifier refuses a wider load of it through the BTF pointer).
    #[cfg_attr(not(bpf_target_arch = "aarch64"), allow(dead_code))]
    fn reg32(&self, off: u32) -> u32;
    /// The user namespace of the task's credentials (real_cred: overlayfs
    /// runs the copy-up with the mounter's).
    fn user_ns(&self) -> u64;
    fn ns_u32(&self, ns: u64, off: u32) -> u32;
    /// The id map at `off` in user namespace `ns`: nr_extents and 5 extents.
    fn id_map(&self, ns: u64, off: u32) -> (u32, [u32; 15]);
    fn comm(&self) -> ProcessKey;
}

/// 5.15+: plain loads through BTF pointers.
pub struct BtfTask {
    task: u64,
    regs: u64,
}

impl BtfTask {
    #[inline(always)]
    pub fn current() -> BtfTask {
        // SAFETY: helpers without preconditions; the task pointer is the
        // current task's, which the verifier knows by its BTF type.
        unsafe {
            let task = bpf_get_current_task_btf();
            BtfTask { task: task as u64, regs: bpf_task_pt_regs(task) as u64 }
        }
    }
}

impl Task for BtfTask {
    #[inline(always)]
    fn reg(&self, off: u32) -> u64 {
        load_u64(self.regs, off)
    }

    #[inline(always)]
    fn reg32(&self, off: u32) -> u32 {
        load_u32(self.regs, off)
    }

    #[inline(always)]
    fn user_ns(&self) -> u64 {
        load_u64(load_u64(self.task, conf!(task_real_cred)), conf!(cred_user_ns))
    }

    #[inline(always)]
    fn ns_u32(&self, ns: u64, off: u32) -> u32 {
        load_u32(ns, off)
    }

    #[inline(always)]
    fn id_map(&self, ns: u64, off: u32) -> (u32, [u32; 15]) {
        let ext = off + conf!(idmap_extent);
        let e: [u32; 15] = core::array::from_fn(|k| load_u32(ns, ext + 4 * k as u32));
        (load_u32(ns, off), e)
    }

    #[inline(always)]
    fn comm(&self) -> ProcessKey {
        let (lo, hi) = (load_u64(self.task, conf!(task_comm)), load_u64(self.task, conf!(task_comm) + 8));
        let mut c = [0u8; 16];
        c[..8].copy_from_slice(&lo.to_le_bytes());
        c[8..].copy_from_slice(&hi.to_le_bytes());
        c
    }
}

/// Before 5.15: the user registers at the top of the task's kernel stack
/// (task_pt_regs()), everything by helper reads.
pub struct StackTask {
    task: u64,
    regs: u64,
}

impl StackTask {
    #[inline(always)]
    pub fn current() -> StackTask {
        // SAFETY: helper without preconditions.
        let task = unsafe { bpf_get_current_task() };
        let stack: u64 = read(task + conf!(task_stack) as u64).unwrap_or(0);
        let regs = if stack != 0 { stack + conf!(stack_regs_offset) as u64 } else { 0 };
        StackTask { task, regs }
    }
}

impl Task for StackTask {
    #[inline(always)]
    fn reg(&self, off: u32) -> u64 {
        if self.regs == 0 {
            return 0;
        }
        read(self.regs + off as u64).unwrap_or(0)
    }

    #[inline(always)]
    fn reg32(&self, off: u32) -> u32 {
        if self.regs == 0 {
            return 0;
        }
        read(self.regs + off as u64).unwrap_or(0)
    }

    #[inline(always)]
    fn user_ns(&self) -> u64 {
        let cred: u64 = read(self.task + conf!(task_real_cred) as u64).unwrap_or(0);
        if cred == 0 {
            return 0;
        }
        read(cred + conf!(cred_user_ns) as u64).unwrap_or(0)
    }

    #[inline(always)]
    fn ns_u32(&self, ns: u64, off: u32) -> u32 {
        read(ns + off as u64).unwrap_or(u32::MAX)
    }

    #[inline(always)]
    fn id_map(&self, ns: u64, off: u32) -> (u32, [u32; 15]) {
        let nr: u32 = read(ns + off as u64).unwrap_or(u32::MAX);
        let e: [u32; 15] = read(ns + (off + conf!(idmap_extent)) as u64).unwrap_or([0; 15]);
        (nr, e)
    }

    #[inline(always)]
    fn comm(&self) -> ProcessKey {
        bpf_get_current_comm().unwrap_or([0; 16])
    }
}

/// The bits of the native-caller register compared with `native_value`: all
/// of x86_64's `cs`; the mode bits (PSR_MODE_MASK) of aarch64's `pstate`, whose
/// condition flags change with every compare (overlay_agent_common::syscall::AARCH64).
#[cfg(not(bpf_target_arch = "aarch64"))]
const NATIVE_MASK: u64 = u64::MAX;
#[cfg(bpf_target_arch = "aarch64")]
const NATIVE_MASK: u64 = 0x1f;

/// The encoded table entry of the call the thread is in (0: none of the
/// table's, a kernel thread (zeroed registers), a 32-bit caller).
#[inline(always)]
pub fn entry<T: Task>(t: &T) -> u16 {
    if t.reg(conf!(regs_native)) & NATIVE_MASK != conf!(native_value) {
        return 0;
    }
    #[cfg(not(bpf_target_arch = "aarch64"))]
    let nr = t.reg(conf!(regs_nr)) & !conf!(nr_mask_off);
    // An s32: NO_SYSCALL (-1) reads as 0xffffffff, beyond the table.
    #[cfg(bpf_target_arch = "aarch64")]
    let nr = t.reg32(conf!(regs_nr)) as u64;
    if nr >= syscall::TABLE_SIZE as u64 {
        return 0;
    }
    SYSCALL_CAUSE.get(nr as u32).copied().unwrap_or(0)
}

/// System call argument `i` (a run-time value from the table, each offset a
/// config constant).
#[inline(always)]
fn arg<T: Task>(t: &T, i: u32) -> u64 {
    let off = match i {
        0 => conf!(regs_args[0]),
        1 => conf!(regs_args[1]),
        2 => conf!(regs_args[2]),
        3 => conf!(regs_args[3]),
        4 => conf!(regs_args[4]),
        _ => conf!(regs_args[5]),
    };
    t.reg(off)
}

/// Whether the call of `entry` sets what the file has (`now`, and for utimes
/// the overlay inode at `inode`).
#[inline(always)]
pub fn is_noop<T: Task>(t: &T, entry: u16, now: Attrs, inode: u64) -> bool {
    let a = entry_arg(entry);
    match entry_sets(entry) {
        syscall::SETS_OWNER => {
            let (uid, gid) = (noop::chown_id(arg(t, a)), noop::chown_id(arg(t, a + 1)));
            let (uid, gid) =
                if uid.is_none() && gid.is_none() { (None, None) } else { to_kernel_ids(t, uid, gid) };
            if uid == Some(u32::MAX) || gid == Some(u32::MAX) {
                return false; // unmapped: not decided
            }
            noop::owner_unchanged(uid, gid, now)
        }
        syscall::SETS_MODE => noop::mode_unchanged(arg(t, a) as u32, now),
        syscall::SETS_TIMES => times_noop(arg(t, a), entry_time_format(entry), inode),
        _ => false,
    }
}

/// The requested ids as kernel ids (make_kuid in the caller's user namespace);
/// u32::MAX for an id the programs cannot map.
#[inline(always)]
fn to_kernel_ids<T: Task>(t: &T, uid: Option<u32>, gid: Option<u32>) -> (Option<u32>, Option<u32>) {
    let ns = t.user_ns();
    if ns == 0 {
        return (uid.map(|_| u32::MAX), gid.map(|_| u32::MAX));
    }
    if t.ns_u32(ns, conf!(userns_level)) == 0 {
        return (uid, gid); // init_user_ns: the identity
    }
    (map_kernel_id(t, ns, uid, conf!(userns_uid_map)), map_kernel_id(t, ns, gid, conf!(userns_gid_map)))
}

/// One requested id through the namespace's id map. A plain function, not a
/// closure: LLVM kept the closure as a BPF subprogram, and its stack frame on
/// top of the caller's broke the verifier's 512-byte limit for the pair.
#[inline(always)]
fn map_kernel_id<T: Task>(t: &T, ns: u64, id: Option<u32>, off: u32) -> Option<u32> {
    let id = id?;
    let (nr, e) = t.id_map(ns, off);
    Some(noop::map_id(nr, &e, id).unwrap_or(u32::MAX))
}

/// utimes: the two requested times from user memory against the inode's.
#[inline(always)]
fn times_noop(ptr: u64, format: u16, inode: u64) -> bool {
    if ptr == 0 {
        return false; // NULL: set to the current time
    }
    let mut w = [0u64; 4];
    let len = if format == syscall::TimeFormat::Utimbuf as u16 { 16 } else { 32 };
    // SAFETY: the helper checks the user address and writes at most 32 bytes.
    let rc = unsafe {
        aya_ebpf::helpers::r#gen::bpf_probe_read_user(w.as_mut_ptr() as *mut _, len, ptr as *const _)
    };
    if rc != 0 {
        return false;
    }
    let req = noop::requested_times(format, w);
    let [a_sec, a_nsec, m_sec, m_nsec] = conf!(inode_times);
    let lo = min4(a_sec, a_nsec, m_sec, m_nsec);
    let Some(win) = Window::read(inode + lo as u64, max4(a_sec, a_nsec, m_sec, m_nsec) + 8 - lo) else {
        return false;
    };
    let now = [
        (win.u64_at(a_sec - lo) as i64, win.u32_at(a_nsec - lo)),
        (win.u64_at(m_sec - lo) as i64, win.u32_at(m_nsec - lo)),
    ];
    noop::times_unchanged(req, now)
}

#[inline(always)]
fn min4(a: u32, b: u32, c: u32, d: u32) -> u32 {
    let ab = if a < b { a } else { b };
    let cd = if c < d { c } else { d };
    if ab < cd {
        ab
    } else {
        cd
    }
}

#[inline(always)]
fn max4(a: u32, b: u32, c: u32, d: u32) -> u32 {
    let ab = if a > b { a } else { b };
    let cd = if c > d { c } else { d };
    if ab > cd {
        ab
    } else {
        cd
    }
}
