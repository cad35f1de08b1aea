//! Tests of the walker: classification, device whiteouts and mounts inside an
//! upper dir, and what rescans reuse.

use super::*;
use crate::scan::EntryKind::*;
use rustix::fs::FileType;
use std::fs;

fn scan_once(u: &Path, ns: XattrNamespace) -> Result<ScanResult, ScanError> {
    scan(u, &ScanOptions::new(ns), &mut ScanCache::default())
}

fn set(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", path.display()));
}

/// Builds by hand what overlayfs leaves in an upper dir (user.overlay.* as
/// with `userxattr`), then checks every rule of the classification.
#[test]
fn classification_rules() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let u = tmp.path();
    let x = "user.overlay.";
    // Root children are always examined.
    fs::write(u.join("copied"), b"12345").expect("write");
    set(&u.join("copied"), &format!("{x}origin"), b"");
    fs::write(u.join("meta"), b"").expect("write");
    set(&u.join("meta"), &format!("{x}origin"), b"");
    set(&u.join("meta"), &format!("{x}metacopy"), b"");
    fs::write(u.join("new"), b"1").expect("write");
    fs::hard_link(u.join("new"), u.join("new-link")).expect("link");
    std::os::unix::fs::symlink("loop", u.join("loop")).expect("symlink");
    // An impure dir: its children are examined.
    fs::create_dir(u.join("impure")).expect("mkdir");
    set(&u.join("impure"), &format!("{x}impure"), b"y");
    fs::write(u.join("impure/c"), b"123").expect("write");
    set(&u.join("impure/c"), &format!("{x}origin"), b"");
    // A dir without marks: its files are taken as created without a look.
    fs::create_dir(u.join("pure")).expect("mkdir");
    fs::write(u.join("pure/f"), b"1").expect("write");
    // Opaque dirs: "y" is opaque, "x" only holds xattr whiteouts.
    fs::create_dir(u.join("opq")).expect("mkdir");
    set(&u.join("opq"), &format!("{x}opaque"), b"y");
    fs::create_dir(u.join("xwh")).expect("mkdir");
    set(&u.join("xwh"), &format!("{x}opaque"), b"x");
    fs::write(u.join("xwh/gone"), b"").expect("write");
    set(&u.join("xwh/gone"), &format!("{x}whiteout"), b"");
    // trusted.* xattrs do not count on a userxattr mount.
    let r = scan_once(u, XattrNamespace::User).expect("scan");
    let want: &[(EntryKind, u64)] =
        &[(Dir, 3), (OpaqueDir, 1), (Created, 4), (CopiedUp, 2), (Metacopy, 1), (Whiteout, 1)];
    for (kind, n) in want {
        assert_eq!(r.entries(*kind), *n, "{kind:?}: {r:?}");
    }
    assert_eq!(r.inodes, 12, "hard-linked inode counted once, root included");
    assert_eq!(r.entries.iter().sum::<u64>(), r.inodes, "names: one more than inodes - 1 (new-link)");
    assert_eq!(r.copied_up_bytes, 8);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    // The same tree read as a trusted.* mount: no overlay marks at all.
    let r = scan_once(u, XattrNamespace::Trusted).expect("scan");
    assert_eq!(r.entries(CopiedUp) + r.entries(Metacopy) + r.entries(OpaqueDir), 0);
}

#[test]
#[cfg_attr(not(feature = "e2e"), ignore = "needs root (mknod, mount): the e2e tier")]
fn device_whiteouts_and_mounts_inside() {
    if !rustix::process::geteuid().is_root() {
        panic!("needs root (mknod, mount): run the README's test command");
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let u = tmp.path();
    rustix::fs::mknodat(rustix::fs::CWD, u.join("wh"), FileType::CharacterDevice, Mode::empty(), 0)
        .expect("mknod 0/0");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        u.join("null"),
        FileType::CharacterDevice,
        Mode::empty(),
        rustix::fs::makedev(1, 3),
    )
    .expect("mknod 1/3");
    fs::create_dir(u.join("mnt")).expect("mkdir");
    fs::create_dir(u.join("mnt/hidden")).expect("mkdir");
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(u.join("mnt"))
        .status()
        .expect("mount tmpfs");
    assert!(status.success());
    fs::write(u.join("mnt/on-tmpfs"), b"x").expect("write");
    // 30 names of one 0/0 inode, as overlayfs makes whiteouts since 5.8.
    rustix::fs::mknodat(rustix::fs::CWD, u.join("shared"), FileType::CharacterDevice, Mode::empty(), 0)
        .expect("mknod 0/0");
    for i in 1..30 {
        fs::hard_link(u.join("shared"), u.join(format!("shared{i}"))).expect("link");
    }
    // The walk fchdirs: run it on a thread of its own with its own cwd.
    let path = u.to_owned();
    let (r, again) = std::thread::spawn(move || {
        let cwd = OwnCwd::unshare().expect("unshare(CLONE_FS)");
        let opts = ScanOptions { cwd: Some(&cwd), ..ScanOptions::new(XattrNamespace::Trusted) };
        let mut cache = ScanCache::default();
        (scan(&path, &opts, &mut cache), scan(&path, &opts, &mut cache))
    })
    .join()
    .expect("scan thread");
    let _ = std::process::Command::new("umount").arg(u.join("mnt")).status();
    let (r, again) = (r.expect("scan"), again.expect("rescan"));
    // The rescan takes the whiteouts from the cache (not stat'ed) and counts the same.
    assert_eq!(again.dirs_cached, 3, "the root, mnt and mnt/hidden: {again:?}");
    assert_eq!((again.entries, again.inodes), (r.entries, r.inodes));
    assert_eq!(r.entries(Whiteout), 31, "the 0/0 device and the 30 names of the shared one");
    assert_eq!(r.entries(Created), 1, "the 1/3 device, and nothing of the tmpfs");
    // The walk sees the upper dir through a clone of its mount alone, as overlayfs
    // does: the directories under the tmpfs, not the tmpfs.
    assert_eq!(r.entries(Dir), 2, "mnt and mnt/hidden");
    assert_eq!(r.inodes, 6, "root, wh, null, the shared whiteout inode once, mnt, hidden");
    let e = scan_once(&u.join("absent"), XattrNamespace::Trusted).expect_err("missing");
    assert_eq!(e.reason(), ErrorReason::Missing);
}

