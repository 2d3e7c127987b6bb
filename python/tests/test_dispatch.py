"""dispatch and combine over real ranks against the single-process
reference (tests/reference.py), numpy and torch, fresh random inputs and
the edge cases: zero tokens, one rank, odd sizes, every expert on one rank,
-1 entries."""

import numpy as np
import pytest

import ranks
import reference as ref


def check_received(d, data, rank, E, R, np_of):
    """Every row this rank received against the reference's set of rows."""
    want = ref.expected_rows(data, rank, E, R)
    counts, offsets = np_of(d.expert_counts), np_of(d.expert_offsets)
    src, tok, w = np_of(d.src_rank), np_of(d.src_token), np_of(d.weights)
    x = np_of(d.x)
    lo, _ = ref.local_range(rank, E, R)
    assert list(np_of(d.local_experts)) == list(range(lo, lo + len(want)))
    assert len(counts) == len(want)
    for j, rows in want.items():
        assert counts[j] == len(rows), (j, counts[j], len(rows))
        seg = range(offsets[j], offsets[j] + counts[j])
        got = sorted((int(src[i]), int(tok[i]), i) for i in seg)
        assert [(s, t) for s, t, _ in got] == [(s, t) for s, t, _ in rows]
        for (s, t, i), (_, _, k) in zip(got, rows):
            assert np.array_equal(x[i], data[s][0][t]), (j, s, t)
            assert w[i] == data[s][2][t, k]
    return sum(len(v) for v in want.values())


def rank_numpy(rank, R, seed, T, H, E, K, drop, skew, align):
    import epx

    data = ref.inputs(seed, R, T, H, E, K, drop=drop, skew=skew)
    maxT = max(len(x) for x, _, _ in data)
    comm = epx.Comm.from_env()
    moe = epx.MoE(comm, H, E, K, max(maxT, 1), dtype="float32", expert_alignment=align)
    x, idx, w = data[rank]
    for it in range(2):  # the second call reuses the engine's memory
        d = moe.dispatch(x, idx.astype(np.int32) if it else idx, w)
        n = check_received(d, data, rank, E, R, np.asarray)
        if align == 1:
            assert d.num_rows == n == d.x.shape[0]
        else:
            assert all(o % align == 0 for o in d.expert_offsets)
        lo, _ = ref.local_range(rank, E, R)
        y = np.zeros_like(d.x)
        for j in range(moe.num_local_experts):
            o, c = d.expert_offsets[j], d.expert_counts[j]
            y[o:o + c] = ref.expert_fn(lo + j, d.x[o:o + c])
        out = moe.combine(y, d)
        assert out.dtype == np.float32 and out.shape == (len(x), H)
        assert np.array_equal(out, ref.combine(data, rank, E, R)), np.abs(out - ref.combine(data, rank, E, R)).max()
    moe.close()
    comm.close()
    return n


CASES = [
    # R, T, H, E, K, drop, skew, align
    (1, 7, 16, 4, 2, 0.0, None, 1),            # one rank
    (2, 9, 33, 8, 3, 0.0, None, 1),            # odd hidden
    (3, [5, 0, 11], 24, 7, 3, 0.2, None, 1),   # odd ranks and experts, zero tokens, -1 slots
    (4, 16, 64, 16, 4, 0.0, [0, 1, 2, 3], 1),  # every token to the experts of rank 0
    (4, [0, 0, 0, 0], 8, 8, 2, 0.0, None, 1),  # nothing at all
    (2, 13, 40, 6, 6, 0.5, None, 4),           # topk = experts, alignment 4
]


@pytest.mark.parametrize("case", CASES, ids=[f"R{c[0]}-E{c[3]}-K{c[4]}" for c in CASES])
def test_dispatch_combine_numpy(case):
    R = case[0]
    seed = np.random.SeedSequence().entropy % 2**32  # fresh inputs every run
    ranks.run(rank_numpy, R, seed, *case[1:], backend="env")


