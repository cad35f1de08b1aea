//! Reading one directory of the walk: an unchanged one from the cache (its
//! names, each stat'ed again), a new or changed one with `getdents`, its entries
//! stat'ed in inode order.

use std::ffi::CStr;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{statat, AtFlags, Dir};

use super::cache::{DirEntries, LINKED, WHITEOUT_DEV};
use super::{Pending, Walker};
use crate::scan::EntryKind;

/// Directory entries read before they are sorted by inode and stat'ed.
const SORT_BATCH: usize = 65_536;

impl Walker<'_> {
    /// An unchanged directory: names from the cache, each stat'ed again.
    pub(super) fn walk_cached(
        &mut self,
        dir: OwnedFd,
        p: &Pending,
        mut d: DirEntries,
        stack: &mut Vec<Pending>,
    ) {
        self.result.dirs_cached += 1;
        let at = self.xattr_at(dir.as_fd());
        let names = std::mem::take(&mut d.names);
        let mut valid = true;
        let mut complete = true;
        let mut off = 0;
        for i in 0..d.marks.len() {
            // One memchr per name (names are NUL-terminated back to back).
            let Some(Ok(name)) = names.get(off..).map(CStr::from_bytes_until_nul) else { break };
            off += name.to_bytes_with_nul().len();
            if !self.tick() {
                complete = false;
                break;
            }
            let (Some(ct), Some(mk)) = (d.ctimes.get_mut(i), d.marks.get_mut(i)) else { break };
            if *mk & WHITEOUT_DEV != 0 {
                // A device node has no data and its type cannot change: the name
                // still is this whiteout, as the directory is unchanged.
                self.result.entries[EntryKind::Whiteout as usize] += 1;
                let ino = *ct as u64;
                if *mk & LINKED == 0 || !self.seen.contains_key(&ino) {
                    if *mk & LINKED != 0 {
                        self.seen.insert(ino, EntryKind::Whiteout);
                    }
                    self.result.inodes += 1;
                }
                continue;
            }
            let st = match statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(e) => {
                    // The directory changed after its parent stat'ed it: read it next time.
                    self.error(e);
                    valid = false;
                    continue;
                }
            };
            match self.entry(at, p, name, &st, Some((*ct, *mk)), stack) {
                Some(c) => (*ct, *mk) = c,
                None => valid = false, // gone meanwhile, as above
            }
        }
        if complete {
            d.names = names;
            if !valid {
                d.mtime = i64::MIN;
            }
            d.generation = self.cache.generation;
            self.cache.dirs.insert(p.ino, d);
        }
    }

    /// A new or changed directory: read, every entry classified afresh.
    pub(super) fn walk_read(&mut self, dir: OwnedFd, p: &Pending, stack: &mut Vec<Pending>) {
        self.result.dirs_read += 1;
        let at = self.xattr_at(dir.as_fd());
        let mut entries = match Dir::new(dir) {
            Ok(d) => d,
            Err(e) => return self.error(e),
        };
        let mut d = DirEntries {
            mtime: p.mtime,
            ctime: p.ctime,
            read_children: p.read_children,
            generation: self.cache.generation,
            names: Vec::new(),
            ctimes: Vec::new(),
            marks: Vec::new(),
        };
        // Entries are stat'ed in inode order, a batch at a time: inodes made one
        // after the other sit side by side on disk and in memory, while getdents
        // returns names in hash order (ext4, XFS). The order is kept in the cache.
        let mut complete = true;
        let mut batch: Vec<(u64, u32)> = Vec::new();
        let mut raw: Vec<u8> = Vec::new();
        let mut more = true;
        while more && complete {
            (more, complete) = self.read_batch(&mut entries, &mut batch, &mut raw);
            batch.sort_unstable_by_key(|&(ino, _)| ino);
            let Ok(dirfd) = entries.fd() else {
                complete = false;
                break;
            };
            for &(_, off) in &batch {
                let Some(Ok(name)) = raw.get(off as usize..).map(CStr::from_bytes_until_nul) else {
                    continue;
                };
                if !self.tick() {
                    complete = false;
                    break;
                }
                let st = match statat(dirfd, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => st,
                    Err(e) => {
                        self.error(e);
                        continue; // gone meanwhile: the directory's times changed too
                    }
                };
                let Some((c, m)) = self.entry(at, p, name, &st, None, stack) else { continue };
                d.names.extend_from_slice(name.to_bytes_with_nul());
                d.ctimes.push(c);
                d.marks.push(m);
            }
        }
        if complete {
            d.names.shrink_to_fit();
            d.ctimes.shrink_to_fit();
            d.marks.shrink_to_fit();
            self.cache.dirs.insert(p.ino, d);
        }
    }

    /// Reads the next names of `entries`, [`SORT_BATCH`] at most, into `batch`
    /// (inode, and offset in `raw`, where the names sit back to back with their
    /// NULs). Returns whether more may follow, and whether the reads went well (a
    /// failed one is counted).
    fn read_batch(
        &mut self,
        entries: &mut Dir,
        batch: &mut Vec<(u64, u32)>,
        raw: &mut Vec<u8>,
    ) -> (bool, bool) {
        batch.clear();
        raw.clear();
        while batch.len() < SORT_BATCH {
            if batch.len() % 256 == 0 && self.cancelled() {
                return (true, false);
            }
            match entries.next() {
                None => return (false, true),
                Some(Err(e)) => {
                    self.error(e);
                    return (true, false);
                }
                Some(Ok(e)) => {
                    let name = e.file_name().to_bytes_with_nul();
                    if name != b".\0" && name != b"..\0" {
                        batch.push((e.ino(), raw.len() as u32));
                        raw.extend_from_slice(name);
                    }
                }
            }
        }
        (true, true)
    }
}
