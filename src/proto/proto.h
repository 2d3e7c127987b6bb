/*
 * The protocol's arithmetic, shared by the executors: routing of a
 * token's ids to units and destination ranks, the routing layout
 * (positions per destination and per unit, over token chunks), offsets
 * from the count matrix (token-major rows, expert-major segments), return
 * slots, entries and partials, the combine sum in its fixed order (pushed,
 * or pulled from the peers' windows), bf16
 * rounding, the quantized pack of a row chunk by chunk, and the
 * low-latency ranges and words.  The window it addresses is geom.h's.
 *
 * Plain C, compiled both by the C compiler (the CUDA executor's setup,
 * and the host tests tests/cuda/test_kern_host and test_kern_quant that
 * run every function below over simulated ranks against the reference)
 * and by nvcc (src/cuda/kernels.cu, where one thread or warp calls them
 * per item).  Nothing here touches memory other than through its
 * arguments, so what the host tests check is what the kernels compute.
 */
#ifndef EPX_PROTO_H
#define EPX_PROTO_H

#include <stdint.h>
#include "epx.h"
#include "proto/geom.h"
#include "proto/quant_codec.h"

/* Raw expert id k of token t (int32 or int64 ids). */
PROTO_HD int64_t proto_expert_raw(const void *idx, int idx64, int K, int64_t t,
                                int k)
{
    return idx64 ? ((const int64_t *)idx)[t * K + k]
                 : (int64_t)((const int32_t *)idx)[t * K + k];
}

/* Replica routing of one layer (engines with num_slots): the ids are
 * logical experts, the units the kernels route to are slots.  The host
 * executor's tables (src/moe/engine.c, epx_moe_set_placement): with
 * `pick`, this rank's local-first slot of each expert; else round robin,
 * token t to rep[off[e] + t % (its replica count)].  E 0: no routing, the
 * ids are the units. */
typedef struct proto_route {
    int E;                    /* logical experts */
    const int32_t *pick;      /* [E], or NULL */
    const int32_t *off;       /* [E + 1] each expert's replicas in rep */
    const int32_t *rep;       /* [units] slots, ascending per expert */
} proto_route_t;

/* Units (experts, or slots) and the routing, for proto_expert_id: set once
 * per kernel/host pass. */
typedef struct proto_ids {
    const void *idx;
    int idx64, K, E;
    proto_route_t rt;
} proto_ids_t;

/* Unit of id k of token t; -1 for none, and for an id out of [0, E) (the
 * layout pass reports those: an invalid id never indexes a table). */
PROTO_HD int64_t proto_expert_id(const proto_ids_t *ids, int64_t t, int k)
{
    int64_t e = proto_expert_raw(ids->idx, ids->idx64, ids->K, t, k);
    if (!ids->rt.E)
        return e >= 0 && e < ids->E ? e : -1;
    if (e < 0 || e >= ids->rt.E)
        return -1;
    if (ids->rt.pick)
        return ids->rt.pick[e];
    const int32_t *off = ids->rt.off;
    const int32_t n = off[e + 1] - off[e];   /* 0: lost (elastic, host) */
    return n > 0 ? ids->rt.rep[off[e] + (int32_t)(t % n)] : -1;
}

/* Is id k of token t neither -1 nor a valid expert, or an expert an
 * earlier choice of the token already named?  The host executor refuses
 * both in dispatch_send (src/moe/layout.c); the device flags them for
 * epx_moe_check.  The repeat test reads the token's other ids, which share
 * its cache line. */
PROTO_HD int proto_expert_bad(const proto_ids_t *ids, int64_t t, int k)
{
    int64_t e = proto_expert_raw(ids->idx, ids->idx64, ids->K, t, k);
    if (e < -1 || e >= (ids->rt.E ? ids->rt.E : ids->E))
        return 1;
    for (int j = 0; j < k && e >= 0; j++)
        if (proto_expert_raw(ids->idx, ids->idx64, ids->K, t, j) == e)
            return 1;
    return 0;
}

/* Owner of expert e (valid) from the table e2r[E]. */
PROTO_HD int proto_owner(const int32_t *e2r, int64_t e)
{
    return e2r[e];
}

/* Is choice k of token t sent?  keep: low latency, the choice's slot in
 * its range (-1: none or dropped); NULL: every valid choice is. */
PROTO_HD int64_t proto_kept_id(const proto_ids_t *ids, const int32_t *keep,
                             int64_t t, int k)
{
    return keep && keep[t * ids->K + k] < 0 ? -1 : proto_expert_id(ids, t, k);
}

/* Index of rank d among token t's distinct destination ranks in ascending
 * order, or -1 when none of t's (kept) experts lives on d. */
PROTO_HD int proto_dest_slot(const proto_ids_t *ids, const int32_t *keep,
                           const int32_t *e2r, int64_t t, int d)
{
    int hit = 0, below = 0;
    for (int k = 0; k < ids->K; k++) {
        int64_t e = proto_kept_id(ids, keep, t, k);
        if (e < 0)
            continue;
        int r = proto_owner(e2r, e);
        if (r == d) {
            hit = 1;
            continue;
        }
        if (r > d)
            continue;
        int seen = 0;    /* count each rank below d once */
        for (int k2 = 0; k2 < k; k2++) {
            int64_t e2 = proto_kept_id(ids, keep, t, k2);
            if (e2 >= 0 && proto_owner(e2r, e2) == r) {
                seen = 1;
                break;
            }
        }
        below += !seen;
    }
    return hit ? below : -1;
}

/* ------------------------------------------------------ routing layout
 *
 * The layout runs over several blocks: the tokens are cut into nb
 * contiguous chunks, one per block.  A first pass counts, per chunk, the
 * tokens going to each destination and the (token, k) pairs of each expert
 * (part[b][R + E]); a second gives each item its position: the items of
 * the lower chunks (an exclusive scan of the parts over the chunks) plus
 * its index within its own chunk, in token order.  So every position is
 * the one a single walk over all tokens gives (the host executor's), for
 * any nb. */

/* Tokens per chunk at least, when there are several (fewer blocks for
 * few tokens).  A thread walks its whole chunk once per expert or
 * destination, so the chunk's length is the layout's latency: at 32
 * (128 tokens in 4 chunks) the layout kernels took 117 of HT dispatch's
 * 143 us and 206 of LL's 307 on an H100 (one rank, ncu). */
#define PROTO_LAYOUT_TOKENS 4

/* Chunks (blocks) for T tokens with at most maxb blocks: >= 1. */
PROTO_HD int proto_layout_nblocks(int64_t T, int maxb)
{
    int64_t n = T / PROTO_LAYOUT_TOKENS;
    if (n > maxb)
        n = maxb;
    return n < 1 ? 1 : (int)n;
}

/* Tokens [*t0, *t1) of chunk b of nb: floor(T / nb) or one more each. */
PROTO_HD void proto_layout_range(int64_t T, int nb, int b, int64_t *t0,
                               int64_t *t1)
{
    *t0 = (int64_t)b * T / nb;
    *t1 = ((int64_t)b + 1) * T / nb;
}

/* Items of unit u in the chunks below b: part is [nb][n]. */
PROTO_HD int64_t proto_layout_base(const int32_t *part, int n, int b, int u)
{
    int64_t s = 0;
    for (int b2 = 0; b2 < b; b2++)
        s += part[(int64_t)b2 * n + u];
    return s;
}

/* Routing layout for destination d over tokens [t0, t1) (one thread per
 * d and chunk): in token order, give each token going to d its position
 * among this rank's tokens to d, from `base` (the tokens to d of the
 * lower chunks); dest/pos are [T][maxdest], the token's j-th destination
 * in ascending order.  pos NULL: count only.  Returns the chunk's tokens
 * to d. */
PROTO_HD int64_t proto_layout_dest(const proto_geom_t *g, const proto_ids_t *ids,
                                 const int32_t *keep, const int32_t *e2r,
                                 int64_t t0, int64_t t1, int d, int64_t base,
                                 int32_t *dest, int32_t *pos)
{
    int64_t c = 0;
    for (int64_t t = t0; t < t1; t++) {
        int j = proto_dest_slot(ids, keep, e2r, t, d);
        if (j < 0)
            continue;
        if (pos) {
            dest[t * g->maxdest + j] = d;
            pos[t * g->maxdest + j] = (int32_t)(base + c);
        }
        c++;
    }
    return c;
}

/* (token, k) pairs of tokens [t0, t1) routed to expert e; with epos
 * (expert-major, [T][K]) each pair's position among this rank's pairs to
 * e, from `base`, in (token, k) order. */
PROTO_HD int64_t proto_layout_expert(const proto_geom_t *g, const proto_ids_t *ids,
                                   int64_t t0, int64_t t1, int64_t e,
                                   int64_t base, int32_t *epos)
{
    int64_t c = 0;
    for (int64_t t = t0; t < t1; t++)
        for (int k = 0; k < g->K; k++)
            if (proto_expert_id(ids, t, k) == e) {
                if (epos)
                    epos[t * g->K + k] = (int32_t)(base + c);
                c++;
            }
    return c;
}

/* The same layout in one walk over the tokens in order, counters carried
 * from token to token: the host executor's form (one thread).  The
 * chunked passes above give every item the position this walk gives, for
 * any number of chunks (tests/cuda/test_kern_host compares them). */

/* Rank r into a token's ascending list of distinct destinations dst[0,
 * nd), unless there; returns the new length. */
