//! No-op copy-ups: a chown, chmod or utimes that sets what the file already
//! has still copies the whole file up. The programs decide it from the system
//! call's arguments and the file's attributes at copy-up time (the overlay
//! inode's, which overlayfs copies from the lower inode: ovl_copyattr). The
//! rules, pure, so that the host's tests run the very code the programs run.
//! A copy-up is counted as a no-op only when the rule can decide it; every
//! doubt counts it as a change.

pub const S_IFMT: u16 = 0o170000;
pub const S_IFDIR: u16 = 0o040000;
pub const S_ISUID: u16 = 0o4000;
pub const S_ISGID: u16 = 0o2000;
/// The bits chmod sets (S_IALLUGO).
pub const MODE_BITS: u32 = 0o7777;
/// utimensat's "set to the current time" and "leave unchanged".
pub const UTIME_NOW: u64 = (1 << 30) - 1;
pub const UTIME_OMIT: u64 = (1 << 30) - 2;

/// The file's attributes at copy-up time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attrs {
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
}

impl Attrs {
    pub const fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }
}

/// chown(uid, gid) with the ids as kernel ids (None: the argument was -1, or
/// is not mapped): a no-op when neither changes and the kernel drops no
/// set-id bit. chown of a non-directory drops S_ISUID, and S_ISGID with group
/// execute (5.x; 6.2+ also without it unless the caller is in the group):
/// any set-id bit on a non-directory counts as a change.
pub const fn owner_unchanged(uid: Option<u32>, gid: Option<u32>, now: Attrs) -> bool {
    let uid_same = match uid {
        None => true,
        Some(u) => u == now.uid,
    };
    let gid_same = match gid {
        None => true,
        Some(g) => g == now.gid,
    };
    let drops_setid = !now.is_dir() && now.mode & (S_ISUID | S_ISGID) != 0;
    uid_same && gid_same && !drops_setid
}

/// chmod(mode): a no-op when the permission bits are the file's. A requested
/// S_ISGID counts as a change: the kernel drops it for a caller outside the
/// file's group without CAP_FSETID, which the programs do not check.
pub const fn mode_unchanged(requested: u32, now: Attrs) -> bool {
    requested & MODE_BITS == now.mode as u32 & MODE_BITS && requested & S_ISGID as u32 == 0
}

/// A requested id of a chown, -1 meaning "unchanged".
pub const fn chown_id(arg: u64) -> Option<u32> {
    if arg as u32 == u32::MAX {
        None
    } else {
        Some(arg as u32)
    }
}

/// `make_kuid`/`make_kgid` through a user namespace's map of up to 5 extents
/// held inline (`struct uid_gid_map`: nr_extents, then (first, lower_first,
/// count) each). None when unmapped or when the map is larger (held out of
/// line: the programs do not follow it).
pub const fn map_id(nr_extents: u32, extents: &[u32; 15], id: u32) -> Option<u32> {
    if nr_extents > 5 {
        return None;
    }
    let mut i = 0;
    while i < 5 {
        if (i as u32) < nr_extents {
            let (first, lower, count) = (extents[i * 3], extents[i * 3 + 1], extents[i * 3 + 2]);
            if id >= first && id - first < count {
                return Some(lower + (id - first));
            }
        }
        i += 1;
    }
    None
}

/// One time of a utimes-family call, normalised: Some((sec, nsec)) to set,
/// None for "leave unchanged" (UTIME_OMIT), or the call sets the current time
/// (`now`: UTIME_NOW, a NULL pointer), which is never a no-op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    To(i64, u32),
    Omit,
    Now,
}

/// The two times of a call in `format` ([`super::syscall::TimeFormat`] code)
/// from the four 64-bit words at its pointer.
pub const fn requested_times(format: u16, w: [u64; 4]) -> [SetTime; 2] {
    match format {
        // utimbuf: actime, modtime (seconds).
        1 => [SetTime::To(w[0] as i64, 0), SetTime::To(w[1] as i64, 0)],
        // timeval[2]: sec, usec each.
        2 => [timeval(w[0], w[1]), timeval(w[2], w[3])],
        // timespec[2]: sec, nsec each, or the UTIME_ markers.
        3 => [timespec(w[0], w[1]), timespec(w[2], w[3])],
        _ => [SetTime::Now, SetTime::Now],
    }
}

const fn timeval(sec: u64, usec: u64) -> SetTime {
    if usec >= 1_000_000 {
        SetTime::Now // EINVAL in the kernel: no copy-up reaches here
    } else {
        SetTime::To(sec as i64, usec as u32 * 1000)
    }
}

