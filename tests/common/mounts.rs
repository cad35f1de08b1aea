//! Real overlay and bind mounts on this host, unmounted on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::host::run;

/// A real overlay mount; unmounted (lazily if busy) on drop.
pub struct Overlay {
    pub base: PathBuf,
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub merged: PathBuf,
    mounted: bool,
}

impl Overlay {
    /// Creates `base/{lower,upper,work,<merged_name>}`; the caller fills `lower`
    /// with `populate` before the mount.
    pub fn new(base: &Path, merged_name: &str, extra_opts: &str, populate: impl FnOnce(&Path)) -> Overlay {
        let mut o = Overlay {
            base: base.to_owned(),
            lower: base.join("lower"),
            upper: base.join("upper"),
            work: base.join("work"),
            merged: base.join(merged_name),
            mounted: false,
        };
        for d in [&o.lower, &o.upper, &o.work, &o.merged] {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        populate(&o.lower);
        let mut opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            o.lower.display(),
            o.upper.display(),
            o.work.display()
        );
        if !extra_opts.is_empty() {
            opts.push(',');
            opts.push_str(extra_opts);
        }
        run(Command::new("mount").args(["-t", "overlay", "overlay", "-o", &opts]).arg(&o.merged));
        o.mounted = true;
        o
    }

    pub fn unmount(&mut self) {
        if self.mounted {
            run(Command::new("umount").arg(&self.merged));
            self.mounted = false;
        }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount").arg(&self.merged).status().map(|s| s.success()).unwrap_or(false);
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.merged).status();
            }
        }
    }
}

/// A bind mount, unmounted on drop.
pub struct Bind(pub PathBuf);

impl Bind {
    pub fn new(from: &Path, to: &Path) -> Bind {
        std::fs::create_dir_all(to).expect("mkdir bind target");
        run(Command::new("mount").arg("--bind").arg(from).arg(to));
        Bind(to.to_owned())
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A mount table (`/proc/<pid>/mountinfo`) as text, or "" when it cannot be
/// read. A node's table may hold mount points whose names are not UTF-8 (the
/// hostile-name tests make one, and a killed run leaves it behind): the odd
/// bytes become U+FFFD, the other lines stay as they are.
pub fn mountinfo(path: impl AsRef<Path>) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}
