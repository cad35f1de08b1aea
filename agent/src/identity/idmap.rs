//! Whether an overlay's lower layers are idmapped: by the paths runtimes give
//! their idmapped binds (containerd's `ovl-idmapped*`, containers/storage's
//! `mapped/`), or by the `idmapped` option the kernel shows on the mount that
//! holds a lower (mountinfo, Linux 5.12+). Rules: diagnosis::rules
//! (`idmapped_lowers.*`).
//!
//! The kernel's view is taken from the mountinfo text discovery read for the
//! namespace of each new mount with lowers (read here only for a table without
//! it), and looked at only when the text holds `idmapped` at all. Runtimes detach their binds once the overlay is
//! mounted, so the path rules are what finds theirs.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::discovery::{mountinfo, Device, LayerPath, MountTable, NsId};

/// Whether a lower path is one of a runtime's idmapped binds.
pub fn runtime_idmapped(p: &Path) -> bool {
    let parts: Vec<&[u8]> = p.iter().map(|c| c.as_bytes()).collect();
    // idmapped_lowers.containerd
    parts.iter().any(|c| c.starts_with(b"ovl-idmapped"))
        // idmapped_lowers.containers_storage: <storage>/overlay/<layer>/mapped/<n>
        || parts.windows(3).any(|w| {
            w[0] == b"overlay" && w[1].len() == 64 && w[1].iter().all(u8::is_ascii_hexdigit) && w[2] == b"mapped"
        })
}

pub use crate::discovery::mountinfo::idmapped_mounts as mountpoints;

/// Whether `lower` lies on an idmapped mount of `mounts`: the longest
/// mountpoint that holds it decides (idmapped_lowers.kernel).
pub fn on_idmapped_mount(mounts: &[(PathBuf, bool)], lower: &Path) -> bool {
    mounts
        .iter()
        .filter(|(mp, _)| lower.starts_with(mp))
        .max_by_key(|(mp, _)| mp.as_os_str().len())
        .is_some_and(|(_, idmapped)| *idmapped)
}

/// Whether each overlay of `table` that has lowers has an idmapped one, by
/// device, with the mount id it was decided for. A mount decided in
/// `previous` (same device, same mount id) keeps its answer: the lowers of a
/// mounted overlay do not change, and a runtime detaches its idmapped binds
/// once the overlay is mounted, so a namespace's mountinfo is read only for
/// mounts not seen before.
pub fn idmapped_lowers(table: &MountTable, procfs: &Path, previous: Option<&Decided>) -> Decided {
    let mut by_ns: BTreeMap<Option<NsId>, Vec<(PathBuf, bool)>> = BTreeMap::new();
    let mut out = Decided::new();
    for (dev, m) in &table.mounts {
        if let Some(&(id, known)) = previous.and_then(|p| p.get(dev)).filter(|(id, _)| *id == m.mount_id) {
            out.insert(*dev, (id, known));
            continue;
        }
        let lowers: Vec<&Path> =
            m.options.lower.iter().chain(&m.options.data).filter_map(LayerPath::absolute).collect();
        if lowers.is_empty() {
            continue;
        }
        if lowers.iter().any(|l| runtime_idmapped(l)) {
            out.insert(*dev, (m.mount_id, true));
            continue;
        }
        let ns = m.namespace;
        let mounts = by_ns.entry(ns.map(|n| n.id)).or_insert_with(|| {
            // The lists discovery took from the text it read; a table made
            // otherwise (tests, `identity-bench`) has none: read it here.
            if let Some(known) = table.idmapped_mounts.get(&ns.map(|n| n.id)) {
                return known.clone();
            }
            let path = match ns {
                Some(ns) => ns.proc_path(procfs, "mountinfo"),
                None => mountinfo::mountinfo_path(procfs),
            };
            read_capped(&path).map(|t| mountpoints(&t)).unwrap_or_default()
        });
        out.insert(*dev, (m.mount_id, lowers.iter().any(|l| on_idmapped_mount(mounts, l))));
    }
    out
}

/// By device: the mount id the answer was decided for, and whether a lower is idmapped.
pub type Decided = BTreeMap<Device, (i32, bool)>;

fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(mountinfo::MAX_BYTES).read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const L64: &str = "346b03d8cef7525285aa40228ffb61f482e2bc806353b94d8af3476e238b08b9";

    #[test]
    fn runtime_binds_are_told_by_their_paths() {
        assert!(runtime_idmapped(Path::new("/tmp/ovl-idmapped823885363/0")));
        assert!(runtime_idmapped(Path::new(&format!("/var/lib/containers/storage/overlay/{L64}/mapped/0"))));
        assert!(!runtime_idmapped(Path::new(&format!("/var/lib/containers/storage/overlay/{L64}/diff"))));
        assert!(!runtime_idmapped(Path::new("/srv/mapped/0")), "mapped/ outside a layer");
        assert!(!runtime_idmapped(Path::new("/var/lib/containerd/snapshots/12/fs")));
    }

    #[test]
    fn the_longest_mountpoint_holding_a_lower_decides() {
        let text = b"27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
            90 27 0:60 / /srv/idm rw,relatime,idmapped - tmpfs tmpfs rw\n\
            91 90 0:61 / /srv/idm/plain rw,relatime - tmpfs tmpfs rw\n\
            92 27 0:62 / /srv/with\\040space rw,idmapped - tmpfs tmpfs rw\n";
        let m = mountpoints(text);
        assert_eq!(m.len(), 4);
        assert!(on_idmapped_mount(&m, Path::new("/srv/idm/lower")));
        assert!(!on_idmapped_mount(&m, Path::new("/srv/idm/plain/lower")), "a plain mount over it");
        assert!(!on_idmapped_mount(&m, Path::new("/srv/idmx/lower")), "a prefix that is no parent");
        assert!(on_idmapped_mount(&m, Path::new("/srv/with space/l")));
        assert!(!on_idmapped_mount(&m, Path::new("/var/l")));
        // The idmapped flag of a superblock option is not the mount's.
        assert!(mountpoints(b"27 1 254:0 / / rw - ext4 /dev/vda rw,idmappedx\n").iter().all(|(_, i)| !i));
        assert!(mountpoints(b"27 1 254:0 / / rw - ext4 /dev/vda rw\n").is_empty());
    }
}
