//! Mount table change notifications: the kernel flags POLLPRI on an open mountinfo
//! file whenever the mount namespace changes. A dedicated thread polls for it and
//! wakes the discovery loop; the loop also re-reads on a slow timer as a fallback
//! (for example on a fixture directory, where no notification ever comes).

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use tokio::sync::Notify;

/// Handle to the watcher thread; dropping it stops the thread within ~1 s.
pub struct MountWatcher {
    stop: Arc<AtomicBool>,
}

impl Drop for MountWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts watching `mountinfo`; `changed` is notified on each kernel change event.
pub fn spawn(mountinfo: &Path, changed: Arc<Notify>) -> std::io::Result<MountWatcher> {
    let file = File::open(mountinfo)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_thread = stop.clone();
    std::thread::Builder::new().name("mount-watch".into()).spawn(move || {
        let tick = Timespec::try_from(Duration::from_secs(1)).unwrap_or(Timespec { tv_sec: 1, tv_nsec: 0 });
        while !stop_thread.load(Ordering::Relaxed) {
            let mut fds = [PollFd::new(&file, PollFlags::PRI)];
            match poll(&mut fds, Some(&tick)) {
                Ok(n) if n > 0 && fds[0].revents().intersects(PollFlags::PRI | PollFlags::ERR) => {
                    changed.notify_one();
                }
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "mountinfo poll failed; relying on periodic resync");
                    return;
                }
            }
        }
    })?;
    Ok(MountWatcher { stop })
}
