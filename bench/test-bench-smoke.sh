#!/bin/sh
# Smoke test of epx-bench (run by `make check` from the build directory):
#  1. 3 ranks, default launcher (mpirun when MPI is built), --json: the run
#     verifies every output, the JSON says so, every implementation ran;
#  2. expert-major fp32 Zipf routing with the fork launcher;
#  3. --dump with per-rank token counts (one rank has none) and dropped
#     top-k slots (-1), replayed with --trace under the default launcher and
#     with the expert writing in place: the replay's outputs equal the
#     original's byte for byte;
#     The same in low-latency mode, whose dump also writes the counts per
#     expert and per (expert, source);
#  4. error paths: a trace with a missing file, a bad option;
#  5. --balance at 8 ranks: both runs verified (token-major with the fork
#     launcher, expert-major fp32 with the DeepSeek policy under the default
#     launcher), and the balancer lowers the measured imbalance;
#  6. --overlap (when built with OpenBLAS; else the refusal message): both
#     layouts at 3 ranks, low-latency mode, and the compute-thread schedule
#     over an fp8 wire, each verified, with the three step series, a
#     hidden fraction in [0, 1] and its standard error (recomputed here
#     from the steps);
#  7. --hierarchical on 2 domains (EPX_TOPO_FILE: two CPU hosts), 4 ranks:
#     verified, and the bytes the engine counted crossing domains equal
#     those the routing gives (one row per remote destination domain),
#     fewer than the flat path's.
#  8. quantized wire formats (fp8 token-major, nvfp4 expert-major with an
#     odd hidden size, --dump writing the scales): verified, and the bytes
#     the engine put are below bf16's as the row sizes say.
#  9. low latency: --tokens-sweep JSON, and the verdict when every checked
#     iteration dropped rows.
# 10. --transport: shm at 2 ranks (every pair shm); where UCX is built,
#     ucx at 2 and 4 ranks (every pair ucx, self included) and auto on the
#     two domains of that description (shm inside, ucx across), each
#     verified, with the per-pair choice in the JSON and the text; a bad
#     value is refused.
# 11. low latency with quantized wire formats (fp8, nvfp4): verified.
# 12. --cuda-graph refused off the GPU executor's low latency.
set -u

BENCH=${EPX_BENCH:-./bench/epx-bench}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/epx-bench-smoke.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT INT TERM

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

run() {   # run NAME ARGS...: stdout in $tmp/NAME.out, stderr shown on failure
    name=$1
    shift
    "$BENCH" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"
    rc=$?
    if [ $rc -ne 0 ]; then
        cat "$tmp/$name.err" >&2
        fail "$name: epx-bench $* exited $rc"
    fi
}

small="--hidden 72 --experts 12 --topk 3 --iters 3 --warmup 1"

# 1. verified JSON run
run json --ranks 3 --tokens 40 $small --json
grep -q '"verified": true' "$tmp/json.out" || fail "json: not verified"
grep -q '"impl": "epx"' "$tmp/json.out" || fail "json: no epx result"
grep -q '"impl": "memcpy-limit"' "$tmp/json.out" || fail "json: no memcpy-limit"
if grep -q '"launcher": "mpirun"' "$tmp/json.out"; then
    grep -q '"impl": "mpi"' "$tmp/json.out" || fail "json: no mpi result"
    grep -q '"skipped"' "$tmp/json.out" && fail "json: mpi skipped under mpirun"
fi
if command -v python3 >/dev/null 2>&1; then
    python3 - "$tmp/json.out" <<'EOF' || fail "json: structure"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["verified"] is True
c = d["config"]
assert c["ranks"] == 3 and c["tokens_per_rank"] == [40, 40, 40], c
assert c["hidden"] == 72 and c["experts"] == 12 and c["topk"] == 3, c
impls = {r["impl"]: r for r in d["results"]}
for name, r in impls.items():
    if "skipped" in r:
        continue
    for ph in ("dispatch", "combine", "total"):
        assert r[ph + "_us"] > 0, (name, ph)
        assert r[ph + "_us_min"] <= r[ph + "_us"] <= r[ph + "_us_max"]
    assert r["algbw_gbps"] > 0 and r["busbw_gbps"] < r["algbw_gbps"]
    if name != "memcpy-limit":
        assert r["verified"] is True and r["checked"] > 0, r
