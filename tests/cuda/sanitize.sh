#!/bin/sh
# Run the GPU tests (test_cuda_moe, test_cuda_ll) under compute-sanitizer memcheck and racecheck (needs a
# GPU and compute-sanitizer from the CUDA toolkit; exits 77 without them).
# Usage: tests/cuda/sanitize.sh [build-dir]   (default: .)
b=${1:-.}
cs=${COMPUTE_SANITIZER:-compute-sanitizer}
command -v "$cs" >/dev/null 2>&1 || cs=/usr/local/cuda/bin/compute-sanitizer
[ -x "$cs" ] || command -v "$cs" >/dev/null 2>&1 || { echo "skip: no compute-sanitizer"; exit 77; }
rc=0
for t in test_cuda_moe test_cuda_ll; do
    for tool in memcheck racecheck; do
        echo "== $t: $tool"
        # --target-processes all: the process-rank test forks its ranks.
        "$cs" --tool "$tool" --target-processes all --error-exitcode 99 \
            "$b/tests/cuda/$t"
        r=$?
        [ $r -eq 77 ] && exit 77
        [ $r -ne 0 ] && rc=1
    done
done
exit $rc
