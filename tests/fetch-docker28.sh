#!/usr/bin/env bash
# fetch-docker28.sh CACHE_DIR: downloads Debian forky's docker.io 28.5, docker-cli, docker-buildx and
# containerd 2.1 and unpacks them into CACHE_DIR/docker28 (not installed: the system
# keeps Debian 12's Docker 20.10). They run on Debian 12 with its runc. Used by
# tests/runtimes.rs for Docker's containerd image store. Idempotent.
set -euo pipefail
cache=$(realpath -m "${1:?usage: fetch-docker28.sh CACHE_DIR}")
out="$cache/docker28"
# One fetch at a time (parallel tests); the others find it done.
mkdir -p "$cache"
exec 9>"$cache/.fetch-docker28.lock"
flock 9
[ -x "$out/usr/sbin/dockerd" ] && [ -x "$out/usr/bin/docker" ] && [ -x "$out/usr/bin/containerd" ] && [ -x "$out/usr/libexec/docker/cli-plugins/docker-buildx" ] && exit 0
. "$(dirname "$0")/lib/private-apt.sh"
private_apt "$cache/apt/forky" forky
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get "${apt_opts[@]}" -qq download docker.io docker-cli docker-buildx containerd >&2)
rm -rf "$out.new"
mkdir -p "$out.new"
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$out.new"; done
rm -rf "$out"
mv "$out.new" "$out"
"$out/usr/sbin/dockerd" --version >&2
