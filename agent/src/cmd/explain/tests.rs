//! Golden tests: a fixture exposition in (testdata/NAME.prom), the report out
//! (testdata/NAME.txt). One fixture per fix, and the quiet cases. After an
//! intended change of the text, review the diff of:
//!     UPDATE_GOLDEN=1 cargo test -p overlay-agent --lib explain

use std::path::PathBuf;

use super::advice::TABLE;
use super::{exposition, model, render, Shown, Source};

fn report(name: &str) -> (String, bool) {
    report_as(name, Shown::WorthAChange, name)
}

/// Fixture `name` rendered with `shown`, against testdata/`golden`.txt.
fn report_as(name: &str, shown: Shown, golden: &str) -> (String, bool) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/cmd/explain/testdata");
    let text = std::fs::read_to_string(dir.join(format!("{name}.prom"))).expect("fixture");
    let samples = exposition::parse(&text, model::wanted).expect("fixture parses");
    let mut out = Vec::new();
    let shown =
        render::report(&model::build(&samples), "since the agent started", shown, &mut out).expect("renders");
    let out = String::from_utf8(out).expect("utf-8");
    let golden = dir.join(format!("{golden}.txt"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        // Through a rename: two tests may read the same golden file meanwhile.
        let tmp = golden.with_extension(format!("txt.{}", std::process::id()));
        std::fs::write(&tmp, &out).expect("writing the golden file");
        std::fs::rename(&tmp, &golden).expect("renaming the golden file");
    }
    let want = std::fs::read_to_string(&golden).expect("golden file (UPDATE_GOLDEN=1 to create)");
    assert_eq!(out, want, "{name}: the report differs from {} (UPDATE_GOLDEN=1 to accept)", golden.display());
    (out, shown)
}

/// The fix named first in the report.
fn first_fix(out: &str) -> Option<&str> {
    out.lines().find_map(|l| l.trim_start().strip_prefix("fix ")).and_then(|l| l.split(':').next())
}

#[test]
fn each_fix_has_a_fixture_where_it_comes_first() {
    for a in TABLE {
        let (out, shown) = report(a.fix);
        assert!(shown, "{}: nothing shown", a.fix);
        assert_eq!(first_fix(&out), Some(a.fix), "{out}");
        assert!(out.contains(&a.runbook()), "{}: no runbook link", a.fix);
        assert!(out.contains("do not when"), "{}: no caveat", a.fix);
    }
}

#[test]
fn quiet_cases_print_one_calm_line() {
    for name in ["quiet", "quiet-small", "quiet-probes-off"] {
        let (out, shown) = report(name);
        assert!(!shown, "{name}: {out}");
        assert_eq!(out.lines().count(), 1, "{name}: {out}");
        assert!(out.starts_with("Nothing to fix: "), "{name}: {out}");
    }
}

#[test]
fn the_calm_line_names_the_best_fix_not_a_sum_of_overlapping_ones() {
    // metacopy 300 ms and skip_noop 260 ms of the same 350 ms of chowns.
    let (out, _) = report("quiet-small");
    assert!(
        out.contains(", 350 ms in copy-ups since the agent started; the best fix would save 300 ms,"),
        "{out}"
    );
}

#[test]
fn all_shows_the_fixes_under_the_threshold() {
    let (out, shown) = report_as("quiet-small", Shown::All, "quiet-small-all");
    assert!(shown, "{out}");
    assert_eq!(first_fix(&out), Some("metacopy"), "{out}");
    assert!(out.contains("saves 300 ms (86%) and 1.0 MiB of copying"), "{out}");
    // Nothing avoidable at all stays calm, --all or not.
    let (out, shown) = report_as("quiet", Shown::All, "quiet");
    assert!(!shown && out.starts_with("Nothing to fix: "), "{out}");
}

#[test]
fn caveats_about_a_mount_option_follow_the_mount_info() {
    // metacopy.prom's mount says userxattr="false": no caveat about userxattr
    // mounts; copy_chown.prom's says nothing (""), so the caveat stays.
    let (out, _) = report("metacopy");
    assert!(!out.contains("the mount has userxattr"), "{out}");
    let (out, _) = report("copy_chown");
    assert!(out.contains("the mount has userxattr"), "{out}");
}

#[test]
fn mounts_of_other_namespaces_join_their_mount_info() {
    let (out, _) = report("idmapped_mounts");
    assert!(
        out.contains("pod shop/cart-7d9f, container cart, image registry.example/shop/cart:3.1"),
        "{out}"
    );
    let (out, _) = report("fuse_overlayfs");
    assert!(
        out.contains("podman container builder (77e1f0c2a3b4), image docker.io/library/gradle:8"),
        "{out}"
    );
}

#[test]
fn figures_are_formatted_in_base_units() {
    assert_eq!(render::seconds(0.0), "0 ms");
    assert_eq!(render::seconds(0.000_42), "420 µs");
    assert_eq!(render::seconds(0.003_44), "3.4 ms");
    assert_eq!(render::seconds(0.0125), "12 ms");
    assert_eq!(render::seconds(41.25), "41.2 s");
    assert_eq!(render::seconds(125.0), "125 s");
    assert_eq!(render::bytes(512.0), "512 B");
    assert_eq!(render::bytes(3435973836.0), "3.2 GiB");
}

#[test]
fn urls_without_a_scheme_are_http() {
    let agent = |url: Option<&str>| match Source::new(url, None, None, 9864) {
        Source::Agent { url, .. } => url,
        s => panic!("{s:?}"),
    };
    assert_eq!(agent(None), "http://localhost:9864/metrics");
    assert_eq!(agent(Some("localhost:9861")), "http://localhost:9861/metrics");
    assert_eq!(agent(Some("localhost:9861/")), "http://localhost:9861/metrics");
    assert_eq!(agent(Some("10.0.0.7:9864/custom")), "http://10.0.0.7:9864/custom");
    assert_eq!(agent(Some("[::1]:9864")), "http://[::1]:9864/metrics");
    assert_eq!(agent(Some("http://node-3:9864")), "http://node-3:9864/metrics");
    assert_eq!(agent(Some("https://node-3:9864")), "https://node-3:9864/metrics", "refused when fetched");
    match Source::new(None, Some("prometheus:9090"), None, 9864) {
        Source::Prometheus { url, .. } => assert_eq!(url, "http://prometheus:9090"),
        s => panic!("{s:?}"),
    }
}
