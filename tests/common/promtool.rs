//! The tests' one way to run promtool: `check metrics` on an exposition, `check
//! rules` and `test rules` on the shipped rules and on recorded storms.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use super::host::repo_root;

/// Runs `promtool ARGS` in `dir`, with `stdin` written to it when given. Ok with
/// its output (stdout, then stderr) when it exits 0, else Err with its exit
/// status and the same output. Panics when promtool is not installed.
pub fn promtool(dir: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: run the README's test command, which installs it");
    if let Some(text) = stdin {
        child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write to promtool");
    }
    let out = child.wait_with_output().expect("promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{}:\n{text}", out.status))
    }
}

/// `promtool check metrics` on an exposition; panics with its output on failure.
pub fn promtool_check(text: &str) {
    if let Err(e) = promtool(&repo_root(), &["check", "metrics"], Some(text)) {
        panic!("promtool check metrics failed: {e}");
    }
}
