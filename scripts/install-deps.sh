#!/bin/sh
# Install what epx needs to build and test on Debian/Ubuntu; with --deb,
# also what building its Debian packages needs (scripts/build-deb.sh).
# Idempotent: when every package is already installed, apt-get is not run at
# all, so reruns (CI, quickstart) cost a dpkg-query and nothing more.
#
# Another apt or dpkg (unattended-upgrades, cloud-init at a cloud machine's
# boot) may hold the locks: apt-get is then retried, saying so, for up to
# INSTALL_DEPS_LOCK_WAIT seconds (default 600), every
# INSTALL_DEPS_LOCK_POLL seconds (5); apt-get install also waits inside
# for dpkg's lock (DPkg::Lock::Timeout).  Sourced with INSTALL_DEPS_LIB=1,
# it only defines its functions (tests/tools/test-install-deps.sh).
set -eu

deb=no
# Sourced as a library, the caller's arguments are not ours (and stay
# as they are: a sourced script shares them).
if [ "${INSTALL_DEPS_LIB:-0}" != 1 ]; then
    for a in "$@"; do
        case $a in
        --deb) deb=yes ;;
        -h|--help) echo "usage: $0 [--deb]"; exit 0 ;;
        *) printf 'install-deps: unknown argument %s (usage: %s [--deb])\n' "$a" "$0" >&2
           exit 2 ;;
        esac
    done
fi

PACKAGES="build-essential autoconf automake libtool pkg-config \
libhwloc-dev hwloc libucx-dev ucx-utils libcmocka-dev \
libopenmpi-dev openmpi-bin libjansson-dev libsodium-dev libopenblas-dev graphviz gnuplot-nox valgrind python3 python3-venv python3-dev git \
ca-certificates iproute2 clang libclang-rt-dev"
# dpkg-buildpackage, dh (with dh_autoreconf) and fakeroot
DEB_PACKAGES="dpkg-dev debhelper fakeroot"
[ $deb = no ] || PACKAGES="$PACKAGES $DEB_PACKAGES"

say() { printf 'install-deps: %s\n' "$*"; }
die() { printf 'install-deps: error: %s\n' "$*" >&2; exit 1; }

# A whole number of seconds, else a clear error naming the variable.
lock_setting() {   # lock_setting NAME DEFAULT
    v=
    eval "v=\${$1:-$2}"
    case $v in
        ''|*[!0-9]*) die "$1='$v': want a whole number of seconds" ;;
    esac
    printf '%s' "$v"
}

# lock_retry WHAT CMD...: run CMD; while it fails because another process
# holds an apt/dpkg lock (apt's messages: "Could not get lock", "Unable to
# lock", "Unable to acquire the dpkg frontend lock"), wait and run it
# again, until INSTALL_DEPS_LOCK_WAIT seconds have passed.  Any other
# failure returns at once with CMD's status.  CMD's stderr is shown.
lock_retry() {
    what=$1
    shift
    wait_s=$(lock_setting INSTALL_DEPS_LOCK_WAIT 600)
    poll_s=$(lock_setting INSTALL_DEPS_LOCK_POLL 5)
    [ "$poll_s" -gt 0 ] || poll_s=1
    start=$(date +%s)
    errf=$(mktemp "${TMPDIR:-/tmp}/install-deps.XXXXXX")
    told=no
    while :; do
        rc=0
        "$@" 2>"$errf" || rc=$?
        if [ $rc -eq 0 ]; then
            cat "$errf" >&2
            rm -f "$errf"
            return 0
        fi
        if ! grep -qE 'Could not get lock|Unable to lock|Unable to acquire the dpkg frontend lock|is another process using it' "$errf"; then
            cat "$errf" >&2
            rm -f "$errf"
            return $rc
        fi
        waited=$(( $(date +%s) - start ))
        if [ "$waited" -ge "$wait_s" ]; then
            cat "$errf" >&2
            rm -f "$errf"
            die "$what: another apt/dpkg process still holds its lock after ${waited} s (unattended-upgrades or cloud-init at boot?); wait for it or set INSTALL_DEPS_LOCK_WAIT (seconds, now $wait_s)"
        fi
        if [ $told = no ]; then
            say "$what: another apt/dpkg process holds the lock; waiting up to $wait_s s (INSTALL_DEPS_LOCK_WAIT)"
            told=yes
        fi
        sleep "$poll_s"
    done
}

[ "${INSTALL_DEPS_LIB:-0}" = 1 ] && return 0

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
lock_wait=$(lock_setting INSTALL_DEPS_LOCK_WAIT 600)
# shellcheck disable=SC2086 # $SUDO is empty or one word
lock_retry "apt-get update" $SUDO apt-get update ||
    die "apt-get update failed (network or apt sources?)"
# shellcheck disable=SC2086 # word splitting of the package list is intended
lock_retry "apt-get install" $SUDO apt-get install -y --no-install-recommends \
        -o DPkg::Lock::Timeout="$lock_wait" $missing ||
    die "apt-get install failed for:$missing"
say "installed:$missing"
