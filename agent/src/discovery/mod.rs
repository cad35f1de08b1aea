//! Discovery: which overlay superblocks exist, where they are mounted and how they
//! are layered. Produces a [`MountTable`]; knows nothing about identity, scanning or
//! metrics.

pub mod mountinfo;
pub mod options;
pub mod watch;

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use options::{LayerPath, OverlayOptions};

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
}

/// A superblock's device number, as mountinfo's `major:minor` field (and as the
/// kernel's `s_dev`: major = s_dev >> 20, minor = s_dev & 0xfffff).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Device {
    pub major: u32,
    pub minor: u32,
}

impl Device {
    /// From a kernel-internal `dev_t` (`s_dev`, as the probes' map keys and
    /// trace events carry it): the one decoder of a kernel device number.
    pub fn from_kernel(dev: u32) -> Self {
        Device { major: dev >> 20, minor: dev & 0xfffff }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid major:minor {s:?}");
        let (a, b) = s.split_once(':').ok_or_else(bad)?;
        Ok(Device { major: a.parse().map_err(|_| bad())?, minor: b.parse().map_err(|_| bad())? })
    }
}

/// One overlay superblock with all the places it is mounted.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Mount {
    pub mount_id: i32,
    pub device: Device,
    /// The primary mountpoint: the lowest mount id among the mounts of the whole
    /// overlay (root `/`), else the lowest mount id. Stable while that mount lives.
    #[serde(serialize_with = "ser_path")]
    pub mountpoint: PathBuf,
    /// Further mountpoints of the same superblock (bind mounts, other namespaces).
    #[serde(serialize_with = "ser_paths")]
    pub other_mountpoints: Vec<PathBuf>,
    pub source: String,
    pub read_only: bool,
    pub options: OverlayOptions,
}

impl Mount {
    pub fn mountpoint_label(&self) -> String {
        path_label(&self.mountpoint)
    }

    /// The upper dir, when there is one and it can be located.
    pub fn upper_dir(&self) -> Option<&Path> {
        self.options.upper.as_ref().and_then(LayerPath::absolute)
    }
}

fn ser_path<S: serde::Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path_label(p))
}

fn ser_paths<S: serde::Serializer>(ps: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ps.iter().map(|p| path_label(p)))
}

/// All overlay superblocks, keyed by device.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MountTable {
    pub mounts: BTreeMap<Device, Mount>,
    /// mountinfo lines that could not be parsed in the last read.
    pub bad_lines: Vec<mountinfo::BadLine>,
    /// The file that was read.
    pub source: PathBuf,
}

/// The `mountpoint` label of counts whose device is not in the mount table: the
/// mount went away between the kernel's count and the scrape, or the discovery
/// filters leave it out. Counts of several such devices add up under it.
pub const UNKNOWN_MOUNTPOINT: &str = "unknown";

impl MountTable {
    /// The `mountpoint` label of a device: its mount's, else [`UNKNOWN_MOUNTPOINT`].
    pub fn label_of(&self, dev: Device) -> String {
        self.mounts.get(&dev).map(Mount::mountpoint_label).unwrap_or_else(|| UNKNOWN_MOUNTPOINT.to_owned())
    }
}

/// Groups mountinfo lines by superblock, keeping the mountpoints `select` accepts:
/// one [`Mount`] per device, its primary mountpoint chosen as [`Mount::mountpoint`] says.
pub fn group_by_superblock(
    lines: Vec<mountinfo::OverlayLine>,
    select: impl Fn(&str) -> bool,
) -> BTreeMap<Device, Mount> {
    let mut by_dev: BTreeMap<Device, Vec<mountinfo::OverlayLine>> = BTreeMap::new();
    for l in lines {
        if select(&path_label(&l.mountpoint)) {
            by_dev.entry(l.device).or_default().push(l);
        }
    }
    by_dev
        .into_iter()
        .filter_map(|(dev, mut ls)| {
            ls.sort_by_key(|l| (l.root != "/", l.mount_id));
            let mut it = ls.into_iter();
            let first = it.next()?;
            let mut others: Vec<PathBuf> = it.map(|l| l.mountpoint).collect();
            others.sort();
            others.dedup();
            others.retain(|p| *p != first.mountpoint);
            Some((
                dev,
                Mount {
                    mount_id: first.mount_id,
                    device: dev,
                    mountpoint: first.mountpoint,
                    other_mountpoints: others,
                    source: first.source,
                    read_only: first.read_only,
                    options: first.options,
                },
            ))
        })
        .collect()
}

/// Reads the mount table under a procfs root.
pub fn discover(procfs: &Path, select: impl Fn(&str) -> bool) -> Result<MountTable, DiscoveryError> {
    let source = mountinfo::mountinfo_path(procfs);
    let (lines, bad_lines) = mountinfo::read(&source)?;
    Ok(MountTable { mounts: group_by_superblock(lines, select), bad_lines, source })
}

/// A path as a Prometheus label value: UTF-8 kept as is, every other byte as `\xNN`,
/// so distinct paths never collide into one label value.
pub fn path_label(p: &Path) -> String {
    let bytes = p.as_os_str().as_bytes();
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => {
            let mut out = String::with_capacity(bytes.len() + 8);
            for chunk in bytes.utf8_chunks() {
                out.push_str(chunk.valid());
                for b in chunk.invalid() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_per_superblock_with_stable_primary() {
        let text = "\
90 27 0:60 /sub /bind/sub rw - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
70 27 0:60 / /merged rw - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
80 27 0:60 / /again rw - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
71 27 0:61 / /other rw - overlay overlay rw,lowerdir=/l2,upperdir=/u2,workdir=/w2
";
        let (lines, _) = mountinfo::parse(text.as_bytes());
        let t = group_by_superblock(lines, |_| true);
        assert_eq!(t.len(), 2);
        let m = &t[&Device { major: 0, minor: 60 }];
        assert_eq!(m.mountpoint, PathBuf::from("/merged"));
        assert_eq!(m.mount_id, 70);
        assert_eq!(m.other_mountpoints, vec![PathBuf::from("/again"), PathBuf::from("/bind/sub")]);
        let t = group_by_superblock(mountinfo::parse(text.as_bytes()).0, |m| m != "/other");
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn device_numbers() {
        assert_eq!("0:44".parse::<Device>(), Ok(Device { major: 0, minor: 44 }));
        assert!("044".parse::<Device>().is_err());
        assert_eq!(Device::from_kernel((8 << 20) | 3), Device { major: 8, minor: 3 });
    }

    #[test]
    fn labels_escape_invalid_utf8_only() {
        use std::os::unix::ffi::OsStrExt;
        let p = Path::new(std::ffi::OsStr::from_bytes(b"/m/\xff\"x\""));
        assert_eq!(path_label(p), "/m/\\xff\"x\"");
        assert_eq!(path_label(Path::new("/m/caf\u{e9}")), "/m/caf\u{e9}");
    }
}