PROTO_HD int proto_dest_insert(int32_t *dst, int nd, int r)
{
    int i = nd;
    while (i > 0 && dst[i - 1] > r)
        i--;
    if (i > 0 && dst[i - 1] == r)
        return nd;
    for (int j = nd; j > i; j--)
        dst[j] = dst[j - 1];
    dst[i] = r;
    return nd + 1;
}

/* dest[t*maxdest + j] after token t's nd destinations: -1; with dcur,
 * each destination's position pos[] among this rank's tokens to it so far
 * (dcur[d], then incremented). */
PROTO_HD void proto_walk_place(const proto_geom_t *g, int64_t t, int nd,
                               int32_t *dcur, int32_t *dest, int32_t *pos)
{
    int32_t *dst = dest + t * g->maxdest;
    for (int j = nd; j < g->maxdest; j++)
        dst[j] = -1;
    for (int j = 0; dcur && j < nd; j++)
        pos[t * g->maxdest + j] = dcur[dst[j]]++;
}

/* Token t's destinations: the distinct owners of its (kept) units in
 * ascending order into dest[t*maxdest + j], -1 after them, and with dcur
 * their positions (proto_walk_place).  Returns their number. */
PROTO_HD int proto_walk_dests(const proto_geom_t *g, const proto_ids_t *ids,
                              const int32_t *keep, const int32_t *e2r,
                              int64_t t, int32_t *dcur, int32_t *dest,
                              int32_t *pos)
{
    int nd = 0;
    for (int k = 0; k < g->K; k++) {
        int64_t e = proto_kept_id(ids, keep, t, k);
        if (e >= 0)
            nd = proto_dest_insert(dest + t * g->maxdest, nd,
                                   proto_owner(e2r, e));
    }
    proto_walk_place(g, t, nd, dcur, dest, pos);
    return nd;
}

/* Token t in one step: each choice's position among this rank's choices
 * of its unit so far (ucur[u], then incremented) into slot[t*K+k] when
 * below cap, else -1 (low latency's dropped rows; INT32_MAX: none
 * dropped), -1 for a choice of no unit — throughput mode's epos, low
 * latency's keep; then the destinations of the choices kept, as
 * proto_walk_dests.  Returns their number. */
PROTO_HD int proto_walk_token(const proto_geom_t *g, const proto_ids_t *ids,
                              const int32_t *e2r, int64_t t, int cap,
                              int32_t *ucur, int32_t *slot, int32_t *dcur,
                              int32_t *dest, int32_t *pos)
{
    int nd = 0;
    for (int k = 0; k < g->K; k++) {
        int64_t e = proto_expert_id(ids, t, k);
        int32_t n = e < 0 ? -1 : ucur[e]++;
        slot[t * g->K + k] = n < cap ? n : -1;
        if (n >= 0 && n < cap)
            nd = proto_dest_insert(dest + t * g->maxdest, nd,
                                   proto_owner(e2r, e));
    }
    proto_walk_place(g, t, nd, dcur, dest, pos);
    return nd;
}

/* ------------------------------------------------ fused layout (tiles)
 *
 * The fused throughput dispatch (src/cuda/kern_ht.cu, EPX_CUDA_KERNELS=
 * fused) lays the tokens out a warp at a time: a tile of PROTO_HT_TILE
 * tokens, lane l taking token PROTO_HT_TILE * i + l.  Each lane builds its
 * token's destinations as bit masks (proto_ht_dmask, 32 ranks a word);
 * for each destination d any lane of the tile has, the warp's ballot of
 * "my token goes to d" gives the tile's tokens to d (its popcount) and
 * each such token's index among them (proto_ht_below: the lanes below it
 * in the ballot).  The grid's warps take contiguous ranges of tiles
 * (proto_layout_range over tiles, warps in block order), count first,
 * then place: a token's position at d is the tokens to d of the lower
 * warps (lower blocks' totals, then the block's lower warps), plus those
 * of the warp's earlier tiles, plus its index in the tile — the position
 * of one walk in token order (proto_walk_dests), for any split.  The
 * functions below are what a lane computes; the host test runs them lane
 * by lane (tests/cuda/test_kern_host.c, fused_layout). */
#define PROTO_HT_TILE 32

/* Tiles of T tokens. */
PROTO_HD int64_t proto_ht_tiles(int64_t T)
{
    return (T + PROTO_HT_TILE - 1) / PROTO_HT_TILE;
}

/* Words of a destination mask (32 ranks each). */
PROTO_HD int proto_ht_mask_words(int R)
{
    return (R + 31) / 32;
}

/* Destinations of token t among ranks [32 wd, 32 wd + 32): bit d - 32 wd
 * set when a (kept) unit of t lives on rank d; 0 for t >= T. */
PROTO_HD uint32_t proto_ht_dmask(const proto_ids_t *ids, const int32_t *e2r,
                                 int64_t T, int64_t t, int wd)
{
    uint32_t m = 0;
    for (int k = 0; t < T && k < ids->K; k++) {
        int64_t e = proto_expert_id(ids, t, k);
        if (e < 0)
            continue;
        int r = proto_owner(e2r, e) - 32 * wd;
        if (r >= 0 && r < 32)
            m |= 1u << r;
    }
    return m;
}

/* Set bits of v (the device's __popc). */
PROTO_HD int proto_popc32(uint32_t v)
{
#ifdef __CUDA_ARCH__
    return __popc(v);
#else
    return __builtin_popcount(v);
#endif
}

/* Lanes below `lane` whose bit is set in the ballot b: a token's index
 * among its tile's tokens to the ballot's destination. */
PROTO_HD int proto_ht_below(uint32_t b, int lane)
{
    return proto_popc32(b & ((1u << lane) - 1u));
}

/* One tile of the count pass, its lanes in a loop: the tile's tokens to
 * each destination, added into cnt[R] (the warp: per destination a ballot
 * and its popcount). */
PROTO_HD void proto_ht_tile_count(const proto_geom_t *g,
                                  const proto_ids_t *ids, const int32_t *e2r,
                                  int64_t T, int64_t tile, int32_t *cnt)
{
    for (int wd = 0; wd < proto_ht_mask_words(g->R); wd++)
        for (int l = 0; l < PROTO_HT_TILE; l++) {
            uint32_t m = proto_ht_dmask(ids, e2r, T,
                                        tile * PROTO_HT_TILE + l, wd);
            for (int b = 0; b < 32; b++)
                if ((m >> b) & 1u)
                    cnt[32 * wd + b]++;
        }
}

/* One tile of the place pass, its lanes in a loop, as the warp does it:
 * destinations ascending (mask words, then bits of the tile's union),
 * each with its ballot; lane l's token gets dest[t*maxdest + j] = d and
 * pos = run[d] + proto_ht_below(ballot, l), its j-th destination; run[d]
 * then grows by the ballot's popcount; -1 after a token's last one. */
PROTO_HD void proto_ht_tile_place(const proto_geom_t *g,
                                  const proto_ids_t *ids, const int32_t *e2r,
                                  int64_t T, int64_t tile, int32_t *run,
                                  int32_t *dest, int32_t *pos)
{
    const int64_t t0 = tile * PROTO_HT_TILE;
    int nj[PROTO_HT_TILE];
    for (int l = 0; l < PROTO_HT_TILE; l++)
        nj[l] = 0;
    for (int wd = 0; wd < proto_ht_mask_words(g->R); wd++) {
        uint32_t m[PROTO_HT_TILE], u = 0;
        for (int l = 0; l < PROTO_HT_TILE; l++)
            u |= m[l] = proto_ht_dmask(ids, e2r, T, t0 + l, wd);
        while (u) {
            const int b = proto_popc32((u & (0u - u)) - 1u);   /* lowest */
            const int d = 32 * wd + b;
            uint32_t bal = 0;
            u &= u - 1u;
            for (int l = 0; l < PROTO_HT_TILE; l++)
                bal |= ((m[l] >> b) & 1u) << l;
            for (int l = 0; l < PROTO_HT_TILE; l++)
                if ((m[l] >> b) & 1u) {
                    const int64_t i = (t0 + l) * g->maxdest + nj[l]++;
                    dest[i] = d;
                    pos[i] = run[d] + proto_ht_below(bal, l);
                }
            run[d] += proto_popc32(bal);
        }
    }
    for (int l = 0; l < PROTO_HT_TILE && t0 + l < T; l++)
        for (int j = nj[l]; j < g->maxdest; j++)
            dest[(t0 + l) * g->maxdest + j] = -1;
}

/* Expert-major: a tile's (token, k) pairs, PROTO_HT_TILE * K of them in
 * (token, k) order, go through the warp in K rounds of PROTO_HT_TILE
 * consecutive pairs, lane l taking pair PROTO_HT_TILE * r + l of round r.
 * Its unit, or -1 (none, invalid, beyond T). */
PROTO_HD int64_t proto_ht_pair_unit(const proto_ids_t *ids, int64_t T,
                                    int64_t tile, int64_t p)
{
    const int64_t t = tile * PROTO_HT_TILE + p / ids->K;
    return t < T ? proto_expert_id(ids, t, (int)(p % ids->K)) : -1;
}

/* One tile's epos ([T][K]), its rounds and lanes in loops, as the warp
 * does it: in each round the lanes with the same unit (the warp's
 * __match_any_sync) take run[u] plus their rank among them
 * (proto_ht_below), then the group's lowest lane adds its size to run[u]
 * (run: the warp's running positions per unit, in shared memory).  The
 * rounds follow (token, k) order, so these are the walk's positions. */
