#!/bin/sh
# From a fresh clone: install dependencies, build, and run the test suite
# (make check, then the Python package's tests in a venv).  --distcheck also runs make distcheck (tarball builds and
# passes its tests out of tree).  --sanitize also runs scripts/sanitize.sh
# (the suite under ASan + UBSan with clang, then the fuzzers).  Exits non-zero on any failure, after
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
    echo "test: scripts/sanitize.sh"
    if ! scripts/sanitize.sh; then
        echo "test: FAILED (sanitizers or fuzzers)" >&2
        exit 1
    fi
fi

if [ "$distcheck" = yes ]; then
    echo "test: make -j$JOBS distcheck"
    if ! make -j"$JOBS" distcheck; then
        echo "test: FAILED (make distcheck)" >&2
        exit 1
    fi
fi
echo "test: all passed"
