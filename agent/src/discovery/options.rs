//! Overlay superblock options, as the kernel prints them in mountinfo's last field.
//!
//! Pure functions, tested on option strings written by real systems. The kernel
//! escapes `, = space tab newline \` in option values as octal (`\054` ...), and a
//! user-supplied `\:` inside `lowerdir` (a colon in a path) shows as `\134:`.

use std::path::PathBuf;

/// A layer path as given at mount time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "path", rename_all = "lowercase")]
pub enum LayerPath {
    Absolute(PathBuf),
    /// Relative to the mounter's working directory at mount time, which is not
    /// recorded anywhere: reported as given, never resolved.
    Relative(String),
}

impl LayerPath {
    fn new(raw: String) -> Self {
        if raw.starts_with('/') {
            LayerPath::Absolute(PathBuf::from(raw))
        } else {
            LayerPath::Relative(raw)
        }
    }

    pub fn absolute(&self) -> Option<&std::path::Path> {
        match self {
            LayerPath::Absolute(p) => Some(p),
            LayerPath::Relative(_) => None,
        }
    }

    /// The path as a label value (lossless for UTF-8, `\xNN` for other bytes).
    pub fn label(&self) -> String {
        match self {
            LayerPath::Absolute(p) => crate::discovery::path_label(p),
            LayerPath::Relative(s) => s.clone(),
        }
    }
}

/// Everything overlayfs reports about one superblock.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct OverlayOptions {
    /// Lower layers, top first (from `lowerdir` and `lowerdir+`).
    pub lower: Vec<LayerPath>,
    /// Data-only lower layers (after `::` in `lowerdir`, or `datadir+`).
    pub data: Vec<LayerPath>,
    pub upper: Option<LayerPath>,
    pub work: Option<LayerPath>,
    pub metacopy: Option<bool>,
    pub redirect_dir: Option<String>,
    pub index: Option<bool>,
    pub xino: Option<String>,
    pub nfs_export: Option<bool>,
    pub uuid: Option<String>,
    pub verity: Option<String>,
    pub fsync: Option<String>,
    pub volatile: bool,
    pub userxattr: bool,
    pub default_permissions: bool,
    /// Options this parser does not know, kept as printed.
    pub other: Vec<String>,
}

impl OverlayOptions {
    /// Parses the super options field (already split from the mountinfo line).
    pub fn parse(field: &str) -> OverlayOptions {
        let mut o = OverlayOptions::default();
        for opt in field.split(',').filter(|s| !s.is_empty()) {
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(unescape_octal(v))),
                None => (opt, None),
            };
            let on_off = |v: &Option<String>| v.as_deref().map(|v| v == "on");
            match (key, value) {
                ("lowerdir", Some(v)) => {
                    let (lower, data) = split_lowerdir(&v);
                    o.lower.extend(lower.into_iter().map(LayerPath::new));
                    o.data.extend(data.into_iter().map(LayerPath::new));
                }
                ("lowerdir+", Some(v)) => o.lower.push(LayerPath::new(v)),
                ("datadir+", Some(v)) => o.data.push(LayerPath::new(v)),
                ("upperdir", Some(v)) => o.upper = Some(LayerPath::new(v)),
                ("workdir", Some(v)) => o.work = Some(LayerPath::new(v)),
                ("metacopy", v) => o.metacopy = on_off(&v),
                ("index", v) => o.index = on_off(&v),
                ("nfs_export", v) => o.nfs_export = on_off(&v),
                ("redirect_dir", v) => o.redirect_dir = v,
                ("xino", v) => o.xino = v,
                ("uuid", v) => o.uuid = v,
                ("verity", v) => o.verity = v,
                ("fsync", v) => o.fsync = v,
                ("volatile", None) => o.volatile = true,
                ("userxattr", None) => o.userxattr = true,
                ("default_permissions", None) => o.default_permissions = true,
                _ => o.other.push(opt.to_owned()),
            }
        }
        o
    }

    /// Layer paths that are relative and so cannot be located.
    pub fn relative_paths(&self) -> usize {
        self.lower
            .iter()
            .chain(&self.data)
            .chain(&self.upper)
            .chain(&self.work)
            .filter(|l| matches!(l, LayerPath::Relative(_)))
            .count()
    }

    /// `fsync=volatile` (6.x spelling) or the `volatile` flag.
    pub fn is_volatile(&self) -> bool {
        self.volatile || self.fsync.as_deref() == Some("volatile")
    }
}

