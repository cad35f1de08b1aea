//! Where a mount's runtime state is read: under the host's root
//! (`discovery.rootfs`) for a mount of the reference namespace, under
//! `/proc/<pid>/root` for a mount of another namespace.
//!
//! Another namespace's files belong to whoever made it (an unprivileged user
//! owns a rootless podman's storage), so reads there are confined:
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` resolves every path, `..`
//! and absolute symlinks included, inside that namespace's root; only regular
//! files are read (opened `O_NONBLOCK`, so a FIFO planted where a state file
//! should be cannot block discovery), and at most [`MAX_FILE`] bytes of them.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use std::os::unix::ffi::OsStrExt as _;

use rustix::fs::{openat2, FileType, Mode, OFlags, ResolveFlags};

use crate::discovery::MountNs;

/// The largest state file read (containers.json of thousands of containers
/// stays well below it).
pub const MAX_FILE: u64 = 16 << 20;

/// A root directory state files are read under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRoot {
    dir: PathBuf,
    /// Resolve inside `dir` (another namespace's root), not through it.
    confined: bool,
}

impl StateRoot {
    /// The host's root as the agent sees it.
    pub fn host(rootfs: &Path) -> StateRoot {
        StateRoot { dir: rootfs.to_owned(), confined: false }
    }

    /// The root of another mount namespace, through one of its processes.
    pub fn namespace(procfs: &Path, ns: MountNs) -> StateRoot {
        StateRoot { dir: ns.proc_path(procfs, "root"), confined: true }
    }

    /// `p` (absolute in the mount's namespace) as a path of the agent's.
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p.trim_start_matches('/'))
    }

    fn open(&self, p: &str, flags: OFlags) -> std::io::Result<OwnedFd> {
        // openat2 refuses O_PATH with flags open(2) would ignore (O_NONBLOCK).
        let extra =
            if flags.contains(OFlags::PATH) { OFlags::empty() } else { OFlags::NONBLOCK | OFlags::NOCTTY };
        let flags = flags | OFlags::CLOEXEC | extra;
        if !self.confined {
            return Ok(rustix::fs::open(self.path(p), flags, Mode::empty())?);
        }
        let root =
            rustix::fs::open(&self.dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        let how = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
        Ok(openat2(&root, p.trim_start_matches('/'), flags, Mode::empty(), how)?)
    }

    /// A regular file's bytes (at most [`MAX_FILE`]).
    pub fn read(&self, p: &str) -> std::io::Result<Vec<u8>> {
        let fd = self.open(p, OFlags::RDONLY)?;
        let st = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(std::io::Error::other(format!("{p}: not a regular file")));
        }
        let mut bytes = Vec::new();
        std::fs::File::from(fd).take(MAX_FILE + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_FILE {
            return Err(std::io::Error::other(format!("{p}: larger than {MAX_FILE} bytes")));
        }
        Ok(bytes)
    }

    /// Whether `p` exists (not following a final symlink).
    pub fn exists(&self, p: &str) -> bool {
        self.open(p, OFlags::PATH | OFlags::NOFOLLOW).is_ok()
    }

    /// The names in directory `p`.
    pub fn list(&self, p: &str) -> std::io::Result<Vec<OsString>> {
        let fd = self.open(p, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let dir = rustix::fs::Dir::read_from(&fd)?;
        Ok(dir
            .flatten()
            .map(|e| OsString::from(std::ffi::OsStr::from_bytes(e.file_name().to_bytes())))
            .filter(|n| n != "." && n != "..")
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::CWD;

    /// A namespace-like root: state files, and traps a hostile owner could set.
    #[test]
    fn confined_reads_stay_inside_and_read_only_regular_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("state")).expect("mkdir");
        std::fs::write(root.join("state/ok.json"), b"{}").expect("write");
        std::fs::write(tmp.path().join("outside"), b"secret").expect("write");
        std::os::unix::fs::symlink("/outside", root.join("state/abs")).expect("symlink");
        std::os::unix::fs::symlink("../../outside", root.join("state/rel")).expect("symlink");
        rustix::fs::mknodat(CWD, root.join("state/fifo"), FileType::Fifo, Mode::RUSR | Mode::WUSR, 0)
            .expect("mkfifo");
        let r = StateRoot { dir: root.clone(), confined: true };
        assert_eq!(r.read("/state/ok.json").expect("read"), b"{}");
        // Absolute and relative escapes resolve inside the root, where nothing is.
        assert!(r.read("/state/abs").is_err());
        assert!(r.read("/state/rel").is_err());
        assert!(r.read("/../outside").is_err());
        // A FIFO neither blocks nor is read.
        let fifo = r.read("/state/fifo").expect_err("a fifo is no state file");
        assert!(fifo.to_string().contains("not a regular file"), "{fifo}");
        assert!(r.exists("/state/abs") && !r.exists("/nope"));
        let mut names = r.list("/state").expect("list");
        names.sort();
        assert_eq!(names, ["abs", "fifo", "ok.json", "rel"]);
        // The host root (unconfined) follows the host's own symlinks.
        assert_eq!(StateRoot::host(&root).read("/state/ok.json").expect("read"), b"{}");
    }
}
