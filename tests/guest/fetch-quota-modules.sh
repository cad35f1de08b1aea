#!/usr/bin/env bash
# fetch-quota-modules.sh VERSION CACHE_DIR
# Extracts the modules the quota guests need (loop, quota_tree, quota_v2; ext4
# and quota support are built into the Debian cloud kernels) from the kernel
# package fetch-kernel.sh used, into CACHE_DIR/VERSION/quota/ (uncompressed).
# Downloads with the same private apt configuration; nothing is installed.
# Idempotent: a complete directory is left alone.
set -euo pipefail
version=${1:?usage: fetch-quota-modules.sh VERSION CACHE_DIR}
cache=${2:?usage: fetch-quota-modules.sh VERSION CACHE_DIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
"$here/fetch-kernel.sh" "$version" "$cache"
out="$cache/$version/quota"
exec 9>"$cache/.fetch-quota-$version.lock"
flock 9
[ -f "$out/ok" ] && exit 0

case "$version" in
  5.10) suites="bullseye bullseye-security" ;;
  6.1|6.12) suites="bookworm bookworm-security" ;;
  7.2)  suites="forky" ;;
  *) echo "unknown kernel version $version" >&2; exit 2 ;;
esac
. "$here/../lib/private-apt.sh"
private_apt "$cache/apt/$version" $suites
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# shellcheck disable=SC2046
(cd "$work" && apt-get "${apt_opts[@]}" -qq download $(cat "$cache/$version/packages") >&2)
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
mkdir -p "$out"
for m in loop quota_tree quota_v2; do
  ko=$(find "$work/root" -name "$m.ko*" -type f | head -1)
  # Not shipped as a module: built in (the guest loads only what it finds).
  [ -n "$ko" ] || { echo "kernel $version: no $m.ko (built in?)" >&2; continue; }
  case "$ko" in
    *.xz) xz -dc "$ko" > "$out/$m.ko" ;;
    *.zst) zstd -qdc "$ko" > "$out/$m.ko" ;;
    *) cp "$ko" "$out/$m.ko" ;;
  esac
done
touch "$out/ok"
echo "kernel $version: quota modules in $out" >&2
