//! How scan threads are scheduled (`scan.idle_priority`): the idle CPU and I/O
//! classes, which a thread can only set on itself.

/// How scan threads are scheduled, from `scan.idle_priority`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadPriority {
    pub idle: bool,
}

/// `IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT` (include/uapi/linux/ioprio.h).
const IOPRIO_IDLE: libc::c_int = 3 << 13;
/// `IOPRIO_WHO_PROCESS`: with id 0, the calling thread.
const IOPRIO_WHO_PROCESS: libc::c_int = 1;

/// Puts the calling thread in the idle CPU (`SCHED_IDLE`) and I/O (`IOPRIO_CLASS_IDLE`)
/// classes: it runs only when nothing else wants the CPU or the disk. Both are
/// allowed without privileges (they only lower priority). Returns what failed.
pub fn set_idle_priority() -> Result<(), String> {
    let mut failed = Vec::new();
    // SAFETY: sched_param is plain integers (musl adds sporadic-server fields); all
    // zero is priority 0, the only one SCHED_IDLE takes.
    let param: libc::sched_param = unsafe { std::mem::zeroed() };
    // SAFETY: plain syscalls on the calling thread (pid 0) with a valid param pointer.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        failed.push(format!("SCHED_IDLE: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: ioprio_set takes three integers; no memory is passed.
    if unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, IOPRIO_IDLE) } != 0 {
        failed.push(format!("idle I/O priority: {}", std::io::Error::last_os_error()));
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_priority_applies_to_the_calling_thread_only() {
        std::thread::spawn(|| {
            set_idle_priority().expect("lowering priority needs no privilege");
            // SAFETY: plain syscalls on the calling thread.
            let policy = unsafe { libc::sched_getscheduler(0) };
            assert_eq!(policy, libc::SCHED_IDLE);
            let io = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0) };
            assert_eq!(io as libc::c_int >> 13, 3, "idle I/O class");
        })
        .join()
        .expect("thread");
        // SAFETY: as above, on this thread, which was left alone.
        assert_ne!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_IDLE);
    }
}
