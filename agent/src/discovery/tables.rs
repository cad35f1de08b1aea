//! The overlay lines of every mount namespace's table, kept between reads and
//! re-read only where something changed: the daemon says which namespaces (a
//! change notification of the reference table, a mount event from a namespace,
//! a new namespace in a census, the resync timer), and [`Tables::table`] merges
//! them into one [`MountTable`] by superblock.
//!
//! Reading every namespace's table at every change would cost a node with
//! 1,000 containers about 70 ms per change (measured: 3.4 MB of mountinfo text,
//! bench/namespaces.py), so each namespace is read when it appears and when it
//! is marked dirty, and nothing is held open between reads.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::mountinfo::{self, BadLine, OverlayLine};
use super::namespaces::{Census, MountNs, NsId};
use super::{group_by_superblock, DiscoveryError, MountTable};

/// One namespace's overlay lines, as last read.
#[derive(Debug, Clone)]
struct NsLines {
    /// The process the lines were read through.
    pid: i32,
    lines: Vec<OverlayLine>,
    bad: Vec<BadLine>,
    /// Read from the same text ([`mountinfo::idmapped_mounts`]).
    idmapped: mountinfo::IdmappedMounts,
}

/// What one refresh did: namespaces read, and those that failed (a process gone
/// between the census and the read, a table over the size limit).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Refresh {
    pub read: usize,
    /// Namespaces gone since the last census.
    pub removed: usize,
    pub failed: Vec<(NsId, String)>,
}

/// Which namespaces to read again; namespaces new in the census are always read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dirty {
    /// Every namespace (the resync timer, a first read).
    pub all: bool,
    /// The reference namespace.
    pub reference: bool,
    /// These other namespaces.
    pub namespaces: BTreeSet<NsId>,
}

impl Dirty {
    pub fn all() -> Dirty {
        Dirty { all: true, ..Default::default() }
    }

    /// Only the reference namespace (its change notification).
    pub fn reference() -> Dirty {
        Dirty { reference: true, ..Default::default() }
    }

    fn wants(&self, id: NsId, reference: bool) -> bool {
        self.all || (reference && self.reference) || self.namespaces.contains(&id)
    }
}

/// Per-namespace tables and the census they follow.
#[derive(Debug, Default)]
pub struct Tables {
    census: Census,
    by_ns: BTreeMap<NsId, NsLines>,
    procfs: PathBuf,
}

impl Tables {
    pub fn census(&self) -> &Census {
        &self.census
    }

    /// Whether `ns`'s lines were read through its current process. A namespace
    /// whose process changed is read again: the kernel gives a new namespace
    /// the inode number of one that just ended, often before the old one's end
    /// is seen, and a new namespace always has other processes.
    fn read_through(&self, ns: &MountNs) -> bool {
        self.by_ns.get(&ns.id).is_some_and(|l| l.pid == ns.pid)
    }

    /// Takes a new census: forgets the namespaces that ended (or fell beyond the
    /// cap), and reads the new ones and the `dirty` ones.
    pub fn refresh(
        &mut self,
        procfs: &Path,
        census: Census,
        dirty: &Dirty,
        select: impl Fn(&str) -> bool,
    ) -> Refresh {
        let kept: BTreeSet<NsId> = census.all().map(|n| n.id).collect();
        let before = self.by_ns.len();
        self.by_ns.retain(|id, _| kept.contains(id));
        let removed = before - self.by_ns.len();
        self.census = census;
        self.procfs = procfs.to_owned();
        let due: Vec<MountNs> = self
            .census
            .all()
            .filter(|n| dirty.wants(n.id, self.census.is_reference(n.id)) || !self.read_through(n))
            .copied()
            .collect();
        let mut out = Refresh { removed, ..Refresh::default() };
        for ns in due {
            match read_ns(procfs, ns, self.census.is_reference(ns.id), &select) {
                Ok(l) => {
                    out.read += 1;
                    self.by_ns.insert(ns.id, l);
                }
                Err(e) => {
                    // Keep the last lines: a failed read (the process just
                    // exited) says nothing of the namespace's mounts; the next
                    // census tells whether the namespace is gone.
                    out.failed.push((ns.id, e.to_string()));
                }
            }
        }
        out
    }

