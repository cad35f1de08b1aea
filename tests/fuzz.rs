//! Property tests ("fuzzing") of everything the agent parses from the kernel or a
//! user: mountinfo lines, overlay options, the config file and the web config.
//!
//! The test command runs a short smoke (FUZZ_CASES, default 2,000 cases each);
//! a long run is `FUZZ_CASES=1000000 cargo test --release --test fuzz`. Inputs
//! that ever failed are kept in tests/fuzz-regressions/ and replayed first.
//! The seed corpus for the mutation tests is tests/fixtures/procfs/1/mountinfo.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use overlay_agent::config::Config;
use overlay_agent::discovery::mountinfo;
use overlay_agent::discovery::options::{LayerPath, OverlayOptions};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

fn config(name: &'static str) -> ProptestConfig {
    let cases = std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(Box::leak(
            format!("../tests/fuzz-regressions/{name}.txt").into_boxed_str(),
        )))),
        ..ProptestConfig::default()
    }
}

/// The real-world lines the mutation tests start from.
fn corpus() -> Vec<Vec<u8>> {
    let text = std::fs::read(common::repo_root().join("tests/fixtures/procfs/1/mountinfo")).expect("fixture");
    text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect()
}

/// A path component: any bytes but NUL and '/', biased to the ones that need escaping.
fn component() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(b"abcXYZ019._-".to_vec()),
            3 => prop::sample::select(b" \t\n\\:,=\"'#%".to_vec()),
            1 => (1u8..=255).prop_filter("no slash", |b| *b != b'/'),
        ],
        1..12,
    )
}

fn abs_path() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(component(), 1..5).prop_map(|cs| {
        let mut p = Vec::new();
        for c in cs {
            p.push(b'/');
            p.extend(c);
        }
        p
    })
}