PROTO_HD void proto_ht_tile_epos(const proto_ids_t *ids, int64_t T,
                                 int64_t tile, int32_t *run, int32_t *epos)
{
    const int64_t p0 = tile * PROTO_HT_TILE * ids->K;
    for (int r = 0; r < ids->K; r++) {
        int64_t u[PROTO_HT_TILE];
        uint32_t mm[PROTO_HT_TILE];
        for (int l = 0; l < PROTO_HT_TILE; l++)
            u[l] = proto_ht_pair_unit(ids, T, tile,
                                      (int64_t)r * PROTO_HT_TILE + l);
        for (int l = 0; l < PROTO_HT_TILE; l++) {
            mm[l] = 0;
            for (int l2 = 0; l2 < PROTO_HT_TILE; l2++)
                mm[l] |= (uint32_t)(u[l2] == u[l]) << l2;
            if (u[l] >= 0)
                epos[p0 + (int64_t)r * PROTO_HT_TILE + l] =
                    run[u[l]] + proto_ht_below(mm[l], l);
        }
        for (int l = 0; l < PROTO_HT_TILE; l++)
            if (u[l] >= 0 && proto_ht_below(mm[l], l) == 0)
                run[u[l]] += proto_popc32(mm[l]);
    }
}

/* Rows that the sources below s put in column c of the count matrix (a
 * destination rank d: c = d; a unit u: c = R + u).  cnt: a count buffer
 * of the call's parity from its first count word on, proto_cnt_index(g,
 * p, 0) (after the header): [R][cnt_ints] from there. */
PROTO_HD int64_t proto_cnt_below(const proto_geom_t *g, const int32_t *cnt,
                                 int s, int c)
{
    int64_t b = 0;
    for (int s2 = 0; s2 < s; s2++)
        b += cnt[(int64_t)s2 * g->cnt_ints + c];
    return b;
}

/* First row of this rank's tokens at destination d: the tokens every
 * lower source sends to d come first. */
PROTO_HD int64_t proto_dest_base(const proto_geom_t *g, const int32_t *cnt,
                               int d)
{
    return proto_cnt_below(g, cnt, g->rank, d);
}

/* First row of source s's tokens here (the same sum seen from here). */
PROTO_HD int64_t proto_src_base(const proto_geom_t *g, const int32_t *cnt, int s)
{
    return proto_cnt_below(g, cnt, s, g->rank);
}

/* Tokens received here (all sources), and local expert j's (token, k)
 * pairs. */
PROTO_HD int64_t proto_recv_rows(const proto_geom_t *g, const int32_t *cnt)
{
    return proto_src_base(g, cnt, g->R);
}
PROTO_HD int64_t proto_recv_expert(const proto_geom_t *g, const int32_t *cnt,
                                 int first_local, int j)
{
    int64_t c = 0;
    for (int s = 0; s < g->R; s++)
        c += cnt[(int64_t)s * g->cnt_ints + g->R + first_local + j];
    return c;
}

/* Expert-major: the start of local expert j + 1's segment from `at`,
 * the start of j's, at the rank whose experts start at first_local: j's
 * rows rounded up to the alignment. */
PROTO_HD int64_t proto_expert_next(const proto_geom_t *g, const int32_t *cnt,
                                   int first_local, int j, int64_t at)
{
    return proto_round_up(at + proto_recv_expert(g, cnt, first_local, j),
                          g->align);
}

/* Expert-major: first row of local expert j's segment at the rank whose
 * count buffer is cnt and whose experts start at first_local: the
 * segments before it.  j = the number of local experts gives the rows
 * received. */
PROTO_HD int64_t proto_expert_offset(const proto_geom_t *g, const int32_t *cnt,
                                   int first_local, int j)
{
    int64_t at = 0;
    for (int j2 = 0; j2 < j; j2++)
        at = proto_expert_next(g, cnt, first_local, j2, at);
    return at;
}

/* Expert-major: source s's first row for expert e at e's owner, whose
 * segment for e starts at `seg`: after the rows of every lower source.
 * cnt: any rank's copy of the count matrix (they hold the same rows). */
PROTO_HD int64_t proto_expert_base_at(const proto_geom_t *g,
                                      const int32_t *cnt, int s, int64_t e,
                                      int64_t seg)
{
    return seg + proto_cnt_below(g, cnt, s, g->R + (int)e);
}

/* Expert-major: this rank's first row for expert e (owned by rank d, whose
 * experts start at first_d) at d.  The host executor walks d's segments
 * with proto_expert_next and calls proto_expert_base_at for each. */
PROTO_HD int64_t proto_expert_base(const proto_geom_t *g, const int32_t *cnt,
                                 int first_d, int64_t e)
{
    return proto_expert_base_at(g, cnt, g->rank, e,
                                proto_expert_offset(g, cnt, first_d,
                                                    (int)(e - first_d)));
}

/* Expert-major: row of token t's k-th choice at its expert's rank (e
 * valid): ebase[E] from proto_expert_base, epos from the layout. */
PROTO_HD int64_t proto_expert_row(const proto_geom_t *g, const int64_t *ebase,
                                const int32_t *epos, int64_t e, int64_t t,
                                int k)
{
    return ebase[e] + epos[t * g->K + k];
}

/* Expert-major entry of token t at destination d: its rows there in top-k
 * order (rows[n], then -1 up to K); returns n. */
PROTO_HD int proto_entry_rows(const proto_geom_t *g, const proto_ids_t *ids,
                            const int32_t *e2r, const int64_t *ebase,
                            const int32_t *epos, int64_t t, int d,
                            int32_t *rows)
{
    int n = 0;
    for (int k = 0; k < g->K; k++) {
        int64_t e = proto_expert_id(ids, t, k);
        if (e >= 0 && proto_owner(e2r, e) == d)
            rows[n++] = (int32_t)proto_expert_row(g, ebase, epos, e, t, k);
    }
    for (int k = n; k < g->K; k++)
        rows[k] = -1;
    return n;
}

/* ------------------------------------------- expert-major over NCCL
 *
 * A grouped send/recv moves one contiguous range per peer, but a source's
 * rows are not contiguous at the destination (each local unit's segment
 * holds every source's rows).  So the sender stages its rows unit by
 * unit (units ascending, so a destination's rows are one range: the
 * units of a rank are contiguous), each unit's rows in (token, k) order
 * (epos); the receiver takes each source's range into a staging region
 * in source order, and a scatter puts every row at its expert-major row
 * (proto_expert_row's, so the bits are the windows backend's).  Entries
 * keep their token-major place (a source's entries are contiguous at the
 * destination, so they are received in place) and carry the sender's
 * staging rows, which the scatter turns into rows here. */

/* Sender: staging row of unit e's first pair, the units before it
 * (mycnt: this rank's counts [R + E]).  Used as ebase, so the pack
 * kernel's proto_expert_row is the staging row. */
PROTO_HD int64_t proto_em_stage_base(const proto_geom_t *g,
                                     const int32_t *mycnt, int64_t e)
{
    int64_t b = 0;
    for (int64_t u = 0; u < e; u++)
        b += mycnt[g->R + u];
    return b;
}

/* Receiver's map of its staging, int64 words from the count matrix (cnt:
 * as proto_src_base reads it) for the L local units from first_local;
 * chunk c = s * L + j is source s's rows of local unit j:
 *   [0, R*L]          src: staged row of chunk c's first row; [R*L] the
 *                     rows staged
 *   [R*L+1, 2RL+1)    dst: chunk c's first row here (expert-major)
 *   [2RL+1, 2RL+R+2)  ent: source s's first entry here; [R] the entries
 *   [2RL+R+2, +R)     skip: source s's staging rows before its first row
 *                     sent here (the units of lower ranks)
 * Word i of the map (a thread per word). */
PROTO_HD int64_t proto_em_map_len(const proto_geom_t *g, int L)
{
    return 2 * (int64_t)g->R * L + 2 * (int64_t)g->R + 2;
}
PROTO_HD int64_t proto_em_map_at(const proto_geom_t *g, const int32_t *cnt,
                                 int first_local, int L, int64_t i)
{
    const int64_t RL = (int64_t)g->R * L;
    if (i <= RL) {                               /* src */
        int64_t b = 0;
        for (int64_t c = 0; c < i; c++)
            b += cnt[(c / L) * g->cnt_ints + g->R + first_local + c % L];
        return b;
    }
    if (i < 2 * RL + 1) {                        /* dst */
        const int64_t c = i - RL - 1;
        const int s = (int)(c / L), j = (int)(c % L);
        int64_t b = proto_expert_offset(g, cnt, first_local, j);
        for (int s2 = 0; s2 < s; s2++)
            b += cnt[(int64_t)s2 * g->cnt_ints + g->R + first_local + j];
        return b;
    }
    if (i < 2 * RL + g->R + 2)                   /* ent */
        return proto_src_base(g, cnt, (int)(i - 2 * RL - 1));
    const int s = (int)(i - 2 * RL - g->R - 2);  /* skip */
    int64_t b = 0;
    for (int u = 0; u < first_local; u++)
        b += cnt[(int64_t)s * g->cnt_ints + g->R + u];
    return b;
}

/* The last of starts[0..n) that is <= q (starts ascending, starts[0] <=
 * q): the chunk holding q, as empty chunks start where the next does. */
