//! `uring MERGED`: copy-ups issued through io_uring, with a minimal io_uring of
//! its own (raw system calls: one submission at a time), enough to issue openat
//! and renameat the way an io_uring program does.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::files::cpath;

const SETUP: libc::c_long = 425;
const ENTER: libc::c_long = 426;
const OP_OPENAT: u8 = 18;
const OP_RENAMEAT: u8 = 35;

#[repr(C)]
#[derive(Default)]
struct Params {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    sq_thread_cpu: u32,
    sq_thread_idle: u32,
    features: u32,
    wq_fd: u32,
    resv: [u32; 3],
    // io_sqring_offsets
    sq_head: u32,
    sq_tail: u32,
    sq_ring_mask: u32,
    sq_ring_entries: u32,
    sq_flags: u32,
    sq_dropped: u32,
    sq_array: u32,
    sq_resv1: u32,
    sq_user_addr: u64,
    // io_cqring_offsets
    cq_head: u32,
    cq_tail: u32,
    cq_ring_mask: u32,
    cq_ring_entries: u32,
    cq_overflow: u32,
    cq_cqes: u32,
    cq_flags: u32,
    cq_resv1: u32,
    cq_user_addr: u64,
}

/// struct io_uring_sqe (64 bytes), the fields openat and renameat use.
#[repr(C)]
#[derive(Default)]
struct Sqe {
    pub opcode: u8,
    pub flags: u8,
    pub ioprio: u16,
    pub fd: i32,
    pub off_or_addr2: u64,
    pub addr: u64,
    pub len: u32,
    pub op_flags: u32,
    pub user_data: u64,
    pub pad: [u64; 3],
}

fn map(fd: i32, len: usize, off: i64) -> std::io::Result<*mut u8> {
    // SAFETY: a shared mapping of the ring fd at a documented offset.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd,
            off,
        )
    };
    if p == libc::MAP_FAILED {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(p as *mut u8)
    }
}

/// Submits one SQE on a fresh ring, waits for it, returns its result.
fn run_one(sqe: Sqe) -> std::io::Result<i32> {
    let mut p = Params::default();
    // SAFETY: io_uring_setup with a valid params struct.
    let fd = unsafe { libc::syscall(SETUP, 1u32, &mut p as *mut Params) } as i32;
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let sq_len = p.sq_array as usize + p.sq_entries as usize * 4;
    let cq_len = p.cq_cqes as usize + p.cq_entries as usize * 16;
    let sq = map(fd, sq_len, 0)?;
    let cq = map(fd, cq_len, 0x800_0000)?;
    let sqes = map(fd, p.sq_entries as usize * 64, 0x1000_0000)?;
    // SAFETY: offsets within the mappings the kernel described.
    unsafe {
        std::ptr::write(sqes as *mut Sqe, sqe);
        let tail = &*(sq.add(p.sq_tail as usize) as *const AtomicU32);
        let mask = *(sq.add(p.sq_ring_mask as usize) as *const u32);
        let t = tail.load(Ordering::Acquire);
        *(sq.add(p.sq_array as usize + ((t & mask) as usize) * 4) as *mut u32) = 0;
        tail.store(t + 1, Ordering::Release);
        let rc = libc::syscall(ENTER, fd, 1u32, 1u32, 1u32, std::ptr::null::<u8>(), 0usize);
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let head = &*(cq.add(p.cq_head as usize) as *const AtomicU32);
        let cmask = *(cq.add(p.cq_ring_mask as usize) as *const u32);
        let h = head.load(Ordering::Acquire);
        let cqe = cq.add(p.cq_cqes as usize + ((h & cmask) as usize) * 16);
        let res = *(cqe.add(8) as *const i32);
        head.store(h + 1, Ordering::Release);
        libc::close(fd);
        Ok(res)
    }
}

/// `uring MERGED`: an io_uring openat for write of a lower file (16,000 bytes:
/// cause open, from the copy-up's flags) and an io_uring renameat of another
/// (17,000 bytes, 5.11+: cause other, no system call says rename).
pub fn uring_ops(m: &Path) {
    let path = cpath(&m.join("uring.dat"));
    let sqe = Sqe {
        opcode: OP_OPENAT,
        fd: libc::AT_FDCWD,
        addr: path.as_ptr() as u64,
        op_flags: libc::O_WRONLY as u32,
        ..Default::default()
    };
    match run_one(sqe) {
        Ok(fd) if fd >= 0 => {
            // SAFETY: the fd io_uring opened for us.
            unsafe { libc::close(fd) };
            println!("workload: io_uring openat: ok");
        }
        other => {
            println!("workload: io_uring openat: FAILED: {other:?}");
            std::process::exit(1);
        }
    }
    let (from, to) = (cpath(&m.join("uring-mv.dat")), cpath(&m.join("uring-moved.dat")));
    let sqe = Sqe {
        opcode: OP_RENAMEAT,
        fd: libc::AT_FDCWD,
        addr: from.as_ptr() as u64,
        len: libc::AT_FDCWD as u32,
        off_or_addr2: to.as_ptr() as u64,
        ..Default::default()
    };
    match run_one(sqe) {
        Ok(0) => println!("workload: io_uring renameat: ok"),
        Ok(e) if e == -libc::EINVAL => println!("workload: io_uring renameat: unsupported"),
        other => {
            println!("workload: io_uring renameat: FAILED: {other:?}");
            std::process::exit(1);
        }
    }
}
