#!/bin/sh
# README.md's "Repository layout" table is true: every path it names is in
# the repository, and every top-level directory, every directory under
# src/ and include/, and each tool's path in the "Tools" table is there.
# Checked against `git ls-files` (skipped outside a git work tree, e.g. in
# a release tarball).
set -eu
src=$(cd "${srcdir:-.}" && pwd)
command -v git >/dev/null && git -C "$src" rev-parse --is-inside-work-tree \
    >/dev/null 2>&1 || { echo "not a git work tree: skipped"; exit 77; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/epx-layout.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

git -C "$src" ls-files > "$tmp/files"
# The table: first-column `path` of the rows between its heading and the
# next heading.
awk '/^## Repository layout/{f=1; next} f&&/^## /{exit} f&&/^\| `/' \
    "$src/README.md" | sed 's/^| `\([^`]*\)`.*/\1/' > "$tmp/rows"
[ -s "$tmp/rows" ] || { echo "FAIL: no layout table in README.md"; exit 1; }

tracked() {   # a tracked file, or a directory holding one
    p=${1%/}
    grep -qx -- "$p" "$tmp/files" || grep -q -- "^$p/" "$tmp/files"
}
while read -r p; do
    tracked "$p" || fail "README names $p, which is not in the repository"
done < "$tmp/rows"

# Every top-level directory, and every directory under src/ and include/.
{ awk -F/ 'NF > 1 { print $1 "/" }' "$tmp/files"
  awk -F/ '($1 == "src" || $1 == "include") && NF > 2 { print $1 "/" $2 "/" }' \
      "$tmp/files"; } | sort -u > "$tmp/dirs"
while read -r d; do
    case $d in
    include/*/) continue ;;                   # shown with include/
    */*/) grep -qx -- "$d" "$tmp/rows" ;;     # src/<layer>/: a row each
    *) grep -q -- "^$d" "$tmp/rows" ;;        # top level: itself or below
    esac || fail "README's layout table lacks $d"
done < "$tmp/dirs"

# The tools table's paths in the tree are built from tracked sources.
awk '/^## Tools/{f=1; next} f&&/^## /{exit} f&&/^\| `epx-/' "$src/README.md" |
    sed 's/^| `\([^`]*\)` | `\([^`]*\)`.*/\1 \2/' |
while read -r tool path; do
    dir=${path%/*}
    grep -q -- "^$dir/" "$tmp/files" || echo "$tool: $dir" >> "$tmp/badtools"
done
if [ -f "$tmp/badtools" ]; then
    fail "tools in directories with no sources: $(cat "$tmp/badtools")"
fi

[ "$fails" -eq 0 ] && echo "README layout: $(wc -l < "$tmp/rows") rows, every directory covered"
[ "$fails" -eq 0 ]
