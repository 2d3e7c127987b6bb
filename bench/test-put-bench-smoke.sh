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
want=put_signal
grep -q "\"mode\": \"$want\"" "$tmp/out" || fail "--signal: mode is not $want"
"$PUT" --sizes 64K >/dev/null 2>&1; [ $? -eq 2 ] || fail "--sizes 64K: want exit 2"
"$PUT" --reps 0 >/dev/null 2>&1; [ $? -eq 2 ] || fail "--reps 0: want exit 2"
exit 0
