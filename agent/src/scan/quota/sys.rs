//! The raw kernel calls of quota mode, and nothing else: the `FS_IOC_FSGETXATTR` /
//! `FS_IOC_FSSETXATTR` ioctls on one fd, `quotactl_fd` and `quotactl` with
//! `Q_GETQUOTA` on `PRJQUOTA`, their opcodes and their raw structs. Every other file
//! of quota mode goes through these; only `assign.rs` may call [`set_fsx`].

use std::ffi::CStr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use linux_raw_sys::general::fsxattr;
use rustix::io::Errno;
use rustix::ioctl::{opcode, Getter, Opcode, Setter};

/// `FS_IOC_FSGETXATTR` / `FS_IOC_FSSETXATTR`: `_IOR('X', 31, struct fsxattr)`,
/// `_IOW('X', 32, struct fsxattr)` (include/uapi/linux/fs.h).
const FSGETXATTR: Opcode = opcode::read::<fsxattr>(b'X', 31);
const FSSETXATTR: Opcode = opcode::write::<fsxattr>(b'X', 32);
/// include/uapi/linux/quota.h; the libc crate has only USRQUOTA and GRPQUOTA.
const PRJQUOTA: libc::c_int = 2;

/// Opens a directory without following a last symlink, beneath a detached clone
/// of its mount where it can (`scan::reach`): quota mode never pins a mount either.
pub(super) fn open_dir(path: &Path) -> Result<OwnedFd, Errno> {
    crate::scan::reach::open_dir(path, false)
}

pub(super) fn get_fsx(fd: BorrowedFd<'_>) -> Result<fsxattr, Errno> {
    // SAFETY: FS_IOC_FSGETXATTR writes one struct fsxattr, the Getter's output type.
    unsafe { rustix::ioctl::ioctl(fd, Getter::<FSGETXATTR, fsxattr>::new()) }
}

/// Writes to the user's filesystem: for `assign.rs` only.
pub(super) fn set_fsx(fd: BorrowedFd<'_>, x: fsxattr) -> Result<(), Errno> {
    // SAFETY: FS_IOC_FSSETXATTR reads one struct fsxattr, the Setter's input type.
    unsafe { rustix::ioctl::ioctl(fd, Setter::<FSSETXATTR, fsxattr>::new(x)) }
}

/// `quotactl_fd(2)`: libc has its syscall number but no wrapper.
pub(super) fn quotactl_fd(fd: BorrowedFd<'_>, id: u32, out: &mut libc::dqblk) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let cmd = libc::QCMD(libc::Q_GETQUOTA, PRJQUOTA);
    // SAFETY: quotactl_fd(fd, cmd, id, addr) with Q_GETQUOTA writes one struct if_dqblk
    // (libc::dqblk) at addr.
    let r = unsafe {
        libc::syscall(libc::SYS_quotactl_fd, fd.as_raw_fd(), cmd as libc::c_uint, id, out as *mut libc::dqblk)
    };
    if r < 0 {
        Err(Errno::from_raw_os_error(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)))
    } else {
        Ok(())
    }
}

pub(super) fn quotactl_dev(dev: &CStr, id: u32, out: &mut libc::dqblk) -> Result<(), Errno> {
    let cmd = libc::QCMD(libc::Q_GETQUOTA, PRJQUOTA);
    // SAFETY: dev is a NUL-terminated path; Q_GETQUOTA writes one struct if_dqblk.
    let r = unsafe { libc::quotactl(cmd, dev.as_ptr(), id as libc::c_int, (out as *mut libc::dqblk).cast()) };
    if r < 0 {
        Err(Errno::from_raw_os_error(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)))
    } else {
        Ok(())
    }
}

pub(super) fn empty_dqblk() -> libc::dqblk {
    libc::dqblk {
        dqb_bhardlimit: 0,
        dqb_bsoftlimit: 0,
        dqb_curspace: 0,
        dqb_ihardlimit: 0,
        dqb_isoftlimit: 0,
        dqb_curinodes: 0,
        dqb_btime: 0,
        dqb_itime: 0,
        dqb_valid: 0,
    }
}
