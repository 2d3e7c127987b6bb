#!/bin/sh
# Install dependencies and build epx in the source tree.  Shared by
# quickstart.sh and test.sh.  autogen and configure run only when their
# outputs are missing: afterwards make's own rules regenerate configure and
# Makefile when configure.ac or Makefile.am change, so reruns stay fast.
# CONFIGURE_FLAGS (environment) is passed to ./configure.
set -eu

cd "$(dirname "$0")/.."
JOBS=$(nproc 2>/dev/null || echo 2)

say() { printf 'build: %s\n' "$*"; }
die() { printf 'build: error: %s\n' "$*" >&2; exit 1; }

scripts/install-deps.sh

if [ ! -x configure ]; then
    say "./autogen.sh"
    ./autogen.sh || die "autogen.sh failed (autoconf/automake/libtool installed?)"
fi
if [ ! -f config.status ]; then
    say "./configure ${CONFIGURE_FLAGS:-}"
    # shellcheck disable=SC2086 # flags are a word list
    ./configure ${CONFIGURE_FLAGS:-} || die "configure failed; see config.log"
fi
say "make -j$JOBS"
make -j"$JOBS" || die "make failed"
