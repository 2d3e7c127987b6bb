#!/bin/sh
# Everything that needs a GPU, in one command, on a GPU machine: the GPU
# tests (tests/cuda, compute-sanitizer included), the --device cuda smoke
# test and the GPU benchmarks (the issue's targets), written with the
# device, date and commit to bench/results/<date>-gpu-<device>.txt.
#   bench/gpu-run.sh [build-dir]     (default: .; configured and built)
# Exit: 0 all passed, 1 a test or bench failed, 77 no GPU here.
set -u
b=${1:-.}
src=$(cd "$(dirname "$0")/.." && pwd)
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 ||
    { echo "gpu-run: no GPU (nvidia-smi -L failed)"; exit 77; }
dev=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 |
      tr -c 'A-Za-z0-9\n' '-' | tr -s '-')
mkdir -p "$src/bench/results"
out="$src/bench/results/$(date -u +%Y%m%d-%H%M%S)-gpu-$dev.txt"
fails=0
step() {   # step NAME COMMAND...: run, record, count failures (77: skip)
    name=$1
    shift
    echo "## $name"
    echo "\$ $*"
    "$@" 2>&1
    rc=$?
    case $rc in
    0) echo "-> pass" ;;
    77) echo "-> skip (77)" ;;
    *) echo "-> FAIL (exit $rc)"; fails=$((fails + 1)) ;;
    esac
    echo
}
run_all() {
    echo "# epx GPU run"
    echo "date:   $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git -C "$src" rev-parse HEAD 2>/dev/null || echo unknown)$(
        [ -n "$(git -C "$src" status --porcelain --untracked-files=no 2>/dev/null)" ] &&
        echo ' (dirty)')"
    echo "host:   $(hostname)"
    nvidia-smi -L
    nvidia-smi --query-gpu=driver_version,memory.total,clocks.max.sm --format=csv
    nvcc --version 2>/dev/null | tail -1
    echo
    for t in test_kern_host test_kern_quant test_fdpass test_cuda_moe \
             test_cuda_ll; do
        step "tests/cuda/$t" "$b/tests/cuda/$t"
    done
    step "tests/cuda/sanitize.sh" sh "$src/tests/cuda/sanitize.sh" "$b"
    step "bench/test-cuda-bench-smoke.sh" \
        sh -c "cd '$b' && sh '$src/bench/test-cuda-bench-smoke.sh'"
    e="$b/bench/epx-bench --device cuda"
    # HT: each phase >= 70 % of the device copy bandwidth for its bytes
    step "HT token-major bf16, 8 ranks on one GPU" $e --ranks 8 --tokens 4096
    step "HT expert-major bf16" $e --ranks 8 --tokens 4096 --layout expert
    step "HT token-major fp8" $e --ranks 8 --tokens 4096 --dtype fp8
    step "HT token-major nvfp4" $e --ranks 8 --tokens 4096 --dtype nvfp4
    # LL: dispatch of 128 tokens x 7168 x top-8 at 8 ranks under 100 us
    step "LL 128 tokens, 8 ranks on one GPU" $e --ranks 8 --tokens 128 \
        --mode ll --iters 200 --warmup 20
    echo "failures: $fails"
}
run_all | tee "$out"
echo "written: $out"
grep -q '^failures: 0$' "$out"
