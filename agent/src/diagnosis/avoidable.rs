//! The fixes' rules (`fix.*` in [`super::rules`]) applied to one mount's
//! copy-up figures. Each fix is counted on its own: a chown copy-up on a
//! metacopy=off mount of a user-namespaced container counts under metacopy
//! and under idmapped_mounts, and the savings of two fixes do not add up.

use std::collections::BTreeMap;

use overlay_agent_common::{cause, kind};

use crate::kernel::features::{OverlayFeatures, Support};

/// One (cause, kind) of a mount's copy-up counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    pub copy_ups: u64,
    pub data_bytes: u64,
    pub latency_ns: u64,
    /// Of `copy_ups`, those by a chown, chmod or utimes that set what the file
    /// had (the kernel's no-op count, `overlayfs_copy_up_noop_total`).
    pub noop: u64,
}

/// A mount's figures by (cause, kind) code.
pub type ByCauseKind = BTreeMap<(u8, u8), Figures>;

/// What the rules need to know of a mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MountFacts {
    /// The mount's metacopy option (None: the kernel's default, printed neither way).
    pub metacopy: Option<bool>,
    pub nfs_export: Option<bool>,
    pub userxattr: bool,
    pub idmapped_lowers: bool,
    /// A container's root (not a build step).
    pub container: bool,
    /// An image build's mount (BuildKit, a podman/buildah or Docker layer no container holds).
    pub build: bool,
    /// A container or volume whose ids the runtime shifts by chowning.
    pub userns: bool,
}

/// The fixes, in the order of the `fix` label's documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fix {
    Metacopy,
    SkipNoop,
    IdmappedMounts,
    FuseOverlayfs,
    Volume,
    CopyChown,
}

impl Fix {
    pub const ALL: [Fix; 6] =
        [Fix::Metacopy, Fix::SkipNoop, Fix::IdmappedMounts, Fix::FuseOverlayfs, Fix::Volume, Fix::CopyChown];

    /// The `fix` label value.
    pub fn name(self) -> &'static str {
        match self {
            Fix::Metacopy => "metacopy",
            Fix::SkipNoop => "skip_noop",
            Fix::IdmappedMounts => "idmapped_mounts",
            Fix::FuseOverlayfs => "fuse_overlayfs",
            Fix::Volume => "volume",
            Fix::CopyChown => "copy_chown",
        }
    }

    /// Its rule's id in [`super::rules::RULES`].
    pub fn rule_id(self) -> String {
        format!("fix.{}", self.name())
    }
}

/// What a fix would have avoided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Saving {
    pub copy_ups: u64,
    pub data_bytes: u64,
    pub latency_ns: u64,
}

impl Saving {
    fn add(&mut self, f: &Figures) {
        self.copy_ups += f.copy_ups;
        self.data_bytes += f.data_bytes;
        self.latency_ns += f.latency_ns;
    }
}

/// The mean data copy-up size from which a file is large enough for a volume (fix.volume).
pub const VOLUME_MIN_MEAN_BYTES: u64 = 1 << 20;

const METADATA_CAUSES: [u8; 5] = [cause::CHOWN, cause::CHMOD, cause::UTIMES, cause::SETATTR, cause::XATTR];
const NOOP_CAUSES: [u8; 3] = [cause::CHOWN, cause::CHMOD, cause::UTIMES];

/// What each fix that applies to the mount would have avoided; a fix is left
/// out where its rule does not apply or no copy-up of its kind happened.
pub fn avoidable(figures: &ByCauseKind, m: &MountFacts, k: &OverlayFeatures) -> BTreeMap<Fix, Saving> {
    let mut out = BTreeMap::new();
    for fix in Fix::ALL {
        let mut saving: Option<Saving> = None;
        for (&(c, kd), f) in figures {
            if let Some(part) = share(fix, c, kd, f, m, k) {
                saving.get_or_insert_with(Saving::default).add(&part);
            }
        }
        if let Some(s) = saving {
            if fix != Fix::Volume || volume_sized(figures, m) {
                out.insert(fix, s);
            }
        }
    }
    out
}

/// The part of one (cause, kind)'s figures that `fix` avoids, None when its rule
/// does not cover them.
fn share(fix: Fix, c: u8, kd: u8, f: &Figures, m: &MountFacts, k: &OverlayFeatures) -> Option<Figures> {
    let covered = match fix {
        Fix::Metacopy => {
            kd == kind::DATA
                && METADATA_CAUSES.contains(&c)
                && m.metacopy != Some(true)
                && !m.userxattr
                && m.nfs_export != Some(true)
                && k.metacopy == Support::Yes
        }
        Fix::SkipNoop => return (NOOP_CAUSES.contains(&c) && f.noop > 0).then(|| noop_share(f)),
        Fix::IdmappedMounts => {
            c == cause::CHOWN
                && m.userns
                && !m.idmapped_lowers
                && !m.userxattr
                && k.idmapped_layers == Support::Yes
        }
        Fix::FuseOverlayfs => c == cause::CHOWN && m.userxattr,
        Fix::Volume => {
            (c == cause::OPEN || c == cause::TRUNCATE)
                && (kd == kind::DATA || kd == kind::DEFERRED_DATA)
                && m.container
                && !m.build
        }
        Fix::CopyChown => (c == cause::CHOWN || c == cause::CHMOD) && m.build,
    };
    covered.then_some(*f)
}

/// The no-op part of a (cause, kind): its count, and its bytes and time as the
/// no-op share of the key's (the kernel counts no-ops, not their bytes).
fn noop_share(f: &Figures) -> Figures {
    let n = f.noop.min(f.copy_ups);
    let part = |v: u64| (v as u128 * n as u128 / f.copy_ups.max(1) as u128) as u64;
    Figures { copy_ups: n, data_bytes: part(f.data_bytes), latency_ns: part(f.latency_ns), noop: n }
}

/// fix.volume: the mean size of the container's data copy-ups by open and
/// truncate is at least [`VOLUME_MIN_MEAN_BYTES`].
fn volume_sized(figures: &ByCauseKind, m: &MountFacts) -> bool {
    let (mut n, mut bytes) = (0u64, 0u64);
    for (&(c, kd), f) in figures {
        if share(Fix::Volume, c, kd, f, m, &OverlayFeatures::classify(false, false, None)).is_some() {
            n += f.copy_ups;
            bytes += f.data_bytes;
        }
    }
    n > 0 && bytes / n >= VOLUME_MIN_MEAN_BYTES
}

#[cfg(test)]
mod tests;
