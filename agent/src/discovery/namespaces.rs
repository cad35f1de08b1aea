//! Mount namespaces: which exist, and one process in each through which the
//! agent reads its mount table (`/proc/<pid>/mountinfo`) and reaches its files
//! (`/proc/<pid>/root`).
//!
//! A census lists `<procfs>/<pid>/ns/mnt` of every process (a `readlink` each,
//! no file held open: holding a namespace's mountinfo open would keep the
//! namespace, and every mount in it, alive after its last process exits). The
//! namespace of pid 1 is the reference: its mounts are the host's, labelled as
//! they were before namespaces were read. Where pid 1's link cannot be read
//! (a sandbox whose init belongs to another user namespace), pid 2's is (the
//! kernel threads' parent, kthreadd, lives in the initial namespace), else the
//! agent's own. Measured at 1,000 namespaces (1,082
//! processes) on this project's build machine: 4 ms per census
//! (bench/namespaces.py; docs/performance.md).
//!
//! Bounded: at most `cap` namespaces besides the reference are kept, the lowest
//! pids' first; the rest are counted ([`Census::over_cap`]), never read.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A mount namespace, named by the inode number of its nsfs file
/// (`readlink /proc/<pid>/ns/mnt` says `mnt:[<inode>]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct NsId(pub u64);

impl fmt::Display for NsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl NsId {
    /// From the text of an nsfs link, `mnt:[4026531841]`.
    pub fn parse_link(link: &[u8]) -> Option<NsId> {
        let inner = link.strip_prefix(b"mnt:[")?.strip_suffix(b"]")?;
        std::str::from_utf8(inner).ok()?.parse().ok().map(NsId)
    }
}

/// The mount namespace of a process, `None` when the process is gone or its
/// namespace cannot be read (another user's process without CAP_SYS_PTRACE).
pub fn ns_of(procfs: &Path, pid: i32) -> Option<NsId> {
    let link = std::fs::read_link(procfs.join(pid.to_string()).join("ns/mnt")).ok()?;
    NsId::parse_link(std::os::unix::ffi::OsStrExt::as_bytes(link.as_os_str()))
}

/// A namespace and the process the agent reads it through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct MountNs {
    pub id: NsId,
    /// The lowest pid in the namespace when the census ran.
    pub pid: i32,
}

impl MountNs {
    /// `<procfs>/<pid>/<rel>`.
    pub fn proc_path(&self, procfs: &Path, rel: &str) -> PathBuf {
        procfs.join(self.pid.to_string()).join(rel)
    }
}

/// Every mount namespace of the node, with one process in each.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Census {
    /// The namespace of pid 1 (the host's), else of pid 2 (kthreadd), else the
    /// agent's own.
    pub reference: Option<MountNs>,
    /// The other namespaces, at most the cap.
    pub others: BTreeMap<NsId, MountNs>,
    /// Namespaces found beyond the cap, not read.
    pub over_cap: usize,
    /// Processes whose namespace could not be read (gone, or not permitted).
    pub unreadable: usize,
}

impl Census {
    /// Lists the processes under `procfs` and groups them by mount namespace.
    pub fn take(procfs: &Path, cap: usize) -> std::io::Result<Census> {
        let mut pids: Vec<i32> = std::fs::read_dir(procfs)?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|pid: &i32| *pid > 0)
            .collect();
        pids.sort_unstable();
        let mut census = Census::default();
        let own = i32::try_from(std::process::id()).unwrap_or(0);
        let reference = ns_of(procfs, 1).or_else(|| ns_of(procfs, 2)).or_else(|| ns_of(procfs, own));
        let mut over: std::collections::HashSet<NsId> = Default::default();
        for pid in pids {
            let Some(id) = ns_of(procfs, pid) else {
                census.unreadable += 1;
                continue;
            };
            if Some(id) == reference {
                census.reference.get_or_insert(MountNs { id, pid });
                continue;
            }
            if census.others.contains_key(&id) || over.contains(&id) {
                continue;
            }
            if census.others.len() < cap {
                census.others.insert(id, MountNs { id, pid });
            } else {
                over.insert(id);
            }
        }
        census.over_cap = over.len();
        Ok(census)
    }

    /// Every namespace kept, the reference first.
    pub fn all(&self) -> impl Iterator<Item = &MountNs> {
        self.reference.iter().chain(self.others.values())
    }

    /// Whether `id` is the reference namespace.
    pub fn is_reference(&self, id: NsId) -> bool {
        self.reference.is_some_and(|r| r.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nsfs_links_parse() {
        assert_eq!(NsId::parse_link(b"mnt:[4026531841]"), Some(NsId(4026531841)));
        for bad in [&b"net:[1]"[..], b"mnt:[x]", b"mnt:[1", b"", b"mnt:[-1]"] {
            assert_eq!(NsId::parse_link(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    /// A fake procfs: pid directories whose `ns/mnt` are symlinks to the link
    /// text nsfs gives.
    fn fake_procfs(dir: &Path, pids: &[(i32, &str)]) {
        for (pid, link) in pids {
            let ns = dir.join(pid.to_string()).join("ns");
            std::fs::create_dir_all(&ns).expect("mkdir");
            std::os::unix::fs::symlink(link, ns.join("mnt")).expect("symlink");
        }
        std::fs::create_dir_all(dir.join("self")).expect("mkdir");
    }

    #[test]
    fn one_process_per_namespace_the_lowest_pid_and_a_cap() {
        let tmp = tempfile::tempdir().expect("tempdir");
        fake_procfs(
            tmp.path(),
            &[
                (1, "mnt:[100]"),
                (7, "mnt:[100]"),
                (30, "mnt:[300]"),
                (20, "mnt:[200]"),
                (21, "mnt:[200]"),
                (40, "mnt:[400]"),
                (50, "garbage"),
            ],
        );
        let c = Census::take(tmp.path(), 2).expect("census");
        assert_eq!(c.reference, Some(MountNs { id: NsId(100), pid: 1 }));
        let kept: Vec<_> = c.others.values().map(|n| (n.id.0, n.pid)).collect();
        assert_eq!(kept, vec![(200, 20), (300, 30)], "lowest pids first, up to the cap");
        assert_eq!((c.over_cap, c.unreadable), (1, 1));
        assert!(c.is_reference(NsId(100)) && !c.is_reference(NsId(200)));
        assert_eq!(c.all().count(), 3);
    }

    #[test]
    fn this_process_has_a_namespace() {
        let me = rustix::process::getpid().as_raw_nonzero().get();
        assert!(ns_of(Path::new("/proc"), me).is_some());
    }
}
