//! Cause hooks: the overlayfs operations that copy up, each setting the calling
//! thread's cause on entry and clearing it on return. A nested hook (say
//! ovl_create_or_link under ovl_link) overwrites the cause while it runs; the
//! outer hook's copy-ups happen before the call, so each keeps its own cause.
//!
//! Open for write has no hook: ovl_open runs for every open, so instead a copy-up
//! with open flags (ovl_copy_up_one's `flags`) and no other cause is an open.

use aya_ebpf::macros::{kprobe, kretprobe};
use aya_ebpf::programs::{ProbeContext, RetProbeContext};
use overlay_agent_common::{cause, owner, setattr_cause, ThreadCause};

use crate::maps::THREAD_CAUSE;
use crate::util::{arg_at, config, read, tid};

/// Sets this thread's cause, reusing its entry in place when there is one (an
/// update is much cheaper than an LRU insert plus a delete per operation).
#[inline(always)]
fn set(c: u8, o: u8) -> u32 {
    let t = tid();
    match THREAD_CAUSE.get_ptr_mut(&t) {
        // SAFETY: this thread's own entry; only this thread writes it.
        Some(p) => unsafe {
            (*p).cause = c;
            (*p).owner = o;
        },
        None => {
            let _ = THREAD_CAUSE.insert(&t, &ThreadCause { cause: c, owner: o, _pad: [0; 6] }, 0);
        }
    }
    0
}

/// Clears this thread's cause if `o` set it (a nested hook may have replaced it).
#[inline(always)]
fn clear(o: u8) -> u32 {
    if let Some(p) = THREAD_CAUSE.get_ptr_mut(&tid()) {
        // SAFETY: as above.
        unsafe {
            if (*p).owner == o {
                (*p).owner = 0;
            }
        }
    }
    0
}

/// ovl_setattr(dentry, iattr) <= 5.11; (userns|idmap, dentry, iattr) 5.12+.
/// The iattr position comes from BTF (Config::setattr_iattr_arg).
#[kprobe]
pub fn setattr_entry(ctx: ProbeContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let Some(iattr) = arg_at(&ctx, cfg.setattr_iattr_arg) else { return 0 };
    // ia_valid is the first member of struct iattr in every kernel.
    let Some(ia_valid) = read::<u32>(iattr) else { return 0 };
    set(setattr_cause(ia_valid), owner::SETATTR)
}

#[kretprobe]
pub fn setattr_exit(_ctx: RetProbeContext) -> u32 {
    clear(owner::SETATTR)
}

/// ovl_xattr_set, ovl_set_acl (6.2+), ovl_fileattr_set (5.13+).
#[kprobe]
pub fn xattr_entry(_ctx: ProbeContext) -> u32 {
    set(cause::XATTR, owner::XATTR)
}

#[kretprobe]
pub fn xattr_exit(_ctx: RetProbeContext) -> u32 {
    clear(owner::XATTR)
}

/// ovl_link(old, dir, new).
#[kprobe]
pub fn link_entry(_ctx: ProbeContext) -> u32 {
    set(cause::LINK, owner::LINK)
}

#[kretprobe]
pub fn link_exit(_ctx: RetProbeContext) -> u32 {
    clear(owner::LINK)
}

/// ovl_rename(...).
#[kprobe]
pub fn rename_entry(_ctx: ProbeContext) -> u32 {
    set(cause::RENAME, owner::RENAME)
}

#[kretprobe]
pub fn rename_exit(_ctx: RetProbeContext) -> u32 {
    clear(owner::RENAME)
}

/// ovl_create_object (6.x) or ovl_create_or_link (older), ovl_tmpfile.
#[kprobe]
pub fn create_entry(_ctx: ProbeContext) -> u32 {
    set(cause::CREATE, owner::CREATE)
}

#[kretprobe]
pub fn create_exit(_ctx: RetProbeContext) -> u32 {
    clear(owner::CREATE)
}

/// ovl_do_remove(dentry, is_dir): unlink and rmdir.
#[kprobe]
pub fn remove_entry(_ctx: ProbeContext) -> u32 {
    set(cause::REMOVE, owner::REMOVE)
}

#[kretprobe]
pub fn remove_exit(_ctx: RetProbeContext) -> u32 {
    clear(owner::REMOVE)
}
