#!/bin/sh
# Put bandwidth: ucx_perftest -t ucp_put_bw (server + client on loopback)
# against epx-put-bench --transport ucx, same UCX_TLS, same sizes, same
# bytes per size.  Both report MiB/s (2^20 bytes/s); ucx_perftest's
# "overall" bandwidth of its Final line is used.
#
#   bench/ucx-put-compare.sh [--tls tcp] [--sizes 65536,1048576,...]
#                            [--bytes 536870912] [--reps 3] [--json]
#
# Each size runs --reps times, alternating the two, and the best of each
# is kept (the machine may be shared).  --tls sets UCX_TLS for both
# (default: tcp, the network path over loopback; "default" leaves UCX to
# choose).  The ratio column is epx / ucx_perftest.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
bench=${EPX_PUT_BENCH:-$here/epx-put-bench}
tls=tcp
sizes=65536,262144,1048576,4194304,16777216
bytes=536870912
reps=3
json=no
while [ $# -gt 0 ]; do
    case $1 in
    --tls) tls=$2; shift 2 ;;
    --sizes) sizes=$2; shift 2 ;;
    --bytes) bytes=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --json) json=yes; shift ;;
    *) echo "usage: $0 [--tls T] [--sizes A,B] [--bytes N] [--reps N] [--json]" >&2
       exit 2 ;;
    esac
done
command -v ucx_perftest >/dev/null || { echo "ucx_perftest not found (ucx-utils)" >&2; exit 2; }
[ -x "$bench" ] || { echo "$bench not built (make bench/epx-put-bench)" >&2; exit 2; }
if [ "$tls" = default ]; then unset UCX_TLS; else export UCX_TLS=$tls; fi

port=$((20000 + $$ % 20000))
perftest() {   # SIZE ITERS -> MiB/s
    port=$((port + 1))
    ucx_perftest -t ucp_put_bw -s "$1" -n "$2" -p "$port" >/dev/null 2>&1 &
    srv=$!
    out=
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        sleep 0.3
        out=$(ucx_perftest 127.0.0.1 -t ucp_put_bw -s "$1" -n "$2" -p "$port" 2>/dev/null) && break
    done
    wait "$srv" 2>/dev/null || true
    printf '%s\n' "$out" | awk '$1 == "Final:" { print $7 }'
}
epx() {   # SIZE -> MiB/s
    "$bench" --transport ucx --sizes "$1:$1" --bytes "$bytes" --reps 3 --json |
        awk -F'"mibps_p50": ' 'NF > 1 { split($2, a, ","); print a[1] }'
}
best() { awk -v a="$1" -v b="$2" 'BEGIN { print (a + 0 > b + 0) ? a : b }'; }

[ "$json" = yes ] || printf '# UCX_TLS=%s, %s bytes per size, best of %s\n# %10s %14s %14s %7s\n' \
    "${UCX_TLS:-(default)}" "$bytes" "$reps" bytes perftest_MiB/s epx_MiB/s ratio
first=yes
[ "$json" = no ] || printf '{"ucx_tls": "%s", "bytes_per_size": %s, "reps": %s, "results": [' \
    "${UCX_TLS:-default}" "$bytes" "$reps"
for s in $(echo "$sizes" | tr ',' ' '); do
    n=$((bytes / s))
    [ "$n" -ge 20 ] || n=20
    p=0 e=0 i=0
    while [ "$i" -lt "$reps" ]; do
        p=$(best "$p" "$(perftest "$s" "$n")")
        e=$(best "$e" "$(epx "$s")")
        i=$((i + 1))
    done
    r=$(awk -v a="$e" -v b="$p" 'BEGIN { printf "%.3f", (b > 0) ? a / b : 0 }')
    if [ "$json" = yes ]; then
        [ "$first" = yes ] || printf ', '
        printf '{"bytes": %s, "iters": %s, "perftest_mib_s": %s, "epx_mib_s": %s, "ratio": %s}' \
            "$s" "$n" "$p" "$e" "$r"
    else
        printf '  %10s %14s %14s %7s\n' "$s" "$p" "$e" "$r"
    fi
    first=no
done
[ "$json" = no ] || printf ']}\n'
