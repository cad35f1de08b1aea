//! Discovery: which overlay superblocks exist, where they are mounted and how they
//! are layered. Produces a [`MountTable`]; knows nothing about identity, scanning or
//! metrics.

pub mod mountinfo;
pub mod namespaces;
pub mod node;
pub mod options;
pub mod tables;
pub mod watch;

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use namespaces::{Census, MountNs, NsId};
pub use node::{NodeDiscovery, Reach};
pub use options::{LayerPath, OverlayOptions};
pub use tables::{Dirty, Tables};

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: larger than {max} bytes: not read")]
    TooLarge { path: PathBuf, max: u64 },
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

/// One overlay superblock with all the places it is mounted, in every mount
/// namespace the agent reads.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Mount {
    pub mount_id: i32,
    pub device: Device,
    /// The primary mountpoint, as seen in its own namespace: where the mounter
    /// made it ([`choose_primary`]). Stable while that mount lives.
    #[serde(serialize_with = "ser_path")]
    pub mountpoint: PathBuf,
    /// The namespace of the primary mountpoint; `None`: the reference (host)
    /// namespace.
    pub namespace: Option<MountNs>,
    /// Further mountpoints of the same superblock in the primary's namespace
    /// (bind mounts).
    #[serde(serialize_with = "ser_paths")]
    pub other_mountpoints: Vec<PathBuf>,
    /// Places in other namespaces (a container's root `/`, a bind into a
    /// container, a namespace copied from the mounter's).
    pub elsewhere: usize,
    pub source: String,
    pub read_only: bool,
    pub options: OverlayOptions,
}

impl Mount {
    pub fn mountpoint_label(&self) -> String {
        path_label(&self.mountpoint)
    }

    /// The `mntns` label: the namespace's inode number, "" in the reference namespace.
    pub fn mntns_label(&self) -> String {
        self.namespace.map(|n| n.id.to_string()).unwrap_or_default()
    }

    /// The labels that name the mount in every per-mount series: `mountpoint`, `mntns`.
    pub fn labels(&self) -> MountLabel {
        MountLabel { mountpoint: self.mountpoint_label(), mntns: self.mntns_label() }
    }

    /// Every place: 1 + bind mounts + places in other namespaces.
    pub fn places(&self) -> usize {
        1 + self.other_mountpoints.len() + self.elsewhere
    }

    /// The upper dir's path in the mount's namespace, when there is one and it
    /// can be located.
    pub fn upper_dir(&self) -> Option<&Path> {
        self.options.upper.as_ref().and_then(LayerPath::absolute)
    }

    /// The upper dir as the node names it, with its namespace.
    pub fn upper(&self) -> Option<UpperDir> {
        let path = self.upper_dir()?.to_owned();
        Some(UpperDir { mntns: self.namespace.map(|n| n.id), path })
    }
}

/// An upper dir as the node names it: its path in the mount namespace of the
/// mounts that use it (`None`: the reference namespace). One path can name two
/// directories in two namespaces (two kind nodes both number containerd's
/// snapshots from 1), so the namespace is part of the name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UpperDir {
    pub mntns: Option<NsId>,
    pub path: PathBuf,
}

impl UpperDir {
    /// An upper dir of the reference namespace.
    pub fn host(path: impl Into<PathBuf>) -> UpperDir {
        UpperDir { mntns: None, path: path.into() }
    }
}

impl fmt::Display for UpperDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mntns {
            None => write!(f, "{}", self.path.display()),
            Some(ns) => write!(f, "{} (mntns {ns})", self.path.display()),
        }
    }
}

/// What names a mount in its series: the mountpoint in its own namespace, and
/// the namespace (empty for the reference one, so host mounts keep the labels
/// they always had). Two superblocks mounted at the same path in two namespaces
/// differ by `mntns`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MountLabel {
    pub mountpoint: String,
    pub mntns: String,
}

