//! Entry classification: the kind of one upper-dir entry from its stat and, where
//! the directory's marks say it may matter, its overlay xattrs (see the module doc
//! of `walk`, "Counting" and "Cost of a first walk").

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{FileType, Stat};
use rustix::io::Errno;

use super::cache::{ctime, kind_of, mtime, IS_DIR, LINKED, MARKS_CHILDREN, MOUNTED, WHITEOUT_DEV};
use super::{Pending, Walker, XattrAt};
use crate::scan::{EntryKind, ErrorReason};

/// What the overlay xattrs of one entry say.
#[derive(Debug, Default, Clone, Copy)]
struct OverlayXattrs {
    origin: bool,
    metacopy: bool,
    whiteout: bool,
    opaque: bool,
    /// `impure` or any `opaque` value: children may carry overlay xattrs.
    marks_children: bool,
}

impl Walker<'_> {
    /// Counts and classifies one entry of the directory `p`; `prev` is its ctime
    /// and marks at the last scan. Returns what to cache for it; `None` when it
    /// went away between its stat and its xattrs (counted once, as `vanished`).
    pub(super) fn entry(
        &mut self,
        at: XattrAt,
        p: &Pending,
        name: &CStr,
        st: &Stat,
        prev: Option<(i64, u8)>,
        stack: &mut Vec<Pending>,
    ) -> Option<(i64, u8)> {
        let ct = ctime(st);
        if st.st_dev != self.root_dev {
            // A mountpoint inside the upper dir: never leave its filesystem.
            return Some((ct, MOUNTED));
        }
        let ftype = FileType::from_raw_mode(st.st_mode);
        let is_dir = ftype == FileType::Directory;
        let linked = !is_dir && st.st_nlink > 1;
        let again = if linked { self.seen.get(&st.st_ino).copied() } else { None };
        let reuse = prev.filter(|&(c, m)| c == ct && m & MOUNTED == 0 && (m & IS_DIR != 0) == is_dir);
        let (kind, marks_children) = if let Some((_, m)) = reuse {
            (kind_of(m), m & MARKS_CHILDREN != 0)
        } else if let Some(kind) = again {
            (kind, false) // another name of an inode classified in this scan
        } else if ftype == FileType::CharacterDevice && st.st_rdev == 0 {
            (EntryKind::Whiteout, false)
        } else if !is_dir && !p.read_children {
            (EntryKind::Created, false)
        } else {
            self.by_xattrs(at, name, ftype)?
        };
        self.result.entries[kind as usize] += 1;
        if again.is_none() {
            // The first name of this inode in this scan: its bytes count once.
            if linked {
                self.seen.insert(st.st_ino, kind);
            }
            self.account(st);
            if kind == EntryKind::CopiedUp {
                self.result.copied_up_bytes += st.st_size.max(0) as u64;
            }
            if matches!(kind, EntryKind::CopiedUp | EntryKind::Metacopy) {
                self.copied.insert(st.st_ino);
            }
        }
        if is_dir {
            stack.push(Pending {
                rel: p.rel.join(std::ffi::OsStr::from_bytes(name.to_bytes())),
                ino: st.st_ino,
                mtime: mtime(st),
                ctime: ct,
                read_children: marks_children,
            });
        }
        if ftype == FileType::CharacterDevice && st.st_rdev == 0 && st.st_blocks == 0 && st.st_size == 0 {
            let linked = if st.st_nlink > 1 { LINKED } else { 0 };
            return Some((st.st_ino as i64, EntryKind::Whiteout as u8 | WHITEOUT_DEV | linked));
        }
        let mut m = kind as u8;
        if is_dir {
            m |= IS_DIR;
        }
        if marks_children {
            m |= MARKS_CHILDREN;
        }
        Some((ct, m))
    }

    /// The kind of `name` from its overlay xattrs, and whether its children may
    /// carry some; `None` when it went away.
    fn by_xattrs(&mut self, at: XattrAt, name: &CStr, ftype: FileType) -> Option<(EntryKind, bool)> {
        let x = self.xattrs(at, name)?;
        let kind = match ftype {
            FileType::Directory if x.opaque => EntryKind::OpaqueDir,
            FileType::Directory => EntryKind::Dir,
            _ if x.whiteout => EntryKind::Whiteout,
            _ if x.metacopy => EntryKind::Metacopy,
            _ if x.origin => EntryKind::CopiedUp,
            _ => EntryKind::Created,
        };
        Some((kind, x.marks_children))
    }

    /// Reads the overlay xattrs of `name`; `None` when it went away (counted).
    fn xattrs(&mut self, at: XattrAt, name: &CStr) -> Option<OverlayXattrs> {
        self.result.xattr_reads += 1;
        let full;
        let path: &CStr = match at {
            XattrAt::Cwd => name,
            XattrAt::Fd(fd) => {
                let mut p = format!("/proc/self/fd/{fd}/").into_bytes();
                p.extend_from_slice(name.to_bytes());
                full = CString::new(p).ok()?;
                &full
            }
        };
        let list = loop {
            match rustix::fs::llistxattr(path, &mut self.xattr_buf[..]) {
                Ok(n) => break &self.xattr_buf[..n],
                Err(Errno::RANGE) if self.xattr_buf.len() < 1 << 20 => {
                    let n = self.xattr_buf.len() * 4;
                    self.xattr_buf.resize(n, 0);
                }
                Err(Errno::NOTSUP) => return Some(OverlayXattrs::default()),
                Err(e) => {
                    self.error(e);
                    if ErrorReason::from_errno(e) == ErrorReason::Vanished {
                        return None;
                    }
                    return Some(OverlayXattrs::default());
                }
            }
        };
        let prefix = self.ns.prefix();
        let mut x = OverlayXattrs::default();
        for attr in list.split(|&b| b == 0) {
            let Some(suffix) = attr.strip_prefix(prefix) else { continue };
            match suffix {
                b"origin" => x.origin = true,
                b"metacopy" => x.metacopy = true,
                b"whiteout" => x.whiteout = true,
                b"opaque" => x.opaque = true, // value checked below
                b"impure" => x.marks_children = true,
                _ => {}
            }
        }
        x.marks_children |= x.opaque;
        if x.opaque {
            // "y": opaque dir; "x" (6.7+): a dir that merely holds xattr whiteouts.
            let mut name_buf = prefix.to_vec();
            name_buf.extend_from_slice(b"opaque");
            let mut val = [0u8; 8];
            x.opaque = match CString::new(name_buf) {
                Ok(attr) => {
                    matches!(rustix::fs::lgetxattr(path, attr.as_c_str(), &mut val[..]), Ok(n) if &val[..n] == b"y")
                }
                Err(_) => false,
            };
        }
        Some(x)
    }
}
