"""epx.torch's autograd Functions: gradients against a plain torch
reference of the whole exchange (float32 and float64 engines), and
torch.autograd.gradcheck: float32 engines at a coarse step, float64
engines at double precision on 2 to 4 ranks (and a wrong gradient it must
catch)."""

import pytest

import ranks

torch = pytest.importorskip("torch")


def setup(rank, R, seed, T, H, E, K, align=1, dtype=torch.float32):
    """An engine of `dtype` and every rank's inputs in it.  The weights are
    float32 values (in `dtype`): they travel as float32, so a float64
    gradcheck perturbs them only by steps float32 holds exactly."""
    import epx

    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(T, H, generator=g, dtype=dtype) for _ in range(R)]
    idxs = [torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)]) for _ in range(R)]
    for i in idxs:  # some skipped slots
        i[torch.rand(i.shape, generator=g) < 0.15] = -1
    # in [0.25, 1): a step of 2^-20 keeps them float32 values
    ws = [(0.25 + 0.75 * torch.rand(T, K, generator=g)).to(dtype) for _ in range(R)]
    W = torch.randn(E, H, H, generator=g, dtype=dtype) / H ** 0.5
    comm = epx.Comm.from_torch()
    moe = epx.MoE(comm, H, E, K, T, dtype=dtype, expert_alignment=align)
    return moe, xs[rank], idxs[rank], ws[rank], W


def experts(d, W):
    """Each row through its expert's matrix (padding rows: zeros)."""
    ids = torch.full((d.num_rows,), -1, dtype=torch.long)
    for j in range(len(d.expert_counts)):
        o, c = int(d.expert_offsets[j]), int(d.expert_counts[j])
        ids[o:o + c] = int(d.local_experts[j])
    Wr = W[ids.clamp(min=0)] * (ids >= 0).to(W.dtype)[:, None, None]
    return torch.einsum("rh,rho->ro", d.x, Wr)


def reference(x, idx, w, W):
    ys = torch.einsum("th,tkho->tko", x, W[idx.clamp(min=0)])
    return (ys * (w * (idx >= 0)).unsqueeze(-1)).sum(1)


def rank_grads(rank, R, seed, align, dtype):
    import epx.torch as et

    T, H, E, K = 7, 6, 10, 3  # E > H: the weight gradient takes two passes
    moe, x0, idx, w0, W = setup(rank, R, seed, T, H, E, K, align, dtype)
    # float64: the same sums in another order differ by a few ulps only
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
    d = et.dispatch(moe, x, idx, w)
    assert d.x.dtype == dtype
    out = et.combine(moe, experts(d, W), d, w)
    assert out.dtype == dtype
    probe = torch.randn(T, H, generator=torch.Generator().manual_seed(rank), dtype=dtype)
    (out * probe).sum().backward()
    xr, wr = x0.clone().requires_grad_(), w0.clone().requires_grad_()
    ref = reference(xr, idx, wr, W)
    (ref * probe).sum().backward()
    assert torch.allclose(out, ref, atol=tol, rtol=tol), (out - ref).abs().max()
    assert x.grad.dtype == w.grad.dtype == dtype
    assert torch.allclose(x.grad, xr.grad, atol=tol, rtol=tol), (x.grad - xr.grad).abs().max()
    assert torch.allclose(w.grad, wr.grad, atol=tol, rtol=tol), (w.grad - wr.grad).abs().max()
    # a second step on the same engine
    x.grad = None
    d = et.dispatch(moe, x, idx, w0)
    et.combine(moe, experts(d, W), d).sum().backward()
    xr.grad = None
    reference(xr, idx, w0, W).sum().backward()
    assert torch.allclose(x.grad, xr.grad, atol=tol, rtol=tol)
    return True


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("R,align", [(1, 1), (2, 1), (3, 4)])
def test_grads_match_torch_reference(R, align, dtype):
    ranks.run(rank_grads, R, 1234 + R, align, dtype)


def rank_gradcheck(rank, R, seed):
    import epx.torch as et

    T, H, E, K = 3, 4, 4, 2
    moe, x0, idx, w0, W = setup(rank, R, seed, T, H, E, K)

    def f(x, w):
        d = et.dispatch(moe, x, idx, w)
        return et.combine(moe, experts(d, W), d, w)

    # The engine computes in float32 (its widest dtype), so the finite
    # differences use a large step: the map is linear in x and bilinear in
    # (x, w), so central differences are exact up to float32 rounding.
    x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
    return torch.autograd.gradcheck(f, (x, w), eps=1e-2, atol=2e-3, rtol=2e-3, nondet_tol=0.0)


