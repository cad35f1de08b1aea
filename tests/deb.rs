//! The Debian package, built by packaging/deb/build.sh (cargo-deb) from the
//! static binary, checked by lintian (every override commented), then installed with dpkg into a fresh
//! Debian root made by debootstrap from this machine's mirror (minbase with
//! systemd, cached by tests/lib/debian-root.sh; each run unpacks a clean copy):
//! the unit enabled and verified there, the installed binary run there
//! (`check-config`, `once` on an overlay mounted there), and a purge that leaves
//! nothing behind.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{repo_root, require_root, run};

const TRIPLE: &str = "x86_64-unknown-linux-musl";

/// Both packages' targets and Debian architectures: scripts/test.sh builds the
/// static binary of each (the arm64 one with the cross toolchain it installs).
const ARCHES: &[(&str, &str)] =
    &[("x86_64-unknown-linux-musl", "amd64"), ("aarch64-unknown-linux-musl", "arm64")];

/// Builds the amd64 package into `out`; returns its path.
fn build_deb(out: &Path) -> PathBuf {
    build_deb_for(TRIPLE, out)
}

/// Builds the package of Rust target `triple` into `out`; returns its path.
fn build_deb_for(triple: &str, out: &Path) -> PathBuf {
    // One build at a time: the tests run in parallel, and cargo-deb writes its
    // stripped copy of the binary and the man page to shared paths under target/
    // (two builds at once packaged a half-written binary: lintian saw no ELF).
    static BUILDS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    let bin = repo_root().join("target").join(triple).join("release/overlay-agent");
    assert!(bin.exists(), "{} missing: scripts/test.sh builds it", bin.display());
    run(Command::new(repo_root().join("packaging/deb/build.sh")).arg(triple).arg(out));
    let debs: Vec<PathBuf> = std::fs::read_dir(out)
        .expect("out")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    debs.into_iter().next().expect("one .deb")
}

fn field(deb: &Path, name: &str) -> String {
    run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name)).trim().to_owned()
}

/// Files (and links) under `root`, relative, without what dpkg and the test
/// itself change.
fn listing(root: &Path) -> BTreeSet<String> {
    // run/: a tmpfs on a booted system (systemd-analyze leaves its state there).
    let skip = ["proc", "run", "tmp", "srv", "var/lib/dpkg", "var/log", "var/cache/debconf"];
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
            if skip.iter().any(|s| rel == *s || rel.starts_with(&format!("{s}/"))) {
                continue;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
            out.insert(rel);
        }
    }
    out
}

/// A mount under the root, unmounted on drop (also when the test fails).
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn chroot(root: &Path, args: &[&str]) -> std::process::Output {
    Command::new("chroot")
        .arg(root)
        .args(args)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .expect("chroot")
}

