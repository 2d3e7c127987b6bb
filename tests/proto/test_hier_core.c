/*
 * The hierarchical two-hop protocol's core (src/proto/hier.h) over
 * simulated ranks and domain shapes, against the independent reference
 * (tests/ref: the flat contract).  Every source lays its tokens out
 * (proto_walk_token), the count matrix is built from those counts, and
 * then only the core says what goes where:
 *   dispatch: the source's record of each token (proto_hier_rec_fill) to
 *     the gateway of each remote destination domain (proto_hier_stage_dom,
 *     proto_hier_gateway); every gateway forwards its records, taken in a
 *     random order, to its domain's members at the positions of
 *     proto_hier_entbase / rowbases / row / slot; the source forwards its
 *     own tokens inside its domain the same way.  Each rank's rows,
 *     metadata and entries are then compared with the reference's receive,
 *     and every entry and row is written once.
 *   combine: each member's partial of each entry (the reference's y, the
 *     core's partial and its rounding) into its gateway at the entry's
 *     slot, then the gateways of each domain in ascending order chain the
 *     fp32 (fp64) accumulators (proto_hier_chain, proto_hier_acc_elem) into
 *     the sources; the rounded sums must be the reference's combine
 *     output bit for bit (and so the flat path's).
 * The same calls then run as the point-to-point messages of
 * proto/hier_nccl.h (the form for grouped sends and receives), in each
 * rank's stagings and window as proto_hier_stg_layout lays them out,
 * every exchange made of the op lists src/cuda/hier.c posts
 * (proto_hier_ops_*): per group and ordered pair the sends and receives
 * must pair up in number, order and size, each op lie in its region, the
 * bytes move by the ops alone, the host's count blocks come from the
 * read-back span; the receive regions, the gateways' partials and the
 * finished sums must be the windows form's byte for byte (bf16, fp32
 * and fp64: accumulators of proto_hier_acc_size, as in the windows form).
 * The message form is the device's NCCL path's (count blocks, records
 * and chain rows placed by counters in any order, hop 2 at its
 * positions, the member's return slot its place in hop 2's receive).
 * Both count the bytes that cross domains (proto_hier_cross_stage,
 * proto_hier_cross_chain) against a count from the destinations alone.
 * Shapes: 1 to 72 ranks in domains of 1 to all ranks, both layouts (with
 * segment alignment), bf16, fp32 and fp64 (FP64 engines: partials and
 * accumulators in double, against ref_combine_f64), tokens that go
 * nowhere, ranks with no tokens, every token on one expert, K above and
 * below the domain size; plus proto_hier_blocks on equal, unequal, interleaved and
 * repeated domain ids and the window regions' order and sizes.
 * The host executor runs the same functions (src/moe/hier.c,
 * hier_combine.c), and tests/moe/test_hier checks it against the same
 * reference.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/epx_test.h"
#include "ref/ref.h"
#include "proto/hier.h"
#include "proto/hier_nccl.h"

static epxt_rng_t rng;

typedef struct scen {
    int R, L, E, K, H, maxT;
    epx_dtype_t dtype;
    int em, align, unweighted;
    int route;       /* 0 random with -1, 1 all to expert 0, 2 none */
    int zero_tokens; /* odd ranks send nothing */
} scen_t;

typedef struct src_state {
    int64_t T;
    void *x;
    int64_t *idx64;
    int32_t *units, *dest, *pos, *upos;
    float *w;
    int32_t *mycnt;          /* [R + E] */
} src_state_t;

/* What a rank holds: its receive rows and metadata, its entries, the
 * expert outputs (y) of its rows, and as gateway its staging, partials,
 * chain accumulators; as source its finished sums. */
typedef struct rank_win {
    char *rows;              /* [xrows][row_bytes] */
    int32_t *src_rank, *src_token, *idx;
    float *w;                /* token-major [xrows][K], else [xrows] */
    int32_t *ent;            /* [xrows][3 + K]: src, slot, n, rows */
    int32_t *ent_hits, *row_hits;
    double *y;               /* expert-major: [xrows][H] y of each row */
    char **stage;            /* [ND] records */
    int64_t *nstage;         /* [ND] */
    char *part;              /* [ND * P][row_bytes] */
    int32_t *part_hits;
    char *chain;             /* [ND][maxT][H] accumulators (fp32; FP64
                                engines: double) */
    char *final;             /* [maxT][H] accumulators */
} rank_win_t;

static float y_value(int src, int64_t t, int who, int h)
{
    return (float)((int)(epxt_hash(epxt_seed(), (uint64_t)src, (uint64_t)t,
                                   (uint64_t)who, (uint64_t)h) % 41) - 20) /
           16.0f;
}

static void y_fn(void *ctx, int src, int64_t t, int who, float *row)
{
    const int H = *(const int *)ctx;
    for (int h = 0; h < H; h++)
        row[h] = y_value(src, t, who, h);
}

/* FP64 engines: expert outputs with every bit of the double's mantissa
 * and a spread of exponents, so any change of order or rounding shows. */
static double y64_value(int src, int64_t t, int who, int h)
{
    uint64_t x = epxt_hash(epxt_seed() ^ 0x64, (uint64_t)src, (uint64_t)t,
                           (uint64_t)who, (uint64_t)h);
    double u = (double)(x >> 11) * (1.0 / 9007199254740992.0); /* [0,1) */
    return (u * 8.0 - 4.0) * (double)(1 << (x & 7)) * 0.125;
}

static void y64_fn(void *ctx, int src, int64_t t, int who, double *row)
{
    const int H = *(const int *)ctx;
    for (int h = 0; h < H; h++)
        row[h] = y64_value(src, t, who, h);
}

/* Row `who`'s y of token t of src in double (exact for fp32 values). */
static void y_row(int esize, int H, int src, int64_t t, int who, double *row)
{
    for (int h = 0; h < H; h++)
        row[h] = esize == 8 ? y64_value(src, t, who, h)
                            : (double)y_value(src, t, who, h);
}

/* Forward one record of source src to the members of gateway G's domain
 * (proto/hier.h), into their windows (only: that member alone; rslot >= 0:
 * the entry's return slot, the message form's, else the windows form's). */
static void forward(const proto_geom_t *g0, const proto_hier_t *gx,
                    const int32_t *cnt, int64_t P, const int32_t *first,
                    const int32_t *e2r, int src, const int32_t *rec,
                    const char *row, rank_win_t *win, int only,
                    int64_t rslot)
{
    const int K = g0->K, L = gx->L, D = gx->dom;
    const proto_ids_t ids = proto_hier_rec_ids(rec, K, g0->E);
    const float *rw = (const float *)rec + PROTO_HIER_REC_W(K);
    int32_t dst[EPX_MAX_TOPK], lidx[EPX_MAX_TOPK];
    float lw[EPX_MAX_TOPK];
    int64_t *rowbase = malloc(sizeof(int64_t) * (size_t)g0->E);
    int nd = proto_walk_dests(g0, &ids, NULL, e2r, 0, NULL, dst, NULL);
    for (int j = 0; j < nd; j++) {
        const int d = dst[j];
        if (d / L != D || (only >= 0 && d != only))
            continue;
        proto_geom_t g = *g0;
        g.rank = d;
        rank_win_t *w = &win[d];
        const int32_t dp = proto_hier_rec_dpos(rec, K, e2r, d);
        assert_true(dp >= 0);
        const int64_t e_at = proto_hier_entbase(&g, cnt, src, d) + dp;
        assert_true(e_at >= 0 && e_at < g.ents);
        int32_t *ent = w->ent + e_at * (3 + K);
        w->ent_hits[e_at]++;
        ent[0] = src;
        ent[1] = rslot >= 0 ? (int32_t)rslot
                            : (int32_t)proto_hier_slot(&g, gx, cnt, P, src, d,
                                                       dp);
        ent[2] = 0;
        proto_meta_topk(&g, &ids, rw, e2r, 0, d, first[d], lidx, lw);
        if (g.em) {
            proto_hier_rowbases(&g, cnt, src, first[d],
                                first[d + 1] - first[d], rowbase);
            for (int k = 0; k < K; k++) {
                if (lidx[k] < 0)
                    continue;
                const int64_t r = proto_hier_row(rowbase, rec, K, k);
                assert_true(r >= 0 && r < g.xrows);
                /* the device's form, without the bases */
                assert_int_equal(proto_hier_unit_row(&g, cnt, src, first[d],
                                                     rec, K, k), r);
                w->row_hits[r]++;
                ent[3 + ent[2]++] = (int32_t)r;
                memcpy(w->rows + r * g.row_bytes, row, (size_t)g.row_bytes);
                w->src_rank[r] = src;
                w->src_token[r] = rec[0];
                w->w[r] = lw[k];
                y_row(g.esize, g.H, src, rec[0],
                      rec[PROTO_HIER_REC_IDS(K) + k], w->y + r * g.H);
            }
            continue;
        }
        w->row_hits[e_at]++;
        memcpy(w->rows + e_at * g.row_bytes, row, (size_t)g.row_bytes);
        w->src_rank[e_at] = src;
        w->src_token[e_at] = rec[0];
        memcpy(w->idx + e_at * K, lidx, sizeof(int32_t) * (size_t)K);
        memcpy(w->w + e_at * K, lw, sizeof(float) * (size_t)K);
    }
    free(rowbase);
}

