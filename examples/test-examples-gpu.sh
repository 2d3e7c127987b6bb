#!/bin/sh
# examples/moe_gpu, the README's example on device ranks: built where
# libepx has CUDA, run where a device is.  Skipped (77) otherwise: the
# program itself exits 77 without a device.
set -u
[ -x ./examples/moe_gpu ] || { echo "examples/moe_gpu: not built (no CUDA)"; exit 77; }
tmp=$(mktemp "${TMPDIR:-/tmp}/epx-examples-gpu.XXXXXX")
trap 'rm -f "$tmp"' EXIT INT TERM
rc=0
./examples/moe_gpu > "$tmp" 2>&1 || rc=$?
cat "$tmp"
[ "$rc" -eq 77 ] && exit 77
[ "$rc" -eq 0 ] || { echo "FAIL: examples/moe_gpu: exit $rc"; exit 1; }
n=$(grep -c "out == x" "$tmp" || true)
[ "$n" -eq 8 ] || { echo "FAIL: examples/moe_gpu: want 8 ranks with out == x"; exit 1; }
echo "examples/moe_gpu: 8 device ranks, out == x"
