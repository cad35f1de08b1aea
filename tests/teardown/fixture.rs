//! The stage of the teardown tests: mounts made and unmounted by the test, trees
//! of tens of thousands of files, overlays over them, and the unmount cycles.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::common::{run, wait_for, write_file};
use super::holders::{diag, holds};

/// Unmount cycles per test, and the longest random dwell of an overlay.
pub const CYCLES: usize = 100;
pub const DWELL_MS: u64 = 300;

/// A mount (tmpfs or bind) made by the test; lazily unmounted on drop.
pub struct Mounted(pub PathBuf);

impl Mounted {
    pub fn tmpfs(at: &Path) -> Mounted {
        std::fs::create_dir_all(at).expect("mkdir");
        run(Command::new("mount").args(["-t", "tmpfs", "-o", "size=1g,nr_inodes=400k", "tmpfs"]).arg(at));
        Mounted(at.to_owned())
    }

    pub fn bind(from: &Path, at: &Path) -> Mounted {
        std::fs::create_dir_all(at).expect("mkdir");
        run(Command::new("mount").arg("--bind").arg(from).arg(at));
        Mounted(at.to_owned())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `umount [-l] path`; the error message on failure ("target is busy").
pub fn umount(path: &Path, lazy: bool) -> Result<(), String> {
    umount_in(None, path, lazy)
}

/// `prog`, run in the mount namespace of process `ns` (`nsenter`), or in the
/// test's own.
pub fn command_in(ns: Option<u32>, prog: &str) -> Command {
    match ns {
        None => Command::new(prog),
        Some(pid) => {
            let mut c = Command::new("nsenter");
            c.args(["-t", &pid.to_string(), "-m", "--", prog]);
            c
        }
    }
}

/// [`umount`] in the mount namespace of process `ns`.
pub fn umount_in(ns: Option<u32>, path: &Path, lazy: bool) -> Result<(), String> {
    let mut c = command_in(ns, "umount");
    if lazy {
        c.arg("-l");
    }
    let out = c.arg(path).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

pub fn run_status(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| e.to_string())?;
    out.status.success().then_some(()).ok_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_owned())
}

/// Fills `root` with `top` x `sub` directories of `files` one-byte files each;
/// returns the number of entries made.
pub fn populate(root: &Path, top: usize, sub: usize, files: usize) -> u64 {
    let mut n = 0;
    for t in 0..top {
        for s in 0..sub {
            let d = root.join(format!("t{t}/s{s}"));
            std::fs::create_dir_all(&d).expect("mkdir");
            for f in 0..files {
                std::fs::write(d.join(format!("f{f}")), b"x").expect("write");
            }
            n += 1 + files as u64;
        }
        n += 1;
    }
    n
}

pub fn dev_of(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").dev()
}

/// xorshift64*: random dwell times, from a seed printed for a rerun.
pub struct Rng(u64);

impl Rng {
    pub fn seeded() -> Rng {
        let seed = std::env::var("TEARDOWN_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
        eprintln!("TEARDOWN_SEED={seed}");
        Rng(seed | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

pub fn mount_overlay(lower: &Path, upper: &Path, work: &Path, merged: &Path) {
    mount_overlay_in(None, lower, upper, work, merged);
}

pub fn mount_overlay_in(ns: Option<u32>, lower: &Path, upper: &Path, work: &Path, merged: &Path) {
    let opts =
        format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
    run(command_in(ns, "mount").args(["-t", "overlay", "overlay", "-o", &opts]).arg(merged));
}

/// The stage of the unmount cycles: a tmpfs (`store`) holding a tree of tens of
/// thousands of files (`tree/upper`) and a work dir, bind-mounted at `t` for each
/// cycle as the upper dir's own filesystem, as a volume per job is.
pub struct Stage {
    pub lower: PathBuf,
    pub tree: PathBuf,
    pub t: PathBuf,
    pub merged: PathBuf,
    /// The tmpfs's device: what the agent must not hold after a cycle.
    pub dev: u64,
    /// The process in whose mount namespace the cycles mount and unmount (the
    /// test's own when `None`).
    pub ns: Option<u32>,
    _store: Mounted,
}

/// What a run of cycles found.
#[derive(Debug, Default)]
pub struct Outcome {
    pub failures: Vec<String>,
    /// Cycles whose unmount came while the agent held the upper filesystem.
    pub overlapped: usize,
}

impl Stage {
    pub fn new(base: &Path) -> Stage {
        let store = Mounted::tmpfs(&base.join("store"));
        let tree = store.0.join("tree");
        let entries = populate(&tree.join("upper"), 40, 40, 20);
        std::fs::create_dir_all(tree.join("work")).expect("mkdir work");
        let lower = base.join("lower");
        write_file(&lower.join("etc/os-release"), 100);
        let merged = base.join("merged");
        std::fs::create_dir_all(&merged).expect("mkdir merged");
        eprintln!("upper dir: {entries} entries");
        Stage { lower, dev: dev_of(&store.0), tree, t: base.join("T"), merged, ns: None, _store: store }
    }

    /// `n` cycles: bind the tree at `t`, mount the overlay (its upper dir in `t`),
    /// wait a random time, unmount the overlay, and at once `t`. `check` runs
    /// after each cycle and may report a failure.
    pub fn cycles(&self, pid: u32, n: usize, mut check: impl FnMut() -> Option<String>) -> Outcome {
        let mut rng = Rng::seeded();
        let mut out = Outcome::default();
        std::fs::create_dir_all(&self.t).expect("mkdir T");
        for cycle in 0..n {
            run(command_in(self.ns, "mount").arg("--bind").arg(&self.tree).arg(&self.t));
            mount_overlay_in(self.ns, &self.lower, &self.t.join("upper"), &self.t.join("work"), &self.merged);
            std::thread::sleep(Duration::from_millis(rng.below(DWELL_MS)));
            out.overlapped += usize::from(holds(pid, self.dev));
            if let Err(e) = umount_in(self.ns, &self.merged, false) {
                out.failures.push(format!("cycle {cycle}: umount of the overlay: {e}"));
                let _ = umount_in(self.ns, &self.merged, true);
            }
            if let Err(e) = umount_in(self.ns, &self.t, false) {
                out.failures.push(format!(
                    "cycle {cycle}: umount of the upper dir's filesystem: {e}; {}",
                    diag(pid, self.dev)
                ));
                let _ = umount_in(self.ns, &self.t, true);
            }
            if let Some(e) = check() {
                out.failures.push(format!("cycle {cycle}: {e}"));
            }
        }
        eprintln!(
            "{n} cycles, {} with a scan in flight at the unmount, {} failures",
            out.overlapped,
            out.failures.len()
        );
        for f in &out.failures {
            eprintln!("  {f}");
        }
        out
    }
}

impl Outcome {
    pub fn assert_clean(&self, n: usize, log: impl Fn() -> String) {
        assert!(
            self.failures.is_empty(),
            "{} of {n} cycles failed:\n{}\n{}",
            self.failures.len(),
            self.failures.join("\n"),
            log()
        );
        assert!(
            self.overlapped >= n / 10,
            "only {} of {n} cycles caught a scan in flight: the test tests nothing",
            self.overlapped
        );
    }
}

/// Cycles of the tests with a tmpfs per cycle.
pub const FS_CYCLES: usize = 5;

/// A tmpfs per cycle with `top` x 30 x 20 files in `upper/<name>` for each name,
/// an overlay over it, the agent walking it (a scan budget stretches its walks):
/// returns once the agent holds the filesystem, with the tmpfs, its device and
/// the entries of each tree.
pub fn walked_tmpfs(base: &Path, pid: u32, trees: &[(&str, usize)]) -> (Mounted, u64, Vec<u64>) {
    let t = Mounted::tmpfs(&base.join("T"));
    let sizes =
        trees.iter().map(|(name, top)| populate(&t.0.join("upper").join(name), *top, 30, 20)).collect();
    std::fs::create_dir_all(t.0.join("work")).expect("mkdir work");
    write_file(&base.join("lower/f"), 10);
    std::fs::create_dir_all(base.join("merged")).expect("mkdir merged");
    mount_overlay(&base.join("lower"), &t.0.join("upper"), &t.0.join("work"), &base.join("merged"));
    let dev = dev_of(&t.0);
    wait_for("a walk of the upper dir", Duration::from_secs(30), || holds(pid, dev).then_some(()));
    (t, dev, sizes)
}
