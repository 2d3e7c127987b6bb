"""Autograd for dispatch and combine, so training works through epx.

    d = epx.torch.dispatch(moe, x, topk_idx, topk_weights)   # d.x tracks x
    y = experts(d.x, ...)                                      # grouped by local expert
    out = epx.torch.combine(moe, y, d, topk_weights)           # tracks y and the weights

Gradients (expert-major layout, throughput mode, native wire):
  - dispatch's backward is a combine of the row gradients without weights:
    grad_x[t] = sum over t's rows of grad_rows[row];
  - combine's backward is a dispatch of grad_out over the same routing (a
    cached dispatch, no layout work): grad_y[row] = w(row) * grad_out[t],
    and grad_w[t, k] = <grad_out[t], y[row of (t, k)]>, the dot products
    computed where y lives and brought back by one more combine.
Engines on a CUDA device (``epx.MoE(..., device="cuda")``) take and give
CUDA tensors here too, and reuse the layout the same way (their cached
dispatch keeps it in device memory, per handle).
The engine's dtype (bfloat16, float32 or float64) is the gradients' dtype
on the wire; reductions accumulate in fp32 as in the forward (in double
for a float64 engine, so ``torch.autograd.gradcheck`` runs at its usual
precision: the routing weights still travel as float32, so give weights
that float32 holds exactly and a step that keeps them so, e.g. 2**-20).
"""

import torch

from . import _C
from .moe import Dispatch

__all__ = ["dispatch", "combine"]


class _Exchange:
    """What the two Functions of one exchange share."""

    __slots__ = ("moe", "d", "idx", "w32", "layer", "row_expert", "y")


def _check(moe):
    if moe.layout != 1 or moe.mode != 0 or moe.wire != 0:
        raise _C.UnsupportedError("epx.torch: autograd needs an expert-major, throughput-mode "
                                  "engine with the native wire")


def _engine_dtype(moe):
    return {0: torch.bfloat16, 7: torch.float64}.get(moe.dtype, torch.float32)


def _device(moe):
    """Where the engine's tensors live: the CPU, or its CUDA device."""
    return torch.device("cuda", moe.device) if moe.device >= 0 else torch.device("cpu")


def _acc_dtype(moe):
    """What the reductions accumulate in: the engine's, at least float32."""
    return torch.float64 if moe.dtype == 7 else torch.float32


def _rearm(ex, x=None):
    """A cached dispatch of the same routing (x: [T, hidden] or zeros), so
    the handle can be combined once more; returns the received rows (host
    and device engines alike: device engines have it over both backends,
    the CUDA windows this package creates and NCCL)."""
    moe, d = ex.moe, ex.d
    if x is None:
        x = torch.zeros(d.num_tokens, moe.hidden, dtype=_engine_dtype(moe), device=_device(moe))
    r = moe.dispatch(x, ex.idx, ex.w32, layer=ex.layer, cached=d)
    return r.x


def _zero_padding(ex, rows):
    """Rows between aligned expert segments hold whatever the receive memory
    held: zero them (in place), so no stale value reaches the experts or
    their weights' gradients."""
    pad = ex.d.src_rank < 0
    if bool(pad.any()):
        rows[pad] = 0
    return rows


def _row_experts(ex):
    """The logical expert of each received row (-1 on padding rows)."""
    if ex.row_expert is None:
        d = ex.d
        counts = d.expert_counts.to(torch.int64)
        offsets = d.expert_offsets.to(torch.int64)
        ids = torch.full((d.num_rows,), -1, dtype=torch.int64, device=_device(ex.moe))
        local = d.local_experts.to(torch.int64)
        for j in range(len(counts)):
            c, o = int(counts[j]), int(offsets[j])
            ids[o:o + c] = int(local[j])
        ex.row_expert = ids
    return ex.row_expert


