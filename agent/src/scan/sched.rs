//! How scan threads are scheduled (`scan.idle_priority`): the idle CPU and I/O
//! classes, which a thread can only set on itself, and the shared setting the
//! scan threads follow when a reload changes it ([`IdleSetting`], [`Follower`]).

use std::sync::atomic::{AtomicU64, Ordering};

/// How scan threads are scheduled, from `scan.idle_priority`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadPriority {
    pub idle: bool,
}

/// `IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT` (include/uapi/linux/ioprio.h).
const IOPRIO_IDLE: libc::c_int = 3 << 13;
/// `IOPRIO_CLASS_NONE`: no class of its own, I/O priority from the CPU nice value.
const IOPRIO_NONE: libc::c_int = 0;
/// `IOPRIO_WHO_PROCESS`: with id 0, the calling thread.
const IOPRIO_WHO_PROCESS: libc::c_int = 1;

/// Puts the calling thread in the idle CPU (`SCHED_IDLE`) and I/O (`IOPRIO_CLASS_IDLE`)
/// classes: it runs only when nothing else wants the CPU or the disk. Both are
/// allowed without privileges (they only lower priority). Returns what failed.
pub fn set_idle_priority() -> Result<(), String> {
    set_classes(Classes { policy: libc::SCHED_IDLE, priority: 0, ioprio: IOPRIO_IDLE })
}

/// Puts the calling thread back in the default classes (`SCHED_OTHER` at its nice
/// value, `IOPRIO_CLASS_NONE`). Leaving `SCHED_IDLE` needs `CAP_SYS_NICE`, or an
/// `RLIMIT_NICE` that allows the thread's nice value (the kernel counts
/// `SCHED_IDLE` as nice 20). Returns what failed.
pub fn set_normal_priority() -> Result<(), String> {
    set_classes(Classes::DEFAULT)
}

/// A thread's CPU policy (with its static priority) and I/O priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Classes {
    policy: libc::c_int,
    priority: libc::c_int,
    ioprio: libc::c_int,
}

impl Classes {
    const DEFAULT: Classes = Classes { policy: libc::SCHED_OTHER, priority: 0, ioprio: IOPRIO_NONE };

    /// The calling thread's, `None` if they cannot be read.
    fn current() -> Option<Classes> {
        // SAFETY: sched_param is plain integers (musl adds sporadic-server fields).
        let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
        // SAFETY: plain syscalls on the calling thread (pid 0) with a valid param pointer.
        let policy = unsafe { libc::sched_getscheduler(0) };
        // SAFETY: as above.
        let got = unsafe { libc::sched_getparam(0, &mut param) };
        // SAFETY: ioprio_get takes two integers; no memory is passed.
        let ioprio = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0) };
        let ioprio = libc::c_int::try_from(ioprio).ok().filter(|p| *p >= 0)?;
        (policy >= 0 && got == 0).then_some(Classes { policy, priority: param.sched_priority, ioprio })
    }
}