def rank_torch(rank, R, seed, bf16, layout):
    import torch

    import epx

    T, H, E, K = 12, 48, 8, 3
    data = ref.inputs(seed, R, T, H, E, K, drop=0.1)
    dtype = torch.bfloat16 if bf16 else torch.float32
    comm = epx.Comm.from_torch()
    moe = epx.MoE(comm, H, E, K, T, dtype=dtype, layout=layout)
    x, idx, w = (torch.from_numpy(a) for a in data[rank])
    x = x.to(dtype)
    d = moe.dispatch(x, idx, w)
    assert isinstance(d.x, torch.Tensor) and d.x.dtype == dtype
    lo, _ = ref.local_range(rank, E, R)
    if layout == "expert_major":
        src = [(np.asarray(a[0]).astype(np.float32) if not bf16 else ref.round_bf16(a[0]), a[1], a[2])
               for a in data]
        check_received(d, src, rank, E, R, lambda t: t.float().numpy() if t.is_floating_point() else t.numpy())
        y = torch.empty_like(d.x)
        for j in range(moe.num_local_experts):
            o, c = int(d.expert_offsets[j]), int(d.expert_counts[j])
            y[o:o + c] = torch.from_numpy(ref.expert_fn(lo + j, d.x[o:o + c].float().numpy())).to(dtype)
        # in place: the outputs over the received rows
        d.x.copy_(y)
        out = moe.combine(d.x, d)
        want = ref.combine(data, rank, E, R, bf16=bf16)
        assert torch.equal(out.float(), torch.from_numpy(want))
    else:
        # token-major: one row per source token with its local experts
        rows = d.x.float().numpy()
        tk = d.topk_idx.numpy()
        tw = d.topk_weights.numpy()
        y = np.zeros_like(rows)
        for i in range(d.num_rows):
            s, t = int(d.src_rank[i]), int(d.src_token[i])
            xs = ref.round_bf16(data[s][0][t]) if bf16 else data[s][0][t]
            assert np.array_equal(rows[i], xs)
            part = np.zeros(H, np.float32)
            for k in range(K):
                if tk[i, k] >= 0:
                    assert data[s][1][t, k] == lo + tk[i, k] and tw[i, k] == data[s][2][t, k]
                    ye = ref.expert_fn(lo + tk[i, k], rows[i])
                    part = (part + np.float32(tw[i, k]) * (ref.round_bf16(ye) if bf16 else ye)).astype(np.float32)
            y[i] = part
        out = moe.combine(torch.from_numpy(y).to(dtype), d)
        want = ref.combine(data, rank, E, R, bf16=bf16)
        assert torch.allclose(out.float(), torch.from_numpy(want), rtol=1e-2 if bf16 else 1e-6, atol=1e-2 if bf16 else 1e-5)
    return True


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("layout", ["expert_major", "token_major"])
def test_dispatch_combine_torch(bf16, layout):
    pytest.importorskip("torch")
    seed = np.random.SeedSequence().entropy % 2**32
    ranks.run(rank_torch, 3, seed, bf16, layout)


