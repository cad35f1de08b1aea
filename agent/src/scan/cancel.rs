//! Stopping a scan from outside: the pool stops the scan of an upper dir whose
//! mount left the mount table (queued or running), after every read of the table.
//! A walk looks at its token at every entry (an atomic load) and sleeps on it when
//! over budget, so it stops within microseconds of the request and closes what it
//! holds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::sync::LockExt;

/// The token of one scan job.
#[derive(Debug, Default)]
pub struct Cancel {
    stopped: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Cancel {
    /// Asks the scan to stop, and wakes it if it sleeps.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        // Taking the lock orders this with a sleeper's check of the flag.
        drop(self.lock.locked());
        self.wake.notify_all();
    }

    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Sleeps up to `d`, less if asked to stop; returns how long it slept.
    pub fn sleep(&self, d: Duration) -> Duration {
        let start = Instant::now();
        let guard = self.lock.locked();
        let waited = self.wake.wait_timeout_while(guard, d, |_| !self.stopped.load(Ordering::SeqCst));
        drop(waited);
        start.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn stop_wakes_a_sleeper_and_stays() {
        let c = Arc::new(Cancel::default());
        assert!(!c.stopped());
        let sleeper = {
            let c = c.clone();
            std::thread::spawn(move || c.sleep(Duration::from_secs(30)))
        };
        std::thread::sleep(Duration::from_millis(50));
        c.stop();
        let slept = sleeper.join().expect("sleeper");
        assert!(slept < Duration::from_secs(5), "woken by stop: {slept:?}");
        assert!(c.stopped());
        assert!(c.sleep(Duration::from_secs(30)) < Duration::from_secs(1), "no sleep once stopped");
    }
}
