"""The MoE engine: dispatch tokens to the ranks holding their experts,
combine the expert outputs back."""

import sys

from . import _C
from . import _arrays as A

__all__ = ["MoE", "Dispatch", "CombineWork"]

_LAYOUTS = {"token_major": 0, "expert_major": 1}
_MODES = {"ht": 0, "throughput": 0, "ll": 1, "low_latency": 1}
_WIRES = {None: 0, "native": 0, "fp8": 1, "fp8_ue8m0": 2, "mxfp8": 3, "nvfp4": 4}
_WIRE_SCALE = {1: A.FP32, 2: A.UE8M0, 3: A.UE8M0, 4: A.FP8_E4M3}
_REPLICA = {"local_first": 0, "round_robin": 1}
_LL_DROP, _HIERARCHICAL, _ELASTIC = 0x1, 0x2, 0x4


def _device_ordinal(device):
    """epx_moe_params_t.device of ``device``: -1 (host) for None, "cpu" or a
    CPU torch.device; the CUDA ordinal of an int >= 0, "cuda", "cuda:N" or
    a CUDA torch.device ("cuda" alone: torch's current device)."""
    if device is None:
        return -1
    if isinstance(device, bool):
        raise _C.InvalidError(f"device: {device!r}; expected None, 'cpu', 'cuda[:N]' or an ordinal")
    if isinstance(device, int):
        if device < -1:
            raise _C.InvalidError(f"device: {device}; expected -1 (host) or a CUDA ordinal >= 0")
        return device
    kind, index = None, None
    if isinstance(device, str):
        kind, _, ix = device.partition(":")
        index = int(ix) if ix.isdigit() else (None if ix == "" else -2)
    elif type(device).__name__ == "device" and hasattr(device, "type"):  # torch.device
        kind, index = device.type, device.index
    if kind == "cpu" and index is None:
        return -1
    if kind == "cuda" and (index is None or index >= 0):
        if index is None:
            import torch

            index = torch.cuda.current_device()
        return index
    raise _C.InvalidError(f"device: {device!r}; expected None, 'cpu', 'cuda', 'cuda:N' or an ordinal")


def _stream(moe):
    """The cudaStream_t of a device engine's calls: torch's current stream
    on the engine's device (None on host engines)."""
    if moe.device < 0:
        return None
    import torch

    return torch.cuda.current_stream(moe.device).cuda_stream


def _join(moe, stream):
    """Order torch's current stream after ``stream``, the one a device
    engine's call ran on, when the caller switched streams since (the
    library orders the call's results on ``stream`` only, and a DLPack
    consumer's stream is not waited on by the export)."""
    if stream is None:
        return
    import torch

    cur = torch.cuda.current_stream(moe.device)
    if cur.cuda_stream != stream:
        cur.wait_stream(torch.cuda.ExternalStream(stream, device=torch.device("cuda", moe.device)))


def _choice(table, value, name):
    try:
        return table[value]
    except (KeyError, TypeError):
        keys = ", ".join(repr(k) for k in table if k is not None)
        raise _C.InvalidError(f"{name}: {value!r}; expected one of {keys}") from None


# recv fields a device engine gives as views of device memory (besides x
# and x_scales, which stay views as on the host).
_DEVICE_ROWS = ("src_rank", "src_token", "topk_idx", "topk_weights", "expert_counts",
                "x_global_scale")


