"""Elastic engines (``epx.MoE(..., elastic=True)``): a placement that leaves
experts out (lost), num_slots below num_experts; entries naming a lost
expert are sent nowhere, ``Dispatch.lost`` marks them, combine leaves them
out.  Fresh random inputs against a plain reference written here (float32
and float64 engines); without the flag such placements are refused."""

import numpy as np
import pytest

import ranks
import reference

H = 6


def world(seed, R, E, spr, K, nlost):
    """The placement and every rank's inputs (integer-valued, so sums are
    exact in any order): token 0 names only lost experts, token 1 -1 and
    lost entries; rank 1 sends nothing."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(E)
    lost = set(int(e) for e in perm[:nlost])
    live = perm[nlost:]
    p2l = np.array([live[u % len(live)] for u in range(R * spr)], np.int32)
    rng.shuffle(p2l)
    data = []
    for r in range(R):
        T = 0 if r == 1 else int(rng.integers(3, 9))
        idx = np.full((T, K), -1, np.int64)
        for t in range(T):
            pool = sorted(lost) if t < 2 else range(E)
            idx[t] = rng.choice(list(pool), size=K, replace=False)
            if t == 1:
                idx[t, ::2] = -1
            elif t >= 2:
                idx[t, rng.random(K) < 0.2] = -1
        x = rng.integers(-4, 5, (T, H)).astype(np.float32)
        w = rng.integers(1, 3, (T, K)).astype(np.float32)
        data.append((x, idx, w))
    return p2l, lost, data


def rank_elastic(rank, R, seed, E, spr, K, nlost, layout, mode, dtype):
    import epx

    p2l, lost, data = world(seed, R, E, spr, K, nlost)
    data = [(x.astype(dtype), idx, w) for x, idx, w in data]
    maxT = max(max(len(x) for x, _, _ in data), 1)
    comm = epx.Comm.from_env()
    moe = epx.MoE(comm, H, E, K, maxT, dtype=dtype, layout=layout, mode=mode,
                  num_slots=R * spr, elastic=True)
    moe.set_placement(p2l)
    assert [moe.expert_lost(e) for e in range(E)] == [e in lost for e in range(E)]
    x, idx, w = data[rank]
    is_lost = np.vectorize(lambda e: e in lost, otypes=[bool])
    want_lost = (is_lost(idx) if idx.size else np.zeros(idx.shape, bool)).astype(np.uint8)
    for _ in range(2):
        d = moe.dispatch(x, idx, w)
        assert d.lost.dtype == np.uint8 and d.lost.shape == idx.shape
        assert np.array_equal(d.lost, want_lost), (d.lost, want_lost)
        # Every received row is an entry of a live expert this rank holds.
        src, tok, le = np.asarray(d.src_rank), np.asarray(d.src_token), np.asarray(d.local_experts)
        y = np.array(d.x, copy=True)
        if layout == "expert_major":
            for j in range(moe.num_local_experts):
                o = int(d.expert_offsets[j])
                seg = range(o, o + (moe.comm.size * d.capacity if mode == "ll" else int(d.expert_counts[j])))
                for i in seg:
                    if src[i] < 0:
                        continue
                    s, t, e = int(src[i]), int(tok[i]), int(le[j])
                    assert e not in lost and e in data[s][1][t]
                    assert np.array_equal(d.x[i], data[s][0][t])
                    y[i] = d.x[i] * (e + 1)
        else:
            tk, tw = np.asarray(d.topk_idx), np.asarray(d.topk_weights)
            for i in range(d.num_rows):
                s, t = int(src[i]), int(tok[i])
                f = np.float32(0)
                for k in range(K):
                    if tk[i, k] >= 0:
                        e = int(le[tk[i, k]])
                        assert e not in lost and data[s][1][t, k] == e
                        f += tw[i, k] * (e + 1)
                y[i] = d.x[i] * f
        out = moe.combine(y, d)
        assert out.dtype == np.dtype(dtype)
        want = reference.combine_without_lost(x, idx, w, lost)
        assert np.array_equal(out, want), (out, want)
        d.release()
    stats = moe.stats()
    demand = np.bincount(idx[idx >= 0], minlength=E) * 2
    assert np.array_equal(np.asarray(stats["window"])[0], demand)  # lost included
    moe.close()

    # Without the flag: num_slots below num_experts is refused (collective),
    # and a placement leaving an expert out is refused.
    with pytest.raises(epx.InvalidError):
        epx.MoE(comm, H, E, K, maxT, dtype="float32", num_slots=R * spr)
    S = -(-E // R) * R
    plain = epx.MoE(comm, H, E, K, maxT, dtype="float32", num_slots=S)
    with pytest.raises(epx.InvalidError, match="has no slot"):
        plain.set_placement([u % (E - 1) for u in range(S)])
    plain.close()
    comm.close()
    return True


CASES = [
    # R, E, slots per rank, K, lost, layout, mode, engine dtype
    (4, 20, 4, 3, 6, "expert_major", "ht", "float32"),
    (4, 20, 4, 3, 6, "token_major", "ht", "float32"),
    (3, 12, 3, 2, 4, "expert_major", "ll", "float32"),
    (4, 20, 4, 3, 6, "expert_major", "ht", "float64"),
    (3, 12, 3, 2, 4, "expert_major", "ll", "float64"),
]


@pytest.mark.parametrize("case", CASES, ids=[f"R{c[0]}-{c[5]}-{c[6]}-{c[7]}" for c in CASES])
def test_elastic(case):
    seed = np.random.SeedSequence().entropy % 2**32  # fresh inputs every run
    ranks.run(rank_elastic, case[0], seed, *case[1:], backend="env")
