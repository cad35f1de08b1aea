//! The benchmark floor's eBPF object (build.rs: agent-ebpf's
//! `overlay-bench-bare`), parsed offline: the counting pair qemu-bare-probe
//! attaches, and nothing of the agent's.

use std::collections::BTreeSet;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/overlay-bench-bare"));

#[test]
fn the_bench_object_holds_only_the_counting_pair() {
    let obj = aya_obj::Object::parse(OBJECT).expect("parse the benchmark's eBPF object");
    let programs: BTreeSet<&str> = obj.programs.keys().map(String::as_str).collect();
    assert_eq!(programs, BTreeSet::from(["bare_entry", "bare_exit"]));
    assert!(obj.maps.contains_key("STATS"), "the pair counts in STATS");
}
