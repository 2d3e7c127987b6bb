"""Elastic communicators (``Comm.shrink``): 4 ranks over shared memory, one
of which kills itself (SIGKILL) after a checked exchange; the survivors get
``epx.PeerError`` from a dispatch, shrink to 3 ranks (their new ranks in
the old order, ``live``), the old communicator and engine fail and are
closed before or after the new one, and an elastic engine on the new communicator, placed by
``epx.balance.shrink`` (then re-planned by ``epx.balance.plan(lost=)``),
is checked against a plain reference that leaves the lost experts out.
And a shrink that loses nobody: a copy.  Fresh random inputs every run."""

import gc
import os
import signal

import numpy as np
import pytest

import ranks
import reference

H = 6
R, E, SPR, K = 4, 12, 4, 3   # ranks, experts, slots per rank, topk


def placement(rng, victim):
    """[R * SPR] slots: the victim holds experts a, b (nowhere else: lost
    with it) and c, d (replicated on survivors); the survivors hold every
    other expert, c and d, and two more replicas."""
    perm = [int(e) for e in rng.permutation(E)]
    others = perm[4:] + perm[2:4] + [int(e) for e in rng.choice(perm[4:], 2, replace=False)]
    rng.shuffle(others)
    mine = perm[:4]
    rng.shuffle(mine)
    slots = others[:victim * SPR] + mine + others[victim * SPR:]
    return np.array(slots, np.int32), {perm[0], perm[1]}


def inputs(rng, n):
    """Every rank's (x, idx, w) for one exchange (integer-valued, so sums
    are exact in any order); -1 entries included."""
    data = []
    for _ in range(n):
        T = int(rng.integers(3, 9))
        idx = np.array([rng.choice(E, K, replace=False) for _ in range(T)], np.int64)
        idx[rng.random((T, K)) < 0.15] = -1
        x = rng.integers(-4, 5, (T, H)).astype(np.float32)
        w = rng.integers(1, 3, (T, K)).astype(np.float32)
        data.append((x, idx, w))
    return data


def exchange(moe, rank, data, lost):
    """One dispatch + combine (expert e multiplies by e + 1) of this rank's
    tokens, checked: every row received, the lost mask, the output."""
    x, idx, w = data[rank]
    d = moe.dispatch(x, idx, w)
    want_lost = np.isin(idx, sorted(lost)).astype(np.uint8)
    assert np.array_equal(d.lost, want_lost), (d.lost, want_lost)
    src, tok, le = np.asarray(d.src_rank), np.asarray(d.src_token), np.asarray(d.local_experts)
    y = np.array(d.x, copy=True)
    rows = 0
    for j in range(moe.num_local_experts):
        o, n = int(d.expert_offsets[j]), int(d.expert_counts[j])
        e = int(le[j])
        assert n == 0 or e not in lost
        for i in range(o, o + n):
            s, t = int(src[i]), int(tok[i])
            assert e in data[s][1][t]
            assert np.array_equal(d.x[i], data[s][0][t])
            y[i] = d.x[i] * (e + 1)
            rows += 1
    out = moe.combine(y, d)
    want = reference.combine_without_lost(x, idx, w, lost)
    assert np.array_equal(out, want), (out, want)
    d.release()
    return rows


