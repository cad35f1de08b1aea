//! The advice table: one entry per `fix` label value of
//! `overlayfs_copy_up_avoidable_{seconds,data_bytes}_total`, with the setting or
//! command that applies it (by runtime where the runtimes differ), what it saves,
//! and when not to apply it. docs/runbooks.md has the same sections, with their
//! sources, under the anchors named here.

pub use super::model::Facts;

/// Where the runbook sections live (the mixin's `runbookURLPattern`).
pub const RUNBOOK_BASE: &str = "https://github.com/overlay-agent/overlay-agent/blob/main/docs/runbooks.md";

/// The setting or command for the mounts of some runtimes (empty: any other).
pub struct How {
    pub runtimes: &'static [&'static str],
    pub text: &'static str,
}

/// When not to apply a fix, for the mounts of some runtimes (empty: all).
pub struct Caveat {
    pub runtimes: &'static [&'static str],
    /// The `overlayfs_mount_info` label and value the caveat is about: it is
    /// left out where every mount of the workload is known to have another.
    pub about: Option<(&'static str, &'static str)>,
    pub text: &'static str,
}

const fn all(text: &'static str) -> Caveat {
    Caveat { runtimes: &[], about: None, text }
}

/// A caveat about mounts whose `overlayfs_mount_info` has `label="value"`.
const fn about(label: &'static str, value: &'static str, text: &'static str) -> Caveat {
    Caveat { runtimes: &[], about: Some((label, value)), text }
}

pub struct Advice {
    /// The `fix` label value.
    pub fix: &'static str,
    /// What the fix does, in one line.
    pub title: &'static str,
    pub how: &'static [How],
    pub do_not_when: &'static [Caveat],
    /// The anchor of its section in docs/runbooks.md.
    pub anchor: &'static str,
}

impl Advice {
    /// The setting for a mount of `runtime` (`overlayfs_mount_info`'s label).
    pub fn how_for(&self, runtime: &str) -> &'static str {
        let specific = self.how.iter().find(|h| h.runtimes.contains(&runtime));
        let fallback = self.how.iter().find(|h| h.runtimes.is_empty());
        specific.or(fallback).map_or("", |h| h.text)
    }

    /// The caveats that concern a workload of `runtime` whose mounts have
    /// `facts` ([`Facts`]).
    pub fn caveats_for<'a>(
        &'a self,
        runtime: &'a str,
        facts: &'a Facts,
    ) -> impl Iterator<Item = &'static str> + 'a {
        self.do_not_when
            .iter()
            .filter(move |c| c.runtimes.is_empty() || c.runtimes.contains(&runtime))
            .filter(move |c| c.about.is_none_or(|(label, value)| facts.may_have(label, value)))
            .map(|c| c.text)
    }

    pub fn runbook(&self) -> String {
        format!("{RUNBOOK_BASE}#{}", self.anchor)
    }
}

/// The advice for `fix`, if the agent's label value is one this build knows.
pub fn lookup(fix: &str) -> Option<&'static Advice> {
    TABLE.iter().find(|a| a.fix == fix)
}

const UNTRUSTED: &str = "the lower or upper layers are not trusted: a crafted metacopy or redirect xattr \
     can expose any lower file (kernel Documentation/filesystems/overlayfs.rst)";

