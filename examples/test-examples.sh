#!/bin/sh
# The host-rank examples (make check).  The README's C example is
# examples/moe.c, word for word, and says out == x on its 8 ranks.  Every
# other program checks its own results against a reference it computes
# and exits non-zero on a difference; each runs on 1, 3 and 4 ranks (rank
# 1 sends no token, or none in some calls), prints one line ending in
# ", ok" per rank (moe_fp8: per rank and wire format), and one also runs
# as ranks started by hand (env bootstrap).  The device-rank example is
# test-examples-gpu.sh's.
set -eu
src=${srcdir:-.}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/epx-examples.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM
fail() { echo "FAIL: $*"; exit 1; }

awk '/^## The API in one example/{f=1} f&&/^```c$/{p=1;next} p&&/^```$/{exit} p' \
    "$src/README.md" > "$tmp/readme.c"
if ! cmp -s "$tmp/readme.c" "$src/examples/moe.c"; then
    echo "README.md's example and examples/moe.c differ:"
    diff "$tmp/readme.c" "$src/examples/moe.c" || true
    exit 1
fi
./examples/moe > "$tmp/out" 2>&1 || { cat "$tmp/out"; fail "examples/moe exited non-zero"; }
n=$(grep -c "out == x" "$tmp/out" || true)
[ "$n" -eq 8 ] || { cat "$tmp/out"; fail "examples/moe: want 8 ranks with out == x"; }
echo "examples/moe: 8 ranks, out == x"

# run PROGRAM RANKS LINES: exit 0 and LINES ", ok" lines per rank.
run() {
    rc=0
    "./examples/$1" "$2" > "$tmp/out" 2>&1 || rc=$?
    [ "$rc" -eq 0 ] || { cat "$tmp/out"; fail "examples/$1 $2: exit $rc"; }
    n=$(grep -c ', ok$' "$tmp/out" || true)
    [ "$n" -eq $(($2 * $3)) ] ||
        { cat "$tmp/out"; fail "examples/$1 $2: $n lines ok, want $(($2 * $3))"; }
    echo "examples/$1 on $2 ranks: ok"
}
for r in 1 3 4; do
    run moe_token_major $r 1
    run moe_ll $r 1
    run moe_fp8 $r 4
    run moe_overlap $r 1
done

# A bad rank count is an error: the launcher's reason, exit 1.
rc=0
./examples/moe_ll 0 > "$tmp/out" 2>&1 || rc=$?
[ "$rc" -eq 1 ] && grep -q "nranks" "$tmp/out" ||
    { cat "$tmp/out"; fail "moe_ll 0: want exit 1 and the reason, got $rc"; }

# Three ranks started by hand, as a launcher would (EPX_* environment).
port=$((21000 + $$ % 9000))
export EPX_NRANKS=3 EPX_ROOT=127.0.0.1:$port EPX_JOB_KEY=examples-$$
export EPX_TIMEOUT=60
EPX_RANK=1 ./examples/moe_token_major > "$tmp/r1" 2>&1 & p1=$!
EPX_RANK=2 ./examples/moe_token_major > "$tmp/r2" 2>&1 & p2=$!
rc=0
EPX_RANK=0 ./examples/moe_token_major > "$tmp/r0" 2>&1 || rc=$?
wait $p1 || rc=$?
wait $p2 || rc=$?
unset EPX_NRANKS EPX_ROOT EPX_JOB_KEY EPX_TIMEOUT
n=$(cat "$tmp/r0" "$tmp/r1" "$tmp/r2" | grep -c ', ok$' || true)
[ "$rc" -eq 0 ] && [ "$n" -eq 3 ] ||
    { cat "$tmp/r0" "$tmp/r1" "$tmp/r2"; fail "ranks by hand: exit $rc, $n ok"; }
echo "examples/moe_token_major, 3 ranks by hand (env bootstrap): ok"
