#!/bin/sh
# Smoke test of epx-bench --device cuda.  Without a GPU (or a CUDA build)
# the bench must say exactly that and exit 3, and this test passes on that;
# with a GPU, small verified runs: throughput token-major and expert-major,
# a quantized wire, low latency (native and quantized, eager and replayed
# from CUDA graphs), --json and --device-timing
# (bench/README.md, "GPU").
b=bench/epx-bench
small="--ranks 2 --tokens 16 --hidden 256 --experts 8 --topk 2 --iters 2 --warmup 1"
out=$($b --device cuda $small 2>&1)
rc=$?
if [ $rc -eq 3 ]; then
    case "$out" in
    "epx-bench: --device cuda: no CUDA device ("*")")
        n=$(printf '%s\n' "$out" | wc -l)
        [ "$n" -eq 1 ] && { echo "no GPU: $out"; exit 0; } ;;
    esac
    echo "exit 3 without the no-GPU message (or with more output):"
    printf '%s\n' "$out"
    exit 1
fi
printf '%s\n' "$out"
[ $rc -eq 0 ] || { echo "FAIL: exit $rc"; exit 1; }
echo "$out" | grep -q '^  epx-cuda  dispatch .* yes$' || { echo "FAIL: no verified epx-cuda row"; exit 1; }
for extra in "--layout expert --align 4" "--dtype nvfp4" "--mode ll" \
             "--mode ll --dtype fp8" "--mode ll --cuda-graph" \
             "--mode ll --dtype fp8 --cuda-graph"; do
    $b --device cuda $small $extra || { echo "FAIL: $extra"; exit 1; }
done
# --json: one object on stdout, the table on stderr; verified
j=$($b --device cuda $small --mode ll --json 2>/dev/null) ||
    { echo "FAIL: --json exit"; exit 1; }
case "$j" in
"{"*"}") ;;
*) echo "FAIL: --json printed more than one object:"; printf '%s\n' "$j"; exit 1 ;;
esac
echo "$j" | grep -q '^  "verified": true,$' || { echo "FAIL: --json not verified"; exit 1; }
echo "$j" | grep -q '"impl": "epx-cuda"' || { echo "FAIL: --json without epx-cuda"; exit 1; }
if command -v python3 >/dev/null 2>&1; then
    echo "$j" | python3 -m json.tool >/dev/null || { echo "FAIL: --json is not JSON"; exit 1; }
fi
# --device-timing: the sm-copy and 1-token rows, spans no shorter than
# the slowest rank, no skew below zero, the engine's data part
j=$($b --device cuda $small --device-timing --json 2>/dev/null) ||
    { echo "FAIL: --device-timing exit"; exit 1; }
for k in '"impl": "sm-copy"' '"impl": "epx-cuda-1tok"' \
         '"dispatch_device_x_sm_copy"' '"combine_device_data_us"'; do
    echo "$j" | grep -q "$k" || { echo "FAIL: --device-timing without $k"; exit 1; }
done
if command -v python3 >/dev/null 2>&1; then
    echo "$j" | python3 -c '
import json, sys
d = json.load(sys.stdin)
assert d["verified"] and d["config"]["device_timing"], "not verified"
for r in d["results"]:
    if "skipped" in r or "failed" in r:   # e.g. epx-nccl on one GPU
        continue
    for p in ("dispatch", "combine"):
        span = r[p + "_device_span_us"]
        assert span >= r[p + "_device_rank_max_us"] - 1e-3, (r["impl"], p)
        assert r[p + "_device_rank_max_us"] >= r[p + "_device_rank_mean_us"] - 1e-3
        sk = r[p + "_device_skew_us"]   # null: ranks on several GPUs
        assert sk is None or sk >= 0, (r["impl"], p)
' || { echo "FAIL: --device-timing figures inconsistent"; exit 1; }
fi
exit 0
