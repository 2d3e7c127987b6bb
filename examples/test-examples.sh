#!/bin/sh
# The README's C example is examples/moe.c, word for word; it runs (8
# local ranks) and says out == x on every rank.  Its device-rank twin
# examples/moe_gpu.c is test-examples-gpu.sh's.
set -eu
src=${srcdir:-.}
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
awk '/^## The API in one example/{f=1} f&&/^```c$/{p=1;next} p&&/^```$/{exit} p' \
    "$src/README.md" > "$tmp"
if ! cmp -s "$tmp" "$src/examples/moe.c"; then
    echo "README.md's example and examples/moe.c differ:"
    diff "$tmp" "$src/examples/moe.c" || true
    exit 1
fi
./examples/moe > "$tmp" 2>&1 || { cat "$tmp"; exit 1; }
n=$(grep -c "out == x" "$tmp")
[ "$n" -eq 8 ] || { cat "$tmp"; echo "want 8 ranks with out == x"; exit 1; }
echo "examples/moe: 8 ranks, out == x"
