/*
 * Hierarchical two-hop dispatch and combine (EPX_MOE_HIERARCHICAL): the
 * domains, the staging record, the window regions, every position a
 * gateway writes and the combine chain's order, for both executors (the
 * host's src/moe/hier.c, hier_combine.c; a device executor's kernels).
 *
 * Domains are contiguous blocks of L ranks (ND = R / L): rank r is in
 * domain r / L with local index r % L, and the gateway of source s in
 * domain D is D's rank with s's local index.  A token crosses once per
 * remote destination domain, as a staging record to the gateway there,
 * which forwards it to its destinations in the domain at the flat path's
 * offsets.  The record carries the token's positions from the source's
 * own layout (per choice: its position among the source's tokens to the
 * choice's owner, and among the source's choices of its unit), so a
 * gateway computes each destination row from the count matrix and the
 * record alone, with no walk over the source's earlier tokens: a kernel
 * may take the records in any order, one (record, destination) at a time.
 *
 * Combine: each member puts its partial of a forwarded token into the
 * token's gateway in its domain at the slot below (grouped by member, as
 * the flat path's return slots are by destination); the gateways of the
 * token's destination domains chain an fp32 (FP64 engines: fp64)
 * accumulator in ascending domain order, the last into the source: the
 * flat path's sum term for term (proto.h, the reduction in rows).
 *
 * Plain C (PROTO_HD), compiled by the C compiler and by nvcc; checked over
 * simulated ranks and domain shapes against the reference by
 * tests/proto/test_hier_core.c.
 */
#ifndef EPX_PROTO_HIER_H
#define EPX_PROTO_HIER_H

#include <stdint.h>
#include "proto/proto.h"

typedef struct proto_hier {
    int R, L, ND;       /* ranks, ranks per domain, domains */
    int dom, li;        /* this rank's domain and local index */
    int maxdl;          /* min(K, L): a token's destinations in a domain */
} proto_hier_t;

/* L, the ranks per domain, when the domains of ranks 0..R-1 (dom[r], any
 * ids) are contiguous blocks of one size in which no id repeats; else 0. */
PROTO_HD int proto_hier_blocks(const int32_t *dom, int R)
{
    int L = 1;
    while (L < R && dom[L] == dom[0])
        L++;
    if (R < 1 || R % L)
        return 0;
    for (int r = 0; r < R; r++) {
        const int head = r / L * L;
        if (dom[r] != dom[head] || dom[r] < 0)
            return 0;
        if (r % L == 0 && r > 0 && dom[r] == dom[r - 1])
            return 0;
        for (int b = 0; r % L == 0 && b < r / L; b++)
            if (dom[b * L] == dom[r])
                return 0;
    }
    return L;
}

PROTO_HD void proto_hier_shape(proto_hier_t *x, int R, int L, int K, int rank)
{
    x->R = R;
    x->L = L;
    x->ND = R / L;
    x->dom = rank / L;
    x->li = rank % L;
    x->maxdl = K < L ? K : L;
}

/* The gateway of source src in domain D. */
PROTO_HD int proto_hier_gateway(const proto_hier_t *x, int src, int D)
{
    return D * x->L + src % x->L;
}

/* Destination j of a token (dst[0..] its destination ranks, ascending):
 * the remote domain it opens, where the token is staged, or -1 (a
 * domain of an earlier destination, or the source's own domain `dom`). */
PROTO_HD int proto_hier_stage_dom(const int32_t *dst, int j, int L, int dom)
{
    const int D = dst[j] / L;
    return D == dom || (j > 0 && dst[j - 1] / L == D) ? -1 : D;
}

/* --------------------------------------------------- the staging record
 *
 * A token as a gateway sees it: int32 t, then per choice k (K each)
 * the unit (-1 none), the weight (fp32), dpos (its position among the
 * source's tokens to the unit's owner, proto_walk_token's pos; -1 for
 * none) and upos (its position among the source's choices of the unit,
 * the walk's slot: expert-major rows), padded to 16 bytes; then the row
 * in the wire format in the order row scale, scales, data (fp32 scales
 * stay aligned), padded to 16. */
#define PROTO_HIER_REC_IDS(K) 1
#define PROTO_HIER_REC_W(K) (1 + (K))
#define PROTO_HIER_REC_DPOS(K) (1 + 2 * (K))
#define PROTO_HIER_REC_UPOS(K) (1 + 3 * (K))

PROTO_HD int64_t proto_hier_rec_hdr(int K)
{
    return proto_round_up(4 * (1 + 4 * (int64_t)K), 16);
}

PROTO_HD int64_t proto_hier_rec_bytes(int K, int64_t wire_row)
{
    return proto_round_up(proto_hier_rec_hdr(K) + wire_row, 16);
}

/* Token t's record header from the source's layout (dest/pos: its
 * destinations and positions there, proto_walk_token; upos its slot
 * array, NULL for a token-major layout, which has no use for it) into rec
 * (proto_hier_rec_hdr(K) bytes, 4-aligned). */
