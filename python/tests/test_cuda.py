"""Engines on a CUDA device (``epx.MoE(..., device=...)``): CUDA tensors in
and out, against the single-process reference (tests/reference.py), and
arguments in the wrong place refused by name.

What needs a GPU (torch with CUDA, and libepx with its CUDA module:
EPX_CONFIGURE_FLAGS without --without-cuda) is skipped elsewhere; the
refusals that need neither run everywhere."""

import numpy as np
import pytest

import ranks
import reference as ref


def gpus_or_skip(n=1):
    """Skip unless torch sees n GPUs and libepx's CUDA module is there."""
    torch = pytest.importorskip("torch")
    import epx

    if not torch.cuda.is_available() or torch.cuda.device_count() < n:
        pytest.skip(f"needs {n} CUDA device(s)")
    try:
        if epx.cuda_devices() < n:
            pytest.skip(f"libepx's CUDA module sees fewer than {n} device(s)")
    except epx.UnsupportedError as e:
        pytest.skip(f"libepx without its CUDA module ({e})")


# ---- everywhere: what is refused before any GPU work

def rank_no_gpu(rank, R):
    import epx

    comm = epx.Comm.from_env()
    # FP64 engines run on device ranks too; with a quantized wire they are
    # refused by name as on host ranks (where the CUDA module loads; without
    # it, for the missing module)
    with pytest.raises((epx.InvalidError, epx.UnsupportedError)) as e:
        epx.MoE(comm, 8, 4, 2, 4, dtype="float64", wire="fp8", device=0)
    assert e.type is epx.UnsupportedError or "FP64" in str(e.value), e.value
    for bad in ("cuda:x", "gpu", True, -2):
        with pytest.raises(epx.InvalidError, match="device"):
            epx.MoE(comm, 8, 4, 2, 4, dtype="float32", device=bad)
    ok = 0
    try:
        epx.cuda_devices()
    except epx.UnsupportedError:
        # no CUDA module (the package's default build): a device engine says
        # so on every rank, and the communicator goes on
        with pytest.raises(epx.UnsupportedError):
            epx.MoE(comm, 8, 4, 2, 4, dtype="float32", device="cuda:0")
        ok = 1
    moe = epx.MoE(comm, 8, 4, 2, 4, dtype="float32", device="cpu")
    assert moe.device == -1
    x = np.ones((2, 8), np.float32)
    d = moe.dispatch(x, np.array([[0, 1], [2, 3]]), np.full((2, 2), 0.5, np.float32))
    assert np.array_equal(moe.combine(d.x, d), x)
    moe.close()
    comm.close()
    return ok


def test_device_engines_refused_here():
    ranks.run(rank_no_gpu, 2, backend="env")


# ---- with a GPU

def rank_cuda(rank, R, seed, layout, dtype_name, ngpu):
    import torch

    import epx

    dev = rank % ngpu
    torch.cuda.set_device(dev)
    cuda = torch.device("cuda", dev)
    dtype = getattr(torch, dtype_name)
    bf16 = dtype == torch.bfloat16
    T, H, E, K = 12, 48, 8, 3
    data = ref.inputs(seed, R, T, H, E, K, drop=0.1)
    comm = epx.Comm.from_torch()
    moe = epx.MoE(comm, H, E, K, T, dtype=dtype, layout=layout, device=cuda)
    assert moe.device == dev
    x, idx, w = (torch.from_numpy(a).to(cuda) for a in data[rank])
    x = x.to(dtype)
    lo, _ = ref.local_range(rank, E, R)
    want = torch.from_numpy(ref.combine(data, rank, E, R, bf16=bf16))
    for it in range(2):  # the second round reuses the engine's memory
        d = moe.dispatch(x, idx, w)
        for t in (d.x, d.src_rank, d.src_token, d.topk_weights):
            assert t.is_cuda and t.device.index == dev, t.device
        assert d.x.dtype == dtype and not d.expert_counts.is_cuda  # counts: host memory
        rows = d.x.float().cpu().numpy()
        src, tok = d.src_rank.cpu().numpy(), d.src_token.cpu().numpy()
        y = torch.zeros_like(d.x)
        if layout == "expert_major":
            for j in range(moe.num_local_experts):
                o, c = int(d.expert_offsets[j]), int(d.expert_counts[j])
                for i in range(o, o + c):
                    xs = data[src[i]][0][tok[i]]
                    assert np.array_equal(rows[i], ref.round_bf16(xs) if bf16 else xs)
                y[o:o + c] = torch.from_numpy(ref.expert_fn(lo + j, rows[o:o + c])).to(cuda, dtype)
        else:
            tk, tw = d.topk_idx.cpu().numpy(), d.topk_weights.cpu().numpy()
            part = np.zeros((d.num_rows, H), np.float32)
            for i in range(d.num_rows):
                for k in range(K):
                    if tk[i, k] >= 0:
                        ye = ref.expert_fn(lo + tk[i, k], rows[i])
                        ye = ref.round_bf16(ye) if bf16 else ye
                        part[i] = (part[i] + np.float32(tw[i, k]) * ye).astype(np.float32)
            y = torch.from_numpy(part).to(cuda, dtype)
        if it == 0:
            out = moe.combine(y, d)   # made by torch on the engine's device
        else:
            given = torch.empty(T, H, dtype=dtype, device=cuda)
            out = moe.combine(y, d, out=given)
            assert out is given       # written in place: zero-copy
        assert out.is_cuda and out.device.index == dev and out.dtype == dtype
        if layout == "expert_major":  # the contract's order: bit for bit
            assert torch.equal(out.float().cpu(), want)
        else:  # the test's partials in numpy, which may round differently
            assert torch.allclose(out.float().cpu(), want, rtol=1e-2 if bf16 else 1e-6,
                                  atol=1e-2 if bf16 else 1e-5)
    moe.close()
    comm.close()
    return True


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
@pytest.mark.parametrize("layout", ["expert_major", "token_major"])
def test_cuda_dispatch_combine(layout, dtype_name):
    gpus_or_skip()
    import torch

    seed = np.random.SeedSequence().entropy % 2**32
    ranks.run(rank_cuda, 2, seed, layout, dtype_name, torch.cuda.device_count())