assert "epx" in impls and "memcpy-limit" in impls
EOF
fi

# 2. expert-major, fp32, Zipf, fork launcher
run em --ranks 3 --tokens 33 $small --layout expert --align 8 --dtype fp32 \
    --routing zipf:1.2 --launcher fork
grep -q 'verified: epx' "$tmp/em.out" || fail "expert-major: not verified"

# 3. dump, replay, compare
run dump --ranks 3 --tokens 17,0,9 $small --drop 0.3 --seed 7 \
    --launcher fork --no-inplace --dump "$tmp/d1"
for f in x topk_idx topk_weights out recv_counts; do
    [ -s "$tmp/d1/rank1/$f.npy" ] || fail "dump: no rank1/$f.npy"
done
run replay --trace "$tmp/d1" --experts 12 --iters 2 --warmup 0 --inplace \
    --dump "$tmp/d2"
grep -q 'verified:.*no mismatch' "$tmp/replay.out" || fail "replay: not verified"
for r in 0 1 2; do
    for f in x topk_idx topk_weights out recv_counts; do
        cmp -s "$tmp/d1/rank$r/$f.npy" "$tmp/d2/rank$r/$f.npy" ||
            fail "replay: rank$r/$f.npy differs from the original run"
    done
done

# 3b. the same in low-latency mode
ll_files="x topk_idx topk_weights out recv_counts recv_counts_per_source"
run lldump --ranks 3 --tokens 17,0,9 $small --drop 0.3 --seed 7 --mode ll \
    --launcher fork --no-inplace --dump "$tmp/l1"
for f in $ll_files; do
    [ -s "$tmp/l1/rank1/$f.npy" ] || fail "ll dump: no rank1/$f.npy"
done
run llreplay --trace "$tmp/l1" --experts 12 --iters 2 --warmup 0 --inplace \
    --mode ll --launcher fork --dump "$tmp/l2"
grep -q 'verified:.*no mismatch' "$tmp/llreplay.out" ||
    fail "ll replay: not verified"
for r in 0 1 2; do
    for f in $ll_files; do
        cmp -s "$tmp/l1/rank$r/$f.npy" "$tmp/l2/rank$r/$f.npy" ||
            fail "ll replay: rank$r/$f.npy differs from the original run"
    done
done

# 4. errors are reported, naming what is wrong
rm "$tmp/d1/rank2/topk_weights.npy"
"$BENCH" --trace "$tmp/d1" --experts 12 --launcher fork \
    >"$tmp/bad.out" 2>"$tmp/bad.err" && fail "missing trace file accepted"
grep -q 'rank2/topk_weights.npy' "$tmp/bad.err" ||
    fail "missing trace file: message does not name it"
# A shape beyond any trace ((2^52, 0): no data bytes, but a loop per row for
# whoever walks it) is refused when the file is read.
python3 - "$tmp/d1/rank2/topk_weights.npy" <<'PY'
import sys
hdr = b"{'descr': '<f4', 'fortran_order': False, 'shape': (4503599627370496, 0), }"
hdr += b" " * (63 - (10 + len(hdr)) % 64) + b"\n"
open(sys.argv[1], "wb").write(b"\x93NUMPY\x01\x00" + len(hdr).to_bytes(2, "little") + hdr)
PY
"$BENCH" --trace "$tmp/d1" --experts 12 --launcher fork \
    >"$tmp/bad.out" 2>"$tmp/bad.err" && fail "huge trace shape accepted"
grep -q 'above 2^31 - 1' "$tmp/bad.err" ||
    { cat "$tmp/bad.err" >&2; fail "huge trace shape: message"; }
"$BENCH" --no-such-option >/dev/null 2>&1 && fail "bad option accepted"
"$BENCH" --list-settings markdown | grep -q '^| `EPX_TIMEOUT` |' ||
    fail "--list-settings markdown"

