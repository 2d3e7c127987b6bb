"""Bad input raises epx errors naming the argument, on the rank that made
it, before anything is sent; the peers get epx.PeerError; the engine stays
usable; nothing crashes or hangs."""

import numpy as np
import pytest

import ranks


def test_exception_classes():
    import epx

    assert issubclass(epx.InvalidError, epx.Error) and issubclass(epx.InvalidError, ValueError)
    assert issubclass(epx.TimeoutError, TimeoutError)
    assert issubclass(epx.UnsupportedError, NotImplementedError)
    assert issubclass(epx.Error, RuntimeError)
    with pytest.raises(epx.InvalidError) as e:
        epx.balance.plan(np.ones(8), slots=6, ranks=2)
    assert e.value.status == -1 and "slots" in e.value.message


def rank_bad_dispatch(rank, R):
    import torch

    import epx

    T, H, E, K = 4, 16, 4, 2
    comm = epx.Comm.from_torch()
    moe = epx.MoE(comm, H, E, K, T, dtype=torch.float32)
    x = torch.randn(T, H)
    idx = torch.tensor([[0, 1], [2, 3], [1, 2], [3, 0]])
    w = torch.rand(T, K)
    good = (x, idx, w)
    # (what rank 1 passes, exception on rank 1, words its message must hold)
    cases = [
        ((x.to(torch.bfloat16), idx, w), epx.InvalidError, ["x", "bfloat16", "float32"]),
        ((x, idx.float(), w), epx.InvalidError, ["topk_idx", "int32 or int64"]),
        ((x, idx, w.double()), epx.InvalidError, ["topk_weights", "float32"]),
        ((x.t(), idx, w), epx.InvalidError, ["x", "contiguous"]),
        ((x[:, None], idx, w), epx.InvalidError, ["x", "2-D", "3-D"]),
        ((x, idx[:3], w), epx.InvalidError, ["topk_idx", "rows"]),
        ((torch.randn(T + 1, H), torch.zeros(T + 1, K, dtype=torch.long), torch.rand(T + 1, K)),
         epx.RangeError, ["max_tokens"]),
        ((x, idx + 10, w), epx.InvalidError, ["topk_idx", "out of range"]),
        ((x, idx[:, :1], w[:, :1]), epx.InvalidError, ["topk_idx"]),
        (("not an array", idx, w), epx.InvalidError, ["x", "array"]),
        ((x, None, w), epx.InvalidError, ["topk_idx", "None"]),
    ]
    seen = []
    for args, exc, words in cases:
        if rank == 1:
            with pytest.raises(exc) as e:
                moe.dispatch(*args)
            for word in words:
                assert word in str(e.value), (word, str(e.value))
        else:
            with pytest.raises(epx.PeerError) as e:
                moe.dispatch(*good)
            assert "rank 1" in str(e.value)
        seen.append(type(e.value).__name__)
        # still usable, and right
        d = moe.dispatch(*good)
        out = moe.combine(d.x, d)
        assert torch.allclose(out, (x.unsqueeze(1) * w.unsqueeze(2)).sum(1), atol=1e-5)
    return seen


def test_bad_dispatch_fails_every_rank_and_engine_survives():
    pytest.importorskip("torch")
    res = ranks.run(rank_bad_dispatch, 2)
    assert res[0] == ["PeerError"] * len(res[0])


def rank_bad_combine(rank, R):
    import torch

    import epx

    T, H, E, K = 3, 8, 2, 1
    comm = epx.Comm.from_torch()
    moe = epx.MoE(comm, H, E, K, T, dtype=torch.float32)
    x, idx, w = torch.randn(T, H), torch.tensor([[0], [1], [1]]), torch.ones(T, 1)
    d = moe.dispatch(x, idx, w)
    if rank == 0:  # this rank's own error: nothing sent, may retry
        with pytest.raises(epx.InvalidError, match="y"):
            moe.combine(torch.zeros(d.num_rows + 1, H), d)
        with pytest.raises(epx.InvalidError, match="y"):
            moe.combine(d.x.to(torch.bfloat16), d)
        with pytest.raises(epx.InvalidError, match="out"):
            moe.combine(d.x, d, out=torch.empty(T, H + 1))
        with pytest.raises(epx.InvalidError, match="d"):
            moe.combine(d.x, "not a dispatch")
    out = torch.empty(T, H)
    res = moe.combine(d.x, d, out=out)
    assert res is out and torch.allclose(out, x)
    # call order: combine twice, dispatch while one is in flight
    with pytest.raises(epx.StateError):
        moe.combine(d.x, d)
    d2 = moe.dispatch(x, idx, w, async_op=True)
    with pytest.raises(epx.StateError):
        moe.dispatch(x, idx, w)
    d2.wait()
    out2 = moe.combine(d2.x, d2)
    assert torch.allclose(out2, x)
    # a dispatch received but never combined is abandoned by the next one
    d3 = moe.dispatch(x, idx, w)
    d4 = moe.dispatch(x, idx, w)
    with pytest.raises(epx.StateError):
        moe.combine(d3.x, d3)
    assert torch.allclose(moe.combine(d4.x, d4), x)
    # closed engine and communicator
    keep = d4.x
    moe.close()
    comm.close()
    with pytest.raises(epx.StateError):
        moe.dispatch(x, idx, w)
    assert keep.shape == (d4.num_rows, H)  # the view outlives close(): memory still mapped
    float(keep.sum())
    return True


