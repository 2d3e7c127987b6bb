"""Expert parallelism through Hugging Face transformers, against a single-process reference.

For each tiny random-weight MoE model of ``hf_models`` (built once into a temporary directory), the single-process
reference runs the full batch in this process; ``hf_ep_worker.py`` then runs the same model under
``python -m torch.distributed.run --nproc-per-node N`` (gloo, CPU) with
``DistributedConfig(ep_size=N, fsdp_size=N, ep_implementation=IMPL)``, each rank on its slice of the batch, and
the gathered logits, loss and every parameter's gradient must match the reference (see the worker's docstring for
why the gradients must be equal). IMPL is transformers' own ``"all_to_all"`` and ``"epx"``; the latter is skipped
while ``epx.transformers`` cannot be imported.
"""

from __future__ import annotations

import os
import signal
import site
import socket
import subprocess
import sys
from pathlib import Path

import pytest


torch = pytest.importorskip("torch")
pytest.importorskip("transformers.distributed.expert_parallel")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is needed", allow_module_level=True)

import hf_models  # noqa: E402


HERE = Path(__file__).resolve().parent
WORKER = HERE / "hf_ep_worker.py"

IMPLS = ["all_to_all", "epx"]
NPROCS = [2, 4]
LOGITS_RTOL = 1e-5  # max |logits - ref| / max |ref|, float32
# max |grad - ref| / max |ref| per parameter. The runs differ only in float32 summation order (tokens summed per
# rank, then across ranks); most parameters agree to ~1e-7, the worst (DeepSeek-V4 hyper-connection biases,
# whose gradients are sums over all tokens with cancellation) to ~2e-5.
GRAD_RTOL = 1e-4
TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """family -> (model dir, single-process reference result); each model is built and run once per module."""
    root = tmp_path_factory.mktemp("hf_ep_models")
    cache: dict[str, tuple[Path, dict]] = {}

    def get(family: str) -> tuple[Path, dict]:
        if family not in cache:
            model_dir = root / family
            hf_models.build_model(family, model_dir)
            cache[family] = (model_dir, hf_models.run_reference(family, model_dir))
        return cache[family]

    return get


def _worker_env(impl: str) -> dict[str, str]:
    env = dict(os.environ)
    # Up to 4 ranks on a small machine: one thread each keeps them from fighting over the cores.
    env["OMP_NUM_THREADS"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    # The workers import what this process imports: hf_models next to them, epx from wherever it was found here.
    paths = [str(HERE)]
    if impl == "epx":
        import epx

        epx_root = str(Path(epx.__file__).resolve().parent.parent)
        # An installed epx is found by the same interpreter anyway; only a source tree needs the path.
        if epx_root not in {str(Path(p).resolve()) for p in site.getsitepackages() + [site.getusersitepackages()]}:
            paths.append(epx_root)
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _run_worker(family: str, impl: str, nproc: int, model_dir: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1",
        "--master-port", str(_free_port()),
        str(WORKER),
        "--model", family, "--impl", impl, "--model-dir", str(model_dir), "--out", str(out),
    ]  # fmt: skip
    # Own session, so a hung run's whole process group (the launcher and its ranks) can be killed.
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_worker_env(impl),
        cwd=str(HERE), start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(
            f"{' '.join(cmd)} timed out after {TIMEOUT_S} s\n--- stdout ---\n{stdout[-4000:]}"
            f"\n--- stderr ---\n{_tail(stderr)}"
        )
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _tail(text: str, limit: int = 12000) -> str:
    # Drop the per-rank progress bars of weight loading, keep the end.
    lines = [line for line in text.splitlines() if "Loading weights" not in line]
    text = "\n".join(lines)
    return text if len(text) <= limit else "...\n" + text[-limit:]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("nproc", NPROCS)
@pytest.mark.parametrize("family", hf_models.FAMILIES)
def test_ep_matches_single_process(family, nproc, impl, references, tmp_path):
    if impl == "epx":
        pytest.importorskip("epx.transformers")
    model_dir, expected = references(family)
    out = tmp_path / f"{family}-{impl}-{nproc}.pt"

    run = _run_worker(family, impl, nproc, model_dir, out)
    assert run.returncode == 0 and out.exists(), (
        f"{' '.join(run.args)} exited with {run.returncode}\n--- stdout ---\n{run.stdout[-4000:]}"
        f"\n--- stderr ---\n{_tail(run.stderr)}"
    )

    actual = torch.load(out, weights_only=False)
    assert actual["impl"] == impl and actual["world_size"] == nproc
    assert actual["experts_implementation"] == expected["experts_implementation"]
    problems = hf_models.compare_results(actual, expected, logits_rtol=LOGITS_RTOL, grad_rtol=GRAD_RTOL)
    assert not problems, f"{family}, {impl}, {nproc} ranks vs single process:\n" + "\n".join(problems)


@pytest.mark.parametrize("family", hf_models.FAMILIES)
def test_reference_is_meaningful(family, references):
    """The reference itself: every routed expert of every MoE layer gets tokens and a non-zero gradient, and the
    routers get gradients, so a dispatch that drops or misroutes tokens or routing weights cannot pass unnoticed."""
    grads = references(family)[1]["grads"]
    expert_grads = {name: g for name, g in grads.items() if name.endswith("mlp.experts.down_proj")}
    assert expert_grads, f"{family}: no routed experts found"
    for name, grad in expert_grads.items():
        per_expert = grad.flatten(1).abs().amax(dim=1)
        assert grad.shape[0] == hf_models.NUM_EXPERTS and bool((per_expert > 0).all()), (
            f"{family}: {name} has experts without gradient: {per_expert.tolist()}"
        )
    routers = {name: g for name, g in grads.items() if name.endswith("mlp.gate.weight")}
    assert routers and all(g is not None and g.abs().max() > 0 for g in routers.values()), (
        f"{family}: router weights get no gradient"
    )
