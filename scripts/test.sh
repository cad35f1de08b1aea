#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, CLI/golden tests, live
# tests on real overlay mounts, a real Prometheus scraping the agent, and the
# copy-up probes on Debian kernels 5.10, 6.1, 6.12 and 7.2 under QEMU, and on
# Debian's arm64 kernels 6.1 and 6.12 under qemu-system-aarch64.
# Installs what it needs first (idempotent; quick when already installed).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_root
ensure_rust
ensure_rust_components
ensure_ebpf_toolchain
ensure_musl_target
ensure_test_tools
ensure_qemu_tools
# aarch64: the musl target, the cross compiler (also the linker) and qemu-system-aarch64.
ensure_arm64_cross
# helm, kubernetes-validate, @grafana/schema + tsc, cargo-deb, lintian, debootstrap:
# the chart, dashboard-schema, package and release tests (and scripts/package.sh).
ensure_packaging_tools

# No incremental caches: the suite builds each crate once, and they would only
# fill the disk (CI machines share theirs).
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
df -h --output=avail,target "$PWD" | tail -1 | awk '{ print "disk: " $1 " free on " $2 }'

cargo fmt --all --check
# The eBPF crate builds only for the bpf target (through agent/build.rs).
cargo clippy --workspace --exclude overlay-agent-ebpf --all-targets --locked --features overlay-agent/e2e,overlay-agent-guest-tests/qemu -- -D warnings
# The static agent and the guest helpers (tests/guest) that the QEMU guests run.
cargo build --release --locked --target x86_64-unknown-linux-musl -p overlay-agent -p overlay-agent-guest-tests --bins
# The same for the arm64 guests (the agent embeds the eBPF programs built for aarch64).
cargo build --release --locked --target aarch64-unknown-linux-musl -p overlay-agent -p overlay-agent-guest-tests --bins
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --exclude overlay-agent-ebpf --locked --features overlay-agent/e2e,overlay-agent-guest-tests/qemu 2>&1 | tee "$log"
# The fast benchmarks as smoke runs, on the static agent built above: they fail
# when a mount is never shown or an unmount is refused, never on a figure.
static=target/x86_64-unknown-linux-musl/release/overlay-agent
OVERLAY_AGENT_BIN=$static python3 bench/namespaces.py --smoke --no-build
OVERLAY_AGENT_BIN=$static python3 bench/mounts10k.py --no-build --counts 100 --scrapes 5 --changes 2 \
  --node-scrapes 1 --idle 1 --gzip --gzip-counts 100
python3 bench/teardown.py --smoke --agent "$static"
[ -f target/qemu-summary.txt ] && cat target/qemu-summary.txt
[ -f target/qemu-arm64-summary.txt ] && cat target/qemu-arm64-summary.txt
[ -f target/qemu-storm-summary.txt ] && cat target/qemu-storm-summary.txt
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
