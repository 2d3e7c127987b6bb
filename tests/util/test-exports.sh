#!/bin/sh
# libepx.so exports exactly the public API: every function the public
# headers declare (not their static inline helpers), and no internal name
# (epx__*, moe_*, ll_*, ...).  Each module exports its entry point only,
# and libepx itself needs none of the optional libraries at run time.
set -eu
src=${srcdir:-.}
so=./.libs/libepx.so
[ -f "$so" ] || { echo "no $so (static-only build)"; exit 77; }
command -v nm >/dev/null || { echo "no nm"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
nm -D --defined-only "$so" | awk '$2 ~ /^[TDBRVW]$/ {print $3}' |
    sed 's/@.*//' | sort -u > "$tmp/exported"
# Declared: a name followed by '(' at the start of a declaration's name.
cat "$src/include/epx.h" "$src/include/epx/cuda.h" "$src/include/epx/mpi.h" |
    sed 's:/\*.*\*/::g' | grep -v '^static' |
    grep -oE '^[a-z_][a-z0-9_ ]*[ *]epx_[a-z][a-z0-9_]*\(' |
    grep -oE 'epx_[a-z][a-z0-9_]*\($' | tr -d '(' | sort -u > "$tmp/declared"
fail=0
bad=$(grep -vE '^epx_[a-z]' "$tmp/exported" | grep -vx 'EPX_0' || true)
if [ -n "$bad" ]; then
    echo "internal symbols exported by libepx.so:"; echo "$bad"; fail=1
fi
missing=$(comm -23 "$tmp/declared" "$tmp/exported")
if [ -n "$missing" ]; then
    echo "declared in the public headers but not exported:"; echo "$missing"
    fail=1
fi
extra=$(comm -13 "$tmp/declared" "$tmp/exported" | grep -vx 'EPX_0' || true)
if [ -n "$extra" ]; then
    echo "exported but declared in no public header:"; echo "$extra"; fail=1
fi
needed=$(readelf -d "$so" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
opt=$(echo "$needed" | grep -E '^lib(ucp|uct|ucs|cudart|cuda|nccl|mpi)[.]' || true)
if [ -n "$opt" ]; then
    echo "libepx.so links optional libraries (they belong in modules):"
    echo "$opt"; fail=1
fi
for m in ./src/module/.libs/epx_*.so; do
    [ -f "$m" ] || continue
    syms=$(nm -D --defined-only "$m" | awk '$2 ~ /^[TDBRVW]$/ {print $3}' |
           sed 's/@.*//' | sort -u | tr '\n' ' ')
    if [ "$syms" != "epx_module_get " ]; then
        echo "$m exports more than its entry point: $syms"; fail=1
    fi
done
n=$(wc -l < "$tmp/declared")
[ "$fail" -eq 0 ] && echo "libepx.so exports the $n public functions, nothing else"
exit $fail
