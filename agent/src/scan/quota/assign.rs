//! Project-id assignment (`scan.assign_project_ids`, opt-in): EVERYTHING in quota
//! mode that writes to the user's filesystem is here, and only here: the only
//! callers of `set_fsx` (`FS_IOC_FSSETXATTR`) are in this file. What it does and
//! why it refuses is in the module doc of `quota`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use linux_raw_sys::general::FS_XFLAG_PROJINHERIT;
use rustix::fs::{openat2, statat, AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::others::Listings;
use super::reader::{QuotaTarget, Via};
use super::sys::{get_fsx, open_dir, set_fsx};
use super::Unavailable;

/// Sets the project id of a directory (with `FS_XFLAG_PROJINHERIT`) or regular file,
/// as `chattr -p ID +P` does (tests and benchmarks; the agent itself uses [`assign`]).
pub fn set_project(path: &Path, id: u32) -> Result<(), Errno> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut x = get_fsx(fd.as_fd())?;
    x.fsx_projid = id;
    if rustix::fs::fstat(&fd)?.st_mode & libc::S_IFMT == libc::S_IFDIR {
        x.fsx_xflags |= FS_XFLAG_PROJINHERIT;
    }
    set_fsx(fd.as_fd(), x)
}

/// What [`assign`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Assigned {
    pub project_id: u32,
    /// Directories and regular files that got the id.
    pub tagged: u64,
    /// Entries with another id already (left alone).
    pub foreign: u64,
    /// Symlinks, devices, FIFOs, sockets: cannot be opened to set the id.
    pub untaggable: u64,
}

/// Why [`assign`] did not set an id.
#[derive(Debug, thiserror::Error)]
pub enum AssignError {
    #[error("the upper dir already has project id {0}")]
    AlreadySet(u32),
    /// Tagging would make renames or links into the upper dir fail with EXDEV.
    #[error("refused: {0}")]
    Refused(Refusal),
    #[error("no unused project id left in the range")]
    RangeExhausted,
    #[error("project quotas unavailable: {}", .0.as_str())]
    Unavailable(Unavailable),
    #[error("cannot set the project id: {0}")]
    Io(#[from] Errno),
}

/// Why [`assign`] leaves an upper dir alone although it has no id: once an
/// inheriting directory has the id, ext4 and XFS refuse (EXDEV) every rename or
/// link into it of an inode without that id, so everything in the upper and work
/// trees must be able to take it first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the work dir is not known")]
    NoWorkDir,
    #[error("the work dir is on another filesystem")]
    WorkElsewhere,
    #[error("{0} already has project id {1}")]
    OtherId(PathBuf, u32),
    /// A symlink, device node (a whiteout: the shared one in work/), FIFO or socket:
    /// cannot be opened to set the id.
    #[error("{0} is neither a directory nor a regular file")]
    Untaggable(PathBuf),
    #[error("{0} is more than 256 directories deep")]
    TooDeep(PathBuf),
}

impl Refusal {
    /// A short fixed name (for logging once per upper dir and reason).
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::NoWorkDir => "no_work_dir",
            Refusal::WorkElsewhere => "work_elsewhere",
            Refusal::OtherId(..) => "other_id",
            Refusal::Untaggable(_) => "untaggable",
            Refusal::TooDeep(_) => "too_deep",
        }
    }
}

impl AssignError {
    /// A short fixed name of the reason.
    pub fn kind(&self) -> &'static str {
        match self {
            AssignError::AlreadySet(_) => "already_set",
            AssignError::Refused(r) => r.kind(),
            AssignError::RangeExhausted => "range_exhausted",
            AssignError::Unavailable(u) => u.as_str(),
            AssignError::Io(_) => "io",
        }
    }
}

/// How long an upper dir whose assignment failed (or every upper dir, once the
/// range is exhausted) waits before [`assign`] is tried again: a try may read both
/// trees and make up to 10,000 `quotactl` calls.
pub const ASSIGN_RETRY: Duration = Duration::from_secs(3600);

/// Failed assignments: when to try again, and what was logged already.
#[derive(Debug, Default)]
pub struct AssignMemo {
    failed: HashMap<PathBuf, (&'static str, Instant)>,
    exhausted: Option<Instant>,
}

impl AssignMemo {
    /// Whether [`assign`] should be tried for `upper` now.
    pub fn due(&self, upper: &Path, now: Instant) -> bool {
        let waiting = |t: Instant| now.saturating_duration_since(t) < ASSIGN_RETRY;
        !self.exhausted.is_some_and(waiting) && !self.failed.get(upper).is_some_and(|(_, t)| waiting(*t))
    }

