#!/bin/sh
# Checks an installed epx: the tools run, the system descriptions and the
# manual pages are where they belong, and a program built with
# `cc $(pkg-config --cflags --libs epx)` links the installed library and
# runs.  `make installcheck` runs it on the configured prefix;
# scripts/test-deb.sh on the Debian packages.
#
#   installcheck.sh --bindir DIR --libdir DIR --pkgdatadir DIR --mandir DIR
#                   [--system] [--srcdir DIR]
#
# Programs built here find libepx and epx.pc through LD_LIBRARY_PATH and
# PKG_CONFIG_PATH set to --libdir, as for a private prefix; with --system
# (a package) through the system's own paths, and must load the library
# from --libdir.  The installed tools run as they are, without either
# variable.  --srcdir: the source tree (examples/moe.c; default: the one
# this script is in).  CC: the compiler (default cc).
set -eu

bindir= libdir= pkgdatadir= mandir= srcdir= system=no
while [ $# -gt 0 ]; do
    case $1 in
    --bindir) bindir=$2; shift 2 ;;
    --libdir) libdir=$2; shift 2 ;;
    --pkgdatadir) pkgdatadir=$2; shift 2 ;;
    --mandir) mandir=$2; shift 2 ;;
    --srcdir) srcdir=$2; shift 2 ;;
    --system) system=yes; shift ;;
    *) echo "installcheck: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
[ -n "$bindir" ] && [ -n "$libdir" ] && [ -n "$pkgdatadir" ] && [ -n "$mandir" ] ||
    { echo "installcheck: --bindir, --libdir, --pkgdatadir and --mandir are needed" >&2; exit 2; }
[ -n "$srcdir" ] || srcdir=$(cd "$(dirname "$0")/.." && pwd)
: "${CC:=cc}"

# The tools must run without help: clear what could hide a wrong rpath.
unset LD_LIBRARY_PATH
if [ $system = yes ]; then
    unset PKG_CONFIG_PATH
    prog_env=
else
    PKG_CONFIG_PATH=$libdir/pkgconfig
    export PKG_CONFIG_PATH
    prog_env="LD_LIBRARY_PATH=$libdir"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
ok() { echo "installcheck: ok: $*"; }
bad() { echo "installcheck: FAIL: $*"; failed=1; }
show() { sed 's/^/  | /' "$tmp/out"; }
# check NAME TEXT CMD...: CMD exits 0 and prints TEXT (a fixed string;
# empty: anything).  Its output stays in $tmp/out.
check() {
    name=$1 text=$2
    shift 2
    rc=0
    "$@" > "$tmp/out" 2>&1 || rc=$?
    if [ $rc -ne 0 ]; then
        bad "$name: exit $rc from: $*"; show; return 1
    fi
    if [ -n "$text" ] && ! grep -qF -- "$text" "$tmp/out"; then
        bad "$name: no '$text' in the output of: $*"; show; return 1
    fi
    ok "$name"
}

# The tools.
check "epx-topo probes this machine" "Host " "$bindir/epx-topo" || true
check "epx-topo --system gb200-nvl72 --domains" "72 GPUs" \
    "$bindir/epx-topo" --system gb200-nvl72 --domains || true
for s in gb200-nvl72 hgx-h100-8 cpu-host; do
    [ -f "$pkgdatadir/systems/$s.json" ] ||
        bad "$pkgdatadir/systems/$s.json missing"
done
check "epx-bench --ranks 2: verified" "no mismatch" \
    "$bindir/epx-bench" --ranks 2 --tokens 64 --hidden 256 --experts 8 \
    --topk 2 --iters 3 --warmup 1 || true
# DeepSeek's published EPLB example and the placement it publishes.
cat > "$tmp/loads.json" <<'JSON'
[[90,132,40,61,104,165,39,4,73,56,183,86],
 [20,107,104,64,19,197,187,157,172,86,16,27]]
JSON
check "epx-balance: the EPLB example's published placement" \
    '"phy2log":[[5,6,5,7,8,4,3,4,10,9,10,2,0,1,11,1],[7,10,6,8,6,11,8,9,2,4,5,1,5,0,3,1]]' \
    "$bindir/epx-balance" --loads "$tmp/loads.json" --slots 16 --ranks 8 \
    --groups 4 --domains 2 --policy deepseek --json || true
