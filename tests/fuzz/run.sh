#!/bin/sh
# Run every libFuzzer harness of tests/fuzz for a while over its corpus.
#   tests/fuzz/run.sh [SECONDS [BUILDDIR]]     (default 20 s each, .)
# New inputs go to a scratch directory (the tree's corpus is only read);
# a crash leaves its input as crash-* in the current directory and fails.
# Prints each harness's executions.  Exit 77 when not built
# (configure --enable-fuzzers).
secs=${1:-20}
b=${2:-.}
src=$(cd "$(dirname "$0")" && pwd)
rc=0
for f in topo loads boot bench_trace; do
    prog=$b/tests/fuzz/fuzz_$f
    [ -x "$prog" ] || { echo "fuzz: $prog not built: skipped"; exit 77; }
    work=$(mktemp -d "${TMPDIR:-/tmp}/epx-fuzz-$f.XXXXXX")
    "$prog" -max_total_time="$secs" -print_final_stats=1 -timeout=10 \
        -rss_limit_mb=2048 "$work" "$src/corpus/$f" >"$work.log" 2>&1
    r=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work.log")
    echo "fuzz: $f: ${runs:-?} executions in $secs s, exit $r"
    if [ $r -ne 0 ]; then
        tail -40 "$work.log"
        rc=1
    fi
    rm -rf "$work" "$work.log"
done
exit $rc
