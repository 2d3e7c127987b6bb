"""Arrays between frameworks: epx._C.Buffer out to torch or numpy, and the
engine's dtype names.  Nothing here imports torch unless the caller's arrays
are torch tensors."""

import sys

from . import _C

# epx_dtype_t values (include/epx.h)
BF16, FP32, INT32, INT64, FP8_E4M3, UE8M0, FP4_E2M1X2, FP64 = range(8)

_DTYPE_NAMES = {"bfloat16": BF16, "bf16": BF16, "float32": FP32, "fp32": FP32, "float": FP32,
                "float64": FP64, "fp64": FP64, "double": FP64}


def dtype_code(dtype):
    """epx_dtype_t of an engine dtype given as torch.bfloat16 / torch.float32
    / torch.float64, numpy.float32 / numpy.float64, or a name ('bfloat16',
    'float32', 'float64')."""
    name = dtype if isinstance(dtype, str) else str(dtype)
    name = name.replace("torch.", "").replace("<class 'numpy.", "").rstrip("'>")
    if name in _DTYPE_NAMES:
        return _DTYPE_NAMES[name]
    raise _C.InvalidError(f"dtype: {dtype!r}; expected torch.bfloat16, torch.float32, "
                          "torch.float64 (or 'bfloat16', 'float32', 'float64', numpy.float32, "
                          "numpy.float64)")


_Tensor = None


def is_torch(obj):
    """True for a torch.Tensor, without importing torch."""
    global _Tensor
    if _Tensor is None:
        t = sys.modules.get("torch")
        if t is None:
            return False
        _Tensor = t.Tensor
    return isinstance(obj, _Tensor)


def to_torch(buf, code=None):
    import torch

    t = torch.from_dlpack(buf)
    if code == FP8_E4M3:
        t = t.view(torch.float8_e4m3fn)
    elif code == UE8M0 and hasattr(torch, "float8_e8m0fnu"):
        t = t.view(torch.float8_e8m0fnu)
    return t


def to_numpy(buf, code=None):
    import numpy as np

    return np.asarray(buf)


def wrap(buf, torch_out, code=None):
    """A Buffer as the caller's framework's array (None stays None)."""
    if buf is None:
        return None
    return to_torch(buf, code) if torch_out else to_numpy(buf, code)


def host_array(obj, name):
    """A torch tensor as epx reads it: detached (epx does not track
    gradients; epx.torch does).  Device and layout are checked by the
    extension, which names the argument."""
    if getattr(obj, "requires_grad", False):
        obj = obj.detach()
    return obj
