#!/bin/sh
# tests/transport/vg_ucx (a UCX comm + window lifecycle, a failed window
# creation, a wait that times out; two forked ranks over ucx) under
#   valgrind --leak-check=full --errors-for-leak-kinds=definite
# Any memory error or definite leak in a rank or the launcher fails the
# test.  valgrind-ucx.supp silences only leaks whose allocation stack is
# inside UCX itself (libucs/libuct/libucp frames on top), never ours.
# Then the same run with VG_UCX_LEAK=1 (each rank drops a block on
# purpose) must fail: the check can catch a leak of our code.
# Exit 77 (skip) when valgrind is not installed, or in a sanitizer build.
set -u
here=$(cd "$(dirname "$0")" && pwd)
top=${srcdir:-$here/../..}
prog=${VG_UCX_PROG:-./tests/transport/vg_ucx}
command -v valgrind >/dev/null || { echo "valgrind not installed: skipped"; exit 77; }
# A sanitizer build checks memory itself (and valgrind cannot run it).
if grep -q '^CFLAGS = .*-fsanitize=' Makefile 2>/dev/null; then
    echo "sanitizer build: skipped"
    exit 77
fi
EPX_TRANSPORTS=ucx
UCX_TLS=${UCX_TLS:-tcp}
export EPX_TRANSPORTS UCX_TLS
# Each rank waits at most 30 s: valgrind slows them down but not that much.
vg() {
    valgrind -q --leak-check=full --errors-for-leak-kinds=definite \
        --show-leak-kinds=definite --error-exitcode=99 \
        --suppressions="$top/tests/transport/valgrind-ucx.supp" "$prog"
}
log=$(mktemp "${TMPDIR:-/tmp}/valgrind-ucx.XXXXXX") || exit 99
trap 'rm -f "$log"' EXIT INT TERM

vg >"$log" 2>&1
rc=$?
cat "$log"
if [ "$rc" -ne 0 ]; then
    echo "FAIL: vg_ucx under valgrind exited $rc (memory error, definite leak or failed step)"
    exit 1
fi
grep -q "lifecycle, failed creation and timeout passed" "$log" ||
    { echo "FAIL: vg_ucx did not finish"; exit 1; }

VG_UCX_LEAK=1 vg >"$log" 2>&1
rc=$?
if [ "$rc" -eq 0 ] || ! grep -q "definitely lost" "$log"; then
    cat "$log"
    echo "FAIL: a leak made on purpose (VG_UCX_LEAK=1) went unnoticed (exit $rc)"
    exit 1
fi
echo "ok: the leak made on purpose was reported (exit $rc)"
exit 0
