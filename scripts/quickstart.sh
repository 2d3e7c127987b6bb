#!/bin/sh
# From a fresh clone: install dependencies, build, and run the main job,
# epx-bench dispatch/combine on 8 local ranks with the default
# (DeepSeek-V3-like) configuration.  Arguments go to epx-bench.
set -eu

cd "$(dirname "$0")/.."
scripts/build.sh

printf 'quickstart: ./bench/epx-bench --ranks 8 %s\n' "$*"
exec ./bench/epx-bench --ranks 8 "$@"
