//! Reading mountinfo: the procfs crate parses each line's structure; two fields it
//! cannot represent faithfully are taken from the raw bytes of the same line:
//! the mountpoint (procfs neither decodes `\040`-style escapes nor keeps non-UTF-8
//! bytes) and the superblock options (procfs folds them into a HashMap, which loses
//! the order and the repeats of `lowerdir+=`/`datadir+=`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::namespaces::MountNs;
use super::options::{unescape_octal, unescape_octal_bytes, OverlayOptions};
use super::{Device, DiscoveryError};

/// One overlay line of mountinfo.
#[derive(Debug, Clone, PartialEq)]
pub struct OverlayLine {
    pub mount_id: i32,
    pub device: Device,
    /// Path inside the overlay that is mounted here (`/` unless a bind of a subdir).
    pub root: String,
    pub mountpoint: PathBuf,
    pub source: String,
    pub read_only: bool,
    pub options: OverlayOptions,
    /// The mount namespace whose table holds the line; `None`: the reference
    /// (host) namespace, or a table read without namespaces.
    pub namespace: Option<MountNs>,
}

/// A line that could not be parsed: kept for a log line and a metric, never fatal.
#[derive(Debug, Clone, PartialEq)]
pub struct BadLine {
    pub line: usize,
    pub message: String,
}

/// Which mountinfo file to read under a procfs root: the host's view (pid 1) when
/// visible, else our own.
pub fn mountinfo_path(procfs: &Path) -> PathBuf {
    let init = procfs.join("1/mountinfo");
    if init.exists() {
        init
    } else {
        procfs.join("self/mountinfo")
    }
}

/// The largest mount table read (another namespace's table is anyone's to grow:
/// an unprivileged user can make one of millions of mounts). 10,000 mounts take
/// about 2 MiB.
pub const MAX_BYTES: u64 = 64 << 20;

pub fn read(path: &Path) -> Result<(Vec<OverlayLine>, Vec<BadLine>), DiscoveryError> {
    Ok(parse(&read_text(path)?))
}

/// The text of a mount table, at most [`MAX_BYTES`].
pub fn read_text(path: &Path) -> Result<Vec<u8>, DiscoveryError> {
    use std::io::Read;
    let err = |source| DiscoveryError::Read { path: path.to_owned(), source };
    let mut bytes = Vec::new();
    std::fs::File::open(path).and_then(|f| f.take(MAX_BYTES + 1).read_to_end(&mut bytes)).map_err(err)?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(DiscoveryError::TooLarge { path: path.to_owned(), max: MAX_BYTES });
    }
    Ok(bytes)
}

/// Every mountpoint of a table, each with whether the mount is idmapped (the
/// kernel's `idmapped` mount option, Linux 5.12+, never an option's first);
/// empty when no line says `,idmapped` (the common case: nothing is parsed). Taken from the text
/// discovery reads, so that deciding whether an overlay's lowers are idmapped
/// reads no mount table again (10,000 mounts: 40 ms per new mount).
pub fn idmapped_mounts(text: &[u8]) -> IdmappedMounts {
    if !contains(text, b",idmapped") {
        return Vec::new();
    }
    text.split(|&b| b == b'\n')
        .filter_map(|line| {
            let f: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
            let (mp, opts) = (f.get(4)?, f.get(5)?);
            let idmapped = opts.split(|&b| b == b',').any(|o| o == b"idmapped");
            Some((PathBuf::from(OsStr::from_bytes(&unescape_octal_bytes(mp))), idmapped))
        })
        .collect()
}

/// A table's mountpoints with whether each is idmapped ([`idmapped_mounts`]).
pub type IdmappedMounts = Vec<(PathBuf, bool)>;