class Dispatch:
    """What one dispatch delivered to this rank, and its routing record.

    ``x`` holds the received rows, grouped by local expert in ascending
    order (expert-major) with ``expert_counts[j]`` rows for local expert j
    starting at row ``expert_offsets[j]``; with ``expert_alignment=1`` it
    has exactly ``expert_counts.sum()`` rows.  Token-major: one row per
    source token, with ``topk_idx`` (local expert ids, -1 elsewhere) and
    ``topk_weights`` per row.  Low latency: ``[local experts * ranks *
    capacity]`` rows, source s's rows for expert j from row ``(j * ranks + s)
    * capacity`` (``src_rank`` is -1 on padding rows).

    ``x`` (and ``x_scales``) are views of the engine's receive memory, not
    copies: read them, or write the expert outputs over ``x`` and pass it
    to combine, before this dispatch's combine or the engine's next
    dispatch (throughput mode), after which the memory holds other rows.
    Use ``dispatch(..., copy=True)`` for rows that must outlive that.  The
    other fields are copies.
    """

    __slots__ = ("_moe", "_h", "_info", "_torch", "_x", "_T", "_copy", "_ex", "_poll",
                 "_stream", "__weakref__")

    def __init__(self, moe, handle, torch_out, T, copy, stream=None):
        self._moe, self._h, self._torch = moe, handle, torch_out
        self._stream = stream  # a device engine's: the dispatch's stream
        self._info = None
        self._x = None
        self._T = T
        self._copy = copy
        self._ex = None  # epx.torch's autograd state
        self._poll = None  # the last ready(): (mask, x, offsets, counts)

    # -- completion ---------------------------------------------------
    def wait(self):
        """Wait until every source's rows have arrived (returns self)."""
        if self._info is None:
            info = self._h.recv()
            _join(self._moe, self._stream)  # before the copies below
            x = A.wrap(info["x"], self._torch, self._moe._xcode)
            if self._copy:
                x = x.clone() if self._torch else x.copy()
            if self._moe.device >= 0:
                # device engines: the per-row arrays are views of device
                # memory the next dispatch reuses; copies, as on the host
                # (on the current stream, after the engine's work)
                for k in _DEVICE_ROWS:
                    v = info.get(k)
                    if isinstance(v, _C.Buffer):
                        info[k] = A.to_torch(v).clone()
            self._x = x
            self._info = info
        return self

    def is_completed(self):
        return self._info is not None

    def ready(self):
        """Per local expert, whether all its rows have arrived (a list of
        bools), without waiting (after ``wait()`` they all are).  The rows
        of a ready expert are ``expert_x(e)``, before ``wait()``."""
        if self._info is not None:
            return [True] * self._moe.num_local_experts
        mask, _, x, offsets, counts = self._h.poll()
        self._poll = (mask, x, offsets, counts)
        return [b != 0 for b in mask]

    def expert_ready(self, e):
        """Whether local expert ``e`` (0 .. num_local_experts - 1) has all
        its rows."""
        n = self._moe.num_local_experts
        if not 0 <= e < n:
            raise _C.InvalidError(f"e: local expert {e} out of range [0, {n})")
        return self.ready()[e]

    def expert_x(self, e):
        """The rows of local expert ``e`` (a view), expert-major layout.
        Before ``wait()`` (throughput mode): the rows once ``ready()`` says
        the expert has them all, else None, so expert compute can start
        while other experts' rows still arrive.  Low latency: after
        ``wait()``, the expert's whole segment, padding rows included."""
        n = self._moe.num_local_experts
        if not 0 <= e < n:
            raise _C.InvalidError(f"e: local expert {e} out of range [0, {n})")
        if self._moe.layout != 1:
            raise _C.UnsupportedError("expert_x: token-major rows are not grouped by expert")
        if self._info is None:
            if self._moe.mode == 1:
                raise _C.UnsupportedError("expert_x: low latency gives the rows after wait()")
            if (self._poll is None or not self._poll[0][e]) and not self.ready()[e]:
                return None
            _, x, offsets, counts = self._poll
            o, c = memoryview(offsets)[e], memoryview(counts)[e]
            return A.wrap(x, self._torch, self._moe._xcode)[o:o + c]
        if self._moe.mode == 1:
            seg = self._moe.comm.size * self.capacity
            return self.x[e * seg:(e + 1) * seg]
        o, c = int(self.expert_offsets[e]), int(self.expert_counts[e])
        return self.x[o:o + c]

    # -- what arrived -------------------------------------------------
    def _get(self, key, code=None):
        self.wait()
        v = self._info[key]
        if isinstance(v, _C.Buffer):
            v = A.wrap(v, self._torch, code)
            self._info[key] = v
        return v

    @property
    def x(self):
        self.wait()
        return self._x

    @property
    def num_rows(self):
        return self.wait()._info["num_rows"]

    expert_counts = property(lambda self: self._get("expert_counts"), doc="rows per local expert")
    expert_offsets = property(lambda self: self._get("expert_offsets"), doc="first row of each local expert")
    src_rank = property(lambda self: self._get("src_rank"), doc="source rank of each row (-1: padding)")
    src_token = property(lambda self: self._get("src_token"), doc="token index on the source rank")
    topk_idx = property(lambda self: self._get("topk_idx"), doc="token-major: local expert ids per row")
    topk_weights = property(lambda self: self._get("topk_weights"), doc="routing weight(s) of each row")
    weights = topk_weights
    local_experts = property(lambda self: self._get("local_experts"), doc="logical expert of each local expert")
    capacity = property(lambda self: self._get("capacity"), doc="low latency: rows per (expert, source)")
    num_dropped = property(lambda self: self._get("num_dropped"), doc="low latency: rows dropped")

    @property
    def lost(self):
        """Elastic engines (``elastic=True``): [tokens, topk] uint8, 1 where
        the entry named an expert lost in the layer's placement (it was sent
        nowhere and combine leaves it out), else 0.  None otherwise.  Device
        engines: a CUDA tensor of the device, written in the current
        stream's order (ready once the dispatch is received)."""
        b = self._h.lost
        if b is None or A.is_torch(b):
            return b
        return A.wrap(b, self._torch)

    @property
    def x_scales(self):
        self.wait()
        if "x_scales" not in self._info:
            return None
        return self._get("x_scales", _WIRE_SCALE.get(self._moe.wire))

    @property
    def x_global_scale(self):
        self.wait()
        return self._get("x_global_scale") if "x_global_scale" in self._info else None

    @property
    def num_tokens(self):
        """Tokens this rank dispatched."""
        return self._T

    @property
    def handle(self):
        return self._h

    def release(self):
        """Free the routing record now (else when this object goes)."""
        self._h.release()

    def __repr__(self):
        s = f"rows={self._info['num_rows']}" if self._info else "in flight"
        return f"epx.Dispatch({s}, tokens={self._T}, {self._h.state})"


