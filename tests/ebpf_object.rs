//! The eBPF object embedded in the agent (agent/build.rs builds agent-ebpf's
//! `overlay-copyup`), parsed offline: it holds the programs the attach plan
//! names (kernel::hooks) and nothing else, in particular not the probe-overhead
//! benchmark's counting pair (bare_*), which is an object of its own
//! (`overlay-bench-bare`, built for the guest tests only).

use std::collections::BTreeSet;

/// The object agent/build.rs leaves for include_bytes (probes::OBJECT).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/overlay-copyup"));

#[test]
fn the_agents_object_holds_the_planned_programs_and_no_benchmark_ones() {
    let obj = aya_obj::Object::parse(OBJECT).expect("parse the embedded eBPF object");
    let programs: BTreeSet<&str> = obj.programs.keys().map(String::as_str).collect();
    let bench: Vec<&&str> = programs.iter().filter(|p| p.starts_with("bare_")).collect();
    assert!(bench.is_empty(), "benchmark programs in the agent's object: {bench:?}");
    let planned: BTreeSet<&str> = overlay_agent::kernel::hooks::program_names().into_iter().collect();
    assert_eq!(programs, planned, "the object's programs against the plan's (kernel::hooks)");
}
