#!/bin/sh
# Make the Python environment of the tests and benchmarks: a venv at
# .venv (EPX_VENV overrides) with torch (the default PyPI wheel runs on
# CPU), transformers, accelerate, numpy, pytest and scipy (the balancer's
# exact-optimum oracle) from the package index,
# and the epx package installed from this tree (pip install ./python, which
# builds its own libepx).  Idempotent: packages already present are not
# downloaded again; the epx package is rebuilt from the tree every time.
# Prints the venv's python on the last line.
set -eu

cd "$(dirname "$0")/.."
VENV=${EPX_VENV:-.venv}
PY=${PYTHON:-python3}

say() { printf 'python-env: %s\n' "$*" >&2; }
die() { printf 'python-env: error: %s\n' "$*" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
    say "$PY -m venv $VENV"
    "$PY" -m venv "$VENV" ||
        die "cannot make a venv with $PY (Debian: apt-get install python3-venv)"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >&2 ||
    die "pip upgrade failed (network to the package index?)"
if ! "$VENV/bin/python" -c "import torch, transformers, accelerate, numpy, pytest, scipy" 2>/dev/null; then
    say "pip install torch transformers accelerate numpy pytest scipy (about a minute, 6 GB)"
    "$VENV/bin/python" -m pip install -q torch transformers accelerate numpy pytest scipy >&2 ||
        die "pip install of the test dependencies failed"
fi
say "pip install ./python"
"$VENV/bin/python" -m pip install -q ./python >&2 || die "pip install ./python failed"
echo "$VENV/bin/python"
