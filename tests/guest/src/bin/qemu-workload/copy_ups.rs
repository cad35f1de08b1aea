//! The copy-ups with known outcomes: `prepare` and `run` (one operation per
//! file, each a known cause, kind and size: EXPECTED in the host's checks), and
//! `causes-prepare` and `causes-run` (one copy-up per cause, for the map
//! benchmark).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Barrier};

use crate::files::{check, cpath, file};

pub fn prepare(a: &Path, b: &Path, c: &Path) {
    for (name, len) in [
        ("chown.dat", 10_000),
        ("chmod.dat", 20_000),
        ("trunc.dat", 30_000),
        ("append.dat", 40_000),
        ("otrunc.dat", 50_000),
        ("utimes.dat", 6_000),
        ("xattr.dat", 7_000),
        ("link.dat", 8_000),
        ("rename.dat", 9_000),
        ("shared.dat", 11_000),
        ("noop_chown.dat", 9_500),
        ("noop_chgrp.dat", 10_500),
        ("noop_chmod.dat", 21_000),
        ("d1/d2/keep", 1),
        ("r1/r2/gone", 1),
    ] {
        file(a, name, len);
    }
    file(b, "other.dat", 12_000);
    file(b, "restart.dat", 14_000);
    file(b, "caps.dat", 15_000);
    file(c, "meta.dat", 13_000);
}

pub fn step(what: &str, r: std::io::Result<()>) {
    match r {
        Ok(()) => println!("workload: {what}: ok"),
        Err(e) => {
            println!("workload: {what}: FAILED: {e}");
            std::process::exit(1);
        }
    }
}

pub fn run(a: &Path, b: &Path, c: &Path) {
    step("chown", chown(a.join("chown.dat"), Some(1), Some(1)));
    step("chmod", fs::set_permissions(a.join("chmod.dat"), fs::Permissions::from_mode(0o600)));
    noops(a);
    // SAFETY: a valid NUL-terminated path.
    step("truncate(2)", check(unsafe { libc::truncate(cpath(&a.join("trunc.dat")).as_ptr(), 5) }));
    step(
        "append",
        OpenOptions::new().append(true).open(a.join("append.dat")).and_then(|mut f| f.write_all(b"+")),
    );
    step("open O_TRUNC", OpenOptions::new().write(true).truncate(true).open(a.join("otrunc.dat")).map(drop));
    step("utimes", {
        let times = [libc::timespec { tv_sec: 1, tv_nsec: 0 }, libc::timespec { tv_sec: 2, tv_nsec: 0 }];
        // SAFETY: valid path and a two-element timespec array.
        check(unsafe {
            libc::utimensat(libc::AT_FDCWD, cpath(&a.join("utimes.dat")).as_ptr(), times.as_ptr(), 0)
        })
    });
    step(
        "setxattr",
        rustix::fs::setxattr(a.join("xattr.dat"), "trusted.test", b"1", rustix::fs::XattrFlags::empty())
            .map_err(std::io::Error::from),
    );
    step("link", fs::hard_link(a.join("link.dat"), a.join("link2.dat")));
    step("rename", fs::rename(a.join("rename.dat"), a.join("renamed.dat")));
    step("create in d1/d2", File::create(a.join("d1/d2/new")).map(drop));
    step("unlink in r1/r2", fs::remove_file(a.join("r1/r2/gone")));
    step("8 concurrent writers", {
        let barrier = Arc::new(Barrier::new(8));
        let shared = a.join("shared.dat");
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let barrier = barrier.clone();
                let shared = shared.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    OpenOptions::new().append(true).open(&shared).and_then(|mut f| f.write_all(b"w"))
                })
            })
            .collect();
        threads.into_iter().try_for_each(|t| t.join().unwrap_or_else(|_| Err(std::io::Error::other("panic"))))
    });
    // On a thread with its own comm: a second actor for overlayfs_copy_up_process_total.
    step("chown on mount B by thread actor-b", {
        let other = b.join("other.dat");
        std::thread::Builder::new()
            .name("actor-b".into())
            .spawn(move || chown(other, Some(2), Some(2)))
            .and_then(|t| t.join().unwrap_or_else(|_| Err(std::io::Error::other("panic"))))
    });
    step("chown on metacopy mount C", chown(c.join("meta.dat"), Some(3), Some(3)));
    step(
        "append on mount C (deferred data)",
        OpenOptions::new().append(true).open(c.join("meta.dat")).and_then(|mut f| f.write_all(b"+")),
    );
}

/// Copy-ups that set what the file already has (overlayfs_copy_up_noop_total):
/// a chown to its owner and group, a chown of the group alone (uid -1), a
/// chmod to its mode, each read first through the merged path (a stat copies
/// nothing up).
fn noops(a: &Path) {
    use std::os::unix::fs::{lchown, MetadataExt};
    let attrs = |name: &str| fs::metadata(a.join(name)).map(|m| (m.uid(), m.gid(), m.mode() & 0o7777));
    step(
        "no-op chown (same owner and group)",
        attrs("noop_chown.dat").and_then(|(u, g, _)| chown(a.join("noop_chown.dat"), Some(u), Some(g))),
    );
    step(
        "no-op lchown (uid -1, same group)",
        attrs("noop_chgrp.dat").and_then(|(_, g, _)| lchown(a.join("noop_chgrp.dat"), None, Some(g))),
    );
    step(
        "no-op chmod (same mode)",
        attrs("noop_chmod.dat").and_then(|(_, _, m)| {
            fs::set_permissions(a.join("noop_chmod.dat"), fs::Permissions::from_mode(m))
        }),
    );
}

/// `causes-prepare LOWER`: one lower file or directory per copy-up cause.
pub fn causes_prepare(lower: &Path) {
    for name in [
        "chown", "chmod", "trunc", "append", "otrunc", "utimes", "xattr", "link", "rename", "d/new", "r/gone",
    ] {
        file(lower, name, 100);
    }
}

/// `causes-run MERGED`: one copy-up per cause on a mount prepared as above.
pub fn causes_run(m: &Path) {
    let times = [libc::timespec { tv_sec: 1, tv_nsec: 0 }, libc::timespec { tv_sec: 2, tv_nsec: 0 }];
    let results = [
        chown(m.join("chown"), Some(1), Some(1)),
        fs::set_permissions(m.join("chmod"), fs::Permissions::from_mode(0o600)),
        // SAFETY: valid NUL-terminated paths and a two-element timespec array.
        check(unsafe { libc::truncate(cpath(&m.join("trunc")).as_ptr(), 1) }),
        OpenOptions::new().append(true).open(m.join("append")).map(drop),
        OpenOptions::new().write(true).truncate(true).open(m.join("otrunc")).map(drop),
        check(unsafe {
            libc::utimensat(libc::AT_FDCWD, cpath(&m.join("utimes")).as_ptr(), times.as_ptr(), 0)
        }),
        rustix::fs::setxattr(m.join("xattr"), "trusted.test", b"1", rustix::fs::XattrFlags::empty())
            .map_err(std::io::Error::from),
        fs::hard_link(m.join("link"), m.join("link2")),
        fs::rename(m.join("rename"), m.join("renamed")),
        File::create(m.join("d/new2")).map(drop),
        fs::remove_file(m.join("r/gone")),
    ];
    for r in results {
        r.expect("copy-up operation");
    }
}
