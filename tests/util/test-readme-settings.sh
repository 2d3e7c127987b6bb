#!/bin/sh
# README's EPX_* settings table must be the one generated from the
# library's table (scripts/gen-config-table.sh); run that script to fix.
set -eu
src=${srcdir:-.}
exec "$src/scripts/gen-config-table.sh" --check --bench ./bench/epx-bench \
    --readme "$src/README.md"
