#!/bin/sh
# Run epx-bench with the given options and keep the result:
#   bench/record-result.sh [epx-bench options...]
# writes bench/results/<date>-<host>-<ranks>r.json (format: results/README.md)
# and prints its name.  EPX_BENCH overrides the binary (./bench/epx-bench).
set -eu
BENCH=${EPX_BENCH:-./bench/epx-bench}
here=$(dirname "$0")

esc() { sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | tr -d '\n'; }

out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$BENCH" --json "$@" >"$out" || {
    rc=$?
    echo "record-result: epx-bench exited $rc; nothing recorded" >&2
    exit $rc
}

date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
host=$(hostname)
commit=$(git -C "$here" rev-parse HEAD 2>/dev/null || echo unknown)
dirty=false
[ -n "$(git -C "$here" status --porcelain --untracked-files=no 2>/dev/null)" ] && dirty=true
cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //' | esc)
cores=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 0)
mem_kb=$(awk '/MemTotal/ {print $2}' /proc/meminfo 2>/dev/null || echo 0)
kernel=$(uname -sr | esc)
ranks=$(sed -n 's/^ *"ranks": \([0-9]*\),.*/\1/p' "$out" | head -n1)
file="$here/results/$(date -u +%Y%m%d-%H%M%S)-$host-${ranks}r.json"

{
    printf '{\n  "date": "%s",\n  "commit": "%s",\n  "dirty": %s,\n' \
        "$date" "$commit" "$dirty"
    printf '  "machine": {"host": "%s", "cpu": "%s", "cores": %s, ' \
        "$(printf %s "$host" | esc)" "$cpu" "$cores"
    printf '"memory_kb": %s, "kernel": "%s"},\n' "$mem_kb" "$kernel"
    printf '  "command": "%s",\n  "bench": ' \
        "$(printf '%s ' epx-bench --json "$@" | sed 's/ $//' | esc)"
    cat "$out"
    printf '}\n'
} >"$file"
echo "$file"
