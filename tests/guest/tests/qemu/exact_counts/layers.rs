//! The mounts made the way the fixes' rules read them (the workload's
//! userxattr.rs and idmapped.rs), checked against what this kernel accepts:
//!
//! - U, `/t/u/merged`: the userxattr option of rootless mounts (Linux 5.11,
//!   "ovl: user xattr"), refused together with metacopy=on; two chowns copy up
//!   22,000 + 23,000 bytes, all avoidable by fuse_overlayfs, none by metacopy
//!   (the kernel refuses it on such mounts).
//! - Two unprivileged Concourse volumes (privileged.json false: the agent
//!   takes them as user-namespaced, their ids shifted by chown): the plain one
//!   over a tmpfs lower (a chown of 25,000 bytes, avoidable by metacopy and,
//!   where overlay takes idmapped layers, by idmapped_mounts); the idmapped one
//!   over an ext4 lower idmapped through a user namespace (mountinfo says
//!   `idmapped` on it: identity::idmap's kernel rule), whose chown of 24,000
//!   bytes is avoidable by metacopy but not by idmapped_mounts (already there).
//!
//! Where the kernel refuses a mount, the refusal is asserted (the errno of the
//! attempt) and nothing of that mount may appear.

use overlay_agent::kernel::features::{OverlayFeatures, Support};

use super::Guest;
use crate::common::grep;
use crate::guest::marker_value;

pub const USERXATTR: &str = "/t/u/merged";
pub const PLAIN_VOLUME: &str = "/t/v/volumes/live/plain/volume";
pub const IDMAPPED_VOLUME: &str = "/t/v/volumes/live/idmapped/volume";

/// Whether the kernel takes overlay's userxattr option: Linux 5.11 ("ovl:
/// user xattr"); 5.10 knows no such option.
pub fn userxattr(g: &Guest) -> bool {
    g.version() >= (5, 11)
}

/// Whether overlay takes idmapped layers on this kernel: the agent's own
/// table (kernel::features, rule kernel.idmapped_layers).
pub fn idmapped_layers(g: &Guest) -> bool {
    OverlayFeatures::classify(true, true, Some(g.version())).idmapped_layers == Support::Yes
}

/// The copy-ups on these mounts, all chowns of whole files (metacopy off):
/// (mount, copy-ups, data bytes).
fn chowns(g: &Guest) -> Vec<(&'static str, f64, f64)> {
    let mut v = vec![(PLAIN_VOLUME, 1.0, 25_000.0)];
    if userxattr(g) {
        v.push((USERXATTR, 2.0, 45_000.0)); // u1.dat 22,000 + u2.dat 23,000
    }
    if idmapped_layers(g) {
        v.push((IDMAPPED_VOLUME, 1.0, 24_000.0));
    }
    v
}

/// Rows of EXPECTED for this kernel.
pub fn expected(g: &Guest) -> Vec<(&'static str, &'static str, &'static str, f64)> {
    chowns(g).into_iter().map(|(mp, n, _)| (mp, "chown", "data", n)).collect()
}

/// Rows of EXPECTED_BYTES for this kernel.
pub fn expected_bytes(g: &Guest) -> Vec<(&'static str, &'static str, f64)> {
    chowns(g).into_iter().map(|(mp, _, bytes)| (mp, "chown", bytes)).collect()
}

/// Rows of EXPECTED_NOOP for this kernel: every chown changes the owner.
pub fn expected_noop(g: &Guest) -> Vec<(&'static str, &'static str, f64)> {
    chowns(g).into_iter().map(|(mp, _, _)| (mp, "chown", 0.0)).collect()
}

/// Rows of EXPECTED_AVOIDABLE_BYTES for this kernel.
pub fn expected_avoidable(g: &Guest) -> Vec<(&'static str, &'static str, f64)> {
    let mut v = vec![(PLAIN_VOLUME, "metacopy", 25_000.0)];
    if idmapped_layers(g) {
        v.push((PLAIN_VOLUME, "idmapped_mounts", 25_000.0));
        v.push((IDMAPPED_VOLUME, "metacopy", 24_000.0));
    }
    if userxattr(g) {
        v.push((USERXATTR, "fuse_overlayfs", 45_000.0));
    }
    v
}

/// Every mountpoint this module adds.
pub const MOUNTS: [&str; 3] = [USERXATTR, PLAIN_VOLUME, IDMAPPED_VOLUME];

/// What the kernel answered to mount attempt `what` (`=== OUTCOME WHAT ...`).
fn outcome(g: &Guest, what: &str) -> Option<String> {
    marker_value(&g.console, &format!("OUTCOME {what}"))
}