/* Member d's partial of its entry i (the flat path's: the reference's y
 * token-major; expert-major the core's partial of its rows' y in the
 * engine dtype, proto.h proto_partial_row, rounded; FP64 in double,
 * unrounded, proto_partial_row_f64) into dst. */
static void entry_partial(const scen_t *sc, const proto_geom_t *g,
                          const rank_win_t *w, int64_t i, char *dst)
{
    const int K = g->K, H = g->H, esize = g->esize;
    const int32_t *ent = w->ent + i * (3 + K);
    float *acc = malloc(sizeof(float) * (size_t)H);
    double *yd = malloc(sizeof(double) * (size_t)H);
    if (!sc->em) {
        y_row(esize, H, ent[0], w->src_token[i], g->rank, yd);
        for (int h = 0; h < H; h++)
            acc[h] = (float)yd[h];
        if (esize == 8)
            memcpy(dst, yd, sizeof(double) * (size_t)H);
        else
            proto_store_row(dst, acc, esize, H);
        free(yd);
        free(acc);
        return;
    }
    char *yrows = calloc((size_t)(g->xrows + 1), (size_t)g->row_bytes);
    for (int k = 0; k < ent[2]; k++) {
        const double *yr = w->y + (int64_t)ent[3 + k] * H;
        char *o = yrows + (int64_t)ent[3 + k] * g->row_bytes;
        for (int h = 0; h < H; h++)
            acc[h] = (float)yr[h];
        if (esize == 8)
            memcpy(o, yr, sizeof(double) * (size_t)H);
        else
            proto_store_row(o, acc, esize, H);
    }
    const float *wt = sc->unweighted ? NULL : w->w;
    if (esize == 8) {
        proto_partial_row_f64(g, yrows, ent + 3, ent[2], wt, 0, H,
                              (double *)dst);
    } else {
        proto_partial_row(g, yrows, ent + 3, ent[2], wt, 0, H, acc);
        proto_store_row(dst, acc, esize, H);
    }
    free(yrows);
    free(yd);
    free(acc);
}

static void win_alloc(rank_win_t *w, const proto_geom_t *g0, int64_t maxT,
                      int ND, int64_t P, int64_t recb, int64_t accsz)
{
    const int K = g0->K, H = g0->H;
    const int64_t xr = (g0->xrows > g0->ents ? g0->xrows : g0->ents) + 1;
    w->rows = calloc((size_t)xr, (size_t)g0->row_bytes);
    w->src_rank = malloc(sizeof(int32_t) * (size_t)xr);
    w->src_token = malloc(sizeof(int32_t) * (size_t)xr);
    w->idx = calloc((size_t)xr * (size_t)K, sizeof(int32_t));
    w->w = calloc((size_t)xr * (size_t)K, sizeof(float));
    w->ent = calloc((size_t)xr * (size_t)(3 + K), sizeof(int32_t));
    w->ent_hits = calloc((size_t)xr, sizeof(int32_t));
    w->row_hits = calloc((size_t)xr, sizeof(int32_t));
    w->y = calloc((size_t)xr * (size_t)H, sizeof(double));
    for (int64_t i = 0; i < xr; i++)
        w->src_rank[i] = w->src_token[i] = -1;
    w->stage = calloc((size_t)ND, sizeof(char *));
    w->nstage = calloc((size_t)ND, sizeof(int64_t));
    for (int b = 0; b < ND; b++)
        w->stage[b] = calloc((size_t)maxT + 1, (size_t)recb);
    w->part = calloc((size_t)(ND * P + 1), (size_t)g0->row_bytes);
    w->part_hits = calloc((size_t)(ND * P + 1), sizeof(int32_t));
    w->chain = calloc((size_t)ND * (size_t)maxT * (size_t)H + 1,
                      (size_t)accsz);
    w->final = calloc((size_t)maxT * (size_t)H + 1, (size_t)accsz);
}

static void win_free(rank_win_t *w, int ND)
{
    for (int b = 0; b < ND; b++)
        free(w->stage[b]);
    free(w->stage), free(w->nstage), free(w->part), free(w->part_hits);
    free(w->chain), free(w->final), free(w->rows), free(w->src_rank);
    free(w->src_token), free(w->idx), free(w->w), free(w->ent);
    free(w->ent_hits), free(w->row_hits), free(w->y);
}

/* n random-ordered indices 0..n-1: the order a device's counters may
 * give. */
static int64_t *shuffled(int64_t n)
{
    int64_t *o = malloc(sizeof(int64_t) * (size_t)(n + 1));
    for (int64_t i = 0; i < n; i++)
        o[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)epxt_below(&rng, (uint64_t)i + 1), v;
        v = o[i], o[i] = o[j], o[j] = v;
    }
    return o;
}

/* The destinations of record k of source domain b at gateway G: its own
 * token k (b == G's domain; none: nd 0), else its k-th staged record. */
static const int32_t *msg_rec(const proto_geom_t *g, const rank_win_t *w,
                              int b, int64_t k, int64_t recb,
                              const int32_t *e2r, int32_t *dst, int *nd)
{
    const int32_t *rc = (const int32_t *)(w->stage[b] + k * recb);
    const proto_ids_t u = proto_hier_rec_ids(rc, g->K, g->E);
    *nd = proto_walk_dests(g, &u, NULL, e2r, 0, NULL, dst, NULL);
    return rc;
}

/* A simulated rank of the device form: the layout it builds
 * (proto_hier_stg_layout), its stagings in one allocation so laid out,
 * and its window from w.stage on (hop 1's and the partials' receives). */
typedef struct sim_rank {
    proto_hier_stg_t l;
    char *stg, *win;
} sim_rank_t;

static char *sim_at(const sim_rank_t *s, const proto_hier_win_t *w, int reg,
                    int64_t off)
{
    return reg < PROTO_HIER_REG_NSTG ? s->stg + s->l.off[reg] + off
                                     : s->win + (s->l.off[reg] - w->stage) + off;
}

/* One grouped exchange as NCCL takes it, from every rank's ops
 * (op[r][0..n[r]), as src/cuda/hier.c posts them): each op inside its
 * region; on a rank no receive overlapping another op of the group; for
 * each ordered pair (A, B) A's sends to B and B's receives from A alike
 * in number, order and size (else NCCL hangs).  Then the bytes move,
 * each send into the receive it pairs with. */
