//! The block device behind a filesystem, from mountinfo: what `quotactl` needs on
//! kernels before 5.14, which have no `quotactl_fd`.

use std::ffi::CString;
use std::path::Path;

/// The mount source (block device) of the filesystem with device number `dev`.
pub(super) fn device_of(mountinfo: &Path, dev: u64) -> Option<CString> {
    let text = std::fs::read_to_string(mountinfo).ok()?;
    device_in(&text, rustix::fs::major(dev), rustix::fs::minor(dev))
}

/// The source field of the first mountinfo line with `major:minor`.
fn device_in(mountinfo: &str, major: u32, minor: u32) -> Option<CString> {
    let want = format!("{major}:{minor}");
    mountinfo.lines().find_map(|line| {
        let mut fields = line.split(' ');
        (fields.nth(2)? == want).then_some(())?;
        let (_, after) = line.split_once(" - ")?;
        let source = after.split(' ').nth(1)?;
        source.starts_with('/').then(|| CString::new(unescape(source)).ok())?
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // Three octal digits of at most 0o377 (a byte); `b[i + 1..i + 4]` needs i + 3 < len.
        if b[i] == b'\\'
            && i + 3 < b.len()
            && (b'0'..=b'3').contains(&b[i + 1])
            && b[i + 2..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_device_from_mountinfo() {
        let mi = "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n\
                  40 22 7:0 / /mnt/x\\040y rw - xfs /dev/loop\\0400 rw,prjquota\n\
                  41 22 0:5 / /dev rw - devtmpfs dev rw\n";
        assert_eq!(device_in(mi, 8, 1).as_deref(), Some(c"/dev/sda1"));
        assert_eq!(device_in(mi, 7, 0).as_deref(), Some(c"/dev/loop 0"), "escapes undone");
        assert_eq!(device_in(mi, 0, 5), None, "not a block device path");
        assert_eq!(device_in(mi, 9, 9), None);
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/dev/a\040b"), b"/dev/a b", "an escape at the very end");
        assert_eq!(unescape(r"\134"), b"\\");
        assert_eq!(unescape(r"/x\377"), b"/x\xff");
        assert_eq!(unescape(r"/x\777"), br"/x\777", "more than a byte: left as it is");
        assert_eq!(unescape(r"/x\04"), br"/x\04", "too short");
        assert_eq!(unescape(r"/x\"), br"/x\");
    }
}
