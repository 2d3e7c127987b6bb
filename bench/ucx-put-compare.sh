#!/bin/sh
# Put bandwidth: ucx_perftest -t ucp_put_bw (server + client on loopback)
# against epx-put-bench --transport ucx, same UCX_TLS, same sizes, same
# bytes per size.  Both report MiB/s (2^20 bytes/s); ucx_perftest's
# "overall" bandwidth of its Final line is used (it includes the final
# flush, i.e. until the data is at the target); epx-put-bench's p50 of its
# own reps, each timed until the receiver answered after the last byte.
#
#   bench/ucx-put-compare.sh [--tls tcp] [--sizes 65536,1048576,...]
#                            [--bytes 268435456] [--reps 3] [--json]
#                            [--netns]
#
# Each size runs --reps times, alternating the two; best and median of
# each are reported (the machine may be shared), with the ratios
# epx / ucx_perftest of the bests and of the medians.  --tls sets UCX_TLS
# for both (default: tcp, the network path over loopback; "default"
# leaves UCX to choose).  --netns (root) runs both over two network
# namespaces joined by a veth pair (scripts/netns-pair.sh): perftest's
# server and epx's rank 1 in one, client and rank 0 in the other, UCX on
# the veth only (UCX_NET_DEVICES=epx0), i.e. through two network stacks.
# A perftest run that gives no figure is reported
# as "fail" with the reason on stderr (its output is kept in the log
# directory printed at the end).
#
# ucx_perftest's server listens on a port of its own: each run takes a
# port nobody listens on, starts the server, waits until the port is
# listening (not a fixed sleep: on a loaded machine the server can take
# seconds), then runs the client once; both under a time limit, so a
# stuck run cannot hang the script.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
bench=${EPX_PUT_BENCH:-$here/epx-put-bench}
tls=tcp
sizes=65536,262144,1048576,4194304,16777216
bytes=268435456
reps=3
json=no
netns=no
limit=${EPX_COMPARE_TIMEOUT:-300}
while [ $# -gt 0 ]; do
    case $1 in
    --tls) tls=$2; shift 2 ;;
    --sizes) sizes=$2; shift 2 ;;
    --bytes) bytes=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --json) json=yes; shift ;;
    --netns) netns=yes; shift ;;
    *) echo "usage: $0 [--tls T] [--sizes A,B] [--bytes N] [--reps N] [--json] [--netns]" >&2
       exit 2 ;;
    esac
done
command -v ucx_perftest >/dev/null || { echo "ucx_perftest not found (ucx-utils)" >&2; exit 2; }
[ -x "$bench" ] || { echo "$bench not built (make bench/epx-put-bench)" >&2; exit 2; }
if [ "$tls" = default ]; then unset UCX_TLS; else export UCX_TLS=$tls; fi
logs=$(mktemp -d "${TMPDIR:-/tmp}/ucx-put-compare.XXXXXX")

# Where each side runs: here, or in namespaces a (client, rank 0) and b.
in_a= in_b= server=127.0.0.1 root=127.0.0.1
if [ "$netns" = yes ]; then
    ns=epx-pc-$$
    "$here/../scripts/netns-pair.sh" up "$ns" || exit 2
    trap '"$here/../scripts/netns-pair.sh" down "$ns"' EXIT INT TERM
    in_a="ip netns exec $ns-a" in_b="ip netns exec $ns-b"
    server=10.77.0.2 root=10.77.0.1
    export UCX_NET_DEVICES=epx0
fi