static void sim_group(int R, sim_rank_t *sim, const proto_hier_win_t *w,
                      proto_hier_op_t *const *op, const int *n)
{
    for (int r = 0; r < R; r++) {
        for (int i = 0; i < n[r]; i++) {
            const proto_hier_op_t *a = &op[r][i];
            assert_true(a->peer >= 0 && a->peer < R);
            assert_true(a->reg >= 0 && a->reg < PROTO_HIER_REG_N);
            assert_true(a->bytes > 0 && a->off >= 0);
            assert_true(a->off + a->bytes <= sim[r].l.size[a->reg]);
            for (int j = 0; j < i; j++) {
                const proto_hier_op_t *b = &op[r][j];
                if ((a->recv || b->recv) && a->reg == b->reg)
                    assert_true(a->off + a->bytes <= b->off ||
                                b->off + b->bytes <= a->off);
            }
        }
    }
    for (int A = 0; A < R; A++)
        for (int B = 0; B < R; B++)
            for (int i = 0, j = 0;; i++, j++) {
                while (i < n[A] && (op[A][i].recv || op[A][i].peer != B))
                    i++;
                while (j < n[B] && (!op[B][j].recv || op[B][j].peer != A))
                    j++;
                assert_int_equal(i < n[A], j < n[B]);
                if (i == n[A])
                    break;
                const proto_hier_op_t *s = &op[A][i], *d = &op[B][j];
                assert_int_equal(s->bytes, d->bytes);
                memcpy(sim_at(&sim[B], w, d->reg, d->off),
                       sim_at(&sim[A], w, s->reg, s->off), (size_t)s->bytes);
            }
}

/* The two-hop path as the device's NCCL form runs it (proto/hier_nccl.h,
 * src/cuda/hier.c), over simulated ranks: each step a kernel does is
 * done here into the rank's stagings and window as proto_hier_stg_layout
 * lays them out; every grouped exchange is the op lists hier.c posts
 * (proto_hier_ops_*), paired and moved by sim_group.  Stage (the count
 * blocks, each source's records to hop 1 in a random order), the count
 * blocks' group and their read-back (the host's blocks are taken from
 * the read-back span only), hop 1, the gateway's pack (each record at
 * hop 2's position), hop 2, the member's scatter (its entries' return
 * slot: the record's place in its receive), the partials (hop 2
 * reversed, into the window's part), the chain a round per domain (rows
 * in a random order, landed at their tokens), the finished sums landed.
 * The receive regions, the gateways' partials and the finished sums must
 * be the windows path's (win, already checked against the reference)
 * byte for byte. */
