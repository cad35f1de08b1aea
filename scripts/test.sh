#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, CLI/golden tests, live
# tests on real overlay mounts, and a real Prometheus scraping the agent.
# Installs what it needs first (idempotent; quick when already installed).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_root
ensure_rust
ensure_rust_components
ensure_test_tools

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