# 5. --balance
bal="--balance --ranks 8 --tokens 48 --hidden 64 --experts 16 --topk 4 --steps 8 \
    --replan-every 3 --warmup 1"
run bal $bal --launcher fork --json
run bal_em $bal --layout expert --align 4 --dtype fp32 --policy deepseek \
    --routing zipf:1.0 --json
for n in bal bal_em; do
    grep -q '"verified": true' "$tmp/$n.out" || fail "$n: not verified"
    grep -q '"balance": {' "$tmp/$n.out" || fail "$n: no balance object"
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$tmp/$n.out" <<'EOF' || fail "$n: balance figures"
import json, sys
d = json.load(open(sys.argv[1]))
b = d["balance"]
off, on = b["without"], b["with"]
assert b["slots"] == 24 and b["steps"] == 8, b
for r in (off, on):
    assert r["checked"] > 0 and r["mismatches"] == 0, r
    assert len(r["step_imbalance"]) == 8 and min(r["total_us"]) > 0, r
# the routing repeats every step: without replicas every step is the same
assert len(set(off["step_imbalance"])) == 1, off
assert on["imbalance"] < off["imbalance"], (on["imbalance"], off["imbalance"])
EOF
    fi
done

# 6. --overlap
ov="--overlap --ranks 3 --tokens 24 --hidden 64 --experts 7 --topk 3 --iters 8 \
    --warmup 1 --ffn 16"
if "$BENCH" $ov --iters 1 >"$tmp/ov0.out" 2>"$tmp/ov0.err"; then
    run ov $ov --launcher fork --json
    run ov_em $ov --layout expert --align 4 --dtype fp32 --no-inplace --json
    run ov_ll $ov --mode ll --launcher fork --json
    # the compute-thread schedule, over a quantized wire (y apart)
    run ov_th $ov --overlap-thread --dtype fp8 --launcher fork --pin --json
    for n in ov ov_em ov_ll ov_th; do
        grep -q '"verified": true' "$tmp/$n.out" || fail "$n: not verified"
        if command -v python3 >/dev/null 2>&1; then
            python3 - "$tmp/$n.out" "$n" <<'EOF' || fail "$n: overlap figures"
import json, sys
d = json.load(open(sys.argv[1]))
o = d["overlap"]
assert d["checked"] > 0 and d["mismatches"] == 0, d
assert 0 <= o["hidden_fraction"] <= 1 and o["ffn"] == 16, o
# the standard error, recomputed from the steps: blocks of 4
st = [o[k]["step_us"] for k in ("comm", "compute", "overlapped")]
hs = []
for b in range(2):
    c, p, v = (sum(x[4 * b:4 * b + 4]) / 4 for x in st)
    hs.append((c + p - v) / c)
se = abs(hs[0] - hs[1]) / 2   # sd / sqrt(2) of two values
assert o["blocks"] == 2, o
assert abs(o["hidden_fraction_se"] - se) <= 1e-4 * (1 + se), (o, se)
assert o["compute_thread"] == (sys.argv[2] == "ov_th"), o
assert o["pin"] == (sys.argv[2] == "ov_th"), o
if o["compute_thread"]:   # the decomposition of the overlapped steps
    assert o["compute_in_overlap_mean_us"] > 0, o
    assert 0 < o["comm_in_overlap_mean_us"] <= o["overlapped"]["mean_us"], o
for k in ("comm", "compute", "overlapped"):
    assert len(o[k]["step_us"]) == 8 and min(o[k]["step_us"]) > 0, o[k]
EOF
        fi
    done
else
    grep -q -- "--overlap is unavailable" "$tmp/ov0.err" ||
        { cat "$tmp/ov0.err" >&2; fail "--overlap failed"; }
    echo "note: --overlap not built (no OpenBLAS)" >&2
fi

# 7. --hierarchical
EPX_TOPO_FILE="${srcdir:-.}/tests/moe/data/cpu-2host.json"
export EPX_TOPO_FILE
run hier --ranks 4 --tokens 40 $small --hierarchical --impl epx --json
run hier_em --ranks 4 --tokens 40 $small --hierarchical --layout expert \
    --align 4 --launcher fork --json
