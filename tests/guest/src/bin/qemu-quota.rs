//! Helper of the quota mode of the QEMU guests (initramfs/modes/quota.sh) and of
//! bench/quota.py: sets project ids the way another tool would, makes trees and
//! workloads, and times a quota readout against a walk and `du -s`.
//!
//! `qemu-quota setproj PATH ID`    project id (+ inherit flag on a dir), like `chattr -p ID +P`
//! `qemu-quota getproj PATH`       prints the project id
//! `qemu-quota fill DIR FILES`     FILES files of 1-4 KiB, 100 per directory
//! `qemu-quota spread ROOT MOUNTS FILES`  FILES files in each ROOT/N/merged
//! `qemu-quota work MERGED ROUND`  copy-ups, new files, whiteouts, hard links through a mount
//! `qemu-quota bench UPPER WORK N` times a quota readout, a walk and `du -s`, cold and warm

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::chown;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use overlay_agent::scan::{self, quota, ScanCache, ScanOptions, XattrNamespace};

fn fill(dir: &Path, files: usize) {
    for i in 0..files {
        let d = dir.join(format!("d{}", i / 100));
        if i % 100 == 0 {
            fs::create_dir_all(&d).expect("mkdir");
        }
        let len = 1024 * (1 + i % 4);
        File::create(d.join(format!("f{i}"))).and_then(|mut f| f.write_all(&vec![b'q'; len])).expect("write");
    }
}

/// A fixed workload through an overlay mount whose lower layer was filled with
/// `fill LOWER 200`; round 2 touches other files than round 1.
fn work(m: &Path, round: u32) {
    let base = (round as usize) * 50;
    for i in base..base + 10 {
        chown(m.join(format!("d{}/f{i}", i / 100)), Some(7), Some(7)).expect("chown: copy-up");
    }
    for i in base + 10..base + 15 {
        fs::remove_file(m.join(format!("d{}/f{i}", i / 100))).expect("rm: whiteout");
    }
    let new = m.join(format!("new{round}"));
    fs::create_dir_all(new.join("sub")).expect("mkdir");
    for i in 0..20 {
        File::create(new.join(format!("sub/n{i}")))
            .and_then(|mut f| f.write_all(&vec![b'n'; 3000 * (i + 1)]))
            .expect("create");
    }
    fs::hard_link(new.join("sub/n0"), new.join("link0")).expect("link");
    let grow = base + 20;
    fs::OpenOptions::new()
        .append(true)
        .open(m.join(format!("d{}/f{grow}", grow / 100)))
        .and_then(|mut f| f.write_all(&[b'a'; 70_000]))
        .expect("append: copy-up");
}

/// FILES new files of 1-4 KiB in each of ROOT/0/merged .. ROOT/(MOUNTS-1)/merged.
fn spread(root: &Path, mounts: usize, files: usize) {
    for m in 0..mounts {
        let d = root.join(format!("{m}/merged/new"));
        fs::create_dir_all(&d).expect("mkdir");
        for i in 0..files {
            File::create(d.join(format!("f{i}")))
                .and_then(|mut f| f.write_all(&vec![b's'; 1024 * (1 + i % 4)]))
                .expect("write");
        }
    }
}

fn micros(t: Instant) -> u128 {
    t.elapsed().as_micros()
}

fn drop_caches() {
    rustix::fs::sync();
    fs::write("/proc/sys/vm/drop_caches", "3").expect("drop caches");
}

/// One quota reading, one walk, one `du -s`: microseconds each.
fn once(target: &quota::QuotaTarget, dir: &Path, cold: bool) -> [u128; 3] {
    let mut out = [0; 3];
    if cold {
        drop_caches();
    }
    let t = Instant::now();
    let u = target.read().expect("quota reading");
    out[0] = micros(t);
    if cold {
        drop_caches();
    }
    let t = Instant::now();
    let r =
        scan::scan(dir, &ScanOptions::new(XattrNamespace::Trusted), &mut ScanCache::default()).expect("walk");
    out[1] = micros(t);
    if cold {
        drop_caches();
    }
    let t = Instant::now();
    let du = Command::new("du").arg("-s").arg(dir).output().expect("du");
    out[2] = micros(t);
    assert!(du.status.success());
    assert_eq!((u.allocated_bytes, u.inodes), (r.allocated_bytes, r.inodes), "quota = walk");
    out
}

/// Prints `inodes cold_quota_us cold_walk_us cold_du_us warm_quota_us warm_walk_us warm_du_us`
/// (warm: the median of `repeat` runs).
fn bench(dir: &Path, work: &Path, repeat: usize) {
    let target = quota::probe(dir, Some(work), Path::new("/proc/self/mountinfo"))
        .expect("quota mode on the bench dir");
    let cold = once(&target, dir, true);
    let mut warm: Vec<[u128; 3]> = (0..repeat.max(1)).map(|_| once(&target, dir, false)).collect();
    let mut med = [0; 3];
    for (i, m) in med.iter_mut().enumerate() {
        warm.sort_by_key(|w| w[i]);
        *m = warm[warm.len() / 2][i];
    }
    let inodes = target.read().expect("quota reading").inodes;
    println!("{inodes} {} {} {} {} {} {}", cold[0], cold[1], cold[2], med[0], med[1], med[2]);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    match arg(1) {
        "setproj" => quota::assign::set_project(Path::new(arg(2)), arg(3).parse().expect("id"))
            .expect("set project id"),
        "getproj" => println!("{}", quota::project_of(Path::new(arg(2))).expect("get project id")),
        "fill" => fill(Path::new(arg(2)), arg(3).parse().expect("files")),
        "spread" => {
            spread(Path::new(arg(2)), arg(3).parse().expect("mounts"), arg(4).parse().expect("files"))
        }
        "work" => work(Path::new(arg(2)), arg(3).parse().expect("round")),
        "bench" => bench(Path::new(arg(2)), Path::new(arg(3)), arg(4).parse().expect("repeat")),
        other => {
            eprintln!("unknown command {other:?}");
            std::process::exit(2);
        }
    }
}
