//! Builds the probe-overhead benchmark's floor, agent-ebpf's `overlay-bench-bare`
//! object (feature `bench`), for the bpf target with the nightly toolchain and
//! bpf-linker, and leaves it in OUT_DIR for qemu-bare-probe. The agent's own
//! build (agent/build.rs) leaves the feature off: its object never holds it.

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../agent-ebpf");
    let root = root.to_str().ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", root.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "overlay-agent-ebpf",
            root_dir: root,
            features: &["bench"],
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
