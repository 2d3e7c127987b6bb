#!/bin/sh
# tests/moe/test_lifetime under valgrind: a use after free in the
# wrong-order destruction paths is an error there (exit 99), where the
# plain run might read freed memory unnoticed.  Exit 77 without valgrind.
: "${top_builddir:=.}"
command -v valgrind >/dev/null 2>&1 || { echo "no valgrind: skipped"; exit 77; }
[ -x "$top_builddir/tests/moe/test_lifetime" ] || { echo "not built: skipped"; exit 77; }
exec "$top_builddir/libtool" --mode=execute valgrind -q --error-exitcode=99 \
    --errors-for-leak-kinds=none --trace-children=no \
    "$top_builddir/tests/moe/test_lifetime"
