#!/bin/sh
# From a fresh clone: install dependencies, build, and run the test suite
# (make check, then the Python package's tests in a venv).  --distcheck also runs make distcheck (tarball builds and
# passes its tests out of tree).  --sanitize also builds a copy of the
# tree with clang, AddressSanitizer and UndefinedBehaviorSanitizer (errors
# fatal) and the libFuzzer harnesses, runs make check there, then each
# fuzzer for EPX_FUZZ_SECONDS (default 20) over its corpus.  Exits non-zero on any failure, after
# printing the logs of the tests that failed.
set -eu

usage() { echo "usage: $0 [--distcheck] [--sanitize]" >&2; exit 2; }
distcheck=no
sanitize=no
for a in "$@"; do
    case "$a" in
        --distcheck) distcheck=yes ;;
        --sanitize) sanitize=yes ;;
        -h|--help) usage ;;
        *) echo "test: unknown argument '$a'" >&2; usage ;;
    esac
done

cd "$(dirname "$0")/.."
JOBS=$(nproc 2>/dev/null || echo 2)

# Containers run CI as root; Open MPI refuses root unless told it is meant.
if [ "$(id -u)" -eq 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

scripts/build.sh

# The automake harness prints test-suite.log (the logs of the tests that
# failed) when VERBOSE is set in the environment; sub-makes of distcheck
# inherit it.
export VERBOSE=1

echo "test: make -j$JOBS check"
if ! make -j"$JOBS" check; then
    echo "test: FAILED (make check)" >&2
    exit 1
fi

# The Python package and its tests (pytest), in the venv .venv.
echo "test: scripts/python-env.sh"
if ! VENV_PY=$(scripts/python-env.sh); then
    echo "test: FAILED (Python environment)" >&2
    exit 1
fi
echo "test: $VENV_PY -m pytest python/tests"
if ! "$VENV_PY" -m pytest -q -p no:cacheprovider python/tests; then
    echo "test: FAILED (Python tests)" >&2
    exit 1
fi

if [ "$sanitize" = yes ]; then
    # A copy of the tracked (and new, unignored) files: the in-tree build
    # stays as it is.
    san=${EPX_SAN_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/epx-san.XXXXXX")}
    echo "test: clang + ASan + UBSan + fuzzers in $san"
    git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -x -C "$san"
    san_flags="-g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined -fsanitize=fuzzer-no-link"
    # Leaks: hwloc's libpciaccess keeps ~1 KiB per probe, UCX and MPI
    # keep theirs until exit; LeakSanitizer would fail them all.
    export ASAN_OPTIONS=detect_leaks=0:abort_on_error=0
    export UBSAN_OPTIONS=print_stacktrace=1
    if ! (cd "$san" && ./autogen.sh >/dev/null &&
          CC=clang CFLAGS="$san_flags" ./configure --enable-fuzzers \
              --without-cuda --without-nccl >/dev/null &&
          make -j"$JOBS" >/dev/null); then
        echo "test: FAILED (sanitizer build)" >&2
        exit 1
    fi
    echo "test: (sanitizers) make -j$JOBS check"
    if ! (cd "$san" && make -j"$JOBS" check); then
        echo "test: FAILED (make check under ASan + UBSan)" >&2
        exit 1
    fi
    if ! (cd "$san" && tests/fuzz/run.sh "${EPX_FUZZ_SECONDS:-20}"); then
        echo "test: FAILED (fuzzers)" >&2
        exit 1
    fi
    [ -n "${EPX_SAN_DIR:-}" ] || rm -rf "$san"
fi

if [ "$distcheck" = yes ]; then
    echo "test: make -j$JOBS distcheck"
    if ! make -j"$JOBS" distcheck; then
        echo "test: FAILED (make distcheck)" >&2
        exit 1
    fi
fi
echo "test: all passed"