class CombineWork:
    """A combine in flight (``combine(..., async_op=True)``)."""

    __slots__ = ("_d", "_out", "_torch", "_res", "_stream")

    def __init__(self, d, out, torch_out, stream=None):
        self._d, self._out, self._torch, self._res = d, out, torch_out, None
        self._stream = stream  # a device engine's: the combine's stream

    def wait(self):
        """The combined output, [tokens, hidden]."""
        if self._res is None:
            out = self._out
            res = self._d._h.combine_recv(out=out)
            _join(self._d._moe, self._stream)
            self._res = out if out is not None else A.wrap(res, self._torch)
        return self._res

    def is_completed(self):
        return self._res is not None


def _torch_dtype(name):
    return lambda: getattr(__import__("torch"), name)


_TORCH_DTYPES = {A.BF16: _torch_dtype("bfloat16"), A.FP32: _torch_dtype("float32"),
                 A.FP64: _torch_dtype("float64")}


class MoE(_C.MoE):
    """An expert-parallel engine (epx_moe_t) over a communicator.

    Collective: every rank creates it with the same arguments.  Experts are
    placed contiguously (``expert_rank(e)``; this rank holds experts
    ``first_local_expert .. first_local_expert + num_local_experts - 1``)
    unless ``num_slots`` gives replicas placed by ``set_placement``.

    Args:
        comm: an :class:`epx.Comm`.
        hidden, num_experts, topk: the token size H, experts E, experts per
            token K.
        max_tokens: the most tokens one rank dispatches in one call.
        dtype: torch.bfloat16 (default), torch.float32 or torch.float64
            (or their names): x, expert outputs and combine's output.
            float64 (host and device ranks, wire None, every mode and
            layout) carries the rows as they are and combines in double:
            for references and ``torch.autograd.gradcheck``.
        layout: "expert_major" (rows grouped by expert, for a grouped GEMM)
            or "token_major" (one row per source token).
        expert_alignment: expert-major segments start at multiples of it.
        mode: "ht" (throughput; count exchange, compact receive) or "ll"
            (low latency; fixed capacity per (expert, source), no host
            synchronisation).
        wire: None (x as given), "fp8", "fp8_ue8m0", "mxfp8" or "nvfp4":
            quantize bf16 x on dispatch.
        num_layers, stats_decay: load statistics (``stats()``).
        num_slots: physical expert slots (replicas), see ``set_placement``.
        ll_capacity, ll_buffers, ll_drop: low-latency capacity per (expert,
            source), calls in flight, drop rows beyond capacity.
        hierarchical: cross between NVLink/host domains once per domain.
        elastic: placements may leave experts out (lost, e.g. after a rank
            was lost) and num_slots may be below num_experts; entries naming
            a lost expert are not sent, combine leaves them out, and
            ``Dispatch.lost`` marks them (needs num_slots; on device
            engines a CUDA tensor).
        device: where this rank's tensors live: None or "cpu" (host
            memory, the default), or a CUDA device ("cuda", "cuda:N", an
            ordinal, a torch.device; libepx with its CUDA module, every rank
            a device rank).  A device engine takes CUDA tensors of that
            device only (an argument elsewhere raises, naming it), orders
            its work on torch's current stream of the device, and gives
            CUDA tensors: ``Dispatch.x`` a view of its receive memory (the
            same lifetime as on the host), the other per-row fields copies,
            combine's output a tensor made with torch (or ``out``), all
            ready in the current stream's order (``Dispatch.lost`` of an
            ``elastic`` engine too).  ``hierarchical`` runs over both
            backends, float64 too.
        num_sms: device engines: blocks of the data kernels (0: the
            device's SMs shared by the ranks on it).

    Thread safety: one thread drives an engine at a time.
    """

    def __init__(self, comm, hidden, num_experts, topk, max_tokens, dtype="bfloat16",
                 layout="expert_major", expert_alignment=1, mode="ht", wire=None,
                 num_layers=1, stats_decay=0.9, num_slots=0, ll_capacity=0, ll_buffers=0,
                 ll_drop=False, hierarchical=False, elastic=False, device=None, num_sms=0):
        if not isinstance(comm, _C.Comm):
            raise _C.InvalidError(f"comm: an epx.Comm is needed, not {type(comm).__name__}")
        try:
            flags = ((_LL_DROP if ll_drop else 0) | (_HIERARCHICAL if hierarchical else 0)
                     | (_ELASTIC if elastic else 0))
            self._code = A.dtype_code(dtype)
            args = (int(hidden), int(num_experts), int(topk), int(max_tokens), self._code,
                    _choice(_LAYOUTS, layout, "layout"), int(expert_alignment),
                    _choice(_MODES, mode, "mode"), _choice(_WIRES, wire, "wire"), int(num_layers),
                    float(stats_decay), int(num_slots), int(ll_capacity), int(ll_buffers), flags,
                    _device_ordinal(device), int(num_sms))
        except Exception:
            # creation is collective: fail it on every rank (hidden -1 is
            # refused by the library, which agrees the failure with the peers)
            try:
                super().__init__(comm, -1, 0, 0, 0)
            except Exception:
                pass
            raise
        super().__init__(comm, *args)
        self._elastic = bool(elastic)
        self._xcode = {1: A.FP8_E4M3, 2: A.FP8_E4M3, 3: A.FP8_E4M3}.get(self.wire)

    # -- dispatch / combine -------------------------------------------
    def dispatch(self, x, topk_idx, topk_weights, *, layer=0, async_op=False, copy=False,
                 cached=None, global_scale=None):
        """Send each token to the ranks holding its experts.

        Args:
            x: [T, hidden] in the engine dtype (T <= max_tokens, may be 0).
            topk_idx: [T, topk] int32 or int64 expert ids; -1 skips a slot.
            topk_weights: [T, topk] float32 routing weights.
            layer: the layer, for the load statistics.
            async_op: return once this rank's tokens are sent; ``wait()``,
                ``ready()`` and ``expert_ready(e)`` on the result.
            copy: give ``x`` as a copy rather than a view of receive memory.
            cached: an earlier :class:`Dispatch` of this engine with the
                same routing on every rank: reuse its layout.
            global_scale: NVFP4 wire: the caller's tensor scale.

        Collective.  A bad argument on any rank fails the call on every
        rank (``epx.PeerError`` on the others) with nothing sent, and the
        engine stays usable.
        """
        torch_out = A.is_torch(x) or self.device >= 0   # device memory: torch
        try:
            x = A.host_array(x, "x")
            topk_idx = A.host_array(topk_idx, "topk_idx")
            topk_weights = A.host_array(topk_weights, "topk_weights")
            ch = None
            if cached is not None:
                if not isinstance(cached, Dispatch) or cached._moe is not self:
                    raise _C.InvalidError("cached: an epx.Dispatch of this engine is needed")
                ch = cached._h
            gs = float(global_scale or 0.0)
            layer = int(layer)
            stream = _stream(self)
            lost = None
            if self._elastic and self.device >= 0:
                # device engines write the lost mask into device memory,
                # on the engine's stream (ready in the stream's order)
                import torch

                lost = torch.empty(len(x), self.topk, dtype=torch.uint8,
                                   device=torch.device("cuda", self.device))
        except Exception:
            self._fail_dispatch()
            raise
        h = self.dispatch_send(x, topk_idx, topk_weights, layer=layer, cached=ch, global_scale=gs,
                               stream=stream, lost=lost)
        d = Dispatch(self, h, torch_out, len(x), copy, stream)
        if not async_op:
            d.wait()
        return d

    def combine(self, y, d, out=None, *, weighted=True, async_op=False):
        """Bring the expert outputs back: ``out[t] = sum_k w[t,k] * y[row of
        (t, expert k)]``, accumulated in fp32 (float64 engines: in double)
        in a fixed order (bitwise reproducible).

        Args:
            y: [d.num_rows, hidden] in the engine dtype, in d's row layout
                (may be ``d.x`` itself, overwritten with the outputs; on a
                device engine with ``EPX_CUDA_KERNELS=fused`` peers then
                read those rows in place, so leave ``d.x`` unchanged until
                this engine's next dispatch).
            d: the :class:`Dispatch` these rows came from (after ``wait()``).
            out: optional [T, hidden] bfloat16/float32 tensor to write
                (float64 for a float64 engine).
            weighted: apply the routing weights (expert-major); False when
                y is already weighted.
            async_op: return a :class:`CombineWork` after sending.

        A bad ``y`` or ``out`` raises on this rank only; nothing is sent and
        the call may be retried.
        """
        if not isinstance(d, Dispatch):
            raise _C.InvalidError(f"d: the epx.Dispatch of these rows is needed, not {type(d).__name__}")
        if d._moe is not self:
            raise _C.InvalidError("d: a dispatch of another engine")
        d.wait()
        torch_out = A.is_torch(y) or self.device >= 0
        y = A.host_array(y, "y")
        if out is not None:
            if A.is_torch(out) and out.requires_grad:
                raise _C.InvalidError("out: a tensor that requires grad (use epx.torch.combine)")
            out = A.host_array(out, "out")
        elif self.device >= 0:
            # the library writes into the caller's memory: made by torch on
            # the engine's device (zero-copy: the result is this tensor)
            import torch

            out = torch.empty(d.num_tokens, self.hidden, dtype=_TORCH_DTYPES[self.dtype](),
                              device=torch.device("cuda", self.device))
        stream = _stream(self)
        d._h.combine_send(y, unweighted=not weighted, out=out, stream=stream)
        w = CombineWork(d, out, torch_out, stream)
        return w if async_op else w.wait()

    def _fail_dispatch(self):
        """Take part in dispatch's status agreement with a bad call, so the
        peers fail this call too (epx.PeerError) instead of waiting."""
        try:
            self.dispatch_send(None, None, None)
        except _C.Error:
            pass

    # -- placement and statistics -----------------------------------------
    def stats(self, global_=False):
        """Load statistics: ``window`` [layers, experts] tokens per expert
        since the reset, ``decayed`` (float64) the decayed load per
        dispatch, ``physical`` [layers, slots], ``dispatches``,
        ``dispatch_bytes``, ``combine_bytes``.  ``global_=True`` sums over
        the ranks (collective).  Arrays are torch tensors when torch is
        imported, else numpy."""
        s = super().stats(global_)
        torch_out = sys.modules.get("torch") is not None
        return {k: A.wrap(v, torch_out) if isinstance(v, _C.Buffer) else v for k, v in s.items()}

    def set_placement(self, phy2log, layer=0, policy="local_first"):
        """Place the layer's experts on the slots: ``phy2log[s]`` is the
        logical expert of slot s (engines with num_slots; every rank the
        same, e.g. from :func:`epx.balance.plan`)."""
        super().set_placement(int(layer), _int32(phy2log, "phy2log"), _choice(_REPLICA, policy, "policy"))

    def expert_lost(self, e, layer=0):
        """Whether logical expert ``e`` has no slot in the layer's placement
        (lost; only an ``elastic`` engine's placements leave experts out)."""
        return super().expert_lost(int(layer), int(e))

    def register_weights(self, weights, layer=0):
        """Register this rank's expert weights of a layer for
        :meth:`rebalance`: [slots per rank, ...], contiguous, in host memory
        (device engines: a CUDA tensor of the engine's device), kept alive
        by the engine.  Collective: a bad argument on one rank fails the
        call on every rank."""
        self._settle()
        super().register_weights(int(layer), A.host_array(weights, "weights"))

    def _settle(self):
        """Device engines: the weights are read and written by the
        engine's own streams, so the work queued on the current stream
        (the caller's writes of the weights) finishes first."""
        if self.device >= 0:
            import torch

            torch.cuda.current_stream(self.device).synchronize()

    def rebalance(self, phy2log, layer=0, policy="local_first"):
        """Move the registered weights to a new placement and switch the
        layer to it (collective, between dispatches); returns counts of the
        slots kept, copied locally, received and sent."""
        try:
            args = (int(layer), _int32(phy2log, "phy2log"), _choice(_REPLICA, policy, "policy"))
        except Exception:
            try:  # the library refuses None on every rank: the peers fail too
                super().rebalance(int(layer) if isinstance(layer, int) else 0, None)
            except _C.Error:
                pass
            raise
        self._settle()
        st = super().rebalance(*args)
        if self.device >= 0:
            # the new weights land on the engine's streams: usable from any
            # stream once the call returns
            import torch

            torch.cuda.synchronize(self.device)
        return st

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        if self.closed:
            return "epx.MoE(closed)"
        return (f"epx.MoE(hidden={self.hidden}, experts={self.num_experts}, topk={self.topk}, "
                f"local={self.first_local_expert}..{self.first_local_expert + self.num_local_experts - 1})")


def _int32(a, name):
    """An int32 host array of a placement (any int array or list)."""
    if A.is_torch(a):
        return A.host_array(a, name).to(dtype=__import__("torch").int32).contiguous()
    import numpy as np

    return np.ascontiguousarray(a, dtype=np.int32)
