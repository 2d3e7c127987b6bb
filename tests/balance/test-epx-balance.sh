#!/bin/sh
# epx-balance's command line (run by `make check` from the build directory):
#  1. the published DeepSeek EPLB example as a JSON loads file, deepseek
#     policy, --json: EPLB's placement, and the JSON agrees with itself
#     (log2phy inverts phy2log, logcnt counts, metrics recomputed here);
#  2. the same loads as .npy (float64, float32, int32, int64; written here
#     with python3's struct module) give the same placement;
#  3. --current with the epx policy: re-planning on its own plan moves
#     nothing; the readable tables name every layer and rank;
#  4. --system hgx-h100-x16 --ranks 128: 16 domains; cpu-host: one; test
#     descriptions whose domains interleave or differ in size: refused;
#  5. bad inputs exit 1 and bad command lines exit 2, with a message naming
#     the problem;
#  6. --lost-ranks / --live with --current: the placement in use shrunk to
#     the live ranks, the lost experts and the plan checked against a
#     shrink and metrics computed here (hand-made and planned placements,
#     both policies, a budget, the tables, domains from a system
#     description), and their command-line errors.
# EPX_BALANCE names the binary (default ./src/balance/epx-balance).  Needs
# python3 (standard library only); skipped without it.
set -u

here=$(cd "$(dirname "$0")" && pwd)
top=${srcdir:-$here/../..}
top=$(cd "$top" && pwd)
BAL=${EPX_BALANCE:-./src/balance/epx-balance}
EPX_SYSTEMS_DIR=$top/topology/systems
export EPX_SYSTEMS_DIR
data=$top/tests/balance/data

command -v python3 >/dev/null 2>&1 || { echo "SKIP: no python3"; exit 77; }

CLI=$BAL
CLI_NAME=epx-balance
. "$top/tests/common/cli.sh"

eplb="--slots 16 --groups 4 --domains 2 --ranks 8"

# check_eplb NAME: NAME's JSON holds EPLB's published placement, and is
# consistent in itself.
check_eplb() {
    python3 - "$tmp/$1.out" "$data/eplb-example.json" <<'EOF' || fail "$1: JSON"
import json, sys
d = json.load(open(sys.argv[1]))
load = json.load(open(sys.argv[2]))
want = [[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
        [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]]
assert d["phy2log"] == want, d["phy2log"]
c = d["config"]
assert (c["layers"], c["experts"], c["slots"], c["ranks"], c["groups"],
        c["domains"], c["policy"]) == (2, 12, 16, 8, 4, 2, "deepseek"), c
R, S, E = 8, 16, 12
per = S // R
def metrics(ranks):
    mean = sum(ranks) / len(ranks)
    return mean, max(ranks)
tot_mean = tot_max = 0.0
for l, p2l in enumerate(d["phy2log"]):
    cnt = [p2l.count(e) for e in range(E)]
    assert d["logcnt"][l] == cnt, (d["logcnt"][l], cnt)
    for e in range(E):
        slots = d["log2phy"][l][e]
        assert sorted(slots) == [s for s in range(S) if p2l[s] == e], (l, e)
    ranks = [sum(load[l][p2l[s]] / cnt[p2l[s]]
                 for s in range(r * per, (r + 1) * per)) for r in range(R)]
    mean, mx = metrics(ranks)
    assert abs(d["layer_balancedness"][l] - mean / mx) < 1e-12
    assert abs(d["layer_imbalance"][l] - (mx - mean) / mean) < 1e-12
    tot_mean += mean
    tot_max += mx
    # before: experts in contiguous blocks of E / R (12 / 8: the moe
    # layer's rule), whole; only the bounds are checked here
    b = d["before"]["layer_balancedness"][l]
    assert 0 < b < d["layer_balancedness"][l], (b, d["layer_balancedness"])
assert abs(d["balancedness"] - tot_mean / tot_max) < 1e-12
assert abs(d["imbalance"] - (tot_max - tot_mean) / tot_mean) < 1e-12
assert d["before"]["balancedness"] < d["balancedness"]
EOF
}

# 1. JSON loads
expect 0 json --loads "$data/eplb-example.json" $eplb --policy deepseek --json &&
    check_eplb json

# 2. .npy loads, four dtypes
for t in f8 f4 i4 i8; do
    python3 - "$data/eplb-example.json" "$tmp/l-$t.npy" "$t" <<'EOF' || fail "npy $t: write"
import json, struct, sys
rows = json.load(open(sys.argv[1]))
t = sys.argv[3]
fmt = {"f8": "d", "f4": "f", "i4": "i", "i8": "q"}[t]
hdr = "{'descr': '<%s', 'fortran_order': False, 'shape': (%d, %d), }" % (
    t, len(rows), len(rows[0]))
hdr += " " * ((64 - (10 + len(hdr) + 1) % 64) % 64) + "\n"
with open(sys.argv[2], "wb") as f:
    f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr.encode())
    for r in rows:
        f.write(struct.pack("<%d%s" % (len(r), fmt), *r))
