#!/bin/sh
# Tests the Debian packages: builds them (scripts/build-deb.sh) unless
# --debs DIR gives built ones, installs libepx0, libepx-dev and epx-tools
# with dpkg -i, checks them with scripts/installcheck.sh against the
# system paths (epx-topo, epx-bench --ranks 2, epx-balance, a program built
# with pkg-config, the manual pages) and checks what the packages declare
# (run-time dependencies from ${shlibs:Depends}, none on CUDA or NCCL; no
# build path left in the binaries), then purges them.  Root (or sudo).
# Not part of make check: about 2 minutes on 2 cores, most of it the build.
#
#   scripts/test-deb.sh [--debs DIR] [--keep]
#
# --keep leaves the packages installed.  Refuses to run when any of them
# is installed already (it would purge it).
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
debs= keep=no
say() { printf 'test-deb: %s\n' "$*"; }
die() { printf 'test-deb: error: %s\n' "$*" >&2; exit 1; }
while [ $# -gt 0 ]; do
    case $1 in
    --debs) [ $# -ge 2 ] || die "--debs needs a directory"; debs=$2; shift 2 ;;
    --keep) keep=yes; shift ;;
    -h|--help) sed -n '2,15s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
done
if [ "$(id -u)" -eq 0 ]; then
    SUDO=
elif command -v sudo >/dev/null 2>&1; then
    SUDO=sudo
else
    die "needs root (dpkg -i) or sudo"
fi
pkgs="epx-tools libepx-dev libepx0-ucx libepx0"
for p in $pkgs; do
    st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case $st in
    *" not-installed"|"") ;;
    *) die "$p is installed already ($st); remove it first (dpkg --purge $p)" ;;
    esac
done

start=$(date +%s)
if [ -z "$debs" ]; then
    debs=$root/_build/deb
    "$root/scripts/build-deb.sh" --out "$debs"
fi
files=
for p in libepx0 libepx0-ucx libepx-dev epx-tools; do
    f=$(ls "$debs"/${p}_*.deb 2>/dev/null | tail -n 1)
    [ -n "$f" ] || die "no ${p}_*.deb in $debs"
    files="$files $f"
done
built=$(date +%s)

failed=0
bad() { printf 'test-deb: FAIL: %s\n' "$*"; failed=1; }
purge() {
    [ $keep = yes ] && { say "--keep: $pkgs left installed"; return; }
    # shellcheck disable=SC2086
    $SUDO dpkg --purge $pkgs > /dev/null
    for p in $pkgs; do
        st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
        case $st in *" not-installed"|"") ;; *) bad "$p still $st after purge" ;; esac
    done
    [ ! -e /usr/bin/epx-topo ] || bad "/usr/bin/epx-topo left after purge"
    say "purged $pkgs"
}

# What the packages declare.
for f in $files; do
    dep=$(dpkg-deb -f "$f" Depends)
    case $dep in
    *cuda*|*nccl*|*CUDA*|*NCCL*) bad "$(basename "$f") depends on CUDA/NCCL: $dep" ;;
    esac
    say "$(basename "$f"): Depends: $dep"
done
for p in libepx0 epx-tools; do
    f=$(ls "$debs"/${p}_*.deb | tail -n 1)
    # ${shlibs:Depends} filled in: the C library and hwloc at least
    dpkg-deb -f "$f" Depends | grep -q 'libc6 (>=' ||
        bad "$p: no libc6 in Depends (\${shlibs:Depends} not filled in?)"
    dpkg-deb -f "$f" Depends | grep -q 'libhwloc' ||
        bad "$p: no libhwloc in Depends"
done

# The library runs without UCX: only its module needs it.
dpkg-deb -f "$(ls "$debs"/libepx0_*.deb | tail -n 1)" Depends | grep -q libucx &&
    bad "libepx0 depends on UCX (it belongs to libepx0-ucx)"
dpkg-deb -f "$(ls "$debs"/libepx0-ucx_*.deb | tail -n 1)" Depends | grep -q libucx ||
    bad "libepx0-ucx does not depend on UCX"

# shellcheck disable=SC2086
$SUDO dpkg -i $files > "$debs/dpkg-i.log" 2>&1 || {
    cat "$debs/dpkg-i.log"
    $SUDO dpkg --purge $pkgs > /dev/null 2>&1 || true
    die "dpkg -i failed (missing run-time packages? scripts/install-deps.sh installs them)"
}
trap 'purge' EXIT
say "installed:$(for f in $files; do printf ' %s' "$(basename "$f")"; done)"

multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
libdir=/usr/lib/$multiarch
# ldconfig's cache has the library (as /lib/... where /lib links to /usr/lib)
cached=$(ldconfig -p | awk '$1 == "libepx.so.0" {print $NF; exit}')
[ -n "$cached" ] && [ "$(readlink -f "$cached")" = "$(readlink -f "$libdir/libepx.so.0")" ] ||
    bad "ldconfig -p does not list $libdir/libepx.so.0 (has '$cached')"
for b in "$libdir/libepx.so.0" /usr/bin/epx-topo /usr/bin/epx-bench \
         /usr/bin/epx-balance /usr/bin/epx-plan-bench; do
    if strings "$b" | grep -q 'epx-deb\.'; then
        bad "$b holds a path of the build directory"
    fi
    if readelf -d "$b" | grep -qE 'RPATH|RUNPATH'; then
        bad "$b has an rpath"
    fi
done
# The build directory is gone: the shipped descriptions come from
# /usr/share/epx/systems.
epx-topo --system hgx-h100-8 --matrix > /dev/null ||
    bad "epx-topo --system hgx-h100-8 from the installed descriptions"
epx-topo --list | grep -qx gb200-nvl72 || bad "epx-topo --list lacks gb200-nvl72"
# The UCX module from its package, found in the configured directory.
[ -f "$libdir/epx/epx_ucx.so" ] || bad "no $libdir/epx/epx_ucx.so"
UCX_TLS=tcp,self epx-bench --ranks 2 --tokens 16 --hidden 64 --experts 8 \
    --topk 2 --iters 2 --warmup 1 --transport ucx --launcher fork \
    > "$debs/ucx-run.log" 2>&1 && grep -q 'no mismatch' "$debs/ucx-run.log" ||
    { cat "$debs/ucx-run.log"; bad "epx-bench --transport ucx with the packaged module"; }

# lintian, where installed: errors fail, the rest is shown.
if command -v lintian >/dev/null 2>&1; then
    # shellcheck disable=SC2086
    lintian --fail-on error $files > "$debs/lintian.log" 2>&1 ||
        bad "lintian reports errors"
    grep -E '^[EWI]:' "$debs/lintian.log" | sed 's/^/test-deb: lintian: /' || true
fi

"$root/scripts/installcheck.sh" --system --bindir /usr/bin --libdir "$libdir" \
    --pkgdatadir /usr/share/epx --mandir /usr/share/man --srcdir "$root" ||
    failed=1

end=$(date +%s)
say "build $((built - start)) s, install and checks $((end - built)) s"
if [ $failed -ne 0 ]; then
    say "FAILED"
    exit 1
fi
say "all passed"
