#!/bin/sh
# The multi-rank dispatch/combine tests over every transport mix: shm only,
# UCX for every pair (UCX's own choice of transports, then UCX_TLS=tcp:
# loopback sockets), and two emulated hosts (tests/core/data/two-hosts.json:
# shm inside each half, UCX over tcp between them).  Each run must pass its
# checks against the reference, must really use the transports it names
# (per-pair choice from the logs), and must produce the same digests of
# every rank's received rows and combine outputs as the shm-only run, bit
# for bit (EPX_TEST_DIGEST, one seed for all runs).
#
#   tests/moe/test-transports.sh [TEST...]   (default: test_dispatch test_edge)
# Exit 0 pass, 1 fail, 77 skipped (built without UCX).
top=$(cd "$(dirname "$0")/../.." && pwd)
: "${top_builddir:=.}"
bld=$(cd "$top_builddir" && pwd)
CLI_NAME=test-transports
. "$top/tests/common/cli.sh"

grep -q '^#define EPX_HAVE_UCX 1' "$bld/config.h" 2>/dev/null || {
    echo "built without UCX: skipped"
    exit 77
}
tests=${*:-"test_dispatch test_edge"}
seed=${EPX_TEST_SEED:-0x$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')}
echo "seed $seed (EPX_TEST_SEED=$seed reproduces this run)"
two=$top/tests/core/data/two-hosts.json

# run NAME WANT-IN-LOG ENV...: every test under ENV, digests in $tmp/NAME.
run() {
    name=$1 want=$2
    shift 2
    for t in $tests; do
        env EPX_TEST_SEED="$seed" EPX_TEST_DIGEST="$tmp/$name.raw" \
            EPX_LOG=info EPX_LOG_SUBSYS=core "$@" \
            "$bld/tests/moe/$t" >"$tmp/$name-$t.log" 2>&1 || {
            tail -30 "$tmp/$name-$t.log" >&2
            fail "$name: $t failed"
        }
        grep -q -- "$want" "$tmp/$name-$t.log" ||
            fail "$name: $t: no communicator with '$want' in the log"
    done
    sort "$tmp/$name.raw" >"$tmp/$name.sum" 2>/dev/null
    [ -s "$tmp/$name.sum" ] || fail "$name: no digest written"
}

run shm "rank 1: shm to 0-1" EPX_TRANSPORTS=shm
run ucx "rank 1: ucx to 0-1" EPX_TRANSPORTS=ucx
run ucx-tcp "rank 1: ucx to 0-1" EPX_TRANSPORTS=ucx UCX_TLS=tcp
run mixed "rank 0: shm to 0-1, ucx to 2" EPX_TOPO_FILE="$two" UCX_TLS=tcp
run mixed-deny "rank 1: ucx to 0-2" EPX_TOPO_FILE="$two" EPX_TRANSPORTS=^shm

for n in ucx ucx-tcp mixed mixed-deny; do
    cmp -s "$tmp/shm.sum" "$tmp/$n.sum" || {
        diff "$tmp/shm.sum" "$tmp/$n.sum" | head -10 >&2
        fail "$n: digests differ from the shm-only run"
    }
done
echo "$(wc -l <"$tmp/shm.sum") digests compared over 5 transport mixes"
[ "$failed" -eq 0 ] || exit 1
exit 0
