//! The programs' config: every offset they read, from the running kernel's
//! BTF and the table in kernel::hooks, the arch's system-call registers
//! (overlay_agent_common::syscall::Abi), and the agent's choices. Given to the
//! programs at load as a frozen global: the verifier sees constants.

use overlay_agent_common::syscall::Abi;
use overlay_agent_common::ProgramConfig;

use super::{plan, ProbeOptions};
use crate::kernel::btf::KernelBtf;
use crate::kernel::hooks::{self, Group, MODULE_ENUMS};
use crate::kernel::symbols::Symbols;

/// x86_64 THREAD_SIZE: 16 KiB, 32 KiB with KASAN (arch/x86/include/asm/page_64_types.h).
fn thread_size(symbols: &Symbols) -> u32 {
    if symbols.kasan {
        32 << 10
    } else {
        16 << 10
    }
}

/// Where the upper dentry and the flags sit from the overlay inode's address:
/// from the module's BTF, else (5.10) right after and right before the VFS
/// inode, as in every fs/overlayfs/ovl_entry.h from 4.19 to 7.2 (the QEMU suite
/// checks that layout on the kernels with module BTF).
fn ovl_inode(btf: &KernelBtf) -> Result<(u32, u32), String> {
    let vfs = btf.module_member_offset("ovl_inode", "vfs_inode");
    let upper = match (&vfs, btf.module_member_offset("ovl_inode", "__upperdentry")) {
        (Ok(vfs), Ok(upper)) if upper > *vfs => upper - vfs,
        _ => btf.struct_size("inode").map_err(|e| e.to_string())?.next_multiple_of(8),
    };
    let back = match (&vfs, btf.module_member_offset("ovl_inode", "flags")) {
        (Ok(vfs), Ok(flags)) if flags < *vfs => vfs - flags,
        _ => 8,
    };
    Ok((upper, back))
}

/// Offsets of the arch's user-register members: the call number, the native
/// test and the six arguments.
fn registers(btf: &KernelBtf, abi: &Abi) -> Result<(u32, u32, [u32; 6]), String> {
    let off = |m: &str| btf.member_offset("pt_regs", m).map_err(|e| e.to_string());
    let mut args = [0u32; 6];
    for (i, (member, index)) in abi.args.iter().enumerate() {
        args[i] = off(member)? + 8 * index;
    }
    Ok((off(abi.nr)?, off(abi.native.0)?, args))
}

/// Computes the config. Errors name what is missing.
pub(super) fn program_config(
    btf: &KernelBtf,
    symbols: &Symbols,
    version: (u32, u32),
    opts: &ProbeOptions,
) -> Result<ProgramConfig, String> {
    let off = |s: &str, m: &str| btf.member_offset(s, m).map_err(|e| e.to_string());
    // The length's position: from the module's BTF where the kernel has it,
    // else from the table's prototype for this kernel (5.10 has no module BTF).
    let copy_len_arg = match plan::chosen(symbols, Group::DataCopy) {
        Some(f) => btf
            .param_index(f, "len")
            .or_else(|| hooks::find(f)?.param_index("len", version))
            .ok_or_else(|| format!("no parameter len of {f} on {version:?}"))? as u32,
        None => 0,
    };
    let abi = overlay_agent_common::syscall::NATIVE
        .ok_or_else(|| format!("no system-call table for {}", std::env::consts::ARCH))?;
    let (regs_nr, regs_native, regs_args) = registers(btf, abi)?;
    let regs_size = btf.struct_size("pt_regs").map_err(|e| e.to_string())?;
    let (ovl_upper, ovl_flags_back) = ovl_inode(btf)?;
    let (e, v, fallback) = MODULE_ENUMS[0];
    let upperdata_bit = btf.module_enum_value(e, v).unwrap_or(fallback);
    Ok(ProgramConfig {
        dentry_d_inode: off("dentry", "d_inode")?,
        dentry_d_sb: off("dentry", "d_sb")?,
        dentry_name_ptr: off("dentry", "d_name")? + off("qstr", "name")?,
        sb_s_dev: off("super_block", "s_dev")?,
        inode_i_mode: off("inode", "i_mode")?,
        inode_i_uid: off("inode", "i_uid")?,
        inode_i_gid: off("inode", "i_gid")?,
        inode_times: hooks::inode_times(btf).map_err(|e| e.to_string())?,
        ovl_upper,
        ovl_flags_back,
        upperdata_bit,
        copy_len_arg,
        task_stack: off("task_struct", "stack")?,
        // Before 5.15 (the only kernels that use it) x86_64 has no padding above
        // the registers (TOP_OF_KERNEL_STACK_PADDING is 0 until FRED, 6.9).
        stack_regs_offset: thread_size(symbols).saturating_sub(regs_size),
        regs_nr,
        regs_native,
        regs_args,
        task_real_cred: off("task_struct", "real_cred")?,
        task_comm: off("task_struct", "comm")?,
        cred_user_ns: off("cred", "user_ns")?,
        userns_level: off("user_namespace", "level")?,
        userns_uid_map: off("user_namespace", "uid_map")?,
        userns_gid_map: off("user_namespace", "gid_map")?,
        idmap_extent: off("uid_gid_map", "extent")?,
        _pad: 0,
        native_value: abi.native.1,
        nr_mask_off: abi.nr_mask_off,
        trace_min_latency_ns: opts
            .trace_min_latency
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(u64::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the host's kernel (its vmlinux BTF; overlay built in or absent), every
    /// vmlinux offset resolves, and the windows the programs read fit.
    #[test]
    #[cfg_attr(not(target_arch = "x86_64"), ignore = "the system-call table is x86_64's")]
    fn the_hosts_btf_gives_a_whole_config() {
        let btf = KernelBtf::load(std::path::Path::new("/sys/kernel/btf")).expect("host BTF");
        let symbols = Symbols::parse("0 t ovl_copy_up_one\n0 t ovl_copy_up_end\n0 t ovl_copy_up_file\n");
        let cfg = program_config(&btf, &symbols, (6, 18), &ProbeOptions::default()).expect("config");
        assert_eq!((cfg.regs_nr, cfg.regs_args[0], cfg.regs_args[3]), (120, 112, 56), "orig_ax, di, r10");
        assert_eq!(cfg.trace_min_latency_ns, u64::MAX);
        assert_eq!(cfg.inode_i_mode, 0);
        assert!(cfg.inode_i_uid == 4 && cfg.inode_i_gid == 8, "{cfg:?}");
        assert!(cfg.dentry_d_inode.abs_diff(cfg.dentry_d_sb) <= 56, "one window: {cfg:?}");
        let [a, _, m, _] = cfg.inode_times;
        assert!(a > 0 && m > a, "{:?}", cfg.inode_times);
    }
}
