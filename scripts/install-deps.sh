#!/bin/sh
# Install what epx needs to build and test on Debian/Ubuntu; with --deb,
# also what building its Debian packages needs (scripts/build-deb.sh).
# Idempotent: when every package is already installed, apt-get is not run at
# all, so reruns (CI, quickstart) cost a dpkg-query and nothing more.
set -eu

deb=no
for a in "$@"; do
    case $a in
    --deb) deb=yes ;;
    -h|--help) echo "usage: $0 [--deb]"; exit 0 ;;
    *) printf 'install-deps: unknown argument %s (usage: %s [--deb])\n' "$a" "$0" >&2
       exit 2 ;;
    esac
done

PACKAGES="build-essential autoconf automake libtool pkg-config \
libhwloc-dev hwloc libucx-dev ucx-utils libcmocka-dev \
libopenmpi-dev openmpi-bin libjansson-dev libsodium-dev libopenblas-dev graphviz gnuplot-nox valgrind python3 python3-venv python3-dev git \
ca-certificates iproute2 clang libclang-rt-dev"
# dpkg-buildpackage, dh (with dh_autoreconf) and fakeroot
DEB_PACKAGES="dpkg-dev debhelper fakeroot"
[ $deb = no ] || PACKAGES="$PACKAGES $DEB_PACKAGES"

say() { printf 'install-deps: %s\n' "$*"; }
die() { printf 'install-deps: error: %s\n' "$*" >&2; exit 1; }

command -v dpkg-query >/dev/null 2>&1 ||
    die "dpkg-query not found: this script supports Debian/Ubuntu only; install the equivalent of: $PACKAGES"

missing=
for p in $PACKAGES; do
    # Status "install ok installed" is the only fully installed state.
    st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$st" = "install ok installed" ] || missing="$missing $p"
done

if [ -z "$missing" ]; then
    say "all packages already installed"
    exit 0
fi

say "missing:$missing"
if [ "$(id -u)" -eq 0 ]; then
    SUDO=
elif command -v sudo >/dev/null 2>&1; then
    SUDO=sudo
    say "not root: using sudo"
else
    die "not root and sudo not found; run as root or install:$missing"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update ||
    die "apt-get update failed (network or apt sources?)"
# shellcheck disable=SC2086 # word splitting of the package list is intended
$SUDO apt-get install -y --no-install-recommends $missing ||
    die "apt-get install failed for:$missing"
say "installed:$missing"
