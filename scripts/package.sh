#!/usr/bin/env bash
# The release command: every artefact into target/dist/ (or $DIST):
#   overlay-agent-VERSION-linux-ARCH          static binaries (musl), one per architecture
#   overlay-agent_VERSION-1_ARCH.deb          Debian packages (packaging/deb/build.sh)
#   overlay-agent_VERSION_oci-image.tar       the container image, a manifest list of
#                                             every architecture (packaging/image/build.sh)
#   overlay-agent_VERSION_linux-ARCH.oci.tar  the image of one architecture (podman save)
#   overlay-agent-VERSION.tgz                 the Helm chart (helm package)
#   SHA256SUMS                                sha256sum of all of them
# Works offline once scripts/test.sh (or scripts/deps.sh) has installed the tools
# and cargo has the dependencies (tests/release.rs runs it without a network).
#
# ARCHES lists the architectures as Rust targets. One is built when its target is
# installed (rustup target add TRIPLE, plus its C cross compiler for ring), else
# skipped with a note; PACKAGE_ARCHES="TRIPLE..." demands exactly those (a missing
# one is then an error). scripts/deps.sh ensure_arm64_cross installs aarch64's
# (the test command runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
ARCHES=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)
# The static aarch64 binary links with the GNU cross compiler (Rust's musl target
# brings its own libc and start files); ring's C is compiled with it too.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER:-aarch64-linux-gnu-gcc}
export CC_aarch64_unknown_linux_musl=${CC_aarch64_unknown_linux_musl:-aarch64-linux-gnu-gcc}
TOOLS_DIR=${TOOLS_DIR:-$(cd .cache 2>/dev/null && pwd -P)/tools}
dist=${DIST:-target/dist}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
die() { echo "package.sh: $*" >&2; exit 1; }

chart_version=$(sed -n 's/^version: //p' packaging/helm/overlay-agent/Chart.yaml)
app_version=$(sed -n 's/^appVersion: "\(.*\)"/\1/p' packaging/helm/overlay-agent/Chart.yaml)
[ "$chart_version" = "$version" ] && [ "$app_version" = "$version" ] \
    || die "packaging/helm/overlay-agent/Chart.yaml has version $chart_version, appVersion $app_version; Cargo.toml $version"

arch_of() {
    case "$1" in
        x86_64-*) echo amd64 ;;
        aarch64-*) echo arm64 ;;
        *) die "no Debian architecture for $1" ;;
    esac
}

if [ -n "${PACKAGE_ARCHES:-}" ]; then
    read -r -a wanted <<< "$PACKAGE_ARCHES"
else
    wanted=()
    installed=$(rustup target list --installed 2>/dev/null || true)
    for t in "${ARCHES[@]}"; do
        if grep -qx "$t" <<< "$installed"; then
            wanted+=("$t")
        else
            echo "package.sh: skipping $t: its Rust target is not installed" >&2
        fi
    done
fi
[ ${#wanted[@]} -gt 0 ] || die "no architecture to build"

rm -rf "$dist"
mkdir -p "$dist"
for t in "${wanted[@]}"; do
    arch=$(arch_of "$t")
    echo "package.sh: $t ($arch)" >&2
    cargo build --release --locked --offline --target "$t" -p overlay-agent --bin overlay-agent
    install -m 0755 "target/$t/release/overlay-agent" "$dist/overlay-agent-$version-linux-$arch"
    packaging/deb/build.sh "$t" "$dist" > /dev/null
done
packaging/image/build.sh "$dist" "${wanted[@]}"

helm="$TOOLS_DIR/bin/helm"
[ -x "$helm" ] || helm=helm
helm_home=$(mktemp -d)
trap 'rm -rf "$helm_home"' EXIT
HELM_CACHE_HOME="$helm_home/cache" HELM_CONFIG_HOME="$helm_home/config" HELM_DATA_HOME="$helm_home/data" \
    "$helm" package packaging/helm/overlay-agent --destination "$dist" > /dev/null

(cd "$dist" && sha256sum -- * > SHA256SUMS)
echo "package.sh: $(ls "$dist" | wc -l) files in $dist:" >&2
(cd "$dist" && ls -l) >&2