def rank_cuda_f64(rank, R, seed, layout, mode, ngpu):
    """A float64 engine on device ranks: rows arrive as sent, and combine
    is the contract's double sum (out float64), bit for bit."""
    import torch

    import epx

    dev = rank % ngpu
    torch.cuda.set_device(dev)
    cuda = torch.device("cuda", dev)
    T, H, E, K = 9, 20, 7, 3
    data = ref.inputs64(seed, R, T, H, E, K, drop=0.2)
    comm = epx.Comm.from_torch()
    moe = epx.MoE(comm, H, E, K, T, dtype=torch.float64, layout=layout,
                  mode=mode, device=cuda)
    assert moe.dtype == 7 and moe.device == dev
    x, idx, w = (torch.from_numpy(a).to(cuda) for a in data[rank])
    lo, _ = ref.local_range(rank, E, R)
    want = ref.combine64(data, rank, E, R)
    for it in range(2):
        d = moe.dispatch(x, idx, w)
        assert d.x.is_cuda and d.x.dtype == torch.float64
        rows, src, tok = d.x.cpu().numpy(), d.src_rank.cpu().numpy(), d.src_token.cpu().numpy()
        y = np.zeros_like(rows)
        if layout == "expert_major":
            offs = [int(o) for o in d.expert_offsets] + [d.num_rows]
            for j in range(moe.num_local_experts):
                for i in range(offs[j], offs[j + 1]):
                    if src[i] >= 0:
                        assert np.array_equal(rows[i], data[src[i]][0][tok[i]])
                        y[i] = ref.expert_fn64(lo + j, rows[i])
        else:
            tk, tw = d.topk_idx.cpu().numpy(), d.topk_weights.cpu().numpy()
            for i in range(d.num_rows):
                assert np.array_equal(rows[i], data[src[i]][0][tok[i]])
                part = np.zeros(H)
                for k in range(K):
                    if tk[i, k] >= 0:
                        part = part + np.float64(tw[i, k]) * ref.expert_fn64(lo + tk[i, k], rows[i])
                y[i] = part
        yt = torch.from_numpy(y).to(cuda)
        if it == 1 and mode == "ht":  # a float32 out is refused by name
            with pytest.raises(epx.InvalidError, match="out"):
                moe.combine(yt, d, out=torch.zeros(x.shape[0], H, dtype=torch.float32,
                                                   device=cuda))
        out = moe.combine(yt, d)
        assert out.is_cuda and out.dtype == torch.float64
        got = out.cpu().numpy()
        assert np.array_equal(got, want), np.abs(got - want).max()
    moe.close()
    comm.close()
    return True


@pytest.mark.parametrize("layout,mode", [("expert_major", "ht"), ("token_major", "ht"),
                                         ("expert_major", "ll")])
def test_cuda_float64(layout, mode):
    gpus_or_skip()
    import torch

    seed = np.random.SeedSequence().entropy % 2**32
    ranks.run(rank_cuda_f64, 2, seed, layout, mode, torch.cuda.device_count())