def rank_shrink(rank, n, seed, victim, old_first):
    import epx

    rng = np.random.default_rng(seed)
    p2l, want_lost = placement(rng, victim)
    before, after = inputs(rng, n), inputs(rng, n - 1)
    maxT = max(len(x) for x, _, _ in before + after)

    comm = epx.Comm.from_env()
    moe = epx.MoE(comm, H, E, K, maxT, dtype="float32", num_slots=n * SPR, elastic=True)
    moe.set_placement(p2l)
    exchange(moe, rank, before, set())
    if rank == victim:
        os.kill(os.getpid(), signal.SIGKILL)

    x, idx, w = before[rank]
    with pytest.raises(epx.PeerError):
        moe.dispatch(x, idx, w)   # waits for the dead rank, then fails
    new, live = comm.shrink()
    assert type(new) is epx.Comm and new is not comm
    assert live == [r != victim for r in range(n)], live
    assert new.size == n - 1 and new.rank == rank - (rank > victim), (new.size, new.rank)
    assert not new.closed and repr(new) == f"epx.Comm(rank {new.rank} of {n - 1})"
    # The old communicator's calls fail from now on; closing and collecting
    # it and its engine first (old_first), or last, leaves the new one whole.
    with pytest.raises(epx.PeerError):
        comm.barrier()
    if old_first:
        moe.close()
        comm.close()
        assert comm.closed
        del moe, comm
        gc.collect()
    new.barrier()

    # The survivors keep their slots; the victim's experts found nowhere
    # else are lost.
    keep = [r for r in range(n) if r != victim]
    want_p2l = np.concatenate([p2l[r * SPR:(r + 1) * SPR] for r in keep])
    lost = set(range(E)) - set(int(e) for e in want_p2l)
    assert lost == want_lost
    new_p2l, lost_mask = epx.balance.shrink(p2l, live, E)
    assert np.array_equal(new_p2l, want_p2l), (new_p2l, want_p2l)
    assert lost_mask.dtype == np.uint8
    assert lost_mask.tolist() == [int(e in lost) for e in range(E)]

    emoe = epx.MoE(new, H, E, K, maxT, dtype="float32", num_slots=(n - 1) * SPR, elastic=True)
    emoe.set_placement(new_p2l)
    assert [emoe.expert_lost(e) for e in range(E)] == [e in lost for e in range(E)]
    rows = exchange(emoe, new.rank, after, lost)

    # Re-planned over the live ranks: the lost experts get no slot.
    loads = np.bincount(np.concatenate([i[i >= 0] for _, i, _ in after]), minlength=E)
    phy, l2p, cnt = epx.balance.plan(loads.astype(np.float64), (n - 1) * SPR, n - 1, lost=lost_mask)
    assert not set(int(e) for e in phy) & lost
    assert all((cnt[e] == 0) == (e in lost) for e in range(E)), cnt
    assert all((l2p[e] == -1).all() for e in lost)
    emoe.set_placement(phy)
    exchange(emoe, new.rank, after, lost)

    emoe.close()
    new.close()
    if not old_first:
        with pytest.raises(epx.PeerError):
            moe.dispatch(x, idx, w)
        moe.close()
        comm.close()
    return new.rank, rows


def rank_copy(rank, n, seed):
    """A shrink with nobody lost: a copy, closed before the original."""
    import epx

    rng = np.random.default_rng(seed)
    p2l = np.array([int(e) for e in rng.permutation(E)] +
                   [int(e) for e in rng.choice(E, n * SPR - E, replace=False)], np.int32)
    data = inputs(rng, n)
    maxT = max(len(x) for x, _, _ in data)
    comm = epx.Comm.from_env()
    new, live = comm.shrink()
    assert type(new) is epx.Comm
    assert live == [True] * n
    assert (new.rank, new.size) == (rank, n)
    new.barrier()
    moe = epx.MoE(new, H, E, K, maxT, dtype="float32", num_slots=n * SPR, elastic=True)
    moe.set_placement(p2l)
    assert not any(moe.expert_lost(e) for e in range(E))
    exchange(moe, rank, data, set())
    moe.close()
    new.close()
    del moe, new
    gc.collect()
    comm.close()
    return rank


@pytest.mark.parametrize("victim,old_first", [(2, True), (0, False)],
                         ids=["rank2-dies-old-closed-first", "root-dies-old-closed-last"])
def test_shrink_after_loss(victim, old_first):
    seed = np.random.SeedSequence().entropy % 2**32   # fresh inputs every run
    res = ranks.run(rank_shrink, R, seed, victim, old_first, backend="env", dies=(victim,))
    assert res[victim] is None
    survivors = [r for r in res if r is not None]
    assert [new_rank for new_rank, _ in survivors] == list(range(R - 1))
    assert sum(rows for _, rows in survivors) > 0   # the exchange moved rows


def test_shrink_copy():
    seed = np.random.SeedSequence().entropy % 2**32
    assert ranks.run(rank_copy, R, seed, backend="env") == list(range(R))
