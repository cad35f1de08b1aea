//! What scans may cost: a CPU budget shared by every scan thread (the idle
//! scheduling classes they run in are `sched.rs`).
//!
//! The budget is a token bucket in CPU-seconds: it fills at `scan.max_cpu`
//! CPU-seconds per second (a share of one core) up to two seconds' worth, and a
//! walk charges it with the CPU time its thread used (user + system, from
//! `CLOCK_THREAD_CPUTIME_ID`) every few thousand entries. A charge that leaves the
//! bucket below zero sleeps until it is refilled, so a scan over budget is spread
//! out in time: intervals stretch, the rate never overruns (beyond the two-second
//! burst). The same accounting counts every scan's CPU time without a budget too.
//! The rate can change while scans run ([`Budget::set_max_cpu`], a config reload).

use super::cancel::Cancel;
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
    /// CPU-seconds per second, as `f64` bits; 0 (0.0): unlimited. Changed only
    /// with the bucket locked.
    rate: AtomicU64,
    bucket: Mutex<Bucket>,
    cpu_ns: AtomicU64,
    throttled_ns: AtomicU64,
}

/// A usable rate: finite and positive, else unlimited.
fn valid_rate(max_cpu: Option<f64>) -> Option<f64> {
    max_cpu.filter(|r| r.is_finite() && *r > 0.0)
}

impl Budget {
    /// `max_cpu`: a share of one core (0.25 = a quarter of a core), or `None`.
    pub fn new(max_cpu: Option<f64>) -> Self {
        let rate = valid_rate(max_cpu);
        Budget {
            rate: AtomicU64::new(rate.unwrap_or(0.0).to_bits()),
            bucket: Mutex::new(Bucket { tokens: rate.unwrap_or(0.0) * BURST_SECONDS, last: Instant::now() }),
            cpu_ns: AtomicU64::new(0),
            throttled_ns: AtomicU64::new(0),
        }
    }

    pub fn max_cpu(&self) -> Option<f64> {
        valid_rate(Some(f64::from_bits(self.rate.load(Ordering::Relaxed))))
    }

    /// Changes the rate from now on (`scan.max_cpu` reloaded); `None`: unlimited.
    /// What was earned at the old rate is kept, up to the new bucket's size; a
    /// budget that was unlimited starts full, as a new one does. A thread asleep
    /// for an overdraft finishes its sleep.
    pub fn set_max_cpu(&self, max_cpu: Option<f64>) {
        let new = valid_rate(max_cpu);
        let mut b = self.bucket.locked();
        let now = Instant::now();
        let old = self.max_cpu();
        if let Some(old) = old {
            let refill = now.saturating_duration_since(b.last).as_secs_f64() * old;
            b.tokens = (b.tokens + refill).min(old * BURST_SECONDS);
        }
        b.last = now;
        match (old, new) {
            (None, Some(rate)) => b.tokens = rate * BURST_SECONDS,
            (Some(_), Some(rate)) => b.tokens = b.tokens.min(rate * BURST_SECONDS),
            (_, None) => b.tokens = 0.0,
        }
        self.rate.store(new.unwrap_or(0.0).to_bits(), Ordering::Relaxed);
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
        self.charge_or_wake(cpu, None);
    }

    /// As [`Budget::charge`], but a stop on `cancel` ends the sleep early.
    pub fn charge_or_wake(&self, cpu: Duration, cancel: Option<&Cancel>) {
        self.cpu_ns.fetch_add(u64::try_from(cpu.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        if self.max_cpu().is_none() {
            return;
        }
        let wait = {
            let mut b = self.bucket.locked();
            // Read again under the lock: a reload may have changed it meanwhile.
            let Some(rate) = self.max_cpu() else { return };
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
            let slept = match cancel {
                Some(c) => c.sleep(wait),
                None => {
                    std::thread::sleep(wait);
                    wait
                }
            };
            self.throttled_ns
                .fetch_add(u64::try_from(slept.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
    }
}

/// Measures the calling thread's CPU time between charges of a [`Budget`].
#[derive(Debug)]
pub struct CpuMeter<'a> {
    budget: &'a Budget,
    last: Duration,
    /// Ends a sleep for the budget early (a scan asked to stop).
    cancel: Option<&'a Cancel>,
}

/// CPU time used by the calling thread so far.
pub(super) fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec.max(0) as u64, t.tv_nsec.clamp(0, 999_999_999) as u32)
}

impl<'a> CpuMeter<'a> {
    pub fn new(budget: &'a Budget) -> Self {
        CpuMeter { budget, last: thread_cpu(), cancel: None }
    }

    /// A meter whose sleeps end early when the scan's `cancel` token stops it.
    pub fn with_cancel(budget: &'a Budget, cancel: Option<&'a Cancel>) -> Self {
        CpuMeter { budget, last: thread_cpu(), cancel }
    }

    /// Charges the CPU time used since the last call (may sleep).
    pub fn charge(&mut self) {
        let now = thread_cpu();
        let used = now.saturating_sub(self.last);
        self.budget.charge_or_wake(used, self.cancel);
        // The sleep costs no CPU, but the charge itself does: measure from here.
        self.last = thread_cpu().max(now);
    }
}

impl Drop for CpuMeter<'_> {
    fn drop(&mut self) {
        let used = thread_cpu().saturating_sub(self.last);
        self.budget.charge_or_wake(used, self.cancel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_budget_follows_a_new_max_cpu() {
        let b = Budget::new(None);
        b.charge(Duration::from_secs(100));
        assert_eq!(b.throttled(), Duration::ZERO, "unlimited");
        // Limited from now on: a full bucket (1 s at 0.5 core), then sleeps.
        b.set_max_cpu(Some(0.5));
        assert_eq!(b.max_cpu(), Some(0.5));
        b.charge(Duration::from_millis(1000));
        assert_eq!(b.throttled(), Duration::ZERO, "the burst");
        b.charge(Duration::from_millis(100));
        let slept = b.throttled();
        assert!(slept >= Duration::from_millis(150), "slept {slept:?}");
        // A higher rate: the next overdraft costs less sleep.
        b.set_max_cpu(Some(4.0));
        assert_eq!(b.max_cpu(), Some(4.0));
        b.charge(Duration::from_millis(400));
        let more = b.throttled() - slept;
        assert!(more <= Duration::from_millis(150), "slept {more:?} more at 4 cores");
        // Unlimited again, and values the config would never pass: unlimited.
        for off in [None, Some(0.0), Some(-1.0), Some(f64::NAN), Some(f64::INFINITY)] {
            b.set_max_cpu(Some(1.0));
            b.set_max_cpu(off);
            assert_eq!(b.max_cpu(), None, "{off:?}");
        }
        let before = b.throttled();
        b.charge(Duration::from_secs(100));
        assert_eq!(b.throttled(), before, "unlimited again");
        assert_eq!(b.cpu(), Duration::from_millis(201_500), "counted all along");
    }
}