    /// One table of every namespace's overlays, merged by superblock.
    pub fn table(&self, previous: Option<&MountTable>) -> MountTable {
        let lines: Vec<OverlayLine> = self.by_ns.values().flat_map(|n| n.lines.iter().cloned()).collect();
        let reference = self.census.reference.and_then(|r| self.by_ns.get(&r.id));
        MountTable {
            mounts: group_by_superblock(lines, |_| true, previous),
            bad_lines: reference.map(|r| r.bad.clone()).unwrap_or_default(),
            source: self.census.reference.map(|r| r.proc_path(&self.procfs, "mountinfo")).unwrap_or_default(),
            namespaces_read: true,
            idmapped_mounts: self
                .by_ns
                .iter()
                .map(|(id, n)| ((!self.census.is_reference(*id)).then_some(*id), n.idmapped.clone()))
                .collect(),
        }
    }

    /// Namespaces read, the reference included.
    pub fn namespaces(&self) -> usize {
        self.by_ns.len()
    }
}

/// Reads one namespace's table through its process; lines of other namespaces
/// carry their namespace.
/// Reads namespace `ns`'s overlay lines, keeping those whose mountpoint
/// `select` takes: a namespace's table holds copies of its parent's mounts, so
/// most lines of a thousand namespaces are filtered once, here, not at every
/// merge. (A reload that changes the filters re-reads every namespace.)
fn read_ns(
    procfs: &Path,
    ns: MountNs,
    reference: bool,
    select: impl Fn(&str) -> bool,
) -> Result<NsLines, DiscoveryError> {
    let path: PathBuf = ns.proc_path(procfs, "mountinfo");
    let text = mountinfo::read_text(&path)?;
    let (mut lines, bad) = mountinfo::parse(&text);
    lines.retain(|l| select(&super::path_label(&l.mountpoint)));
    // Kept until the next read: no slack from doubling (2.4 MB at 10,000 mounts).
    lines.shrink_to_fit();
    if !reference {
        for l in &mut lines {
            l.namespace = Some(ns);
        }
    }
    Ok(NsLines { pid: ns.pid, lines, bad, idmapped: mountinfo::idmapped_mounts(&text) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::Device;

    const HOST: &str = "\
27 1 254:0 / / rw - ext4 /dev/vda rw
70 27 0:60 / /var/lib/docker/overlay2/aa/merged rw - overlay overlay rw,lowerdir=/l,upperdir=/var/lib/docker/overlay2/aa/diff,workdir=/w
";
    /// A container's namespace: its overlay at `/`, plus a private overlay with
    /// the same mountpoint path as one in the other private namespace.
    const CONTAINER: &str = "\
300 299 0:60 / / rw - overlay overlay rw,lowerdir=/l,upperdir=/var/lib/docker/overlay2/aa/diff,workdir=/w
301 300 0:70 / /merged rw - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
";
    const DIND: &str = "\
400 399 0:71 / /merged rw - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
401 399 0:72 / /var/lib/docker/overlay2/bb/merged rw - overlay overlay rw,lowerdir=/l,upperdir=/var/lib/docker/overlay2/bb/diff,workdir=/w
";

    fn fake(dir: &Path) {
        for (pid, ns, table) in [(1, 100, HOST), (20, 200, CONTAINER), (30, 300, DIND)] {
            let d = dir.join(pid.to_string());
            std::fs::create_dir_all(d.join("ns")).expect("mkdir");
            std::os::unix::fs::symlink(format!("mnt:[{ns}]"), d.join("ns/mnt")).expect("symlink");
            std::fs::write(d.join("mountinfo"), table).expect("write");
        }
    }

    /// The kernel reuses an ended namespace's inode number for a new one, often
    /// before the old one's end is seen: a namespace whose process changed is
    /// read again, even when nothing marked it dirty.
    #[test]
    fn a_reused_namespace_number_with_a_new_process_is_read_again() {
        let tmp = tempfile::tempdir().expect("tempdir");
        fake(tmp.path());
        let mut t = Tables::default();
        t.refresh(tmp.path(), Census::take(tmp.path(), 10).expect("census"), &Dirty::all(), |_| true);
        // pid 30 ends; pid 31 is in a new namespace with the same number, 300.
        std::fs::remove_dir_all(tmp.path().join("30")).expect("rm");
        let d = tmp.path().join("31");
        std::fs::create_dir_all(d.join("ns")).expect("mkdir");
        std::os::unix::fs::symlink("mnt:[300]", d.join("ns/mnt")).expect("symlink");
        let new = "500 499 0:90 / /other rw - overlay overlay rw,lowerdir=/l,upperdir=/u2,workdir=/w2\n";
        std::fs::write(d.join("mountinfo"), new).expect("write");
        let r =
            t.refresh(tmp.path(), Census::take(tmp.path(), 10).expect("census"), &Dirty::default(), |_| true);
        assert_eq!(r.read, 1, "only the namespace whose process changed");
        let table = t.table(None);
        let dev = |minor| Device { major: 0, minor };
        assert!(table.mounts.contains_key(&dev(90)) && !table.mounts.contains_key(&dev(71)));
    }

    #[test]
    fn superblocks_merge_across_namespaces_and_same_paths_stay_apart() {
        let tmp = tempfile::tempdir().expect("tempdir");
        fake(tmp.path());
        let mut t = Tables::default();
        let census = Census::take(tmp.path(), 10).expect("census");
        let r = t.refresh(tmp.path(), census, &Dirty::all(), |_| true);
        assert_eq!((r.read, r.failed.len()), (3, 0));
        let table = t.table(None);
        assert_eq!(table.mounts.len(), 4);
        let dev = |minor| Device { major: 0, minor };
        // The container's root is labelled where dockerd mounted it, on the host.
        let c = &table.mounts[&dev(60)];
        assert_eq!(c.mountpoint, PathBuf::from("/var/lib/docker/overlay2/aa/merged"));
        assert_eq!((c.namespace, c.places(), c.mntns_label().as_str()), (None, 2, ""));
        // Two superblocks at /merged in two namespaces: two mounts, told apart by mntns.
        let (a, b) = (&table.mounts[&dev(70)], &table.mounts[&dev(71)]);
        assert_eq!(
            (a.mountpoint.as_path(), b.mountpoint.as_path()),
            (Path::new("/merged"), Path::new("/merged"))
        );
        assert_eq!((a.mntns_label().as_str(), b.mntns_label().as_str()), ("200", "300"));
        assert_eq!(a.namespace.map(|n| n.pid), Some(20));
        assert_ne!(a.labels(), b.labels());
    }

    #[test]
    fn only_dirty_and_new_namespaces_are_read_and_ended_ones_go() {
        let tmp = tempfile::tempdir().expect("tempdir");
        fake(tmp.path());
        let mut t = Tables::default();
        let census = Census::take(tmp.path(), 10).expect("census");
        t.refresh(tmp.path(), census.clone(), &Dirty::all(), |_| true);
        // A change in the dind namespace; the container's table is not read again.
        std::fs::write(tmp.path().join("20/mountinfo"), "").expect("write");
        std::fs::write(tmp.path().join("30/mountinfo"), "").expect("write");
        let r = t.refresh(
            tmp.path(),
            census,
            &Dirty { namespaces: [NsId(300)].into(), ..Default::default() },
            |_| true,
        );
        assert_eq!(r.read, 1);
        let table = t.table(None);
        assert!(table.mounts.contains_key(&Device { major: 0, minor: 70 }), "not re-read");
        assert!(!table.mounts.contains_key(&Device { major: 0, minor: 72 }), "re-read: gone");
        // The container's namespace ends: its mounts go with the next census.
        std::fs::remove_dir_all(tmp.path().join("20")).expect("rm");
        let census = Census::take(tmp.path(), 10).expect("census");
        t.refresh(tmp.path(), census, &Dirty::default(), |_| true);
        assert!(!t.table(None).mounts.contains_key(&Device { major: 0, minor: 70 }));
        assert_eq!(t.namespaces(), 2);
    }

    #[test]
    fn a_primary_place_stays_while_it_exists() {
        let tmp = tempfile::tempdir().expect("tempdir");
        fake(tmp.path());
        // The host binds the container's private overlay: a place that ranks first
        // (the host's namespace), yet the label stays where it was.
        let host = format!(
            "{HOST}5 27 0:70 / /host-bind rw - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w\n"
        );
        let mut t = Tables::default();
        let census = Census::take(tmp.path(), 10).expect("census");
        t.refresh(tmp.path(), census.clone(), &Dirty::all(), |_| true);
        let before = t.table(None);
        std::fs::write(tmp.path().join("1/mountinfo"), host).expect("write");
        t.refresh(tmp.path(), census, &Dirty::all(), |_| true);
        let after = t.table(Some(&before));
        let m = &after.mounts[&Device { major: 0, minor: 70 }];
        assert_eq!((m.mountpoint.as_path(), m.mntns_label().as_str()), (Path::new("/merged"), "200"));
        assert_eq!((m.places(), m.elsewhere), (2, 1));
        let fresh = t.table(None);
        let m = &fresh.mounts[&Device { major: 0, minor: 70 }];
        assert_eq!((m.mountpoint.as_path(), m.mntns_label().as_str()), (Path::new("/host-bind"), ""));
    }
}
