//! Builds the eBPF programs (agent-ebpf) for the bpf target with the nightly
//! toolchain and bpf-linker, and leaves the object in OUT_DIR for include_bytes.
//! scripts/deps.sh installs what this needs.

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent-ebpf");
    let root = root.to_str().ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", root.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "overlay-agent-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