def rank_misplaced(rank, R, ngpu):
    import torch

    import epx

    dev = rank % ngpu
    torch.cuda.set_device(dev)
    cuda = torch.device("cuda", dev)
    T, H, E, K = 4, 16, 4, 2
    comm = epx.Comm.from_torch()
    moe = epx.MoE(comm, H, E, K, T, dtype=torch.float32, device=dev)
    x = torch.randn(T, H, device=cuda)
    idx = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0]], device=cuda)
    w = torch.full((T, K), 0.5, device=cuda)
    # every rank gets the same argument wrong: each is told which one, and
    # where it is against where the engine's tensors are
    for args, name in (((x.cpu(), idx, w), "x"), ((x, idx.cpu(), w), "topk_idx"),
                       ((x, idx, w.cpu()), "topk_weights"),
                       ((x.cpu().numpy(), idx, w), "x")):
        with pytest.raises(epx.InvalidError, match=rf"{name}: is in host memory \(CPU\); "
                           rf"this engine's tensors are on cuda:{dev}"):
            moe.dispatch(*args)
    if ngpu > 1:  # another device
        other = torch.device("cuda", (dev + 1) % ngpu)
        with pytest.raises(epx.InvalidError, match=rf"x: is on cuda:{other.index}; "
                           rf"this engine's tensors are on cuda:{dev}"):
            moe.dispatch(x.to(other), idx, w)
    d = moe.dispatch(x, idx, w)   # the engine still works
    with pytest.raises(epx.InvalidError, match="y: is in host memory"):
        moe.combine(d.x.cpu(), d)
    with pytest.raises(epx.InvalidError, match="out: is in host memory"):
        moe.combine(d.x, d, out=torch.empty(T, H))
    out = moe.combine(d.x, d)     # nothing was sent by the refused calls
    assert out.is_cuda and torch.allclose(out, x * w.sum(1, keepdim=True))
    with pytest.raises(epx.InvalidError, match="weights: is in host memory"):
        moe.register_weights(torch.zeros(1, 4))
    moe.close()
    # a host engine refuses CUDA tensors, naming the argument and the device
    host = epx.MoE(comm, H, E, K, T, dtype=torch.float32)
    with pytest.raises(epx.InvalidError, match=rf"x: is on cuda:{dev}; this engine's "
                       r"tensors are in host memory"):
        host.dispatch(x, idx.cpu(), w.cpu())
    host.close()
    comm.close()
    return True


def test_cuda_misplaced_arguments():
    gpus_or_skip()
    import torch

    ranks.run(rank_misplaced, 2, torch.cuda.device_count())


def rank_cuda_autograd(rank, R, seed, ngpu):
    import torch

    import epx
    import epx.torch as et

    dev = rank % ngpu
    torch.cuda.set_device(dev)
    cuda = torch.device("cuda", dev)
    T, H, E, K = 7, 6, 10, 3
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(T, H, generator=g) for _ in range(R)]
    idxs = [torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)]) for _ in range(R)]
    ws = [torch.rand(T, K, generator=g) for _ in range(R)]
    W = (torch.randn(E, H, H, generator=g) / H ** 0.5).to(cuda)
    comm = epx.Comm.from_torch()
    moe = epx.MoE(comm, H, E, K, T, dtype=torch.float32, device=cuda)
    x0, idx, w0 = xs[rank].to(cuda), idxs[rank].to(cuda), ws[rank].to(cuda)
    x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
    d = et.dispatch(moe, x, idx, w)
    ids = torch.full((d.num_rows,), -1, dtype=torch.long, device=cuda)
    for j in range(len(d.expert_counts)):
        o, c = int(d.expert_offsets[j]), int(d.expert_counts[j])
        ids[o:o + c] = int(d.local_experts[j])
    y = torch.einsum("rh,rho->ro", d.x, W[ids.clamp(min=0)] * (ids >= 0).float()[:, None, None])
    out = et.combine(moe, y, d, w)
    out.sum().backward()
    xr, wr = x0.clone().requires_grad_(), w0.clone().requires_grad_()
    ref_out = (torch.einsum("th,tkho->tko", xr, W[idx]) * wr.unsqueeze(-1)).sum(1)
    ref_out.sum().backward()
    assert out.is_cuda and x.grad.is_cuda and w.grad.is_cuda
    assert torch.allclose(out, ref_out, atol=1e-4)
    assert torch.allclose(x.grad, xr.grad, atol=1e-4)
    assert torch.allclose(w.grad, wr.grad, atol=1e-4)
    moe.close()
    comm.close()
    return True


def test_cuda_autograd():
    gpus_or_skip()
    import torch

    ranks.run(rank_cuda_autograd, 2, 5, torch.cuda.device_count())