PROTO_HD void proto_hier_rec_fill(const proto_geom_t *g,
                                  const proto_ids_t *ids, const float *w,
                                  const int32_t *e2r, const int32_t *dest,
                                  const int32_t *pos, const int32_t *upos,
                                  int64_t t, int32_t *rec)
{
    const int K = g->K;
    rec[0] = (int32_t)t;
    for (int k = 0; k < K; k++) {
        const int64_t u = proto_expert_id(ids, t, k);
        int32_t dp = -1;
        for (int j = 0; u >= 0 && j < g->maxdest; j++)
            if (dest[t * g->maxdest + j] == proto_owner(e2r, u)) {
                dp = pos[t * g->maxdest + j];
                break;
            }
        rec[PROTO_HIER_REC_IDS(K) + k] = (int32_t)u;
        ((float *)rec)[PROTO_HIER_REC_W(K) + k] = w[t * K + k];
        rec[PROTO_HIER_REC_DPOS(K) + k] = dp;
        rec[PROTO_HIER_REC_UPOS(K) + k] = u >= 0 && upos ? upos[t * K + k] : -1;
    }
}

/* The record's ids as proto_ids_t sees a token (token 0 of [1][K] int32
 * units). */
PROTO_HD proto_ids_t proto_hier_rec_ids(const int32_t *rec, int K, int U)
{
    proto_ids_t ids = { rec + PROTO_HIER_REC_IDS(K), 0, K, U,
                        { 0, NULL, NULL, NULL } };
    return ids;
}

/* The record's position at destination d (owner of one of its units). */
PROTO_HD int32_t proto_hier_rec_dpos(const int32_t *rec, int K,
                                     const int32_t *e2r, int d)
{
    for (int k = 0; k < K; k++) {
        const int32_t u = rec[PROTO_HIER_REC_IDS(K) + k];
        if (u >= 0 && proto_owner(e2r, u) == d)
            return rec[PROTO_HIER_REC_DPOS(K) + k];
    }
    return -1;
}

/* ------------------------------------------------------ window regions
 *
 * After `at` (the end of the executor's own regions), each 64-aligned,
 * this rank as gateway / source:
 *   shdr   [ND][2] int32       staging count and sequence word per source
 *                              domain
 *   pdone  [L] int32           combine: partials complete, per member
 *   cdone  [ND] int32          combine: accumulators complete, per domain
 *   fdone  [ND] int32          combine: finished sums complete, per
 *                              gateway's domain (reserved: the host
 *                              executor's call order says it)
 *   stage  [ND][maxT] records  staging records per source domain
 *   part   [ND][P] rows        partials of this domain's members, P =
 *                              maxT x maxdl rows of row_bytes
 *   chain  [ND][maxT][H] acc   accumulators from earlier domains
 *   final  [maxT][H] acc       this rank's finished sums */
typedef struct proto_hier_win {
    int64_t shdr, pdone, cdone, fdone, stage, part, chain, final, end;
    int64_t P;                  /* partial slots per source domain */
} proto_hier_win_t;

PROTO_HD void proto_hier_layout(proto_hier_win_t *w, const proto_hier_t *x,
                                int64_t at, int64_t maxT, int64_t H,
                                int64_t rec_bytes, int64_t row_bytes,
                                int64_t acc_size)
{
    const int64_t ND = x->ND;
    w->P = maxT * x->maxdl;
    w->shdr = at = proto_round_up(at, 64);
    w->pdone = at = proto_round_up(at + ND * 2 * 4, 64);
    w->cdone = at = proto_round_up(at + (int64_t)x->L * 4, 64);
    w->fdone = at = proto_round_up(at + ND * 4, 64);
    w->stage = at = proto_round_up(at + ND * 4, 64);
    w->part = at = proto_round_up(at + ND * maxT * rec_bytes, 64);
    w->chain = at = proto_round_up(at + ND * w->P * row_bytes, 64);
    w->final = at = proto_round_up(at + ND * maxT * H * acc_size, 64);
    w->end = proto_round_up(at + maxT * H * acc_size, 64);
}

/* --------------------------------------------------------- forwarding
 *
 * cnt: the call's count matrix (proto_cnt_index(g, p, 0), any rank's
 * copy).  Source src's tokens at member d start at its first entry
 * there (token-major: its first row), and its choices of unit u of d at
 * its first row in u's segment: what the flat path's bases give src. */
PROTO_HD int64_t proto_hier_entbase(const proto_geom_t *g,
                                    const int32_t *cnt, int src, int d)
{
    return proto_cnt_below(g, cnt, src, d);
}

/* Expert-major: src's first row for each unit of member d (units
 * first_d .. first_d + nloc - 1) into rowbase[u]. */
PROTO_HD void proto_hier_rowbases(const proto_geom_t *g, const int32_t *cnt,
                                  int src, int first_d, int nloc,
                                  int64_t *rowbase)
{
    int64_t at = 0;   /* the member's segments, in unit order */
    for (int i = 0; i < nloc; i++) {
        rowbase[first_d + i] = proto_expert_base_at(g, cnt, src, first_d + i,
                                                    at);
        at = proto_expert_next(g, cnt, first_d, i, at);
    }
}

