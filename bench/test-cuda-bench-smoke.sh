#!/bin/sh
# Smoke test of epx-bench --device cuda.  Without a GPU (or a CUDA build)
# the bench must say exactly that and exit 3, and this test passes on that;
# with a GPU, small verified runs: throughput token-major and expert-major,
# a quantized wire, low latency (native and quantized, eager and replayed
# from CUDA graphs), and --json
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
exit 0
