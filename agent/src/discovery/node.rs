//! Discovery of the whole node: every overlay superblock, whatever mount
//! namespace mounted it. A census of the namespaces, their tables re-read where
//! they changed ([`Tables`]), merged by superblock; or, with namespaces off, the
//! reference namespace's table alone, as before.

use std::path::Path;
use std::time::{Duration, Instant};

use super::namespaces::Census;
use super::tables::{Dirty, Refresh};
use super::{DiscoveryError, MountTable, Tables};

/// How far discovery reaches (`discovery.mount_namespaces`, `max_namespaces`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reach {
    /// Read every mount namespace's table, not only the reference one.
    pub namespaces: bool,
    /// At most this many namespaces besides the reference.
    pub max_namespaces: usize,
    /// A new census at least this often (`discovery.namespace_interval`).
    pub census_every: Duration,
}

/// What one read did, for the discovery metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadStats {
    /// A census was taken.
    pub census: bool,
    pub refresh: Refresh,
}

/// Discovery's state between reads: the per-namespace tables and when the last
/// census was taken.
#[derive(Debug, Default)]
pub struct NodeDiscovery {
    tables: Tables,
    census_at: Option<Instant>,
}

impl NodeDiscovery {
    /// Reads what `dirty` says changed (all of it for a first read), taking a
    /// new census first when `reach.census_every` has passed or `census` is set, and
    /// returns the merged table; `previous` keeps primary mountpoints stable.
    /// `None`: nothing was read and no namespace went (a census that found the
    /// namespaces it knew, through the same processes), so `previous` stands.
    pub fn read(
        &mut self,
        procfs: &Path,
        reach: Reach,
        dirty: &Dirty,
        census: bool,
        select: impl Fn(&str) -> bool,
        previous: Option<&MountTable>,
    ) -> Result<(Option<MountTable>, ReadStats), DiscoveryError> {
        if !reach.namespaces {
            return Ok((Some(super::discover(procfs, select)?), ReadStats::default()));
        }
        let mut stats = ReadStats::default();
        let due = census || self.census_at.is_none_or(|t| t.elapsed() >= reach.census_every);
        let census = if due {
            stats.census = true;
            self.census_at = Some(Instant::now());
            match Census::take(procfs, reach.max_namespaces) {
                Ok(c) => c,
                // procfs unlistable: the reference table alone (its error names the file).
                Err(_) => return Ok((Some(super::discover(procfs, select)?), stats)),
            }
        } else {
            self.tables.census().clone()
        };
        if census.reference.is_none() {
            // No namespace link readable (a fixture procfs, or pid 1 not ours
            // to inspect): the reference table alone, as without namespaces.
            return Ok((Some(super::discover(procfs, select)?), stats));
        }
        let all = Dirty::all();
        let dirty = if self.tables.namespaces() == 0 { &all } else { dirty };
        stats.refresh = self.tables.refresh(procfs, census, dirty, &select);
        let reference_failed = self.tables.census().reference.and_then(|r| {
            stats.refresh.failed.iter().find(|(id, _)| *id == r.id).map(|(_, e)| (r, e.clone()))
        });
        if let Some((r, e)) = reference_failed {
            // The host's table is the one a read must not fail silently on.
            return Err(DiscoveryError::Read {
                path: r.proc_path(procfs, "mountinfo"),
                source: std::io::Error::other(e),
            });
        }
        let r = &stats.refresh;
        if previous.is_some() && r.read == 0 && r.removed == 0 && r.failed.is_empty() {
            return Ok((None, stats));
        }
        Ok((Some(self.tables.table(previous)), stats))
    }

    /// The namespaces of the last census.
    pub fn census(&self) -> &Census {
        self.tables.census()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake procfs: pid 1 (the host) and pid 20 (another namespace), each with
    /// one overlay.
    fn fake(dir: &Path) {
        let host = "70 27 0:60 / /a rw - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w\n";
        let other = "80 79 0:61 / /b rw - overlay overlay rw,lowerdir=/l,upperdir=/u2,workdir=/w2\n";
        for (pid, ns, table) in [(1, 100, host), (20, 200, other)] {
            let d = dir.join(pid.to_string());
            std::fs::create_dir_all(d.join("ns")).expect("mkdir");
            std::os::unix::fs::symlink(format!("mnt:[{ns}]"), d.join("ns/mnt")).expect("symlink");
            std::fs::write(d.join("mountinfo"), table).expect("write");
        }
    }

    /// A census that finds the namespaces it knew, through the same processes,
    /// rebuilds nothing; one that finds a namespace gone does.
    #[test]
    fn a_census_that_changes_nothing_leaves_the_table_as_it_was() {
        let tmp = tempfile::tempdir().expect("tempdir");
        fake(tmp.path());
        let reach = Reach { namespaces: true, max_namespaces: 10, census_every: Duration::ZERO };
        let mut node = NodeDiscovery::default();
        let read = |node: &mut NodeDiscovery, previous: Option<&MountTable>| {
            node.read(tmp.path(), reach, &Dirty::default(), true, |_| true, previous).expect("read")
        };
        let (first, stats) = read(&mut node, None);
        let first = first.expect("a first read builds the table");
        assert_eq!((first.mounts.len(), stats.refresh.read), (2, 2));
        let (again, stats) = read(&mut node, Some(&first));
        assert!(again.is_none() && stats.census, "same namespaces, same processes: {stats:?}");
        std::fs::remove_dir_all(tmp.path().join("20")).expect("rm");
        let (after, stats) = read(&mut node, Some(&first));
        assert_eq!(stats.refresh.removed, 1);
        assert_eq!(after.expect("a namespace went: rebuilt").mounts.len(), 1);
    }
}