    /// Records a failure; true when it is news (to be logged): another reason than
    /// the last one for this upper dir, or the range exhausted again after a retry.
    pub fn failed(&mut self, upper: &Path, e: &AssignError, now: Instant) -> bool {
        self.failed.retain(|_, (_, t)| now.saturating_duration_since(*t) < 2 * ASSIGN_RETRY);
        let kind = e.kind();
        let news = match e {
            AssignError::RangeExhausted => {
                self.exhausted.replace(now).is_none_or(|t| t + ASSIGN_RETRY <= now)
            }
            _ => self.failed.get(upper).is_none_or(|(k, _)| *k != kind),
        };
        self.failed.insert(upper.to_owned(), (kind, now));
        news
    }

    /// Forgets `upper` (it got an id).
    pub fn succeeded(&mut self, upper: &Path) {
        self.failed.remove(upper);
        self.exhausted = None;
    }
}

/// An id nobody uses: nothing charged to it and no limit set.
fn is_free(q: &libc::dqblk) -> bool {
    [q.dqb_curspace, q.dqb_curinodes, q.dqb_bhardlimit, q.dqb_bsoftlimit, q.dqb_ihardlimit, q.dqb_isoftlimit]
        .iter()
        .all(|v| *v == 0)
}

/// The first pass of [`assign`]: sets nothing, fails on the first entry that
/// could not take the id (see [`Refusal`]); the roots must have id 0 too.
pub fn check_taggable(root: &Path, dev: u64) -> Result<(), AssignError> {
    let fd = open_dir(root)?;
    let st = rustix::fs::fstat(&fd)?;
    if st.st_dev != dev {
        return Err(AssignError::Refused(Refusal::WorkElsewhere));
    }
    check_dir(fd, root.to_owned(), dev, 0)
}

fn check_dir(fd: OwnedFd, path: PathBuf, dev: u64, depth: u32) -> Result<(), AssignError> {
    if depth > 256 {
        return Err(AssignError::Refused(Refusal::TooDeep(path)));
    }
    let id = get_fsx(fd.as_fd())?.fsx_projid;
    if id != 0 {
        return Err(AssignError::Refused(Refusal::OtherId(path, id)));
    }
    for entry in rustix::fs::Dir::read_from(&fd)? {
        let entry = entry?;
        let name = entry.file_name();
        if matches!(name.to_bytes(), b"." | b"..") {
            continue;
        }
        let sub = path.join(OsStr::from_bytes(name.to_bytes()));
        // Gone meanwhile: nothing to tag.
        let st = match statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        if st.st_dev != dev {
            continue; // a mount on it: neither tagged nor moved
        }
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                match openat2(&fd, name, flags, Mode::empty(), how) {
                    Ok(d) => check_dir(d, sub, dev, depth + 1)?,
                    Err(Errno::NOENT) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            FileType::RegularFile => {
                let p = match openat2(
                    &fd,
                    name,
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                    how,
                ) {
                    Ok(p) => p,
                    Err(Errno::NOENT) => continue,
                    Err(e) => return Err(e.into()),
                };
                use std::os::fd::AsRawFd;
                let reopen = format!("/proc/self/fd/{}", p.as_raw_fd());
                let f = rustix::fs::open(
                    reopen.as_str(),
                    OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                if FileType::from_raw_mode(rustix::fs::fstat(&f)?.st_mode) != FileType::RegularFile {
                    return Err(AssignError::Refused(Refusal::Untaggable(sub)));
                }
                let id = get_fsx(f.as_fd())?.fsx_projid;
                if id != 0 {
                    return Err(AssignError::Refused(Refusal::OtherId(sub, id)));
                }
            }
            _ => return Err(AssignError::Refused(Refusal::Untaggable(sub))),
        }
    }
    Ok(())
}

/// Gives `upper` and `work` an unused project id from `first..=last`, starting
/// the search at `*next` (advanced past the id taken); see the module doc.
///
/// Refuses unless the work dir is known and both trees hold only directories and
/// regular files without an id ([`check_taggable`], a first pass that sets
/// nothing). Tags the work dir first, then the upper dir: a copy-up is a rename
/// from the work dir into the upper dir, which the kernel refuses (EXDEV) while the
/// upper dir inherits an id its work dir does not have.
pub fn assign(
    upper: &Path,
    work: Option<&Path>,
    mountinfo: &Path,
    (first, last): (u32, u32),
    next: &mut u32,
) -> Result<Assigned, AssignError> {
    let fd = open_dir(upper)?;
    let st = rustix::fs::fstat(&fd)?;
    let fsx = get_fsx(fd.as_fd()).map_err(|_| AssignError::Unavailable(Unavailable::NoProjectIds))?;
    if fsx.fsx_projid != 0 {
        return Err(AssignError::AlreadySet(fsx.fsx_projid));
    }
    let work = work.ok_or(AssignError::Refused(Refusal::NoWorkDir))?;
    // Only where the quota can be read: an id nobody accounts is of no use.
    let mut probe_target = QuotaTarget {
        upper: upper.to_owned(),
        project_id: first,
        dev: st.st_dev,
        via: Via::Fd,
        layer: None,
        others: Vec::new(),
        covered: None,
        listings: Listings::default(),
    };
    probe_target.reach(mountinfo).map_err(AssignError::Unavailable)?;
    // The first pass, before the id search: sets nothing.
    check_taggable(work, st.st_dev)?;
    check_taggable(upper, st.st_dev)?;
    // Unused: nothing charged to it and no limit set (someone may have set limits
    // on an id before giving it to a directory).
    let free = |id: u32| probe_target.dqblk(id).map(|q| is_free(&q));
    let span = u64::from(last - first) + 1;
    let mut id = None;
    for i in 0..span.min(10_000) {
        let cand = first + ((u64::from(next.saturating_sub(first)) + i) % span) as u32;
        if free(cand).map_err(|e| AssignError::Unavailable(Unavailable::from_quotactl(e)))? {
            id = Some(cand);
            break;
        }
    }
    let id = id.ok_or(AssignError::RangeExhausted)?;
    *next = if id == last { first } else { id + 1 };
    let mut a = Assigned { project_id: id, ..Default::default() };
    let mut tagger = Tagger { id, dev: st.st_dev, a: &mut a };
    // The work dir first: see above.
    for root in [work, upper] {
        let fd = open_dir(root)?;
        tagger.dir(fd, 0)?;
    }
    Ok(a)
}

struct Tagger<'a> {
    id: u32,
    dev: u64,
    a: &'a mut Assigned,
}

impl Tagger<'_> {
    /// Sets the id on `fd` unless it has another one; false when it had.
    fn set(&mut self, fd: BorrowedFd<'_>, inherit: bool) -> Result<bool, Errno> {
        let mut x = get_fsx(fd)?;
        if x.fsx_projid != 0 && x.fsx_projid != self.id {
            self.a.foreign += 1;
            return Ok(false);
        }
        x.fsx_projid = self.id;
        if inherit {
            x.fsx_xflags |= FS_XFLAG_PROJINHERIT;
        }
        set_fsx(fd, x)?;
        self.a.tagged += 1;
        Ok(true)
    }