static void run_msgs(const scen_t *sc, const proto_geom_t *g0,
                     const int32_t *cnt, const int32_t *first,
                     const int32_t *e2r, const src_state_t *ss,
                     const rank_win_t *win, int64_t P)
{
    const int R = sc->R, L = sc->L, K = sc->K, H = sc->H;
    const int ND = R / L;
    const int64_t recb = proto_hier_rec_bytes(K, g0->row_bytes);
    const int64_t hdr = proto_hier_rec_hdr(K), rb = g0->row_bytes;
    const int64_t accsz = proto_hier_acc_size(g0->esize);
    const int64_t crow = proto_hier_crow_bytes(H, accsz);
    const int64_t maxT = sc->maxT;
    proto_hier_t x0;
    proto_hier_shape(&x0, R, L, K, 0);
    const int CB = proto_hier_cb_len(&x0);
    proto_hier_win_t w;   /* the window's regions, after the geometry's */
    proto_hier_layout(&w, &x0, g0->total, maxT, H, recb, rb, accsz);
    assert_int_equal(w.P, P);
    rank_win_t *w2 = calloc((size_t)R, sizeof(*w2));
    sim_rank_t *sim = calloc((size_t)R, sizeof(*sim));
    proto_hier_op_t **op = calloc((size_t)R, sizeof(*op));
    int *nop = calloc((size_t)R, sizeof(int));
    int32_t **hb = calloc((size_t)R, sizeof(*hb));    /* the read-backs */
    const int32_t **hs = calloc((size_t)R, sizeof(*hs)), /* blocks sent */
                  **hr = calloc((size_t)R, sizeof(*hr)); /* received */
    for (int r = 0; r < R; r++) {
        proto_hier_t rx;
        proto_hier_shape(&rx, R, L, K, r);
        proto_geom_t g = *g0;
        g.rank = r;
        proto_hier_stg_layout(&sim[r].l, &g, &rx, &w, recb);
        assert_int_equal(sim[r].l.crow, crow);
        sim[r].stg = calloc((size_t)sim[r].l.total + 1, 1);
        sim[r].win = calloc((size_t)(w.end - w.stage), 1);
        op[r] = malloc(sizeof(proto_hier_op_t) *
                       (size_t)proto_hier_ops_max(&rx));
        win_alloc(&w2[r], g0, maxT, ND, P, recb, accsz);
        /* the records staged and the partials: the simulated window's */
        for (int b = 0; b < ND; b++) {
            free(w2[r].stage[b]);
            w2[r].stage[b] = sim_at(&sim[r], &w, PROTO_HIER_REG_WSTAGE,
                                    b * maxT * recb);
        }
        free(w2[r].part);
        w2[r].part = sim_at(&sim[r], &w, PROTO_HIER_REG_WPART, 0);
    }
    /* count blocks each rank filled [ND][CB] (the kernel's) */
    int32_t *sblk = calloc((size_t)R * (size_t)ND * (size_t)CB, 4);
    char **fwd = calloc((size_t)R, sizeof(char *));   /* hop 2 received */
    int64_t *nfwd = calloc((size_t)R, sizeof(int64_t));
    int32_t **nslot = calloc((size_t)R, sizeof(int32_t *));
    const int64_t xr = (g0->xrows > g0->ents ? g0->xrows : g0->ents) + 1;
    int32_t dst[EPX_MAX_TOPK];
#define GROUP(call)                                                          \
    do {                                                                     \
        for (int r_ = 0; r_ < R; r_++) {                                     \
            proto_hier_t rx;                                                 \
            proto_hier_shape(&rx, R, L, K, r_);                              \
            proto_geom_t g = *g0;                                            \
            g.rank = r_;                                                     \
            const proto_hier_stg_t *l = &sim[r_].l;                          \
            (void)g;                                                         \
            nop[r_] = (call);                                                \
            assert_true(nop[r_] <= proto_hier_ops_max(&rx));                 \
        }                                                                    \
        sim_group(R, sim, &w, op, nop);                                      \
    } while (0)

    /* Stage: the count blocks, each source's own records (at its domain
     * in the window's stage), and a copy per remote domain into hop 1's
     * staging at a slot from that domain's counter (tokens in a random
     * order), the counter the block's count. */
    for (int s = 0; s < R; s++) {
        const src_state_t *x = &ss[s];
        proto_hier_t sx;
        proto_hier_shape(&sx, R, L, K, s);
        proto_geom_t g = *g0;
        g.rank = s;
        int32_t *sb = sblk + (int64_t)s * ND * CB;
        proto_hier_cb_fill(&g, &sx, x->dest, x->T, sb);
        memcpy(sim_at(&sim[s], &w, PROTO_HIER_REG_CBS, 0), sb,
               sizeof(int32_t) * (size_t)(ND * CB));
        const proto_ids_t ids = { x->units, 0, K, g0->E,
                                  { 0, NULL, NULL, NULL } };
        for (int64_t t = 0; t < x->T; t++) {
            if (x->dest[t * g.maxdest] < 0)
                continue;
            char *r = w2[s].stage[sx.dom] + t * recb;
            proto_hier_rec_fill(&g, &ids, x->w, e2r, x->dest, x->pos, x->upos,
                                t, (int32_t *)r);
            memcpy(r + hdr, (const char *)x->x + t * rb, (size_t)rb);
        }
        int64_t *order = shuffled(x->T), *ctr = calloc((size_t)ND, 8);
        char *hop1 = sim_at(&sim[s], &w, PROTO_HIER_REG_SSTAGE, 0);
        for (int64_t i = 0; i < x->T; i++) {
            const int64_t t = order[i];
            const int32_t *d = x->dest + t * g0->maxdest;
            for (int j = 0; j < g0->maxdest && d[j] >= 0; j++) {
                const int D = proto_hier_stage_dom(d, j, L, sx.dom);
                if (D >= 0)
                    memcpy(hop1 + (D * maxT + ctr[D]++) * recb,
                           w2[s].stage[sx.dom] + t * recb, (size_t)recb);
            }
        }
        for (int D = 0; D < ND; D++) {
            proto_hier_t gx;
            proto_hier_shape(&gx, R, L, K, proto_hier_gateway(&sx, s, D));
            assert_int_equal(ctr[D], proto_hier_cb_staged(
                                         &gx, sx.dom, sb + (int64_t)D * CB));
        }
        free(order);
        free(ctr);
    }
    /* The count blocks' group, then each rank's read-back: the host's
     * blocks, sent and received, from that span alone, which must be the
     * blocks filled and those the sources filled for this gateway. */
    GROUP(proto_hier_ops_counts(l, &rx, op[r_]));
    for (int r = 0; r < R; r++) {
        const proto_hier_stg_t *l = &sim[r].l;
        proto_hier_t rx;
        proto_hier_shape(&rx, R, L, K, r);
        hb[r] = malloc((size_t)l->rb_bytes);
        memcpy(hb[r], sim[r].stg + l->rb_off, (size_t)l->rb_bytes);
        assert_true(l->rb_sent >= 0 && l->rb_recv >= 0 &&
                    l->rb_sent % 4 == 0 && l->rb_recv % 4 == 0);
        assert_true(l->rb_sent + 4 * ND * CB <= l->rb_bytes &&
                    l->rb_recv + 4 * ND * CB <= l->rb_bytes);
        hs[r] = (const int32_t *)((const char *)hb[r] + l->rb_sent);
        hr[r] = (const int32_t *)((const char *)hb[r] + l->rb_recv);
        assert_memory_equal(hs[r], sblk + (int64_t)r * ND * CB,
                            sizeof(int32_t) * (size_t)(ND * CB));
        for (int b = 0; b < ND; b++)
            assert_memory_equal(hr[r] + (int64_t)b * CB,
                                sblk + ((int64_t)(b * L + rx.li) * ND +
                                        rx.dom) * CB,
                                sizeof(int32_t) * (size_t)CB);
    }

    /* Hop 1, sized from the blocks read back; each gateway's records
     * per source domain, the windows form's count. */
    GROUP(proto_hier_ops_hop1(l, &g, &rx, hs[r_], hr[r_], op[r_]));
    for (int G = 0; G < R; G++) {
        proto_hier_t gx;
        proto_hier_shape(&gx, R, L, K, G);
        for (int b = 0; b < ND; b++) {
            w2[G].nstage[b] = b == gx.dom ? 0
                : proto_hier_cb_staged(&gx, b, hr[G] + (int64_t)b * CB);
            assert_int_equal(w2[G].nstage[b], win[G].nstage[b]);
        }
    }

    /* The gateway's pack: its records at their places in hop 2's send
     * staging (every place filled once); then hop 2. */
    for (int G = 0; G < R; G++) {
        proto_hier_t gx;
        proto_hier_shape(&gx, R, L, K, G);
        proto_geom_t g = *g0;
        g.rank = G;
        const int m1 = (gx.dom + 1) * L;
        const int64_t tot = proto_hier_fwd_at(&g, &gx, cnt, G, m1);
        char *out = sim_at(&sim[G], &w, PROTO_HIER_REG_FSTAGE, 0);
        assert_true(tot * recb <= sim[G].l.size[PROTO_HIER_REG_FSTAGE]);
        int32_t *hits = calloc((size_t)tot + 1, sizeof(int32_t));
        for (int b = 0; b < ND; b++) {
            const int64_t n = b == gx.dom ? ss[G].T : w2[G].nstage[b];
            for (int64_t k = 0; k < n; k++) {
                if (b == gx.dom && ss[G].dest[k * g.maxdest] < 0)
                    continue;   /* a token of its own sent nowhere */
                const char *r = w2[G].stage[b] + k * recb;
                for (int m = gx.dom * L; m < m1; m++) {
                    const int32_t dp = proto_hier_rec_dpos((const int32_t *)r,
                                                           K, e2r, m);
                    if (dp < 0)
                        continue;
                    int64_t nseg;
                    const int64_t at = proto_hier_fwd_at(&g, &gx, cnt, G, m) +
                        proto_hier_msg_seg(&g, &gx, cnt, G, m, b, &nseg) + dp;
                    assert_true(dp < nseg);
                    hits[at]++;
                    memcpy(out + at * recb, r, (size_t)recb);
                }
            }
        }
        for (int64_t i = 0; i < tot; i++)
            assert_int_equal(hits[i], 1);
        free(hits);
    }
    GROUP(proto_hier_ops_hop2(l, &g, &rx, cnt, op[r_]));
    for (int m = 0; m < R; m++) {
        proto_hier_t mx;
        proto_hier_shape(&mx, R, L, K, m);
        proto_geom_t gm = *g0;
        gm.rank = m;
        /* hier.c's count for the scatter */
        nfwd[m] = proto_hier_fwd_rat(&gm, &mx, cnt, (mx.dom + 1) * L, m);
        fwd[m] = sim_at(&sim[m], &w, PROTO_HIER_REG_RFWD, 0);
        assert_true(nfwd[m] * recb <= sim[m].l.size[PROTO_HIER_REG_RFWD]);
    }
    /* The member's scatter: each received record to its rows and entry,
     * its return slot its place in the receive. */
    for (int m = 0; m < R; m++) {
        proto_hier_t mx;
        proto_hier_shape(&mx, R, L, K, m);
        proto_geom_t g = *g0;
        g.rank = m;
        int src = -1;
        int32_t dp = -1;
        assert_int_equal(proto_hier_fwd_locate(&g, &mx, cnt, m, nfwd[m], &src,
                                               &dp), 0);
        for (int64_t i = 0; i < nfwd[m]; i++) {
            const int32_t *r = (const int32_t *)(fwd[m] + i * recb);
            assert_int_equal(proto_hier_fwd_locate(&g, &mx, cnt, m, i, &src,
                                                   &dp), 1);
            assert_int_equal(proto_hier_rec_dpos(r, K, e2r, m), dp);
            forward(g0, &mx, cnt, P, first, e2r, src, r, (const char *)r + hdr,
                    w2, m, i);
        }
        nslot[m] = malloc(sizeof(int32_t) * (size_t)xr);
        for (int64_t e = 0; e < xr; e++)
            nslot[m][e] = w2[m].ent[e * (3 + K) + 1];
    }
    for (int r = 0; r < R; r++) {
        proto_hier_t rx;
        proto_hier_shape(&rx, R, L, K, r);
        proto_geom_t g = *g0;
        g.rank = r;
        /* the return slots: a place in the receive here, the windows
         * form's slot at the gateway; then the rest alike */
        for (int64_t e = 0; e < xr; e++) {
            int32_t *en = w2[r].ent + e * (3 + K);
            if (!w2[r].ent_hits[e])
                continue;
            int src = -1;
            int32_t dp = -1;
            assert_int_equal(proto_hier_fwd_locate(&g, &rx, cnt, r, en[1], &src,
                                                   &dp), 1);
            assert_int_equal(src, en[0]);
            assert_int_equal(proto_hier_slot(&g, &rx, cnt, P, src, r, dp),
                             win[r].ent[e * (3 + K) + 1]);
            en[1] = win[r].ent[e * (3 + K) + 1];
        }
        assert_memory_equal(w2[r].rows, win[r].rows, (size_t)(xr * rb));
        assert_memory_equal(w2[r].src_rank, win[r].src_rank, 4 * (size_t)xr);
        assert_memory_equal(w2[r].src_token, win[r].src_token, 4 * (size_t)xr);
        assert_memory_equal(w2[r].idx, win[r].idx, 4 * (size_t)(xr * K));
        assert_memory_equal(w2[r].w, win[r].w, 4 * (size_t)(xr * K));
        assert_memory_equal(w2[r].ent, win[r].ent, 4 * (size_t)(xr * (3 + K)));
        assert_memory_equal(w2[r].ent_hits, win[r].ent_hits, 4 * (size_t)xr);
        assert_memory_equal(w2[r].row_hits, win[r].row_hits, 4 * (size_t)xr);
        assert_memory_equal(w2[r].y, win[r].y, 8 * (size_t)(xr * H));
    }

    /* Combine, put: each entry's partial at its return slot in the
     * member's partials' staging; then their group, each row received
     * once (counted from the receives) into the window's part. */
    for (int m = 0; m < R; m++) {
        proto_geom_t g = *g0;
        g.rank = m;
        char *pst = sim_at(&sim[m], &w, PROTO_HIER_REG_PSTAGE, 0);
        for (int64_t e = 0; e < xr; e++)
            if (w2[m].ent_hits[e]) {   /* at the slot the scatter gave */
                assert_true(nslot[m][e] >= 0 && nslot[m][e] < nfwd[m]);
                entry_partial(sc, &g, &w2[m], e,
                              pst + (int64_t)nslot[m][e] * rb);
            }
    }
    GROUP(proto_hier_ops_parts(l, &g, &rx, cnt, op[r_]));
    for (int G = 0; G < R; G++) {
        for (int i = 0; i < nop[G]; i++) {
            const proto_hier_op_t *o = &op[G][i];
            if (!o->recv)
                continue;
            assert_int_equal(o->reg, PROTO_HIER_REG_WPART);
            assert_true(o->off % rb == 0 && o->bytes % rb == 0);
            for (int64_t j = 0; j < o->bytes / rb; j++)
                w2[G].part_hits[o->off / rb + j]++;
        }
        assert_memory_equal(w2[G].part_hits, win[G].part_hits,
                            4 * (size_t)(ND * P + 1));
        assert_memory_equal(w2[G].part, win[G].part, (size_t)(ND * P * rb));
    }

    /* The chain, a round per domain ascending: each gateway of D lands
     * the rows received in the rounds before (as many as hier.c's
     * count) at their tokens, continues the sums of the records it holds
     * (taken in a random order) into its messages in the chain's send
     * staging (rows placed by a counter per message); then the round's
     * group on every rank. */
    int64_t *cur = calloc((size_t)(2 * ND), sizeof(int64_t));
    for (int D = 0; D < ND; D++) {
        for (int G = D * L; G < (D + 1) * L; G++) {
            proto_hier_t gx;
            proto_hier_shape(&gx, R, L, K, G);
            proto_geom_t g = *g0;
            g.rank = G;
            const int32_t *rb_ = hr[G];
            const int64_t nin = proto_hier_chain_before(&gx, rb_, D);
            const char *rch = sim_at(&sim[G], &w, PROTO_HIER_REG_RCHAIN, 0);
            for (int64_t i = 0; i < nin; i++) {   /* land */
                const int32_t *h = (const int32_t *)(rch + i * crow);
                assert_true(h[0] >= 0 && h[0] < ND && h[1] >= 0 && h[1] < maxT);
                memcpy(w2[G].chain + ((int64_t)h[0] * maxT + h[1]) * H * accsz,
                       (const char *)h + PROTO_HIER_CROW_HDR,
                       (size_t)(H * accsz));
            }
            char *out = sim_at(&sim[G], &w, PROTO_HIER_REG_CSEND, 0);
            memset(cur, 0, sizeof(int64_t) * (size_t)(2 * ND));
            for (int b = 0; b < ND; b++) {
                const int src = proto_hier_gateway(&gx, G, b);
                const int64_t n = b == D ? ss[G].T : w2[G].nstage[b];
                int64_t *order = shuffled(n);
                for (int64_t i = 0; i < n; i++) {
                    const int64_t k = order[i];
                    if (b == D && ss[G].dest[k * g.maxdest] < 0)
                        continue;
                    int nd;
                    const int32_t *rc = msg_rec(&g, &w2[G], b, k, recb, e2r,
                                                dst, &nd);
                    const int64_t t = rc[0];
                    int j0, next;
                    const int here = proto_hier_chain(dst, nd, L, D, &j0,
                                                      &next);
                    if (here == 0)
                        continue;
                    int64_t slot[EPX_MAX_TOPK];
                    for (int j = 0; j < here; j++)
                        slot[j] = proto_hier_slot(&g, &gx, cnt, P, src,
                                                  dst[j0 + j],
                                                  proto_hier_rec_dpos(
                                                      rc, K, e2r, dst[j0 + j]));
                    const int q = next >= 0 ? next : ND + b;
                    assert_true(cur[q] < proto_hier_cmsg_n(&gx, rb_, q));
                    int32_t *row = (int32_t *)(out +
                        (proto_hier_cmsg_at(&gx, rb_, q) + cur[q]++) * crow);
                    row[0] = b;
                    row[1] = (int32_t)t;
                    char *a = (char *)row + PROTO_HIER_CROW_HDR;
                    const char *in = w2[G].chain + ((int64_t)b * maxT + t) *
                                                       H * accsz;
                    for (int h = 0; h < H; h++)
                        if (accsz == 8)
                            ((double *)a)[h] = proto_hier_acc_elem_f64(
                                &g, w2[G].part, slot, here, j0 == 0,
                                j0 == 0 ? 0.0 : ((const double *)in)[h], h);
                        else
                            ((float *)a)[h] = proto_hier_acc_elem(
                                &g, w2[G].part, slot, here, j0 == 0,
                                j0 == 0 ? 0.0f : ((const float *)in)[h], h);
                }
                free(order);
            }
            /* each message full; none to this or an earlier domain */
            for (int q = 0; q < 2 * ND; q++) {
                const int64_t n = proto_hier_cmsg_n(&gx, rb_, q);
                assert_int_equal(cur[q], n);
                assert_true(q >= ND || q > D || n == 0);
            }
        }
        GROUP(proto_hier_ops_chain(l, &rx, hs[r_], hr[r_], D, op[r_]));
    }
    /* The sources land their sums (hier.c's count of them). */
    for (int s = 0; s < R; s++) {
        const src_state_t *x = &ss[s];
        proto_hier_t sx;
        proto_hier_shape(&sx, R, L, K, s);
        int64_t sent = 0;
        for (int64_t t = 0; t < x->T; t++)
            sent += x->dest[t * g0->maxdest] >= 0;
        const int64_t nf = proto_hier_final_before(&sx, hs[s], ND);
        assert_int_equal(nf, sent);
        const char *rfin = sim_at(&sim[s], &w, PROTO_HIER_REG_RFINAL, 0);
        for (int64_t i = 0; i < nf; i++) {
            const int32_t *h = (const int32_t *)(rfin + i * crow);
            assert_int_equal(h[0], s / L);
            assert_true(h[1] >= 0 && h[1] < x->T);
            memcpy(w2[s].final + (int64_t)h[1] * H * accsz,
                   (const char *)h + PROTO_HIER_CROW_HDR, (size_t)(H * accsz));
        }
        assert_memory_equal(w2[s].final, win[s].final,
                            (size_t)(x->T * H * accsz + 1));
    }
#undef GROUP

    free(cur);
    for (int r = 0; r < R; r++) {
        for (int b = 0; b < ND; b++)
            w2[r].stage[b] = NULL;   /* the simulated window's */
        w2[r].part = NULL;
        win_free(&w2[r], ND);
        free(nslot[r]), free(sim[r].stg), free(sim[r].win), free(op[r]);
        free(hb[r]);
    }
    free(fwd), free(nfwd), free(sblk), free(nslot), free(w2), free(sim);
    free(op), free(nop), free(hb), free(hs), free(hr);
}

