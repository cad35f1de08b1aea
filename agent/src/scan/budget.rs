//! What scans may cost: a CPU budget shared by every scan thread, and the idle
//! scheduling classes the threads run in.
//!
//! The budget is a token bucket in CPU-seconds: it fills at `scan.max_cpu`
//! CPU-seconds per second (a share of one core) up to two seconds' worth, and a
//! walk charges it with the CPU time its thread used (user + system, from
//! `CLOCK_THREAD_CPUTIME_ID`) every few thousand entries. A charge that leaves the
//! bucket below zero sleeps until it is refilled, so a scan over budget is spread
//! out in time: intervals stretch, the rate never overruns (beyond the two-second
//! burst). The same accounting counts every scan's CPU time without a budget too.

use crate::sync::LockExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Seconds of budget the bucket holds at most: the longest burst above the rate.
const BURST_SECONDS: f64 = 2.0;

#[derive(Debug)]
struct Bucket {
    /// CPU-seconds that may be spent now (negative: owed).
    tokens: f64,
    last: Instant,
}

/// The scan threads' CPU budget and CPU accounting.
#[derive(Debug)]
pub struct Budget {
    /// CPU-seconds per second; `None`: unlimited.
    rate: Option<f64>,
    bucket: Mutex<Bucket>,
    cpu_ns: AtomicU64,
    throttled_ns: AtomicU64,
}

impl Budget {
    /// `max_cpu`: a share of one core (0.25 = a quarter of a core), or `None`.
    pub fn new(max_cpu: Option<f64>) -> Self {
        let rate = max_cpu.filter(|r| r.is_finite() && *r > 0.0);
        Budget {
            rate,
            bucket: Mutex::new(Bucket { tokens: rate.unwrap_or(0.0) * BURST_SECONDS, last: Instant::now() }),
            cpu_ns: AtomicU64::new(0),
            throttled_ns: AtomicU64::new(0),
        }
    }

    pub fn max_cpu(&self) -> Option<f64> {
        self.rate
    }

    /// CPU time used by scan threads so far.
    pub fn cpu(&self) -> Duration {
        Duration::from_nanos(self.cpu_ns.load(Ordering::Relaxed))
    }

    /// Time scan threads slept to stay within the budget.
    pub fn throttled(&self) -> Duration {
        Duration::from_nanos(self.throttled_ns.load(Ordering::Relaxed))
    }

    /// Counts `cpu` spent, and sleeps as long as the budget is overdrawn.
    pub fn charge(&self, cpu: Duration) {
        self.cpu_ns.fetch_add(u64::try_from(cpu.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        let Some(rate) = self.rate else { return };
        let wait = {
            let mut b = self.bucket.locked();
            let now = Instant::now();
            let refill = now.saturating_duration_since(b.last).as_secs_f64() * rate;
            b.last = now;
            b.tokens = (b.tokens + refill).min(rate * BURST_SECONDS) - cpu.as_secs_f64();
            if b.tokens < 0.0 {
                Duration::from_secs_f64(-b.tokens / rate)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
            self.throttled_ns
                .fetch_add(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
    }
}

/// Measures the calling thread's CPU time between charges of a [`Budget`].
#[derive(Debug)]
pub struct CpuMeter<'a> {
    budget: &'a Budget,
    last: Duration,
}

/// CPU time used by the calling thread so far.
pub(super) fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec.max(0) as u64, t.tv_nsec.clamp(0, 999_999_999) as u32)
}

impl<'a> CpuMeter<'a> {
    pub fn new(budget: &'a Budget) -> Self {
        CpuMeter { budget, last: thread_cpu() }
    }

    /// Charges the CPU time used since the last call (may sleep).
    pub fn charge(&mut self) {
        let now = thread_cpu();
        let used = now.saturating_sub(self.last);
        self.budget.charge(used);
        // The sleep costs no CPU, but the charge itself does: measure from here.
        self.last = thread_cpu().max(now);
    }
}

impl Drop for CpuMeter<'_> {
    fn drop(&mut self) {
        let used = thread_cpu().saturating_sub(self.last);
        self.budget.charge(used);
    }
}

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

    #[test]
    fn a_budget_stretches_work_to_its_rate() {
        // 0.5 core: burning 1.5 s of "CPU" (charged by hand) past the 1 s burst
        // must take about 1 s of sleep.
        let b = Budget::new(Some(0.5));
        let start = Instant::now();
        for _ in 0..15 {
            b.charge(Duration::from_millis(100));
        }
        let slept = b.throttled();
        assert!(slept >= Duration::from_millis(900), "slept {slept:?}");
        assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
        assert_eq!(b.cpu(), Duration::from_millis(1500));
        // Unlimited: never sleeps, still counts.
        let u = Budget::new(None);
        u.charge(Duration::from_secs(100));
        assert_eq!((u.throttled(), u.cpu()), (Duration::ZERO, Duration::from_secs(100)));
    }
}
