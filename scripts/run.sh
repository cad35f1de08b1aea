#!/usr/bin/env bash
# Builds overlay-agent and runs it with the example config (listening on :9864).
# Extra arguments go to the agent, e.g. --web.listen-address 127.0.0.1:9864.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_root
ensure_rust
ensure_ebpf_toolchain
cargo build --release --locked -p overlay-agent
exec target/release/overlay-agent --config config/overlay-agent.yaml "$@"