static void run(const scen_t *sc)
{
    const int R = sc->R, E = sc->E, K = sc->K, H = sc->H, L = sc->L;
    const int esize = sc->dtype == EPX_DTYPE_BF16 ? 2
                    : sc->dtype == EPX_DTYPE_FP64 ? 8 : 4;
    const int64_t accsz = proto_hier_acc_size(esize);
    assert_true(R % L == 0 && R <= 128);
    proto_geom_t g0 = { 0 };
    proto_geom_shape(&g0, R, 0, E, K, H, esize, EPX_WIRE_NATIVE, sc->maxT,
                     sc->em, sc->align);
    proto_geom_layout(&g0);
    int32_t *e2r = malloc(sizeof(int32_t) * (size_t)E);
    int32_t first[129];
    for (int r = 0; r <= R; r++)
        first[r] = proto_first_expert(R, E, r);
    for (int r = 0; r < R; r++)
        for (int e = first[r]; e < first[r + 1]; e++)
            e2r[e] = r;
    proto_hier_t gx;
    proto_hier_shape(&gx, R, L, K, 0);
    const int ND = gx.ND;
    const int64_t P = (int64_t)sc->maxT * gx.maxdl;
    assert_int_equal(gx.maxdl, K < L ? K : L);

    /* Sources: tokens, the walk, the count matrix. */
    src_state_t *ss = calloc((size_t)R, sizeof(*ss));
    ref_tokens_t *rt = calloc((size_t)R, sizeof(*rt));
    int32_t *cnt = calloc((size_t)R * (size_t)g0.cnt_ints, sizeof(int32_t));
    for (int s = 0; s < R; s++) {
        src_state_t *x = &ss[s];
        x->T = sc->zero_tokens && s % 2 ? 0
             : (int64_t)epxt_below(&rng, (uint64_t)sc->maxT + 1);
        const size_t TK = (size_t)(x->T * K + 1);
        x->x = calloc((size_t)(x->T * H + 1), (size_t)esize);
        x->idx64 = calloc(TK, sizeof(int64_t));
        x->units = calloc(TK, sizeof(int32_t));
        x->upos = calloc(TK, sizeof(int32_t));
        x->w = calloc(TK, sizeof(float));
        x->dest = calloc((size_t)(x->T * g0.maxdest + 1), sizeof(int32_t));
        x->pos = calloc((size_t)(x->T * g0.maxdest + 1), sizeof(int32_t));
        x->mycnt = calloc((size_t)(R + E), sizeof(int32_t));
        for (int64_t i = 0; i < x->T * H; i++)
            ref_store(sc->dtype, x->x, i,
                      (float)((int)epxt_below(&rng, 2001) - 1000) / 64.0f);
        for (int64_t t = 0; t < x->T; t++)
            for (int k = 0; k < K; k++) {
                int64_t e = -1;
                if (sc->route == 1)
                    e = k == 0 ? 0 : -1;
                else if (sc->route == 0 && epxt_below(&rng, 5) != 0) {
                    int again;   /* distinct experts per token */
                    do {
                        e = (int64_t)epxt_below(&rng, (uint64_t)E);
                        again = 0;
                        for (int k2 = 0; k2 < k; k2++)
                            again |= x->idx64[t * K + k2] == e;
                    } while (again && E >= K);
                }
                x->idx64[t * K + k] = e;
                x->units[t * K + k] = (int32_t)e;
                x->w[t * K + k] = (float)epxt_below(&rng, 1000) / 997.0f;
            }
        proto_geom_t g = g0;
        g.rank = s;
        const proto_ids_t ids = { x->units, 0, K, E, { 0, NULL, NULL, NULL } };
        int32_t *dcur = x->mycnt, *ucur = x->mycnt + R;
        for (int64_t t = 0; t < x->T; t++)
            proto_walk_token(&g, &ids, e2r, t, INT32_MAX, ucur, x->upos, dcur,
                             x->dest, x->pos);
        memcpy(cnt + (int64_t)s * g0.cnt_ints, x->mycnt,
               sizeof(int32_t) * (size_t)(R + E));
        rt[s] = (ref_tokens_t){ x->T, x->x, x->idx64, x->w, 0 };
    }

    const int64_t recb = proto_hier_rec_bytes(K, g0.row_bytes);
    const int64_t hdr = proto_hier_rec_hdr(K);
    assert_true(hdr >= 4 * (1 + 4 * K) && hdr % 16 == 0);
    assert_true(recb >= hdr + g0.row_bytes && recb % 16 == 0);
    rank_win_t *win = calloc((size_t)R, sizeof(*win));
    for (int r = 0; r < R; r++)
        win_alloc(&win[r], &g0, sc->maxT, ND, P, recb, accsz);

    /* Dispatch, hop 1: each source stages each token once per remote
     * destination domain and forwards inside its own.  xd[s], xc: the
     * bytes the core says cross domains (proto_hier_cross_stage, _chain),
     * the source's in dispatch and every gateway's in combine. */
    char *rec = calloc(1, (size_t)recb);
    int64_t *xd = calloc((size_t)R, sizeof(int64_t)), xc = 0;
    for (int s = 0; s < R; s++) {
        src_state_t *x = &ss[s];
        proto_hier_t sx;
        proto_hier_shape(&sx, R, L, K, s);
        proto_geom_t g = g0;
        g.rank = s;
        const proto_ids_t ids = { x->units, 0, K, E, { 0, NULL, NULL, NULL } };
        for (int64_t t = 0; t < x->T; t++) {
            const int32_t *dst = x->dest + t * g0.maxdest;
            int nd = 0;
            while (nd < g0.maxdest && dst[nd] >= 0)
                nd++;
            if (nd == 0)
                continue;
            proto_hier_rec_fill(&g, &ids, x->w, e2r, x->dest, x->pos, x->upos,
                                t, (int32_t *)rec);
            memcpy(rec + hdr, (const char *)x->x + t * g0.row_bytes,
                   (size_t)g0.row_bytes);
            uint64_t seen = 0;
            for (int j = 0; j < nd; j++) {
                const int D = proto_hier_stage_dom(dst, j, L, sx.dom);
                const int Dj = dst[j] / L;
                xd[s] += proto_hier_cross_stage(dst, j, L, sx.dom,
                                                g0.row_bytes);
                /* a remote domain, staged at its first destination only */
                assert_int_equal(D >= 0, Dj != sx.dom && !(seen >> Dj & 1));
                seen |= 1ull << Dj;
                if (D < 0)
                    continue;
                const int G = proto_hier_gateway(&sx, s, D);
                assert_int_equal(G / L, D);
                assert_int_equal(G % L, s % L);
                rank_win_t *w = &win[G];
                memcpy(w->stage[sx.dom] + w->nstage[sx.dom]++ * recb, rec,
                       (size_t)recb);
            }
            forward(&g0, &sx, cnt, P, first, e2r, s, (const int32_t *)rec,
                    rec + hdr, win, -1, -1);
        }
    }
    /* Hop 2: every gateway forwards the records of each other domain's
     * source with its local index, in a random order. */
    for (int G = 0; G < R; G++) {
        proto_hier_t gw;
        proto_hier_shape(&gw, R, L, K, G);
        for (int b = 0; b < ND; b++) {
            const int src = proto_hier_gateway(&gw, G, b);
            const int64_t n = win[G].nstage[b];
            if (b == gw.dom) {
                assert_int_equal(n, 0);
                continue;
            }
            int64_t *order = malloc(sizeof(int64_t) * (size_t)(n + 1));
            for (int64_t i = 0; i < n; i++)
                order[i] = i;
            for (int64_t i = n - 1; i > 0; i--) {
                int64_t j = (int64_t)epxt_below(&rng, (uint64_t)i + 1), v;
                v = order[i], order[i] = order[j], order[j] = v;
            }
            for (int64_t i = 0; i < n; i++) {
                const char *p = win[G].stage[b] + order[i] * recb;
                forward(&g0, &gw, cnt, P, first, e2r, src,
                        (const int32_t *)p, p + hdr, win, -1, -1);
            }
            free(order);
        }
    }

    /* Each rank's receive against the reference (the flat contract). */
    ref_cfg_t cfg = { R, E, K, H, sc->dtype,
                      sc->em ? EPX_LAYOUT_EXPERT_MAJOR : EPX_LAYOUT_TOKEN_MAJOR,
                      g0.align, EPX_WIRE_NATIVE };
    int64_t *nent = calloc((size_t)R, sizeof(int64_t));
    for (int r = 0; r < R; r++) {
        rank_win_t *w = &win[r];
        proto_geom_t g = g0;
        g.rank = r;
        ref_recv_t want;
        assert_int_equal(ref_dispatch(&cfg, rt, r, &want), 0);
        nent[r] = proto_recv_rows(&g, cnt);
        for (int64_t i = 0; i < nent[r]; i++)
            assert_int_equal(w->ent_hits[i], 1);
        for (int64_t i = nent[r]; i < g.ents; i++)
            assert_int_equal(w->ent_hits[i], 0);
        for (int64_t i = 0; i < want.num_rows; i++) {
            assert_int_equal(w->src_rank[i], want.src_rank[i]);
            assert_int_equal(w->src_token[i], want.src_token[i]);
            assert_int_equal(w->row_hits[i], want.src_rank[i] >= 0);
            if (want.src_rank[i] < 0)
                continue;
            assert_memory_equal(w->rows + i * g.row_bytes,
                                want.x + i * g.row_bytes, (size_t)g.row_bytes);
            if (sc->em) {
                assert_memory_equal(&w->w[i], &want.weights[i], 4);
                continue;
            }
            assert_memory_equal(w->idx + i * K, want.topk_idx + i * K,
                                4 * (size_t)K);
            assert_memory_equal(w->w + i * K, want.weights + i * K,
                                4 * (size_t)K);
        }
        for (int64_t i = want.num_rows; i < g.xrows; i++)
            assert_int_equal(w->row_hits[i], 0);
        ref_recv_free(&want);
    }

    /* Combine: partials into the gateway in each member's domain. */
    float *acc = malloc(sizeof(float) * (size_t)H);
    double *yd = malloc(sizeof(double) * (size_t)H);
    for (int d = 0; d < R; d++) {
        rank_win_t *w = &win[d];
        proto_geom_t g = g0;
        g.rank = d;
        for (int64_t i = 0; i < nent[d]; i++) {
            const int32_t *ent = w->ent + i * (3 + K);
            const int src = ent[0];
            const int G = (d / L) * L + src % L;
            assert_true(ent[1] >= (src / L) * P && ent[1] < (src / L + 1) * P);
            win[G].part_hits[ent[1]]++;
            entry_partial(sc, &g, w, i,
                          win[G].part + (int64_t)ent[1] * g.row_bytes);
        }
    }
    for (int G = 0; G < R; G++)
        for (int64_t i = 0; i < ND * P; i++)
            assert_true(win[G].part_hits[i] <= 1);
    /* The chain: domains in ascending order, each gateway continuing the
     * sums of its sources' tokens that have destinations here. */
    int32_t dst[EPX_MAX_TOPK], dpos[EPX_MAX_TOPK];
    for (int D = 0; D < ND; D++)
        for (int G = D * L; G < (D + 1) * L; G++) {
            proto_hier_t gw;
            proto_hier_shape(&gw, R, L, K, G);
            proto_geom_t g = g0;
            g.rank = G;
            for (int b = 0; b < ND; b++) {
                const int src = proto_hier_gateway(&gw, G, b);
                const src_state_t *x = &ss[src];
                const int64_t n = b == D ? x->T : win[G].nstage[b];
                for (int64_t k = 0; k < n; k++) {
                    int64_t t;
                    int nd = 0;
                    if (b == D) {   /* own tokens: the source's layout */
                        t = k;
                        while (nd < g.maxdest && x->dest[t * g.maxdest + nd] >= 0) {
                            dst[nd] = x->dest[t * g.maxdest + nd];
                            dpos[nd] = x->pos[t * g.maxdest + nd];
                            nd++;
                        }
                    } else {        /* the staged record */
                        const int32_t *rc = (const int32_t *)(win[G].stage[b] +
                                                              k * recb);
                        const proto_ids_t u = proto_hier_rec_ids(rc, K, E);
                        t = rc[0];
                        nd = proto_walk_dests(&g, &u, NULL, e2r, 0, NULL, dst,
                                              NULL);
                        for (int j = 0; j < nd; j++)
                            dpos[j] = proto_hier_rec_dpos(rc, K, e2r, dst[j]);
                    }
                    int j0, next;
                    const int here = proto_hier_chain(dst, nd, L, D, &j0, &next);
                    if (here == 0)
                        continue;
                    assert_true(next < 0 || next > D);
                    xc += proto_hier_cross_chain(&gw, next, src, H * accsz);
                    char *a = next >= 0
                        ? win[proto_hier_gateway(&gw, src, next)].chain +
                              ((int64_t)b * sc->maxT + t) * H * accsz
                        : win[src].final + t * H * accsz;
                    const char *in = win[G].chain +
                                     ((int64_t)b * sc->maxT + t) * H * accsz;
                    int64_t slot[EPX_MAX_TOPK];
                    for (int j = 0; j < here; j++) {
                        slot[j] = proto_hier_slot(&g, &gw, cnt, P, src,
                                                  dst[j0 + j], dpos[j0 + j]);
                        assert_int_equal(win[G].part_hits[slot[j]], 1);
                    }
                    /* the kernels' element form (proto_hier_acc_elem) */
                    for (int h = 0; h < H; h++)
                        if (esize == 8)
                            ((double *)a)[h] = proto_hier_acc_elem_f64(
                                &g, win[G].part, slot, here, j0 == 0,
                                ((const double *)in)[h], h);
                        else
                            ((float *)a)[h] = proto_hier_acc_elem(
                                &g, win[G].part, slot, here, j0 == 0,
                                ((const float *)in)[h], h);
                }
            }
        }
    /* Bytes across domains, from the tokens' destinations alone: a row
     * per remote destination domain in dispatch; in combine an
     * accumulator per destination domain, less one where the last is the
     * source's own (the sum goes home inside it). */
    int64_t want_xc = 0;
    for (int s = 0; s < R; s++) {
        int64_t want_xd = 0;
        for (int64_t t = 0; t < ss[s].T; t++) {
            const int32_t *d = ss[s].dest + t * g0.maxdest;
            uint64_t doms = 0;
            int last = -1;
            for (int j = 0; j < g0.maxdest && d[j] >= 0; j++) {
                doms |= 1ull << (d[j] / L);
                last = d[j] / L;
            }
            const int nd = __builtin_popcountll(doms);
            want_xd += (nd - (int)(doms >> (s / L) & 1)) * g0.row_bytes;
            want_xc += (nd - (last == s / L)) * H * accsz;
        }
        assert_int_equal(xd[s], want_xd);
    }
    assert_int_equal(xc, want_xc);
    free(xd);

    /* FP64: the sources' double sums as they are, the reference's
     * double combine bit for bit (0 for a token sent nowhere). */
    for (int s = 0; esize == 8 && s < R; s++) {
        const src_state_t *x = &ss[s];
        const size_t ob = (size_t)(x->T * H + 1) * sizeof(double);
        char *got = calloc(1, ob), *want = calloc(1, ob);
        for (int64_t t = 0; t < x->T; t++)
            if (x->dest[t * g0.maxdest] >= 0)
                memcpy(got + t * H * 8, win[s].final + t * H * 8,
                       sizeof(double) * (size_t)H);
        assert_int_equal(ref_combine_f64(&cfg, s, &rt[s], sc->unweighted,
                                         y64_fn, &cfg.hidden, (double *)want),
                         0);
        assert_memory_equal(got, want, (size_t)(x->T * H) * sizeof(double));
        free(got);
        free(want);
    }
    /* The sources' outputs, rounded once (0 for a token sent nowhere). */
    for (int epx_out = 0; esize != 8 && epx_out < 2; epx_out++) {
        const epx_dtype_t odt = epx_out ? EPX_DTYPE_FP32 : EPX_DTYPE_BF16;
        const int oes = epx_out ? 4 : 2;
        for (int s = 0; s < R; s++) {
            const src_state_t *x = &ss[s];
            const size_t ob = (size_t)(x->T * H + 1) * (size_t)oes;
            char *got = calloc(1, ob), *want = calloc(1, ob);
            for (int64_t t = 0; t < x->T; t++)
                if (x->dest[t * g0.maxdest] >= 0)
                    proto_store_row(got + t * H * oes,
                                    (const float *)win[s].final + t * H, oes,
                                    H);
            assert_int_equal(ref_combine(&cfg, s, &rt[s], sc->unweighted, y_fn,
                                         &cfg.hidden, odt, want), 0);
            assert_memory_equal(got, want, (size_t)(x->T * H) * (size_t)oes);
            free(got);
            free(want);
        }
    }

    /* The same over point-to-point messages (proto/hier_nccl.h). */
    run_msgs(sc, &g0, cnt, first, e2r, ss, win, P);

    free(acc);
    free(yd);
    free(nent);
    free(rec);
    for (int r = 0; r < R; r++) {
        win_free(&win[r], ND);
        src_state_t *x = &ss[r];
        free(x->x), free(x->idx64), free(x->units), free(x->upos), free(x->w);
        free(x->dest), free(x->pos), free(x->mycnt);
    }
    free(win), free(ss), free(rt), free(cnt), free(e2r);
}

