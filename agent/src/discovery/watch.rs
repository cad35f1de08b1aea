//! Mount table change notifications, in every mount namespace the census found.
//!
//! The kernel flags POLLPRI on an open mountinfo file whenever its namespace's
//! mount table changes (a mount, an unmount, a propagated one). One thread
//! epolls the reference namespace's mountinfo and one per other namespace,
//! and marks what changed for the discovery loop.
//!
//! An open mountinfo keeps its namespace alive, and every mount in it: held
//! after the namespace's last process exits, it would keep a container's
//! overlay mounted. So each namespace's file is held with a pidfd of the
//! process it was opened through: when that process exits, both are closed at
//! once, and the discovery loop takes a census (another process of the same
//! namespace takes over, or the namespace has ended). pidfds need Linux 5.3;
//! without them no other namespace is watched ([`Mechanism::Poll`]: the daemon
//! re-reads every namespace at each census instead).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::event::{epoll, eventfd, EventfdFlags, Timespec};
use tokio::sync::Notify;

use super::namespaces::{ns_of, MountNs, NsId};
use crate::sync::LockExt;

/// How changes in namespaces other than the reference are seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// POLLPRI on each namespace's mountinfo, released by a pidfd.
    Notify,
    /// No pidfd (before Linux 5.3): namespaces are re-read at each census.
    Poll,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Notify => "notify",
            Mechanism::Poll => "poll",
        }
    }
}

/// What changed since the last [`MountWatcher::take`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Changes {
    /// The reference namespace's table.
    pub reference: bool,
    /// Other namespaces' tables.
    pub namespaces: BTreeSet<NsId>,
    /// A process a namespace was watched through exited: take a census.
    pub exited: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        !self.reference && self.namespaces.is_empty() && !self.exited
    }
}

#[derive(Default)]
struct Shared {
    changes: Mutex<Changes>,
    wanted: Mutex<Option<BTreeMap<NsId, i32>>>,
    stop: AtomicBool,
    /// Namespaces watched now (besides the reference).
    watched: std::sync::atomic::AtomicUsize,
}

/// Handle to the watcher thread; dropping it stops the thread.
pub struct MountWatcher {
    shared: Arc<Shared>,
    wake: Arc<OwnedFd>,
    mechanism: Mechanism,
}

impl Drop for MountWatcher {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
    }
}

impl MountWatcher {
    /// The namespaces to watch besides the reference (by the process to open
    /// them through); the thread opens new ones and closes the others.
    pub fn watch(&self, namespaces: impl IntoIterator<Item = MountNs>) {
        if self.mechanism == Mechanism::Poll {
            return;
        }
        *self.shared.wanted.locked() = Some(namespaces.into_iter().map(|n| (n.id, n.pid)).collect());
        let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
    }

    /// What changed since the last call.
    pub fn take(&self) -> Changes {
        std::mem::take(&mut *self.shared.changes.locked())
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Namespaces watched now, besides the reference.
    pub fn watched(&self) -> usize {
        self.shared.watched.load(Ordering::Relaxed)
    }
}

/// Starts watching `reference` (the reference namespace's mountinfo) and, once
/// told by [`MountWatcher::watch`], other namespaces under `procfs`; `changed`
/// is notified on each change.
pub fn spawn(procfs: &Path, reference: &Path, changed: Arc<Notify>) -> std::io::Result<MountWatcher> {
    let file = File::open(reference)?;
    let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    let wake = Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?);
    epoll::add(&epoll, &*wake, epoll::EventData::new_u64(WAKE), epoll::EventFlags::IN)?;
    epoll::add(&epoll, &file, epoll::EventData::new_u64(REFERENCE), epoll::EventFlags::PRI)?;
    let mechanism = match rustix::process::pidfd_open(
        rustix::process::getpid(),
        rustix::process::PidfdFlags::empty(),
    ) {
        Ok(_) => Mechanism::Notify,
        Err(e) => {
            tracing::warn!(error = %e, "no pidfd (Linux 5.3+): mount namespaces are re-read at each census instead of on change");
            Mechanism::Poll
        }
    };
    let shared = Arc::new(Shared::default());
    let mut thread = Thread {
        procfs: procfs.to_owned(),
        epoll,
        wake: wake.clone(),
        shared: shared.clone(),
        changed,
        slots: Vec::new(),
        _reference: file,
    };
    std::thread::Builder::new().name("mount-watch".into()).spawn(move || thread.run())?;
    Ok(MountWatcher { shared, wake, mechanism })
}

const WAKE: u64 = u64::MAX;
const REFERENCE: u64 = u64::MAX - 1;

/// One watched namespace: its mountinfo (POLLPRI) and the pidfd of the process
/// it was opened through (readable when that process exits).
struct Slot {
    ns: NsId,
    pid: i32,
    mountinfo: File,
    pidfd: OwnedFd,
}

struct Thread {
    procfs: PathBuf,
    epoll: OwnedFd,
    wake: Arc<OwnedFd>,
    shared: Arc<Shared>,
    changed: Arc<Notify>,
    /// Slot `i` has tokens `2i` (mountinfo) and `2i + 1` (pidfd).
    slots: Vec<Option<Slot>>,
    _reference: File,
}

