"""The package without torch: import, numpy arrays in and out, one rank."""

import subprocess
import sys

import numpy as np

CODE = r"""
import os, sys
sys.modules["torch"] = None          # any import of torch now fails
os.environ.update(EPX_RANK="0", EPX_NRANKS="1")
import numpy as np
import epx
assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
comm = epx.Comm.from_env()
moe = epx.MoE(comm, hidden=8, num_experts=4, topk=2, max_tokens=3, dtype="float32")
x = np.arange(24, dtype=np.float32).reshape(3, 8)
idx = np.array([[0, 3], [1, -1], [2, 1]], dtype=np.int64)
w = np.array([[0.5, 0.5], [1, 0], [0.25, 0.75]], dtype=np.float32)
d = moe.dispatch(x, idx, w)
assert isinstance(d.x, np.ndarray) and d.x.shape == (5, 8), d.x.shape
assert d.expert_counts.tolist() == [1, 2, 1, 1]
out = moe.combine(d.x, d)
assert np.array_equal(out, x), out
s = moe.stats()
assert s["window"].tolist() == [[1, 2, 1, 1]]
# bf16 engines from numpy: bfloat16 bits as uint16, in and out
moe2 = epx.MoE(comm, hidden=8, num_experts=4, topk=2, max_tokens=3)
xb = (x.view(np.uint32) >> 16).astype(np.uint16)        # exact: small integers
d2 = moe2.dispatch(xb, idx, w)
assert d2.x.dtype == np.uint16
out2 = moe2.combine(d2.x, d2)
assert np.array_equal(out2, xb), out2
print(epx.version, "ok")
"""


def test_numpy_only():
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().endswith("ok")


def rank_torchrun_env(rank, R):
    import os

    import epx

    comm = epx.Comm.from_env()
    assert (comm.rank, comm.size) == (rank, R)
    assert "EPX_RANK" not in os.environ  # set for the call only
    moe = epx.MoE(comm, 8, 4, 2, 2, dtype="float32")
    x = np.full((2, 8), rank + 1, np.float32)
    d = moe.dispatch(x, np.array([[0, 3], [1, 2]]), np.full((2, 2), 0.5, np.float32))
    assert np.array_equal(moe.combine(d.x, d), x)
    return True


def test_from_env_under_torchrun_variables():
    import ranks

    ranks.run(rank_torchrun_env, 2, backend="torchrun")
