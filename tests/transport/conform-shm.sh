#!/bin/sh
# test_conform over the shm configuration (see conform-run.sh).
exec "$(cd "$(dirname "$0")" && pwd)/conform-run.sh" shm