def rank_f64(rank, R, seed, layout, mode, lib):
    """A float64 engine over numpy or torch arrays: the rows arrive as
    sent, and combine is the contract's double sum, bit for bit."""
    import epx

    T, H, E, K = 9, 20, 7, 3
    data = ref.inputs64(seed, R, T, H, E, K, drop=0.2)
    if lib == "torch":
        import torch

        comm = epx.Comm.from_torch()
        dt, arr, np_of = torch.float64, torch.from_numpy, lambda t: t.numpy()
    else:
        comm = epx.Comm.from_env()
        dt, arr, np_of = "float64", (lambda a: a), np.asarray
    moe = epx.MoE(comm, H, E, K, T, dtype=dt, layout=layout, mode=mode,
                  expert_alignment=4 if mode == "ht" else 1)
    assert moe.dtype == 7
    x, idx, w = data[rank]
    lo, _ = ref.local_range(rank, E, R)
    for it in range(2):
        d = moe.dispatch(arr(x), arr(idx), arr(w))
        rows, src, tok = np_of(d.x), np_of(d.src_rank), np_of(d.src_token)
        assert rows.dtype == np.float64 and rows.shape == (d.num_rows, H)
        y = np.zeros_like(rows)
        if layout == "expert_major":
            offs = [int(o) for o in np_of(d.expert_offsets)] + [d.num_rows]
            for j in range(moe.num_local_experts):
                for i in range(offs[j], offs[j + 1]):
                    if src[i] >= 0:
                        assert np.array_equal(rows[i], data[src[i]][0][tok[i]])
                        y[i] = ref.expert_fn64(lo + j, rows[i])
        else:  # the rank's whole part of the token, its experts in top-k order
            tk, tw = np_of(d.topk_idx), np_of(d.topk_weights)
            for i in range(d.num_rows):
                assert np.array_equal(rows[i], data[src[i]][0][tok[i]])
                part = np.zeros(H)
                for k in range(K):
                    if tk[i, k] >= 0:
                        part = part + np.float64(tw[i, k]) * ref.expert_fn64(lo + tk[i, k], rows[i])
                y[i] = part
        if it == 1 and mode == "ht":  # a float32 out is refused by name, and nothing is lost
            with pytest.raises(epx.InvalidError, match="out"):
                moe.combine(arr(y), d, out=arr(np.zeros((len(x), H), np.float32)))
        out = np_of(moe.combine(arr(y), d))
        assert out.dtype == np.float64
        want = ref.combine64(data, rank, E, R)
        assert np.array_equal(out, want), np.abs(out - want).max()
    moe.close()
    comm.close()
    return True


@pytest.mark.parametrize("R,layout,mode,lib", [
    (1, "expert_major", "ht", "numpy"),
    (3, "expert_major", "ht", "numpy"),
    (2, "token_major", "ht", "numpy"),
    (3, "token_major", "ht", "torch"),
    (2, "expert_major", "ht", "torch"),
    (3, "expert_major", "ll", "torch"),
])
def test_float64_engine(R, layout, mode, lib):
    if lib == "torch":
        pytest.importorskip("torch")
    seed = np.random.SeedSequence().entropy % 2**32
    ranks.run(rank_f64, R, seed, layout, mode, lib, backend="gloo" if lib == "torch" else "env")


def rank_f64_refused(rank, R):
    import epx

    comm = epx.Comm.from_env()
    with pytest.raises(epx.InvalidError, match="FP64"):  # quantized wires quantize bf16
        epx.MoE(comm, 8, 4, 2, 4, dtype="float64", wire="fp8")
    moe = epx.MoE(comm, 8, 4, 2, 4, dtype="float64")
    with pytest.raises(epx.InvalidError, match="x"):  # float32 rows for a float64 engine
        moe.dispatch(np.zeros((2, 8), np.float32), np.array([[0, 1], [2, 3]]), np.ones((2, 2), np.float32))
    moe.close()
    comm.close()
    return True


def test_float64_refusals():
    ranks.run(rank_f64_refused, 2, backend="env")


def rank_async(rank, R, seed):
    import torch

    import epx

    T, H, E, K = 10, 32, 8, 2
    data = ref.inputs(seed, R, T, H, E, K)
    comm = epx.Comm.from_torch()
    moe = epx.MoE(comm, H, E, K, T, dtype=torch.float32)
    x, idx, w = (torch.from_numpy(a) for a in data[rank])
    results = []
    for _ in range(2):
        d = moe.dispatch(x, idx, w, async_op=True)
        ready = d.ready()
        assert len(ready) == moe.num_local_experts
        got = {}
        while len(got) < moe.num_local_experts:  # compute on ready experts first
            for e, ok in enumerate(d.ready()):
                if ok and e not in got:
                    got[e] = d.expert_x(e).clone()
        assert d.expert_ready(0) in (True, False)
        with pytest.raises(epx.InvalidError):
            d.expert_ready(moe.num_local_experts)
        d.wait()
        for e, rows in got.items():  # the rows seen before wait() are the rows
            assert torch.equal(rows, d.expert_x(e))
            o, c = int(d.expert_offsets[e]), int(d.expert_counts[e])
            assert torch.equal(rows, d.x[o:o + c])
        work = moe.combine(d.x, d, async_op=True)
        results.append(work.wait().clone())
    assert torch.equal(results[0], results[1])  # deterministic run to run
    lo = ref.local_range(rank, E, R)[0]
    want = (x.unsqueeze(1) * w.unsqueeze(2)).sum(1)
    assert torch.allclose(results[0], want, atol=1e-5)
    return lo


