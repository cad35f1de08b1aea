//! When each upper dir is next due for a scan, ordered by time, so that a
//! scheduling pass between two mount-table changes looks only at the upper dirs
//! that have come due, not at every mount (at 10,000 mounts the walk of every
//! mount, once a second, was most of an idle agent's CPU: docs/performance.md).
//!
//! The index is lazy: every time a record's `next_due` is set, the new time is
//! added, and the old entry stays until its time passes. An entry is a hint: the
//! record decides (its `next_due` and whether a scan is in flight), so a stale
//! entry costs one look-up and is dropped. The invariant the pool keeps: every
//! record with no scan in flight has an entry at its `next_due`. Records are
//! written under the store's records lock; this index has its own lock, always
//! taken after that one.

use std::collections::{BTreeSet, HashSet};
use std::time::Instant;

use crate::discovery::UpperDir;

#[derive(Debug, Default)]
pub(super) struct DueIndex {
    entries: BTreeSet<(Instant, UpperDir)>,
}

impl DueIndex {
    /// Notes that `upper` is due at `at`.
    pub(super) fn insert(&mut self, at: Instant, upper: &UpperDir) {
        self.entries.insert((at, upper.clone()));
    }

    /// Removes and returns the upper dirs with an entry due at or before `now`,
    /// each once, earliest first.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<UpperDir> {
        let (mut due, mut seen) = (Vec::new(), HashSet::new());
        while let Some((at, _)) = self.entries.first() {
            if *at > now {
                break;
            }
            if let Some((_, upper)) = self.entries.pop_first() {
                if seen.insert(upper.clone()) {
                    due.push(upper);
                }
            }
        }
        due
    }

    /// Forgets every entry (before a pass over the whole mount table rebuilds it).
    pub(super) fn clear(&mut self) {
        self.entries.clear();
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn takes_what_is_due_once_and_leaves_the_rest() {
        let now = Instant::now();
        let (a, b, c) = (UpperDir::host("/a"), UpperDir::host("/b"), UpperDir::host("/c"));
        let mut due = DueIndex::default();
        due.insert(now + Duration::from_secs(60), &a);
        due.insert(now, &b);
        due.insert(now - Duration::from_secs(1), &b);
        due.insert(now + Duration::from_secs(1), &c);
        assert_eq!(due.take_due(now), vec![b.clone()], "b once, though it has two entries");
        assert_eq!(due.len(), 2);
        assert!(due.take_due(now).is_empty(), "taken entries are gone");
        assert_eq!(due.take_due(now + Duration::from_secs(60)), vec![c, a]);
        assert_eq!(due.len(), 0);
    }
}
