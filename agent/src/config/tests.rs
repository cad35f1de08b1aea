//! Unit tests of the config file: parsing, errors with file, line and key, limits.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("test.yaml"), text)
}

#[test]
fn empty_file_is_defaults() {
    assert_eq!(parse("# nothing\n\n").ok(), Some(Config::default()));
}

#[test]
fn full_config_parses() {
    let c = parse(
        "web:\n  listen_address: 127.0.0.1:9999\ndiscovery:\n  procfs: /host/proc\n  \
             exclude_mountpoints: ['/run/.*']\n  resync_interval: 1m30s\nscan:\n  interval: 10s\n  \
             concurrency: 4\nlog:\n  level: debug\n  format: json\n",
    )
    .expect("valid config");
    assert_eq!(c.web.listen_address.to_string(), "127.0.0.1:9999");
    assert_eq!(c.discovery.procfs, PathBuf::from("/host/proc"));
    assert_eq!(c.discovery.resync_interval, Duration::from_secs(90));
    assert_eq!(c.scan.interval, Duration::from_secs(10));
    assert_eq!(c.scan.concurrency, 4);
    assert_eq!(c.log.level, LogLevel::Debug);
    assert_eq!(c.log.format, LogFormat::Json);
    assert!(!c.mountpoint_selected("/run/containers/x"));
    assert!(c.mountpoint_selected("/var/lib/x/run/y"));
    assert!(!c.mountpoint_selected("/run/a\nb"), "a newline does not escape a filter");
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let err = parse("scan:\n  interval: 10s\n  intervall: 5s\n").expect_err("must fail");
    let msg = err.to_string();
    assert!(msg.starts_with("test.yaml:3:"), "{msg}");
    assert!(msg.contains("intervall"), "{msg}");
}

#[test]
fn bad_duration_names_key_and_line() {
    let err = parse("log:\n  level: info\nscan:\n  interval: soon\n").expect_err("must fail");
    let msg = err.to_string();
    assert!(msg.starts_with("test.yaml:4:"), "{msg}");
    assert!(msg.contains("scan.interval"), "{msg}");
    assert!(msg.contains("invalid duration"), "{msg}");
}

#[test]
fn bad_regex_and_address_are_rejected() {
    let msg = parse("discovery:\n  include_mountpoints: ['(']\n").expect_err("bad regex").to_string();
    assert!(msg.contains("test.yaml:2:") && msg.contains("include_mountpoints"), "{msg}");
    let msg = parse("web:\n  listen_address: nowhere\n").expect_err("bad addr").to_string();
    assert!(msg.contains("test.yaml:2:") && msg.contains("web.listen_address"), "{msg}");
}

#[test]
fn identity_rules() {
    let c = parse("identity:\n  rules:\n    - runtime: ci\n      source: upperdir\n      regex: '/ci/(?P<container_id>[0-9]+)'\n")
            .expect("valid rule");
    assert_eq!(c.identity.rules.len(), 1);
    assert_eq!(c.identity.rules[0].source, crate::identity::RuleSource::Upperdir);
    let msg =
        parse("identity:\n  rules:\n    - runtime: ci\n      regex: '(?P<x'\n").expect_err("bad").to_string();
    assert!(msg.contains("test.yaml:4:") && msg.contains("identity.rules[0].regex"), "{msg}");
    let msg = parse("identity:\n  rules:\n    - runtime: ci\n      source: lowerdir\n      regex: x\n")
        .expect_err("bad source")
        .to_string();
    assert!(msg.contains("identity.rules[0].source"), "{msg}");
}

#[test]
fn semantic_limits() {
    let msg = parse("scan:\n  concurrency: 0\n").expect_err("zero").to_string();
    assert!(msg.contains("scan.concurrency"), "{msg}");
    for bad in ["0", "-1", "65", ".nan"] {
        let msg = parse(&format!("scan:\n  max_cpu: {bad}\n")).expect_err(bad).to_string();
        assert!(msg.contains("scan.max_cpu"), "{msg}");
    }
    let c = parse("scan:\n  max_cpu: 0.25\n  idle_priority: false\n").expect("valid");
    assert_eq!((c.scan.max_cpu, c.scan.idle_priority), (Some(0.25), false));
    let msg = parse("scan:\n  max_cpu: lots\n").expect_err("not a number").to_string();
    assert!(msg.contains("scan.max_cpu"), "{msg}");
    let c = parse("scan:\n  classify_interval: 1h\n  assign_project_ids: {first: 100, last: 199}\n")
        .expect("valid");
    assert_eq!(c.scan.assign_project_ids, Some(ProjectIdRange { first: 100, last: 199 }));
    assert_eq!((c.scan.quota, c.scan.quota_interval), (true, Duration::from_secs(5)));
    for bad in ["{first: 0, last: 9}", "{first: 9, last: 8}", "{first: 1, last: 4294967295}"] {
        let msg = parse(&format!("scan:\n  assign_project_ids: {bad}\n")).expect_err(bad).to_string();
        assert!(msg.contains("scan.assign_project_ids"), "{msg}");
    }
    let msg = parse("scan:\n  interval: 2m\n  classify_interval: 1m\n").expect_err("short").to_string();
    assert!(msg.contains("scan.classify_interval"), "{msg}");
}

#[test]
fn classic_histograms() {
    let c = parse("ebpf:\n  enabled: true\n").expect("valid");
    assert_eq!(c.ebpf.classic_histograms, ClassicHistograms::Node);
    assert!(c.ebpf.per_mount_histograms, "per-mount by default");
    for (v, want) in [
        ("node", ClassicHistograms::Node),
        ("all", ClassicHistograms::All),
        ("none", ClassicHistograms::None),
    ] {
        let c = parse(&format!("ebpf:\n  classic_histograms: {v}\n")).expect(v);
        assert_eq!(c.ebpf.classic_histograms, want);
    }
    let msg = parse("ebpf:\n  classic_histograms: some\n").expect_err("bad value").to_string();
    assert!(msg.contains("test.yaml:2:") && msg.contains("ebpf.classic_histograms"), "{msg}");
}

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    assert!(parse_duration("10").is_err());
    assert!(parse_duration("s").is_err());
    assert!(parse_duration("-1s").is_err());
    assert!(parse_duration("").is_err());
}

#[test]
fn listen_address_spellings() {
    assert_eq!(":9864".parse::<ListenAddress>().map(|a| a.to_string()), Ok("0.0.0.0:9864".into()));
    assert_eq!("[::1]:80".parse::<ListenAddress>().map(|a| a.to_string()), Ok("[::1]:80".into()));
    assert!("9864".parse::<ListenAddress>().is_err());
}