PROTO_HD int64_t proto_em_find(const int64_t *starts, int64_t n, int64_t q)
{
    int64_t lo = 0, hi = n;                      /* answer in [lo, hi) */
    while (hi - lo > 1) {
        int64_t mid = lo + (hi - lo) / 2;
        if (starts[mid] <= q)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* Row here of staged row q (q < map[R*L]); *src its source. */
PROTO_HD int64_t proto_em_scatter_row(const proto_geom_t *g,
                                      const int64_t *map, int L, int64_t q,
                                      int *src)
{
    const int64_t RL = (int64_t)g->R * L;
    const int64_t c = proto_em_find(map, RL, q);
    *src = (int)(c / L);
    return map[RL + 1 + c] + q - map[c];
}

/* Source of received entry i (i < the entries). */
PROTO_HD int proto_em_entry_src(const proto_geom_t *g, const int64_t *map,
                                int L, int64_t i)
{
    return (int)proto_em_find(map + 2 * (int64_t)g->R * L + 1, g->R, i);
}

/* Row here of an entry's row r of source s (r: s's staging row). */
PROTO_HD int64_t proto_em_entry_row(const proto_geom_t *g, const int64_t *map,
                                    int L, int s, int64_t r)
{
    const int64_t RL = (int64_t)g->R * L;
    int src;
    return proto_em_scatter_row(g, map, L,
                                map[(int64_t)s * L] + r -
                                    map[2 * RL + g->R + 2 + s], &src);
}

/* Token t's metadata as destination d sees it: slot k carries the local
 * expert id and weight when expert k lives on d, else -1 and 0. */
PROTO_HD void proto_meta_topk(const proto_geom_t *g, const proto_ids_t *ids,
                            const float *w, const int32_t *e2r, int64_t t,
                            int d, int first_d, int32_t *out_idx,
                            float *out_w)
{
    for (int k = 0; k < g->K; k++) {
        int64_t e = proto_expert_id(ids, t, k);
        int mine = e >= 0 && proto_owner(e2r, e) == d;
        out_idx[k] = mine ? (int32_t)(e - first_d) : -1;
        out_w[k] = mine ? w[t * g->K + k] : 0.0f;
    }
}

/* Slot of token t's j-th destination in this rank's packed order (tokens
 * grouped by destination rank, token order within): where that
 * destination's partial comes back, and where the NCCL backend stages the
 * row.  sendoff: exclusive prefix of the per-destination counts. */
PROTO_HD int64_t proto_ret_slot(const proto_geom_t *g, const int64_t *sendoff,
                              const int32_t *dest, const int32_t *pos,
                              int64_t t, int j)
{
    int64_t i = t * g->maxdest + j;
    return sendoff[dest[i]] + pos[i];
}

/* ------------------------------------------- readiness and cached layouts
 *
 * Throughput mode on the device (src/cuda/README.md, "Readiness" and
 * "Cached dispatch"). */

/* Does source s send rows to unit u?  cnt: the count matrix as
 * proto_recv_expert reads it.  Local unit j of this rank is ready once
 * every such source's data flag arrived (the host executor's feed list,
 * src/moe/ht_poll.c). */
PROTO_HD int proto_unit_fed(const proto_geom_t *g, const int32_t *cnt, int s,
                            int64_t u)
{
    return cnt[(int64_t)s * g->cnt_ints + g->R + u] > 0;
}

/* The id a cached layout keeps for choice k of token t: the logical id,
 * or -1 for none and for an invalid id (which the layout treated as -1).
 * A cached dispatch's ids must give the same values. */
PROTO_HD int32_t proto_cache_id(const proto_ids_t *ids, int64_t t, int k)
{
    int64_t e = proto_expert_raw(ids->idx, ids->idx64, ids->K, t, k);
    return e >= 0 && e < (ids->rt.E ? ids->rt.E : ids->E) ? (int32_t)e : -1;
}

/* A device call's count block header (the host executor's words, device
 * values; seq: the call's sequence word): PROTO_CNT_CACHED holds seq when
 * the call reuses a layout (stale values of earlier calls never equal
 * it, so an uncached call writes no header), PROTO_CNT_HANDLE the
 * sequence word of the call that computed that layout, PROTO_CNT_STATUS
 * 0 or EPX_ERR_INVALID (the ids differ from the layout's).  hdr: source
 * s's header; cached, lay: this rank's call.  EPX_OK when the two calls
 * agree; EPX_ERR_MISMATCH when one is cached and the other not, or both
 * reuse layouts of different calls; EPX_ERR_PEER when s reported its ids
 * different (this rank's own report included), or refused the call's
 * arguments (PROTO_CNT_HANDLE = PROTO_CNT_REFUSED: a header-only call
 * that tells every rank to fail it, cached or not). */
#define PROTO_CNT_REFUSED ((int32_t)0x80000000u)
PROTO_HD int proto_cached_agree(const int32_t *hdr, int32_t seq, int cached,
                                int32_t lay)
{
    if (hdr[PROTO_CNT_CACHED] == seq && hdr[PROTO_CNT_HANDLE] ==
                                            PROTO_CNT_REFUSED)
        return EPX_ERR_PEER;   /* s refused its arguments: cached or not */
    if ((hdr[PROTO_CNT_CACHED] == seq) != (cached != 0))
        return EPX_ERR_MISMATCH;
    if (cached && hdr[PROTO_CNT_HANDLE] != lay)
        return EPX_ERR_MISMATCH;
    if (cached && hdr[PROTO_CNT_STATUS] != 0)
        return EPX_ERR_PEER;
    return EPX_OK;
}

/* The header words a device call sends (what proto_cached_agree reads):
 * cached, it reuses layout `lay` (route: its ids differ from the
 * layout's); refused, a bad argument on this rank (a header-only call).
 * The windows backend stores it in cached and refused calls only; the
 * NCCL backend sends it with the counts in every call, an uncached one
 * saying so with a PROTO_CNT_CACHED other than seq. */
PROTO_HD void proto_cnt_header(int32_t *hdr, int32_t seq, int cached,
                               int refused, int32_t lay, int route)
{
    hdr[PROTO_CNT_STATUS] = refused || route ? EPX_ERR_INVALID : 0;
    hdr[PROTO_CNT_HANDLE] = refused ? PROTO_CNT_REFUSED : lay;
    hdr[PROTO_CNT_CACHED] = cached || refused
        ? seq : (int32_t)((uint32_t)seq - 1u);
}

/* A rank's agreement on its call over every source's header (blk: the
 * first source's header, the next cnt_ints further): EPX_OK, or the least
 * status proto_cached_agree gave.  Over NCCL the ranks move rows only
 * when it is EPX_OK, and every rank reaches the same verdict (a rank
 * that differs from one differs from the rest, refusals and a cached
 * rank's differing ids are read by all), so no rank waits for rows that
 * a peer does not send. */
PROTO_HD int proto_cached_agree_all(const proto_geom_t *g, const int32_t *blk,
                                    int32_t seq, int cached, int32_t lay)
{
    int least = EPX_OK;
    for (int s = 0; s < g->R; s++) {
        int a = proto_cached_agree(blk + (int64_t)s * g->cnt_ints, seq,
                                   cached, lay);
        if (a < least)
            least = a;
    }
    return least;
}

/* bf16 <-> fp32, round to nearest even (the host's epx__f32_to_bf16). */
PROTO_HD float proto_bf16_to_f32(uint16_t h)
{
    union { uint32_t u; float f; } v;
    v.u = (uint32_t)h << 16;
    return v.f;
}
PROTO_HD uint16_t proto_f32_to_bf16(float f)
{
    union { uint32_t u; float f; } v;
    v.f = f;
    if ((v.u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((v.u >> 16) | 0x40);   /* quiet NaN */
    v.u += 0x7fffu + ((v.u >> 16) & 1u);
    return (uint16_t)(v.u >> 16);
}

/* Element h of a row in the engine dtype, as float. */
PROTO_HD float proto_load(const void *row, int esize, int64_t h)
{
    return esize == 2 ? proto_bf16_to_f32(((const uint16_t *)row)[h])
                      : ((const float *)row)[h];
}
PROTO_HD void proto_store(void *row, int out_esize, int64_t h, float v)
{
    if (out_esize == 2)
        ((uint16_t *)row)[h] = proto_f32_to_bf16(v);
    else
        ((float *)row)[h] = v;
}

/* Expert-major combine put, element h of an entry's partial: its rows
 * (rows[0..n)) of y in top-k order, each times its weight (w[row]; NULL:
 * EPX_COMBINE_UNWEIGHTED) summed in fp32 from 0.  The caller rounds it to
 * the engine dtype for the wire. */
PROTO_HD float proto_partial_elem(const proto_geom_t *g, const char *y,
                                const int32_t *rows, const float *w, int64_t h)
{
    float acc = 0.0f;
    for (int k = 0; k < g->K && rows[k] >= 0; k++) {
        float v = proto_load(y + (int64_t)rows[k] * g->row_bytes, g->esize, h);
        acc = acc + (w ? w[rows[k]] * v : v);
    }
    return acc;
}

/* 16 bytes of a row (8 bf16 or 4 fp32, little-endian), for the 16-byte
 * form of the expert-major partial: loaded and stored whole by the
 * kernels, taken apart here so that the host tests run the same code. */
typedef struct proto_v16 {
    uint32_t w[4];
} proto_v16_t;

/* Element e of a 16-byte piece, as fp32. */
PROTO_HD float proto_v16_elem(int esize, const proto_v16_t *p, int e)
{
    if (esize == 2)
        return proto_bf16_to_f32((uint16_t)(p->w[e >> 1] >> (16 * (e & 1))));
    union { uint32_t u; float f; } v;
    v.u = p->w[e];
    return v.f;
}

/* acc[e] += (weighted ? w * x[e] : x[e]) for the piece's 16 / esize
 * elements: one row's step of proto_partial_elem, element by element, so
 * the 16-byte form gives its bits. */
PROTO_HD void proto_partial_acc16(int esize, const proto_v16_t *p, int weighted,
                                float w, float acc[8])
{
    for (int e = 0; e < 8; e++) {
        if (esize != 2 && e >= 4)
            break;
        float v = proto_v16_elem(esize, p, e);
        acc[e] = acc[e] + (weighted ? w * v : v);
    }
}

/* acc[0..16 / esize) rounded to the engine dtype as proto_store does. */
PROTO_HD void proto_pack16(int esize, const float acc[8], proto_v16_t *p)
{
    for (int i = 0; i < 4; i++) {
        if (esize == 2) {
            p->w[i] = (uint32_t)proto_f32_to_bf16(acc[2 * i]) |
                      (uint32_t)proto_f32_to_bf16(acc[2 * i + 1]) << 16;
        } else {
            union { uint32_t u; float f; } v;
            v.f = acc[i];
            p->w[i] = v.u;
        }
    }
}

/* Combine, element h of token t: the partials of t's destinations summed
 * in ascending rank order in fp32 (0 when t went nowhere).  comb: this
 * rank's partials, one row_bytes row per slot. */
PROTO_HD float proto_combine_elem(const proto_geom_t *g, const char *comb,
                                const int64_t *sendoff, const int32_t *dest,
                                const int32_t *pos, int64_t t, int64_t h)
{
    float acc = 0.0f;
    for (int j = 0; j < g->maxdest; j++) {
        if (dest[t * g->maxdest + j] < 0)
            break;
        int64_t slot = proto_ret_slot(g, sendoff, dest, pos, t, j);
        acc = acc + proto_load(comb + slot * g->row_bytes, g->esize, h);
    }
    return acc;
}

/* ------------------------------------------------ pull combine
 *
 * The fused kernel set's combine (src/cuda/README.md, "Fused kernels:
 * pull combine"): a rank whose expert outputs y lie in its window's
 * receive rows (in place) moves nothing and says so in its combine flag;
 * each token's owner then reads the rows of its destinations straight
 * from their windows, where the dispatch put them (base + pos), and sums
 * them in ascending rank order with proto_combine_elem's arithmetic.  A
 * destination that pushed (y elsewhere) has its partial in this rank's
 * comb region as before.  A token's sum is a list of terms, the rows it
 * reads, in the order they are summed:
 *   - a whole partial (pushed, or a token-major row in place): acc += row;
 *   - expert-major in place: the entry's rows in top-k order summed from
 *     0, each times its weight unless the destination combined
 *     EPX_COMBINE_UNWEIGHTED (proto_partial_elem), rounded to the engine
 *     dtype as the pushed partial was (proto_store then proto_load), then
 *     acc += that.
 * So the bits are those of the put and the reduce.  Write after read:
 * each rank's pull, once done, stores the call into every rank's window
 * (geom.h `status`), and a rank's next dispatch stores nothing before
 * every rank's word reached its last pulled call (the pull fence), so no
 * dispatch overwrites rows a pull still reads, whatever the dispatch's
 * own waits.  An entry always has
 * a row (a destination is one of the token's because it owns one of its
 * experts); one without would add +0, which changes no sum (acc starts
 * at +0 and x + 0 is x for every x but -0, which acc never is). */

/* Sequence words of 32 bits (the pull fence's, geom.h `status`): has
 * word v reached call `want`?  Calls go on past 2^31; a word lags the
 * wanted call by far less than that. */
PROTO_HD int proto_seq_reached(int32_t v, int32_t want)
{
    return (int32_t)((uint32_t)v - (uint32_t)want) >= 0;
}

/* What a destination's combine flag says (kern_launch.h carries it in
 * the flag's top bits): its partials pushed into the sources' comb
 * regions, or its outputs in place (weighted, or unweighted). */
enum { PROTO_PULL_PUSHED = 0, PROTO_PULL_ROWS = 1,
       PROTO_PULL_UNWEIGHTED = 2 };

/* Term flags: part of an expert-major partial (else a whole one), its
 * weight applies, the partial's first row, its last row. */
enum { PROTO_TERM_PART = 1, PROTO_TERM_W = 2, PROTO_TERM_FIRST = 4,
       PROTO_TERM_LAST = 8 };

typedef struct proto_pull_term {
    const char *row;          /* the row, engine dtype */
    float w;                  /* its weight (PROTO_TERM_W) */
    int f;                    /* PROTO_TERM_* */
} proto_pull_term_t;

/* Token t's j-th destination d (dest[t * maxdest + j] >= 0): its terms,
 * at most K, into out; returns their number.  win_d: d's window as this
 * rank addresses it; comb: this rank's comb region; mode: d's
 * PROTO_PULL_*; sendoff, base, dest, pos: this rank's layout of the call
 * (base[d]: its first row, or expert-major entry, at d). */
PROTO_HD int proto_pull_dest_terms(const proto_geom_t *g, const char *win_d,
                                   const char *comb, int mode,
                                   const int64_t *sendoff,
                                   const int64_t *base, const int32_t *dest,
                                   const int32_t *pos, int64_t t, int j,
                                   proto_pull_term_t *out)
{
    const int64_t i = t * g->maxdest + j;
    if (mode == PROTO_PULL_PUSHED) {
        out[0].row = comb + proto_ret_slot(g, sendoff, dest, pos, t, j) *
                                g->row_bytes;
        out[0].w = 0.0f;
        out[0].f = 0;
        return 1;
    }
    const int64_t ent = base[dest[i]] + pos[i];
    const char *y = win_d + g->off_rows;
    if (!g->em) {
        out[0].row = y + ent * g->row_bytes;
        out[0].w = 0.0f;
        out[0].f = 0;
        return 1;
    }
    const int32_t *rows = (const int32_t *)(win_d + g->off_ent_rows) +
                          ent * g->K;
    const float *w = mode == PROTO_PULL_UNWEIGHTED
        ? NULL : (const float *)(win_d + g->off_w);
    int n = 0;
    for (int k = 0; k < g->K && rows[k] >= 0; k++, n++) {
        out[n].row = y + (int64_t)rows[k] * g->row_bytes;
        out[n].w = w ? w[rows[k]] : 0.0f;
        out[n].f = PROTO_TERM_PART | (w ? PROTO_TERM_W : 0) |
                   (k == 0 ? PROTO_TERM_FIRST : 0);
    }
    if (n > 0)
        out[n - 1].f |= PROTO_TERM_LAST;
    return n;
}

/* How many terms proto_pull_dest_terms gives (the kernel's scan over a
 * token's destinations, before each stores its own). */
PROTO_HD int proto_pull_dest_nterms(const proto_geom_t *g, const char *win_d,
                                    int mode, const int64_t *base,
                                    const int32_t *dest, const int32_t *pos,
                                    int64_t t, int j)
{
    if (mode == PROTO_PULL_PUSHED || !g->em)
        return 1;
    const int64_t i = t * g->maxdest + j;
    const int32_t *rows = (const int32_t *)(win_d + g->off_ent_rows) +
                          (base[dest[i]] + pos[i]) * g->K;
    int n = 0;
    while (n < g->K && rows[n] >= 0)
        n++;
    return n;
}

/* A partial as it travels: rounded to the engine dtype and back. */
PROTO_HD float proto_wire_round(int esize, float v)
{
    return esize == 2 ? proto_bf16_to_f32(proto_f32_to_bf16(v)) : v;
}

/* One term's element v (the row's element, as float) into the token's
 * sum acc; part: the expert-major partial being summed. */
PROTO_HD void proto_pull_acc(int esize, int f, float w, float v, float *part,
                             float *acc)
{
    if (!(f & PROTO_TERM_PART)) {
        *acc = *acc + v;
        return;
    }
    const float x = (f & PROTO_TERM_W) ? w * v : v;
    *part = (f & PROTO_TERM_FIRST) ? 0.0f + x : *part + x;
    if (f & PROTO_TERM_LAST)
        *acc = *acc + proto_wire_round(esize, *part);
}

/* The same over a 16-byte piece of the term's row (8 bf16 or 4 fp32),
 * element by element: the kernel's vector form. */
PROTO_HD void proto_pull_acc16(int esize, int f, float w,
                               const proto_v16_t *p, float part[8],
                               float acc[8])
{
    for (int e = 0; e < 8; e++) {
        if (esize != 2 && e >= 4)
            break;
        proto_pull_acc(esize, f, w, proto_v16_elem(esize, p, e), &part[e],
                       &acc[e]);
    }
}

/* Element h of a token's combine output from its terms (n of them, in
 * order): fp32, the caller rounds once to out's dtype. */
PROTO_HD float proto_pull_elem(int esize, const proto_pull_term_t *terms,
                               int n, int64_t h)
{
    float acc = 0.0f, part = 0.0f;
    for (int k = 0; k < n; k++)
        proto_pull_acc(esize, terms[k].f, terms[k].w,
                       proto_load(terms[k].row, esize, h), &part, &acc);
    return acc;
}

/* ------------------------------------------------ the reduction in rows
 *
 * The host executor's form of the combine arithmetic: the terms of
 * proto_partial_elem and proto_combine_elem, in their order and with their
 * roundings, over n consecutive elements at a time (loops the C compiler
 * vectorises).  A sum is started by `first` (acc = 0 + term, as the
 * element forms' acc = 0, acc = acc + term: the same bits, -0 included),
 * so acc needs no clearing pass.  The caller walks the terms: an entry's
 * rows in top-k order (a partial), a token's destinations in ascending
 * rank order (the combine, proto_walk_dests' order). */

#define PROTO_SUM(EXPR)                                                      \
    do {                                                                     \
        if (first)                                                           \
            for (int i = 0; i < n; i++)                                      \
                acc[i] = 0.0f + (EXPR);                                      \
        else                                                                 \
            for (int i = 0; i < n; i++)                                      \
                acc[i] = acc[i] + (EXPR);                                    \
    } while (0)

/* acc (+)= w * row over n elements of a row in the engine dtype (esize 2:
 * bf16, 4: fp32); w NULL: the term unweighted (EPX_COMBINE_UNWEIGHTED, or
 * a partial in the combine sum). */
PROTO_HD void proto_sum_row(float *__restrict__ acc, const void *row,
                            int esize, const float *w, int first, int n)
{
    if (esize == 2) {
        const uint16_t *x = (const uint16_t *)row;
        if (w) {
            const float wv = *w;
            PROTO_SUM(wv * proto_bf16_to_f32(x[i]));
        } else {
            PROTO_SUM(proto_bf16_to_f32(x[i]));
        }
    } else {
        const float *x = (const float *)row;
        if (w) {
            const float wv = *w;
            PROTO_SUM(wv * x[i]);
        } else {
            PROTO_SUM(x[i]);
        }
    }
}

/* acc (+)= a partial as it travels: part (fp32) rounded to the engine
 * dtype first (proto_store then proto_load). */
PROTO_HD void proto_sum_wire_row(float *__restrict__ acc,
                                 const float *__restrict__ part, int esize,
                                 int first, int n)
{
    if (esize == 2)
        PROTO_SUM(proto_bf16_to_f32(proto_f32_to_bf16(part[i])));
    else
        PROTO_SUM(part[i]);
}

/* n sums rounded once to the output dtype (2: bf16, 4: fp32), as
 * proto_store. */
PROTO_HD void proto_store_row(void *dst, const float *__restrict__ acc,
                              int out_esize, int n)
{
    if (out_esize == 2) {
        uint16_t *d = (uint16_t *)dst;
        for (int i = 0; i < n; i++)
            d[i] = proto_f32_to_bf16(acc[i]);
    } else {
        float *d = (float *)dst;
        for (int i = 0; i < n; i++)
            d[i] = acc[i];
    }
}

/* FP64 engines: the same sums in double.  w (fp32)
 * widens exactly and partials travel in double, so nothing rounds but the
 * double operations themselves, and the sum is the output. */
PROTO_HD void proto_sum_row_f64(double *__restrict__ acc, const double *x,
                                const float *w, int first, int n)
{
    if (w) {
        const double wv = (double)*w;
        PROTO_SUM(wv * x[i]);
    } else {
        PROTO_SUM(x[i]);
    }
}

#undef PROTO_SUM

/* Elements [c0, c0 + n) of an entry's partial: its rows (rows[0..nr)) of
 * y in top-k order, each times its weight (w[row]; NULL: unweighted),
 * into acc — proto_partial_elem over n elements. */
PROTO_HD void proto_partial_row(const proto_geom_t *g, const char *y,
                                const int32_t *rows, int nr, const float *w,
                                int64_t c0, int n, float *__restrict__ acc)
{
    for (int i = 0; nr == 0 && i < n; i++)   /* no rows: 0 */
        acc[i] = 0.0f;
    for (int k = 0; k < nr; k++)
        proto_sum_row(acc, y + (int64_t)rows[k] * g->row_bytes +
                           c0 * g->esize, g->esize, w ? &w[rows[k]] : NULL,
                      k == 0, n);
}
PROTO_HD void proto_partial_row_f64(const proto_geom_t *g, const char *y,
                                    const int32_t *rows, int nr,
                                    const float *w, int64_t c0, int n,
                                    double *__restrict__ acc)
{
    for (int i = 0; nr == 0 && i < n; i++)
        acc[i] = 0.0;
    for (int k = 0; k < nr; k++)
        proto_sum_row_f64(acc, (const double *)(y + (int64_t)rows[k] *
                                                g->row_bytes) + c0,
                          w ? &w[rows[k]] : NULL, k == 0, n);
}

/* ------------------------------------------------------ FP64 on device
 *
 * The kernels' forms of the FP64 sums above (device ranks of an FP64
 * engine): an entry's partial (proto_partial_row_f64) and a token's sum
 * over its destinations (the host's reduce_terms_f64), element by element
 * and over 16-byte pieces (2 doubles).  The terms, their order and the
 * start from 0.0 are the row forms' (0.0 + the first term), nothing is
 * rounded but the double operations, and the sum is FP64 out as it is.
 * test_kern_host checks them against the row forms and tests/ref. */

PROTO_HD double proto_load_f64(const void *row, int64_t h)
{
    return ((const double *)row)[h];
}

/* Element h of an entry's partial: proto_partial_elem in double, the
 * weight widened exactly (NULL: unweighted). */
PROTO_HD double proto_partial_elem_f64(const proto_geom_t *g, const char *y,
                                       const int32_t *rows, const float *w,
                                       int64_t h)
{
    double acc = 0.0;
    for (int k = 0; k < g->K && rows[k] >= 0; k++) {
        double v = proto_load_f64(y + (int64_t)rows[k] * g->row_bytes, h);
        acc = acc + (w ? (double)w[rows[k]] * v : v);
    }
    return acc;
}

/* Element h of token t's output: proto_combine_elem in double. */
PROTO_HD double proto_combine_elem_f64(const proto_geom_t *g,
                                       const char *comb,
                                       const int64_t *sendoff,
                                       const int32_t *dest,
                                       const int32_t *pos, int64_t t,
                                       int64_t h)
{
    double acc = 0.0;
    for (int j = 0; j < g->maxdest; j++) {
        if (dest[t * g->maxdest + j] < 0)
            break;
        int64_t slot = proto_ret_slot(g, sendoff, dest, pos, t, j);
        acc = acc + proto_load_f64(comb + slot * g->row_bytes, h);
    }
    return acc;
}

/* Element e (0 or 1) of a 16-byte piece of doubles (little-endian). */
PROTO_HD double proto_v16_elem_f64(const proto_v16_t *p, int e)
{
    union { uint64_t u; double d; } v;
    v.u = (uint64_t)p->w[2 * e] | (uint64_t)p->w[2 * e + 1] << 32;
    return v.d;
}

/* acc[e] += (weighted ? w * x[e] : x[e]): one row's step of
 * proto_partial_elem_f64 over a piece. */
PROTO_HD void proto_partial_acc16_f64(const proto_v16_t *p, int weighted,
                                      float w, double acc[2])
{
    for (int e = 0; e < 2; e++) {
        double v = proto_v16_elem_f64(p, e);
        acc[e] = acc[e] + (weighted ? (double)w * v : v);
    }
}

/* acc[e] += x[e]: one destination's step of proto_combine_elem_f64. */
PROTO_HD void proto_sum_acc16_f64(const proto_v16_t *p, double acc[2])
{
    for (int e = 0; e < 2; e++)
        acc[e] = acc[e] + proto_v16_elem_f64(p, e);
}

/* acc[0..2) as a 16-byte piece, unrounded. */
PROTO_HD void proto_pack16_f64(const double acc[2], proto_v16_t *p)
{
    for (int e = 0; e < 2; e++) {
        union { uint64_t u; double d; } v;
        v.d = acc[e];
        p->w[2 * e] = (uint32_t)v.u;
        p->w[2 * e + 1] = (uint32_t)(v.u >> 32);
    }
}

/* ------------------------------------------------------- quantized pack
 *
 * A row is quantized in chunks of MOE_QUANT_CHUNK elements, a lane of the
 * packing warp per chunk: the lanes of a block's chunks (proto_q_group of
 * them, consecutive) reduce the block's maximum, then each encodes its own
 * chunk and the block's first lane stores the scale.  NVFP4 reduces the
 * row's maximum over the whole warp first.  The values are the host
 * executor's (src/moe/quant.c) bit for bit: both use quant_codec.h. */

PROTO_HD int64_t proto_q_chunks(const proto_geom_t *g)
{
    return ((int64_t)g->H + MOE_QUANT_CHUNK - 1) / MOE_QUANT_CHUNK;
}

/* Elements of chunk c. */
PROTO_HD int proto_q_chunk_len(const proto_geom_t *g, int64_t c)
{
    int64_t n = (int64_t)g->H - c * MOE_QUANT_CHUNK;
    return n < MOE_QUANT_CHUNK ? (int)n : MOE_QUANT_CHUNK;
}

/* Chunk c of row x into v[MOE_QUANT_CHUNK], zeros after the row's end:
 * a zero changes no block maximum and its codes are not stored (an odd
 * NVFP4 tail's high nibble is e2m1(0) = 0), so every chunk is encoded
 * whole. */
PROTO_HD int proto_q_load_chunk(const proto_geom_t *g, const uint16_t *x,
                              int64_t c, uint16_t *v)
{
    const int n = proto_q_chunk_len(g, c);
    for (int i = 0; i < MOE_QUANT_CHUNK; i++)
        v[i] = i < n ? x[c * MOE_QUANT_CHUNK + i] : (uint16_t)0;
    return n;
}

/* Bytes of chunk c's codes that belong to the row. */
PROTO_HD int proto_q_chunk_stored(const proto_geom_t *g, int n)
{
    return g->wire == EPX_WIRE_NVFP4 ? (n + 1) / 2 : n;
}

/* Chunks per block: lanes reducing a block's maximum together (1, 2, 8:
 * a power of two dividing the warp). */
PROTO_HD int proto_q_group(const proto_geom_t *g)
{
    return g->qblock / MOE_QUANT_CHUNK;
}

/* NVFP4: a row's tensor scale — the caller's (given > 0, for every row of
 * the dispatch), else the row's own from its largest finite magnitude's
 * bf16 bits (the host executor's moe_wire_pack_row). */
PROTO_HD float proto_q_row_global(float given, uint32_t amax_bits)
{
    return given > 0.0f ? given
                        : moe_quant_nvfp4_gscale(moe_quant_bf16((uint16_t)amax_bits));
}

/* Data bytes of a chunk at byte chunk * proto_q_chunk_bytes of the row. */
PROTO_HD int proto_q_chunk_bytes(const proto_geom_t *g)
{
    return g->wire == EPX_WIRE_NVFP4 ? MOE_QUANT_CHUNK / 2 : MOE_QUANT_CHUNK;
}

/* The codes of one chunk of n elements (to q: n fp8 bytes or (n + 1) / 2
 * e2m1 bytes) from its block's largest finite magnitude's bits and NaN
 * flag and (NVFP4) the row's scale; returns the block's scale: fp32 bits
 * (FP8) or its byte (UE8M0, e4m3). */
PROTO_HD uint32_t proto_q_encode(const proto_geom_t *g, const uint16_t *x,
                               int n, uint32_t amax_bits, int nan,
                               float global, uint8_t *q)
{
    const float amax = moe_quant_bf16((uint16_t)amax_bits);
    if (g->wire == EPX_WIRE_FP8) {
        float s = moe_quant_fp8_scale(amax);
        moe_quant_chunk_fp8_div(x, n, s, q);
        return moe_quant_bits(s);
    }
    if (g->wire == EPX_WIRE_NVFP4) {
        uint8_t sb = moe_quant_nvfp4_bscale(amax, global);
        float s = moe_quant_nvfp4_div(sb, global);
        moe_quant_chunk_e2m1(x, n, s, nan || !(s > 0.0f), q);
        return nan ? MOE_QUANT_E4M3_NAN : sb;
    }
    uint8_t c = moe_quant_ue8m0_scale(amax);
    moe_quant_chunk_fp8_mul(x, n, moe_quant_ue8m0_inv(c), q);
    return c;
}

/* Block k's scale into a row's scales (FP32 for FP8, else one byte). */
PROTO_HD void proto_q_store_scale(const proto_geom_t *g, char *scales, int64_t k,
                                uint32_t v)
{
    if (g->wire == EPX_WIRE_FP8)
        ((uint32_t *)scales)[k] = v;
    else
        ((uint8_t *)scales)[k] = (uint8_t)v;
}

/* One row quantized once and stored to n destinations: the fused
 * dispatch's fan-out (src/cuda/kern_ht.cu), where the warp of a token
 * encodes each chunk once and stores its codes and its block's scale to
 * every destination of the token.  q[j], sc[j], gs[j]: destination j's
 * codes, scales and (NVFP4) row scale.  given: the caller's NVFP4 tensor
 * scale, or 0 (proto_q_row_global).  The arithmetic is the classic pack
 * warp's per destination (a chunk's maximum, its block's over
 * proto_q_group chunks, proto_q_encode), here block after block: the
 * codes do not depend on the destination, so every copy is the bits the
 * classic pack stores there (tests/cuda/test_kern_host, fused_quant). */
PROTO_HD void proto_q_row_fan(const proto_geom_t *g, const uint16_t *x,
                              float given, int n, char *const *q,
                              char *const *sc, float *const *gs)
{
    const int64_t chunks = proto_q_chunks(g);
    const int G = proto_q_group(g), cb = proto_q_chunk_bytes(g);
    uint16_t v[MOE_QUANT_CHUNK];
    uint8_t o[MOE_QUANT_CHUNK];
    float global = 0.0f;
    if (g->wire == EPX_WIRE_NVFP4) {
        uint32_t m = 0;
        for (int64_t c = 0; given <= 0.0f && c < chunks; c++) {
            int nan;
            proto_q_load_chunk(g, x, c, v);
            uint32_t a = moe_quant_chunk_amax(v, MOE_QUANT_CHUNK, &nan);
            m = a > m ? a : m;
        }
        global = proto_q_row_global(given, m);
        for (int j = 0; j < n; j++)
            *gs[j] = global;
    }
    for (int64_t b0 = 0; b0 < chunks; b0 += G) {
        uint32_t m = 0;
        int nan = 0;
        for (int64_t c = b0; c < b0 + G && c < chunks; c++) {
            int n1;
            proto_q_load_chunk(g, x, c, v);
            uint32_t a = moe_quant_chunk_amax(v, MOE_QUANT_CHUNK, &n1);
            m = a > m ? a : m;
            nan |= n1;
        }
        for (int64_t c = b0; c < b0 + G && c < chunks; c++) {
            const int len = proto_q_load_chunk(g, x, c, v);
            const uint32_t s = proto_q_encode(g, v, MOE_QUANT_CHUNK, m, nan,
                                              global, o);
            const int nb = proto_q_chunk_stored(g, len);
            for (int j = 0; j < n; j++) {
                for (int i = 0; i < nb; i++)
                    q[j][c * cb + i] = (char)o[i];
                if (c == b0)
                    proto_q_store_scale(g, sc[j], c / G, s);
            }
        }
    }
}

/* ------------------------------------------------------------ low latency
 *
 * The window: proto_ll_layout (geom.h). */

/* Choices of tokens [t0, t1) for expert e, in (token, k) order: slot
 * keep[t*K+k] = its index among this rank's choices of e (from `base`,
 * those of the lower chunks) when below cap, else -1 (dropped; choices of
 * other experts are left alone).  Returns the chunk's choices of e (all
 * chunks': the count word's value, which may exceed cap). */
PROTO_HD int64_t proto_ll_layout_expert(const proto_geom_t *g,
                                      const proto_ids_t *ids, int64_t t0,
                                      int64_t t1, int64_t e, int64_t base,
                                      int cap, int32_t *keep)
{
    int64_t c = 0;
    for (int64_t t = t0; t < t1; t++)
        for (int k = 0; k < g->K; k++)
            if (proto_expert_id(ids, t, k) == e) {
                keep[t * g->K + k] = base + c < cap ? (int32_t)(base + c) : -1;
                c++;
            }
    return c;
}

/* Row of source s's slot p for expert e at its owner (experts from first). */
PROTO_HD int64_t proto_ll_row(const proto_geom_t *g, int cap, int first,
                            int64_t e, int s, int64_t p)
{
    return (((e - first) * g->R + s) * (int64_t)cap) + p;
}

/* Low-latency entry of token t at destination d: its kept rows there in
 * top-k order (then -1); returns their number. */
PROTO_HD int proto_ll_entry_rows(const proto_geom_t *g, const proto_ids_t *ids,
                               const int32_t *keep, const int32_t *e2r,
                               int cap, int first_d, int64_t t, int d,
                               int32_t *rows)
{
    int n = 0;
    for (int k = 0; k < g->K; k++) {
        int64_t e = proto_kept_id(ids, keep, t, k);
        if (e >= 0 && proto_owner(e2r, e) == d)
            rows[n++] = (int32_t)proto_ll_row(g, cap, first_d, e, g->rank,
                                             keep[t * g->K + k]);
    }
    for (int k = n; k < g->K; k++)
        rows[k] = -1;
    return n;
}

/* Rows of source s for local expert j held here (count word's value
 * capped), and the rows dropped. */
PROTO_HD int64_t proto_ll_kept(int32_t word, int cap)
{
    int64_t n = word & PROTO_LL_MASK;
    return n < cap ? n : cap;
}
PROTO_HD int64_t proto_ll_dropped(int32_t word, int cap)
{
    int64_t n = word & PROTO_LL_MASK;
    return n > cap ? n - cap : 0;
}

/* Source of a received row (cw: this buffer's count words), -1 on the
 * padding of its range. */
PROTO_HD int proto_ll_row_source(const proto_geom_t *g, int cap,
                               const int32_t *cw, int64_t row)
{
    int64_t j = row / ((int64_t)g->R * cap);
    int s = (int)(row / cap % g->R);
    return row % cap < proto_ll_kept(cw[j * g->R + s], cap) ? s : -1;
}

/* The call's outcome at the receiver `me` from source s's status word
 * (device: st[s], readable once any word of s for the call arrived): 0,
 * or the host executor's error (ll_dispatch.c ll_check_source): more rows
 * than cap, EPX_ERR_RANGE; any other failure of a peer, EPX_ERR_PEER; this
 * rank's own (its layout failed on the device), its own status. */
PROTO_HD int32_t proto_ll_src_fail(int32_t st, int s, int me)
{
    if (st == 0)
        return 0;
    if (st == EPX_ERR_RANGE)
        return EPX_ERR_RANGE;
    return s == me ? st : EPX_ERR_PEER;
}

/* Readiness in low latency (epx_dispatch_poll): local unit j has every
 * row of the call once every source's count word for it carries the
 * call's tag (each source stores its rows, then its status, then the
 * word, with release), as on the host executor: 1 when they are all
 * there. */
PROTO_HD int proto_ll_unit_ready(const proto_geom_t *g, const int32_t *cw,
                                 int j, int32_t tag)
{
    for (int s = 0; s < g->R; s++)
        if (PROTO_LL_WTAG(cw[(int64_t)j * g->R + s]) != tag)
            return 0;
    return 1;
}

/* ------------------------------------ low latency in one kernel (fused)
 *
 * EPX_CUDA_KERNELS=fused (src/cuda/kern_ll.cu): one dispatch kernel whose
 * every block recomputes the call's whole layout in shared memory (no
 * grid sync, no layout kernels), and whose send and receive phases are
 * separate launches.  The layout is two stable ranks by key: the (token,
 * k) choices by unit (a choice's slot in its range: the classic keep,
 * dropped at cap), then the (token, j) destinations by rank (a token's
 * position among this rank's tokens to d: the classic pos).  A warp ranks
 * PROTO_LL1_LANES items per step in order: an item's rank is the running
 * count of its key plus the lanes below it with the same key (on the
 * device __match_any_sync gives those lanes; proto_ll1_peers is its plain
 * form), then the lowest such lane advances the count.  The ranks are
 * those of one walk in order, so keep, dest, pos and the counts are the
 * classic layout's (tests/cuda/test_kern_host compares them). */

#define PROTO_LL1_LANES 32

/* Lanes of a step [0, n) whose key equals lane's (__match_any_sync over
 * the step's keys; lanes past n hold -1, as the kernel's do). */
PROTO_HD uint32_t proto_ll1_peers(const int32_t *key, int n, int lane)
{
    const int32_t k = lane < n ? key[lane] : -1;
    uint32_t m = 0;
    for (int l = 0; l < PROTO_LL1_LANES; l++)
        if ((l < n ? key[l] : -1) == k)
            m |= 1u << l;
    return m;
}

/* An item's rank from its key's count before the step and its peers:
 * -1 for no key (-1). */
PROTO_HD int32_t proto_ll1_rank(const int32_t *cnt, int32_t key,
                                uint32_t peers, int lane)
{
    return key < 0 ? -1
                   : cnt[key] + proto_popc32(peers & ((1u << lane) - 1u));
}

/* Does lane advance its key's count after the step (by popc(peers))? */
PROTO_HD int proto_ll1_leader(int32_t key, uint32_t peers, int lane)
{
    return key >= 0 && (peers & ((1u << lane) - 1u)) == 0;
}

/* One step of the stable rank over items [i0, i0 + n) (n <= 32) of key[]:
 * rank[] and cnt[] advanced, as the warp does. */
PROTO_HD void proto_ll1_rank_step(const int32_t *key, int64_t i0, int n,
                                  int32_t *cnt, int32_t *rank)
{
    int32_t r[PROTO_LL1_LANES];
    uint32_t pm[PROTO_LL1_LANES];
    for (int l = 0; l < n; l++) {
        pm[l] = proto_ll1_peers(key + i0, n, l);
        r[l] = proto_ll1_rank(cnt, key[i0 + l], pm[l], l);
    }
    for (int l = 0; l < n; l++) {
        if (proto_ll1_leader(key[i0 + l], pm[l], l))
            cnt[key[i0 + l]] += proto_popc32(pm[l]);
        rank[i0 + l] = r[l];
    }
}

/* Slot of a choice of rank r: kept below cap, else dropped (-1). */
PROTO_HD int32_t proto_ll1_slot(int32_t r, int cap)
{
    return r >= 0 && r < cap ? r : -1;
}

/* Token t's kept destinations in ascending order into dest[t*maxdest..]
 * (-1 after them), from the units of its choices (unit[t*K+k], -1 none)
 * and their slots (keep): proto_walk_dests from the shared arrays. */
PROTO_HD int proto_ll1_token_dests(const proto_geom_t *g, const int32_t *unit,
                                   const int32_t *keep, const int32_t *e2r,
                                   int64_t t, int32_t *dest)
{
    int nd = 0;
    for (int k = 0; k < g->K; k++)
        if (keep[t * g->K + k] >= 0)
            nd = proto_dest_insert(dest + t * g->maxdest, nd,
                                   proto_owner(e2r, unit[t * g->K + k]));
    for (int j = nd; j < g->maxdest; j++)
        dest[t * g->maxdest + j] = -1;
    return nd;
}

/* The call's own status from its layout: invalid ids (proto_expert_bad
 * anywhere), else a unit's choices beyond cap without DROP, else 0.
 * cnt: [R + E] the layout's counts. */
PROTO_HD int32_t proto_ll1_status(const proto_geom_t *g, int bad,
                                  const int32_t *cnt, int cap, int drop)
{
    if (bad)
        return EPX_ERR_INVALID;
    for (int e = 0; e < g->E && !drop; e++)
        if (cnt[g->R + e] > cap)
            return EPX_ERR_RANGE;
    return 0;
}

/* The whole layout as one block computes it: unit[] (T*K), keep[] (T*K),
 * dest[] and pos[] (T*maxdest), cnt[R + E] (from zero: tokens to each
 * rank, choices of each unit, dropped ones too), in steps of 32 items.
 * Returns the number of ids proto_expert_bad flags. */
PROTO_HD int proto_ll1_layout(const proto_geom_t *g, const proto_ids_t *ids,
                              const int32_t *e2r, int64_t T, int cap,
                              int32_t *unit, int32_t *keep, int32_t *dest,
                              int32_t *pos, int32_t *cnt)
{
    int bad = 0;
    for (int u = 0; u < g->R + g->E; u++)
        cnt[u] = 0;
    for (int64_t i = 0; i < T * g->K; i++) {
        unit[i] = (int32_t)proto_expert_id(ids, i / g->K, (int)(i % g->K));
        bad += proto_expert_bad(ids, i / g->K, (int)(i % g->K));
    }
    for (int64_t i0 = 0; i0 < T * g->K; i0 += PROTO_LL1_LANES) {
        int64_t n = T * g->K - i0;
        proto_ll1_rank_step(unit, i0, n < PROTO_LL1_LANES ? (int)n
                                                         : PROTO_LL1_LANES,
                            cnt + g->R, keep);
    }
    for (int64_t i = 0; i < T * g->K; i++)
        keep[i] = proto_ll1_slot(keep[i], cap);
    for (int64_t t = 0; t < T; t++)
        proto_ll1_token_dests(g, unit, keep, e2r, t, dest);
    for (int64_t i0 = 0; i0 < T * g->maxdest; i0 += PROTO_LL1_LANES) {
        int64_t n = T * g->maxdest - i0;
        proto_ll1_rank_step(dest, i0, n < PROTO_LL1_LANES ? (int)n
                                                         : PROTO_LL1_LANES,
                            cnt, pos);
    }
    return bad;
}

/* Shared memory of a block's layout for T tokens: unit, keep [T*K], dest,
 * pos [T*maxdest], counts [R + E], int32; return offsets [R] int64. */
PROTO_HD int64_t proto_ll1_smem(const proto_geom_t *g, int64_t T)
{
    return 4 * (2 * T * g->K + 2 * T * g->maxdest + g->R + g->E) +
           8 * ((int64_t)g->R + 1);
}
/* The most the fused kernel asks for (the engine takes the classic
 * kernels for a larger maxT). */
#define PROTO_LL1_SMEM_MAX (96 * 1024)

/* Kept rows of token t (its choices in top-k order with a slot): row[k]
 * at the owner, -1 for a choice not sent; each row gets the token's one
 * load (quantized once) and its weight.  Returns how many. */
PROTO_HD int proto_ll1_token_rows(const proto_geom_t *g, const int32_t *unit,
                                  const int32_t *keep, const int32_t *e2r,
                                  const int32_t *first, int cap, int64_t t,
                                  int64_t *row)
{
    int n = 0;
    for (int k = 0; k < g->K; k++) {
        int32_t s = keep[t * g->K + k];
        if (s < 0) {
            row[k] = -1;
            continue;
        }
        int64_t e = unit[t * g->K + k];
        row[k] = proto_ll_row(g, cap, first[proto_owner(e2r, e)], e, g->rank,
                              s);
        n++;
    }
    return n;
}

/* Combine's send phase takes the received entries back to back, source
 * after source: pre[s] the entries of the sources below s (pre[0] = 0,
 * pre[R] all, from the final words' counts).  The source of item it
 * (< pre[R]): the last s with pre[s] <= it; its entry it - pre[s]. */
PROTO_HD int proto_ll1_entry_source(const int64_t *pre, int R, int64_t it)
{
    int lo = 0, hi = R - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (pre[mid] <= it)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* The receive phase writes a range's metadata (row source, and for
 * padding src_token -1 and weight 0) only where it changed: each
 * (local expert, source) range keeps a mark word of the last receive
 * phase, its use number and the rows it held.  Use u's phase writes rows
 * [lo, hi): between the rows kept now and those of the mark when the mark
 * is use u - 1's, else the whole range (first use, or a use between
 * without receive phase: abandoned, or classic kernels).  Senders store
 * only rows below their count, so rows at or above the mark stay padding. */
#define PROTO_LL1_MARKED (1ull << 63)

PROTO_HD uint64_t proto_ll1_mark(uint32_t u, int64_t kept)
{
    return PROTO_LL1_MARKED | (uint64_t)(u & 0x7fffffffu) << 32 |
           (uint64_t)kept;
}

PROTO_HD void proto_ll1_span(uint64_t mark, uint32_t u, int64_t kept,
                             int cap, int64_t *lo, int64_t *hi)
{
    if (!(mark & PROTO_LL1_MARKED) ||
        ((mark >> 32) & 0x7fffffffu) != ((u - 1u) & 0x7fffffffu)) {
        *lo = 0;
        *hi = cap;
        return;
    }
    const int64_t prev = (int64_t)(mark & 0xffffffffu);
    *lo = prev < kept ? prev : kept;
    *hi = prev > kept ? prev : kept;
}

#endif /* EPX_PROTO_H */