EOF
    expect 0 "npy-$t" --loads "$tmp/l-$t.npy" $eplb --policy deepseek --json &&
        check_eplb "npy-$t"
done

# 3. --current: the epx plan re-planned on itself stays put; the tables
expect 0 epx --loads "$data/eplb-example.json" $eplb --json &&
    python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["phy2log"]))' \
        "$tmp/epx.out" >"$tmp/current.json" &&
    expect 0 keep --loads "$data/eplb-example.json" $eplb --current "$tmp/current.json" --json &&
    python3 - "$tmp/current.json" "$tmp/keep.out" <<'EOF' || fail "keep in place"
import json, sys
cur = json.load(open(sys.argv[1]))
d = json.load(open(sys.argv[2]))
assert d["phy2log"] == cur, (d["phy2log"], cur)
assert d["config"]["current"] and d["config"]["policy"] == "epx"
EOF
# 3b. budgeted re-planning from --current after the loads changed: at most
# the budget of slots differ from the placement in use (counted here), the
# reported bytes are moves x bytes per slot, and no layer gets worse.
python3 - "$data/eplb-example.json" "$tmp/drift.json" <<'EOF' || fail "drift loads"
import json, sys
load = json.load(open(sys.argv[1]))
json.dump([list(reversed(l)) for l in load], open(sys.argv[2], "w"))
EOF
for b in "--max-moves 3" "--max-bytes 2500 --bytes-per-slot 1000"; do
    name=budget-$(echo "$b" | cut -c3-9)
    expect 0 "$name" --loads "$tmp/drift.json" $eplb --current "$tmp/current.json" $b --json &&
        python3 - "$tmp/current.json" "$tmp/$name.out" "$tmp/drift.json" "$b" <<'EOF' || fail "$name"
import json, sys
cur = json.load(open(sys.argv[1]))
d = json.load(open(sys.argv[2]))
load = json.load(open(sys.argv[3]))
budget = 3 if "moves" in sys.argv[4] else 2
moves = sum(a != b for x, y in zip(cur, d["phy2log"]) for a, b in zip(x, y))
m = d["moved"]
assert m["moves"] == moves <= budget, (m, moves)
assert m["bytes"] == (moves * 1000 if budget == 2 else 0), m
def maxload(p, l):
    cnt = {e: p.count(e) for e in p}
    return max(sum(l[e] / cnt[e] for e in p[r * 2:r * 2 + 2]) for r in range(8))
for p0, p1, l in zip(cur, d["phy2log"], load):
    assert maxload(p1, l) <= maxload(p0, l) + 1e-9
assert abs(m["max_after"] - sum(maxload(p, l) for p, l in zip(d["phy2log"], load))) < 1e-6
assert m["max_after"] < m["max_before"], m
EOF
done
expect 2 budget-nocur --loads "$data/eplb-example.json" $eplb --max-moves 3 &&
    err_has budget-nocur "need --current"
expect 2 budget-nobps --loads "$data/eplb-example.json" $eplb --current "$tmp/current.json" \
        --max-bytes 100 && err_has budget-nobps "needs --bytes-per-slot"
