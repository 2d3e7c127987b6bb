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
#     the problem.
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
