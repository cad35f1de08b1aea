#!/bin/sh
# Builds the container image of each given Rust target from its static binary
# (target/TRIPLE/release/overlay-agent), FROM scratch and offline, into one podman
# manifest list, and saves it into OUTDIR:
#   overlay-agent_VERSION_oci-image.tar        the manifest list, every architecture
#                                              (podman load picks the host's; skopeo
#                                              copy --all oci-archive:... pushes all)
#   overlay-agent_VERSION_linux-ARCH.oci.tar   one architecture (podman save)
# Usage: packaging/image/build.sh OUTDIR TRIPLE...
# The images live in a private podman storage that is removed at the end: the
# host's image store is not touched.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:?usage: packaging/image/build.sh OUTDIR TRIPLE...}
shift
[ $# -gt 0 ] || { echo "usage: packaging/image/build.sh OUTDIR TRIPLE..." >&2; exit 2; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)
mkdir -p "$out"
out=$(cd "$out" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
podman() { command podman --root "$tmp/storage" --runroot "$tmp/run" --storage-driver vfs "$@"; }
list="localhost/overlay-agent:$version"
podman manifest create "$list" > /dev/null
cd "$root"
for triple in "$@"; do
    case "$triple" in
        x86_64-*) arch=amd64 ;;
        aarch64-*) arch=arm64 ;;
        *) echo "no image architecture for $triple" >&2; exit 2 ;;
    esac
    bin="target/$triple/release/overlay-agent"
    [ -x "$bin" ] || { echo "$bin missing: cargo build --release --target $triple -p overlay-agent --bin overlay-agent" >&2; exit 1; }
    # --no-cache: buildah's cache would hand the second architecture the first's
    # image when the layers look alike.
    podman build -q --no-cache --platform "linux/$arch" --build-arg "BINARY=$bin" \
        --manifest "$list" -t "$list-$arch" -f packaging/image/Containerfile . > /dev/null
    podman save -q --format oci-archive -o "$out/overlay-agent_${version}_linux-$arch.oci.tar" "$list-$arch"
done
podman manifest push -q --all "$list" "oci-archive:$out/overlay-agent_${version}_oci-image.tar:overlay-agent:$version"
