#!/bin/sh
# Everything that needs a GPU, in one command, on a GPU machine: epx-topo's
# probes, the GPU tests (tests/cuda, compute-sanitizer included), the
# --device cuda smoke test and the GPU benchmarks (the issue's targets),
# written with the device, date and commit to
# bench/results/<date>-gpu-<device>.txt, and each benchmark's JSON object
# (epx-bench --json) and the map's to bench/results/<date>-gpu-<device>/.
#   bench/gpu-run.sh [build-dir]     (default: .; configured and built)
# A host without the build dependencies takes a bundle instead
# (scripts/gpu-bundle.sh DIR, then DIR/run.sh there).  Each step is
# stopped after EPX_GPU_STEP_LIMIT seconds (300) and a device wait after
# EPX_TIMEOUT (30 here): a hang costs minutes, not the whole run.
# Exit: 0 all passed, 1 a test or bench failed, 77 no GPU here.
set -u
b=${1:-.}
export EPX_TIMEOUT=${EPX_TIMEOUT:-30}
limit=${EPX_GPU_STEP_LIMIT:-300}
lim=
command -v timeout >/dev/null 2>&1 && lim="timeout -k 5 $limit"
src=$(cd "$(dirname "$0")/.." && pwd)
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 ||
    { echo "gpu-run: no GPU (nvidia-smi -L failed)"; exit 77; }
dev=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 |
      tr -c 'A-Za-z0-9\n' '-' | tr -s '-')
