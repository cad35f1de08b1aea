//! Mode `concourse` on every kernel: a Concourse volume's copy-ups follow it
//! across baggageclaim's renames (init/, live/, dead/), mounted by a worker in
//! a private mount namespace of its own.

use crate::common::{grep, require_root, Metrics};
use crate::guest::{hang, kernels, run_guest, section, section_of};

/// A Concourse volume on real kernels: the six chown copy-ups the probes count
/// while the volume is in init/ stay on the handle after the renames to live/
/// and dead/ (the kernel counts by superblock, the agent labels by the mount's
/// current path), and no series names a former mountpoint. The worker runs in
/// its own mount namespace: the copy-ups are attributed to its mount, labelled
/// with that namespace, never to `unknown`.
#[test]
fn concourse_copy_ups_follow_the_volume_across_renames() {
    require_root();
    let h = "5c2f3e4d-1a2b-4c3d-8e9f-0a1b2c3d4e5f";
    let mut failures = Vec::new();
    for version in kernels() {
        let (console, log) = run_guest(&version, "concourse", "qemu-concourse");
        let fail = |what: String| format!("kernel {version}: {what} (console: {})", log.display());
        if let Some(marker) = ["AGENT NOT READY", "PROBES OFF", "CONCOURSE TIMEOUT"]
            .iter()
            .find(|m| console.contains(&format!("=== {m}")))
        {
            let agent_log = section(&console, "=== AGENT LOG BEGIN", "=== AGENT LOG END").unwrap_or("");
            failures.push(fail(format!("{marker}\n{agent_log}")));
            continue;
        }
        if let Some(line) = hang(&console) {
            failures.push(fail(line.to_owned()));
            continue;
        }
        let Some(mntns) = console
            .lines()
            .find_map(|l| l.strip_prefix("=== WORKER MNTNS mnt:["))
            .map(|l| l.trim().trim_end_matches(']').to_owned())
        else {
            failures.push(fail("no worker namespace".to_owned()));
            continue;
        };
        for state in ["INIT", "LIVE", "DEAD"] {
            let Some(text) = section_of(&console, state) else {
                failures.push(fail(format!("no {state} metrics")));
                continue;
            };
            let m = Metrics::parse(text);
            let mp = format!("/t/w/volumes/{}/{h}/volume", state.to_lowercase());
            let labels =
                [("mountpoint", mp.as_str()), ("mntns", &mntns), ("cause", "chown"), ("kind", "data")];
            let chown = m.get("overlayfs_copy_up_total", &labels);
            if chown != Some(6.0) {
                failures.push(fail(format!(
                    "{state}: chown copy-ups at {mp}: {chown:?}\n{}",
                    grep(text, "overlayfs_copy_up_total")
                )));
            }
            let unknown = m.count("overlayfs_copy_up_total", &[("mountpoint", "unknown")]);
            if unknown != 0 {
                failures.push(fail(format!("{state}: copy-ups under mountpoint=\"unknown\"")));
            }
            let others =
                text.lines().filter(|l| l.contains(&format!("/{h}/volume")) && !l.contains(&mp)).count();
            if others != 0 {
                failures.push(fail(format!("{state}: {others} series name another state's mountpoint")));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