fn kinds(r: &ScanResult) -> Vec<(EntryKind, u64)> {
    EntryKind::ALL.iter().map(|k| (*k, r.entries(*k))).collect()
}

/// A rescan re-reads no unchanged directory and no unchanged entry's xattrs,
/// yet sees every change: sizes, new names, xattrs set or removed.
#[test]
fn rescans_reuse_what_cannot_have_changed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let u = tmp.path();
    let x = "user.overlay.";
    fs::create_dir(u.join("impure")).expect("mkdir");
    set(&u.join("impure"), &format!("{x}impure"), b"y");
    for i in 0..50 {
        let f = u.join(format!("impure/c{i}"));
        fs::write(&f, b"123").expect("write");
        set(&f, &format!("{x}origin"), b"");
    }
    fs::write(u.join("impure/m"), b"").expect("write");
    set(&u.join("impure/m"), &format!("{x}origin"), b"");
    set(&u.join("impure/m"), &format!("{x}metacopy"), b"");
    fs::create_dir_all(u.join("pure/deeper")).expect("mkdir");
    fs::write(u.join("pure/deeper/f"), b"1").expect("write");
    let opts = ScanOptions::new(XattrNamespace::User);
    let mut cache = ScanCache::default();
    let first = scan(u, &opts, &mut cache).expect("scan");
    assert_eq!((first.dirs_read, first.dirs_cached), (4, 0), "{first:?}");
    assert_eq!(first.xattr_reads, 2 + 51 + 1, "root's children, impure's children, pure's dir");
    assert_eq!(first.copy_ups_seen, None, "no baseline yet");
    assert_eq!(cache.entries(), 2 + 51 + 1 + 1);

    // Unchanged: no directory read, no xattr read, same figures.
    let again = scan(u, &opts, &mut cache).expect("rescan");
    assert_eq!((again.dirs_read, again.dirs_cached, again.xattr_reads), (0, 4, 0), "{again:?}");
    assert_eq!(again.copy_ups_seen, Some(0));
    let strip = |r: &ScanResult| ScanResult {
        dirs_read: 0,
        dirs_cached: 0,
        xattr_reads: 0,
        copy_ups_seen: None,
        fs_avail_bytes: 0,
        ..r.clone()
    };
    assert_eq!(strip(&again), strip(&first));

    // A file grows in an unchanged dir; the metacopy file gets its data (the
    // kernel removes the xattr); a new copied-up file appears in pure/deeper.
    fs::write(u.join("pure/deeper/f"), vec![7u8; 100_000]).expect("grow");
    rustix::fs::lremovexattr(u.join("impure/m"), format!("{x}metacopy").as_str()).expect("removexattr");
    fs::write(u.join("pure/deeper/new"), b"12").expect("write");
    let r = scan(u, &opts, &mut cache).expect("rescan");
    assert_eq!(strip(&r), strip(&scan_once(u, XattrNamespace::User).expect("scan")), "as a first scan");
    assert_eq!((r.dirs_read, r.dirs_cached), (1, 3), "only pure/deeper changed: {r:?}");
    assert_eq!(r.xattr_reads, 2, "m and pure/deeper changed ctime; pure/deeper's files need no look");
    assert_eq!(r.entries(Metacopy), 0);
    assert_eq!(r.entries(CopiedUp), 51, "{:?}", kinds(&r));
    assert_eq!(r.entries(Created), 2);
    assert_eq!(r.copy_ups_seen, Some(0), "m was copied-up (metacopy) before: no new copy-up");

    // A new copied-up file in the impure dir, and one renamed there from another
    // copied-up name: one copy-up seen (the rename moves an inode already counted).
    fs::write(u.join("impure/n"), b"").expect("write");
    set(&u.join("impure/n"), &format!("{x}origin"), b"");
    fs::rename(u.join("impure/c0"), u.join("impure/c0-renamed")).expect("rename");
    let r = scan(u, &opts, &mut cache).expect("rescan");
    assert_eq!(r.entries(CopiedUp), 52, "{:?}", kinds(&r));
    assert_eq!(r.copy_ups_seen, Some(1));
    assert_eq!(strip(&r), strip(&scan_once(u, XattrNamespace::User).expect("scan")), "as a first scan");
    // Removing a directory drops it from the cache.
    fs::remove_dir_all(u.join("pure")).expect("rm -r");
    let r = scan(u, &opts, &mut cache).expect("rescan");
    assert_eq!(r.entries(Dir), 1, "{:?}", kinds(&r));
    assert_eq!(cache.entries(), 1 + 52);
}
