"""bench/py_moe_bench.py runs and reports what it promises (a smoke test
on a small shape; the figures themselves are in bench/results/)."""

import json
import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench", "py_moe_bench.py")


def test_py_moe_bench_smoke(tmp_path):
    pytest.importorskip("transformers.distributed.expert_parallel")
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, BENCH, "--ranks", "2", "--tokens", "8", "--hidden", "64",
                        "--experts", "8", "--topk", "2", "--iters", "3", "--iters-small", "20",
                        "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    for word in ("epx vs all_to_all", "epx vs copy-limit", "Python overhead"):
        assert word in r.stdout, r.stdout
    d = json.loads(out.read_text())
    assert set(d["summary"]) == {"epx_us", "a2a_us", "copy_us", "py1_us", "c1_us"}
    # both implementations computed the same layer (bf16 rounding apart)
    assert d["max_abs_diff"] <= 0.05 * max(1.0, d["raw"]["max_abs"])


def test_py_moe_bench_bad_arguments():
    r = subprocess.run([sys.executable, BENCH, "--ranks", "3", "--experts", "8"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "multiple of --ranks" in r.stderr
