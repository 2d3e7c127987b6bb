#!/bin/sh
# The test suite under AddressSanitizer + UndefinedBehaviorSanitizer (errors
# fatal), built with clang in a copy of the tree (the in-tree build is left
# alone), with the libFuzzer harnesses of tests/fuzz; then each fuzzer for
# EPX_FUZZ_SECONDS (default 20) over its corpus.  EPX_SAN_DIR: where the
# copy goes (kept); default a temporary directory, removed on success.
# Needs clang and its runtimes (install-deps.sh installs them).
set -eu
cd "$(dirname "$0")/.."
JOBS=$(nproc 2>/dev/null || echo 2)
say() { printf 'sanitize: %s\n' "$*"; }
die() { printf 'sanitize: error: %s\n' "$*" >&2; exit 1; }

command -v clang >/dev/null 2>&1 || die "clang not found (scripts/install-deps.sh)"
san=${EPX_SAN_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/epx-san.XXXXXX")}
mkdir -p "$san"
# The tracked files and the new ones git does not ignore.
git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -x -C "$san"
flags="-g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined"
flags="$flags -fno-sanitize-recover=undefined -fsanitize=fuzzer-no-link"
# Leaks are not checked: hwloc's libpciaccess keeps about 1 KiB a probe,
# UCX and MPI keep theirs until exit.
export ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1
cd "$san"
say "build in $san (clang, $flags)"
./autogen.sh >autogen.log 2>&1 || die "autogen failed: $san/autogen.log"
CC=clang CFLAGS="$flags" ./configure --enable-fuzzers --without-cuda \
    --without-nccl >configure.log 2>&1 || die "configure failed: $san/config.log"
make -j"$JOBS" >make.log 2>&1 || die "make failed: $san/make.log"
say "make -j$JOBS check"
VERBOSE=1 make -j"$JOBS" check || die "make check failed under the sanitizers"
say "fuzzers, ${EPX_FUZZ_SECONDS:-20} s each"
tests/fuzz/run.sh "${EPX_FUZZ_SECONDS:-20}" || die "a fuzzer failed (crash-* in $san)"
cd - >/dev/null
[ -n "${EPX_SAN_DIR:-}" ] || rm -rf "$san"
say "passed"
