//! scripts/package.sh, the release command, run without a network (a network
//! namespace of its own: it must work offline once the test command has
//! installed its tools), and what it made: static binaries, checksums, the .debs
//! and their contents, the image archives and their platforms, the chart.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{repo_root, require_root, run};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .expect("dist")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// What a .deb installs: (path, mode) of every regular file and link.
fn deb_contents(deb: &Path) -> Vec<String> {
    run(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .filter(|l| !l.starts_with('d'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{} {}", f[0], f[5..].join(" ").trim_start_matches('.'))
        })
        .collect()
}

#[test]
fn package_sh_builds_every_artefact_offline() {
    require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dist: PathBuf = tmp.path().join("dist");
    // A release environment, not this test's: cargo test's variables (CARGO_PKG_*,
    // LD_LIBRARY_PATH, ...) would make cargo rebuild the static binary (ring's
    // build script watches some), and scripts/test.sh's build would then rebuild it again.
    let mut cmd = Command::new("unshare");
    cmd.env_clear().args(["--net", "--"]).arg(repo_root().join("scripts/package.sh")).env("DIST", &dist);
    for keep in ["PATH", "HOME", "CARGO_HOME", "RUSTUP_HOME", "LANG", "TOOLS_DIR"] {
        if let Some(v) = std::env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    let out = cmd.output().expect("unshare scripts/package.sh");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scripts/package.sh without a network failed:\n{log}");
    eprintln!("{log}");
    let got = files(&dist);
    let arches: Vec<&str> = ["amd64", "arm64"]
        .into_iter()
        .filter(|a| got.contains(&format!("overlay-agent-{VERSION}-linux-{a}")))
        .collect();
    assert!(arches.contains(&"amd64"), "no amd64 binary: {got:?}");
    // package.sh builds every architecture whose Rust target is installed, and
    // scripts/test.sh installs aarch64's: then both arches' artefacts are required.
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    if installed
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l == "aarch64-unknown-linux-musl"))
    {
        assert!(
            arches.contains(&"arm64"),
            "aarch64-unknown-linux-musl is installed but no arm64 binary: {got:?}"
        );
    }
    let mut want: BTreeSet<String> = ["SHA256SUMS".to_owned(), format!("overlay-agent-{VERSION}.tgz")].into();
    want.insert(format!("overlay-agent_{VERSION}_oci-image.tar"));
    for a in &arches {
        want.insert(format!("overlay-agent-{VERSION}-linux-{a}"));
        want.insert(format!("overlay-agent_{VERSION}-1_{a}.deb"));
        want.insert(format!("overlay-agent_{VERSION}_linux-{a}.oci.tar"));
    }
    assert_eq!(got, want, "target/dist");

    // Checksums of everything else, and they hold.
    let sums = std::fs::read_to_string(dist.join("SHA256SUMS")).expect("SHA256SUMS");
    let listed: BTreeSet<String> =
        sums.lines().filter_map(|l| l.split_whitespace().nth(1)).map(str::to_owned).collect();
    assert_eq!(listed.len() + 1, got.len(), "{sums}");
    run(Command::new("sha256sum").args(["-c", "--quiet", "SHA256SUMS"]).current_dir(&dist));

    // Static binaries: no interpreter; the host's runs.
    for a in &arches {
        let bin = dist.join(format!("overlay-agent-{VERSION}-linux-{a}"));
        let headers = run(Command::new("readelf").args(["-lh"]).arg(&bin));
        assert!(!headers.contains("INTERP"), "{a}: dynamically linked:\n{headers}");
        let machine = if *a == "amd64" { "X86-64" } else { "AArch64" };
        assert!(headers.contains(machine), "{a}: not {machine}");
    }
    let v = run(Command::new(dist.join(format!("overlay-agent-{VERSION}-linux-amd64"))).arg("--version"));
    assert_eq!(v.trim(), format!("overlay-agent {VERSION}"));

    // The packages: their architecture and exactly these files.
    for a in &arches {
        let deb = dist.join(format!("overlay-agent_{VERSION}-1_{a}.deb"));
        assert_eq!(run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Architecture")).trim(), *a);
        let contents = deb_contents(&deb);
        eprintln!("{a} package contents:\n{}", contents.join("\n"));
        let paths: BTreeSet<&str> = contents.iter().filter_map(|l| l.split_once(' ').map(|x| x.1)).collect();
        let want: BTreeSet<&str> = [
            "/usr/bin/overlay-agent",
            "/etc/overlay-agent/overlay-agent.yaml",
            "/usr/lib/systemd/system/overlay-agent.service",
            "/usr/share/man/man1/overlay-agent.1.gz",
            "/usr/share/overlay-agent/prometheus/overlay-agent.rules.yml",
            "/usr/share/overlay-agent/dashboards/overlay-agent.json",
            "/usr/share/doc/overlay-agent/README.md",
            "/usr/share/doc/overlay-agent/install.md",
            "/usr/share/doc/overlay-agent/metrics.md",
            "/usr/share/doc/overlay-agent/alerts.md",
            "/usr/share/doc/overlay-agent/runbooks.md",
            "/usr/share/doc/overlay-agent/copyright",
            "/usr/share/doc/overlay-agent/changelog.Debian.gz",
            "/usr/share/lintian/overrides/overlay-agent",
        ]
        .into();
        assert_eq!(paths, want, "{a} package contents");
    }

    // The image: one manifest list of every architecture, and one archive each.
    let platforms = common::list_platforms(&dist.join(format!("overlay-agent_{VERSION}_oci-image.tar")));
    let want: Vec<String> = arches.iter().map(|a| format!("linux/{a}")).collect();
    assert_eq!(platforms, want);

    // The chart, as helm packaged it.
    let chart = run(Command::new("tar").arg("-tzf").arg(dist.join(format!("overlay-agent-{VERSION}.tgz"))));
    for f in [
        "Chart.yaml",
        "values.yaml",
        "values.schema.json",
        "templates/daemonset.yaml",
        "files/overlay-agent.rules.yml",
    ] {
        assert!(chart.lines().any(|l| l == format!("overlay-agent/{f}")), "chart lacks {f}:\n{chart}");
    }
}
