#!/bin/sh
# Run epx-bench with the given options and keep the result:
#   bench/record-result.sh [epx-bench options...]
# writes bench/results/<date>-<host>-<ranks>r.json (format: results/README.md)
# and prints its name.  EPX_BENCH overrides the binary (./bench/epx-bench);
# another program with --json (EPX_BENCH=./bench/epx-put-bench) gets its
# name in the file's: <date>-<host>-<ranks>r-put-bench.json.
set -eu
BENCH=${EPX_BENCH:-./bench/epx-bench}
prog=$(basename "$BENCH")
here=$(dirname "$0")

esc() { sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | tr -d '\n'; }

out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$BENCH" --json "$@" >"$out" || {
    rc=$?
    echo "record-result: $prog exited $rc; nothing recorded" >&2
    exit $rc
}

date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
host=$(hostname)
# A bundle built for another host (scripts/gpu-bundle.sh, from a clean
# archive of one commit) names it in its COMMIT file; a git tree around
# the bundle (a copy of a checkout) says nothing about the programs.
dirty=false
if [ -f "$here/../COMMIT" ]; then
    commit=$(cat "$here/../COMMIT")
else
    commit=$(git -C "$here" rev-parse HEAD 2>/dev/null || echo unknown)
    [ -n "$(git -C "$here" status --porcelain --untracked-files=no 2>/dev/null)" ] && dirty=true
fi
cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //' | esc)
cores=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 0)
mem_kb=$(awk '/MemTotal/ {print $2}' /proc/meminfo 2>/dev/null || echo 0)
kernel=$(uname -sr | esc)
ranks=$(sed -n 's/^ *"ranks": \([0-9]*\),.*/\1/p' "$out" | head -n1)
suffix=
[ "$prog" = epx-bench ] || suffix="-${prog#epx-}"
file="$here/results/$(date -u +%Y%m%d-%H%M%S)-$host-${ranks}r$suffix"
# Two runs within a second: a second name, never an overwrite.
base=$file
n=1
file="$base.json"
while [ -e "$file" ]; do
    n=$((n + 1))
    file="$base-$n.json"
done

{
    printf '{\n  "date": "%s",\n  "commit": "%s",\n  "dirty": %s,\n' \
        "$date" "$commit" "$dirty"
    printf '  "machine": {"host": "%s", "cpu": "%s", "cores": %s, ' \
        "$(printf %s "$host" | esc)" "$cpu" "$cores"
    printf '"memory_kb": %s, "kernel": "%s"},\n' "$mem_kb" "$kernel"
    printf '  "command": "%s",\n  "bench": ' \
        "$(printf '%s ' "$prog" --json "$@" | sed 's/ $//' | esc)"
    cat "$out"
    printf '}\n'
} >"$file"
echo "$file"