fn ok(what: &str, out: std::process::Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

#[test]
fn deb_installs_runs_and_purges_in_a_fresh_debian_root() {
    require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let deb = build_deb(&tmp.path().join("dist"));
    assert_eq!(field(&deb, "Architecture"), "amd64");
    assert_eq!(field(&deb, "Depends"), "", "a static binary depends on nothing");
    let tarball = run(Command::new(repo_root().join("tests/lib/debian-root.sh"))
        .arg(repo_root().join(".cache/debian-root")));
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).expect("mkdir root");
    run(Command::new("tar").arg("-C").arg(&root).arg("-xf").arg(tarball.trim()));
    let before = listing(&root);
    std::fs::copy(&deb, root.join("tmp/overlay-agent.deb")).expect("copy deb");
    run(Command::new("mount").args(["-t", "proc", "proc"]).arg(root.join("proc")));
    let _proc = Mounted(root.join("proc"));

    let install = ok("dpkg -i", chroot(&root, &["dpkg", "-i", "/tmp/overlay-agent.deb"]));
    for f in [
        "usr/bin/overlay-agent",
        "etc/overlay-agent/overlay-agent.yaml",
        "usr/lib/systemd/system/overlay-agent.service",
        "usr/share/man/man1/overlay-agent.1.gz",
        "etc/systemd/system/multi-user.target.wants/overlay-agent.service",
        "usr/share/overlay-agent/prometheus/overlay-agent.rules.yml",
        "usr/share/overlay-agent/dashboards/overlay-agent.json",
        "usr/share/doc/overlay-agent/copyright",
    ] {
        assert!(root.join(f).symlink_metadata().is_ok(), "{f} not installed (enabled):\n{install}");
    }
    // The installed unit, as systemd on that system sees it: nothing to say.
    let verify = ok(
        "systemd-analyze verify",
        chroot(&root, &["systemd-analyze", "verify", "/usr/lib/systemd/system/overlay-agent.service"]),
    );
    assert!(verify.trim().is_empty(), "systemd-analyze verify in the Debian root:\n{verify}");
    let cfg = ok(
        "check-config",
        chroot(&root, &["overlay-agent", "check-config", "/etc/overlay-agent/overlay-agent.yaml"]),
    );
    assert_eq!(cfg.trim(), "/etc/overlay-agent/overlay-agent.yaml: ok");

    // An overlay mounted inside the root, a file copied up, then `once`.
    ok(
        "overlay",
        chroot(
            &root,
            &[
                "sh",
                "-c",
                "mkdir -p /srv/l /srv/u /srv/w /srv/m && head -c 4321 /dev/zero > /srv/l/f && \
                 mount -t overlay overlay -o lowerdir=/srv/l,upperdir=/srv/u,workdir=/srv/w /srv/m && \
                 chown 7:7 /srv/m/f",
            ],
        ),
    );
    let _overlay = Mounted(root.join("srv/m"));
    let mp = root.join("srv/m").display().to_string();
    let out = chroot(&root, &["overlay-agent", "once", "--config", "/etc/overlay-agent/overlay-agent.yaml"]);
    ok("once", out.clone());
    let exposition = String::from_utf8_lossy(&out.stdout).into_owned();
    let m = common::Metrics::parse(&exposition);
    assert_eq!(
        m.get("overlayfs_upper_entries", &[("mountpoint", &mp), ("kind", "copied_up")]),
        Some(1.0),
        "{exposition}"
    );
    assert_eq!(m.get("overlayfs_upper_copied_up_bytes", &[("mountpoint", &mp)]), Some(4321.0));
    drop(_overlay);

    ok("dpkg --purge", chroot(&root, &["dpkg", "--purge", "overlay-agent"]));
    std::fs::remove_file(root.join("tmp/overlay-agent.deb")).expect("rm deb");
    let after = listing(&root);
    let left: Vec<&String> = after.difference(&before).collect();
    let gone: Vec<&String> = before.difference(&after).collect();
    assert!(left.is_empty() && gone.is_empty(), "purge left {left:?}, removed {gone:?}");
}

/// lintian at every level, info and pedantic included, on the amd64 and the
/// arm64 package: nothing but the package's own overrides, each with the
/// comment that says why.
#[test]
fn lintian_is_clean_and_every_override_says_why() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut debs = Vec::new();
    for (triple, arch) in ARCHES {
        let deb = build_deb_for(triple, &tmp.path().join(arch));
        assert_eq!(field(&deb, "Architecture"), *arch);
        let out = Command::new("lintian")
            .args(["--display-info", "--pedantic", "--fail-on", "error,warning,info,pedantic"])
            .arg(&deb)
            .output()
            .expect("lintian (scripts/deps.sh installs it)");
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && report.trim().is_empty(),
            "lintian on the {arch} package:\n{report}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        debs.push(deb);
    }
    let overrides =
        std::fs::read_to_string(repo_root().join("packaging/deb/lintian-overrides")).expect("overrides");
    let mut commented = false;
    let mut tags = 0;
    for line in overrides.lines() {
        if line.starts_with('#') {
            commented = true;
        } else if line.trim().is_empty() {
            commented = false;
        } else {
            assert!(commented, "override without a comment saying why: {line}");
            assert!(line.starts_with("overlay-agent: ") || line.starts_with("overlay-agent ["), "{line}");
            tags += 1;
        }
    }
    assert!(tags > 0);
    // Each package installs them where lintian looks.
    for deb in &debs {
        let contents = run(Command::new("dpkg-deb").arg("-c").arg(deb));
        assert!(contents.contains("./usr/share/lintian/overrides/overlay-agent"), "{contents}");
    }
}
