"""The package carries libepx's run-time modules (src/module/README.md)
beside its libepx, where a moved libepx looks for them: ranks that need
UCX load it from there, and a missing module is an error naming it."""

import os
import shutil
import subprocess

import numpy as np
import pytest

import epx

MODDIR = os.path.join(os.path.dirname(epx.__file__), "epx")


def rank_ucx(rank, R):
    os.environ["EPX_TRANSPORTS"] = "ucx"
    os.environ.setdefault("UCX_TLS", "tcp,self")
    comm = epx.Comm.from_env()
    moe = epx.MoE(comm, 8, 4, 2, 2, dtype="float32")
    x = np.full((2, 8), rank + 1, np.float32)
    d = moe.dispatch(x, np.array([[0, 3], [1, 2]]), np.full((2, 2), 0.5, np.float32))
    assert np.array_equal(moe.combine(d.x, d), x)
    return True


def rank_no_module(rank, R):
    os.environ["EPX_TRANSPORTS"] = "ucx"
    os.environ["EPX_MODULE_DIR"] = "/nonexistent/epx-modules"
    with pytest.raises(Exception) as e:
        epx.Comm.from_env()
    assert "epx_ucx.so" in str(e.value), str(e.value)
    return True


def test_ucx_module_carried_and_loaded():
    if not os.path.exists(os.path.join(MODDIR, "epx_ucx.so")):
        # Built here with UCX present, the package must carry its module.
        have_ucx = subprocess.run(["pkg-config", "--exists", "ucx"]).returncode == 0 \
            if shutil.which("pkg-config") else False
        assert not have_ucx, "UCX is installed but the package carries no epx/epx_ucx.so"
        pytest.skip("this package's libepx was built without UCX (no epx/epx_ucx.so)")
    import ranks

    assert ranks.run(rank_ucx, 2, backend="env") == [True, True]


def test_missing_module_is_named():
    import ranks

    assert ranks.run(rank_no_module, 2, backend="env") == [True, True]
