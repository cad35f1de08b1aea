//! What a project id covers besides the upper dir: the layer dir that holds it and
//! its other entries, and other trees with the id (the work dir), measured to be
//! subtracted from the quota (see the module doc of `quota`). Read-only.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustix::fs::{openat2, statat, AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

use super::reader::QuotaTarget;
use super::Usage;
use crate::sync::LockExt;

impl QuotaTarget {
    /// What the id covers besides the upper dir: the layer dir and its other
    /// entries, and other trees with the id (see the module doc).
    /// Also returns how many of their entries are covered by a mount.
    pub fn others(&self) -> Result<(Usage, u64), Errno> {
        let mut listings = self.listings.locked();
        let mut m = Measure {
            dev: self.dev,
            links: HashMap::new(),
            usage: Usage::default(),
            budget: OTHERS_MAX,
            covered: 0,
            listings: &mut listings,
        };
        // Beneath a detached clone of the mount, as every scan thread opens.
        let root = |p: &Path| crate::scan::reach::open_path(p, false);
        if let Some(layer) = &self.layer {
            m.tree(&root(layer)?, Path::new(""), self.upper.file_name(), 0)?;
        }
        for other in &self.others {
            if self.layer.as_deref().is_some_and(|l| other.starts_with(l)) {
                continue;
            }
            m.tree(&root(other)?, Path::new(""), None, 0)?;
        }
        // Inodes linked from outside these trees have their other names in the upper
        // dir (links cannot cross projects): the walk counts them.
        for (nlink, names, blocks) in m.links.values() {
            if names >= nlink {
                m.usage.allocated_bytes += blocks;
                m.usage.inodes += 1;
            }
        }
        let (usage, covered) = (m.usage, m.covered);
        listings.retain(|_, l| std::mem::take(&mut l.seen));
        Ok((usage, covered))
    }
}

/// Entries of the other trees measured at most: they are a handful of names in the
/// layouts that set project ids; anything larger is not what the id was set for.
const OTHERS_MAX: u64 = 100_000;

/// The names of a directory of the other trees as last read, kept while its inode,
/// mtime and ctime stay the same (every create, unlink, rename and link in it sets
/// both: the walker's rule, scan::walk). Its entries are stat'ed at every reading.
#[derive(Debug)]
pub(super) struct Listing {
    mtime: (i64, u64),
    ctime: (i64, u64),
    names: Vec<CString>,
    /// Looked at by the current reading (the others are dropped after it).
    seen: bool,
}

pub(super) type Listings = Arc<Mutex<HashMap<u64, Listing>>>;

struct Measure<'a> {
    dev: u64,
    /// Non-directories with more than one link: (st_nlink, names seen, bytes).
    links: HashMap<u64, (u64, u64, u64)>,
    usage: Usage,
    budget: u64,
    /// Entries with another filesystem mounted on them.
    covered: u64,
    listings: &'a mut HashMap<u64, Listing>,
}

impl Measure<'_> {
    fn count(&mut self, st: &Stat) {
        self.usage.allocated_bytes += (st.st_blocks as u64).saturating_mul(512);
        self.usage.inodes += 1;
    }

    /// Measures `rel` under `root` (an `O_PATH` fd of the layer dir or of another
    /// tree; `rel` empty: the root itself, without its entry named `skip`). These
    /// trees are outside every container's view (the upper dir is skipped), so
    /// stat'ing by relative path is safe; directories are opened with openat2's
    /// RESOLVE_BENEATH and RESOLVE_NO_SYMLINKS anyway.
    fn tree(&mut self, root: &OwnedFd, rel: &Path, skip: Option<&OsStr>, depth: u32) -> Result<(), Errno> {
        self.budget = self.budget.checked_sub(1).ok_or(Errno::NOSPC)?;
        if depth > 64 {
            return Err(Errno::NAMETOOLONG);
        }
        let st = if rel.as_os_str().is_empty() {
            rustix::fs::fstat(root)
        } else {
            statat(root, rel, AtFlags::SYMLINK_NOFOLLOW)
        };
        let st = match st {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(()), // a temp file that went away
            Err(e) => return Err(e),
        };
        if st.st_dev != self.dev {
            // A mountpoint (Docker's merged/): the directory under it is charged to
            // the id but cannot be stat'ed (see Reading).
            self.covered += 1;
            return Ok(());
        }
        let ftype = FileType::from_raw_mode(st.st_mode);
        if ftype != FileType::Directory && st.st_nlink > 1 {
            let e = self.links.entry(st.st_ino).or_insert((
                st.st_nlink as u64, // u32 on aarch64
                0,
                (st.st_blocks as u64).saturating_mul(512),
            ));
            e.1 += 1;
            return Ok(());
        }
        self.count(&st);
        if ftype != FileType::Directory {
            return Ok(());
        }
        let Some(names) = self.names(root, rel, &st)? else { return Ok(()) };
        for n in names {
            let n = OsStr::from_bytes(n.to_bytes());
            if depth == 0 && skip == Some(n) {
                continue;
            }
            self.tree(root, &rel.join(n), None, depth + 1)?;
        }
        Ok(())
    }

    /// The names in the directory `rel` under `root` (stat'ed as `st`): from its
    /// listing while unchanged, else read and kept; `None` if it went away.
    fn names(&mut self, root: &OwnedFd, rel: &Path, st: &Stat) -> Result<Option<Vec<CString>>, Errno> {
        let (mtime, ctime) = ((st.st_mtime, st.st_mtime_nsec), (st.st_ctime, st.st_ctime_nsec));
        if let Some(l) = self.listings.get_mut(&st.st_ino).filter(|l| l.mtime == mtime && l.ctime == ctime) {
            l.seen = true;
            return Ok(Some(l.names.clone()));
        }
        let here = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
        let fd = match openat2(
            root,
            here,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV,
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&fd)? {
            let entry = entry?;
            let n = entry.file_name();
            if !matches!(n.to_bytes(), b"." | b"..") {
                names.push(n.to_owned());
            }
        }
        self.listings.insert(st.st_ino, Listing { mtime, ctime, names: names.clone(), seen: true });
        Ok(Some(names))
    }
}

