#!/bin/sh
# Smoke test of epx-bench --kill-rank (run by `make check` from the build
# directory): 16 ranks with replicas lose one in the middle of a dispatch
# (over shm, then rank 0, the bootstrap's root, over UCX when it is built)
# and must finish: the victim killed, 15 survivors, the failed iteration
# redone, every output equal to the reference over the live ranks, some
# entries of lost experts left out, times reported.  Bad arguments exit 2.
set -u
BENCH=${EPX_BENCH:-./bench/epx-bench}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/epx-elastic-smoke.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT INT TERM
fail() { echo "FAIL: $*" >&2; exit 1; }

check() {   # $1: JSON file, $2: killed rank, $3: iteration
    python3 - "$1" "$2" "$3" <<'PY' || fail "JSON of $1"
import json, sys
j = json.load(open(sys.argv[1]))
kill, at = int(sys.argv[2]), int(sys.argv[3])
assert j["bench"] == "elastic" and j["ok"] is True, j
assert j["ranks"] == 16 and j["survivors"] == 15 and j["kill_rank"] == kill, j
# a survivor may have finished iteration at - 1 only: all go on from there
assert at - 1 <= j["iters_before"] <= at, j
assert j["iters_before"] + j["iters_after"] == 8, j
assert j["verified"] is True and j["mismatches"] == 0, j
assert j["checked"] >= 15 * j["tokens"] * 8, j  # survivors x tokens x iterations
assert j["slots_after"] == 75 and j["masked"] > 0, j
# the experts lost are the ones whose every slot was on the dead rank
assert j["lost_experts"] == j["want_lost"] >= 1, j
for k in ("detection_ms", "shrink_ms", "recovery_ms"):
    assert j[k] is not None and 0 <= j[k] < 60000, (k, j[k])
print("rank %d lost at %d: %d experts lost, detection %.1f ms, shrink %.1f ms, "
      "recovery %.1f ms" % (kill, at, j["lost_experts"], j["detection_ms"],
                            j["shrink_ms"], j["recovery_ms"]))
PY
}

run() {   # $1: name, then epx-bench options
    name=$1
    shift
    "$BENCH" --ranks 16 --experts 64 --topk 4 --hidden 16 --iters 8 \
        --json "$@" >"$tmp/$name.json" 2>"$tmp/$name.err" ||
        { cat "$tmp/$name.err"; fail "$name run"; }
}

run shm --kill-rank 5 --at-iter 3     # --tokens left at its default
check "$tmp/shm.json" 5 3
if "$BENCH" --ranks 2 --experts 4 --topk 1 --tokens 1 --hidden 8 --iters 1 \
       --warmup 0 --impl epx --launcher fork --transport ucx \
       >/dev/null 2>"$tmp/probe.err"; then
    UCX_TLS=tcp,self run ucx --tokens 64 --transport ucx --kill-rank 0 --at-iter 2 \
        --routing zipf:1.0
    check "$tmp/ucx.json" 0 2
else
    grep -q "ucx module" "$tmp/probe.err" ||
        { cat "$tmp/probe.err" >&2; fail "--transport ucx failed"; }
    echo "note: the UCX run skipped (UCX not built)" >&2
fi

for bad in "--kill-rank 16" "--kill-rank 1 --at-iter 8" "--kill-rank -1" \
           "--kill-rank 1 --tokens 4,4" "--kill-rank 1 --dtype bf16" \
           "--kill-rank 1 --mode ll" "--kill-rank 1 --layout token"; do
    # shellcheck disable=SC2086
    "$BENCH" --ranks 16 --iters 8 $bad >/dev/null 2>"$tmp/bad.err"
    rc=$?
    [ "$rc" -eq 2 ] || fail "'$bad' exited $rc, want 2"
    [ -s "$tmp/bad.err" ] || fail "'$bad' said nothing"
done
echo "PASS: elastic smoke"