impl Thread {
    fn run(&mut self) {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(256);
        let tick = Timespec::try_from(Duration::from_secs(1)).unwrap_or(Timespec { tv_sec: 1, tv_nsec: 0 });
        while !self.shared.stop.load(Ordering::Relaxed) {
            events.clear();
            match epoll::wait(&self.epoll, rustix::buffer::spare_capacity(&mut events), Some(&tick)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "mount table watch failed; relying on periodic resync");
                    return;
                }
            }
            let tokens: Vec<u64> = events.iter().map(|e| e.data.u64()).collect();
            let mut any = false;
            for token in tokens {
                any |= self.event(token);
            }
            let wanted = self.shared.wanted.locked().take();
            if let Some(wanted) = wanted {
                any |= self.follow(wanted);
            }
            self.shared.watched.store(self.slots.iter().flatten().count(), Ordering::Relaxed);
            if any {
                self.changed.notify_one();
            }
        }
    }

    /// Handles one ready token; true when something changed.
    fn event(&mut self, token: u64) -> bool {
        match token {
            WAKE => {
                let mut buf = [0u8; 8];
                let _ = rustix::io::read(&*self.wake, &mut buf);
                false
            }
            REFERENCE => {
                self.shared.changes.locked().reference = true;
                true
            }
            t => {
                let i = (t / 2) as usize;
                let Some(slot) = self.slots.get(i).and_then(Option::as_ref) else { return false };
                if t % 2 == 0 {
                    self.shared.changes.locked().namespaces.insert(slot.ns);
                } else {
                    // Its process exited: let the namespace go at once.
                    self.close(i);
                    self.shared.changes.locked().exited = true;
                }
                true
            }
        }
    }

    /// Watches exactly `wanted` (namespace -> process to open it through). A
    /// namespace newly watched is marked changed (true: something was): its table
    /// was read before its watch began, and a mount made in between would raise
    /// no POLLPRI, and show only at the next resync.
    fn follow(&mut self, mut wanted: BTreeMap<NsId, i32>) -> bool {
        let mut opened = false;
        for i in 0..self.slots.len() {
            let keep = self.slots[i].as_ref().is_some_and(|s| wanted.get(&s.ns) == Some(&s.pid));
            if keep {
                if let Some(s) = &self.slots[i] {
                    wanted.remove(&s.ns);
                }
            } else {
                self.close(i);
            }
        }
        for (ns, pid) in wanted {
            match self.open(ns, pid) {
                Ok(slot) => {
                    let i = self.slots.iter().position(Option::is_none).unwrap_or(self.slots.len());
                    if self.register(i, &slot).is_ok() {
                        self.shared.changes.locked().namespaces.insert(ns);
                        opened = true;
                        if i == self.slots.len() {
                            self.slots.push(Some(slot));
                        } else {
                            self.slots[i] = Some(slot);
                        }
                    }
                }
                // Gone since the census, or moved to another namespace: the next
                // census sees it.
                Err(e) => tracing::debug!(ns = %ns, pid, error = %e, "cannot watch mount namespace"),
            }
        }
        opened
    }

    fn open(&self, ns: NsId, pid: i32) -> std::io::Result<Slot> {
        let raw = rustix::process::Pid::from_raw(pid).ok_or(std::io::ErrorKind::InvalidInput)?;
        // The pidfd first: if the process is the namespace's when both are open,
        // the mountinfo is that namespace's, and the pidfd says when it goes.
        let pidfd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty())?;
        let mountinfo = File::open(self.procfs.join(pid.to_string()).join("mountinfo"))?;
        if ns_of(&self.procfs, pid) != Some(ns) {
            return Err(std::io::ErrorKind::NotFound.into());
        }
        Ok(Slot { ns, pid, mountinfo, pidfd })
    }

    fn register(&self, i: usize, s: &Slot) -> rustix::io::Result<()> {
        let token = 2 * i as u64;
        epoll::add(&self.epoll, &s.mountinfo, epoll::EventData::new_u64(token), epoll::EventFlags::PRI)?;
        epoll::add(&self.epoll, &s.pidfd, epoll::EventData::new_u64(token + 1), epoll::EventFlags::IN)
    }

    fn close(&mut self, i: usize) {
        if let Some(s) = self.slots.get_mut(i).and_then(Option::take) {
            let _ = epoll::delete(&self.epoll, s.mountinfo.as_fd());
            let _ = epoll::delete(&self.epoll, s.pidfd.as_fd());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let end = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(std::time::Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A real namespace change is seen: an unshared child that mounts a tmpfs;
    /// then its exit. Needs root (unshare, mount): the e2e tier runs it.
    #[test]
    #[cfg_attr(not(feature = "e2e"), ignore = "needs root: unshare(CLONE_NEWNS) and mount (e2e tier)")]
    fn a_mount_in_another_namespace_and_its_end_are_seen() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().expect("tempdir");
        let mnt = dir.path().join("m");
        std::fs::create_dir(&mnt).expect("mkdir");
        let script = format!("read x; mount -t tmpfs t {}; read x", mnt.display());
        let mut child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::piped())
            .spawn()
            .expect("unshare");
        let pid = child.id() as i32;
        let procfs = Path::new("/proc");
        let own = ns_of(procfs, std::process::id() as i32);
        let ns = wait_until("the child's own namespace", || ns_of(procfs, pid).filter(|n| Some(*n) != own));
        let w = spawn(procfs, Path::new("/proc/self/mountinfo"), Arc::new(Notify::new())).expect("watcher");
        assert_eq!(w.mechanism(), Mechanism::Notify);
        w.watch([MountNs { id: ns, pid }]);
        wait_until("the namespace to be watched", || (w.watched() == 1).then_some(()));
        let first = w.take();
        assert!(
            first.namespaces.contains(&ns) && !first.exited,
            "a namespace newly watched is read once more"
        );
        assert!(w.take().is_empty(), "nothing changed since");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"\n").expect("write");
        wait_until("the mount in the other namespace", || w.take().namespaces.contains(&ns).then_some(()));
        drop(stdin);
        child.wait().expect("wait");
        wait_until("the exit of the namespace's process", || w.take().exited.then_some(()));
        assert_eq!(w.watched(), 0, "its files are closed at once");
    }
}
