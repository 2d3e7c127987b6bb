#!/bin/sh
# Run the GPU tests under compute-sanitizer memcheck and racecheck (needs a
# GPU and compute-sanitizer from the CUDA toolkit; exits 77 without them).
# Usage: tests/cuda/sanitize.sh [build-dir]   (default: .)
b=${1:-.}
cs=${COMPUTE_SANITIZER:-compute-sanitizer}
command -v "$cs" >/dev/null 2>&1 || cs=/usr/local/cuda/bin/compute-sanitizer
[ -x "$cs" ] || command -v "$cs" >/dev/null 2>&1 || { echo "skip: no compute-sanitizer"; exit 77; }
rc=0
for tool in memcheck racecheck; do
    echo "== $tool"
    # --target-processes all: the process-rank test forks its ranks.
    "$cs" --tool "$tool" --target-processes all --error-exitcode 99 \
        "$b/tests/cuda/test_cuda_moe"
    r=$?
    [ $r -eq 77 ] && exit 77
    [ $r -ne 0 ] && rc=1
done
exit $rc
