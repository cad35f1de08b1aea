//! Mounts in other mount namespaces (root; runs the real binary): made by
//! another user in a user namespace, on a filesystem only that namespace sees,
//! at the same path as a host mount. The agent must see both, tell them apart by
//! `mntns`, measure each upper dir in its own namespace, and forget the
//! namespace's series when it ends.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{config_for, hand_over, write_file, Agent, Metrics, Namespace, Overlay, NOBODY};

/// `sh` that mounts a tmpfs on `priv` (seen by this namespace only), an
/// overlay there whose lower file `big` has `size` bytes, and appends a byte to
/// it through the overlay: one copy-up of `size` + 1 bytes into the upper dir.
fn private_overlay(private: &Path, size: usize) -> String {
    let p = private.display();
    format!(
        "mount -t tmpfs ns-tmp {p}\n\
         mkdir {p}/lower {p}/upper {p}/work {p}/merged\n\
         head -c {size} /dev/zero > {p}/lower/big\n\
         mount -t overlay overlay -o lowerdir={p}/lower,upperdir={p}/upper,workdir={p}/work,userxattr {p}/merged\n\
         printf x >> {p}/merged/big"
    )
}

fn upper(m: &Metrics, family: &str, mp: &str, mntns: &str, extra: &[(&str, &str)]) -> Option<f64> {
    let mut labels = vec![("mountpoint", mp), ("mntns", mntns)];
    labels.extend_from_slice(extra);
    m.get(family, &labels)
}

#[test]
fn another_users_namespace_is_seen_measured_in_place_and_forgotten() {
    common::require_root();
    let tmp =
        tempfile::Builder::new().keep(std::env::var_os("KEEP_TMP").is_some()).tempdir().expect("tempdir");
    let private = tmp.path().join("priv");
    hand_over(&private, NOBODY);
    let ns = Namespace::start(NOBODY, &private_overlay(&private, 300_000));
    let mntns = ns.mntns();

    // The host mounts an overlay at the very same path, with other contents
    // (the namespace's tmpfs hides them from it; its propagation is private).
    let host = Overlay::new(&private, "merged", "", |_| {});
    write_file(&host.merged.join("host-file"), 1000);
    let mp = host.merged.display().to_string();

    let agent = Agent::start(tmp.path(), &["--config", config_for(tmp.path(), "").to_str().expect("utf-8")]);
    let measured = |m: &Metrics| {
        upper(m, "overlayfs_upper_scans_total", &mp, &mntns, &[]).unwrap_or(0.0) >= 1.0
            && upper(m, "overlayfs_upper_scans_total", &mp, "", &[]).unwrap_or(0.0) >= 1.0
    };
    let m = common::wait_for("both mounts measured", Duration::from_secs(20), || {
        let r = common::http_get(&agent.addr, "/metrics").ok()?;
        let m = Metrics::parse(&r.body);
        if !measured(&m) {
            std::fs::write(tmp.path().join("last.prom"), &r.body).ok()?;
        }
        measured(&m).then_some(m)
    });
    assert_eq!(
        m.count("overlayfs_mount_info", &[("mountpoint", &mp)]),
        2,
        "one per namespace:\n{}",
        agent.log()
    );
    // The namespace's upper dir: on its private tmpfs, with the copied-up file.
    let copied = upper(&m, "overlayfs_upper_entries", &mp, &mntns, &[("kind", "copied_up")]);
    assert_eq!(copied, Some(1.0), "the copy-up of big, read with userxattr");
    let apparent = upper(&m, "overlayfs_upper_apparent_bytes", &mp, &mntns, &[]).expect("apparent bytes");
    assert!((300_001.0..300_001.0 + 4096.0).contains(&apparent), "big and the upper dir: {apparent}");
    // The host's: its own file, not the namespace's.
    assert_eq!(upper(&m, "overlayfs_upper_entries", &mp, "", &[("kind", "created")]), Some(1.0));
    let host_apparent =
        upper(&m, "overlayfs_upper_apparent_bytes", &mp, "", &[]).expect("host apparent bytes");
    assert!(host_apparent < 100_000.0, "the host's upper dir: {host_apparent}");
    let namespaces = m.get("overlayfs_discovery_namespaces", &[]).expect("namespaces gauge");
    assert!(namespaces >= 2.0, "the host's and the user's: {namespaces}");

    // The namespace ends: its series go, the host's stay.
    ns.end();
    let m = wait_gone(&agent, &mp, &mntns);
    assert_eq!(m.count("overlayfs_mount_info", &[("mountpoint", &mp), ("mntns", "")]), 1);
}

fn wait_gone(agent: &Agent, mp: &str, mntns: &str) -> Metrics {
    common::wait_for("the namespace's series to go", Duration::from_secs(20), || {
        let m = agent.metrics();
        let left = m.all().filter(|s| s.label("mntns") == Some(mntns)).count();
        (left == 0 && m.count("overlayfs_mount_info", &[("mountpoint", mp)]) == 1).then_some(m)
    })
}