/// Sets the calling thread's classes; returns what failed.
fn set_classes(c: Classes) -> Result<(), String> {
    let mut failed = Vec::new();
    // SAFETY: sched_param is plain integers (musl adds sporadic-server fields); all
    // zero is priority 0, the only one SCHED_IDLE and SCHED_OTHER take.
    let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
    param.sched_priority = c.priority;
    // SAFETY: plain syscalls on the calling thread (pid 0) with a valid param pointer.
    if unsafe { libc::sched_setscheduler(0, c.policy, &param) } != 0 {
        let name = if c.policy == libc::SCHED_IDLE { "SCHED_IDLE" } else { "normal CPU priority" };
        failed.push(format!("{name}: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: ioprio_set takes three integers; no memory is passed.
    if unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, c.ioprio) } != 0 {
        let name = if c.ioprio == IOPRIO_IDLE { "idle I/O priority" } else { "normal I/O priority" };
        failed.push(format!("{name}: {}", std::io::Error::last_os_error()));
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

/// `scan.idle_priority` as the scan threads should have it now. Each thread applies
/// it to itself ([`Follower`]) before its next piece of work: a change made while
/// the threads run (a reload) gets a new generation number, which they notice.
#[derive(Debug)]
pub struct IdleSetting {
    /// Generation << 1 | idle.
    state: AtomicU64,
}

impl IdleSetting {
    pub fn new(idle: bool) -> Self {
        IdleSetting { state: AtomicU64::new(u64::from(idle)) }
    }

    pub fn idle(&self) -> bool {
        self.load().1
    }

    /// Changes the setting, for every scan thread at its next piece of work; true
    /// when it changed (the same value again is no change).
    pub fn set(&self, idle: bool) -> bool {
        let next = |s: u64| ((s & 1 == 1) != idle).then_some((((s >> 1) + 1) << 1) | u64::from(idle));
        self.state.fetch_update(Ordering::SeqCst, Ordering::SeqCst, next).is_ok()
    }

    /// The generation and the setting.
    fn load(&self) -> (u64, bool) {
        let s = self.state.load(Ordering::SeqCst);
        (s >> 1, s & 1 == 1)
    }
}

/// One thread's side of an [`IdleSetting`]: the generation it applied last, and
/// the classes it started in (what turning the setting off goes back to).
#[derive(Debug, Default)]
pub struct Follower {
    seen: Option<u64>,
    started_in: Option<Classes>,
}

impl Follower {
    /// Applies the setting to the calling thread if it changed since this thread
    /// last looked; at the first call, only an idle setting (a thread starts in its
    /// process's classes). Returns the setting applied (true: idle) and how that
    /// went, `None` when there was nothing to do. A failure is not tried again
    /// until the setting changes.
    pub fn follow(&mut self, setting: &IdleSetting) -> Option<(bool, Result<(), String>)> {
        if self.seen.is_none() {
            self.started_in = Classes::current();
        }
        let back = self.started_in.unwrap_or(Classes::DEFAULT);
        self.follow_with(setting, |idle| if idle { set_idle_priority() } else { set_classes(back) })
    }

    fn follow_with(
        &mut self,
        setting: &IdleSetting,
        apply: impl FnOnce(bool) -> Result<(), String>,
    ) -> Option<(bool, Result<(), String>)> {
        let (generation, idle) = setting.load();
        let first = self.seen.is_none();
        if self.seen.replace(generation) == Some(generation) || (first && !idle) {
            return None;
        }
        Some((idle, apply(idle)))
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

    /// A thread applies the setting once per change: at start only an idle one,
    /// then every change, and nothing for the same value set again.
    #[test]
    fn a_thread_applies_each_change_of_the_setting_once() {
        let setting = IdleSetting::new(false);
        let mut f = Follower::default();
        let applied = std::cell::RefCell::new(Vec::new());
        let step = |f: &mut Follower, setting: &IdleSetting| {
            f.follow_with(setting, |idle| {
                applied.borrow_mut().push(idle);
                Ok(())
            })
            .map(|(idle, _)| idle)
        };
        assert_eq!(step(&mut f, &setting), None, "starts normal: nothing to do");
        assert!(!setting.set(false), "the same value is no change");
        assert_eq!(step(&mut f, &setting), None);
        assert!(setting.set(true));
        assert!(setting.idle());
        assert_eq!(step(&mut f, &setting), Some(true));
        assert_eq!(step(&mut f, &setting), None, "once per change");
        assert!(setting.set(false));
        assert_eq!(step(&mut f, &setting), Some(false));
        // A thread started while the setting is idle goes idle at once.
        let mut late = Follower::default();
        assert!(setting.set(true));
        assert_eq!(step(&mut late, &setting), Some(true));
        // Failures are reported, and not retried until the next change.
        let mut failing = Follower::default();
        let r = failing.follow_with(&setting, |_| Err("EPERM".to_owned()));
        assert_eq!(r, Some((true, Err("EPERM".to_owned()))));
        assert_eq!(failing.follow_with(&setting, |_| Ok(())), None);
        assert_eq!(*applied.borrow(), [true, false, true]);
    }

    /// On a real thread: idle, then back to the classes it started in, where the
    /// kernel lets it (leaving SCHED_IDLE needs CAP_SYS_NICE or RLIMIT_NICE).
    #[test]
    fn a_thread_goes_idle_and_back_to_where_it_started() {
        std::thread::spawn(|| {
            let setting = IdleSetting::new(false);
            let mut f = Follower::default();
            assert!(f.follow(&setting).is_none());
            let start = Classes::current().expect("classes");
            setting.set(true);
            assert_eq!(f.follow(&setting), Some((true, Ok(()))));
            // SAFETY: plain syscall on the calling thread.
            assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_IDLE);
            setting.set(false);
            match f.follow(&setting) {
                Some((false, Ok(()))) => {
                    let now = Classes::current().expect("classes");
                    assert_eq!((now.policy, now.priority), (start.policy, start.priority));
                    assert_ne!(now.ioprio >> 13, 3, "not the idle I/O class");
                }
                Some((false, Err(e))) => assert!(e.contains("normal CPU priority"), "{e}"),
                other => panic!("{other:?}"),
            }
        })
        .join()
        .expect("thread");
    }
}