/* Domain shapes: (R, L) with L dividing R. */
static const int shapes[][2] = {
    { 1, 1 }, { 2, 1 }, { 2, 2 }, { 4, 2 }, { 4, 1 }, { 6, 3 }, { 6, 2 },
    { 8, 4 }, { 8, 2 }, { 12, 4 }, { 16, 8 }, { 9, 3 }, { 24, 8 },
};

static void token_major(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++)
        for (int v = 0; v < 4; v++) {
            const int R = shapes[i][0];
            scen_t sc = { R, shapes[i][1], R * (1 + v) + 6, 1 + (int)(i + v) % 6,
                          v == 1 ? 33 : v == 3 ? 13 : 16,
                          1 + (int)epxt_below(&rng, 12),
                          v == 2 ? EPX_DTYPE_FP32
                                 : v == 3 ? EPX_DTYPE_FP64 : EPX_DTYPE_BF16,
                          0, 1, 0, 0, v == 1 };
            run(&sc);
        }
}

static void expert_major(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++)
        for (int v = 0; v < 4; v++) {
            const int R = shapes[i][0];
            scen_t sc = { R, shapes[i][1], R * (1 + v) + (v == 2 ? 8 : 7),
                          1 + (int)(i + 2 * v) % 7,
                          v == 0 ? 17 : v == 3 ? 13 : 16,
                          1 + (int)epxt_below(&rng, 10),
                          v == 1 ? EPX_DTYPE_FP32
                                 : v == 3 ? EPX_DTYPE_FP64 : EPX_DTYPE_BF16,
                          1, v == 2 ? 4 : v == 3 ? 2 : 1,
                          v == 1 || (v == 3 && i % 2), 0, v == 2 };
            run(&sc);
        }
}

