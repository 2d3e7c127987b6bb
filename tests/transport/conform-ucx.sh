#!/bin/sh
# test_conform over the ucx configuration (see conform-run.sh).
exec "$(cd "$(dirname "$0")" && pwd)/conform-run.sh" ucx
