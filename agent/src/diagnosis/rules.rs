//! The one table of the diagnosis rules: each mount or kernel fact the agent
//! reads and each fix it counts, what the rule says, and where that comes from.
//! The code that applies a rule names it by id ([`rule`]); docs/metrics.md
//! lists the same table (a unit test keeps the two in step). A leaf module:
//! it imports nothing of the agent, so identity may use it as well as the
//! metrics. The three kernel commits cited were checked against public copies
//! of the kernel's history (subject and hash): 9caccd41541a (5.12),
//! d5791044d2e5 (4.19), bc70682a497c (5.19).

/// One rule: an id the code names, the rule, and its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub id: &'static str,
    pub rule: &'static str,
    pub source: &'static str,
}

pub const RULES: &[Rule] = &[
    // Mount facts: overlayfs_mount_info{idmapped_lowers}.
    Rule {
        id: "idmapped_lowers.containerd",
        rule: "a lower layer under a directory whose name starts with ovl-idmapped: containerd mounts idmapped binds of the lowers there (then detaches them) for user-namespaced pods",
        source: "containerd 2.0 core/mount/mount_idmapped_linux.go (os.MkdirTemp(..., \"ovl-idmapped\")); Kubernetes docs, user namespaces: lowerdir=/tmp/ovl-idmapped<N>/0",
    },
    Rule {
        id: "idmapped_lowers.containers_storage",
        rule: "a lower layer at <storage>/overlay/<layer>/mapped/<n>: containers/storage's idmapped binds of a layer's lowers",
        source: "containers/storage drivers/overlay/overlay.go (idmapped lowers mounted under the layer's mapped/ directory when the kernel supports them)",
    },
    Rule {
        id: "idmapped_lowers.kernel",
        rule: "a lower layer on a mount whose mountinfo options include idmapped (the longest mountpoint that holds the lower decides)",
        source: "Linux 5.12, fs/proc_namespace.c show_mnt_opts (\",idmapped\" when the mount's user namespace is not the initial one, later is_idmapped_mnt); commit 9caccd41541a \"fs: introduce MOUNT_ATTR_IDMAP\"",
    },
    // Kernel facts: overlayfs_kernel_feature_info{feature,supported}.
    Rule {
        id: "kernel.metacopy",
        rule: "overlay supports metacopy when /sys/module/overlay/parameters/metacopy exists; unknown while overlay is neither loaded nor built in",
        source: "Linux 4.19, commit d5791044d2e5 \"ovl: Provide a mount option metacopy=on/off for metadata copyup\" (module_param_named(metacopy, ...)); Documentation/filesystems/overlayfs.rst, Metadata only copy up",
    },
    Rule {
        id: "kernel.idmapped_layers",
        rule: "overlay accepts idmapped lower and upper layers from Linux 5.19",
        source: "Linux 5.19, commit bc70682a497c \"ovl: support idmapped layers\"; Documentation/filesystems/overlayfs.rst, Permission model",
    },
    // Fixes: overlayfs_copy_up_avoidable_{seconds,data_bytes}_total{fix}.
    Rule {
        id: "fix.metacopy",
        rule: "data copy-ups (kind data) by chown, chmod, utimes, setattr or xattr on a mount with metacopy off, where the kernel supports metacopy; never on userxattr mounts, never with nfs_export=on, never for copy-ups that were metadata-only already (kind metadata, directory) or deferred data",
        source: "Documentation/filesystems/overlayfs.rst, Metadata only copy up; fs/overlayfs/params.c ovl_fs_params_verify (userxattr and metacopy=on conflict; nfs_export and metacopy conflict)",
    },
    Rule {
        id: "fix.skip_noop",
        rule: "copy-ups by a chown, chmod or utimes that set what the file already had (the kernel's no-op count); bytes and seconds are the no-op share of their cause and kind",
        source: "percona-docker #64 (a chown to the same owner duplicated every file); containers/storage #754 (stat before chown for this reason)",
    },
    Rule {
        id: "fix.idmapped_mounts",
        rule: "chown copy-ups (every kind) on a mount of a user-namespaced container or volume (the runtime records uid mappings, or a Concourse unprivileged volume) whose lowers are not idmapped, where the kernel supports idmapped layers; never on userxattr mounts (an unprivileged mounter cannot make idmapped mounts)",
        source: "Linux 5.19 \"ovl: support idmapped layers\"; containerd 2.0 docs/user-namespaces (idmapped lowers, else slow_chown); Kubernetes user namespaces need 6.3+ for idmapped mounts of tmpfs and overlay lowers",
    },
    Rule {
        id: "fix.fuse_overlayfs",
        rule: "chown copy-ups (every kind) on a userxattr (rootless) mount: fuse-overlayfs maps ids without copying files up",
        source: "podman docs, rootless tutorial (fuse-overlayfs for rootless storage); containers/storage SupportsShifting (fuse-overlayfs shifts contiguous mappings)",
    },
    Rule {
        id: "fix.volume",
        rule: "data copy-ups (kind data, deferred data) by open or truncate on a container's mount (not a build), when their mean size is at least 1 MiB: a volume keeps such files out of the image layer",
        source: "Docker docs, storage drivers: 'use volumes for write-heavy workloads' (the copy-up of large files); overlayfs.rst, Non-directories (the whole file is copied up on open for write)",
    },
    Rule {
        id: "fix.copy_chown",
        rule: "chown or chmod copy-ups (every kind) on an image build's mount (BuildKit, or a podman/buildah or Docker layer no container holds): COPY --chown/--chmod sets ownership when the files are added",
        source: "Dockerfile reference, COPY --chown and --chmod; a RUN chown -R stores every file twice in the image",
    },
];

/// The rule `id` (the ids the code names are all in [`RULES`]; a test checks).
pub fn rule(id: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_every_rule_has_a_source() {
        let mut ids: Vec<&str> = RULES.iter().map(|r| r.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), RULES.len());
        assert!(RULES.iter().all(|r| !r.rule.is_empty() && !r.source.is_empty()));
    }

    /// docs/metrics.md lists every rule by id with its source.
    #[test]
    fn the_docs_list_every_rule() {
        let doc = include_str!("../../../docs/metrics.md");
        for r in RULES {
            let row = doc.lines().find(|l| l.contains(&format!("`{}`", r.id)));
            let row = row.unwrap_or_else(|| panic!("docs/metrics.md has no row for rule {}", r.id));
            assert!(row.contains(r.source), "docs/metrics.md: rule {} without its source", r.id);
        }
    }
}
