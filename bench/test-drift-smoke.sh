#!/bin/sh
# Smoke test of epx-bench --drift (run by `make check` from the build
# directory): a generated drifting trace and a recorded one, JSON checked by
# python3 against the run's own rules: every epx re-plan moves at most
# --max-moves slots, bytes = moves x bytes per slot, DeepSeek re-plans from
# scratch (moves more), both balancers beat no balancer on the mean; the
# recorded trace gives the number of steps it has; the SVG when gnuplot is
# installed; a malformed trace is refused.
set -u
BENCH=${EPX_BENCH:-./bench/epx-bench}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/epx-drift-smoke.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT INT TERM
fail() { echo "FAIL: $*" >&2; exit 1; }

"$BENCH" --drift --ranks 8 --experts 32 --layers 2 --steps 24 \
    --replan-every 4 --max-moves 6 --bytes-per-slot 1000 \
    --routing zipf:1.0 --json --plot "$tmp/drift.svg" \
    >"$tmp/gen.json" 2>"$tmp/gen.err" || { cat "$tmp/gen.err"; fail "generated run"; }
python3 - "$tmp/gen.json" <<'PY' || fail "generated run's JSON"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["mode"] == "drift" and j["steps"] == 24 and len(j["per_step"]) == 24
for s in j["per_step"]:
    assert s["replanned"] == (s["step"] > 0 and s["step"] % 4 == 0), s
    assert s["epx"]["moves"] <= 6 and s["epx"]["bytes"] == 1000 * s["epx"]["moves"]
    assert s["none"]["moves"] == 0
    for p in ("none", "epx", "deepseek"):
        assert s[p]["max_over_mean"] >= 1 - 1e-12
m = j["summary"]
assert m["epx"]["moves"] > 0 and m["deepseek"]["moves"] > m["epx"]["moves"], m
assert m["epx"]["mean_max_over_mean"] < m["none"]["mean_max_over_mean"], m
assert m["deepseek"]["mean_max_over_mean"] < m["none"]["mean_max_over_mean"], m
PY
if command -v gnuplot >/dev/null 2>&1; then
    grep -q "<svg" "$tmp/drift.svg" || fail "no SVG with gnuplot installed"
fi

# A recorded trace: 2 layers x 4 experts, 6 steps, the hot expert moving.
cat >"$tmp/trace.txt" <<'T'
# layer 0 (4 experts), layer 1 (4 experts)
100 10 10 10  10 100 10 10
100 10 10 10  10 100 10 10
100 10 10 10  10 100 10 10
100 10 10 10  10 100 10 10
10 10 100 10  10 10 10 100
10 10 100 10  10 10 10 100
T
"$BENCH" --drift --ranks 2 --experts 4 --slots 6 --layers 2 \
    --replan-every 2 --load-trace "$tmp/trace.txt" --json \
    >"$tmp/rec.json" 2>"$tmp/rec.err" || { cat "$tmp/rec.err"; fail "recorded trace"; }
python3 - "$tmp/rec.json" <<'PY' || fail "recorded trace's JSON"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["steps"] == 6 and j["slots"] == 6 and j["trace"].endswith("trace.txt")
# step 2's plan saw steps 0-1, whose load steps 2-3 repeat
s = j["per_step"]
assert s[3]["epx"]["max_over_mean"] < s[3]["none"]["max_over_mean"], s[3]
PY
echo "1 2 3" >"$tmp/bad.txt"
"$BENCH" --drift --ranks 2 --experts 4 --layers 2 --load-trace "$tmp/bad.txt" \
    >/dev/null 2>"$tmp/bad.err" && fail "a short trace line was accepted"
grep -q "want 8 loads" "$tmp/bad.err" || fail "no message for a bad trace"
echo "1 2 3 4 5 6 7 8 9" >"$tmp/long.txt"
"$BENCH" --drift --ranks 2 --experts 4 --layers 2 --load-trace "$tmp/long.txt" \
    >/dev/null 2>"$tmp/long.err" && fail "a long trace line was accepted"
grep -q "found more" "$tmp/long.err" || fail "no message for a long line"
echo "PASS: epx-bench --drift"