expect 2 budget-neg --loads "$data/eplb-example.json" $eplb --current "$tmp/current.json" \
        --max-moves -1 && err_has budget-neg "--max-moves '-1'"

if expect 0 table --loads "$data/eplb-example.json" $eplb --policy deepseek; then
    for l in 0 1; do
        grep -q "^layer $l: balancedness " "$tmp/table.out" || fail "table: no layer $l"
    done
    [ "$(grep -c '^ *[0-9][0-9]* *[01] *[0-9.][0-9.]*  *[0-9]' "$tmp/table.out")" -eq 16 ] ||
        fail "table: not 8 rank rows per layer"
    grep -q '^ *rank  *domain  *load  *experts' "$tmp/table.out" || fail "table: no header"
    grep -q "^ *0 *0 *121.50  5 6$" "$tmp/table.out" || fail "table: rank 0 of layer 0"
    grep -q "replicated: expert 10 (load 183) x2, expert 5 (load 165) x2" "$tmp/table.out" ||
        fail "table: replicated experts of layer 0"
fi

# 4. domains from a system description
if expect 0 sys --loads "$data/eplb-example.json" --slots 256 --ranks 128 \
        --system hgx-h100-x16 --groups 4 --json; then
    python3 - "$tmp/sys.out" <<'EOF' || fail "system: JSON"
import json, sys
d = json.load(open(sys.argv[1]))
c = d["config"]
assert c["domains"] == 16 and c["system"] == "hgx-h100-x16", c
assert all(len(p) == 256 for p in d["phy2log"])
assert d["balancedness"] > d["before"]["balancedness"]
EOF
fi
expect 1 sysbad --loads "$data/eplb-example.json" --slots 16 --ranks 8 --system no-such-system
expect 1 interleaved --loads "$data/eplb-example.json" --slots 16 --ranks 4 \
        --system "$data/interleaved-domains.json" &&
    err_has interleaved "ranks of domain 0 are not contiguous (rank 2 comes back to it)"
expect 1 uneven --loads "$data/eplb-example.json" --slots 16 --ranks 4 \
        --system "$data/uneven-domains.json" &&
    err_has uneven "3 ranks in one domain, 1 in the last"
expect 0 cpuhost --loads "$data/eplb-example.json" --slots 16 --ranks 4 --system cpu-host --json &&
    python3 -c 'import json,sys; assert json.load(open(sys.argv[1]))["config"]["domains"] == 1' \
        "$tmp/cpuhost.out" || fail "cpu-host: not one domain"
expect 2 sysdom --loads "$data/eplb-example.json" --slots 16 --ranks 8 --system hgx-h100-x16 --domains 2 &&
    err_has sysdom "--domains and --system"