impl MountLabel {
    /// The label of counts whose device is in no mount table.
    pub fn unknown() -> Self {
        MountLabel { mountpoint: UNKNOWN_MOUNTPOINT.to_owned(), mntns: String::new() }
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
    /// The file that was read (the reference namespace's).
    pub source: PathBuf,
    /// Other mount namespaces' tables were read too.
    pub namespaces_read: bool,
    /// By namespace read (`None`: the reference one), its mounts with whether
    /// each is idmapped, from the same text as the lines
    /// ([`mountinfo::idmapped_mounts`]; empty when none is).
    pub idmapped_mounts: BTreeMap<Option<NsId>, mountinfo::IdmappedMounts>,
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

    /// The `mountpoint` and `mntns` labels of a device ([`MountLabel::unknown`] when absent).
    pub fn labels_of(&self, dev: Device) -> MountLabel {
        self.mounts.get(&dev).map(Mount::labels).unwrap_or_else(MountLabel::unknown)
    }
}

/// The order in which a superblock's places are taken as its primary mountpoint:
/// not the root of a namespace (a container sees its overlay at `/`: the place
/// its mounter made is elsewhere), the whole overlay rather than a bind of a
/// subdirectory, the reference namespace first; ties go to the first line of
/// the table. mountinfo lists a namespace's mounts in the order they were made,
/// while mount ids are reused lowest-free-first: a bind made after the overlay
/// often has the lower id.
fn place_rank(l: &mountinfo::OverlayLine) -> (bool, bool, bool) {
    (l.mountpoint == Path::new("/"), l.root != "/", l.namespace.is_some())
}

/// The primary place of one superblock: the previous primary while it is still
/// a place (a label does not move when another namespace appears), else the
/// first by [`place_rank`] (`min_by_key` keeps the first of equals).
fn choose_primary(places: &[mountinfo::OverlayLine], previous: Option<&Mount>) -> usize {
    let same = |l: &mountinfo::OverlayLine, m: &Mount| {
        l.mountpoint == m.mountpoint && l.namespace.map(|n| n.id) == m.namespace.map(|n| n.id)
    };
    if let Some(i) = previous.and_then(|m| places.iter().position(|l| same(l, m))) {
        return i;
    }
    (0..places.len()).min_by_key(|&i| place_rank(&places[i])).unwrap_or(0)
}

/// Groups mountinfo lines (of one or several namespaces) by superblock, keeping
/// the mountpoints `select` accepts: one [`Mount`] per device. `previous` is the
/// last table, whose primary places are kept where they still exist.
pub fn group_by_superblock(
    lines: Vec<mountinfo::OverlayLine>,
    select: impl Fn(&str) -> bool,
    previous: Option<&MountTable>,
) -> BTreeMap<Device, Mount> {
    let mut by_dev: BTreeMap<Device, Vec<mountinfo::OverlayLine>> = BTreeMap::new();
    for l in lines {
        if select(&path_label(&l.mountpoint)) {
            by_dev.entry(l.device).or_default().push(l);
        }
    }
    by_dev
        .into_iter()
        .map(|(dev, mut places)| {
            let primary =
                places.swap_remove(choose_primary(&places, previous.and_then(|t| t.mounts.get(&dev))));
            let ns = primary.namespace.map(|n| n.id);
            let (same, elsewhere): (Vec<_>, Vec<_>) =
                places.into_iter().partition(|l| l.namespace.map(|n| n.id) == ns);
            let mut others: Vec<PathBuf> = same.into_iter().map(|l| l.mountpoint).collect();
            others.sort();
            others.dedup();
            others.retain(|p| *p != primary.mountpoint);
            let mount = Mount {
                mount_id: primary.mount_id,
                device: dev,
                mountpoint: primary.mountpoint,
                namespace: primary.namespace,
                other_mountpoints: others,
                elsewhere: elsewhere.len(),
                source: primary.source,
                read_only: primary.read_only,
                options: primary.options,
            };
            (dev, mount)
        })
        .collect()
}

/// Reads the mount table of the reference namespace only (pid 1's, else the
/// agent's own), as the agent did before it read other namespaces.
pub fn discover(procfs: &Path, select: impl Fn(&str) -> bool) -> Result<MountTable, DiscoveryError> {
    let source = mountinfo::mountinfo_path(procfs);
    let text = mountinfo::read_text(&source)?;
    let (lines, bad_lines) = mountinfo::parse(&text);
    Ok(MountTable {
        mounts: group_by_superblock(lines, select, None),
        bad_lines,
        source,
        namespaces_read: false,
        idmapped_mounts: [(None, mountinfo::idmapped_mounts(&text))].into(),
    })
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
        let t = group_by_superblock(lines, |_| true, None);
        assert_eq!(t.len(), 2);
        let m = &t[&Device { major: 0, minor: 60 }];
        assert_eq!(m.mountpoint, PathBuf::from("/merged"));
        assert_eq!(m.mount_id, 70);
        assert_eq!(m.other_mountpoints, vec![PathBuf::from("/again"), PathBuf::from("/bind/sub")]);
        let t = group_by_superblock(mountinfo::parse(text.as_bytes()).0, |m| m != "/other", None);
        assert_eq!(t.len(), 1);
    }

    /// Mount ids are reused lowest-free-first: a bind made after the overlay can
    /// have the lower id. The table's order is the order mounts were made.
    #[test]
    fn a_later_bind_with_a_reused_lower_id_does_not_take_the_label() {
        let text = "\
48 27 0:60 / /made-first rw - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
45 27 0:60 / /bind-made-later rw - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
";
        let t = group_by_superblock(mountinfo::parse(text.as_bytes()).0, |_| true, None);
        let m = &t[&Device { major: 0, minor: 60 }];
        assert_eq!((m.mountpoint.as_path(), m.mount_id), (Path::new("/made-first"), 48));
        assert_eq!(m.other_mountpoints, vec![PathBuf::from("/bind-made-later")]);
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