def rank_cuda_streams(rank, R, ngpu):
    import torch

    import epx

    dev = rank % ngpu
    torch.cuda.set_device(dev)
    cuda = torch.device("cuda", dev)
    T, H, E, K = 64, 256, 4, 2
    comm = epx.Comm.from_torch()
    moe = epx.MoE(comm, H, E, K, T, dtype=torch.float32, layout="expert_major", device=dev)
    s1, s2 = torch.cuda.Stream(cuda), torch.cuda.Stream(cuda)
    idx = torch.tensor([[t % E, (t + 1) % E] for t in range(T)], device=cuda)
    w = torch.full((T, K), 0.25, device=cuda)
    for it in range(3):
        with torch.cuda.stream(s1):
            x = torch.full((T, H), float(rank + 1 + it), device=cuda)
            # keep s1 busy so that a missing wait shows as stale rows
            torch.cuda._sleep(20_000_000)
            d = moe.dispatch(x, idx, w, async_op=True)
        with torch.cuda.stream(s2):   # the rows are read on another stream
            d.wait()
            got = d.x.sum().item()
            out = moe.combine(d.x, d)
            res = out.clone()
        # expert-major: each expert is in 2T/E (token, slot) pairs and this
        # rank holds E/R experts, so every source sends 2T/R rows
        want = sum(float(s + 1 + it) for s in range(R)) * (2 * T // R) * H
        assert d.num_rows == R * (2 * T // R) and got == want, (got, want, it)
        torch.cuda.synchronize(cuda)
        assert torch.equal(res, torch.full((T, H), float(rank + 1 + it) * 0.5, device=cuda))
    moe.close()
    comm.close()
    return True


def test_cuda_stream_switch():
    """wait() and the combine under another current stream than the
    dispatch's: the current stream is made to wait for the call's."""
    gpus_or_skip()
    import torch

    ranks.run(rank_cuda_streams, 2, torch.cuda.device_count())


def rank_cuda_rebalance(rank, R, ngpu):
    import torch

    import epx

    dev = rank % ngpu
    torch.cuda.set_device(dev)
    cuda = torch.device("cuda", dev)
    E, S, H, T = 4, 8, 8, 4
    comm = epx.Comm.from_torch()
    moe = epx.MoE(comm, H, E, 1, T, dtype=torch.float32, num_slots=S, device=dev)
    old = np.arange(S) % E
    moe.set_placement(old)
    per = S // R
    # slot s holds weights filled with its expert id, in device memory
    wts = torch.tensor([[float(old[s])] * 16 for s in range(rank * per, (rank + 1) * per)],
                       device=cuda)
    moe.register_weights(wts)
    new = np.array([3, 3, 2, 2, 1, 1, 0, 0])
    st = moe.rebalance(new)
    assert wts[:, 0].tolist() == [float(new[s]) for s in range(rank * per, (rank + 1) * per)]
    assert st["received"] + st["local_copies"] + st["unchanged"] == per
    # the engine routes by the new placement: each expert's rows reach a
    # rank holding it
    x = torch.arange(T * H, dtype=torch.float32, device=cuda).reshape(T, H) + rank
    idx = torch.tensor([[t % E] for t in range(T)], device=cuda)
    w = torch.ones(T, 1, device=cuda)
    d = moe.dispatch(x, idx, w)
    held = set(int(e) for e in d.local_experts.tolist())
    assert held == set(int(new[s]) for s in range(rank * per, (rank + 1) * per))
    assert torch.equal(moe.combine(d.x, d), x)
    moe.close()
    comm.close()
    return True


def test_cuda_rebalance_moves_device_weights():
    gpus_or_skip()
    import torch

    ranks.run(rank_cuda_rebalance, 2, torch.cuda.device_count())


def rank_cuda_ready(rank, R, ngpu):
    import torch

    import epx

    dev = rank % ngpu
    torch.cuda.set_device(dev)
    cuda = torch.device("cuda", dev)
    T, H, E, K = 32, 64, 6, 2
    comm = epx.Comm.from_torch()
    moe = epx.MoE(comm, H, E, K, T, dtype=torch.float32, layout="expert_major", device=dev)
    g = torch.Generator().manual_seed(11 + rank)
    x = torch.randn(T, H, generator=g).to(cuda)
    idx = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)]).to(cuda)
    w = torch.rand(T, K, generator=g).to(cuda)
    d = moe.dispatch(x, idx, w, async_op=True)
    early = {}
    for _ in range(100000):   # readiness never goes back; rows read once ready
        for e, ok in enumerate(d.ready()):
            if ok and e not in early:
                early[e] = d.expert_x(e).clone()
        if len(early) == moe.num_local_experts:
            break
    d.wait()
    assert all(d.ready())
    for e, rows in early.items():
        assert torch.equal(rows, d.expert_x(e)), e
    assert torch.allclose(moe.combine(d.x, d), x * w.sum(1, keepdim=True), atol=1e-5)
    moe.close()
    comm.close()
    return True


def test_cuda_ready():
    """ready() and expert_x() before wait() on a device engine: the rows of
    an expert said ready are the rows wait() gives."""
    gpus_or_skip()
    import torch

    ranks.run(rank_cuda_ready, 2, torch.cuda.device_count())
