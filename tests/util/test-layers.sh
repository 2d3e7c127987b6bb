#!/bin/sh
# The layers include one way (docs/DESIGN.md): util at the bottom; the
# communicator's lower half (core/group.h, the bootstraps) below the
# transports; the transports below the communicator's upper half
# (core/comm.h) and the engine; the GPU executor below the engine, sharing
# the protocol core (proto/, which includes nothing of epx but epx.h) and
# the wire format with it.  A header included against that order is named
# here.
set -eu
src=${srcdir:-.}
cd "$src/src"
fail=0
# check DIR-or-FILES -- FORBIDDEN-PATTERN (an extended regex on the path)
check() {
    files=$1
    bad=$2
    why=$3
    for f in $files; do
        [ -f "$f" ] || continue
        hits=$(grep -nE "^#include \"($bad)" "$f" || true)
        if [ -n "$hits" ]; then
            echo "$f: $why"
            echo "$hits" | sed 's/^/    /'
            fail=1
        fi
    done
}
check "$(echo util/*.c util/*.h)" "core/|transport/|moe/|balance/|cuda/" \
    "util includes a layer above it"
check "core/group.h core/group.c core/bootstrap.h core/bootstrap_tcp.c \
       core/bootstrap_allgather.c" \
    "core/comm\.h|transport/|moe/|balance/|cuda/" \
    "the communicator's lower half includes a layer above it"
check "$(find transport -name '*.[ch]' | sort)" \
    "core/comm\.h|moe/|balance/|cuda/" \
    "a transport includes a layer above it"
check "$(echo proto/*.h)" "util/|core/|transport/|moe/|balance/|cuda/" \
    "the protocol core includes a layer (it is plain C over epx.h)"
check "$(echo cuda/*.c cuda/*.h cuda/*.cu)" \
    "moe/(moe|ops|ll|hier|reduce)\.h|balance/" \
    "the GPU executor includes the engine's internals"
[ "$fail" -eq 0 ] && echo "includes follow the layers"
exit $fail
