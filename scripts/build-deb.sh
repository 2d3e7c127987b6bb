#!/bin/sh
# Builds the Debian packages libepx0, libepx-dev and epx-tools (and their
# -dbgsym packages) from this tree with dpkg-buildpackage and the
# packaging in debian/, without CUDA and NCCL.
#
#   scripts/build-deb.sh [--out DIR] [--no-deps]
#
# Installs the build dependencies first (scripts/install-deps.sh --deb;
# --no-deps skips that), builds in a temporary copy of the tree (tracked
# and untracked files git does not ignore, so uncommitted changes are
# packaged and build outputs are not), and leaves the .deb files in DIR
# (default _build/deb), printing their paths.  DEB_BUILD_OPTIONS passes
# on; parallel=$(nproc) is added when it has no parallel=.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/_build/deb
deps=yes
say() { printf 'build-deb: %s\n' "$*"; }
die() { printf 'build-deb: error: %s\n' "$*" >&2; exit 1; }
while [ $# -gt 0 ]; do
    case $1 in
    --out) [ $# -ge 2 ] || die "--out needs a directory"; out=$2; shift 2 ;;
    --no-deps) deps=no; shift ;;
    -h|--help) sed -n '2,13s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
done

[ $deps = no ] || "$root/scripts/install-deps.sh" --deb
command -v dpkg-buildpackage >/dev/null 2>&1 ||
    die "dpkg-buildpackage not found (scripts/install-deps.sh --deb)"

# The package version's upstream part is configure.ac's version.
ver=$(sed -n 's/^AC_INIT(\[epx\], \[\([^]]*\)\].*/\1/p' "$root/configure.ac")
dver=$(dpkg-parsechangelog -l "$root/debian/changelog" -S Version)
case $dver in
"$ver"-*) ;;
*) die "debian/changelog is at $dver but configure.ac at $ver: add a changelog entry (dch -v $ver-1)" ;;
esac

work=$(mktemp -d "${TMPDIR:-/tmp}/epx-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
src=$work/epx-$ver
mkdir "$src"
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$root" && git ls-files -c -o --exclude-standard |
        while IFS= read -r f; do [ -e "$f" ] && printf '%s\n' "$f"; done |
        tar -cf - -T -) | tar -xf - -C "$src"
else
    # a release tarball: nothing built in it is wanted either
    (cd "$root" && tar -cf - --exclude=./_build .) | tar -xf - -C "$src"
fi

case " ${DEB_BUILD_OPTIONS:-} " in
*" parallel="*) ;;
*) DEB_BUILD_OPTIONS="${DEB_BUILD_OPTIONS:+$DEB_BUILD_OPTIONS }parallel=$(nproc)" ;;
esac
export DEB_BUILD_OPTIONS
say "building epx $dver in $src (DEB_BUILD_OPTIONS=$DEB_BUILD_OPTIONS)"
mkdir -p "$out"
(cd "$src" && dpkg-buildpackage -b -us -uc) > "$out/build.log" 2>&1 || {
    tail -n 60 "$out/build.log" >&2
    die "dpkg-buildpackage failed (last lines above; all of it in $out/build.log)"
}

rm -f "$out"/*.deb
found=no
for f in "$work"/*.deb; do
    [ -e "$f" ] || continue
    cp "$f" "$out/"
    found=yes
    say "wrote $out/$(basename "$f")"
done
[ $found = yes ] || die "no .deb was built"
