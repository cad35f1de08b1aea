//! Each fix's rule, its "never" cases, and one copy-up under two fixes.

use super::*;

const MIB: u64 = 1 << 20;

fn kernel() -> OverlayFeatures {
    OverlayFeatures { metacopy: Support::Yes, idmapped_layers: Support::Yes }
}

fn fig(copy_ups: u64, data_bytes: u64, latency_ns: u64) -> Figures {
    Figures { copy_ups, data_bytes, latency_ns, noop: 0 }
}

fn saving(copy_ups: u64, data_bytes: u64, latency_ns: u64) -> Saving {
    Saving { copy_ups, data_bytes, latency_ns }
}

/// A metacopy=off container mount: 10 chown data copy-ups (40 MiB, 2 s), 5
/// chown directory copy-ups, 3 chmod metadata-only copy-ups, 2 open data copy-ups.
fn storm() -> ByCauseKind {
    BTreeMap::from([
        ((cause::CHOWN, kind::DATA), fig(10, 40 * MIB, 2_000_000_000)),
        ((cause::CHOWN, kind::DIRECTORY), fig(5, 0, 50_000_000)),
        ((cause::CHMOD, kind::METADATA), fig(3, 0, 3_000_000)),
        ((cause::OPEN, kind::DATA), fig(2, 4 * MIB, 40_000_000)),
    ])
}

fn container() -> MountFacts {
    MountFacts { metacopy: Some(false), container: true, ..Default::default() }
}

#[test]
fn metacopy_takes_the_data_copy_ups_of_metadata_changes_only() {
    let got = avoidable(&storm(), &container(), &kernel());
    // Not the directories, not the metadata-only chmods, not the opens.
    assert_eq!(got.get(&Fix::Metacopy), Some(&saving(10, 40 * MIB, 2_000_000_000)));
    // The kernel's default (no metacopy= printed) counts as off.
    let default = MountFacts { metacopy: None, ..container() };
    assert!(avoidable(&storm(), &default, &kernel()).contains_key(&Fix::Metacopy));
}

#[test]
fn metacopy_never_where_it_is_on_forbidden_or_unsupported() {
    let never = |m: MountFacts, k: OverlayFeatures| !avoidable(&storm(), &m, &k).contains_key(&Fix::Metacopy);
    assert!(never(MountFacts { metacopy: Some(true), ..container() }, kernel()), "already on");
    assert!(never(MountFacts { userxattr: true, ..container() }, kernel()), "userxattr forbids it");
    assert!(never(MountFacts { nfs_export: Some(true), ..container() }, kernel()), "nfs_export=on");
    let old = OverlayFeatures { metacopy: Support::No, ..kernel() };
    assert!(never(container(), old), "a kernel without metacopy");
    let unknown = OverlayFeatures { metacopy: Support::Unknown, ..kernel() };
    assert!(never(container(), unknown), "cannot tell");
}

#[test]
fn metacopy_never_counts_copy_ups_that_were_metadata_only_already() {
    let only_metadata = BTreeMap::from([
        ((cause::CHOWN, kind::METADATA), fig(7, 0, 7_000_000)),
        ((cause::CHOWN, kind::DIRECTORY), fig(2, 0, 1_000_000)),
        // The data a metacopy copy-up deferred, copied on a later open.
        ((cause::OPEN, kind::DEFERRED_DATA), fig(1, MIB, 1_000_000)),
    ]);
    assert!(!avoidable(&only_metadata, &container(), &kernel()).contains_key(&Fix::Metacopy));
}

#[test]
fn skip_noop_takes_the_no_op_share_of_bytes_and_time() {
    let mut f = storm();
    f.insert((cause::CHOWN, kind::DATA), Figures { noop: 4, ..fig(10, 40 * MIB, 2_000_000_000) });
    // A no-op count on a cause that cannot be a no-op is not taken.
    f.insert((cause::OPEN, kind::DATA), Figures { noop: 2, ..fig(2, 4 * MIB, 40_000_000) });
    let got = avoidable(&f, &container(), &kernel());
    assert_eq!(got.get(&Fix::SkipNoop), Some(&saving(4, 16 * MIB, 800_000_000)));
    assert!(!avoidable(&storm(), &container(), &kernel()).contains_key(&Fix::SkipNoop), "no no-ops");
}