check "epx-plan-bench runs" "placement" "$bindir/epx-plan-bench" \
    --layers 2 --experts 16 --slots 20 --ranks 4 --groups 1 --reps 2 || true

# Manual pages: installed, and man finds them.
for p in man1/epx-topo.1 man1/epx-bench.1 man1/epx-balance.1 \
         man1/epx-plan-bench.1 man7/epx.7; do
    f=$mandir/$p
    [ -f "$f" ] || [ -f "$f.gz" ] || { bad "$f missing"; continue; }
done
if command -v man >/dev/null 2>&1; then
    if MANPATH=$mandir man -w 7 epx > "$tmp/out" 2>&1 &&
       grep -q "^$mandir/man7/epx.7" "$tmp/out"; then
        ok "man -w 7 epx: $(cat "$tmp/out")"
    else
        bad "man does not find epx(7) under $mandir:"; cat "$tmp/out"
    fi
fi

# A program built against the installed library with pkg-config.
if ! command -v pkg-config >/dev/null 2>&1; then
    bad "pkg-config not found"
elif ! flags=$(pkg-config --cflags --libs epx 2>"$tmp/err"); then
    bad "pkg-config epx: $(cat "$tmp/err")"
else
    ok "pkg-config --cflags --libs epx: $flags"
    cat > "$tmp/version.c" <<'C'
#include <stdio.h>
#include <epx.h>
int main(void)
{
    printf("%s %d.%d.%d\n", epx_version_string(), EPX_VERSION_MAJOR,
           EPX_VERSION_MINOR, EPX_VERSION_PATCH);
    return 0;
}
C
    modversion=$(pkg-config --modversion epx)
    # shellcheck disable=SC2086 # $flags are words
    if check "cc \$(pkg-config --cflags --libs epx) version.c" "" \
            $CC -o "$tmp/version" "$tmp/version.c" $flags &&
       check "version.c runs" "" env $prog_env "$tmp/version"; then
        if [ "$(cat "$tmp/out")" = "$modversion $modversion" ]; then
            ok "library, header and epx.pc all say $modversion"
        else
            bad "library and header say '$(cat "$tmp/out")', epx.pc $modversion"
        fi
    fi
    # shellcheck disable=SC2086
    if check "cc \$(pkg-config --cflags --libs epx) examples/moe.c" "" \
            $CC -o "$tmp/moe" "$srcdir/examples/moe.c" $flags &&
       check "examples/moe runs" "" env $prog_env "$tmp/moe"; then
        n=$(grep -c 'out == x' "$tmp/out" || true)
        if [ "$n" -eq 8 ]; then
            ok "examples/moe: 8 ranks, out == x"
        else
            bad "examples/moe: want 8 ranks with out == x"; show
        fi
        if command -v ldd >/dev/null 2>&1; then
            # shellcheck disable=SC2086
            lib=$(env $prog_env ldd "$tmp/moe" | awk '/libepx\.so/ {print $3}')
            sflags=$(pkg-config --cflags --libs epx-static 2>"$tmp/err") ||
                bad "pkg-config epx-static: $(cat "$tmp/err")"
            # libepx.a linked in: the program runs without libepx.so.
            # shellcheck disable=SC2086
            if [ -n "$sflags" ] &&
               check "cc \$(pkg-config --cflags --libs epx-static) examples/moe.c" "" \
                    $CC -o "$tmp/moe-static" "$srcdir/examples/moe.c" $sflags &&
               check "examples/moe linked statically runs" "" \
                    env LD_LIBRARY_PATH=/nonexistent "$tmp/moe-static"; then
                if [ "$(grep -c 'out == x' "$tmp/out" || true)" -eq 8 ] &&
                   ! ldd "$tmp/moe-static" | grep -q libepx; then
                    ok "examples/moe with libepx.a: 8 ranks, out == x, no libepx.so"
                else
                    bad "examples/moe with libepx.a"; show
                fi
            fi
            # compared as real paths: /lib may be a link to /usr/lib
            if [ -n "$lib" ] && [ "$(cd "$(dirname "$lib")" && pwd -P)" = \
                                  "$(cd "$libdir" && pwd -P)" ]; then
                ok "examples/moe loads $lib"
            else
                bad "examples/moe loads libepx from '$lib', not from $libdir"
            fi
        fi
    fi
fi

if [ $failed -ne 0 ]; then
    echo "installcheck: FAILED"
    exit 1
fi
echo "installcheck: all passed"
