//! `parallel-prepare`, `parallel` and `append-one`: many processes copying up
//! at once.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use crate::files::file;

/// `parallel-prepare LOWER N`: N lower files of 2 MiB.
pub fn parallel_prepare(lower: &Path, n: usize) {
    for i in 0..n {
        file(lower, &format!("p{i}.dat"), 2 << 20);
    }
}

/// `parallel MERGED N`: N processes, released at once, each appending to its
/// own lower file: N concurrent data copy-ups of 2 MiB.
pub fn parallel(m: &Path, n: usize) {
    use std::process::{Command, Stdio};
    let me = std::env::current_exe().expect("own path");
    let mut children: Vec<_> = (0..n)
        .map(|i| {
            Command::new(&me)
                .arg("append-one")
                .arg(m.join(format!("p{i}.dat")))
                .stdin(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    // Release them all: each waits for its stdin to close.
    for c in &mut children {
        drop(c.stdin.take());
    }
    let failed = children.iter_mut().map(|c| c.wait().is_ok_and(|s| s.success())).filter(|ok| !ok).count();
    if failed > 0 {
        println!("workload: parallel: FAILED: {failed} of {n} processes");
        std::process::exit(1);
    }
    println!("workload: parallel {n}: ok");
}

/// `append-one FILE`: waits for stdin to close, then appends one byte.
pub fn append_one(f: &Path) {
    use std::io::Read;
    let mut buf = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut buf);
    OpenOptions::new().append(true).open(f).and_then(|mut f| f.write_all(b"+")).expect("append");
}
