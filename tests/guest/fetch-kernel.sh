#!/usr/bin/env bash
# fetch-kernel.sh VERSION CACHE_DIR [ARCH]
# Downloads a Debian cloud kernel (5.10, 6.1, 6.12 or 7.2) into CACHE_DIR/VERSION/
# and extracts what the QEMU tests boot: vmlinuz, overlay.ko and loop.ko
# (uncompressed; mode agent's ext4 image is on a loop device).
# ARCH is amd64 (the default) or arm64: arm64 kernels go to CACHE_DIR/arm64/VERSION/,
# with the arm64 busybox (busybox-static) their initramfs needs.
# Nothing is installed: packages are fetched with `apt-get download` under a
# private apt configuration (the system's sources are not touched), from the
# Debian mirror this machine's apt already uses. Idempotent: a complete cache
# directory is left alone.
set -euo pipefail
version=${1:?usage: fetch-kernel.sh VERSION CACHE_DIR}
cache=${2:?usage: fetch-kernel.sh VERSION CACHE_DIR [ARCH]}
arch=${3:-amd64}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd) # apt takes relative Dir:: paths from /
case "$arch" in
  amd64) out="$cache/$version" apt_dir="$cache/apt/$version" lock="$cache/.fetch-$version.lock" ;;
  arm64) out="$cache/arm64/$version" apt_dir="$cache/apt/arm64-$version" lock="$cache/.fetch-arm64-$version.lock"
         export PRIVATE_APT_ARCH=arm64 ;;
  *) echo "unknown architecture $arch (want amd64 or arm64)" >&2; exit 2 ;;
esac
# Tests run in parallel and may fetch the same kernel at once: one fetch at a
# time per version, and the others find it done (the lock goes with the process).
mkdir -p "$cache"
exec 9>"$lock"
flock 9
# A cache made before loop.ko was extracted is fetched again.
[ -f "$out/ok" ] && [ -f "$out/loop.ko" ] && exit 0

case "$version" in
  5.10) suites="bullseye bullseye-security"; meta=linux-image-cloud-$arch ;;
  6.1)  suites="bookworm bookworm-security"; meta=linux-image-cloud-$arch ;;
  6.12) suites="bookworm bookworm-security"; meta=linux-image-6.12-cloud-$arch ;;
  7.2)  suites="forky"; meta=linux-image-cloud-$arch ;;
  *) echo "unknown kernel version $version (want 5.10, 6.1, 6.12 or 7.2)" >&2; exit 2 ;;
esac

. "$(dirname "$0")/../lib/private-apt.sh"
mkdir -p "$out"
private_apt "$apt_dir" $suites

# Resolve the meta package to the real kernel package(s).
deps=$(apt-cache "${apt_opts[@]}" depends "$meta" | awk '/Depends: linux-(image|binary|modules)-[0-9]/ {print $2}')
[ -n "$deps" ] || { echo "cannot resolve $meta for $version" >&2; exit 1; }
pkgs=""
for d in $deps; do
  pkgs="$pkgs $d"
  # 7.x splits the kernel (linux-binary) from its modules (linux-modules).
  for extra in $(apt-cache "${apt_opts[@]}" depends "$d" | awk '/Depends: linux-(binary|modules)-[0-9]/ {print $2}'); do
    pkgs="$pkgs $extra"
  done
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Another architecture's guest needs its own busybox too.
[ "$arch" = amd64 ] || pkgs="$pkgs busybox-static"
(cd "$work" && apt-get "${apt_opts[@]}" -qq download $pkgs >&2)
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/root"; done

vmlinuz=$(find "$work/root" -name 'vmlinuz*' -type f | head -1)
ko=$(find "$work/root" -name 'overlay.ko*' -type f | head -1)
[ -n "$vmlinuz" ] || { echo "no vmlinuz in $pkgs" >&2; exit 1; }
[ -n "$ko" ] || { echo "no overlay.ko in $pkgs" >&2; exit 1; }
cp "$vmlinuz" "$out/vmlinuz"
if [ "$arch" != amd64 ]; then
  [ -f "$work/root/bin/busybox" ] || { echo "no bin/busybox in busybox-static:$arch" >&2; exit 1; }
  cp "$work/root/bin/busybox" "$out/busybox"
fi
loop=$(find "$work/root" -name 'loop.ko*' -type f | head -1)
[ -n "$loop" ] || { echo "no loop.ko in $pkgs" >&2; exit 1; }
for m in "$ko:overlay.ko" "$loop:loop.ko"; do
  case "${m%%:*}" in
    *.xz) xz -dc "${m%%:*}" > "$out/${m#*:}" ;;
    *.zst) zstd -qdc "${m%%:*}" > "$out/${m#*:}" ;;
    *) cp "${m%%:*}" "$out/${m#*:}" ;;
  esac
done
basename "$(dirname "$(dirname "$(dirname "$(dirname "$ko")")")")" > "$out/release" 2>/dev/null || true
echo "$pkgs" > "$out/packages"
touch "$out/ok"
echo "kernel $version: $(cat "$out/packages")" >&2
