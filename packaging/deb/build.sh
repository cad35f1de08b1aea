#!/bin/sh
# Builds the .deb of one architecture from the static binary cargo built for it:
#   packaging/deb/build.sh TRIPLE [OUTDIR]
# TRIPLE is the Rust target: x86_64-unknown-linux-musl gives the amd64 package,
# aarch64-unknown-linux-musl the arm64 one. The binary is
# target/TRIPLE/release/overlay-agent (cargo build --release --target TRIPLE -p
# overlay-agent --bin overlay-agent); what goes into the package is in
# agent/Cargo.toml [package.metadata.deb]. Prints the path of the .deb.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
triple=${1:?usage: packaging/deb/build.sh TRIPLE [OUTDIR]}
out=${2:-$root/target/dist}
bin="$root/target/$triple/release/overlay-agent"
[ -x "$bin" ] || { echo "$bin missing: cargo build --release --target $triple -p overlay-agent --bin overlay-agent" >&2; exit 1; }
mkdir -p "$out"
cd "$root"
# The man page, from the agent's --help (help2man). It is the same on every
# architecture: made with a binary that runs here (this target's if it does).
runnable=
for b in "$bin" target/x86_64-unknown-linux-musl/release/overlay-agent target/release/overlay-agent; do
    if [ -x "$b" ] && "$b" --version > /dev/null 2>&1; then runnable=$b; break; fi
done
[ -n "$runnable" ] || { echo "no overlay-agent binary runs on this machine to write the man page" >&2; exit 1; }
mkdir -p target/deb
help2man --no-info --section 1 --name "Prometheus exporter for overlayfs: mounts, upper-dir contents and copy-ups" \
    --version-string "$("$runnable" --version | sed 's/^overlay-agent //')" "$runnable" | gzip -9n > target/deb/overlay-agent.1.gz
# cargo-deb strips the binary with the target's strip (aarch64-linux-gnu-strip
# for arm64, from binutils-aarch64-linux-gnu) and compresses with xz.
cargo deb -p overlay-agent --target "$triple" --no-build --locked --offline -q --output "$out"