def _grad_weights(ex, rows_g, y):
    """grad_w[t, k] = <grad_out[t], y[row of (t, k)]>: each row's dot
    product goes back to its token in the column of its expert (one combine
    per `hidden` experts), then is read at topk_idx[t, k]."""
    moe, d = ex.moe, ex.d
    acc = _acc_dtype(moe)
    s = (rows_g.to(acc) * y.detach().to(acc)).sum(-1)
    experts = _row_experts(ex)
    H, E, T = moe.hidden, moe.num_experts, d.num_tokens
    dev = _device(moe)
    idx = ex.idx.to(device=dev, dtype=torch.int64)
    grad = torch.zeros(T, idx.shape[1], dtype=acc, device=dev)
    valid = idx >= 0
    for c0 in range(0, E, H):
        if c0 > 0:
            _rearm(ex)
        cols = torch.zeros(d.num_rows, H, dtype=_engine_dtype(moe), device=dev)
        sel = (experts >= c0) & (experts < c0 + H)
        rows = sel.nonzero().squeeze(1)
        cols[rows, experts[rows] - c0] = s[rows].to(cols.dtype)
        back = moe.combine(cols, d, weighted=False).to(acc)
        inside = valid & (idx >= c0) & (idx < c0 + H)
        col = (idx - c0).clamp(0, H - 1)
        grad = torch.where(inside, back.gather(1, col), grad)
    return grad  # (the library refuses an expert twice in a token's top-k)


class _DispatchFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, moe, topk_idx, topk_weights, layer, ex):
        d = moe.dispatch(x, topk_idx, topk_weights, layer=layer, copy=True)
        ex.moe, ex.d, ex.idx, ex.w32, ex.layer, ex.row_expert = moe, d, topk_idx, topk_weights, layer, None
        ctx.ex = ex
        return _zero_padding(ex, d.x)

    @staticmethod
    def backward(ctx, grad_rows):
        ex = ctx.ex
        if ex.d.handle.state != "received":
            _rearm(ex)
        g = grad_rows.to(_engine_dtype(ex.moe)).contiguous()
        grad_x = ex.moe.combine(g, ex.d, weighted=False)
        return grad_x, None, None, None, None, None


class _CombineFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, topk_weights, ex):
        ctx.ex, ctx.w_dtype = ex, topk_weights.dtype
        ctx.save_for_backward(y)
        return ex.moe.combine(y.detach().contiguous(), ex.d)

    @staticmethod
    def backward(ctx, grad_out):
        ex = ctx.ex
        (y,) = ctx.saved_tensors
        g = grad_out.to(_engine_dtype(ex.moe)).contiguous()
        rows_g = _zero_padding(ex, _rearm(ex, g).clone())
        grad_y = grad_w = None
        w_rows = ex.d.topk_weights
        if ctx.needs_input_grad[0]:
            acc = _acc_dtype(ex.moe)
            grad_y = (rows_g.to(acc) * w_rows.unsqueeze(1).to(acc)).to(y.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = _grad_weights(ex, rows_g, y).to(ctx.w_dtype)
        return grad_y, grad_w, None


def dispatch(moe, x, topk_idx, topk_weights, layer=0):
    """Dispatch with autograd: returns an :class:`epx.Dispatch` whose ``x``
    (a copy, so autograd may keep it) carries x's gradient back.  Pass the
    result and the same ``topk_weights`` to :func:`combine`."""
    _check(moe)
    if not isinstance(x, torch.Tensor):
        raise _C.InvalidError("x: a torch.Tensor is needed")
    w32 = topk_weights.detach().to(torch.float32).contiguous()
    idx = topk_idx.detach().contiguous()
    ex = _Exchange()
    rows = _DispatchFn.apply(x, moe, idx, w32, int(layer), ex)
    d = ex.d
    d._x = rows
    d._ex = ex
    return d


def combine(moe, y, d, topk_weights=None):
    """Combine with autograd: ``out[t] = sum_k w[t,k] y[row of (t, k)]``;
    gradients reach ``y`` and, when given (the weights passed to
    :func:`dispatch`), ``topk_weights``."""
    if not isinstance(d, Dispatch) or getattr(d, "_ex", None) is None:
        raise _C.InvalidError("d: the result of epx.torch.dispatch is needed")
    if d._moe is not moe:
        raise _C.InvalidError("d: a dispatch of another engine")
    ex = d._ex
    if topk_weights is None:
        topk_weights = ex.w32
    elif tuple(topk_weights.shape) != tuple(ex.w32.shape) or not torch.equal(
            topk_weights.detach().to(torch.float32), ex.w32):
        # combine applies the weights the dispatch carried; other values
        # would get gradients for a product that was never computed
        raise _C.InvalidError("topk_weights: not the weights given to epx.torch.dispatch "
                              f"(shape {tuple(topk_weights.shape)}, dispatched {tuple(ex.w32.shape)})")
    out = _CombineFn.apply(y.to(_engine_dtype(moe)), topk_weights, ex)
    return out