#[cfg(test)]
mod tests {
    use super::super::reader::Via;
    use super::*;

    /// What the id covers besides the upper dir, in Docker's layout: the layer dir,
    /// work/ and its contents, small files; not the upper dir, and not an inode that
    /// also has a name in the upper dir (the walk counts it).
    #[test]
    fn others_in_the_layer_dir() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let layer = tmp.path().join("layer");
        for d in ["diff/sub", "work/work"] {
            std::fs::create_dir_all(layer.join(d)).expect("mkdir");
        }
        std::fs::write(layer.join("link"), b"L5DJ3T").expect("write");
        std::fs::write(layer.join("diff/sub/big"), vec![1u8; 100_000]).expect("write");
        // Linked from work/ into the upper dir (overlayfs' shared whiteout inode), and
        // linked within work/ only (both names outside the upper dir).
        std::fs::write(layer.join("work/#1"), b"").expect("write");
        std::fs::hard_link(layer.join("work/#1"), layer.join("diff/wh")).expect("link");
        std::fs::write(layer.join("work/work/#2"), vec![2u8; 5000]).expect("write");
        std::fs::hard_link(layer.join("work/work/#2"), layer.join("work/#3")).expect("link");
        let st = |p: &str| rustix::fs::stat(layer.join(p)).expect("stat");
        let dev = st("").st_dev;
        let t = QuotaTarget {
            upper: layer.join("diff"),
            project_id: 1,
            dev,
            via: Via::Fd,
            layer: Some(layer.clone()),
            others: vec![layer.join("work")],
            covered: None,
            listings: Listings::default(),
        };
        let (u, covered) = t.others().expect("others");
        let want: Vec<Stat> =
            ["", "link", "work", "work/work", "work/work/#2"].iter().map(|p| st(p)).collect();
        let bytes: u64 = want.iter().map(|s| s.st_blocks as u64 * 512).sum();
        assert_eq!((u.inodes, u.allocated_bytes, covered), (5, bytes, 0), "{u:?}");
        // Again from the cached listings (unchanged directories), then with a change.
        assert_eq!(t.others().expect("others"), (u, 0));
        assert_eq!(t.listings.locked().len(), 3, "layer, work, work/work");
        std::fs::write(layer.join("work/work/#4"), vec![3u8; 9000]).expect("write");
        let (u2, _) = t.others().expect("others");
        assert_eq!(u2.inodes, 6, "the new name in work/work is seen: {u2:?}");
        std::fs::remove_dir_all(layer.join("work/work")).expect("rm");
        let (u3, _) = t.others().expect("others");
        assert_eq!(u3.inodes, 4, "layer, link, work, #3 (#2 gone: one link left): {u3:?}");
        assert_eq!(t.listings.locked().len(), 2, "work/work's listing dropped");
        // A work dir with the id outside the layer dir is measured by itself.
        std::fs::create_dir(layer.join("work/work")).expect("mkdir");
        let t = QuotaTarget { layer: None, ..t };
        let (u, _) = t.others().expect("others");
        assert_eq!(u.inodes, 3, "work, work/work, #3: {u:?}");
    }
}
