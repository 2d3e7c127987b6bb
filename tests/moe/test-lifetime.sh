#!/bin/sh
# tests/moe/test_lifetime under valgrind: a use after free in the
# wrong-order destruction paths is an error there (exit 99), where the
# plain run might read freed memory unnoticed.  A build with
# AddressSanitizer checks that itself: the program runs as it is.  Exit 77
# without valgrind.
: "${top_builddir:=.}"
prog=$top_builddir/tests/moe/test_lifetime
[ -x "$prog" ] || { echo "not built: skipped"; exit 77; }
if grep -q '^CFLAGS = .*-fsanitize=[a-z,]*address' "$top_builddir/Makefile"; then
    exec "$prog"
fi
command -v valgrind >/dev/null 2>&1 || { echo "no valgrind: skipped"; exit 77; }
exec "$top_builddir/libtool" --mode=execute valgrind -q --error-exitcode=99 \
    --errors-for-leak-kinds=none "$prog"