    fn dir(&mut self, fd: OwnedFd, depth: u32) -> Result<(), Errno> {
        if depth > 256 || !self.set(fd.as_fd(), true)? {
            return Ok(()); // another project's tree: left alone
        }
        for entry in rustix::fs::Dir::read_from(&fd)? {
            let entry = entry?;
            let name = entry.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            let Ok(st) = statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW) else { continue };
            if st.st_dev != self.dev {
                continue;
            }
            let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV;
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {
                    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                    if let Ok(sub) = openat2(&fd, name, flags, Mode::empty(), how) {
                        self.dir(sub, depth + 1)?;
                    }
                }
                FileType::RegularFile => {
                    // O_PATH first: a name swapped for a device meanwhile is never opened.
                    let Ok(p) = openat2(
                        &fd,
                        name,
                        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                        how,
                    ) else {
                        continue;
                    };
                    let Ok(pst) = rustix::fs::fstat(&p) else { continue };
                    if FileType::from_raw_mode(pst.st_mode) != FileType::RegularFile
                        || pst.st_ino != st.st_ino
                    {
                        continue;
                    }
                    use std::os::fd::AsRawFd;
                    let reopen = format!("/proc/self/fd/{}", p.as_raw_fd());
                    match rustix::fs::open(
                        reopen.as_str(),
                        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
                        Mode::empty(),
                    ) {
                        Ok(f) => {
                            self.set(f.as_fd(), false)?;
                        }
                        Err(_) => self.a.untaggable += 1,
                    }
                }
                _ => self.a.untaggable += 1,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::quota::sys::empty_dqblk;

    #[test]
    fn a_free_id_has_no_usage_and_no_limits() {
        let q = empty_dqblk();
        assert!(is_free(&q));
        for set in [
            |q: &mut libc::dqblk| q.dqb_curspace = 1,
            |q: &mut libc::dqblk| q.dqb_curinodes = 1,
            |q: &mut libc::dqblk| q.dqb_bhardlimit = 1,
            |q: &mut libc::dqblk| q.dqb_bsoftlimit = 1,
            |q: &mut libc::dqblk| q.dqb_ihardlimit = 1,
            |q: &mut libc::dqblk| q.dqb_isoftlimit = 1,
        ] {
            let mut q = empty_dqblk();
            set(&mut q);
            assert!(!is_free(&q), "{q:?}");
        }
    }

    /// The first pass of an assignment: only directories and regular files.
    #[test]
    fn only_directories_and_regular_files_can_take_an_id() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("upper");
        std::fs::create_dir_all(root.join("a/b")).expect("mkdir");
        std::fs::write(root.join("a/b/f"), b"x").expect("write");
        let dev = rustix::fs::stat(&root).expect("stat").st_dev;
        if get_fsx(open_dir(&root).expect("open").as_fd()).is_err() {
            eprintln!("skipped: no FS_IOC_FSGETXATTR here");
            return;
        }
        check_taggable(&root, dev).expect("dirs and a file");
        std::os::unix::fs::symlink("f", root.join("a/b/l")).expect("symlink");
        let e = check_taggable(&root, dev).expect_err("a symlink");
        assert!(matches!(&e, AssignError::Refused(Refusal::Untaggable(p)) if p.ends_with("a/b/l")), "{e:?}");
        std::fs::remove_file(root.join("a/b/l")).expect("rm");
        rustix::fs::mknodat(rustix::fs::CWD, root.join("fifo"), FileType::Fifo, Mode::RUSR, 0)
            .expect("mkfifo");
        let e = check_taggable(&root, dev).expect_err("a FIFO");
        assert_eq!(e.kind(), "untaggable", "{e}");
        let e = check_taggable(&root, dev + 1).expect_err("elsewhere");
        assert_eq!(e.kind(), "work_elsewhere");
    }

