#!/bin/sh
# Determinism across transports: the multi-rank dispatch/combine tests over
# every transport mix — shm only, UCX for every pair (UCX's own choice of
# transports, then UCX_TLS=tcp: loopback sockets), and two emulated hosts
# (tests/core/data/two-hosts.json: shm inside each half, UCX over tcp
# between them; the same with shm denied; and, with root, the two halves
# in two network namespaces joined by a veth pair).  Each run must pass its
# checks against the reference, must really use the transports it names
# (per-pair choice from the logs), and must write the same digests of
# every rank's received rows (data, scales, row scales) and combine
# outputs as the baseline run, bit for bit, with no error printed by UCX (EPX_TEST_DIGEST, one seed for
# all runs).  A missing or empty digest fails.
#
# Default set (EPX_TEST_QUICK=1, sizes for a shared 2-core host):
#   test_dispatch, test_edge           throughput mode, native wire
#   test_wire:matrix_R3_*, :..._R8_em  every quantized wire format
#   test_hier:wire_2x2, :two_by_2      EPX_MOE_HIERARCHICAL (2 domains x 2)
#   test_ll:ll_r2, test_ll:ll_r8       low-latency mode
# The baseline is the shm-only run; test_hier places its ranks on two
# emulated hosts itself and shm never crosses a domain, so it has no
# shm-only run: its baseline is the domain split (shm inside, UCX between).
#
#   tests/moe/test-transports.sh [PROGRAM[:FILTER]...]
# FILTER is a cmocka test-name pattern (EPX_TEST_FILTER).  To see the
# script fail: TT_PERTURB=MIX runs that mix with another seed (its digests
# differ), TT_DROP=MIX runs it without digests (missing).
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
set -f   # filters are patterns for the tests, not for the shell
tests=${*:-"test_dispatch test_edge test_wire:matrix_R3_* test_wire:matrix_R8_em
            test_hier:wire_2x2 test_hier:two_by_2 test_ll:ll_r2 test_ll:ll_r8"}
seed=${EPX_TEST_SEED:-0x$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')}
echo "seed $seed (EPX_TEST_SEED=$seed reproduces this run)"
two=$top/tests/core/data/two-hosts.json
mixes=

# run MIX WANT-IN-LOG ENV...: every test under ENV; the digests of test
# SPEC in $tmp/MIX-ID.sum (ID: SPEC made a file name).
run() {
    name=$1 want=$2
    shift 2
    mixes="$mixes $name"
    for spec in $tests; do
        t=${spec%%:*} filter=
        [ "$t" = "$spec" ] || filter=${spec#*:}
        id=$(printf %s "$spec" | tr -c 'A-Za-z0-9_' '_')
        [ "$name:$t" = shm:test_hier ] && continue   # see above
        s=$seed dg=$tmp/$name-$id.raw
        [ "$name" = "${TT_PERTURB:-}" ] && s=0x5eed
        [ "$name" = "${TT_DROP:-}" ] && dg=
        log=$tmp/$name-$id.log
        env EPX_TEST_SEED="$s" EPX_TEST_DIGEST="$dg" EPX_TEST_QUICK=1 \
            EPX_TEST_FILTER="$filter" EPX_LOG=info EPX_LOG_SUBSYS=core "$@" \
            "$bld/tests/moe/$t" >"$log" 2>&1 || {
            tail -30 "$log" >&2
            fail "$name: $spec failed"
        }
        grep -q -- "$want" "$log" ||
            fail "$name: $spec: no communicator with '$want' in the log"
        ! grep -q 'UCX  ERROR' "$log" || {
            grep -m3 'UCX  ERROR' "$log" >&2
            fail "$name: $spec: UCX reported errors"
        }
        sort "$tmp/$name-$id.raw" >"$tmp/$name-$id.sum" 2>/dev/null
        [ -s "$tmp/$name-$id.sum" ] || fail "$name: $spec: no digest written"
    done
}

all='0-[0-9]*$'
run shm "rank 1: shm to $all" EPX_TRANSPORTS=shm
run ucx "rank 1: ucx to $all" EPX_TRANSPORTS=ucx
run ucx-tcp "rank 1: ucx to $all" EPX_TRANSPORTS=ucx UCX_TLS=tcp
run mixed "rank 0: shm to 0[-0-9]*, ucx to " EPX_TOPO_FILE="$two" UCX_TLS=tcp
run mixed-deny "rank 1: ucx to $all" EPX_TOPO_FILE="$two" EPX_TRANSPORTS=^shm

# Two real network stacks: a namespace per emulated host joined by a veth
# pair (scripts/netns-pair.sh), each rank in its domain's namespace
# (tests/common/netns_ranks.h), UCX over tcp on the veth only.  Needs root
# and ip(8); skipped otherwise.
ns=epx-tt-$$
netns_down() { "$top/scripts/netns-pair.sh" down "$ns"; }
veth_bytes() {   # bytes namespace a sent and received on the veth
    ip -n "$ns-a" -s link show epx0 |
        awk '/RX:|TX:/ { getline; n += $1 } END { print n + 0 }'
}
if "$top/scripts/netns-pair.sh" up "$ns" 2>"$tmp/netns.err"; then
    trap 'netns_down; rm -rf "$tmp"' EXIT INT TERM
    before=$(veth_bytes)
    run netns "rank 0: shm to 0[-0-9]*, ucx to " EPX_TOPO_FILE="$two" \
        UCX_TLS=tcp UCX_NET_DEVICES=epx0 EPX_TEST_NETNS="$ns-a,$ns-b" \
        EPX_TEST_NETNS_ROOT=10.77.0.1
    crossed=$(( $(veth_bytes) - before ))
    echo "netns: $crossed bytes crossed the veth between the two namespaces"
    [ "$crossed" -gt 1000000 ] ||
        fail "netns: only $crossed bytes crossed the veth: not the network path"
    netns_down
else
    echo "netns: skipped ($(tail -1 "$tmp/netns.err"))"
fi

n=0
for spec in $tests; do
    id=$(printf %s "$spec" | tr -c 'A-Za-z0-9_' '_')
    base=shm
    [ -s "$tmp/shm-$id.sum" ] || [ "${spec%%:*}" != test_hier ] || base=mixed
    for m in $mixes; do
        [ "$m" = "$base" ] || [ ! -e "$tmp/$m-$id.sum" ] && continue
        n=$((n + 1))
        cmp -s "$tmp/$base-$id.sum" "$tmp/$m-$id.sum" || {
            diff "$tmp/$base-$id.sum" "$tmp/$m-$id.sum" | head -6 >&2
            fail "$m: $spec: digests differ from the $base run"
        }
    done
done
set +f
echo "$(cat "$tmp"/shm-*.sum "$tmp"/mixed-test_hier*.sum 2>/dev/null | wc -l)" \
     "baseline digests, $n comparisons over $(echo $mixes | wc -w) transport mixes"
[ "$failed" -eq 0 ] || exit 1
exit 0
