//! Struct member offsets and function argument positions from the running
//! kernel's BTF: /sys/kernel/btf/vmlinux, and the overlay module's split BTF
//! (/sys/kernel/btf/overlay) where the kernel provides it. Nothing here is tuned to
//! one kernel's layout.

use std::path::Path;

use btf_rs::{Btf, Type};

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read BTF from {path}: {message}")]
    Read { path: String, message: String },
    #[error("BTF has no {what}")]
    Missing { what: String },
}

/// Kernel BTF: vmlinux, plus the overlay module's when present.
pub struct KernelBtf {
    vmlinux: Btf,
    overlay: Option<Btf>,
}

impl KernelBtf {
    /// Loads `<dir>/vmlinux` and, if present, `<dir>/overlay` (normally /sys/kernel/btf).
    pub fn load(dir: &Path) -> Result<KernelBtf, BtfError> {
        let vmlinux_path = dir.join("vmlinux");
        // Mmap: a handful of lookups at start-up do not need all of vmlinux's
        // BTF parsed in memory (that peaks at ~70 MiB). Kernels before ~6.15 refuse
        // to mmap the sysfs file (ENODEV): parse it there.
        let read_error = |e: btf_rs::Error| BtfError::Read {
            path: vmlinux_path.display().to_string(),
            message: e.to_string(),
        };
        let vmlinux = match Btf::from_file_with_backend(&vmlinux_path, btf_rs::Backend::Mmap) {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(error = %e, "cannot mmap vmlinux BTF; parsing it");
                Btf::from_file(&vmlinux_path).map_err(read_error)?
            }
        };
        let overlay_path = dir.join("overlay");
        let overlay = if overlay_path.exists() {
            match Btf::from_split_file(&overlay_path, &vmlinux) {
                Ok(b) => Some(b),
                Err(e) => {
                    tracing::warn!(path = %overlay_path.display(), error = %e, "cannot read overlay module BTF");
                    None
                }
            }
        } else {
            None
        };
        Ok(KernelBtf { vmlinux, overlay })
    }

    pub fn has_overlay_btf(&self) -> bool {
        self.overlay.is_some()
    }

    /// Byte offset of `member` in `struct name` (searching anonymous unions and structs).
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let missing = || BtfError::Missing { what: format!("struct {name} member {member}") };
        let types = self.vmlinux.resolve_types_by_name(name).map_err(|_| missing())?;
        for t in types {
            if let Type::Struct(s) = t {
                if let Some(bits) = find_member(&self.vmlinux, &s, member, 0) {
                    return Ok(bits / 8);
                }
            }
        }
        Err(missing())
    }

    /// Byte offset of `member` in the overlay module's `struct name` (its split
    /// BTF, else vmlinux's when overlay is built in).
    pub fn module_member_offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let missing = || BtfError::Missing { what: format!("struct {name} member {member}") };
        let btf = self.overlay.as_ref().unwrap_or(&self.vmlinux);
        let types = btf.resolve_types_by_name(name).map_err(|_| missing())?;
        for t in types {
            if let Type::Struct(s) = t {
                if let Some(bits) = find_member(btf, &s, member, 0) {
                    return Ok(bits / 8);
                }
            }
        }
        Err(missing())
    }

    /// The value of `variant` in the overlay module's `enum name` (its split
    /// BTF, else vmlinux's when overlay is built in).
    pub fn module_enum_value(&self, name: &str, variant: &str) -> Result<u32, BtfError> {
        let missing = || BtfError::Missing { what: format!("enum {name} value {variant}") };
        let btf = self.overlay.as_ref().unwrap_or(&self.vmlinux);
        let types = btf.resolve_types_by_name(name).map_err(|_| missing())?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Enum(e) => e
                    .members
                    .iter()
                    .find(|m| btf.resolve_name(*m).is_ok_and(|n| n == variant))
                    .map(|m| m.val()),
                _ => None,
            })
            .ok_or_else(missing)
    }

    /// Whether `struct name` has `member` (vmlinux).
    pub fn has_member(&self, name: &str, member: &str) -> bool {
        self.member_offset(name, member).is_ok()
    }

    /// Parameter names of function `func`: from the overlay module's BTF, else
    /// vmlinux's (overlay built in). None when no BTF describes the function.
    pub fn params(&self, func: &str) -> Option<Vec<String>> {
        let sources = self.overlay.iter().chain(std::iter::once(&self.vmlinux));
        for btf in sources {
            let Ok(types) = btf.resolve_types_by_name(func) else { continue };
            for t in types {
                let Type::Func(f) = t else { continue };
                let Ok(Type::FuncProto(proto)) = btf.resolve_chained_type(&f) else { continue };
                return Some(
                    proto.parameters.iter().map(|p| btf.resolve_name(p).unwrap_or_default()).collect(),
                );
            }
        }
        None
    }

    /// 0-based position of the parameter `param` of function `func` (see `params`).
    pub fn param_index(&self, func: &str, param: &str) -> Option<usize> {
        self.params(func)?.iter().position(|n| n == param)
    }

    /// Size in bytes of `struct name`.
    pub fn struct_size(&self, name: &str) -> Result<u32, BtfError> {
        let missing = || BtfError::Missing { what: format!("struct {name}") };
        let types = self.vmlinux.resolve_types_by_name(name).map_err(|_| missing())?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) => Some(s.size() as u32),
                _ => None,
            })
            .ok_or_else(missing)
    }
}