    #[test]
    fn no_assignment_without_the_work_dir() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mi = Path::new("/proc/self/mountinfo");
        match assign(tmp.path(), None, mi, (1000, 1099), &mut 1000) {
            // No project ids on this filesystem at all: nothing to refuse.
            Err(AssignError::Unavailable(_)) => {}
            r => assert!(matches!(r, Err(AssignError::Refused(Refusal::NoWorkDir))), "{r:?}"),
        }
    }

    #[test]
    fn failed_assignments_wait_and_log_once() {
        let mut m = AssignMemo::default();
        let (u, v) = (Path::new("/u"), Path::new("/v"));
        let t0 = Instant::now();
        let refused = AssignError::Refused(Refusal::NoWorkDir);
        assert!(m.due(u, t0));
        assert!(m.failed(u, &refused, t0), "first time: logged");
        assert!(!m.due(u, t0 + Duration::from_secs(60)), "not every walk");
        assert!(m.due(v, t0), "other upper dirs still tried");
        assert!(m.due(u, t0 + ASSIGN_RETRY));
        assert!(!m.failed(u, &refused, t0 + ASSIGN_RETRY), "same reason: not logged again");
        assert!(m.failed(u, &AssignError::Io(Errno::IO), t0 + ASSIGN_RETRY), "another reason");
        assert!(m.failed(v, &AssignError::RangeExhausted, t0), "exhausted: logged");
        assert!(!m.due(Path::new("/w"), t0 + Duration::from_secs(1)), "no search for anyone");
        let later = t0 + ASSIGN_RETRY;
        assert!(m.due(Path::new("/w"), later));
        assert!(!m.failed(Path::new("/w"), &AssignError::RangeExhausted, later - Duration::from_secs(1)));
        m.succeeded(u);
        assert!(m.due(u, t0 + ASSIGN_RETRY + Duration::from_secs(1)));
    }
}
