#!/usr/bin/env bash
# debian-root.sh CACHE_DIR : prints the path of a tarball of a fresh Debian root
# (debootstrap --variant=minbase, plus systemd so that the package's unit can be
# enabled and verified inside it), for this machine's Debian release and
# architecture, from the mirror this machine's apt uses. Made once (about a
# minute) and cached as CACHE_DIR/<release>-<arch>.tar; tests unpack a clean copy
# of it for each install. Nothing on the host is changed.
set -euo pipefail
cache=${1:?usage: debian-root.sh CACHE_DIR}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd -P)
. /etc/os-release
release=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
arch=$(dpkg --print-architecture)
tarball="$cache/$release-$arch.tar"
exec 9>"$cache/.lock"
flock 9
if [ ! -s "$tarball" ]; then
  mirror=$(apt-get indextargets --format '$(REPO_URI)' 'Identifier: Packages' 2>/dev/null \
    | grep -v -- '-security/' | grep -m1 '/debian/$' || true)
  [ -n "$mirror" ] || { echo "no Debian mirror in this machine's apt configuration" >&2; exit 1; }
  work=$(mktemp -d "$cache/.root.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  debootstrap --variant=minbase --include=systemd "$release" "$work/root" "$mirror" > "$work/log" 2>&1 \
    || { tail -20 "$work/log" >&2; exit 1; }
  rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*_Packages
  tar -C "$work/root" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
fi
echo "$tarball"