listening() { $in_b ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

port=$((20000 + $$ % 20000))
free_port() {
    port=$((port + 1))
    while listening "$port"; do port=$((port + 1)); done
}

run_no=0
perftest() {   # SIZE ITERS -> MiB/s, or "fail"
    free_port
    run_no=$((run_no + 1))
    log=$logs/perftest-$1-$run_no
    $in_b timeout "$limit" ucx_perftest -t ucp_put_bw -s "$1" -n "$2" -p "$port" \
        >"$log.server" 2>&1 &
    srv=$!
    i=0
    while ! listening "$port" && [ "$i" -lt 300 ] && kill -0 "$srv" 2>/dev/null; do
        sleep 0.1
        i=$((i + 1))
    done
    if ! listening "$port"; then
        echo "perftest $1: the server never listened on port $port (see $log.server)" >&2
        kill "$srv" 2>/dev/null || true
        wait "$srv" 2>/dev/null || true
        echo fail
        return
    fi
    rc=0
    $in_a timeout "$limit" ucx_perftest "$server" -t ucp_put_bw -s "$1" -n "$2" \
        -p "$port" >"$log.client" 2>&1 || rc=$?
    wait "$srv" 2>/dev/null || true
    v=$(awk '$1 == "Final:" { print $7 }' "$log.client")
    if [ -z "$v" ]; then
        echo "perftest $1: client exited $rc without a Final line: $(grep -v '^[|+]' "$log.client" | tail -1)" >&2
        echo fail
        return
    fi
    echo "$v"
}
epx() {   # SIZE -> MiB/s, or "fail"
    sz=$1
    set -- --transport ucx --sizes "$sz:$sz" --bytes "$bytes" --reps 3 --json
    if [ "$netns" = yes ]; then   # the two ranks started by hand
        free_port
        export EPX_NRANKS=2 EPX_ROOT=$root:$port EPX_JOB_KEY=pc-$$-$port
        EPX_RANK=1 $in_b timeout "$limit" "$bench" "$@" \
            >"$logs/epx-$sz.r1" 2>&1 &
        r1=$!
        v=$(EPX_RANK=0 $in_a timeout "$limit" "$bench" "$@" \
                2>"$logs/epx-$sz.err" |
            awk -F'"mibps_p50": ' 'NF > 1 { split($2, a, ","); print a[1] }')
        wait "$r1" || v=
    else
        v=$("$bench" "$@" 2>"$logs/epx-$sz.err" |
            awk -F'"mibps_p50": ' 'NF > 1 { split($2, a, ","); print a[1] }')
    fi
    if [ -z "$v" ]; then
        echo "epx-put-bench $sz: no figure: $(tail -1 "$logs/epx-$sz.err")" >&2
        echo fail
        return
    fi
    echo "$v"
}
# best and median of a list of figures ("fail" entries ignored)
stats() {
    printf '%s\n' "$@" | awk '$1 != "fail" { v[n++] = $1 + 0 }
        END {
            if (n == 0) { print "fail fail"; exit }
            for (i = 0; i < n; i++) for (j = i + 1; j < n; j++)
                if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
            m = (n % 2) ? v[(n - 1) / 2] : (v[n / 2 - 1] + v[n / 2]) / 2
            printf "%.2f %.2f\n", v[n - 1], m
        }'
}
jnum() { case $1 in fail|-) echo null ;; *) echo "$1" ;; esac; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "fail" || b == "fail" || b + 0 <= 0) print "-"; else printf "%.3f", a / b }'; }

[ "$json" = yes ] || printf '# UCX_TLS=%s, %s bytes per size, %s reps (best / median)\n# %10s %12s %12s %12s %12s %7s %7s %s\n' \
    "${UCX_TLS:-(default)}" "$bytes" "$reps" bytes perf_best perf_med epx_best epx_med r_best r_med fails
first=yes
[ "$json" = no ] || printf '{"ucx_tls": "%s", "bytes_per_size": %s, "reps": %s, "results": [' \
    "${UCX_TLS:-default}" "$bytes" "$reps"
for s in $(echo "$sizes" | tr ',' ' '); do
    n=$((bytes / s))
    [ "$n" -ge 20 ] || n=20
    pv= ev= i=0 pf=0
    while [ "$i" -lt "$reps" ]; do
        p=$(perftest "$s" "$n")
        [ "$p" != fail ] || pf=$((pf + 1))
        pv="$pv $p"
        ev="$ev $(epx "$s")"
        i=$((i + 1))
    done
    # shellcheck disable=SC2086
    set -- $(stats $pv) $(stats $ev)
    rb=$(ratio "$3" "$1") rmed=$(ratio "$4" "$2")
    if [ "$json" = yes ]; then
        [ "$first" = yes ] || printf ', '
        printf '{"bytes": %s, "iters": %s, "perftest_mib_s": [%s], "epx_mib_s": [%s], "perftest_best": %s, "perftest_median": %s, "epx_best": %s, "epx_median": %s, "ratio_best": %s, "ratio_median": %s, "perftest_failures": %s}' \
            "$s" "$n" "$(echo $pv | sed 's/ /, /g; s/fail/null/g')" \
            "$(echo $ev | sed 's/ /, /g; s/fail/null/g')" "$(jnum "$1")" \
            "$(jnum "$2")" "$(jnum "$3")" "$(jnum "$4")" "$(jnum "$rb")" \
            "$(jnum "$rmed")" "$pf"
    else
        printf '  %10s %12s %12s %12s %12s %7s %7s %s\n' "$s" "$1" "$2" "$3" "$4" "$rb" "$rmed" "$pf"
    fi
    first=no
done
[ "$json" = no ] || printf ']}\n'
echo "# logs: $logs" >&2
