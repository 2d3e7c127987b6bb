#!/bin/sh
# Smoke test of epx-bench --device cuda.  Without a GPU (or a CUDA build)
# the bench must say exactly that and exit 3, and this test passes on that;
# with a GPU, small verified runs: throughput token-major and expert-major,
# a quantized wire, and low latency (bench/README.md, "GPU").
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
for extra in "--layout expert --align 4" "--dtype nvfp4" "--mode ll"; do
    $b --device cuda $small $extra || { echo "FAIL: $extra"; exit 1; }
done
exit 0
