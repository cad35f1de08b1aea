#!/usr/bin/env bash
# fetch-prometheus3.sh CACHE_DIR: downloads Debian forky's Prometheus 3 package and
# extracts its binary to CACHE_DIR/prometheus3/prometheus (not installed; the
# system keeps its own Prometheus 2). Idempotent.
set -euo pipefail
cache=${1:?usage: fetch-prometheus3.sh CACHE_DIR}
out="$cache/prometheus3"
# One fetch at a time (parallel tests); the others find it done.
mkdir -p "$cache"
exec 9>"$cache/.fetch-prometheus3.lock"
flock 9
[ -x "$out/prometheus" ] && exit 0
. "$(dirname "$0")/lib/private-apt.sh"
private_apt "$cache/apt/forky" forky
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get "${apt_opts[@]}" -qq download prometheus >&2)
dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
mkdir -p "$out"
cp "$work/root/usr/bin/prometheus" "$out/prometheus"
"$out/prometheus" --version | head -1 >&2