const fn timespec(sec: u64, nsec: u64) -> SetTime {
    match nsec {
        UTIME_OMIT => SetTime::Omit,
        n if n < 1_000_000_000 => SetTime::To(sec as i64, n as u32),
        _ => SetTime::Now,
    }
}

/// utimes: a no-op when each time is left unchanged or set to what the file
/// has ((sec, nsec) of atime, then mtime).
pub const fn times_unchanged(req: [SetTime; 2], now: [(i64, u32); 2]) -> bool {
    let mut i = 0;
    while i < 2 {
        match req[i] {
            SetTime::Omit => {}
            SetTime::To(s, n) if s == now[i].0 && n == now[i].1 => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: Attrs = Attrs { mode: 0o100644, uid: 1000, gid: 100 };
    const DIR: Attrs = Attrs { mode: 0o040755, uid: 1000, gid: 100 };

    #[test]
    fn chown_to_the_owner_it_has_is_a_no_op() {
        assert!(owner_unchanged(Some(1000), Some(100), FILE));
        assert!(owner_unchanged(None, None, FILE), "chown(-1, -1)");
        assert!(owner_unchanged(Some(1000), None, FILE));
        assert!(owner_unchanged(None, Some(100), DIR));
        assert!(!owner_unchanged(Some(0), Some(100), FILE));
        assert!(!owner_unchanged(None, Some(0), FILE));
        let suid = Attrs { mode: 0o104755, ..FILE };
        assert!(!owner_unchanged(Some(1000), Some(100), suid), "the kernel drops S_ISUID");
        let sgid = Attrs { mode: 0o102755, ..FILE };
        assert!(!owner_unchanged(None, None, sgid), "and S_ISGID");
        let sgid_dir = Attrs { mode: 0o042775, ..DIR };
        assert!(owner_unchanged(None, None, sgid_dir), "not on directories");
        assert_eq!(chown_id(u64::MAX), None);
        assert_eq!(chown_id(0xffff_ffff), None, "-1 as a 32-bit argument");
        assert_eq!(chown_id(0), Some(0));
    }

    #[test]
    fn chmod_to_the_mode_it_has_is_a_no_op() {
        assert!(mode_unchanged(0o644, FILE));
        assert!(mode_unchanged(0o100644, FILE), "the type bits of the argument are ignored");
        assert!(!mode_unchanged(0o600, FILE));
        assert!(!mode_unchanged(0o4644, FILE));
        let sgid = Attrs { mode: 0o102755, ..FILE };
        assert!(!mode_unchanged(0o2755, sgid), "S_ISGID may be dropped: undecided");
    }

    #[test]
    fn ids_map_through_up_to_five_extents() {
        // ns 0..999 -> 100000..; ns 1000 -> 0 (kuid of root)
        let mut e = [0u32; 15];
        e[..6].copy_from_slice(&[0, 100_000, 1000, 1000, 0, 1]);
        assert_eq!(map_id(2, &e, 0), Some(100_000));
        assert_eq!(map_id(2, &e, 999), Some(100_999));
        assert_eq!(map_id(2, &e, 1000), Some(0));
        assert_eq!(map_id(2, &e, 1001), None);
        assert_eq!(map_id(1, &e, 1000), None, "only nr_extents count");
        assert_eq!(map_id(6, &e, 0), None, "an out-of-line map is not followed");
        let full = [0, 0, u32::MAX, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(map_id(1, &full, 4_000_000_000), Some(4_000_000_000), "the identity map of init_user_ns");
    }

    #[test]
    fn times_equal_to_the_files_are_a_no_op() {
        let now = [(100, 5_000), (200, 0)];
        let spec = |a: (u64, u64), m: (u64, u64)| requested_times(3, [a.0, a.1, m.0, m.1]);
        assert!(times_unchanged(spec((100, 5_000), (200, 0)), now));
        assert!(times_unchanged(spec((0, UTIME_OMIT), (200, 0)), now), "atime omitted");
        assert!(!times_unchanged(spec((100, 5_000), (0, UTIME_NOW)), now), "mtime set to now");
        assert!(!times_unchanged(spec((100, 5_001), (200, 0)), now));
        assert!(times_unchanged(requested_times(2, [100, 5, 200, 0]), now), "timeval: 5 us = 5000 ns");
        assert!(!times_unchanged(requested_times(1, [100, 200, 0, 0]), now), "utimbuf: whole seconds");
        assert!(times_unchanged(requested_times(1, [100, 200, 0, 0]), [(100, 0), (200, 0)]));
    }
}
