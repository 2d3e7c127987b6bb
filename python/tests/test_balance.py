"""epx.balance against DeepSeek EPLB's published example and the
invariants of a placement; the engine's load statistics and placements."""

import os

import numpy as np
import pytest

import ranks

import epx

HERE = os.path.dirname(os.path.abspath(__file__))
EPLB_LOADS = os.path.join(HERE, "..", "..", "tests", "balance", "data", "eplb-example.json")
# EPLB's README: rebalance_experts(weight, 16, 4, 2, 8)
EPLB_PHY2LOG = [[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
                [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]]


def check_plan(loads, phy, l2p, cnt, slots, ranks_):
    L, E = loads.shape
    assert phy.shape == (L, slots) and cnt.shape == (L, E) and l2p.shape == (L, E, slots - E + 1)
    for layer in range(L):
        assert sorted(set(phy[layer].tolist())) == list(range(E))  # every expert somewhere
        for e in range(E):
            where = [s for s in range(slots) if phy[layer, s] == e]
            assert cnt[layer, e] == len(where)
            assert sorted(l2p[layer, e, :len(where)].tolist()) == where
            assert (l2p[layer, e, len(where):] == -1).all()


def test_eplb_published_example():
    import json

    loads = np.array(json.load(open(EPLB_LOADS)), dtype=np.float64)
    phy, l2p, cnt = epx.balance.plan(loads, slots=16, ranks=8, groups=4, domains=2, policy="deepseek")
    assert phy.tolist() == EPLB_PHY2LOG
    check_plan(loads, phy, l2p, cnt, 16, 8)
    phy2, l2p2, cnt2 = epx.balance.plan(loads, slots=16, ranks=8, groups=4, domains=2, policy="epx")
    check_plan(loads, phy2, l2p2, cnt2, 16, 8)
    b_ds = epx.balance.metrics(loads, 8, phy)[0]
    b_epx = epx.balance.metrics(loads, 8, phy2)[0]
    assert b_epx >= b_ds - 1e-12  # never worse than DeepSeek's


def rank_loads(loads, phy, R):
    """Max rank load of a placement, replicas sharing their expert's load."""
    L, S = phy.shape
    per = S // R
    worst = 0.0
    for layer in range(L):
        reps = np.bincount(phy[layer], minlength=loads.shape[1])
        rl = [sum(loads[layer, phy[layer, s]] / reps[phy[layer, s]] for s in range(r * per, (r + 1) * per))
              for r in range(R)]
        worst = max(worst, max(rl))
    return worst


@pytest.mark.parametrize("E,S,R", [(8, 16, 8), (64, 80, 16), (12, 12, 3)])
def test_random_loads_invariants_and_metrics(E, S, R):
    rng = np.random.default_rng()
    loads = rng.zipf(1.5, size=(3, E)).astype(np.float64)
    phy, l2p, cnt = epx.balance.plan(loads, slots=S, ranks=R)
    check_plan(loads, phy, l2p, cnt, S, R)
    b, imb, lb, li = epx.balance.metrics(loads, R, phy)
    worst = max(rank_loads(loads[i:i + 1], phy[i:i + 1], R) for i in range(3))
    means = loads.sum(1) / R
    assert np.isclose(lb.min(), min(means[i] / rank_loads(loads[i:i + 1], phy[i:i + 1], R) for i in range(3)))
    assert 0 < b <= 1 and worst >= means.max() - 1e-9 and imb >= 0


def test_one_dim_and_torch_in_torch_out():
    torch = pytest.importorskip("torch")
    phy, l2p, cnt = epx.balance.plan(torch.tensor([600., 560, 120, 120, 20, 10, 10, 10]), 16, 8)
    assert isinstance(phy, torch.Tensor) and phy.shape == (16,) and cnt.shape == (8,)
    assert int(cnt.sum()) == 16


@pytest.mark.parametrize("kw,word", [(dict(slots=7, ranks=2), "slots"), (dict(slots=16, ranks=3), "rank"),
                                     (dict(slots=16, ranks=8, policy="best"), "policy"),
                                     (dict(slots=16, ranks=8, groups=3), "group")])
def test_bad_plans(kw, word):
    with pytest.raises(epx.InvalidError) as e:
        epx.balance.plan(np.ones(8), **kw)
    assert word in str(e.value)
    with pytest.raises(epx.InvalidError, match="loads"):
        epx.balance.plan(np.ones((2, 2, 2)), 8, 2)


@pytest.mark.parametrize("L,E,R,spr", [(3, 16, 4, 5), (1, 10, 5, 2), (2, 8, 2, 4)])
def test_shrink_and_plan_with_lost(L, E, R, spr):
    """shrink against the surviving slots computed here; plan(lost=) gives
    lost experts nothing and every slot to the available ones."""
    rng = np.random.default_rng()
    S = R * spr
    phy = np.stack([rng.permutation(np.arange(S) % E) for _ in range(L)]).astype(np.int32)
    live = [True] * R
    for r in rng.choice(R, rng.integers(1, R), replace=False):
        live[r] = False
    keep = [r for r in range(R) if live[r]]
    want = np.concatenate([phy[:, r * spr:(r + 1) * spr] for r in keep], axis=1)
    new, lost = epx.balance.shrink(phy, live, E)
    assert new.dtype == np.int32 and np.array_equal(new, want)
    want_lost = np.array([[e not in set(want[layer].tolist()) for e in range(E)] for layer in range(L)])
    assert lost.dtype == np.uint8 and np.array_equal(lost, want_lost.astype(np.uint8))
    one, lost1 = epx.balance.shrink(phy[0], np.array(live), E)   # 1-D, numpy mask
    assert np.array_equal(one, want[0]) and np.array_equal(lost1, lost[0])

    slots = len(keep) * spr
    loads = rng.zipf(1.5, size=(L, E)).astype(np.float64)
    p, l2p, cnt = epx.balance.plan(loads, slots, len(keep), lost=lost)
    avail = (lost == 0).sum(1)
    assert p.shape == (L, slots) and l2p.shape == (L, E, slots - avail.min() + 1)
    for layer in range(L):
        assert sorted(set(p[layer].tolist())) == [e for e in range(E) if not lost[layer, e]]
        for e in range(E):
            where = [s for s in range(slots) if p[layer, s] == e]
            assert cnt[layer, e] == len(where)
            assert sorted(l2p[layer, e, :len(where)].tolist()) == where
            assert (l2p[layer, e, len(where):] == -1).all()
    # lost= as bools: the same plan; a mask of another shape: refused
    p2, _, _ = epx.balance.plan(loads, slots, len(keep), lost=lost.astype(bool))
    assert np.array_equal(p2, p)
    with pytest.raises(epx.InvalidError, match="lost"):
        epx.balance.plan(loads, slots, len(keep), lost=lost[:, :-1])


def test_shrink_torch_and_errors():
    torch = pytest.importorskip("torch")
    phy = torch.tensor([[0, 1, 2, 3, 0, 1]], dtype=torch.int64)
    new, lost = epx.balance.shrink(phy, torch.tensor([True, True, False]), 4)
    assert isinstance(new, torch.Tensor) and new.tolist() == [[0, 1, 2, 3]]
    assert lost.dtype == torch.uint8 and lost.tolist() == [[0, 0, 0, 0]]
    new, lost = epx.balance.shrink(phy, [False, True, True], 4)
    assert new.tolist() == [[2, 3, 0, 1]] and lost.tolist() == [[0, 0, 0, 0]]
    new, lost = epx.balance.shrink(phy, [True, False, False], 4)
    assert new.tolist() == [[0, 1]] and lost.tolist() == [[0, 0, 1, 1]]
    with pytest.raises(epx.InvalidError, match="no live rank"):
        epx.balance.shrink(phy, [False] * 3, 4)
    with pytest.raises(epx.InvalidError):
        epx.balance.shrink(phy, [True] * 4, 4)   # 6 slots over 4 ranks
    with pytest.raises(epx.InvalidError):
        epx.balance.shrink(phy, [True] * 3, 3)   # expert 3 out of range


def rank_stats(rank, R, seed):
    import torch

    T, H, E, K = 20, 8, 8, 2
    rng = np.random.default_rng(seed)
    idx_all = [np.stack([rng.permutation(E)[:K] for _ in range(T)]) for _ in range(R)]
    comm = epx.Comm.from_torch()
    moe = epx.MoE(comm, H, E, K, T, dtype=torch.float32, num_layers=2, num_slots=2 * E)
    # a placement from the planner: every rank the same
    loads = np.bincount(np.concatenate([i.ravel() for i in idx_all]), minlength=E).astype(float)
    phy, _, _ = epx.balance.plan(loads, slots=2 * E, ranks=R)
    moe.set_placement(phy, layer=1)
    moe.set_placement(np.arange(2 * E) % E, layer=0)
    x = torch.randn(T, H)
    idx = torch.from_numpy(idx_all[rank])
    w = torch.rand(T, K)
    for layer in (0, 1):
        d = moe.dispatch(x, idx, w, layer=layer)
        out = moe.combine(d.x, d)
        assert torch.allclose(out, (x.unsqueeze(1) * w.unsqueeze(2)).sum(1), atol=1e-5)
    mine = moe.stats()
    assert torch.equal(mine["window"][1], torch.bincount(idx.ravel(), minlength=E))
    glob = moe.stats(global_=True)
    assert torch.equal(glob["window"][0], torch.from_numpy(loads.astype(np.int64)))
    assert int(glob["physical"][1].sum()) == R * T * K and glob["dispatches"] == 2 * R
    moe.stats_reset()
    assert int(moe.stats()["window"].sum()) == 0
    return True


def test_stats_and_placement():
    pytest.importorskip("torch")
    ranks.run(rank_stats, 4, 5)


def rank_rebalance(rank, R):
    import torch

    E, S = 4, 8
    comm = epx.Comm.from_torch()
    moe = epx.MoE(comm, 8, E, 1, 4, dtype=torch.float32, num_slots=S)
    old = np.arange(S) % E
    moe.set_placement(old)
    per = S // R
    # slot s holds weights filled with its expert id
    wts = torch.tensor([[float(old[s])] * 16 for s in range(rank * per, (rank + 1) * per)])
    moe.register_weights(wts)
    new = np.array([3, 3, 2, 2, 1, 1, 0, 0])
    # a bad argument on one rank fails the collective call on every rank
    if rank == 1:
        with pytest.raises(epx.InvalidError, match="weights"):
            moe.register_weights(torch.zeros(per + 1, 16), layer=0)
        with pytest.raises(epx.InvalidError, match="phy2log"):
            moe.rebalance(new[:-1])
        with pytest.raises(epx.InvalidError, match="policy"):
            moe.rebalance(new, policy="nearest")
    else:
        for _ in range(3):
            with pytest.raises(epx.PeerError):
                moe.register_weights(wts) if _ == 0 else moe.rebalance(new)
    # weights reassigned since registration are refused, on every rank
    if rank == 0:
        wts.data = torch.zeros_like(wts)  # new storage, as wrappers may do
        with pytest.raises(epx.InvalidError, match="moved"):
            moe.rebalance(new)
    else:
        with pytest.raises(epx.PeerError):
            moe.rebalance(new)
    wts = torch.tensor([[float(old[s])] * 16 for s in range(rank * per, (rank + 1) * per)])
    moe.register_weights(wts)
    st = moe.rebalance(new)
    assert wts[:, 0].tolist() == [float(new[s]) for s in range(rank * per, (rank + 1) * per)]
    assert set(st) == {"unchanged", "local_copies", "received", "sent"}
    return st


def test_rebalance_moves_weights():
    pytest.importorskip("torch")
    ranks.run(rank_rebalance, 2)