/// seq_file's escaping in mountinfo: space, tab, newline and backslash (and, in
/// option values, comma and '=') as `\ooo`.
fn octal(bytes: &[u8], extra: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in bytes {
        if b" \t\n\\".contains(&b) || extra.contains(&b) {
            out.extend(format!("\\{b:03o}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out
}

/// A layer inside lowerdir: `\` and `:` escaped with a backslash.
fn layer_escape(p: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in p {
        if b == b'\\' || b == b':' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

fn line(id: u32, minor: u32, mountpoint: &[u8], lowers: &[Vec<u8>], upper: &[u8], work: &[u8]) -> Vec<u8> {
    let mut lowerdir = Vec::new();
    for (i, l) in lowers.iter().enumerate() {
        if i > 0 {
            lowerdir.push(b':');
        }
        lowerdir.extend(layer_escape(l));
    }
    let mut s = format!("{id} 1 0:{minor} / ").into_bytes();
    s.extend(octal(mountpoint, b""));
    s.extend(b" rw,relatime - overlay overlay rw,lowerdir=");
    s.extend(octal(&lowerdir, b",="));
    s.extend(b",upperdir=");
    s.extend(octal(upper, b",="));
    s.extend(b",workdir=");
    s.extend(octal(work, b",="));
    s.push(b'\n');
    s
}

fn layer(p: &[u8]) -> LayerPath {
    LayerPath::Absolute(PathBuf::from(OsStr::from_bytes(p)))
}

proptest! {
    #![proptest_config(config("mountinfo_bytes"))]

    /// Any bytes at all: no panic, and every bad line is a line of the input.
    #[test]
    fn mountinfo_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2000), seed_overlay in any::<bool>()) {
        let mut input = bytes;
        if seed_overlay {
            input.extend_from_slice(b" - overlay overlay rw,lowerdir=");
        }
        let (_lines, bad) = mountinfo::parse(&input);
        let n = input.split(|&b| b == b'\n').count();
        for b in bad {
            prop_assert!(b.line >= 1 && b.line <= n);
        }
    }
}

proptest! {
    #![proptest_config(config("mountinfo_mutations"))]

    /// Real lines with bytes flipped, dropped or duplicated: no panic.
    #[test]
    fn mutated_real_lines_never_panic(
        pick in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let lines = corpus();
        let mut l = pick.get(&lines).clone();
        for (at, byte, op) in edits {
            if l.is_empty() { break; }
            let i = at.index(l.len());
            match op {
                0 => l[i] = byte,
                1 => { l.remove(i); }
                _ => l.insert(i, byte),
            }
        }
        let _ = mountinfo::parse(&l);
        let _ = OverlayOptions::parse(&String::from_utf8_lossy(&l));
    }
}

proptest! {
    #![proptest_config(config("mountinfo_round_trip"))]

    /// Whatever the paths hold (spaces, newlines, backslashes, colons, commas,
    /// '=', invalid UTF-8), what the kernel would print parses back to them.
    #[test]
    fn overlay_lines_round_trip(
        id in 1u32..100_000,
        minor in 0u32..1_000_000,
        mountpoint in abs_path(),
        lowers in prop::collection::vec(abs_path(), 1..6),
        upper in abs_path(),
        work in abs_path(),
    ) {
        let text = line(id, minor, &mountpoint, &lowers, &upper, &work);
        let (lines, bad) = mountinfo::parse(&text);
        // A path whose UTF-8 is invalid cannot always go through procfs's &str
        // parser; the line is then reported, never misread.
        if lines.is_empty() {
            prop_assert_eq!(bad.len(), 1, "dropped silently: {:?}", String::from_utf8_lossy(&text));
            prop_assume!(false);
        }
        prop_assert_eq!(lines.len(), 1);
        let l = &lines[0];
        prop_assert_eq!(l.mount_id as u32, id);
        prop_assert_eq!(l.device.minor, minor);
        prop_assert_eq!(l.mountpoint.as_os_str().as_bytes(), &mountpoint[..]);
        let utf8 = |p: &[u8]| std::str::from_utf8(p).is_ok();
        if lowers.iter().all(|p| utf8(p)) {
            let want: Vec<LayerPath> = lowers.iter().map(|p| layer(p)).collect();
            prop_assert_eq!(&l.options.lower, &want);
        }
        if utf8(&upper) {
            prop_assert_eq!(l.options.upper.clone(), Some(layer(&upper)));
        }
        if utf8(&work) {
            prop_assert_eq!(l.options.work.clone(), Some(layer(&work)));
        }
    }
}

proptest! {
    #![proptest_config(config("overlay_options"))]

    #[test]
    fn overlay_options_never_panic(s in ".{0,400}") {
        let o = OverlayOptions::parse(&s);
        let _ = o.relative_paths();
    }
}

/// Keys and values a config may hold, valid or not.
fn yaml_doc() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "web",
        "listen_address",
        "config_file",
        "max_connections",
        "discovery",
        "procfs",
        "rootfs",
        "include_mountpoints",
        "exclude_mountpoints",
        "resync_interval",
        "scan",
        "enabled",
        "interval",
        "concurrency",
        "timeout",
        "ebpf",
        "per_mount_histograms",
        "classic_histograms",
        "top_processes",
        "top_processes_idle",
        "identity",
        "rules",
        "runtime",
        "source",
        "regex",
        "log",
        "level",
        "format",
        "bogus",
    ]);
    let value = prop_oneof![
        Just("".to_owned()),
        Just("true".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("'(?P<x'".to_owned()),
        Just("1m30s".to_owned()),
        Just("-1".to_owned()),
        Just("99999999999999999999".to_owned()),
        Just(":9864".to_owned()),
        Just("[::1]:0".to_owned()),
        "[a-z0-9 :.*()?<>\\[\\]{}'\"-]{0,20}",
    ];
    prop::collection::vec((0usize..4, key, value), 0..20).prop_map(|items| {
        items
            .into_iter()
            .map(|(indent, k, v)| format!("{}{k}: {v}\n", "  ".repeat(indent)))
            .collect::<String>()
    })
}

proptest! {
    #![proptest_config(config("config"))]

    /// Any text: a config or an error that names the file; never a panic.
    #[test]
    fn config_errors_name_the_file(text in prop_oneof![yaml_doc(), ".{0,300}"]) {
        match Config::parse(Path::new("fuzz.yaml"), &text) {
            Ok(_) => {}
            Err(e) => prop_assert!(e.to_string().starts_with("fuzz.yaml"), "{}", e),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: config("web_config").cases.min(300), ..config("web_config") })]

    /// The web config file (read from disk): loaded or refused with its name.
    #[test]
    fn web_config_errors_name_the_file(text in prop_oneof![
        "[a-z_: \n'$./0-9]{0,200}",
        Just("tls_server_config:\n  cert_file: x\n  key_file: y\n".to_owned()),
        Just("basic_auth_users:\n  a: b\n".to_owned()),
        Just("http_server_config:\n  headers:\n    X: y\n".to_owned()),
    ]) {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("web.yml");
        std::fs::write(&p, &text).expect("write");
        if let Err(e) = overlay_agent::server::web_config::WebConfigFile::load(&p) {
            prop_assert!(e.to_string().contains("web.yml"), "{}", e);
        }
    }
}