static void edges(void **state)
{
    (void)state;
    /* every token on expert 0; no expert at all; empty ranks; one rank;
     * K above the domain size; 72 ranks in 9 domains of 8. */
    const scen_t cases[] = {
        { 8, 2, 16, 4, 16, 9, EPX_DTYPE_BF16, 0, 1, 0, 1, 0 },
        { 8, 2, 16, 4, 16, 9, EPX_DTYPE_BF16, 1, 2, 0, 1, 0 },
        { 6, 3, 12, 2, 16, 5, EPX_DTYPE_BF16, 0, 1, 0, 2, 0 },
        { 6, 3, 12, 2, 16, 5, EPX_DTYPE_BF16, 1, 1, 0, 2, 1 },
        { 1, 1, 3, 2, 8, 7, EPX_DTYPE_BF16, 0, 1, 0, 0, 0 },
        { 1, 1, 3, 2, 8, 7, EPX_DTYPE_FP32, 1, 1, 1, 0, 0 },
        { 8, 2, 32, 8, 16, 6, EPX_DTYPE_BF16, 0, 1, 0, 0, 0 },
        { 8, 2, 32, 8, 16, 6, EPX_DTYPE_BF16, 1, 1, 0, 0, 0 },
        { 72, 8, 144, 8, 8, 4, EPX_DTYPE_BF16, 0, 1, 0, 0, 0 },
        { 72, 8, 72, 6, 8, 3, EPX_DTYPE_BF16, 1, 2, 0, 0, 1 },
        /* 72 ranks in one domain, and in 3 of 24 */
        { 72, 72, 144, 8, 8, 3, EPX_DTYPE_FP32, 0, 1, 0, 0, 0 },
        { 72, 24, 72, 4, 8, 3, EPX_DTYPE_BF16, 1, 1, 0, 0, 1 },
        /* FP64 engines: the same in double */
        { 8, 2, 16, 4, 16, 9, EPX_DTYPE_FP64, 1, 2, 0, 1, 0 },
        { 6, 3, 12, 2, 16, 5, EPX_DTYPE_FP64, 0, 1, 0, 2, 1 },
        { 1, 1, 3, 2, 8, 7, EPX_DTYPE_FP64, 1, 1, 1, 0, 0 },
        { 8, 2, 32, 8, 16, 6, EPX_DTYPE_FP64, 0, 1, 0, 0, 0 },
        { 72, 8, 144, 8, 8, 4, EPX_DTYPE_FP64, 1, 1, 0, 0, 1 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        run(&cases[i]);
}

static void blocks(void **state)
{
    (void)state;
    const int32_t eq[] = { 5, 5, 2, 2, 9, 9 };
    const int32_t one[] = { 3, 3, 3, 3 };
    const int32_t each[] = { 0, 1, 2, 3 };
    const int32_t uneq[] = { 0, 0, 0, 1, 1, 2 };
    const int32_t inter[] = { 0, 1, 0, 1 };
    const int32_t rep[] = { 0, 0, 1, 1, 0, 0 };
    const int32_t neg[] = { -1, -1, 0, 0 };
    const int32_t mixed[] = { 0, 0, 1, 2 };
    assert_int_equal(proto_hier_blocks(eq, 6), 2);
    assert_int_equal(proto_hier_blocks(one, 4), 4);
    assert_int_equal(proto_hier_blocks(each, 4), 1);
    assert_int_equal(proto_hier_blocks(uneq, 6), 0);
    assert_int_equal(proto_hier_blocks(inter, 4), 0);
    assert_int_equal(proto_hier_blocks(rep, 6), 0);
    assert_int_equal(proto_hier_blocks(neg, 4), 0);
    assert_int_equal(proto_hier_blocks(mixed, 4), 0);
    assert_int_equal(proto_hier_blocks(eq, 1), 1);
}

/* The regions: in order, 64-aligned, each of its size. */
static void regions(void **state)
{
    (void)state;
    for (int i = 0; i < 200; i++) {
        const int L = 1 + (int)epxt_below(&rng, 8), ND = 1 + (int)epxt_below(&rng, 9);
        const int K = 1 + (int)epxt_below(&rng, 8);
        const int64_t maxT = 1 + (int64_t)epxt_below(&rng, 300),
                      H = 1 + (int64_t)epxt_below(&rng, 999),
                      row = H * (1 + (int64_t)epxt_below(&rng, 2)) * 2,
                      acc = epxt_below(&rng, 2) ? 8 : 4,
                      at = (int64_t)epxt_below(&rng, 1 << 20);
        const int64_t rec = proto_hier_rec_bytes(K, row);
        proto_hier_t x;
        proto_hier_shape(&x, ND * L, L, K, (int)epxt_below(&rng, (uint64_t)(ND * L)));
        proto_hier_win_t w;
        proto_hier_layout(&w, &x, at, maxT, H, rec, row, acc);
        assert_int_equal(w.P, maxT * (K < L ? K : L));
        const int64_t off[] = { w.shdr, w.pdone, w.cdone, w.fdone, w.stage,
                                w.part, w.chain, w.final, w.end };
        const int64_t size[] = { ND * 8, L * 4, ND * 4, ND * 4,
                                 ND * maxT * rec, ND * w.P * row,
                                 ND * maxT * H * acc, maxT * H * acc };
        assert_true(w.shdr >= at && w.shdr < at + 64);
        for (int r = 0; r < 8; r++) {
            assert_int_equal(off[r] % 64, 0);
            assert_true(off[r + 1] >= off[r] + size[r]);
            assert_true(off[r + 1] < off[r] + size[r] + 64);
        }
    }
}

int main(void)
{
    epxt_init("test_hier_core");
    rng.state = epxt_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(blocks),
        cmocka_unit_test(regions),
        cmocka_unit_test(token_major),
        cmocka_unit_test(expert_major),
        cmocka_unit_test(edges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
