//! The block device behind a filesystem, from mountinfo: what `quotactl` needs on
//! kernels before 5.14, which have no `quotactl_fd`.

use std::ffi::CString;
use std::path::Path;

use crate::discovery::options::unescape_octal_bytes;

/// The mount source (block device) of the filesystem with device number `dev`.
/// Read as bytes: one mount point anywhere on the node whose name is not UTF-8
/// must not hide every block device (it did: quota mode then read `/` and said
/// `not_accounted` on a kernel without quota support).
pub(super) fn device_of(mountinfo: &Path, dev: u64) -> Option<CString> {
    let text = std::fs::read(mountinfo).ok()?;
    device_in(&text, rustix::fs::major(dev), rustix::fs::minor(dev))
}

/// The source field of the first mountinfo line with `major:minor`.
fn device_in(mountinfo: &[u8], major: u32, minor: u32) -> Option<CString> {
    let want = format!("{major}:{minor}");
    mountinfo.split(|&b| b == b'\n').find_map(|line| {
        let mut fields = line.split(|&b| b == b' ');
        (fields.nth(2)? == want.as_bytes()).then_some(())?;
        // The first " - ": the fields before it escape their spaces.
        let sep = line.windows(3).position(|w| w == b" - ")?;
        let source = line.get(sep + 3..)?.split(|&b| b == b' ').nth(1)?;
        source.starts_with(b"/").then(|| CString::new(unescape_octal_bytes(source)).ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_device_from_mountinfo() {
        let mi = b"22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n\
                  40 22 7:0 / /mnt/x\\040y rw - xfs /dev/loop\\0400 rw,prjquota\n\
                  41 22 0:5 / /dev rw - devtmpfs dev rw\n";
        assert_eq!(device_in(mi, 8, 1).as_deref(), Some(c"/dev/sda1"));
        assert_eq!(device_in(mi, 7, 0).as_deref(), Some(c"/dev/loop 0"), "escapes undone");
        assert_eq!(device_in(mi, 0, 5), None, "not a block device path");
        assert_eq!(device_in(mi, 9, 9), None);
    }

    /// A mount point whose name is not UTF-8 (mountinfo escapes only space, tab,
    /// newline and backslash) before the wanted line, and a source that is not.
    #[test]
    fn lines_that_are_not_utf8_hide_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mountinfo");
        let mut mi =
            b"63 46 0:50 / /tmp/odd\\012mount\\040\xff rw - overlay overlay rw,lowerdir=/l\n".to_vec();
        mi.extend_from_slice(b"40 22 7:3 / /mnt/q rw - xfs /dev/loop3 rw,prjquota\n");
        mi.extend_from_slice(b"41 22 7:4 / /mnt/\xfe rw - xfs /dev/disk/by-label/\xfe rw\n");
        std::fs::write(&path, &mi).expect("write");
        let dev = |maj, min| rustix::fs::makedev(maj, min);
        assert_eq!(device_of(&path, dev(7, 3)).as_deref(), Some(c"/dev/loop3"));
        assert_eq!(
            device_of(&path, dev(7, 4)).as_deref().map(|c| c.to_bytes()),
            Some(&b"/dev/disk/by-label/\xfe"[..])
        );
        assert_eq!(device_of(&path, dev(0, 50)), None, "an overlay: no block device");
    }
}
