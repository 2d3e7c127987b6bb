#!/bin/sh
# bench/gpu-targets.py on made-up device-timing objects whose verdicts are
# known: met, missed, no run, the better of eager and graph, a run not
# verified, the fused / classic ratios.  Needs python3 (else skip, 77).
set -u
src=$(cd "$(dirname "$0")/.." && pwd)
command -v python3 >/dev/null 2>&1 || { echo "no python3"; exit 77; }
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
python3 - "$d" <<'PY' || exit 1
import json, sys
d = sys.argv[1]
def run(name, mode, T, wire, kern, disp, comb, x=None, graph=False, ok=True):
    r = {"impl": "epx-cuda", "dispatch_device_span_us": disp, "combine_device_span_us": comb}
    if x:
        r["dispatch_device_x_sm_copy"], r["combine_device_x_sm_copy"] = x
    json.dump({"verified": ok, "config": {
        "device": "cuda", "gpu": "GPU X", "device_timing": True, "mode": mode,
        "tokens_per_rank": [T] * 8, "wire": wire, "layout": "expert" if mode == "ll" else "token",
        "cuda_graph": graph, "kernels": kern},
        "results": [{"impl": "epx-nccl", "skipped": "one GPU"}, r]}, open(f"{d}/{name}", "w"))
run("a.json", "ht", 128, "bf16", "classic", 220, 162, (3.1, 2.3))
run("b.json", "ht", 128, "bf16", "fused", 70, 60, (1.1, 1.25))
run("c.json", "ll", 128, "bf16", "classic", 282, 266)
run("d.json", "ll", 128, "bf16", "classic", 254, 259, graph=True)
run("e.json", "ll", 128, "bf16", "fused", 100, 160)
run("f.json", "ll", 128, "fp8", "fused", 90, 160, ok=False)
run("g.json", "ht", 4096, "bf16", "classic", 900, 800, (1.5, 1.1))
run("h.json", "ht", 4096, "fp8", "classic", 950, 800, (1.5, 1.4))
open(f"{d}/not-json.json", "w").write("{")
PY
python3 "$src/bench/gpu-targets.py" "$d" --json "$d/t.out" >"$d/out" || exit 1
cat "$d/out"
fails=0
want() {   # want KERNELS TARGET-START VERDICT [VALUE]
    line=$(grep "^  $1 *$2" "$d/out" | head -1)
    case $line in
    *" $3 "*) ;;
    *) echo "FAIL: $1 $2: want $3: $line"; fails=$((fails + 1)); return ;;
    esac
    if [ $# -gt 3 ]; then
        case $line in
        *" $4 "*) ;;
        *) echo "FAIL: $1 $2: want value $4: $line"; fails=$((fails + 1)) ;;
        esac
    fi
}
want classic "HT 128 bf16 dispatch" missed 3.100
want fused "HT 128 bf16 dispatch" met 1.100
want fused "HT 128 bf16 combine" missed 1.250
want classic "HT 4096 bf16 dispatch" missed 0.667
want classic "HT 4096 bf16 combine" met 0.909
want fused "HT 4096 bf16 dispatch" "no run"
want classic "LL 128 bf16 dispatch" missed 254
want fused "LL 128 bf16 dispatch" met 100
want fused "LL 128 bf16 combine" met 160
want classic "HT 4096 fp8" missed 950
want fused "LL 128 fp8" met 90
want classic "every run verified" met
want fused "every run verified" missed
grep -q "ll   128 bf16   expert eager dispatch classic    282.0 us  fused    100.0 us  x 0.355" "$d/out" ||
    { echo "FAIL: fused / classic ratio"; fails=$((fails + 1)); }
python3 -c "import json,sys; t=json.load(open(sys.argv[1])); assert t['runs'] == 8 and len(t['targets']) == 18" "$d/t.out" ||
    { echo "FAIL: --json"; fails=$((fails + 1)); }
[ $fails -eq 0 ]
