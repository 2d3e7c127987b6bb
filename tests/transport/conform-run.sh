#!/bin/sh
# Runs test_conform in one transport configuration, $1 (run by the
# conform-<configuration>.sh wrappers that make check lists):
#   shm    EPX_TRANSPORTS=shm
#   ucx    EPX_TRANSPORTS=ucx, UCX_TLS=tcp unless set
#   mixed  EPX_TOPO_FILE=tests/transport/data/two-hosts.json (two domains,
#          the default per-pair selection), UCX_TLS=tcp unless set
# Exit 77 (skip) comes only from the program: the ucx backend not built.
# A run that passes but in which UCX printed an ERROR line fails.
# EPX_CONFORM names the program (default ./tests/transport/test_conform).
set -u
here=$(cd "$(dirname "$0")" && pwd)
top=${srcdir:-$here/../..}
top=$(cd "$top" && pwd)
prog=${EPX_CONFORM:-./tests/transport/test_conform}

case ${1:-} in
shm)
    EPX_TRANSPORTS=shm
    export EPX_TRANSPORTS ;;
ucx)
    EPX_TRANSPORTS=ucx
    UCX_TLS=${UCX_TLS:-tcp}
    export EPX_TRANSPORTS UCX_TLS ;;
mixed)
    unset EPX_TRANSPORTS
    UCX_TLS=${UCX_TLS:-tcp}
    EPX_TOPO_FILE=$top/tests/transport/data/two-hosts.json
    export UCX_TLS EPX_TOPO_FILE ;;
*)
    echo "usage: $0 shm|ucx|mixed" >&2
    exit 99 ;;
esac
EPX_TEST_TRANSPORT=$1
export EPX_TEST_TRANSPORT
# No error path here involves a dead peer, so UCX itself must report no
# error either (an early worker teardown once showed only that way).
out=$(mktemp "${TMPDIR:-/tmp}/conform-$1.XXXXXX") || exit 99
trap 'rm -f "$out"' EXIT INT TERM
"$prog" >"$out" 2>&1
rc=$?
cat "$out"
if [ "$rc" -eq 0 ] && grep -q 'UCX  ERROR' "$out"; then
    echo "FAIL: UCX reported errors (above) in a passing run"
    rc=1
fi
exit "$rc"
