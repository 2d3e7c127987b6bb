"""epx: expert-parallel exchange for Mixture-of-Experts models.

    import epx
    comm = epx.Comm.from_torch()              # over torch.distributed's group
    moe = epx.MoE(comm, hidden=H, num_experts=E, topk=K, max_tokens=T)
    d = moe.dispatch(x, topk_idx, topk_weights)   # rows for this rank's experts
    y = experts(d.x, d.expert_counts)             # your grouped GEMM
    out = moe.combine(y, d)                       # [T, H], weights applied

Submodules: ``epx.balance`` (placement planner), ``epx.torch`` (autograd
functions), ``epx.transformers`` (the "epx" expert-parallel implementation
for Hugging Face transformers).  torch is optional: numpy arrays (any
buffer-protocol or DLPack array) work without it.
"""

import os as _os

_here = _os.path.dirname(__file__)
if "EPX_SYSTEMS_DIR" not in _os.environ and _os.path.isdir(_os.path.join(_here, "systems")):
    # the system descriptions (EPX_TOPO_FILE=gb200-nvl72) travel with the package
    _os.environ["EPX_SYSTEMS_DIR"] = _os.path.join(_here, "systems")

from . import _C  # noqa: E402
from ._C import (  # noqa: E402,F401
    AuthError,
    BootstrapError,
    Error,
    InvalidError,
    MismatchError,
    NoMemoryError,
    PeerError,
    RangeError,
    StateError,
    SystemCallError,
    TimeoutError,
    UnsupportedError,
)
from .comm import Comm  # noqa: E402
from .moe import CombineWork, Dispatch, MoE  # noqa: E402
from . import balance  # noqa: E402,F401

__version__ = _C.version
version = _C.version


def cuda_devices():
    """GPUs libepx's CUDA module sees (engines with ``device=``); raises
    epx.UnsupportedError when libepx has no CUDA module (the package's
    default build) or no driver."""
    return _C.cuda_devices()


def settings():
    """The EPX_* environment settings: [(name, default, help)]."""
    return _C.settings()


__all__ = [
    "Comm", "MoE", "Dispatch", "CombineWork", "balance", "settings", "version", "cuda_devices",
    "Error", "InvalidError", "NoMemoryError", "SystemCallError", "TimeoutError", "AuthError",
    "MismatchError", "PeerError", "StateError", "UnsupportedError", "BootstrapError", "RangeError",
]
