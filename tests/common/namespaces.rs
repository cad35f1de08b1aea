//! Real mount namespaces, made the way rootless runtimes make them: an
//! unprivileged user runs `unshare --user --map-root-user --mount` and mounts
//! inside. Killed on drop (the namespace, and every mount in it, ends with its
//! last process).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The uid the namespaces run as: `nobody`, an ordinary user of this host.
pub const NOBODY: u32 = 65534;

/// A process of `uid` in its own user and mount namespace.
pub struct Namespace {
    pub child: Child,
}

impl Namespace {
    /// Runs `script` (sh) as `uid` in a new user+mount namespace with private
    /// propagation; returns once the script has printed `ready` (its last step
    /// before it waits), or panics with what it printed instead.
    pub fn start(uid: u32, script: &str) -> Namespace {
        let body = format!("set -e\n{script}\necho ready\nexec sleep 1000000");
        let mut child = Command::new("setpriv")
            .args(["--reuid", &uid.to_string(), "--regid", &uid.to_string(), "--clear-groups"])
            .args(["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"])
            .args(["sh", "-c", &body])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start setpriv unshare");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        if line.trim() != "ready" {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!("namespace script failed: {line}{}", String::from_utf8_lossy(&out.stderr));
        }
        Namespace { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The namespace's inode number, as the agent's `mntns` label says it.
    pub fn mntns(&self) -> String {
        let link = std::fs::read_link(format!("/proc/{}/ns/mnt", self.pid())).expect("ns/mnt");
        let link = link.to_string_lossy().into_owned();
        link.trim_start_matches("mnt:[").trim_end_matches(']').to_owned()
    }

    /// Ends the namespace's only process, and with it the namespace.
    pub fn end(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes `dir` and its ancestors up to `/tmp` traversable, and `dir` owned by `uid`.
pub fn hand_over(dir: &Path, uid: u32) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let mut d = Some(dir);
    while let Some(p) = d.filter(|p| p.starts_with("/tmp") && *p != Path::new("/tmp")) {
        let mode = std::fs::metadata(p).expect("stat").permissions().mode();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | 0o755)).expect("chmod");
        d = p.parent();
    }
    std::os::unix::fs::chown(dir, Some(uid), Some(uid)).expect("chown");
}