/// Decodes the octal escapes (`\NNN`) that seq_file uses in mountinfo. Anything
/// that is not a valid three-digit octal escape is kept as is.
pub fn unescape_octal(s: &str) -> String {
    String::from_utf8_lossy(&unescape_octal_bytes(s.as_bytes())).into_owned()
}

/// Byte version of [`unescape_octal`], for paths that need not be UTF-8.
pub fn unescape_octal_bytes(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && is_octal_escape(&b[i + 1..i + 4]) {
            let v = (b[i + 1] - b'0') as u16 * 64 + (b[i + 2] - b'0') as u16 * 8 + (b[i + 3] - b'0') as u16;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn is_octal_escape(d: &[u8]) -> bool {
    d.len() == 3 && d[0] <= b'3' && d.iter().all(|c| (b'0'..=b'7').contains(c))
}

/// Splits a `lowerdir` value into (lower layers, data-only layers).
/// `:` separates layers, `\:` is a literal colon (and `\\` a backslash), and `::`
/// starts the data-only layers (Linux 6.5+).
pub fn split_lowerdir(v: &str) -> (Vec<String>, Vec<String>) {
    let mut lower = Vec::new();
    let mut data = Vec::new();
    let mut in_data = false;
    let mut cur = String::new();
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n) => cur.push(n),
                None => cur.push('\\'),
            },
            ':' => {
                let layer = std::mem::take(&mut cur);
                if !layer.is_empty() {
                    if in_data {
                        data.push(layer)
                    } else {
                        lower.push(layer)
                    }
                }
                if chars.peek() == Some(&':') {
                    chars.next();
                    in_data = true;
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        if in_data {
            data.push(cur)
        } else {
            lower.push(cur)
        }
    }
    (lower, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn abs(p: &str) -> LayerPath {
        LayerPath::Absolute(PathBuf::from(p))
    }
    fn rel(p: &str) -> LayerPath {
        LayerPath::Relative(p.to_owned())
    }

    #[test]
    fn docker_overlay2_absolute() {
        let o = OverlayOptions::parse(
            "rw,lowerdir=/var/lib/docker/overlay2/l/ABCDEFGHIJKLMNOPQRSTUVWXYZ:/var/lib/docker/overlay2/l/BCDEFGHIJKLMNOPQRSTUVWXYZA,\
             upperdir=/var/lib/docker/overlay2/3f2a/diff,workdir=/var/lib/docker/overlay2/3f2a/work",
        );
        assert_eq!(o.lower.len(), 2);
        assert_eq!(o.lower[0], abs("/var/lib/docker/overlay2/l/ABCDEFGHIJKLMNOPQRSTUVWXYZ"));
        assert_eq!(o.upper, Some(abs("/var/lib/docker/overlay2/3f2a/diff")));
        assert_eq!(o.work, Some(abs("/var/lib/docker/overlay2/3f2a/work")));
        assert_eq!(o.other, vec!["rw".to_owned()]);
        assert_eq!(o.relative_paths(), 0);
    }

    #[test]
    fn docker_overlay2_relative_when_options_are_long() {
        let o = OverlayOptions::parse(
            "rw,lowerdir=l/ABCDEFGHIJKLMNOPQRSTUVWXYZ:l/BCDEFGHIJKLMNOPQRSTUVWXYZA,upperdir=3f2a/diff,workdir=3f2a/work",
        );
        assert_eq!(o.lower, vec![rel("l/ABCDEFGHIJKLMNOPQRSTUVWXYZ"), rel("l/BCDEFGHIJKLMNOPQRSTUVWXYZA")]);
        assert_eq!(o.upper, Some(rel("3f2a/diff")));
        assert_eq!(o.relative_paths(), 4);
        assert_eq!(o.upper.as_ref().and_then(|u| u.absolute()), None);
    }

    #[test]
    fn podman_containers_storage() {
        let o = OverlayOptions::parse(
            "rw,lowerdir=/var/lib/containers/storage/overlay/l/QWERTYUIOPASDFGHJKLZXCVBNM,\
             upperdir=/var/lib/containers/storage/overlay/9a9f/diff,workdir=/var/lib/containers/storage/overlay/9a9f/work,\
             uuid=on,fsync=volatile",
        );
        assert_eq!(o.uuid.as_deref(), Some("on"));
        assert!(o.is_volatile());
        assert!(o.other.iter().all(|x| x == "rw"));
    }

    #[test]
    fn read_only_overlay_has_no_upper() {
        let o = OverlayOptions::parse("ro,lowerdir=/a:/b:/c");
        assert_eq!(o.lower, vec![abs("/a"), abs("/b"), abs("/c")]);
        assert_eq!(o.upper, None);
        assert_eq!(o.work, None);
    }

    #[test]
    fn escaped_colon_comma_and_space() {
        // user wrote lowerdir=/a\:b:/c,d (comma escaped by the kernel as \054,
        // the backslash of "\:" as \134, a space as \040).
        let o = OverlayOptions::parse(r"rw,lowerdir=/a\134:b:/c\054d,upperdir=/u\040p,workdir=/w");
        assert_eq!(o.lower, vec![abs("/a:b"), abs("/c,d")]);
        assert_eq!(o.upper, Some(abs("/u p")));
    }

    #[test]
    fn lowerdir_plus_and_datadir_plus() {
        let o = OverlayOptions::parse(
            "rw,lowerdir+=/l1,lowerdir+=/l2,datadir+=/d1,datadir+=/d2,upperdir=/u,workdir=/w,redirect_dir=on,metacopy=on",
        );
        assert_eq!(o.lower, vec![abs("/l1"), abs("/l2")]);
        assert_eq!(o.data, vec![abs("/d1"), abs("/d2")]);
        assert_eq!(o.metacopy, Some(true));
        assert_eq!(o.redirect_dir.as_deref(), Some("on"));
    }

    #[test]
    fn data_only_layers_after_double_colon() {
        let o = OverlayOptions::parse("ro,lowerdir=/l1:/l2::/d1::/d2");
        assert_eq!(o.lower, vec![abs("/l1"), abs("/l2")]);
        assert_eq!(o.data, vec![abs("/d1"), abs("/d2")]);
    }

    #[test]
    fn all_feature_options() {
        let o = OverlayOptions::parse(
            "rw,lowerdir=/l,upperdir=/u,workdir=/w,default_permissions,redirect_dir=nofollow,index=off,\
             uuid=null,nfs_export=on,xino=auto,metacopy=off,volatile,userxattr,verity=require,weird=1",
        );
        assert!(o.default_permissions && o.volatile && o.userxattr);
        assert_eq!(o.index, Some(false));
        assert_eq!(o.nfs_export, Some(true));
        assert_eq!(o.metacopy, Some(false));
        assert_eq!(o.xino.as_deref(), Some("auto"));
        assert_eq!(o.uuid.as_deref(), Some("null"));
        assert_eq!(o.verity.as_deref(), Some("require"));
        assert_eq!(o.other, vec!["rw".to_owned(), "weird=1".to_owned()]);
    }

    #[test]
    fn many_layers() {
        let layers: Vec<String> = (0..128).map(|i| format!("/layers/{i}")).collect();
        let o = OverlayOptions::parse(&format!("ro,lowerdir={}", layers.join(":")));
        assert_eq!(o.lower.len(), 128);
        assert_eq!(o.lower[127], abs("/layers/127"));
    }

    #[test]
    fn octal_unescape_edge_cases() {
        assert_eq!(unescape_octal(r"a\040b\011c\012d\134e"), "a b\tc\nd\\e");
        assert_eq!(unescape_octal(r"trailing\04"), r"trailing\04");
        assert_eq!(unescape_octal(r"\999"), r"\999");
        assert_eq!(unescape_octal(r"\"), r"\");
        assert_eq!(unescape_octal_bytes(br"\377"), vec![0xff]);
    }
}
