#!/bin/sh
# The issue's host targets on a machine with cores to spare (8 ranks of
# the host executor, one core or more each): HT at 4096 tokens against the
# memory-copy limit, LL against HT at 128 tokens (interleaved rounds), the
# quantized wires' bytes, and two-batch overlap (OpenBLAS FFN, one thread
# per rank; with --overlap-thread on a thread of its own, so 16 cores).  Each run goes through bench/record-result.sh, so every JSON
# file carries the machine, date and commit; the log lists them.
#   bench/host-run.sh [build-dir]      (default: .)
# EPX_HOST_STEP_LIMIT (seconds, 150) stops a run that hangs.
# Exit: 0 all ran, 1 a run failed.
set -u
b=${1:-.}
src=$(cd "$(dirname "$0")/.." && pwd)
limit=${EPX_HOST_STEP_LIMIT:-150}
lim=
command -v timeout >/dev/null 2>&1 && lim="timeout -k 5 $limit"
export EPX_BENCH="$b/bench/epx-bench" OPENBLAS_NUM_THREADS=1
fails=0
rec() {    # rec NAME ARGS...: one recorded epx-bench run
    echo "## $1"
    shift
    echo "\$ epx-bench --launcher fork $*"
    $lim sh "$src/bench/record-result.sh" --launcher fork "$@" 2>&1
    rc=$?
    [ $rc -eq 0 ] && echo "-> pass" || { echo "-> FAIL (exit $rc)"; fails=$((fails + 1)); }
    echo
}
{
echo "# epx host run: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(getconf _NPROCESSORS_ONLN) cores,"
echo "# $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')"
echo "commit: $(cat "$src/COMMIT" 2>/dev/null || git -C "$src" rev-parse HEAD)"
rec "HT 4096 tokens bf16" --ranks 8 --tokens 4096 --impl epx,memcpy-limit \
    --iters 10 --warmup 2
rec "HT 4096 tokens fp8" --ranks 8 --tokens 4096 --dtype fp8 \
    --impl epx,memcpy-limit --iters 10 --warmup 2
rec "HT 4096 tokens nvfp4" --ranks 8 --tokens 4096 --dtype nvfp4 \
    --impl epx,memcpy-limit --iters 10 --warmup 2
for r in 1 2 3; do
    rec "round $r: HT 128 tokens" --ranks 8 --tokens 128 \
        --impl epx,memcpy-limit --iters 50 --warmup 5
    rec "round $r: LL 128 tokens" --ranks 8 --tokens 128 --mode ll \
        --impl epx,memcpy-limit --iters 50 --warmup 5
done
# 400 steps: at 40, single runs swung by tens of points.
ov="--ranks 8 --tokens 128 --hidden 1024 --experts 32 --topk 4 --iters 400
    --warmup 4"
rec "overlap, ffn 32, FFN between the calls" $ov --ffn 32 --overlap
# The expert (FFN and outputs) counts as compute since 1654c41, so the
# ratios near 1 need small F; two passes, the runs swing; a third with the
# threads pinned (rank r's on CPUs 2r and 2r + 1).
for pass in 1 2 3; do
    pin=
    [ $pass -eq 3 ] && pin=--pin
    for f in 1 2 4 8 16; do
        rec "overlap pass $pass, ffn $f, expert on a compute thread $pin" \
            $ov --ffn $f --overlap-thread $pin
    done
done
echo "failures: $fails"
} 2>&1
[ $fails -eq 0 ]
