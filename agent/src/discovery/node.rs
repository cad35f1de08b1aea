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
    pub fn read(
        &mut self,
        procfs: &Path,
        reach: Reach,
        dirty: &Dirty,
        census: bool,
        select: impl Fn(&str) -> bool,
        previous: Option<&MountTable>,
    ) -> Result<(MountTable, ReadStats), DiscoveryError> {
        if !reach.namespaces {
            return Ok((super::discover(procfs, select)?, ReadStats::default()));
        }
        let mut stats = ReadStats::default();
        let due = census || self.census_at.is_none_or(|t| t.elapsed() >= reach.census_every);
        let census = if due {
            stats.census = true;
            self.census_at = Some(Instant::now());
            match Census::take(procfs, reach.max_namespaces) {
                Ok(c) => c,
                // procfs unlistable: the reference table alone (its error names the file).
                Err(_) => return Ok((super::discover(procfs, select)?, stats)),
            }
        } else {
            self.tables.census().clone()
        };
        if census.reference.is_none() {
            // No namespace link readable (a fixture procfs, or pid 1 not ours
            // to inspect): the reference table alone, as without namespaces.
            return Ok((super::discover(procfs, select)?, stats));
        }
        let all = Dirty::all();
        let dirty = if self.tables.namespaces() == 0 { &all } else { dirty };
        stats.refresh = self.tables.refresh(procfs, census, dirty);
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
        Ok((self.tables.table(select, previous), stats))
    }

    /// The namespaces of the last census.
    pub fn census(&self) -> &Census {
        self.tables.census()
    }
}