fn find_member(btf: &Btf, s: &btf_rs::Struct, member: &str, base_bits: u32) -> Option<u32> {
    for m in &s.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == member {
            return Some(base_bits + m.bit_offset());
        }
        if name.is_empty() {
            // Anonymous union or struct: look inside.
            let mut t = btf.resolve_chained_type(m).ok()?;
            loop {
                match t {
                    Type::Struct(inner) | Type::Union(inner) => {
                        if let Some(off) = find_member(btf, &inner, member, base_bits + m.bit_offset()) {
                            return Some(off);
                        }
                        break;
                    }
                    Type::Typedef(_) | Type::Const(_) | Type::Volatile(_) => {
                        let Some(bt) = t.as_btf_type() else { break };
                        t = btf.resolve_chained_type(bt).ok()?;
                    }
                    _ => break,
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host's own vmlinux BTF: offsets exist and are plausible. Overlay's
    /// prototypes are checked against each booted kernel's BTF by the QEMU suite
    /// (kernel::hooks::check, run in the guests), not against the host's.
    #[test]
    fn host_vmlinux_offsets() {
        let btf = KernelBtf::load(Path::new("/sys/kernel/btf")).expect("host BTF (/sys/kernel/btf/vmlinux)");
        let d_sb = btf.member_offset("dentry", "d_sb").expect("dentry.d_sb");
        let d_inode = btf.member_offset("dentry", "d_inode").expect("dentry.d_inode");
        let s_dev = btf.member_offset("super_block", "s_dev").expect("super_block.s_dev");
        let i_mode = btf.member_offset("inode", "i_mode").expect("inode.i_mode");
        assert!(d_sb > 0 && d_sb < 256 && d_inode < 256 && d_sb != d_inode, "{d_sb} {d_inode}");
        assert!(s_dev < 64, "s_dev {s_dev}");
        assert_eq!(i_mode, 0, "i_mode leads struct inode");
        assert!(btf.member_offset("dentry", "no_such_member").is_err());
        assert!(btf.struct_size("no_such_struct").is_err());
        assert_eq!(btf.params("vfs_fsync"), Some(vec!["file".to_string(), "datasync".to_string()]));
    }

    /// The host's pt_regs as the x86_64 ptrace ABI lays it out (the system call
    /// number the programs read).
    #[test]
    #[cfg_attr(not(target_arch = "x86_64"), ignore = "pt_regs is laid out as on x86_64 only there")]
    fn host_pt_regs_is_x86_64s() {
        let btf = KernelBtf::load(Path::new("/sys/kernel/btf")).expect("host BTF (/sys/kernel/btf/vmlinux)");
        assert_eq!(
            btf.member_offset("pt_regs", "orig_ax").expect("pt_regs.orig_ax"),
            120,
            "x86_64 ptrace ABI"
        );
        assert_eq!(btf.struct_size("pt_regs").expect("pt_regs"), 168);
    }
}