# 6. elastic expert parallelism: --lost-ranks / --live shrink --current to
# the live ranks.  check_elastic NAME CURRENT LOADS R0 DEAD checks the JSON
# against a shrink and metrics computed here: the placement in use is the
# live ranks' slots in order, the lost experts are those in none of them,
# the plan places no lost expert and every other one, before/after
# metrics drop the lost experts' load.
check_elastic() {
    python3 - "$tmp/$1.out" "$2" "$3" "$4" "$5" <<'EOF' || fail "$1: elastic JSON"
import json, sys
d = json.load(open(sys.argv[1]))
cur = json.load(open(sys.argv[2]))
load = json.load(open(sys.argv[3]))
R0 = int(sys.argv[4])
dead = [int(r) for r in sys.argv[5].split(",")] if sys.argv[5] else []
c = d["config"]
S0 = len(cur[0]); spr = S0 // R0
live = [r for r in range(R0) if r not in dead]
R, S, E = len(live), len(live) * spr, len(load[0])
assert (c["ranks"], c["slots"], c["ranks_before"], c["slots_before"]) == (R, S, R0, S0), c
assert c["live"] == live and c["lost_ranks"] == dead, c
shr = [sum((p[r * spr:(r + 1) * spr] for r in live), []) for p in cur]
assert d["shrunk"] == shr, (d["shrunk"], shr)
lost = [[e for e in range(E) if e not in p] for p in shr]
assert d["lost"] == lost, (d["lost"], lost)
assert d["num_lost"] == sum(map(len, lost))
def metrics(p, l):
    cnt = {e: p.count(e) for e in p}
    ranks = [sum(l[e] / cnt[e] for e in p[r * spr:(r + 1) * spr]) for r in range(R)]
    return sum(ranks) / R, max(ranks)
sm = {"after": [0, 0], "before": [0, 0]}
for l, (p, ls, ld) in enumerate(zip(d["phy2log"], lost, load)):
    assert len(p) == S
    assert not set(p) & set(ls), (l, p, ls)
    assert set(p) == set(range(E)) - set(ls), (l, p, ls)
    for e in range(E):
        assert d["logcnt"][l][e] == p.count(e)
        assert sorted(d["log2phy"][l][e]) == [s for s in range(S) if p[s] == e]
    for key, q, lb in (("after", p, d["layer_balancedness"][l]),
                       ("before", shr[l], d["before"]["layer_balancedness"][l])):
        mean, mx = metrics(q, ld)
        assert abs(lb - mean / mx) < 1e-12, (key, l, lb, mean / mx)
        sm[key][0] += mean
        sm[key][1] += mx
    if c["policy"] == "epx" and "moved" in d:   # never worse than in use
        assert metrics(p, ld)[1] <= metrics(shr[l], ld)[1] + 1e-9
assert abs(d["balancedness"] - sm["after"][0] / sm["after"][1]) < 1e-12
assert abs(d["before"]["balancedness"] - sm["before"][0] / sm["before"][1]) < 1e-12
moves = sum(a != b for x, y in zip(shr, d["phy2log"]) for a, b in zip(x, y))
assert d["moved"]["moves"] == moves, (d["moved"], moves)
EOF
}
# A hand-made placement of 12 experts on 8 ranks x 2: ranks 6 and 7 hold
# second replicas of ranks 0 and 1, so losing 7 loses nothing, losing 5
# loses experts 10 and 11, losing 2 and 5 loses 4, 5, 10 and 11.
printf '[[0,1,2,3,4,5,6,7,8,9,10,11,0,1,2,3],[0,1,2,3,4,5,6,7,8,9,10,11,0,1,2,3]]\n' \
    >"$tmp/hand.json"