#[test]
fn one_copy_up_counted_under_two_fixes() {
    let mut f = storm();
    f.insert((cause::CHOWN, kind::DATA), Figures { noop: 10, ..fig(10, 40 * MIB, 2_000_000_000) });
    let m = MountFacts { userns: true, ..container() };
    let got = avoidable(&f, &m, &kernel());
    let chown_data = saving(10, 40 * MIB, 2_000_000_000);
    assert_eq!(got.get(&Fix::Metacopy), Some(&chown_data));
    assert_eq!(got.get(&Fix::SkipNoop), Some(&chown_data));
    // idmapped mounts remove the directories' chowns too.
    assert_eq!(got.get(&Fix::IdmappedMounts), Some(&saving(15, 40 * MIB, 2_050_000_000)));
}

#[test]
fn idmapped_mounts_for_user_namespaced_chowns_where_the_kernel_can() {
    let m = MountFacts { userns: true, ..container() };
    assert!(avoidable(&storm(), &m, &kernel()).contains_key(&Fix::IdmappedMounts));
    let never =
        |m: MountFacts, k: OverlayFeatures| !avoidable(&storm(), &m, &k).contains_key(&Fix::IdmappedMounts);
    assert!(never(container(), kernel()), "no user namespace: a chown of the container's own");
    assert!(never(MountFacts { idmapped_lowers: true, ..m }, kernel()), "already idmapped");
    assert!(never(MountFacts { userxattr: true, ..m }, kernel()), "rootless: fuse-overlayfs instead");
    assert!(never(m, OverlayFeatures { idmapped_layers: Support::No, ..kernel() }), "before 5.19");
}

#[test]
fn fuse_overlayfs_on_rootless_mounts_only() {
    let rootless = MountFacts { userxattr: true, ..container() };
    let got = avoidable(&storm(), &rootless, &kernel());
    assert_eq!(got.get(&Fix::FuseOverlayfs), Some(&saving(15, 40 * MIB, 2_050_000_000)));
    assert!(!got.contains_key(&Fix::Metacopy) && !got.contains_key(&Fix::IdmappedMounts));
    assert!(!avoidable(&storm(), &container(), &kernel()).contains_key(&Fix::FuseOverlayfs));
}

#[test]
fn volume_for_large_files_opened_in_a_container() {
    let got = avoidable(&storm(), &container(), &kernel());
    assert_eq!(got.get(&Fix::Volume), Some(&saving(2, 4 * MIB, 40_000_000)));
    let small = BTreeMap::from([((cause::OPEN, kind::DATA), fig(100, 100 * 4096, 1_000_000))]);
    assert!(!avoidable(&small, &container(), &kernel()).contains_key(&Fix::Volume), "small files");
    let build = MountFacts { build: true, container: false, ..container() };
    assert!(!avoidable(&storm(), &build, &kernel()).contains_key(&Fix::Volume), "a build step");
}

#[test]
fn copy_chown_in_builds_only() {
    let build = MountFacts { build: true, container: false, ..container() };
    let got = avoidable(&storm(), &build, &kernel());
    // chown data + directories, chmod metadata.
    assert_eq!(got.get(&Fix::CopyChown), Some(&saving(18, 40 * MIB, 2_053_000_000)));
    assert!(!avoidable(&storm(), &container(), &kernel()).contains_key(&Fix::CopyChown));
}

#[test]
fn every_fix_names_a_rule_of_the_table() {
    for fix in Fix::ALL {
        assert!(crate::diagnosis::rules::rule(&fix.rule_id()).is_some(), "{}", fix.name());
    }
}