pub const TABLE: &[Advice] = &[
    Advice {
        fix: "metacopy",
        title: "metacopy=on: a chown, chmod or utimes copies only the metadata, the data at the first write",
        how: &[
            How {
                runtimes: &["podman", "cri-o"],
                text: "/etc/containers/storage.conf, [storage.options.overlay]: mountopt = \"nodev,metacopy=on\" \
                       (new containers)",
            },
            How {
                runtimes: &["containerd"],
                text: "/etc/containerd/config.toml, [plugins.'io.containerd.snapshotter.v1.overlayfs']: \
                       mount_options = [\"metacopy=on\"], then restart containerd (new containers)",
            },
            How {
                runtimes: &["docker"],
                text: "echo 'options overlay metacopy=Y' > /etc/modprobe.d/overlay-metacopy.conf and reboot \
                       (or overlay.metacopy=Y on the kernel command line): Docker's overlay2 mounts with the \
                       module's default",
            },
            How {
                runtimes: &[],
                text: "overlay.metacopy=Y on the kernel command line (or options overlay metacopy=Y in \
                       /etc/modprobe.d/), or metacopy=on in the mount options",
            },
        ],
        do_not_when: &[
            about(
                "userxattr",
                "true",
                "the mount has userxattr (rootless, unprivileged): the kernel refuses metacopy there; \
                 see fuse_overlayfs",
            ),
            all(UNTRUSTED),
            Caveat {
                runtimes: &["docker"],
                about: None,
                text: "Docker builds or commits on this node: with metacopy on, overlay2 falls back to the naive \
             diff, which reads whole files; measure docker build and docker commit first",
            },
            all("the mount uses nfs_export=on: the kernel refuses the two together"),
        ],
        anchor: "fix-metacopy",
    },
    Advice {
        fix: "skip_noop",
        title: "skip chowns and chmods that change nothing: each still copies the file up",
        how: &[How {
            runtimes: &[],
            text: "find DIR \\( ! -user U -o ! -group G \\) -exec chown -h U:G {} + instead of chown -R U:G DIR \
                   (for chmod: find DIR ! -perm MODE -exec chmod MODE {} +); a program: stat before chown, \
                   as containers/storage does since #754",
        }],
        do_not_when: &[
            all("the chown is there to clear setuid or setgid bits: chown(2) clears them even when the owner \
             stays, and skipping it keeps them"),
        ],
        anchor: "fix-skip-noop",
    },
    Advice {
        fix: "idmapped_mounts",
        title: "idmapped mounts: the user namespace's ids are mapped at mount time, no file is chowned",
        how: &[
            How {
                runtimes: &["containerd"],
                text: "containerd 2.x uses idmapped lowers by itself where the kernel can (overlay on idmapped \
                       layers: 5.19+; Kubernetes hostUsers: false: 6.3+); on such a kernel drop slow_chown = true \
                       from [plugins.'io.containerd.snapshotter.v1.overlayfs']",
            },
            How {
                runtimes: &["podman", "cri-o"],
                text: "a kernel with idmapped overlay (5.19+) and podman 4+/CRI-O with containers/storage that \
                       mounts idmapped layers instead of copying them to mapped/ (podman run --userns=auto)",
            },
            How {
                runtimes: &["concourse"],
                text: "run the step that consumes this volume with the same privileged setting as the one that \
                       made it (an unprivileged volume given to a privileged task, or the reverse, is chowned)",
            },
            How { runtimes: &[], text: "a runtime that mounts the image idmapped (Linux 5.19+) instead of chowning a copy" },
        ],
        do_not_when: &[
            all("the kernel lacks idmapped overlay (before 5.19, 6.3 for Kubernetes volumes): the runtime falls \
             back to the chown (containerd: slow_chown)"),
            all("the filesystem under the layers cannot be idmapped (overlay-agent check tells)"),
        ],
        anchor: "fix-idmapped-mounts",
    },
    Advice {
        fix: "fuse_overlayfs",
        title: "fuse-overlayfs for rootless containers: ids are mapped in user space, no file is copied",
        how: &[How {
            runtimes: &[],
            text: "~/.config/containers/storage.conf, [storage.options.overlay]: \
                   mount_program = \"/usr/bin/fuse-overlayfs\", then podman system reset (podman's rootless docs)",
        }],
        do_not_when: &[
            all("the containers can run as root in a user namespace (podman --userns=auto) on a kernel with \
             idmapped overlay (5.19+): idmapped_mounts then maps the ids in the kernel; a rootless \
             (userxattr) mount cannot be idmapped by its unprivileged owner"),
            all("the container is I/O heavy: every read and write goes through FUSE"),
            all("the user's images and containers must stay: the switch needs podman system reset, which removes them"),
        ],
        anchor: "fix-fuse-overlayfs",
    },
    Advice {
        fix: "volume",
        title: "a volume for large files a long-running container rewrites: no copy-up at all",
        how: &[
            How {
                runtimes: &["docker", "podman"],
                text: "run with -v NAME:/the/dir (or --mount type=volume) for the directory the files live in",
            },
            How {
                runtimes: &["containerd", "cri-o"],
                text: "mount an emptyDir or a PersistentVolumeClaim at the directory the files live in",
            },
            How { runtimes: &[], text: "mount a volume (not overlay) at the directory the files live in" },
        ],
        do_not_when: &[
            all("the files must start with the image's content: seed the volume once (an init container or an \
             entrypoint that copies only when empty)"),
            all("the data must go when the container goes: remove the volume with it"),
        ],
        anchor: "fix-volume",
    },
    Advice {
        fix: "copy_chown",
        title: "set owner and mode where the files are added to the image: COPY --chown/--chmod",
        how: &[How {
            runtimes: &[],
            text: "in the Dockerfile, COPY --chown=U:G --chmod=MODE SRC DST instead of COPY then RUN chown -R or \
                   chmod -R (BuildKit, buildah); each RUN chown stores every file again in a new layer",
        }],
        do_not_when: &[
            all("the uid is only known at run time (OpenShift's arbitrary uids): give group 0 the owner's \
             rights at build time (chgrp 0, chmod g=u) instead"),
        ],
        anchor: "fix-copy-chown",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_per_fix_each_with_a_default_setting_and_a_caveat() {
        let fixes: Vec<_> = TABLE.iter().map(|a| a.fix).collect();
        assert_eq!(
            fixes,
            ["metacopy", "skip_noop", "idmapped_mounts", "fuse_overlayfs", "volume", "copy_chown"]
        );
        for a in TABLE {
            assert!(!a.how_for("no-such-runtime").is_empty(), "{}: no default setting", a.fix);
            let unknown = Facts::default();
            assert!(a.caveats_for("no-such-runtime", &unknown).next().is_some(), "{}: no caveat", a.fix);
        }
        let metacopy = lookup("metacopy").map(|a| a.how_for("podman"));
        assert!(metacopy.is_some_and(|h| h.contains("mountopt")));
    }

    #[test]
    fn every_anchor_is_in_the_runbooks() {
        let runbooks = include_str!("../../../../docs/runbooks.md");
        for a in TABLE {
            assert!(runbooks.contains(&format!("<a id=\"{}\"></a>", a.anchor)), "no anchor {}", a.anchor);
        }
    }
}
