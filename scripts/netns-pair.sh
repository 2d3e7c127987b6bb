#!/bin/sh
# Two network namespaces joined by a veth pair: two "hosts" with their own
# network stacks on one machine, for tests and benchmarks of the network
# path (UCX over tcp).
#
#   scripts/netns-pair.sh up NAME     creates NAME-a (10.77.0.1) and
#                                     NAME-b (10.77.0.2), interface epx0 in
#                                     each, and waits until UCX sees it
#   scripts/netns-pair.sh down NAME   deletes both (no error if absent)
#
# Needs root and ip(8) (iproute2); exits 1 with the reason otherwise.  Run a
# program in one: ip netns exec NAME-a PROGRAM; with UCX, set
# UCX_TLS=tcp UCX_NET_DEVICES=epx0.
set -u

die() { echo "netns-pair: $*" >&2; exit 1; }
[ $# -eq 2 ] || die "usage: $0 up|down NAME"
ns=$2

down() { ip netns del "$ns-a" 2>/dev/null; ip netns del "$ns-b" 2>/dev/null; return 0; }

case $1 in
down) down; exit 0 ;;
up) ;;
*) die "usage: $0 up|down NAME" ;;
esac

[ "$(id -u)" -eq 0 ] || die "needs root"
command -v ip >/dev/null 2>&1 || die "ip(8) not found (iproute2)"
down
{ ip netns add "$ns-a" && ip netns add "$ns-b" &&
  ip link add epx0 netns "$ns-a" type veth peer name epx0 netns "$ns-b" &&
  ip -n "$ns-a" addr add 10.77.0.1/24 dev epx0 &&
  ip -n "$ns-b" addr add 10.77.0.2/24 dev epx0 &&
  ip -n "$ns-a" link set lo up && ip -n "$ns-a" link set epx0 up &&
  ip -n "$ns-b" link set lo up && ip -n "$ns-b" link set epx0 up; } 2>&1 |
    head -3 >&2
ip -n "$ns-b" link show epx0 >/dev/null 2>&1 ||
    { down; die "could not create the namespaces (see above)"; }

# A veth just set up is not a usable UCX device for a moment.
command -v ucx_info >/dev/null 2>&1 || { sleep 3; exit 0; }
for i in $(seq 40); do
    ready=1
    for n in "$ns-a" "$ns-b"; do
        ip netns exec "$n" ucx_info -d -t tcp 2>/dev/null |
            grep -q 'Device: epx0' || ready=0
    done
    [ "$ready" -eq 1 ] && exit 0
    sleep 0.25
done
down
die "the veth never became a UCX tcp device"