def test_bad_combine_and_call_order():
    pytest.importorskip("torch")
    ranks.run(rank_bad_combine, 2)


def rank_mismatch(rank, R):
    import epx

    comm = epx.Comm.from_env()
    with pytest.raises((epx.MismatchError, epx.PeerError)):
        epx.MoE(comm, 16 + rank, 4, 2, 4, dtype="float32")
    moe = epx.MoE(comm, 16, 4, 2, 4, dtype="float32")  # agreed: works
    moe.close()
    with pytest.raises(epx.InvalidError, match="layout"):
        epx.MoE(comm, 16, 4, 2, 4, layout="diagonal")
    with pytest.raises(epx.InvalidError, match="dtype"):
        epx.MoE(comm, 16, 4, 2, 4, dtype="float16")
    with pytest.raises(epx.InvalidError, match="comm"):
        epx.MoE(None, 16, 4, 2, 4)
    return True


def test_ranks_that_disagree():
    ranks.run(rank_mismatch, 2, backend="env")


def test_cuda_tensor_refused(monkeypatch):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    import epx

    monkeypatch.setenv("EPX_RANK", "0")
    monkeypatch.setenv("EPX_NRANKS", "1")
    with epx.Comm.from_env() as comm, epx.MoE(comm, 8, 2, 1, 4, dtype=torch.float32) as moe:
        x = torch.zeros(2, 8, device="cuda")
        with pytest.raises(epx.InvalidError, match=r"x: is on cuda:0; this engine's tensors are in "
                           r"host memory \(CPU\)"):
            moe.dispatch(x, torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1))
        d = moe.dispatch(x.cpu(), torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1))
        assert torch.equal(moe.combine(d.x, d), x.cpu())


def rank_cached_refused(rank, R):
    import torch

    import epx

    T, H, E, K = 3, 8, 2, 1
    comm = epx.Comm.from_torch()
    moe = epx.MoE(comm, H, E, K, T, dtype=torch.float32)
    x, idx, w = torch.randn(T, H), torch.tensor([[0], [1], [1]]), torch.ones(T, 1)
    d = moe.dispatch(x, idx, w)
    moe.combine(d.x, d)
    if rank == 0:
        d.release()
        with pytest.raises(epx.StateError, match="cached"):
            moe.dispatch(x, idx, w, cached=d)
    else:  # the peer fails the same call, instead of pairing it with the next
        with pytest.raises(epx.PeerError):
            moe.dispatch(x, idx, w, cached=d)
    d2 = moe.dispatch(x, idx, w)
    assert torch.allclose(moe.combine(d2.x, d2), x)
    # cached reuse works on every rank
    d3 = moe.dispatch(2 * x, idx, w, cached=d2)
    assert torch.allclose(moe.combine(d3.x, d3), 2 * x)
    return True


def test_bad_cached_handle_fails_every_rank():
    pytest.importorskip("torch")
    ranks.run(rank_cached_refused, 2)


def rank_ll_order(rank, R):
    import torch

    import epx

    T, H, E, K = 4, 8, 4, 2
    comm = epx.Comm.from_torch()
    moe = epx.MoE(comm, H, E, K, T, dtype=torch.float32, mode="ll", ll_buffers=2)
    x = torch.randn(T, H)
    idx = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0]])
    w = torch.full((T, K), 0.5)
    d1 = moe.dispatch(x, idx, w)
    d2 = moe.dispatch(2 * x, idx, w)
    with pytest.raises(epx.StateError):  # combined in dispatch order
        moe.combine(d2.x, d2)
    o1 = moe.combine(d1.x, d1)
    o2 = moe.combine(d2.x, d2)  # still combinable after the refusal
    assert torch.allclose(o1, x, atol=1e-6) and torch.allclose(o2, 2 * x, atol=1e-6)
    return True


def test_low_latency_combine_order_is_retryable():
    pytest.importorskip("torch")
    ranks.run(rank_ll_order, 2)
