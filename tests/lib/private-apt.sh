# Sourced by the fetch scripts: an apt configuration of our own (the system's
# sources are not touched), using the Debian mirror this machine's apt already
# uses, for other Debian suites. Packages are downloaded, never installed.
#
#   private_apt DIR SUITE...   sets the array apt_opts and runs apt-get update
#   PRIVATE_APT_ARCH=arm64     another architecture's packages (default: this machine's)
private_apt() {
    local dir=$1
    shift
    local mirror security s
    mirror=$(apt-get indextargets --format '$(REPO_URI)' 'Identifier: Packages' 2>/dev/null \
      | grep -v -- '-security/' | grep -m1 '/debian/$' || true)
    security=$(apt-get indextargets --format '$(REPO_URI)' 'Identifier: Packages' 2>/dev/null \
      | grep -m1 -- '-security/$' || true)
    [ -n "$mirror" ] || { echo "no Debian mirror in this machine's apt configuration" >&2; return 1; }
    [ -n "$security" ] || security="${mirror%/debian/}/debian-security/"
    mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
    # Two fetch scripts can share one configuration (forky: Prometheus 3 and
    # Docker 28): one apt at a time in it, until the calling script exits.
    exec 8>"$dir/.lock"
    flock 8
    : > "$dir/sources.list"
    for s in "$@"; do
      case "$s" in
        *-security) echo "deb [trusted=yes] $security $s main" >> "$dir/sources.list" ;;
        *) echo "deb [trusted=yes] $mirror $s main" >> "$dir/sources.list" ;;
      esac
    done
    apt_opts=(-o "Dir::Etc::SourceList=$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
              -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache"
              -o Acquire::Check-Valid-Until=false -o APT::Get::AllowUnauthenticated=true
              -o APT::Sandbox::User=root)
    if [ -n "${PRIVATE_APT_ARCH:-}" ]; then
      apt_opts+=(-o "APT::Architecture=$PRIVATE_APT_ARCH" -o "APT::Architectures=$PRIVATE_APT_ARCH")
    fi
    apt-get "${apt_opts[@]}" -qq update >&2
}
