//! Load for the benchmarks and the recorded storm: `churn` (overlay work that
//! copies nothing up), `storm` (a `chown -R`), `tree` and `links` (lower
//! layers), `steady` (background copy-ups).

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::Path;

use crate::files::file;

/// `churn DIR N`: N rounds of 8 operations (create, write, chown, chmod,
/// rename, link, unlink, unlink) on files that exist only in the upper layer (DIR is a directory
/// created on the merged mount): overlay work that copies nothing up.
pub fn churn(dir: &Path, n: usize) {
    fs::create_dir_all(dir).expect("mkdir churn dir");
    let start = std::time::Instant::now();
    for i in 0..n {
        let (a, b, c) = (dir.join(format!("f{i}")), dir.join(format!("g{i}")), dir.join(format!("h{i}")));
        File::create(&a).and_then(|mut f| f.write_all(b"x")).expect("create");
        chown(&a, Some(7), Some(7)).expect("chown");
        fs::set_permissions(&a, fs::Permissions::from_mode(0o640)).expect("chmod");
        fs::rename(&a, &b).expect("rename");
        fs::hard_link(&b, &c).expect("link");
        fs::remove_file(&b).expect("unlink");
        fs::remove_file(&c).expect("unlink");
    }
    println!("churn {} ops {:.6} s", n * 8, start.elapsed().as_secs_f64());
}

/// `storm DIR UID [PASSES]`: lchown every entry below DIR (a `chown -R`), PASSES
/// times (default 1), print the entries and the time.
pub fn storm(dir: &Path, uid: u32, passes: u32) {
    let start = std::time::Instant::now();
    let mut n = 0u64;
    let mut stack: Vec<_> = (0..passes).map(|_| dir.to_path_buf()).collect();
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("dir entry");
            let p = e.path();
            std::os::unix::fs::lchown(&p, Some(uid), Some(uid)).expect("lchown");
            n += 1;
            if e.file_type().expect("file type").is_dir() {
                stack.push(p);
            }
        }
    }
    println!("storm {n} entries {:.6} s", start.elapsed().as_secs_f64());
}

/// `tree DIR N [SIZE]`: N files of SIZE bytes (default 100) in directories of 100.
pub fn tree(dir: &Path, n: usize, size: usize) {
    for i in 0..n {
        file(dir, &format!("d{}/f{i}", i / 100), size);
    }
}

/// `links DIR N SIZE`: one file of SIZE bytes (`DIR/.data`) and N hard links to it
/// laid out as `tree` lays out its files. With index=off, overlayfs copies up each
/// name on its own: N copy-ups of SIZE bytes, for the lower layer's memory of one.
pub fn links(dir: &Path, n: usize, size: usize) {
    file(dir, ".data", size);
    let data = dir.join(".data");
    for i in 0..n {
        let d = dir.join(format!("d{}", i / 100));
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        let f = d.join(format!("f{i}"));
        std::fs::hard_link(&data, &f).unwrap_or_else(|e| panic!("link {}: {e}", f.display()));
    }
}

/// `steady SECS RATE MERGED...`: RATE chowns per second on each mount for SECS
/// seconds (background copy-up traffic), on the files `tree` made.
pub fn steady(secs: u64, rate: u64, mounts: &[&Path]) {
    let start = std::time::Instant::now();
    let ticks = secs * rate;
    for t in 0..ticks {
        for m in mounts {
            let f = m.join(format!("d{}/f{t}", t / 100));
            chown(&f, Some(7), Some(7)).unwrap_or_else(|e| panic!("chown {}: {e}", f.display()));
        }
        let next = std::time::Duration::from_micros((t + 1) * 1_000_000 / rate);
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    println!("steady {} copy-ups {:.3} s", ticks * mounts.len() as u64, start.elapsed().as_secs_f64());
}