def test_gradcheck():
    # every rank runs gradcheck's calls in the same order: collectives line up
    assert all(ranks.run(rank_gradcheck, 2, 99))


def rank_gradcheck64(rank, R, seed, align, H, E):
    import epx.torch as et

    T, K = 3, 2
    moe, x0, idx, w0, W = setup(rank, R, seed, T, H, E, K, align, torch.float64)

    def f(x, w):
        d = et.dispatch(moe, x, idx, w)
        return et.combine(moe, experts(d, W), d, w)

    # float64 engine: gradcheck at double precision.  The step 2^-20 keeps
    # the weights (float32 values in [0.25, 1)) float32 values, as they
    # travel; x moves freely.  Tolerances a float32 step anywhere (the
    # gradients accumulated in float32, say) fails.
    x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
    ok = torch.autograd.gradcheck(f, (x, w), eps=2.0 ** -20, atol=1e-9, rtol=1e-8,
                                  nondet_tol=0.0)
    # x alone, the weights held (combine's backward without the weights'
    # extra combines)
    ok_x = torch.autograd.gradcheck(lambda x: f(x, w0), (x,), eps=2.0 ** -20, atol=1e-9,
                                    rtol=1e-8)
    return ok and ok_x


@pytest.mark.parametrize("R,align,H,E", [(2, 1, 4, 4), (3, 4, 3, 7), (4, 1, 4, 6)])
def test_gradcheck_float64(R, align, H, E):
    # (3, 4, 3, 7): E > H, so the weights' gradient takes several combines
    assert all(ranks.run(rank_gradcheck64, R, 2024 + R, align, H, E))


def rank_gradcheck64_detects(rank, R, seed):
    """gradcheck at these tolerances must catch a gradient that is wrong
    by less than float32 could tell: the weights' gradient scaled by
    (1 + 1e-6)."""
    from torch.autograd.gradcheck import GradcheckError

    import epx.torch as et

    T, H, E, K = 3, 4, 4, 2
    moe, x0, idx, w0, W = setup(rank, R, seed, T, H, E, K, 1, torch.float64)

    class Skew(torch.autograd.Function):
        @staticmethod
        def forward(ctx, w):
            return w.clone()

        @staticmethod
        def backward(ctx, g):
            return g * (1 + 1e-6)

    def f(x, w):
        d = et.dispatch(moe, x, idx, w)
        return et.combine(moe, experts(d, W), d, w)

    x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
    try:
        torch.autograd.gradcheck(lambda x, w: f(x, Skew.apply(w)), (x, w), eps=2.0 ** -20,
                                 atol=1e-9, rtol=1e-8)
    except GradcheckError:
        return True
    return False


def test_gradcheck_float64_can_fail():
    assert all(ranks.run(rank_gradcheck64_detects, 2, 7))


def rank_padding(rank, R, seed):
    """Alignment padding rows hold whatever the receive memory held; a
    stale inf there must not reach the experts' weight gradients."""
    import epx.torch as et

    T, H, E, K = 5, 4, 4, 2
    moe, x0, idx, w0, W = setup(rank, R, seed, T, H, E, K, align=8)
    idx = idx.clamp(min=0)
    idx[:, 1] = (idx[:, 0] + 1) % E
    # every token to experts 0 and 1 first: their long segments fill the
    # rows that are padding in the next dispatch's layout
    crowd = torch.tensor([[0, 1]] * T)
    poison = moe.dispatch(torch.full((T, H), float("inf")), crowd, w0)
    moe.combine(torch.zeros_like(poison.x), poison)
    Wp = W.clone().requires_grad_()
    x = x0.clone().requires_grad_()
    d = et.dispatch(moe, x, idx, w0)
    assert torch.isfinite(d.x).all()
    out = et.combine(moe, experts(d, Wp), d, w0)
    out.sum().backward()
    assert torch.isfinite(Wp.grad).all() and torch.isfinite(x.grad).all()
    Wr = W.clone().requires_grad_()
    reference(x0, idx, w0, Wr).sum().backward()
    # an expert's rows come from every rank: compare the sums over ranks
    import torch.distributed as dist

    gp, gr = Wp.grad.clone(), Wr.grad.clone()
    dist.all_reduce(gp)
    dist.all_reduce(gr)
    assert torch.allclose(gp, gr, atol=1e-5)
    with pytest.raises(Exception, match="topk_weights"):
        d2 = et.dispatch(moe, x0, idx, w0)
        et.combine(moe, experts(d2, W), d2, 2 * w0)  # not the dispatched weights
    return True


def test_padding_rows_never_reach_gradients():
    ranks.run(rank_padding, 2, 77)
