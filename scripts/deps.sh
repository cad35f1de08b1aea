# Sourced by the run and test scripts: installs what they need on a fresh
# Debian/Ubuntu host, and does nothing (quickly) when it is already there.

die() { echo "error: $*" >&2; exit 1; }

need_root() {
    [ "$(id -u)" = 0 ] || die "run as root (sudo $0): the agent reads trusted.overlay.* xattrs and the tests mount overlays"
}

apt_install() {
    # apt_install PKG... : installs the packages that are missing.
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them"
    echo "installing: ${missing[*]}" >&2
    if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ]; then
        apt-get update -qq
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_rust() {
    if ! command -v cargo >/dev/null; then
        [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null || die "no Rust toolchain: install rustup (https://rustup.rs), then run this again"
    apt_install gcc libc6-dev
}

ensure_rust_components() {
    command -v rustup >/dev/null || return 0
    local have
    have=$(rustup component list --installed 2>/dev/null)
    for c in clippy rustfmt; do
        grep -q "^$c" <<<"$have" || rustup component add "$c"
    done
}

ensure_test_tools() {
    # mount/umount, du, Prometheus and promtool for the integration tests.
    apt_install util-linux mount coreutils prometheus
}