/// The kernel's answers: the userxattr mount (refused with metacopy=on on
/// every kernel: an unknown option on 5.10, a conflict from 5.11), the plain
/// volume, and the idmapped lower and its volume.
pub fn check_outcomes(g: &Guest) -> Vec<String> {
    let mut problems = Vec::new();
    let userxattr_want = if userxattr(g) { "ok" } else { "EINVAL" };
    for (what, want) in
        [("userxattr,metacopy=on", "EINVAL"), ("userxattr", userxattr_want), ("plain-volume", "ok")]
    {
        let got = outcome(g, what);
        if got.as_deref() != Some(want) {
            problems.push(format!("mount {what}: the kernel answered {got:?}, want {want}"));
        }
    }
    let setattr = outcome(g, "mount_setattr-idmap");
    let volume = outcome(g, "idmapped-volume");
    if idmapped_layers(g) {
        if (setattr.as_deref(), volume.as_deref()) != (Some("ok"), Some("ok")) {
            problems.push(format!("idmapped lower and its volume: ({setattr:?}, {volume:?}), want both ok"));
        }
        let owner: Option<String> = marker_value(&g.console, "IDMAPPED OWNER");
        if owner.as_deref() != Some("100000:100000") {
            problems.push(format!(
                "0:0 on disk seen through the idmapped lower as {owner:?}, want 100000:100000"
            ));
        }
        let options: Option<String> = marker_value(&g.console, "IDMAPPED MOUNT OPTIONS");
        if !options.as_deref().is_some_and(|o| o.split(',').any(|o| o == "idmapped")) {
            problems.push(format!("mountinfo options of /t/i/lower: {options:?}, want idmapped among them"));
        }
    } else {
        // Refused at one of the two steps: no mount_setattr system call before
        // 5.12 (ENOSYS), or overlay refusing the idmapped lower until 5.19 (EINVAL).
        let refused = matches!(
            (setattr.as_deref(), volume.as_deref()),
            (Some("ENOSYS"), None) | (Some("ok"), Some("EINVAL"))
        );
        if !refused {
            problems.push(format!(
                "kernel {} (no idmapped layers in overlay): mount_setattr {setattr:?}, overlay {volume:?}; \
                 want mount_setattr ENOSYS, or ok and the overlay EINVAL",
                g.version
            ));
        }
    }
    problems
}

/// overlayfs_mount_info of each mount: userxattr and idmapped_lowers as the
/// mounts were made, false on A, B and C; no series at all names a mount the
/// kernel refused. The agent's overlayfs_kernel_feature_info says the same
/// as its table here.
pub fn check_mount_info(g: &Guest) -> Vec<String> {
    let mut problems = Vec::new();
    let mounts = [
        ("/t/a/merged", true, "false", "false"),
        ("/t/b/merged", true, "false", "false"),
        ("/t/c/merged", true, "false", "false"),
        (USERXATTR, userxattr(g), "true", "false"),
        (PLAIN_VOLUME, true, "false", "false"),
        (IDMAPPED_VOLUME, idmapped_layers(g), "false", "true"),
    ];
    for (mp, mounted, userxattr, idmapped) in mounts {
        if !mounted {
            if g.text.contains(&format!("\"{mp}\"")) {
                problems.push(format!("{mp} was refused, yet series name it:\n{}", grep(&g.text, mp)));
            }
            continue;
        }
        let labels = [("mountpoint", mp), ("userxattr", userxattr), ("idmapped_lowers", idmapped)];
        if g.m.get("overlayfs_mount_info", &labels) != Some(1.0) {
            problems.push(format!(
                "no overlayfs_mount_info{{mountpoint={mp}, userxattr={userxattr}, idmapped_lowers={idmapped}}}:\n{}",
                grep(&g.text, "overlayfs_mount_info")
            ));
        }
    }
    let supported = if idmapped_layers(g) { "true" } else { "false" };
    let feature = [("feature", "idmapped_layers"), ("supported", supported)];
    if g.m.get("overlayfs_kernel_feature_info", &feature) != Some(1.0) {
        problems.push(format!(
            "overlayfs_kernel_feature_info{{idmapped_layers}}: want supported={supported}:\n{}",
            grep(&g.text, "overlayfs_kernel_feature_info")
        ));
    }
    problems
}

/// What the kernel did with these mounts, for the summary line.
pub fn summary(g: &Guest) -> String {
    let said = |what: &str| outcome(g, what).unwrap_or_else(|| "-".into());
    format!(
        "userxattr,metacopy=on {}, userxattr {}, mount_setattr idmap {}, overlay on the idmapped lower {}; \
         copy-ups on these mounts: {}",
        said("userxattr,metacopy=on"),
        said("userxattr"),
        said("mount_setattr-idmap"),
        said("idmapped-volume"),
        chowns(g).iter().map(|c| c.1).sum::<f64>(),
    )
}