unset EPX_TOPO_FILE
for n in hier hier_em; do
    grep -q '"verified": true' "$tmp/$n.out" || fail "$n: not verified"
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$tmp/$n.out" <<'EOF' || fail "$n: cross-domain bytes"
import json, sys
c = json.load(open(sys.argv[1]))["cross_domain"]
assert c["domains"] == 2 and c["hierarchical"], c
assert c["measured_dispatch_bytes"] == c["hier_dispatch_bytes"] > 0, c
assert c["hier_dispatch_bytes"] < c["flat_dispatch_bytes"], c
EOF
    fi
done

# 8. quantized wire formats
q="--experts 12 --topk 3 --iters 2 --warmup 1 --launcher fork --impl epx"
run qbf16 --ranks 3 --tokens 30 --hidden 200 $q --json
run qfp8 --ranks 3 --tokens 30 --hidden 200 $q --json --dtype fp8
run qfp4 --ranks 3 --tokens 30 --hidden 201 $q --json --dtype nvfp4 \
    --layout expert --dump "$tmp/qdump"
for f in qfp8 qfp4; do
    grep -q '"verified": true' "$tmp/$f.out" || fail "$f: not verified"
done
[ -s "$tmp/qdump/rank0/recv_scales.npy" ] &&
    [ -s "$tmp/qdump/rank0/recv_global_scale.npy" ] || fail "qfp4: scales not dumped"
if command -v python3 >/dev/null 2>&1; then
    python3 - "$tmp/qbf16.out" "$tmp/qfp8.out" "$tmp/qfp4.out" <<'EOF' || fail "quantized bytes"
import json, sys
b, f8, f4 = (json.load(open(p))["config"] for p in sys.argv[1:])
assert f8["wire"] == "fp8" and f8["wire_bytes_per_token_row"] == 200 + 4 * 2, f8
assert f4["wire"] == "nvfp4" and f4["wire_bytes_per_token_row"] == 101 + 13 + 4, f4
r = f8["dispatch_bytes_put_per_rank"] / b["dispatch_bytes_put_per_rank"]
assert 0.5 < r < 0.6, r   # 208 of 400 bytes a row, plus the same metadata
EOF
fi

# 9. low latency: a token sweep (each count verified), and a run whose
#    every checked iteration drops rows is not called verified
run sweep --ranks 3 $small --mode ll --ll-buffers 3 --tokens-sweep 0,3,16 \
    --launcher fork --json
if command -v python3 >/dev/null 2>&1; then
    python3 - "$tmp/sweep.out" <<'EOF' || fail "sweep: JSON"
import json, sys
d = json.load(open(sys.argv[1]))
assert [p["tokens"] for p in d] == [0, 3, 16], d
for p in d:
    assert p["ran"] and p["mode"] == "ll" and p["mismatches"] == 0, p
    assert p["total_us_p99"] >= p["total_us"] > 0, p
assert d[2]["checked"] > 0, d
EOF
fi
run lldrop --ranks 3 $small --mode ll --ll-capacity 1 --ll-drop --tokens 24 \
    --routing zipf:3 --impl epx --launcher fork --json
grep -q '"verified": false' "$tmp/lldrop.out" ||
    fail "lldrop: called verified with every checked iteration dropping rows"
grep -q 'verified: nothing' "$tmp/lldrop.err" ||
    fail "lldrop: the verdict does not say nothing was verified"

# 10. --transport
tl_check() {   # NAME RANKS SHM_PAIRS UCX_PAIRS "SUMMARY|SUMMARY|...": JSON
    grep -q '"verified": true' "$tmp/$1.out" || fail "$1: not verified"
    command -v python3 >/dev/null 2>&1 || return 0
    python3 - "$tmp/$1.out" "$2" "$3" "$4" "$5" <<'EOF' || fail "$1: transports"
import json, sys
t = json.load(open(sys.argv[1]))["transports"]
R, shm, ucx = (int(v) for v in sys.argv[2:5])
assert t["pairs"] == {"shm": shm, "ucx": ucx}, t
assert t["per_rank"] == sys.argv[5].split("|"), t
EOF
}
run tl_shm --ranks 2 --tokens 24 $small --transport shm --launcher fork --json
tl_check tl_shm 2 4 0 "shm to 0-1|shm to 0-1"
"$BENCH" --ranks 2 --transport udp $small >/dev/null 2>"$tmp/tl_bad.err" &&
    fail "--transport udp accepted"