/* Expert-major: the row of the record's choice k (unit u, owned by a
 * member) there. */
PROTO_HD int64_t proto_hier_row(const int64_t *rowbase, const int32_t *rec,
                                int K, int k)
{
    return rowbase[rec[PROTO_HIER_REC_IDS(K) + k]] +
           rec[PROTO_HIER_REC_UPOS(K) + k];
}

/* Expert-major: the same row from the count matrix alone, for a gateway
 * that keeps no bases (the device's forward kernel): the record's choice
 * k, of a unit of the member whose units start at first_d. */
PROTO_HD int64_t proto_hier_unit_row(const proto_geom_t *g,
                                     const int32_t *cnt, int src, int first_d,
                                     const int32_t *rec, int K, int k)
{
    const int32_t u = rec[PROTO_HIER_REC_IDS(K) + k];
    return proto_expert_base_at(g, cnt, src, u,
                                proto_expert_offset(g, cnt, first_d,
                                                    u - first_d)) +
           rec[PROTO_HIER_REC_UPOS(K) + k];
}

/* Where member d's partial of src's token (its position dpos at d) lies
 * in its gateway's part region, in rows: src's domain's slots, then src's
 * tokens to the members of d's domain below d, then dpos. */
PROTO_HD int64_t proto_hier_slot(const proto_geom_t *g, const proto_hier_t *x,
                                 const int32_t *cnt, int64_t P, int src,
                                 int d, int32_t dpos)
{
    int64_t s = (int64_t)(src / x->L) * P + dpos;
    for (int d2 = d / x->L * x->L; d2 < d; d2++)
        s += cnt[(int64_t)src * g->cnt_ints + d2];
    return s;
}

/* ------------------------------------------------------------ the chain
 *
 * A token's destinations dst[0..nd) ascending, seen from the gateway of
 * domain D: its terms here are dst[*j0 .. *j0 + n) (n returned; 0: D is
 * not on the chain); the sum starts here when *j0 == 0, and goes on to
 * the gateway of domain *next, or (-1) to the source. */
PROTO_HD int proto_hier_chain(const int32_t *dst, int nd, int L, int D,
                              int *j0, int *next)
{
    int j = 0, n = 0;
    while (j < nd && dst[j] / L < D)
        j++;
    while (j + n < nd && dst[j + n] / L == D)
        n++;
    *j0 = j;
    *next = j + n < nd ? dst[j + n] / L : -1;
    return n;
}

/* Element e of a gateway's stretch of a token's sum: the partials at rows
 * slot[0..here) of part (rows of the engine dtype) added in that order to
 * the accumulator so far, in (unused where the sum starts here, start:
 * 0 + the first term), proto.h's row sums (proto_sum_row) element by
 * element.  FP64 engines: the same in double (proto_sum_row_f64), partials
 * and accumulators unrounded. */
PROTO_HD float proto_hier_acc_elem(const proto_geom_t *g, const char *part,
                                   const int64_t *slot, int here, int start,
                                   float in, int64_t e)
{
    float a = proto_load(part + slot[0] * g->row_bytes, g->esize, e);
    a = start ? 0.0f + a : in + a;
    for (int j = 1; j < here; j++)
        a = a + proto_load(part + slot[j] * g->row_bytes, g->esize, e);
    return a;
}

PROTO_HD double proto_hier_acc_elem_f64(const proto_geom_t *g,
                                        const char *part, const int64_t *slot,
                                        int here, int start, double in,
                                        int64_t e)
{
    double a = proto_load_f64(part + slot[0] * g->row_bytes, e);
    a = start ? 0.0 + a : in + a;
    for (int j = 1; j < here; j++)
        a = a + proto_load_f64(part + slot[j] * g->row_bytes, e);
    return a;
}

/* ---------------------------------------------- bytes across domains
 *
 * What epx_moe_cross_domain_bytes counts (include/epx.h): in dispatch a
 * record's row in the wire format (wrow bytes) for each token and remote
 * destination domain (proto_hier_stage_dom >= 0); in combine an
 * accumulator row (frow bytes) for each chain step that leaves the
 * gateway's domain: on to the next domain's gateway, or home to a source
 * in another domain. */
PROTO_HD int64_t proto_hier_cross_stage(const int32_t *dst, int j, int L,
                                        int dom, int64_t wrow)
{
    return proto_hier_stage_dom(dst, j, L, dom) >= 0 ? wrow : 0;
}

PROTO_HD int64_t proto_hier_cross_chain(const proto_hier_t *x, int next,
                                        int src, int64_t frow)
{
    return next >= 0 || src / x->L != x->dom ? frow : 0;
}

/* An accumulator element: fp32, or fp64 for an FP64 engine (esize 8). */
PROTO_HD int64_t proto_hier_acc_size(int esize)
{
    return esize == 8 ? 8 : 4;
}

#endif /* EPX_PROTO_HIER_H */