def test_async_and_ready():
    pytest.importorskip("torch")
    ranks.run(rank_async, 2, 7)


def rank_ll(rank, R, seed, wire):
    import torch

    import epx

    T, H, E, K = 9, 256, 8, 2
    data = ref.inputs(seed, R, T, H, E, K, drop=0.1)
    comm = epx.Comm.from_torch()
    moe = epx.MoE(comm, H, E, K, T, dtype=torch.bfloat16, mode="ll", wire=wire)
    x, idx, w = (torch.from_numpy(a) for a in data[rank])
    x = x.to(torch.bfloat16)
    d = moe.dispatch(x, idx, w)
    cap = d.capacity
    L = moe.num_local_experts
    assert d.num_rows == L * R * cap
    lo = ref.local_range(rank, E, R)[0]
    want = ref.expected_rows(data, rank, E, R)
    src = d.src_rank.numpy()
    for j in range(L):
        assert int(d.expert_counts[j]) == len(want[j])
        for s in range(R):
            n = sum(1 for (ss, _, _) in want[j] if ss == s)
            seg = src[(j * R + s) * cap:(j * R + s + 1) * cap]
            assert (seg[:n] == s).all() and (seg[n:] == -1).all()
    if wire is None:
        y = d.x.clone()
    else:
        assert d.x_scales is not None and d.x.dtype == torch.float8_e4m3fn
        # dequantize: block scales of 128 (fp32) per row
        sc = d.x_scales.float().repeat_interleave(128, dim=1)[:, :H]
        y = (d.x.float() * sc).to(torch.bfloat16)
    out = moe.combine(y, d)
    ref_out = (x.float().unsqueeze(1) * (w * (idx >= 0)).unsqueeze(2)).sum(1)
    tol = 0.02 if wire is None else 0.15
    assert torch.allclose(out.float(), ref_out, atol=tol * 4, rtol=tol), (out.float() - ref_out).abs().max()
    return lo


@pytest.mark.parametrize("wire", [None, "fp8"])
def test_low_latency(wire):
    pytest.importorskip("torch")
    ranks.run(rank_ll, 2, 11, wire)


def rank_two(rank, R):
    import torch
    import torch.distributed as dist

    import epx

    H, E, K, T = 16, 4, 2, 5
    comm_a = epx.Comm.from_torch()
    comm_b = epx.Comm.from_torch(dist.new_group(list(range(R))))
    moes = [epx.MoE(comm_a, H, E, K, T, dtype=torch.float32), epx.MoE(comm_a, H, E, K, T, dtype=torch.float32),
            epx.MoE(comm_b, H, E, K, T, dtype=torch.float32)]
    g = torch.Generator().manual_seed(rank)
    xs = [torch.randn(T, H, generator=g) for _ in moes]
    idx = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)])
    w = torch.rand(T, K, generator=g)
    # every engine's dispatch in flight at once, combined in another order
    ds = [m.dispatch(x, idx, w, async_op=True) for m, x in zip(moes, xs)]
    outs = [None] * 3
    for i in (2, 0, 1):
        ds[i].wait()
        outs[i] = moes[i].combine(ds[i].x, ds[i])
    for x, o in zip(xs, outs):
        assert torch.allclose(o, (x.unsqueeze(1) * w.unsqueeze(2)).sum(1), atol=1e-5)
    return True


def test_engines_and_communicators_side_by_side():
    pytest.importorskip("torch")
    ranks.run(rank_two, 2)
