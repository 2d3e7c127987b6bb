"""The examples under examples/ run as a user runs them, and check
themselves."""

import os
import subprocess
import sys

import pytest

import ranks

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


@pytest.mark.parametrize("model,n", [("qwen3_moe", 2), ("deepseek_v4", 4)])
def test_transformers_ep_example(model, n):
    pytest.importorskip("transformers.distributed.expert_parallel")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={n}",
           f"--master-port={ranks.free_port()}", os.path.join(ROOT, "examples", "transformers_ep.py"),
           "--model", model, "--check"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "logits vs one process: relative error" in r.stdout, r.stdout
