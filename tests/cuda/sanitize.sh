#!/bin/sh
# Run the GPU tests under compute-sanitizer memcheck and racecheck (needs a
# GPU and compute-sanitizer from the CUDA toolkit; exits 77 without them).
# Only the cases whose ranks are processes: under the sanitizer the kernels
# of ranks that are threads of one process are not all resident at once
# (seen on an H100: 2 thread ranks passed, 4 timed out in their device
# waits), and the protocol's waits need every rank's kernel running.  So
# test_executors_ll (thread ranks only) and test_executors' thread cases are
# left out here; they run without the sanitizer in bench/gpu-run.sh.
# Usage: tests/cuda/sanitize.sh [build-dir]   (default: .)
b=${1:-.}
cs=${COMPUTE_SANITIZER:-compute-sanitizer}
command -v "$cs" >/dev/null 2>&1 || cs=/usr/local/cuda/bin/compute-sanitizer
[ -x "$cs" ] || command -v "$cs" >/dev/null 2>&1 || { echo "skip: no compute-sanitizer"; exit 77; }
rc=0
for tool in memcheck racecheck; do
    echo "== tests/moe/test_executors (process ranks): $tool"
    # --target-processes all: the process-rank cases fork their ranks.
    # --report-api-errors no: the fabric-window probe fails by design
    # without IMEX (and falls back); the library checks every status.
    EPX_TEST_FILTER='*processes*' "$cs" --tool "$tool" \
        --target-processes all --report-api-errors no --error-exitcode 99 \
        "$b/tests/moe/test_executors" --device
    r=$?
    [ $r -eq 77 ] && exit 77
    [ $r -ne 0 ] && rc=1
done
exit $rc