ecur="--slots 16 --ranks 8 --groups 4"
for c in "7:" "5:10,11" "2,5:4,5,10,11"; do
    dead=${c%%:*}
    gone=${c#*:}
    name=lost-$(echo "$dead" | tr , _)
    expect 0 "$name" --loads "$data/eplb-example.json" $ecur --current "$tmp/hand.json" \
            --lost-ranks "$dead" --json &&
        check_elastic "$name" "$tmp/hand.json" "$data/eplb-example.json" 8 "$dead" &&
        python3 - "$tmp/$name.out" "$gone" <<'EOF' || fail "$name: lost experts"
import json, sys
d = json.load(open(sys.argv[1]))
want = [int(e) for e in sys.argv[2].split(",")] if sys.argv[2] else []
assert d["lost"] == [want, want], (d["lost"], want)
EOF
done
# --live names the survivors: the same plan as --lost-ranks of the others.
expect 0 live-25 --loads "$data/eplb-example.json" $ecur --current "$tmp/hand.json" \
        --live 0-1,3-4,6-7 --json &&
    python3 - "$tmp/live-25.out" "$tmp/lost-2_5.out" <<'EOF' || fail "live: differs from --lost-ranks"
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
assert a["config"]["live"] == [0, 1, 3, 4, 6, 7] and a["config"]["lost_ranks"] == [2, 5]
assert a["phy2log"] == b["phy2log"] and a["lost"] == b["lost"], (a, b)
EOF
# The planner's own placement, two ranks lost (one per domain), both
# policies and a budget; the tables name the lost experts and old ranks.
for pol in epx deepseek; do
    expect 0 "el-$pol" --loads "$data/eplb-example.json" $eplb --current "$tmp/current.json" \
            --lost-ranks 3,7 --policy $pol --json &&
        check_elastic "el-$pol" "$tmp/current.json" "$data/eplb-example.json" 8 3,7
done
err_has el-deepseek "--current only gives the experts lost"
expect 0 el-budget --loads "$data/eplb-example.json" $eplb --current "$tmp/current.json" \
        --lost-ranks 3,7 --max-moves 2 --json &&
    check_elastic el-budget "$tmp/current.json" "$data/eplb-example.json" 8 3,7 &&
    python3 -c 'import json,sys; assert 0 < json.load(open(sys.argv[1]))["moved"]["moves"] <= 2' \
        "$tmp/el-budget.out" || fail "el-budget: not 1 or 2 moves"
if expect 0 el-table --loads "$data/eplb-example.json" $ecur --current "$tmp/hand.json" \
        --lost-ranks 2,5; then
    grep -q "^lost ranks 2, 5 of 8: the 6 live ranks" "$tmp/el-table.out" ||
        fail "el-table: no lost ranks line"
    [ "$(grep -c '^  lost: expert 4 (load [0-9]*), expert 5 (load [0-9]*), expert 10 (load [0-9]*), expert 11 (load [0-9]*)$' \
        "$tmp/el-table.out")" -eq 2 ] || fail "el-table: lost experts of each layer"
    grep -q '^ *rank  *was  *domain  *load  *experts' "$tmp/el-table.out" || fail "el-table: header"
    grep -q '^ *2  *3  *0  *[0-9.]*  ' "$tmp/el-table.out" || fail "el-table: rank 2 was 3"
    grep -q '^ *5  *7  *0  *[0-9.]*  ' "$tmp/el-table.out" || fail "el-table: rank 5 was 7"
fi
# On a system description the live ranks keep their domains: losing a
# whole host leaves 15 domains; losing one rank leaves unequal ones.
python3 - "$tmp/cur128.json" <<'EOF' || fail "cur128: write"
import json, sys
json.dump([[s % 12 for s in range(256)] for _ in range(2)], open(sys.argv[1], "w"))
EOF
if expect 0 el-sys --loads "$data/eplb-example.json" --slots 256 --ranks 128 \
        --system hgx-h100-x16 --groups 4 --current "$tmp/cur128.json" --lost-ranks 8-15 --json; then
    python3 - "$tmp/el-sys.out" <<'EOF' || fail "el-sys: JSON"
import json, sys
d = json.load(open(sys.argv[1]))
c = d["config"]
assert (c["domains"], c["ranks"], c["slots"]) == (15, 120, 240), c
assert d["lost"] == [[], []]
EOF
fi
expect 1 el-sys-uneven --loads "$data/eplb-example.json" --slots 256 --ranks 128 \
        --system hgx-h100-x16 --current "$tmp/cur128.json" --lost-ranks 5 &&
    err_has el-sys-uneven "7 live ranks in one domain, 8 in"
expect 1 el-domains --loads "$data/eplb-example.json" $eplb --current "$tmp/current.json" \
        --lost-ranks 3 && err_has el-domains "num_domains 2 does not divide num_ranks 7"
expect 2 el-nocur --loads "$data/eplb-example.json" $eplb --lost-ranks 3 &&
    err_has el-nocur "need --current"
expect 2 el-both --loads "$data/eplb-example.json" $eplb --current "$tmp/current.json" \
        --lost-ranks 3 --live 0-2 && err_has el-both "--live and --lost-ranks"
expect 2 el-range --loads "$data/eplb-example.json" $eplb --current "$tmp/current.json" \
        --lost-ranks 6-8 && err_has el-range "range 6-8 is not within ranks 0-7"
expect 2 el-syntax --loads "$data/eplb-example.json" $eplb --current "$tmp/current.json" \
        --live 0-2,x && err_has el-syntax "--live '0-2,x': expected ranks and ranges"
expect 2 el-all --loads "$data/eplb-example.json" $eplb --current "$tmp/current.json" \
        --lost-ranks 0-7 && err_has el-all "no rank of --ranks is left alive"

# 5. bad inputs (exit 1) and command lines (exit 2)
printf '[[1,2,3],[4,5]]\n' >"$tmp/ragged.json"
printf '[[1,2,3],[4,-5,6]]\n' >"$tmp/neg.json"
printf '[[1,2,3],[4,"x",6]]\n' >"$tmp/str.json"
printf '[[1,2,3],[4,5,6]\n' >"$tmp/broken.json"
printf '\223NUMPY\001\000' >"$tmp/trunc.npy"
sed 's/<f8/<f2/' "$tmp/l-f8.npy" >"$tmp/f2.npy"
sed 's/False/True /' "$tmp/l-f8.npy" >"$tmp/fortran.npy"
head -c 200 "$tmp/l-f8.npy" >"$tmp/short.npy"
# A header claiming 2e9 float64 values (16 GB) over 16 bytes of data.
python3 - "$tmp/huge.npy" <<'EOF' || fail "huge: write"
import sys
h = "{'descr': '<f8', 'fortran_order': False, 'shape': (40000, 50000), }"
h += " " * (63 - (10 + len(h)) % 64) + "\n"
open(sys.argv[1], "wb").write(b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little")
                              + h.encode() + b"\0" * 16)
EOF

expect 1 missing --loads "$tmp/nope.json" $eplb && err_has missing "$tmp/nope.json: No such file"
expect 1 ragged --loads "$tmp/ragged.json" $eplb && err_has ragged "ragged: [1] has 2 entries, [0] has 3"
expect 1 neg --loads "$tmp/neg.json" $eplb && err_has neg "load [1][1] = -5"
expect 1 str --loads "$tmp/str.json" $eplb && err_has str "[1][1] is not a number"
expect 1 broken --loads "$tmp/broken.json" $eplb && err_has broken "$tmp/broken.json:"
expect 1 trunc --loads "$tmp/trunc.npy" $eplb && err_has trunc "truncated .npy"
expect 1 f2 --loads "$tmp/f2.npy" $eplb && err_has f2 "dtype '<f2' not supported"
expect 1 fortran --loads "$tmp/fortran.npy" $eplb && err_has fortran "Fortran order"
expect 1 short --loads "$tmp/short.npy" $eplb && err_has short "only"
# Refused from the file size, before allocating (under a 1 GiB address
# space limit: allocating first fails with "out of memory"; not under
# AddressSanitizer, which reserves terabytes of address space).
vlimit=1048576
grep -q '^CFLAGS = .*-fsanitize=[a-z,]*address' Makefile 2>/dev/null && vlimit=unlimited
(ulimit -v $vlimit && "$BAL" --loads "$tmp/huge.npy" $eplb) >"$tmp/huge.out" 2>"$tmp/huge.err"
[ $? -eq 1 ] || fail "huge: exit status"
err_has huge "holds only 2 values for shape (40000, 50000)"
expect 1 notmul --loads "$data/eplb-example.json" --slots 15 --ranks 8 &&
    err_has notmul "not a multiple of"
expect 1 groups --loads "$data/eplb-example.json" --slots 16 --ranks 8 --groups 5
printf '[[0,1]]\n' >"$tmp/cur-shape.json"
expect 1 curshape --loads "$data/eplb-example.json" $eplb --current "$tmp/cur-shape.json" &&
    err_has curshape "expected [layers = 2][slots = 16]"
expect 2 unknown --loads "$data/eplb-example.json" $eplb --frobnicate && err_has unknown "unknown option '--frobnicate'"
expect 2 noloads $eplb && err_has noloads "--loads is required"
expect 2 noslots --loads "$data/eplb-example.json" --ranks 8 && err_has noslots "--slots is required"
expect 2 badint --loads "$data/eplb-example.json" --slots 16x --ranks 8 && err_has badint "--slots '16x'"
expect 2 policy --loads "$data/eplb-example.json" $eplb --policy best && err_has policy "unknown policy 'best'"
expect 0 help --help && grep -q '^Usage: epx-balance' "$tmp/help.out" || fail "help: no usage"

if [ $failed -ne 0 ]; then
    echo "$failed check(s) failed" >&2
    exit 1
fi
echo "ok: epx-balance command line"
exit 0