/// Parses mountinfo text, keeping overlay lines only.
pub fn parse(bytes: &[u8]) -> (Vec<OverlayLine>, Vec<BadLine>) {
    let mut lines = Vec::new();
    let mut bad = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        // Cheap filter before any parsing: the fs type follows the " - " separator.
        if !contains(raw, b" - overlay ") {
            continue;
        }
        match parse_line(raw) {
            Ok(Some(l)) => lines.push(l),
            Ok(None) => {}
            Err(message) => bad.push(BadLine { line: i + 1, message }),
        }
    }
    (lines, bad)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn parse_line(raw: &[u8]) -> Result<Option<OverlayLine>, String> {
    let text = String::from_utf8_lossy(raw);
    let info = procfs::process::MountInfo::from_line(&text).map_err(|e| e.to_string())?;
    if info.fs_type != "overlay" {
        return Ok(None);
    }
    let device: Device = info.majmin.parse()?;
    let fields: Vec<&[u8]> = raw.split(|&b| b == b' ').filter(|f| !f.is_empty()).collect();
    let mountpoint_raw = fields.get(4).ok_or("missing mountpoint field")?;
    let super_raw = fields.last().ok_or("missing super options field")?;
    let mountpoint = PathBuf::from(OsStr::from_bytes(&unescape_octal_bytes(mountpoint_raw)));
    let super_opts = String::from_utf8_lossy(super_raw);
    Ok(Some(OverlayLine {
        mount_id: info.mnt_id,
        device,
        root: unescape_octal(&info.root),
        mountpoint,
        source: info.mount_source.map(|s| unescape_octal(&s)).unwrap_or_default(),
        read_only: info.mount_options.contains_key("ro") || info.super_options.contains_key("ro"),
        options: OverlayOptions::parse(&super_opts),
        namespace: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::options::LayerPath;

    const HOST: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
412 27 0:44 / /var/lib/containers/storage/overlay/9a9f/merged rw,nodev,relatime - overlay overlay rw,lowerdir=/var/lib/containers/storage/overlay/l/QWERTY:/var/lib/containers/storage/overlay/l/ASDFGH,upperdir=/var/lib/containers/storage/overlay/9a9f/diff,workdir=/var/lib/containers/storage/overlay/9a9f/work,uuid=on
413 27 0:45 / /srv/with\\040space rw,relatime shared:7 master:2 - overlay none ro,lowerdir=/a:/b
";

    #[test]
    fn keeps_overlay_lines_only() {
        let (lines, bad) = parse(HOST.as_bytes());
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(lines.len(), 2);
        let l = &lines[0];
        assert_eq!(l.mount_id, 412);
        assert_eq!(l.device, Device { major: 0, minor: 44 });
        assert_eq!(l.mountpoint, PathBuf::from("/var/lib/containers/storage/overlay/9a9f/merged"));
        assert!(!l.read_only);
        assert_eq!(l.options.lower.len(), 2);
        let m = &lines[1];
        assert_eq!(m.mountpoint, PathBuf::from("/srv/with space"));
        assert!(m.read_only);
        assert_eq!(m.source, "", "procfs reads the source \"none\" as absent");
        assert_eq!(m.options.upper, None);
        assert_eq!(m.options.lower[1], LayerPath::Absolute("/b".into()));
    }

    #[test]
    fn non_utf8_mountpoint_survives() {
        let mut line = b"50 27 0:50 / /mnt/caf".to_vec();
        line.push(0xe9);
        line.extend_from_slice(b"\\012x rw - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w\n");
        let (lines, bad) = parse(&line);
        assert!(bad.is_empty(), "{bad:?}");
        let mut want = b"/mnt/caf".to_vec();
        want.push(0xe9);
        want.extend_from_slice(b"\nx");
        assert_eq!(lines[0].mountpoint.as_os_str().as_bytes(), &want[..]);
    }

    #[test]
    fn broken_lines_are_reported_with_their_number() {
        let text = "1 2 - overlay x\n60 27 0:x / /m rw - overlay overlay rw,lowerdir=/l\n";
        let (lines, bad) = parse(text.as_bytes());
        assert!(lines.is_empty());
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[0].line, 1);
        assert_eq!(bad[1].line, 2);
        assert!(bad[1].message.contains("0:x"), "{:?}", bad[1]);
    }
}