grep -q -- "--transport wants auto, shm or ucx" "$tmp/tl_bad.err" ||
    fail "--transport udp: no message"
if "$BENCH" --ranks 2 --tokens 24 $small --transport ucx --launcher fork \
       --json >"$tmp/tl_ucx2.out" 2>"$tmp/tl_ucx2.err"; then
    tl_check tl_ucx2 2 0 4 "ucx to 0-1|ucx to 0-1"
    run tl_ucx4 --ranks 4 --tokens 24 $small --transport ucx
    grep -q 'transports (EPX_TRANSPORTS=ucx): pairs (rank, peer) incl. self: shm 0, ucx 16' \
        "$tmp/tl_ucx4.out" || fail "tl_ucx4: pair counts"
    grep -q '^  rank 3: ucx to 0-3$' "$tmp/tl_ucx4.out" || fail "tl_ucx4: rank 3"
    grep -q 'verified: epx' "$tmp/tl_ucx4.out" || fail "tl_ucx4: not verified"
    EPX_TOPO_FILE="${srcdir:-.}/tests/moe/data/cpu-2host.json"
    export EPX_TOPO_FILE
    run tl_auto --ranks 4 --tokens 24 $small --transport auto \
        --launcher fork --json
    unset EPX_TOPO_FILE
    tl_check tl_auto 4 8 8 "shm to 0-1, ucx to 2-3|shm to 0-1, ucx to 2-3|shm to 2-3, ucx to 0-1|shm to 2-3, ucx to 0-1"
else
    grep -q "ucx module" "$tmp/tl_ucx2.err" ||
        { cat "$tmp/tl_ucx2.err" >&2; fail "--transport ucx failed"; }
    echo "note: --transport ucx not checked (UCX not built)" >&2
fi

# 11. low latency with quantized wire formats (and the MPI baseline, which
#     moves bf16): verified, bytes put in the ratio of the row sizes
run llbf16 --ranks 3 --tokens 20 --hidden 200 $q --mode ll --json
run llfp8 --ranks 3 --tokens 20 --hidden 200 $q --mode ll --json --dtype fp8
run llfp4 --ranks 3 --tokens 20 --hidden 201 --experts 12 --topk 3 --iters 2 \
    --warmup 1 --launcher fork --mode ll --json --dtype nvfp4
for f in llfp8 llfp4; do
    grep -q '"verified": true' "$tmp/$f.out" || fail "$f: not verified"
done
if command -v python3 >/dev/null 2>&1; then
    python3 - "$tmp/llbf16.out" "$tmp/llfp8.out" <<'EOF' || fail "ll quantized bytes"
import json, sys
b, f8 = (json.load(open(p))["config"] for p in sys.argv[1:])
assert f8["mode"] == "ll" and f8["wire"] == "fp8", f8
r = f8["dispatch_bytes_put_per_rank"] / b["dispatch_bytes_put_per_rank"]
assert 0.5 < r < 0.6, r   # 208 of 400 bytes a row, plus the same metadata
assert f8["combine_bytes_put_per_rank"] > 0, f8   # bf16 partials pushed
EOF
fi

# 12. --cuda-graph is for the GPU executor's low latency only: refused
#     (exit 2, saying why) on the host and in throughput mode
for extra in "--mode ll" "--device cuda"; do
    $BENCH --ranks 2 --tokens 4 --cuda-graph $extra >"$tmp/graph.out" 2>&1
    rc=$?
    [ $rc -eq 2 ] && grep -q -- "--cuda-graph goes with --device cuda --mode ll" \
        "$tmp/graph.out" ||
        { cat "$tmp/graph.out" >&2; fail "--cuda-graph $extra: exit $rc"; }
done
exit 0