mkdir -p "$src/bench/results"
stamp="$src/bench/results/$(date -u +%Y%m%d-%H%M%S)-gpu-$dev"
out="$stamp.txt"
mkdir -p "$stamp"
fails=0
step() {   # step NAME COMMAND...: run, record, count failures (77: skip)
    name=$1
    shift
    echo "## $name"
    echo "\$ $*"
    $lim "$@" 2>&1
    rc=$?
    verdict $rc
}
verdict() {
    case $1 in
    0) echo "-> pass" ;;
    77) echo "-> skip (77)" ;;
    124|137) echo "-> FAIL (stopped after $limit s)"; fails=$((fails + 1)) ;;
    *) echo "-> FAIL (exit $1)"; fails=$((fails + 1)) ;;
    esac
    echo
}
bench() {  # bench NAME FILE ARGS...: epx-bench --device cuda ARGS --json,
           # the table into the log, the JSON object into $stamp/FILE.json
    name=$1
    f="$stamp/$2.json"
    shift 2
    echo "## $name"
    echo "\$ epx-bench --device cuda $* --json > $f"
    $lim "$b/bench/epx-bench" --device cuda "$@" --json 2>&1 >"$f"
    verdict $?
}
fused() {  # fused FN ARGS...: FN (step or bench) under EPX_CUDA_KERNELS=fused
    EPX_CUDA_KERNELS=fused
    export EPX_CUDA_KERNELS
    "$@"
    unset EPX_CUDA_KERNELS
}
run_all() {
    echo "# epx GPU run"
    echo "date:   $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    # A bundle's programs come from a clean archive of COMMIT, whatever
    # git tree lies around the bundle.
    if [ -f "$src/COMMIT" ]; then
        echo "commit: $(cat "$src/COMMIT") (bundle)"
    else
        echo "commit: $(git -C "$src" rev-parse HEAD 2>/dev/null || echo unknown)$(
            [ -n "$(git -C "$src" status --porcelain --untracked-files=no 2>/dev/null)" ] &&
            echo ' (dirty)')"
    fi
    echo "host:   $(hostname)"
    nvidia-smi -L
    nvidia-smi --query-gpu=driver_version,memory.total,clocks.max.sm --format=csv
    nvcc --version 2>/dev/null | tail -1
    echo
    # The probes (hwloc, NVML, the CUDA driver) on a real GPU: the map as
    # a tree, the GPU matrix, and the JSON beside the benchmarks'
    step "topology/epx-topo" "$b/topology/epx-topo"
    step "topology/epx-topo --matrix" "$b/topology/epx-topo" --matrix
    step "topology/epx-topo --json" sh -c \
        "'$b/topology/epx-topo' --json > '$stamp/topology.json'"
    # Both executors against the reference by the same code (--device: a
    # missing device is a skip, not a host-only pass)
    step "tests/moe/test_executors --device" "$b/tests/moe/test_executors" --device
    # The fused throughput dispatch (EPX_CUDA_KERNELS=fused; cached and
    # refused calls and NCCL fall back to classic) against
    # the same reference, readiness included: correctness before its times
    step "EPX_CUDA_KERNELS=fused tests/moe/test_executors --device" \
        env EPX_CUDA_KERNELS=fused "$b/tests/moe/test_executors" --device
    step "EPX_CUDA_KERNELS=fused tests/moe/test_executors_poll --device" \
        env EPX_CUDA_KERNELS=fused "$b/tests/moe/test_executors_poll" --device
    # Low latency, windows and NCCL (low_latency_nccl: one rank per GPU, one
    # rank on a single GPU, 2 and 4 where there are as many; never run on a
    # GPU before)
    step "tests/moe/test_executors_ll --device" "$b/tests/moe/test_executors_ll" --device
    # Low latency in one kernel per operation (src/cuda/README.md, "Fused
    # kernels: low latency"), eager and graphs, every wire
    fused step "tests/moe/test_executors_ll --device (EPX_CUDA_KERNELS=fused)" \
        "$b/tests/moe/test_executors_ll" --device
    # The fused kernel set (EPX_CUDA_KERNELS=fused; src/cuda/README.md,
    # "Fused kernels"), never run on a GPU before: the same conformance
    # (pull combine: outputs in place, apart, and mixed across ranks)
    fused step "EPX_CUDA_KERNELS=fused tests/moe/test_executors --device" \
        "$b/tests/moe/test_executors" --device
    fused step "EPX_CUDA_KERNELS=fused tests/moe/test_executors_poll --device" \
        "$b/tests/moe/test_executors_poll" --device
    # Weight migration between device ranks (IPC / cuMem / direct
    # windows; NCCL where there are two GPUs), both executors
    step "tests/cuda/test_gpu_migrate --device" "$b/tests/cuda/test_gpu_migrate" --device
    # Readiness and cached dispatch, windows and NCCL (one rank per GPU:
    # one rank on a single GPU, 2 and 4 where there are as many), refusals
    # included
    step "tests/moe/test_executors_poll --device" "$b/tests/moe/test_executors_poll" --device
    for t in test_kern_host test_kern_quant test_fdpass; do
        step "tests/cuda/$t" "$b/tests/cuda/$t"
    done
    # The one API end to end: the README example on device ranks, and the
    # host/device agreement of epx_moe_create
    step "examples/moe_gpu (8 device ranks, out == x)" sh -c \
        "o=\$('$b/examples/moe_gpu' 2>&1); rc=\$?; echo \"\$o\";
         [ \$rc -eq 0 ] && [ \$(echo \"\$o\" | grep -c 'out == x') -eq 8 ]"
    step "tests/moe/test_device" "$b/tests/moe/test_device"
    # The Python package on device engines with this host's torch
    # (python/tests/test_cuda.py): a bundle carries the package built for
    # the GPU image's python3; elsewhere python/ must hold a build for it
    if python3 -c 'import torch' 2>/dev/null; then
        if PYTHONPATH="$src/python" python3 -c 'import epx' 2>/dev/null; then
            step "python/tests/test_cuda.py (python3, torch $(python3 -c \
                'import torch; print(torch.__version__)'))" \
                env PYTHONPATH="$src/python" PYTHONUNBUFFERED=1 python3 -m pytest \
                -q -rs -p no:cacheprovider "$src/python/tests/test_cuda.py"
        else
            echo "## python/tests/test_cuda.py"
            echo "no epx package for this python3 in $src/python (gpu-bundle.sh"
            echo "builds one with EPX_BUNDLE_PYTHON): not run"
            echo
        fi
    fi
    step "bench/test-cuda-bench-smoke.sh" \
        sh -c "cd '$b' && sh '$src/bench/test-cuda-bench-smoke.sh'"
    # HT: each phase >= 70 % of the device copy bandwidth for its bytes
    # Device timing (CUDA events on one timeline, the SM-limited copy and
    # the 1-token floor) on the GPU data path's targets first: HT and LL
    # at 128 tokens, then HT at 4096
    bench "HT 128 tokens, 8 ranks on one GPU, device timing" ht128-bf16-dt \
        --ranks 8 --tokens 128 --iters 200 --warmup 20 --device-timing
    # ... and the fused set beside it (same card, same run): pull combine
    # (the bench's outputs are in place), expert-major too
    fused bench "HT 128 tokens, device timing, EPX_CUDA_KERNELS=fused" \
        ht128-bf16-dt-fused --ranks 8 --tokens 128 --iters 200 --warmup 20 \
        --device-timing
    bench "HT 128 tokens expert-major, device timing" ht128-expert-dt \
        --ranks 8 --tokens 128 --layout expert --iters 200 --warmup 20 \
        --device-timing
    fused bench "HT 128 tokens expert-major, device timing, EPX_CUDA_KERNELS=fused" \
        ht128-expert-dt-fused --ranks 8 --tokens 128 --layout expert \
        --iters 200 --warmup 20 --device-timing
    bench "LL 128 tokens, 8 ranks on one GPU, device timing" ll-bf16-dt \
        --ranks 8 --tokens 128 --mode ll --iters 200 --warmup 20 \
        --device-timing
    # The same LL benches on the fused kernels (one kernel per operation,
    # send and receive phases apart; quantized once per token), beside
    # the classic figures: bf16, fp8, CUDA graphs
    fused bench "LL 128 tokens, fused kernels, device timing" \
        ll-bf16-dt-fused --ranks 8 --tokens 128 --mode ll --iters 200 \
        --warmup 20 --device-timing
    fused bench "LL 128 tokens fp8, fused kernels, device timing" \
        ll-fp8-dt-fused --ranks 8 --tokens 128 --mode ll --dtype fp8 \
        --iters 200 --warmup 20 --device-timing
    fused bench "LL 128 tokens, fused kernels, CUDA graphs, device timing" \
        ll-bf16-graph-fused --ranks 8 --tokens 128 --mode ll --cuda-graph \
        --iters 200 --warmup 20 --device-timing
    bench "HT token-major bf16, 8 ranks on one GPU" ht-token-bf16 \
        --ranks 8 --tokens 4096 --device-timing
    fused bench "HT token-major bf16, EPX_CUDA_KERNELS=fused" \
        ht-token-bf16-fused --ranks 8 --tokens 4096 --device-timing
    bench "HT expert-major bf16" ht-expert-bf16 --ranks 8 --tokens 4096 \
        --layout expert
    fused bench "HT expert-major bf16, fused dispatch" ht-expert-bf16-fused \
        --ranks 8 --tokens 4096 --layout expert --device-timing
    bench "HT token-major fp8" ht-token-fp8 --ranks 8 --tokens 4096 \
        --dtype fp8
    # fused: each row quantized once, not once per destination
    fused bench "HT token-major fp8, fused dispatch" ht-token-fp8-fused \
        --ranks 8 --tokens 4096 --dtype fp8 --device-timing
    bench "HT token-major nvfp4" ht-token-nvfp4 --ranks 8 --tokens 4096 \
        --dtype nvfp4
    # LL against HT on the same input (128 tokens per rank)
    bench "HT 128 tokens, 8 ranks on one GPU" ht128-bf16 --ranks 8 \
        --tokens 128 --iters 200 --warmup 20
    # LL: dispatch of 128 tokens x 7168 x top-8 at 8 ranks under 100 us
    bench "LL 128 tokens, 8 ranks on one GPU" ll-bf16 --ranks 8 \
        --tokens 128 --mode ll --iters 200 --warmup 20
    bench "LL 128 tokens fp8" ll-fp8 --ranks 8 --tokens 128 --mode ll \
        --dtype fp8 --iters 200 --warmup 20 --device-timing
    # LL as decode runs it: each rank's calls replayed from CUDA graphs
    bench "LL 128 tokens, CUDA graphs" ll-bf16-graph --ranks 8 \
        --tokens 128 --mode ll --cuda-graph --iters 200 --warmup 20 \
        --device-timing
    # The data path's targets from the benches above (classic and fused
    # side by side), before the slowest step
    echo "## targets (bench/gpu-targets.py)"
    python3 "$src/bench/gpu-targets.py" "$stamp" --json "$stamp/targets.json" ||
        echo "(no python3 here: run bench/gpu-targets.py $stamp elsewhere)"
    echo
    # Last: the slowest step (every test under two sanitizer tools)
    step "tests/cuda/sanitize.sh" sh "$src/tests/cuda/sanitize.sh" "$b"
    echo "failures: $fails"
}
run_all | tee "$out"
echo "written: $out and $stamp/*.json"
grep -q '^failures: 0$' "$out"
