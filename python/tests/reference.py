"""A plain single-process reference of the dispatch/combine contract
(docs/DESIGN.md, include/epx.h), written from the contract alone, and the
random inputs every rank can rebuild for every other rank."""

import numpy as np


def expert_rank(e, E, R):
    """Contiguous placement: rank r holds [floor(r*E/R), floor((r+1)*E/R))."""
    for r in range(R):
        if (r * E) // R <= e < ((r + 1) * E) // R:
            return r
    raise ValueError(e)


def local_range(r, E, R):
    return (r * E) // R, ((r + 1) * E) // R


def inputs(seed, R, T, H, E, K, drop=0.0, skew=None):
    """Every rank's x [T_r, H] float32, topk_idx [T_r, K] (distinct experts,
    -1 for a fraction `drop` of the slots), topk_weights [T_r, K]."""
    rng = np.random.default_rng(seed)
    out = []
    for r in range(R):
        t = T[r] if isinstance(T, (list, tuple)) else T
        x = rng.standard_normal((t, H), dtype=np.float32)
        if skew is not None:
            idx = np.stack([rng.choice(skew, size=K, replace=False) for _ in range(t)]) if t else \
                np.zeros((0, K), np.int64)
        else:
            idx = np.stack([rng.permutation(E)[:K] for _ in range(t)]) if t else np.zeros((0, K), np.int64)
        idx = idx.astype(np.int64)
        if drop:
            idx[rng.random(idx.shape) < drop] = -1
        w = rng.random((t, K), dtype=np.float32)
        out.append((x, idx, w))
    return out


def expected_rows(data, rank, E, R):
    """{local expert j: sorted [(src rank, src token, slot k)]} this rank
    must receive (expert-major: one row per (token, local expert))."""
    lo, hi = local_range(rank, E, R)
    rows = {j: [] for j in range(hi - lo)}
    for s, (_, idx, _) in enumerate(data):
        for t in range(idx.shape[0]):
            for k in range(idx.shape[1]):
                e = int(idx[t, k])
                if lo <= e < hi:
                    rows[e - lo].append((s, t, k))
    return {j: sorted(v) for j, v in rows.items()}


def expert_fn(e, x):
    """The test's expert e: an elementwise map, exact in float32."""
    return (x * np.float32(0.5 + e) + np.float32(e)).astype(np.float32)


def round_bf16(a):
    """float32 -> nearest bfloat16 (ties to even), kept as float32."""
    b = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
    return b.astype(np.uint32).view(np.float32)


def combine(data, rank, E, R, bf16=False):
    """out[t] = sum over destination ranks r ascending of partial_r(t),
    partial_r = sum over t's experts on r in top-k order of w * y, in fp32,
    rounded to the engine dtype for the wire; the final sum in fp32,
    rounded once (epx.h's order, so the result must be bitwise equal)."""
    x, idx, w = data[rank]
    if bf16:
        x = round_bf16(x)
    T, H = x.shape
    out = np.zeros((T, H), np.float32)
    for t in range(T):
        acc = np.zeros(H, np.float32)
        for r in range(R):
            part, any_ = np.zeros(H, np.float32), False
            for k in range(idx.shape[1]):
                e = int(idx[t, k])
                if e >= 0 and expert_rank(e, E, R) == r:
                    y = expert_fn(e, x[t])
                    if bf16:
                        y = round_bf16(y)
                    part = (part + np.float32(w[t, k]) * y).astype(np.float32)
                    any_ = True
            if any_:
                acc = (acc + (round_bf16(part) if bf16 else part)).astype(np.float32)
        out[t] = round_bf16(acc) if bf16 else acc
    return out


def inputs64(seed, R, T, H, E, K, drop=0.0):
    """inputs() with x in float64 (every mantissa bit in use); the routing
    weights stay float32, as they travel."""
    rng = np.random.default_rng(seed)
    data = inputs(seed, R, T, H, E, K, drop=drop)
    return [(rng.standard_normal(x.shape) * 2.0 ** rng.integers(-3, 4, size=x.shape), idx, w)
            for x, idx, w in data]


def expert_fn64(e, x):
    """The test's expert e for float64 engines: an elementwise map in double."""
    return np.asarray(x, np.float64) * (0.5 + e) + float(e)


def combine64(data, rank, E, R):
    """The float64 engine's contract: combine()'s sums in double, the
    weight widened from float32, partials not rounded, out float64."""
    x, idx, w = data[rank]
    T, H = x.shape
    out = np.zeros((T, H), np.float64)
    for t in range(T):
        acc = np.zeros(H, np.float64)
        for r in range(R):
            part, any_ = np.zeros(H, np.float64), False
            for k in range(idx.shape[1]):
                e = int(idx[t, k])
                if e >= 0 and expert_rank(e, E, R) == r:
                    part = part + np.float64(w[t, k]) * expert_fn64(e, x[t])
                    any_ = True
            if any_:
                acc = acc + part
        out[t] = acc
    return out


def combine_without_lost(x, idx, w, lost):
    """Combine's output where expert e multiplies by (e + 1) and the
    entries of lost experts (and -1) are left out, in float32."""
    H = x.shape[1]
    want = np.zeros((len(x), H), np.float32)
    for t in range(len(x)):
        for k in range(idx.shape[1]):
            e = int(idx[t, k])
            if e >= 0 and e not in lost:
                want[t] += w[t, k] * x[t] * (e + 1)
    return want
