#!/bin/sh
# Regenerate the EPX_* settings table of README.md from the library's one
# table (epx_settings(), printed by `epx-bench --list-settings markdown`).
# The table lives between the lines <!-- settings:begin --> and
# <!-- settings:end -->.
#
#   gen-config-table.sh [--check] [--bench PATH] [--readme PATH]
#
# --check: change nothing; exit 1 (with a diff) if README.md is stale.
# Exit 0: up to date / updated; 1: stale (--check); 2: error.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
bench=$root/bench/epx-bench
readme=$root/README.md
check=no

die() { printf 'gen-config-table: error: %s\n' "$*" >&2; exit 2; }
usage() { echo "usage: $0 [--check] [--bench PATH] [--readme PATH]" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --check) check=yes ;;
        --bench) [ $# -ge 2 ] || usage; bench=$2; shift ;;
        --readme) [ $# -ge 2 ] || usage; readme=$2; shift ;;
        -h|--help) usage ;;
        *) echo "gen-config-table: unknown argument '$1'" >&2; usage ;;
    esac
    shift
done

[ -x "$bench" ] || die "$bench not found or not executable (build first: make)"
[ -f "$readme" ] || die "$readme not found"

gen=$(mktemp)
new=$(mktemp)
trap 'rm -f "$gen" "$new"' EXIT

"$bench" --list-settings markdown >"$gen" ||
    die "'$bench --list-settings markdown' failed"
grep -q 'EPX_' "$gen" || die "'$bench --list-settings markdown' printed no EPX_ setting"

# Replace what lies between the markers by a blank line, the table (its
# trailing blank lines dropped, so the output is stable) and a blank line.
awk -v gen="$gen" '
BEGIN {
    n = 0; last = 0
    while ((getline l < gen) > 0) { t[++n] = l; if (l ~ /[^ \t]/) last = n }
    close(gen)
}
$0 == "<!-- settings:begin -->" {
    if (state != 0) { bad = 1 }
    print; print ""
    for (i = 1; i <= last; i++) print t[i]
    print ""
    state = 1; begins++; next
}
$0 == "<!-- settings:end -->" {
    if (state != 1) { bad = 1 }
    state = 2; ends++
}
state != 1 { print }
END { if (bad || begins != 1 || ends != 1) exit 3 }
' "$readme" >"$new" ||
    die "$readme must hold exactly one '<!-- settings:begin -->' line followed by one '<!-- settings:end -->' line"

if cmp -s "$readme" "$new"; then
    echo "gen-config-table: $readme is up to date"
    exit 0
fi
if [ "$check" = yes ]; then
    echo "gen-config-table: the settings table in $readme is stale:" >&2
    diff -u "$readme" "$new" >&2 || true
    echo "gen-config-table: run scripts/gen-config-table.sh to update it" >&2
    exit 1
fi
# Write in place (not mv) to keep the file's mode and links.
cat "$new" >"$readme"
echo "gen-config-table: updated $readme"
