#!/bin/sh
# Smoke test of epx-put-bench (make check, from the build directory): small
# runs in both modes end verified, the JSON has one row per size and names
# the backend; bad command lines exit 2.  No figure is judged.
set -u
PUT=${EPX_PUT_BENCH:-./bench/epx-put-bench}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/epx-put-bench.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT INT TERM
fail() { echo "FAIL: $*" >&2; exit 1; }

for mode in "" --signal; do
    "$PUT" --sizes 4K:256K --bytes 1M --reps 2 --json $mode >"$tmp/out" \
        2>"$tmp/err" || { cat "$tmp/err" >&2; fail "run $mode exited $?"; }
    grep -q '"verified": true' "$tmp/out" || fail "run $mode: not verified"
    grep -q '"backend": "[a-z]' "$tmp/out" || fail "run $mode: no backend"
    rows=$(grep -c '"size":' "$tmp/out")
    [ "$rows" -eq 7 ] || fail "run $mode: $rows rows, want 7 (4 KiB..256 KiB)"
done
# Two ranks started by hand (env bootstrap, as on two hosts): rank 0
# reports, rank 1 prints nothing; a wrong job size is refused.
# The port is a guess: another job may hold it, so a rank 0 that cannot
# listen tries the next guess (rank 1 then fails to join and is waited for).
export EPX_NRANKS=2 EPX_JOB_KEY=smoke-$$
try=0
while :; do
    port=$((20000 + ($$ + try * 7919) % 40000))
    export EPX_ROOT=127.0.0.1:$port
    EPX_RANK=1 EPX_TIMEOUT=10 "$PUT" --sizes 4K:16K --bytes 1M --reps 2 \
        >"$tmp/r1" 2>&1 &
    r1=$!
    rc=0
    EPX_RANK=0 "$PUT" --sizes 4K:16K --bytes 1M --reps 2 --json >"$tmp/r0" \
        2>"$tmp/r0.err" || rc=$?
    if [ $rc -ne 0 ] && grep -q 'Address already in use' "$tmp/r0.err" &&
       [ $try -lt 5 ]; then
        wait "$r1" 2>/dev/null
        try=$((try + 1))
        continue
    fi
    [ $rc -eq 0 ] || { cat "$tmp/r0.err" >&2; fail "rank 0 by hand exited $rc"; }
    wait "$r1" || { cat "$tmp/r1" >&2; fail "rank 1 by hand exited non-zero"; }
    break
done
grep -q '"verified": true' "$tmp/r0" || fail "by hand: rank 0 did not report"
[ "$(grep -c '"size":' "$tmp/r0")" -eq 3 ] || fail "by hand: want 3 rows"
[ ! -s "$tmp/r1" ] || fail "by hand: rank 1 printed: $(head -1 "$tmp/r1")"
EPX_NRANKS=1 EPX_RANK=0 EPX_ROOT=127.0.0.1:$((port + 1)) "$PUT" \
    --sizes 4K:4K >/dev/null 2>"$tmp/one"
[ $? -eq 1 ] && grep -q "the bench runs 2 ranks" "$tmp/one" ||
    fail "1 rank by hand: want exit 1 and the reason: $(cat "$tmp/one")"
unset EPX_NRANKS EPX_ROOT EPX_JOB_KEY

want=put_signal
grep -q "\"mode\": \"$want\"" "$tmp/out" || fail "--signal: mode is not $want"
"$PUT" --sizes 64K >/dev/null 2>&1; [ $? -eq 2 ] || fail "--sizes 64K: want exit 2"
"$PUT" --reps 0 >/dev/null 2>&1; [ $? -eq 2 ] || fail "--reps 0: want exit 2"
exit 0
