/*
 * The GPU executor's arithmetic (src/proto/proto.h) run on the host: R
 * simulated ranks with windows in host memory go through the kernels'
 * steps item by item (layout per destination and per expert, count rows
 * into every window, offsets, pack, receive totals, combine put and
 * reduce, and the fused set's pull combine from the peers' receive rows),
 * for both backends' addressing (windows: rows stored at the
 * destination's offsets; NCCL: packed staging moved per peer), and every
 * rank's receive and combine output are compared bit for bit with the
 * independent reference (tests/ref).  Runs without a GPU.
 */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/epx_test.h"
#include "ref/ref.h"
#include "ref/ref_quant.h"
#include "proto/proto.h"
#include "proto/ll_nccl.h"

typedef struct scen {
    int R, E, K, H, maxT;
    epx_dtype_t dtype, out;
    int idx64;
    int route;      /* 0 random (with -1 and repeats), 1 all to expert 0,
                       2 no expert at all */
    int zero_tokens; /* some ranks send nothing */
    int em;          /* expert-major layout (windows addressing only) */
    int align;       /* its segment alignment */
    int unweighted;  /* expert-major combine: EPX_COMBINE_UNWEIGHTED */
    int Elog;        /* replicas: the ids are Elog logical experts, routed
                        to the E units (slots) by tables (proto.h
                        proto_route_t); 0: the ids are the units */
    int rr;          /* replicas: round robin instead of a pick table */
} scen_t;

/* Replicas, elastic: this many logical experts have no slot (lost), so E
 * may be below Elog.  Set by elastic around its scenarios. */
static int nlost;

typedef struct rank_state {
    int64_t T;
    void *x;                 /* [T][H] dtype */
    int64_t *idx64;          /* [T][K] reference ids */
    void *idx;               /* as the kernels see them */
    float *w;
    int32_t *dest, *pos, *mycnt, *epos;
    int64_t sendoff[128], base[128];
    int64_t *ebase;          /* [E] expert-major */
    int32_t *pick;           /* replicas: [Elog] this rank's slot of each */
} rank_state_t;

static void rank_state_free(rank_state_t *s)
{
    free(s->pick);
    free(s->x);
    free(s->idx64);
    free(s->idx);
    free(s->w);
    free(s->dest);
    free(s->pos);
    free(s->mycnt);
    free(s->epos);
    free(s->ebase);
}

static epxt_rng_t rng;

static float y_value(int src, int64_t t, int who, int h)
{
    /* Small integers / 8: exact in bf16, sums exact enough to matter. */
    return (float)((int)(epxt_hash(epxt_seed(), (uint64_t)src, (uint64_t)t,
                                   (uint64_t)who, (uint64_t)h) % 33) - 16) /
           8.0f;
}

static void y_fn(void *ctx, int src, int64_t t, int who, float *row)
{
    const int H = *(const int *)ctx;
    for (int h = 0; h < H; h++)
        row[h] = y_value(src, t, who, h);
}

/* FP64 engines: expert outputs with every bit of the double's mantissa in
 * use, so that a sum taken or rounded in fp32 anywhere differs. */
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

/* An expert output row in the engine dtype (esize 2, 4 or 8) at dst. */
static void put_y(char *dst, int esize, int H, int src, int64_t t, int who)
{
    for (int h = 0; h < H; h++)
        if (esize == 8)
            ((double *)dst)[h] = y64_value(src, t, who, h);
        else
            proto_store(dst, esize, h, y_value(src, t, who, h));
}

/* The combine put kernel's partial of an entry (its rows of y) at dst in
 * the engine dtype: the element form, or for FP64 engines with vec and
 * 16-byte rows the kernel's 16-byte form (kern_reduce.cuh
 * epxk_partial_f64). */
static void put_partial(const proto_geom_t *g, const char *y,
                        const int32_t *rows, const float *wt, char *dst,
                        int vec)
{
    if (g->esize != 8) {
        for (int h = 0; h < g->H; h++)
            proto_store(dst, g->esize, h,
                        proto_partial_elem(g, y, rows, wt, h));
        return;
    }
    if (!vec || g->row_bytes % 16) {
        for (int h = 0; h < g->H; h++)
            ((double *)dst)[h] = proto_partial_elem_f64(g, y, rows, wt, h);
        return;
    }
    for (int64_t v = 0; v < g->row_bytes / 16; v++) {
        double acc[2] = { 0.0, 0.0 };
        for (int k = 0; k < g->K && rows[k] >= 0; k++) {
            proto_v16_t p;
            memcpy(&p, y + (int64_t)rows[k] * g->row_bytes + v * 16, 16);
            proto_partial_acc16_f64(&p, wt != NULL, wt ? wt[rows[k]] : 0.0f,
                                    acc);
        }
        proto_v16_t o;
        proto_pack16_f64(acc, &o);
        memcpy(dst + v * 16, &o, 16);
    }
}

/* The reduce kernel's output of a rank ([T][H] in oesize, calloc'd) from
 * the partials in comb: the element form, or for FP64 engines with vec
 * and 16-byte rows the 16-byte form (epxk_reduce_out_f64). */
static char *reduce_out(const proto_geom_t *g, const char *comb,
                        const int64_t *sendoff, const int32_t *dest,
                        const int32_t *pos, int64_t T, int oesize, int vec)
{
    const int64_t H = g->H;
    char *got = calloc(1, (size_t)(T * H + 1) * (size_t)oesize);
    assert_non_null(got);
    for (int64_t t = 0; t < T; t++) {
        char *o = got + t * H * oesize;
        if (g->esize != 8) {
            for (int64_t h = 0; h < H; h++)
                proto_store(o, oesize, h, proto_combine_elem(g, comb, sendoff,
                                                             dest, pos, t, h));
            continue;
        }
        assert_int_equal(oesize, 8);
        if (!vec || g->row_bytes % 16) {
            for (int64_t h = 0; h < H; h++)
                ((double *)o)[h] = proto_combine_elem_f64(g, comb, sendoff,
                                                          dest, pos, t, h);
            continue;
        }
        for (int64_t v = 0; v < H / 2; v++) {
            double acc[2] = { 0.0, 0.0 };
            for (int j = 0; j < g->maxdest && dest[t * g->maxdest + j] >= 0;
                 j++) {
                int64_t slot = proto_ret_slot(g, sendoff, dest, pos, t, j);
                proto_v16_t p;
                memcpy(&p, comb + slot * g->row_bytes + v * 16, 16);
                proto_sum_acc16_f64(&p, acc);
            }
            proto_v16_t q;
            proto_pack16_f64(acc, &q);
            memcpy(o + v * 16, &q, 16);
        }
    }
    return got;
}

/* What the reference says rank r's combine returns ([T][H] in out's
 * dtype; FP64 engines: ref_combine_f64 over y64_fn). */
static void want_combine(const ref_cfg_t *cfg, int r, const ref_tokens_t *mine,
                         int unweighted, epx_dtype_t out, void *want)
{
    int hid = cfg->hidden;
    if (cfg->dtype == EPX_DTYPE_FP64)
        assert_int_equal(ref_combine_f64(cfg, r, mine, unweighted, y64_fn,
                                         &hid, (double *)want), 0);
    else
        assert_int_equal(ref_combine(cfg, r, mine, unweighted, y_fn, &hid,
                                     out, want), 0);
}

static int dt_size(epx_dtype_t dt)
{
    return dt == EPX_DTYPE_BF16 ? 2 : dt == EPX_DTYPE_FP64 ? 8 : 4;
}

/* Pull combine (proto.h, "pull combine"; the fused kernel set): rank r's
 * output from its destinations' terms, each destination pushed (its
 * partial in r's comb, put there by the classic path above) or in place
 * (y in its window's receive rows) as mode[d] says; element by element
 * and, where rows allow, in the kernel's 16-byte form.  Returns the
 * bytes of [T][H] in oesize. */
static char *pull_out(const proto_geom_t *g0, const rank_state_t *s, int r,
                      char **win, const int *mode, int oesize, int vec)
{
    proto_geom_t g = *g0;
    g.rank = r;
    const int H = g.H;
    proto_pull_term_t terms[EPX_MAX_TOPK];
    char *got = calloc(1, (size_t)(s->T * H + 1) * (size_t)oesize);
    assert_non_null(got);
    for (int64_t t = 0; t < s->T; t++) {
        int n = 0;
        for (int j = 0; j < g.maxdest; j++) {
            int d = s->dest[t * g.maxdest + j];
            if (d < 0)
                break;
            assert_true(j == 0 || d > s->dest[t * g.maxdest + j - 1]);
            int m = proto_pull_dest_terms(&g, win[d], win[r] + g.off_comb,
                                          mode[d], s->sendoff, s->base,
                                          s->dest, s->pos, t, j, terms + n);
            assert_int_equal(m, proto_pull_dest_nterms(&g, win[d], mode[d],
                                                       s->base, s->dest,
                                                       s->pos, t, j));
            assert_true(m >= 1);
            n += m;
            assert_true(n <= g.K);
        }
        char *o = got + t * H * oesize;
        if (!vec || g.row_bytes % 16) {
            for (int h = 0; h < H; h++)
                proto_store(o, oesize, h, proto_pull_elem(g.esize, terms, n,
                                                          h));
            continue;
        }
        const int V = 16 / g.esize;
        for (int64_t v = 0; v < g.row_bytes / 16; v++) {
            float acc[8] = { 0 }, part[8] = { 0 };
            for (int k = 0; k < n; k++) {
                proto_v16_t p;
                memcpy(&p, terms[k].row + v * 16, 16);
                proto_pull_acc16(g.esize, terms[k].f, terms[k].w, &p, part,
                                 acc);
            }
            for (int e = 0; e < V; e++)
                proto_store(o, oesize, v * V + e, acc[e]);
        }
    }
    return got;
}

/* Each source's combine mode for a pull check: pushed or in place at
 * random (pushed partials are in the comb regions already). */
static void pull_modes(int R, int unweighted, int *mode)
{
    for (int d = 0; d < R; d++)
        mode[d] = epxt_below(&rng, 3) == 0 ? PROTO_PULL_PUSHED
                : unweighted ? PROTO_PULL_UNWEIGHTED : PROTO_PULL_ROWS;
}

/* Expert-major: what each rank received (the recv kernel's totals,
 * offsets and padding) and combine (the put kernel's partials from the
 * entries, then the reduce) against the reference. */
static void check_expert_major(const scen_t *sc, const proto_geom_t *g0,
                               const ref_cfg_t *cfg, rank_state_t *rs,
                               const ref_tokens_t *src, char **win,
                               const int32_t *first)
{
    const int R = sc->R, K = sc->K, H = sc->H;
    const int esize = dt_size(sc->dtype);
    const int oesize = dt_size(sc->out);
    const int p = 1;
    char **ybuf = calloc((size_t)R, sizeof(char *));
    for (int r = 0; r < R; r++) {
        proto_geom_t g = *g0;
        g.rank = r;
        char *w = win[r];
        const int32_t *cnt = (const int32_t *)(w + g.off_cnt) +
                             proto_cnt_index(&g, p, 0);
        const int L = first[r + 1] - first[r];
        ref_recv_t want;
        assert_int_equal(ref_dispatch(cfg, src, r, &want), 0);
        assert_int_equal(L, want.num_local);
        int64_t rows = proto_expert_offset(&g, cnt, first[r], L);
        assert_int_equal(rows, want.num_rows);
        assert_true(rows <= g.xrows);
        int32_t *srank = (int32_t *)(w + g.off_src_rank);
        int32_t *stok = (int32_t *)(w + g.off_src_token);
        float *wt = (float *)(w + g.off_w);
        /* The recv kernel's padding marks. */
        for (int j = 0; j < L; j++) {
            int64_t c = proto_recv_expert(&g, cnt, first[r], j);
            int64_t o = proto_expert_offset(&g, cnt, first[r], j);
            int64_t end = proto_expert_offset(&g, cnt, first[r], j + 1);
            assert_int_equal(c, want.counts[j]);
            assert_int_equal(o, want.offsets[j]);
            for (int64_t i = o + c; i < end; i++) {
                srank[i] = stok[i] = -1;
                wt[i] = 0.0f;
            }
        }
        ybuf[r] = calloc((size_t)(rows * H + 1), (size_t)esize);
        for (int64_t i = 0; i < rows; i++) {
            assert_int_equal(srank[i], want.src_rank[i]);
            assert_int_equal(stok[i], want.src_token[i]);
            assert_memory_equal(&wt[i], &want.weights[i], sizeof(float));
            if (want.src_rank[i] < 0)
                continue;
            assert_memory_equal(w + g.off_rows + i * g.row_bytes,
                                want.x + i * g.row_bytes, (size_t)g.row_bytes);
            put_y(ybuf[r] + i * g.row_bytes, esize, H, srank[i], stok[i],
                  first[r] + want.row_expert[i]);
        }
        ref_recv_free(&want);
    }
    /* Combine put: each entry's partial into its source's comb slot. */
    for (int d = 0; d < R; d++) {
        proto_geom_t g = *g0;
        g.rank = d;
        char *w = win[d];
        const int32_t *cnt = (const int32_t *)(w + g.off_cnt) +
                             proto_cnt_index(&g, p, 0);
        int64_t ents = proto_recv_rows(&g, cnt);
        const float *wt = sc->unweighted ? NULL : (const float *)(w + g.off_w);
        for (int64_t i = 0; i < ents; i++) {
            int s = ((int32_t *)(w + g.off_ent_src))[i];
            int64_t slot = ((int32_t *)(w + g.off_ret_slot))[i];
            const int32_t *rows = (int32_t *)(w + g.off_ent_rows) + i * K;
            assert_true(s >= 0 && s < R && rows[0] >= 0);
            char *dst = win[s] + g.off_comb + slot * g.row_bytes;
            put_partial(&g, ybuf[d], rows, wt, dst, (int)(i & 1));
        }
    }
    /* In place (pull combine): y over each rank's received rows, the
     * rows kept aside for the NCCL check that follows. */
    char **xrows = calloc((size_t)R, sizeof(char *));
    int64_t *nrows = calloc((size_t)R, sizeof(int64_t));
    for (int d = 0; d < R; d++) {
        proto_geom_t g = *g0;
        g.rank = d;
        const int32_t *cnt = (const int32_t *)(win[d] + g.off_cnt) +
                             proto_cnt_index(&g, p, 0);
        nrows[d] = proto_expert_offset(&g, cnt, first[d],
                                       first[d + 1] - first[d]);
        xrows[d] = malloc((size_t)(nrows[d] * g.row_bytes + 1));
        memcpy(xrows[d], win[d] + g.off_rows, (size_t)(nrows[d] * g.row_bytes));
        memcpy(win[d] + g.off_rows, ybuf[d], (size_t)(nrows[d] * g.row_bytes));
    }
    for (int r = 0; r < R; r++) {
        rank_state_t *s = &rs[r];
        proto_geom_t g = *g0;
        g.rank = r;
        size_t ob = (size_t)(s->T * H + 1) * (size_t)oesize;
        char *want = calloc(1, ob);
        want_combine(cfg, r, &src[r], sc->unweighted, sc->out, want);
        for (int vec = 0; vec < 2; vec++) {
            char *got = reduce_out(&g, win[r] + g.off_comb, s->sendoff,
                                   s->dest, s->pos, s->T, oesize, vec);
            assert_memory_equal(got, want,
                                (size_t)(s->T * H) * (size_t)oesize);
            free(got);
        }
        /* Pull: y in place in the receive rows, read by the owner (not
         * for FP64 engines, which combine with the classic kernels). */
        for (int round = 0; round < 2 && esize != 8; round++) {
            int *mode = malloc(sizeof(int) * (size_t)R);
            pull_modes(R, sc->unweighted, mode);
            char *pulled = pull_out(g0, s, r, win, mode, oesize, round);
            assert_memory_equal(pulled, want,
                                (size_t)(s->T * H) * (size_t)oesize);
            free(pulled);
            free(mode);
        }
        free(want);
    }
    for (int d = 0; d < R; d++) {
        memcpy(win[d] + g0->off_rows, xrows[d],
               (size_t)(nrows[d] * g0->row_bytes));
        free(xrows[d]);
    }
    free(xrows);
    free(nrows);
    for (int r = 0; r < R; r++)
        free(ybuf[r]);
    free(ybuf);
}

/* Expert-major over NCCL (proto.h): every rank stages its rows unit by
 * unit (the pack kernel with ebase = the staging bases), the grouped
 * send/recv moves each source's range into the receiver's staging and
 * its entries into place, the map and the scatter put every row, its
 * metadata and every entry's rows where the windows backend put them.
 * win: the windows backend's result (checked against the reference);
 * nwin: the NCCL windows, with the count exchange done. */
static void check_nccl_expert_major(const scen_t *sc, const proto_geom_t *g0,
                                    rank_state_t *rs, char **win, char **nwin,
                                    const int32_t *first, const int32_t *e2r,
                                    const int32_t *roff, const int32_t *rrep)
{
    const int R = sc->R, E = sc->E, K = sc->K;
    const int p = 1;
    char **stage = calloc((size_t)R, sizeof(char *));
    char **rstage = calloc((size_t)R, sizeof(char *));
    int64_t **sb = calloc((size_t)R, sizeof(int64_t *));
    for (int r = 0; r < R; r++) {
        rank_state_t *s = &rs[r];
        proto_geom_t g = *g0;
        g.rank = r;
        const proto_ids_t ids = { s->idx, sc->idx64, K, E,
                                 { sc->Elog, sc->rr ? NULL : s->pick, roff,
                                   rrep } };
        stage[r] = calloc(1, (size_t)g.total);
        rstage[r] = calloc(1, (size_t)g.total);
        sb[r] = malloc(sizeof(int64_t) * (size_t)E);
        for (int e = 0; e < E; e++)   /* the base kernel */
            sb[r][e] = proto_em_stage_base(&g, s->mycnt, e);
        for (int64_t i = 0; i < s->T * g.maxdest; i++) {   /* pack */
            int d = s->dest[i];
            if (d < 0)
                continue;
            int64_t t = i / g.maxdest, slot = s->sendoff[d] + s->pos[i];
            char *w = stage[r];
            for (int k = 0; k < K; k++) {
                int64_t e = proto_expert_id(&ids, t, k);
                if (e < 0 || proto_owner(e2r, e) != d)
                    continue;
                int64_t row = proto_expert_row(&g, sb[r], s->epos, e, t, k);
                /* within d's range of the staging */
                assert_true(row >= proto_em_stage_base(&g, s->mycnt, first[d]) &&
                            row < proto_em_stage_base(&g, s->mycnt,
                                                      first[d + 1]));
                memcpy(w + g.off_rows + row * g.row_bytes,
                       (const char *)s->x + t * g.row_bytes,
                       (size_t)g.row_bytes);
                ((int32_t *)(w + g.off_src_rank))[row] = r;
                ((int32_t *)(w + g.off_src_token))[row] = (int32_t)t;
                ((float *)(w + g.off_w))[row] = s->w[t * K + k];
            }
            ((int32_t *)(w + g.off_ent_src))[slot] = r;
            ((int32_t *)(w + g.off_ret_slot))[slot] = (int32_t)slot;
            proto_entry_rows(&g, &ids, e2r, sb[r], s->epos, t, d,
                            (int32_t *)(w + g.off_ent_rows) + slot * K);
        }
    }
    for (int d = 0; d < R; d++) {
        proto_geom_t g = *g0;
        g.rank = d;
        const int L = first[d + 1] - first[d];
        const int64_t RL = (int64_t)R * L;
        const int32_t *cnt = (const int32_t *)(nwin[d] + g.off_cnt) +
                             proto_cnt_index(&g, p, 0);
        const int64_t len = proto_em_map_len(&g, L);
        int64_t *map = malloc(sizeof(int64_t) * (size_t)len);
        for (int64_t i = 0; i < len; i++)    /* the map kernel */
            map[i] = proto_em_map_at(&g, cnt, first[d], L, i);
        /* The exchange, with the host's sizes (engine.c nccl_sizes). */
        for (int s = 0; s < R; s++) {
            const int32_t *mc = rs[s].mycnt;
            int64_t s0 = proto_em_stage_base(&g, mc, first[d]);
            int64_t n = proto_em_stage_base(&g, mc, first[d + 1]) - s0;
            int64_t r0 = map[(int64_t)s * L];
            assert_int_equal(n, map[(int64_t)(s + 1) * L] - r0);
            assert_int_equal(s0, map[2 * RL + R + 2 + s]);   /* skip */
            memcpy(rstage[d] + g.off_rows + r0 * g.row_bytes,
                   stage[s] + g.off_rows + s0 * g.row_bytes,
                   (size_t)(n * g.row_bytes));
            memcpy(rstage[d] + g.off_src_token + r0 * 4,
                   stage[s] + g.off_src_token + s0 * 4, (size_t)(n * 4));
            memcpy(rstage[d] + g.off_w + r0 * 4, stage[s] + g.off_w + s0 * 4,
                   (size_t)(n * 4));
            int64_t ne = mc[d], e0 = rs[s].sendoff[d];
            int64_t er = proto_src_base(&g, cnt, s);
            assert_int_equal(er, map[2 * RL + 1 + s]);
            memcpy(nwin[d] + g.off_ret_slot + er * 4,
                   stage[s] + g.off_ret_slot + e0 * 4, (size_t)(ne * 4));
            memcpy(nwin[d] + g.off_ent_rows + er * K * 4,
                   stage[s] + g.off_ent_rows + e0 * K * 4,
                   (size_t)(ne * K * 4));
        }
        /* The scatter: every staged row to a distinct row, the windows
         * backend's (its data, source, token and weight). */
        const int64_t rows = proto_expert_offset(&g, cnt, first[d], L);
        char *hit = calloc((size_t)rows + 1, 1);
        int64_t staged = 0;
        for (int j = 0; j < L; j++)
            staged += proto_recv_expert(&g, cnt, first[d], j);
        assert_int_equal(map[RL], staged);
        for (int64_t q = 0; q < map[RL]; q++) {
            int s;
            int64_t f = proto_em_scatter_row(&g, map, L, q, &s);
            assert_true(f >= 0 && f < rows && !hit[f]);
            hit[f] = 1;
            assert_int_equal(((int32_t *)(win[d] + g.off_src_rank))[f], s);
            assert_memory_equal(win[d] + g.off_src_token + f * 4,
                                rstage[d] + g.off_src_token + q * 4, 4);
            assert_memory_equal(win[d] + g.off_w + f * 4,
                                rstage[d] + g.off_w + q * 4, 4);
            assert_memory_equal(win[d] + g.off_rows + f * g.row_bytes,
                                rstage[d] + g.off_rows + q * g.row_bytes,
                                (size_t)g.row_bytes);
        }
        for (int64_t f = 0; f < rows; f++)   /* the rest is padding */
            assert_true(hit[f] ||
                        ((int32_t *)(win[d] + g.off_src_rank))[f] == -1);
        free(hit);
        /* Entries: their source and rows, the windows backend's; and each
         * source's range of return slots is the one combine sends back
         * into (its packed order from sendoff[d]). */
        const int64_t ents = map[2 * RL + 1 + R];
        assert_int_equal(ents, proto_recv_rows(&g, cnt));
        for (int64_t i = 0; i < ents; i++) {
            int s = proto_em_entry_src(&g, map, L, i);
            int32_t *er = (int32_t *)(nwin[d] + g.off_ent_rows) + i * K;
            for (int k = 0; k < K && er[k] >= 0; k++)
                er[k] = (int32_t)proto_em_entry_row(&g, map, L, s, er[k]);
            assert_int_equal(s, ((int32_t *)(win[d] + g.off_ent_src))[i]);
            assert_memory_equal(er, (int32_t *)(win[d] + g.off_ent_rows) +
                                        i * K, 4 * (size_t)K);
            int32_t slot = ((int32_t *)(nwin[d] + g.off_ret_slot))[i];
            assert_int_equal(slot, ((int32_t *)(win[d] + g.off_ret_slot))[i]);
            assert_int_equal(slot, rs[s].sendoff[d] + (i - map[2 * RL + 1 + s]));
        }
        free(map);
    }
    for (int r = 0; r < R; r++) {
        free(stage[r]);
        free(rstage[r]);
        free(sb[r]);
    }
    free(stage), free(rstage), free(sb);
}

/* The throughput layout kernels over nb blocks (kernels.cu: count, then
 * place; blocks run in any order, so the passes go block by block): dest,
 * pos, epos (expert-major) and block 0's totals. */
static void layout_blocks(const proto_geom_t *g, const proto_ids_t *ids,
                          const int32_t *e2r, int64_t T, int nb, int em,
                          int32_t *dest, int32_t *pos, int32_t *epos,
                          int32_t *mycnt)
{
    const int n = g->R + g->E;
    int32_t *part = calloc((size_t)nb * (size_t)n + 1, sizeof(int32_t));
    assert_non_null(part);
    for (int b = nb - 1; b >= 0; b--) {   /* count: any block order */
        int64_t t0, t1;
        proto_layout_range(T, nb, b, &t0, &t1);
        for (int64_t i = t0 * g->maxdest; i < t1 * g->maxdest; i++)
            dest[i] = -1;
        for (int u = 0; u < n; u++)
            part[(int64_t)b * n + u] = (int32_t)(u < g->R
                ? proto_layout_dest(g, ids, NULL, e2r, t0, t1, u, 0, NULL, NULL)
                : proto_layout_expert(g, ids, t0, t1, u - g->R, 0, NULL));
    }
    for (int b = 0; b < nb; b++) {        /* place */
        int64_t t0, t1;
        proto_layout_range(T, nb, b, &t0, &t1);
        for (int u = 0; u < n; u++) {
            int64_t base = proto_layout_base(part, n, b, u);
            if (u < g->R)
                proto_layout_dest(g, ids, NULL, e2r, t0, t1, u, base, dest,
                                 pos);
            else if (em)
                proto_layout_expert(g, ids, t0, t1, u - g->R, base, epos);
        }
    }
    for (int u = 0; u < n; u++)
        mycnt[u] = (int32_t)proto_layout_base(part, n, nb, u);
    free(part);
}

/* The same layout as the host executor computes it (src/moe/layout.c,
 * ll_dispatch.c): proto.h's walk over the tokens in order.  cap: low
 * latency's capacity, the choices' slots into keep (else epos, and keep
 * NULL); mycnt: [R] tokens per destination, then [E] choices per unit. */
static void layout_walk(const proto_geom_t *g, const proto_ids_t *ids,
                        const int32_t *e2r, int64_t T, int cap, int32_t *keep,
                        int32_t *dest, int32_t *pos, int32_t *epos,
                        int32_t *mycnt)
{
    int32_t *d2 = malloc(sizeof(int32_t) * (size_t)((T + 1) * g->maxdest));
    assert_non_null(d2);
    memset(mycnt, 0, sizeof(int32_t) * (size_t)(g->R + g->E));
    for (int64_t t = 0; t < T; t++) {
        int nd = proto_walk_token(g, ids, e2r, t, keep ? cap : INT32_MAX,
                                  mycnt + g->R, keep ? keep : epos, mycnt,
                                  dest, pos);
        /* the chunked form's slot of each destination */
        for (int j = 0; j < nd; j++)
            assert_int_equal(proto_dest_slot(ids, keep, e2r, t,
                                             dest[t * g->maxdest + j]), j);
        /* the destinations alone, from the choices kept */
        assert_int_equal(proto_walk_dests(g, ids, keep, e2r, t, NULL, d2,
                                          NULL), nd);
        assert_memory_equal(d2 + t * g->maxdest, dest + t * g->maxdest,
                            sizeof(int32_t) * (size_t)g->maxdest);
    }
    free(d2);
}

/* The fused dispatch's layout (src/cuda/kern_ht.cu) over nb blocks of W
 * warps, each warp a contiguous range of tiles, each tile's lanes through
 * proto.h's tile functions: the count pass in any warp order, the block
 * totals (per unit: the kernel's shared-memory counts) and each block's
 * lower warps, then the place pass; dest, pos, the totals (mycnt) and,
 * with epos (expert-major), each pair's position at its unit. */
static void layout_fused(const proto_geom_t *g, const proto_ids_t *ids,
                         const int32_t *e2r, int64_t T, int nb, int W,
                         int32_t *dest, int32_t *pos, int32_t *epos,
                         int32_t *mycnt)
{
    const int R = g->R, E = g->E, n = R + g->E, NW = nb * W;
    const int64_t NT = proto_ht_tiles(T);
    int32_t *wc = calloc((size_t)NW * (size_t)R + 1, sizeof(int32_t));
    int32_t *wu = calloc((size_t)NW * (size_t)E + 1, sizeof(int32_t));
    int32_t *part = calloc((size_t)nb * (size_t)n + 1, sizeof(int32_t));
    int32_t *run = calloc((size_t)R + 1, sizeof(int32_t));
    int32_t *urun = calloc((size_t)E + 1, sizeof(int32_t));
    assert_non_null(wc);
    assert_non_null(wu);
    assert_non_null(part);
    assert_non_null(run);
    assert_non_null(urun);
    for (int gw = NW - 1; gw >= 0; gw--) {          /* count: any order */
        int64_t a, b;
        proto_layout_range(NT, NW, gw, &a, &b);
        for (int64_t tile = a; tile < b; tile++) {
            proto_ht_tile_count(g, ids, e2r, T, tile, wc + (int64_t)gw * R);
            for (int64_t t = tile * PROTO_HT_TILE;
                 t < T && t < (tile + 1) * PROTO_HT_TILE; t++)
                for (int k = 0; k < g->K; k++) {
                    int64_t e = proto_expert_id(ids, t, k);
                    if (e >= 0) {
                        part[(int64_t)(gw / W) * n + R + e]++;
                        wu[(int64_t)gw * E + e]++;
                    }
                }
        }
        for (int d = 0; d < R; d++)
            part[(int64_t)(gw / W) * n + d] += wc[(int64_t)gw * R + d];
    }
    for (int gw = 0; gw < NW; gw++) {               /* place */
        const int b = gw / W;
        for (int d = 0; d < R; d++) {
            run[d] = (int32_t)proto_layout_base(part, n, b, d);
            for (int w2 = b * W; w2 < gw; w2++)
                run[d] += wc[(int64_t)w2 * R + d];
        }
        for (int u = 0; u < E; u++) {
            urun[u] = (int32_t)proto_layout_base(part, n, b, R + u);
            for (int w2 = b * W; w2 < gw; w2++)
                urun[u] += wu[(int64_t)w2 * E + u];
        }
        int64_t a, e;
        proto_layout_range(NT, NW, gw, &a, &e);
        for (int64_t tile = a; tile < e; tile++) {
            proto_ht_tile_place(g, ids, e2r, T, tile, run, dest, pos);
            if (epos)
                proto_ht_tile_epos(ids, T, tile, urun, epos);
        }
    }
    for (int u = 0; u < n; u++)
        mycnt[u] = (int32_t)proto_layout_base(part, n, nb, u);
    free(wc), free(wu), free(part), free(run), free(urun);
}

/* The fused layout for several grids against the walk's dest, pos,
 * totals and epos (d1, p1, c1, e1 from layout_walk). */
static void fused_matches_walk(const proto_geom_t *g, const proto_ids_t *ids,
                               const int32_t *e2r, int64_t T,
                               const int32_t *d1, const int32_t *p1,
                               const int32_t *c1, const int32_t *e1)
{
    static const int grids[][2] = { { 1, 1 }, { 1, 16 }, { 3, 2 },
                                    { 16, 8 }, { 132, 8 }, { 7, 5 } };
    const size_t np = (size_t)(T * g->maxdest + 1);
    int32_t *d2 = malloc(sizeof(int32_t) * np), *p2 = malloc(sizeof(int32_t) * np);
    int32_t *c2 = malloc(sizeof(int32_t) * (size_t)(g->R + g->E));
    int32_t *e2 = malloc(sizeof(int32_t) * (size_t)(T * g->K + 1));
    assert_non_null(e2);
    assert_non_null(d2);
    assert_non_null(p2);
    assert_non_null(c2);
    for (size_t i = 0; i < sizeof(grids) / sizeof(grids[0]); i++) {
        for (size_t j = 0; j < np; j++)
            d2[j] = p2[j] = -7;   /* every entry must be written */
        for (int64_t j = 0; j < T * g->K; j++)
            e2[j] = -7;
        layout_fused(g, ids, e2r, T, grids[i][0], grids[i][1], d2, p2, e2,
                     c2);
        assert_memory_equal(c1, c2, sizeof(int32_t) * (size_t)(g->R + g->E));
        for (int64_t k = 0; k < T * g->maxdest; k++) {
            assert_int_equal(d1[k], d2[k]);
            if (d1[k] >= 0)
                assert_int_equal(p1[k], p2[k]);
        }
        for (int64_t k = 0; k < T * g->K; k++)   /* pairs of no unit: -7 */
            assert_int_equal(proto_expert_id(ids, k / g->K, (int)(k % g->K))
                                 >= 0 ? e1[k] : -7, e2[k]);
    }
    free(d2), free(p2), free(c2), free(e2);
}

/* Chunk counts to try for T tokens: one, a few, more than tokens (empty
 * chunks), and what the kernels launch for several SM budgets. */
static int layout_nb(int64_t T, int i)
{
    switch (i % 6) {
    case 0: return 1;
    case 1: return 2;
    case 2: return 3;
    case 3: return (int)T + 3;
    case 4: return proto_layout_nblocks(T, 132);
    default: return proto_layout_nblocks(T, 5);
    }
}

/* Elastic (kern_lost.cu): the lost mask of a rank's ids is 1 exactly
 * where the id names an expert the placement left out, and the load
 * statistics the device gives per logical expert (its replicas' unit
 * counts from the layout, plus the kernel's count of pairs naming it
 * while lost) are the host executor's demand: every pair naming it. */
static void check_lost(const scen_t *sc, const rank_state_t *s,
                       const int32_t *roff, const int32_t *rrep,
                       const uint8_t *lost, int R)
{
    const int K = sc->K, Elog = sc->Elog;
    int32_t *lcnt = calloc((size_t)Elog, sizeof(int32_t));
    int64_t *demand = calloc((size_t)Elog, sizeof(int64_t));
    for (int64_t i = 0; i < s->T * K; i++) {
        int64_t e = proto_expert_raw(s->idx, sc->idx64, 1, i, 0);
        int l = proto_expert_lost(roff, Elog, e);
        assert_int_equal(l, e >= 0 && e < Elog && lost[e]);
        if (l)
            lcnt[e]++;
        if (e >= 0 && e < Elog)
            demand[e]++;
    }
    for (int e = 0; e < Elog; e++) {
        int64_t v = lcnt[e];
        for (int i = roff[e]; i < roff[e + 1]; i++)
            v += s->mycnt[R + rrep[i]];
        assert_int_equal(v, demand[e]);
        assert_true(!lcnt[e] || lost[e]);
    }
    assert_int_equal(proto_expert_lost(NULL, Elog, 0), 0);
    assert_int_equal(proto_expert_lost(roff, Elog, -1), 0);
    assert_int_equal(proto_expert_lost(roff, Elog, Elog), 0);
    free(lcnt), free(demand);
}

static void run(const scen_t *sc)
{
    const int R = sc->R, E = sc->E, K = sc->K, H = sc->H;
    const int esize = dt_size(sc->dtype);
    const int oesize = dt_size(sc->out);
    assert_true(R <= 128);
    proto_geom_t g0 = { 0 };
    g0.R = R;
    g0.E = E;
    g0.K = K;
    g0.H = H;
    g0.esize = esize;
    g0.maxT = sc->maxT;
    g0.em = sc->em;
    g0.align = sc->em ? sc->align : 1;
    for (int r = 0; r < R; r++) {
        int l = proto_first_expert(R, E, r + 1) - proto_first_expert(R, E, r);
        g0.Lmax = l > g0.Lmax ? l : g0.Lmax;
    }
    proto_geom_layout(&g0);
    int32_t *e2r = malloc(sizeof(int32_t) * (size_t)E);
    int32_t first[129];
    for (int r = 0; r <= R; r++)
        first[r] = proto_first_expert(R, E, r);
    for (int r = 0; r < R; r++) {
        assert_int_equal(first[r], ref_first_expert(R, E, r));
        for (int e = first[r]; e < first[r + 1]; e++)
            e2r[e] = r;
    }

    /* Replicas: a placement of Elog experts on the E slots (each at least
     * once), its replica lists in slot order, and per rank a pick. */
    const int Elog = sc->Elog;
    int32_t *p2l = NULL, *roff = NULL, *rrep = NULL;
    uint8_t *lost = NULL;
    if (Elog) {
        p2l = malloc(sizeof(int32_t) * (size_t)E);
        roff = calloc((size_t)Elog + 1, sizeof(int32_t));
        rrep = malloc(sizeof(int32_t) * (size_t)E);
        /* elastic: nlost random experts get no slot, the live ones
         * one each, then random live ones */
        lost = calloc((size_t)Elog, 1);
        int32_t *live = malloc(sizeof(int32_t) * (size_t)Elog);
        for (int n = 0; n < nlost;) {
            int e = (int)epxt_below(&rng, (uint64_t)Elog);
            n += !lost[e];
            lost[e] = 1;
        }
        int nlive = 0;
        for (int e = 0; e < Elog; e++)
            if (!lost[e])
                live[nlive++] = e;
        assert_true(nlive <= E);
        for (int u = 0; u < E; u++)
            p2l[u] = u < nlive ? live[u]
                               : live[epxt_below(&rng, (uint64_t)nlive)];
        free(live);
        for (int u = E - 1; u > 0; u--) {   /* shuffle the slots */
            int v = (int)epxt_below(&rng, (uint64_t)u + 1);
            int32_t t = p2l[u];
            p2l[u] = p2l[v];
            p2l[v] = t;
        }
        for (int u = 0; u < E; u++)
            roff[p2l[u] + 1]++;
        for (int e = 0; e < Elog; e++)
            roff[e + 1] += roff[e];
        int32_t *at = calloc((size_t)Elog, sizeof(int32_t));
        for (int u = 0; u < E; u++)
            rrep[roff[p2l[u]] + at[p2l[u]]++] = u;
        free(at);
    }
    rank_state_t *rs = calloc((size_t)R, sizeof(*rs));
    ref_tokens_t *src = calloc((size_t)R, sizeof(*src));
    char **win = calloc((size_t)R, sizeof(char *));
    char **stage = calloc((size_t)R, sizeof(char *));
    char **nwin = calloc((size_t)R, sizeof(char *));
    for (int r = 0; r < R; r++) {
        rank_state_t *s = &rs[r];
        s->T = sc->zero_tokens && r % 2 ? 0
                                        : (int64_t)epxt_below(&rng,
                                                              (uint64_t)sc->maxT + 1);
        s->x = calloc((size_t)(s->T * H + 1), (size_t)esize);
        s->idx64 = calloc((size_t)(s->T * K + 1), sizeof(int64_t));
        s->idx = calloc((size_t)(s->T * K + 1), sc->idx64 ? 8 : 4);
        s->w = calloc((size_t)(s->T * K + 1), sizeof(float));
        if (Elog && !sc->rr) {   /* the host's -1 for a lost expert */
            s->pick = malloc(sizeof(int32_t) * (size_t)Elog);
            for (int x = 0; x < Elog; x++)
                s->pick[x] = lost[x] ? -1 : rrep[roff[x] + (int)epxt_below(
                    &rng, (uint64_t)(roff[x + 1] - roff[x]))];
        }
        for (int64_t i = 0; i < s->T * H; i++)
            if (esize == 8)   /* the double's low mantissa bits in use */
                ((double *)s->x)[i] =
                    (double)((int)epxt_below(&rng, 2001) - 1000) / 64.0 +
                    (double)epxt_below(&rng, 1u << 30) * 0x1p-52;
            else
                ref_store(sc->dtype, s->x, i,
                          (float)((int)epxt_below(&rng, 2001) - 1000) / 64.0f);
        for (int64_t i = 0; i < s->T * K; i++) {
            int64_t e;
            if (sc->route == 1)
                e = i % K == 0 ? 0 : -1;
            else if (sc->route == 2)
                e = -1;
            else
                e = epxt_below(&rng, 5) == 0
                        ? -1 : (int64_t)epxt_below(&rng,
                                                   (uint64_t)(Elog ? Elog : E));
            if (sc->idx64)
                ((int64_t *)s->idx)[i] = e;
            else
                ((int32_t *)s->idx)[i] = (int32_t)e;
            /* The reference sees the unit: the slot the rule gives
             * (epx.h, epx_replica_policy_t). */
            s->idx64[i] = e;
            if (Elog && e >= 0 && lost[e])   /* sent nowhere, as -1 */
                s->idx64[i] = -1;
            else if (Elog && e >= 0)
                s->idx64[i] = sc->rr
                    ? rrep[roff[e] + (int)((i / K) % (roff[e + 1] - roff[e]))]
                    : s->pick[e];
            s->w[i] = (float)epxt_below(&rng, 1000) / 997.0f;
        }
        s->dest = malloc(sizeof(int32_t) * (size_t)(sc->maxT * g0.maxdest + 1));
        s->pos = malloc(sizeof(int32_t) * (size_t)(sc->maxT * g0.maxdest + 1));
        s->mycnt = calloc((size_t)(R + E), sizeof(int32_t));
        s->epos = malloc(sizeof(int32_t) * (size_t)(sc->maxT * K + 1));
        s->ebase = malloc(sizeof(int64_t) * (size_t)E);
        src[r] = (ref_tokens_t){ s->T, s->x, s->idx64, s->w, 0 };
        win[r] = calloc(1, (size_t)g0.total);
        stage[r] = calloc(1, (size_t)g0.total);
        nwin[r] = calloc(1, (size_t)g0.total);
        assert_non_null(win[r]);
        assert_non_null(stage[r]);
        assert_non_null(nwin[r]);
    }

    const int p = 1;   /* call parity */
    /* Layout kernel: per destination, per expert; counts into every
     * window (and, for NCCL, the same rows into nwin by the count
     * exchange). */
    for (int r = 0; r < R; r++) {
        rank_state_t *s = &rs[r];
        proto_geom_t g = g0;
        g.rank = r;
        const proto_ids_t ids = { s->idx, sc->idx64, K, E,
                                 { Elog, sc->rr ? NULL : s->pick, roff,
                                   rrep } };
        /* the host's walk, then the kernels' blocks: the same positions */
        const size_t np = (size_t)(sc->maxT * g.maxdest + 1),
                     ne = (size_t)(sc->maxT * K + 1);
        int32_t *d1 = malloc(sizeof(int32_t) * np), *p1 = malloc(sizeof(int32_t) * np);
        int32_t *e1 = malloc(sizeof(int32_t) * ne);
        int32_t *c1 = malloc(sizeof(int32_t) * (size_t)(R + E));
        layout_walk(&g, &ids, e2r, s->T, 0, NULL, d1, p1, e1, c1);
        fused_matches_walk(&g, &ids, e2r, s->T, d1, p1, c1, e1);
        layout_blocks(&g, &ids, e2r, s->T, layout_nb(s->T, r), sc->em,
                      s->dest, s->pos, s->epos, s->mycnt);
        assert_memory_equal(c1, s->mycnt, sizeof(int32_t) * (size_t)(R + E));
        for (int64_t i = 0; i < s->T * g.maxdest; i++) {
            assert_int_equal(d1[i], s->dest[i]);
            if (d1[i] >= 0)
                assert_int_equal(p1[i], s->pos[i]);
        }
        for (int64_t i = 0; sc->em && i < s->T * K; i++)
            if (proto_expert_id(&ids, i / K, (int)(i % K)) >= 0)
                assert_int_equal(e1[i], s->epos[i]);
        free(d1), free(p1), free(e1), free(c1);
        if (Elog)
            check_lost(sc, s, roff, rrep, lost, R);
        int64_t o = 0;
        for (int d = 0; d < R; d++) {
            s->sendoff[d] = o;
            o += s->mycnt[d];
        }
        for (int d = 0; d < R; d++) {
            int32_t *c = (int32_t *)(win[d] + g.off_cnt) +
                         proto_cnt_index(&g, p, r);
            memcpy(c, s->mycnt, sizeof(int32_t) * (size_t)(R + E));
            c[R + E] = 1;
            memcpy((int32_t *)(nwin[d] + g.off_cnt) + proto_cnt_index(&g, p, r),
                   s->mycnt, sizeof(int32_t) * (size_t)(R + E));
        }
    }
    /* Readiness (device epx_dispatch_poll): the sources feeding each
     * local unit (proto_unit_fed, the recv kernel's wait list) are those
     * whose tokens the reference routes there, in the window's count
     * matrix and in the copy a layout keeps for its cached dispatches
     * (the recv kernel's: R * cnt_ints - PROTO_CNT_HDR words from the
     * first count), which also gives the same receive counts. */
    for (int r = 0; r < R; r++) {
        proto_geom_t g = g0;
        g.rank = r;
        const int32_t *cnt = (const int32_t *)(win[r] + g.off_cnt) +
                             proto_cnt_index(&g, p, 0);
        const size_t nk = (size_t)R * (size_t)g.cnt_ints - PROTO_CNT_HDR;
        int32_t *kept = malloc(sizeof(int32_t) * (size_t)R * g.cnt_ints);
        memcpy(kept, cnt, sizeof(int32_t) * nk);
        for (int j = 0; j < first[r + 1] - first[r]; j++) {
            const int64_t u = first[r] + j;
            for (int sr = 0; sr < R; sr++) {
                int fed = 0;
                for (int64_t i = 0; i < src[sr].T * K; i++)
                    fed |= src[sr].idx[i] == u;
                assert_int_equal(proto_unit_fed(&g, cnt, sr, u), fed);
                assert_int_equal(proto_unit_fed(&g, kept, sr, u), fed);
            }
            assert_int_equal(proto_recv_expert(&g, kept, first[r], j),
                             proto_recv_expert(&g, cnt, first[r], j));
            assert_int_equal(proto_expert_offset(&g, kept, first[r], j + 1),
                             proto_expert_offset(&g, cnt, first[r], j + 1));
        }
        assert_int_equal(proto_recv_rows(&g, kept), proto_recv_rows(&g, cnt));
        free(kept);
    }
    /* Offsets and pack, both addressings. */
    for (int r = 0; r < R; r++) {
        rank_state_t *s = &rs[r];
        proto_geom_t g = g0;
        g.rank = r;
        const proto_ids_t ids = { s->idx, sc->idx64, K, E,
                                 { Elog, sc->rr ? NULL : s->pick, roff,
                                   rrep } };
        const int32_t *cnt = (const int32_t *)(win[r] + g.off_cnt) +
                             proto_cnt_index(&g, p, 0);
        for (int d = 0; d < R; d++)
            s->base[d] = proto_dest_base(&g, cnt, d);
        if (sc->em)
            for (int e = 0; e < E; e++)
                s->ebase[e] = proto_expert_base(&g, cnt, first[e2r[e]], e);
        for (int64_t i = 0; i < s->T * g.maxdest; i++) {
            int d = s->dest[i];
            if (d < 0)
                continue;
            int64_t t = i / g.maxdest;
            int64_t slot = s->sendoff[d] + s->pos[i];
            assert_int_equal(slot, proto_ret_slot(&g, s->sendoff, s->dest,
                                                 s->pos, t, (int)(i % g.maxdest)));
            if (sc->em) {
                /* pack_expert_major: a row per expert of t at d, then
                 * the entry. */
                char *w = win[d];
                int64_t ent = s->base[d] + s->pos[i];
                for (int k = 0; k < K; k++) {
                    int64_t e = proto_expert_id(&ids, t, k);
                    if (e < 0 || proto_owner(e2r, e) != d)
                        continue;
                    int64_t row = proto_expert_row(&g, s->ebase, s->epos, e,
                                                  t, k);
                    assert_true(row >= 0 && row < g.xrows);
                    memcpy(w + g.off_rows + row * g.row_bytes,
                           (const char *)s->x + t * g.row_bytes,
                           (size_t)g.row_bytes);
                    ((int32_t *)(w + g.off_src_rank))[row] = r;
                    ((int32_t *)(w + g.off_src_token))[row] = (int32_t)t;
                    ((float *)(w + g.off_w))[row] = s->w[t * K + k];
                }
                ((int32_t *)(w + g.off_ent_src))[ent] = r;
                ((int32_t *)(w + g.off_ret_slot))[ent] = (int32_t)slot;
                proto_entry_rows(&g, &ids, e2r, s->ebase, s->epos, t, d,
                                (int32_t *)(w + g.off_ent_rows) + ent * K);
                continue;
            }
            for (int pass = 0; pass < 2; pass++) {
                char *w = pass == 0 ? win[d] : stage[r];
                int64_t row = pass == 0 ? s->base[d] + s->pos[i] : slot;
                memcpy(w + g.off_rows + row * g.row_bytes,
                       (const char *)s->x + t * g.row_bytes,
                       (size_t)g.row_bytes);
                ((int32_t *)(w + g.off_src_rank))[row] = r;
                ((int32_t *)(w + g.off_src_token))[row] = (int32_t)t;
                ((int32_t *)(w + g.off_ret_slot))[row] = (int32_t)slot;
                proto_meta_topk(&g, &ids, s->w, e2r, t, d, first[d],
                               (int32_t *)(w + g.off_idx) + row * K,
                               (float *)(w + g.off_w) + row * K);
            }
        }
    }
    /* NCCL: rows [sendoff[d], +n) of each source's staging to d at the
     * source's receive base there (what the grouped send/recv moves). */
    for (int sr = 0; sr < R; sr++)
        for (int d = 0; d < R; d++) {
            proto_geom_t g = g0;
            g.rank = d;
            const int32_t *cnt = (const int32_t *)(nwin[d] + g.off_cnt) +
                                 proto_cnt_index(&g, p, 0);
            int64_t n = rs[sr].mycnt[d], r0 = proto_src_base(&g, cnt, sr);
            int64_t s0 = rs[sr].sendoff[d];
            assert_int_equal(n, cnt[(int64_t)sr * g.cnt_ints + d]);
            memcpy(nwin[d] + g.off_rows + r0 * g.row_bytes,
                   stage[sr] + g.off_rows + s0 * g.row_bytes,
                   (size_t)(n * g.row_bytes));
            const int64_t offs[4] = { g.off_src_rank, g.off_src_token,
                                      g.off_idx, g.off_w };
            for (int f = 0; f < 4; f++) {
                int64_t per = f >= 2 ? K : 1;
                memcpy(nwin[d] + offs[f] + r0 * per * 4,
                       stage[sr] + offs[f] + s0 * per * 4,
                       (size_t)(n * per * 4));
            }
        }

    ref_cfg_t cfg = { R, E, K, H, sc->dtype,
                      sc->em ? EPX_LAYOUT_EXPERT_MAJOR : EPX_LAYOUT_TOKEN_MAJOR,
                      g0.align, EPX_WIRE_NATIVE };
    if (sc->em) {
        check_expert_major(sc, &g0, &cfg, rs, src, win, first);
        check_nccl_expert_major(sc, &g0, rs, win, nwin, first, e2r, roff,
                                rrep);
        goto out;
    }
    for (int r = 0; r < R; r++) {
        proto_geom_t g = g0;
        g.rank = r;
        ref_recv_t want;
        assert_int_equal(ref_dispatch(&cfg, src, r, &want), 0);
        for (int pass = 0; pass < 2; pass++) {
            char *w = pass == 0 ? win[r] : nwin[r];
            const int32_t *cnt = (const int32_t *)(w + g.off_cnt) +
                                 proto_cnt_index(&g, p, 0);
            int64_t rows = proto_recv_rows(&g, cnt);
            assert_int_equal(rows, want.num_rows);
            for (int j = 0; j < want.num_local; j++)
                assert_int_equal(proto_recv_expert(&g, cnt, first[r], j),
                                 want.counts[j]);
            for (int64_t i = 0; i < rows; i++) {
                assert_int_equal(((int32_t *)(w + g.off_src_rank))[i],
                                 want.src_rank[i]);
                assert_int_equal(((int32_t *)(w + g.off_src_token))[i],
                                 want.src_token[i]);
                assert_memory_equal((int32_t *)(w + g.off_idx) + i * K,
                                    want.topk_idx + i * K, 4 * (size_t)K);
                assert_memory_equal((float *)(w + g.off_w) + i * K,
                                    want.weights + i * K, 4 * (size_t)K);
                assert_memory_equal(w + g.off_rows + i * g.row_bytes,
                                    want.x + i * g.row_bytes,
                                    (size_t)g.row_bytes);
            }
        }
        ref_recv_free(&want);
    }

    /* Combine put: each rank's expert output row i (its whole partial for
     * that token) into the source's comb at the row's return slot. */
    for (int d = 0; d < R; d++) {
        proto_geom_t g = g0;
        g.rank = d;
        const int32_t *cnt = (const int32_t *)(win[d] + g.off_cnt) +
                             proto_cnt_index(&g, p, 0);
        int64_t rows = proto_recv_rows(&g, cnt);
        for (int64_t i = 0; i < rows; i++) {
            int s = ((int32_t *)(win[d] + g.off_src_rank))[i];
            int64_t t = ((int32_t *)(win[d] + g.off_src_token))[i];
            int64_t slot = ((int32_t *)(win[d] + g.off_ret_slot))[i];
            put_y(win[s] + g.off_comb + slot * g.row_bytes, esize, H, s, t, d);
        }
    }
    /* In place (pull combine): the expert outputs over the received rows
     * (the receive checks are done). */
    for (int d = 0; d < R; d++) {
        proto_geom_t g = g0;
        g.rank = d;
        const int32_t *cnt = (const int32_t *)(win[d] + g.off_cnt) +
                             proto_cnt_index(&g, p, 0);
        int64_t rows = proto_recv_rows(&g, cnt);
        for (int64_t i = 0; i < rows; i++) {
            int s = ((int32_t *)(win[d] + g.off_src_rank))[i];
            int64_t t = ((int32_t *)(win[d] + g.off_src_token))[i];
            put_y(win[d] + g.off_rows + i * g.row_bytes, esize, H, s, t, d);
        }
    }
    for (int r = 0; r < R; r++) {
        rank_state_t *s = &rs[r];
        proto_geom_t g = g0;
        g.rank = r;
        size_t ob = (size_t)(s->T * H + 1) * (size_t)oesize;
        char *want = calloc(1, ob);
        want_combine(&cfg, r, &src[r], 0, sc->out, want);
        for (int vec = 0; vec < 2; vec++) {
            char *got = reduce_out(&g, win[r] + g.off_comb, s->sendoff,
                                   s->dest, s->pos, s->T, oesize, vec);
            assert_memory_equal(got, want,
                                (size_t)(s->T * H) * (size_t)oesize);
            free(got);
        }
        /* Pull: every rank's y in place (its receive rows), read by the
         * owner at base + pos; some ranks pushed instead (not for FP64
         * engines, which combine with the classic kernels). */
        for (int round = 0; round < 2 && esize != 8; round++) {
            int *mode = malloc(sizeof(int) * (size_t)R);
            pull_modes(R, 0, mode);
            char *pulled = pull_out(&g0, s, r, win, mode, oesize, round);
            assert_memory_equal(pulled, want,
                                (size_t)(s->T * H) * (size_t)oesize);
            free(pulled);
            free(mode);
        }
        free(want);
    }

out:
    for (int r = 0; r < R; r++) {
        rank_state_free(&rs[r]);
        free(win[r]);
        free(stage[r]);
        free(nwin[r]);
    }
    free(rs);
    free(src);
    free(win);
    free(stage);
    free(nwin);
    free(e2r);
    free(p2l), free(roff), free(rrep), free(lost);
}

/* Replicas: ids are logical experts routed to slots as the kernels read
 * them (a rank's pick table, or round robin by token index), both
 * layouts, against the reference over the routed slots. */
static void replicas(void **state)
{
    (void)state;
    static const int ranks[] = { 1, 2, 3, 8 };
    for (size_t i = 0; i < sizeof(ranks) / sizeof(ranks[0]); i++)
        for (int c = 0; c < 4; c++) {
            const int R = ranks[i], Elog = R + 2;
            scen_t sc = {
                .R = R, .E = 2 * R * (c % 2 ? 2 : 1) + (R == 1 ? 1 : 0),
                .K = 3, .H = 13, .maxT = 20,
                .dtype = EPX_DTYPE_BF16, .out = EPX_DTYPE_FP32,
                .idx64 = c & 1, .em = c >= 2, .align = c >= 2 ? 4 : 1,
                .Elog = Elog, .rr = c == 1 || c == 2,
            };
            if (sc.E < Elog)
                sc.E = Elog + R - Elog % R;   /* every expert a slot */
            run(&sc);
        }
}

/* Elastic: some logical experts have no slot (lost; an entry naming
 * one routes to -1, proto_expert_id), slots below the experts too; every
 * policy and layout, 1 to 8 ranks and 72 (the reference sees -1 for a
 * lost entry: sent nowhere, left out of combine). */
static void elastic(void **state)
{
    (void)state;
    static const int ranks[] = { 1, 2, 3, 8, 72 };
    for (size_t i = 0; i < sizeof(ranks) / sizeof(ranks[0]); i++)
        for (int c = 0; c < 4; c++) {
            const int R = ranks[i], Elog = 2 * R + 3;
            scen_t sc = {
                .R = R, .E = R * (c % 2 ? 3 : 1), .K = 3, .H = 13,
                .maxT = R > 8 ? 6 : 20,
                .dtype = EPX_DTYPE_BF16, .out = EPX_DTYPE_FP32,
                .idx64 = c & 1, .em = c >= 2, .align = c >= 2 ? 4 : 1,
                .Elog = Elog, .rr = c == 1 || c == 2,
            };
            /* every expert but one (c 0), or a third, lost */
            nlost = c == 0 ? Elog - 1 : Elog / 3;
            if (sc.E < Elog - nlost)
                sc.E = ((Elog - nlost) / R + 1) * R;
            run(&sc);
            nlost = 0;
        }
}

static void matrix(void **state)
{
    (void)state;
    static const int ranks[] = { 1, 2, 3, 8, 72 };
    for (size_t i = 0; i < sizeof(ranks) / sizeof(ranks[0]); i++)
        for (int c = 0; c < 4; c++) {
            const int R = ranks[i];
            scen_t sc = {
                .R = R, .E = 2 * R + 3, .K = 4, .H = c % 2 ? 24 : 13,
                .maxT = R >= 72 ? 6 : 20,
                .dtype = c < 2 ? EPX_DTYPE_BF16 : EPX_DTYPE_FP32,
                .out = c == 1 || c == 2 ? EPX_DTYPE_FP32 : EPX_DTYPE_BF16,
                .idx64 = c & 1, .route = 0, .zero_tokens = 0,
            };
            run(&sc);
        }
}

/* Expert-major: 1, 2, 3, 8 and 72 ranks, alignments 1, 4 and 7 (a
 * segment's padding), weighted and unweighted combine, both dtypes. */
static void expert_major(void **state)
{
    (void)state;
    static const int ranks[] = { 1, 2, 3, 8, 72 };
    for (size_t i = 0; i < sizeof(ranks) / sizeof(ranks[0]); i++)
        for (int c = 0; c < 4; c++) {
            const int R = ranks[i];
            scen_t sc = {
                .R = R, .E = c == 3 ? R + 1 : 2 * R + 3, .K = c == 3 ? 2 : 4,
                .H = c % 2 ? 24 : 13, .maxT = R >= 72 ? 6 : 20,
                .dtype = c < 2 ? EPX_DTYPE_BF16 : EPX_DTYPE_FP32,
                .out = c == 1 || c == 2 ? EPX_DTYPE_FP32 : EPX_DTYPE_BF16,
                .idx64 = c & 1, .route = 0, .zero_tokens = c == 2,
                .em = 1, .align = c == 0 ? 1 : c == 1 ? 4 : 7,
                .unweighted = c == 1,
            };
            run(&sc);
        }
    /* every token to expert 0; no expert at all; fewer experts than
     * ranks; one rank */
    scen_t a = { 8, 19, 4, 16, 12, EPX_DTYPE_BF16, EPX_DTYPE_BF16, 0, 1, 0,
                 1, 8, 0, 0, 0 };
    run(&a);
    scen_t b = { 3, 9, 2, 8, 10, EPX_DTYPE_FP32, EPX_DTYPE_FP32, 1, 2, 0,
                 1, 3, 1, 0, 0 };
    run(&b);
    scen_t d = { 8, 3, 3, 8, 12, EPX_DTYPE_BF16, EPX_DTYPE_BF16, 1, 0, 0,
                 1, 2, 0, 0, 0 };
    run(&d);
    scen_t e = { 1, 1, 1, 8, 0, EPX_DTYPE_BF16, EPX_DTYPE_BF16, 0, 0, 0,
                 1, 4, 0, 0, 0 };
    run(&e);
}

/* The low-latency layout kernels over nb blocks (count, keep, place):
 * keep, dest, pos and block 0's totals (mycnt [R + E]). */
static void ll_layout_blocks(const proto_geom_t *g, const proto_ids_t *ids,
                             const int32_t *e2r, int64_t T, int nb, int cap,
                             int32_t *keep, int32_t *dest, int32_t *pos,
                             int32_t *mycnt)
{
    const int n = g->R + g->E;
    int32_t *part = calloc((size_t)nb * (size_t)n + 1, sizeof(int32_t));
    assert_non_null(part);
    for (int b = nb - 1; b >= 0; b--) {   /* count */
        int64_t t0, t1;
        proto_layout_range(T, nb, b, &t0, &t1);
        for (int64_t i = t0 * g->K; i < t1 * g->K; i++)
            keep[i] = -1;
        for (int64_t i = t0 * g->maxdest; i < t1 * g->maxdest; i++)
            dest[i] = -1;
        for (int e = 0; e < g->E; e++)
            part[(int64_t)b * n + g->R + e] =
                (int32_t)proto_layout_expert(g, ids, t0, t1, e, 0, NULL);
    }
    for (int b = nb - 1; b >= 0; b--) {   /* keep */
        int64_t t0, t1;
        proto_layout_range(T, nb, b, &t0, &t1);
        for (int e = 0; e < g->E; e++)
            proto_ll_layout_expert(g, ids, t0, t1, e,
                                  proto_layout_base(part, n, b, g->R + e), cap,
                                  keep);
        for (int d = 0; d < g->R; d++)
            part[(int64_t)b * n + d] = (int32_t)proto_layout_dest(
                g, ids, keep, e2r, t0, t1, d, 0, NULL, NULL);
    }
    for (int b = 0; b < nb; b++) {        /* place */
        int64_t t0, t1;
        proto_layout_range(T, nb, b, &t0, &t1);
        for (int d = 0; d < g->R; d++)
            proto_layout_dest(g, ids, keep, e2r, t0, t1, d,
                             proto_layout_base(part, n, b, d), dest, pos);
    }
    for (int u = 0; u < n; u++)
        mycnt[u] = (int32_t)proto_layout_base(part, n, nb, u);
    free(part);
}

/* A bf16 row quantized with the kernels' per-chunk arithmetic (proto.h,
 * "quantized pack") in lane order, one block after the other: what the
 * pack warp stores (test_kern_quant checks the warp's own order). */
static void quant_row_chunks(const proto_geom_t *g, const uint16_t *x, char *q,
                             char *sc, float *gs)
{
    const int64_t chunks = proto_q_chunks(g);
    const int G = proto_q_group(g), cb = proto_q_chunk_bytes(g);
    uint16_t v[MOE_QUANT_CHUNK];
    uint8_t o[MOE_QUANT_CHUNK];
    float global = 0.0f;
    if (g->wire == EPX_WIRE_NVFP4) {
        uint32_t m = 0;
        for (int64_t c = 0; c < chunks; c++) {
            int nan;
            proto_q_load_chunk(g, x, c, v);
            uint32_t a = moe_quant_chunk_amax(v, MOE_QUANT_CHUNK, &nan);
            m = a > m ? a : m;
        }
        global = moe_quant_nvfp4_gscale(moe_quant_bf16((uint16_t)m));
        *gs = global;
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
            int n = proto_q_load_chunk(g, x, c, v);
            uint32_t sv = proto_q_encode(g, v, MOE_QUANT_CHUNK, m, nan, global,
                                        o);
            memcpy(q + c * cb, o, (size_t)proto_q_chunk_stored(g, n));
            if (c == b0)
                proto_q_store_scale(g, sc, c / G, sv);
        }
    }
}

/* The fused send of one rank (kern_ll.cu ll1_send_token): each token's
 * kept rows (proto_ll1_token_rows) get the row loaded, or quantized, once
 * (into a scratch row) and stored whole to every slot, with the row's
 * token and weight. */
static void ll1_pack_rows(const proto_geom_t *g, const proto_ll_t *ll, int b,
                          char **win, const rank_state_t *s,
                          const int32_t *unit, const int32_t *keep,
                          const int32_t *e2r, const int32_t *first, int cap)
{
    char *q = calloc(1, (size_t)g->xrow_bytes + 16);
    char *sc = calloc(1, (size_t)g->scale_bytes + 16);
    float gs = 0.0f;
    int64_t row[EPX_MAX_TOPK];
    assert_true(q && sc);
    for (int64_t t = 0; t < s->T; t++) {
        const int n = proto_ll1_token_rows(g, unit, keep, e2r, first, cap, t,
                                           row);
        int n2 = 0;
        for (int k = 0; k < g->K; k++)
            n2 += row[k] >= 0;
        assert_int_equal(n, n2);
        if (n == 0)
            continue;
        const char *xr = (const char *)s->x + t * g->row_bytes;
        if (g->qblock)
            quant_row_chunks(g, (const uint16_t *)xr, q, sc, &gs);
        for (int k = 0; k < g->K; k++) {
            if (row[k] < 0)
                continue;
            const int d = e2r[unit[t * g->K + k]];
            assert_true(row[k] < (int64_t)g->Lmax * g->R * cap);
            char *bw = win[d] + ll->off_bufs + b * ll->buf;
            if (g->qblock) {
                memcpy(proto_ll_row_data(g, ll, bw, row[k]), q,
                       (size_t)g->xrow_bytes);
                memcpy(proto_ll_row_scales(g, ll, bw, row[k]), sc,
                       (size_t)g->scale_bytes);
                if (g->gscale_bytes)
                    *proto_ll_row_gscale(ll, bw, row[k]) = gs;
            } else {
                memcpy(proto_ll_row_data(g, ll, bw, row[k]), xr,
                       (size_t)g->row_bytes);
            }
            ((int32_t *)(bw + ll->src_tok))[row[k]] = (int32_t)t;
            ((float *)(bw + ll->w))[row[k]] = s->w[t * g->K + k];
        }
    }
    free(q);
    free(sc);
}

/* The fused receive phase on one rank's buffer whose padding rows hold
 * stale metadata and whose marks say nothing (0): every range rewritten
 * (proto_ll1_span), so the metadata is the classic receive's.  Returns
 * the row sources (the recv output). */
static int32_t *ll1_recv_marks(const proto_geom_t *g, const proto_ll_t *ll,
                               char *bw, const int32_t *cw, int L, int cap)
{
    const int64_t rows = (int64_t)L * g->R * cap;
    int32_t *src = malloc(sizeof(int32_t) * (size_t)(rows + 1));
    assert_non_null(src);
    for (int64_t i = 0; i < rows; i++)
        src[i] = 12345;
    for (int64_t p = 0; p < (int64_t)L * g->R; p++) {
        const int64_t kept = proto_ll_kept(cw[p], cap);
        for (int64_t i = kept; i < cap; i++) {   /* stale metadata */
            ((int32_t *)(bw + ll->src_tok))[p * cap + i] = 777;
            ((float *)(bw + ll->w))[p * cap + i] = 7.0f;
        }
        int64_t lo, hi;
        proto_ll1_span(0, 5, kept, cap, &lo, &hi);
        assert_true(lo == 0 && hi == cap);
        for (int64_t i = lo; i < hi; i++) {
            if (i < kept) {
                src[p * cap + i] = (int32_t)(p % g->R);
            } else {
                src[p * cap + i] = -1;
                ((int32_t *)(bw + ll->src_tok))[p * cap + i] = -1;
                ((float *)(bw + ll->w))[p * cap + i] = 0.0f;
            }
        }
        for (int64_t i = 0; i < cap; i++)
            assert_int_equal(src[p * cap + i],
                             proto_ll_row_source(g, cap, cw, p * cap + i));
    }
    return src;
}

/* Low latency: R simulated ranks through the kernels' steps (slots per
 * expert with drops, kept destinations, rows at j*R*cap + s*cap + i, count
 * and final words, entries, padding from the count words, partials and the
 * reduce) against the reference's low-latency dispatch and its combine of
 * the kept routing.  A quantized wire: each kept row quantized into the
 * buffer's data, scales and row-scale regions at the row's index, against
 * the reference's rows quantized by the reference quantizer.  fused: the
 * one-kernel form (EPX_CUDA_KERNELS=fused, proto.h "low latency in one
 * kernel"): its layout, each token's kept rows loaded (quantized) once
 * and stored to every slot, and the receive phase's marks
 * (proto_ll1_span) over stale metadata. */
/* ------------------------------------------- low latency over NCCL
 * (proto/ll_nccl.h): each sender stages a block per destination in the
 * receiver's order, one grouped send/recv moves the blocks at the sizes
 * the host knows (here memcpy), the receiver scatters them into its
 * buffer; then compared with the windows backend's buffer. */

/* Rank r's staging: its kept rows, their metadata, its entries and its
 * words, each destination's block at proto_lln_send_off. */
static void lln_pack(const proto_geom_t *g, int cap, const int32_t *first,
                     const int32_t *e2r, const rank_state_t *s,
                     const int32_t *keep, int32_t tag, char *stage)
{
    const int R = g->R, K = g->K;
    const proto_ids_t ids = { s->idx, 0, K, g->E, { 0, NULL, NULL, NULL } };
    for (int64_t i = 0; i < s->T * g->maxdest; i++) {
        const int d = s->dest[i];
        if (d < 0)
            continue;
        const int64_t t = i / g->maxdest;
        const int L = first[d + 1] - first[d];
        proto_lln_blk_t bk;
        proto_lln_block(g, L, cap, &bk);
        char *blk = stage + proto_lln_send_off(g, first, cap, d);
        for (int k = 0; k < K; k++) {
            int64_t e = proto_kept_id(&ids, keep, t, k);
            if (e < 0 || e2r[e] != d)
                continue;
            int64_t r = proto_lln_brow(cap, first[d], e, keep[t * K + k]);
            assert_true(r >= 0 && r < (int64_t)L * cap);
            const char *xr = (const char *)s->x + t * g->row_bytes;
            if (g->qblock)
                quant_row_chunks(g, (const uint16_t *)xr,
                                 blk + bk.rows + r * g->xrow_bytes,
                                 blk + bk.scales + r * g->scale_bytes,
                                 (float *)(blk + bk.gscale) + r);
            else
                memcpy(blk + bk.rows + r * g->xrow_bytes, xr,
                       (size_t)g->row_bytes);
            ((int32_t *)(blk + bk.src_tok))[r] = (int32_t)t;
            ((float *)(blk + bk.w))[r] = s->w[t * K + k];
        }
        const int64_t p = s->pos[i];
        assert_true(p < proto_lln_nent(g, L, cap));
        ((int32_t *)(blk + bk.ent_slot))[p] = (int32_t)(s->sendoff[d] + p);
        assert_true(proto_ll_entry_rows(g, &ids, keep, e2r, cap, first[d], t,
                                        d, (int32_t *)(blk + bk.ent_rows) +
                                               p * K) > 0);
    }
    for (int d = 0; d < R; d++) {
        proto_lln_blk_t bk;
        proto_lln_block(g, first[d + 1] - first[d], cap, &bk);
        int32_t *w = (int32_t *)(stage + proto_lln_send_off(g, first, cap, d) +
                                 bk.words);
        w[PROTO_LLN_ST] = 0;
        w[PROTO_LLN_FW] = PROTO_LL_WORD(tag, s->mycnt[d]);
        for (int e = first[d]; e < first[d + 1]; e++)
            w[PROTO_LLN_CW + e - first[d]] = PROTO_LL_WORD(tag,
                                                           s->mycnt[R + e]);
    }
}

/* The grouped send/recv: what s sends d lands in d's receive staging at
 * block s (blocks of d's size); then d's scatter into its buffer bw. */
static void lln_exchange(const proto_geom_t *g0, int cap, const int32_t *first,
                         char **sstage, char **rstage)
{
    const int R = g0->R;
    for (int s = 0; s < R; s++)
        for (int d = 0; d < R; d++) {
            proto_lln_blk_t bk;
            proto_lln_block(g0, first[d + 1] - first[d], cap, &bk);
            memcpy(rstage[d] + s * bk.bytes,
                   sstage[s] + proto_lln_send_off(g0, first, cap, d),
                   (size_t)bk.bytes);
        }
}

static void lln_scatter(const proto_geom_t *g, const proto_ll_t *ll, int cap,
                        int L, const char *rstage, char *bw)
{
    const int R = g->R, K = g->K;
    proto_lln_blk_t bk;
    proto_lln_block(g, L, cap, &bk);
    for (int s = 0; s < R; s++) {
        const char *blk = rstage + s * bk.bytes;
        const int32_t *w = (const int32_t *)(blk + bk.words);
        ((int32_t *)(bw + ll->st))[s] = w[PROTO_LLN_ST];
        ((int32_t *)(bw + ll->fw))[s] = w[PROTO_LLN_FW];
        for (int j = 0; j < L; j++)
            ((int32_t *)(bw + ll->cw))[j * R + s] = w[PROTO_LLN_CW + j];
        for (int64_t r = 0; r < (int64_t)L * cap; r++) {
            /* the kept rows (the kernel's; padding: ll recv's marks) */
            if (r % cap >= proto_ll_kept(w[PROTO_LLN_CW + r / cap], cap))
                continue;
            const int64_t row = proto_lln_row(g, cap, s, r);
            memcpy(proto_ll_row_data(g, ll, bw, row),
                   blk + bk.rows + r * g->xrow_bytes, (size_t)g->xrow_bytes);
            memcpy(proto_ll_row_scales(g, ll, bw, row),
                   blk + bk.scales + r * g->scale_bytes,
                   (size_t)g->scale_bytes);
            if (g->gscale_bytes)
                *proto_ll_row_gscale(ll, bw, row) =
                    ((const float *)(blk + bk.gscale))[r];
            ((int32_t *)(bw + ll->src_tok))[row] =
                ((const int32_t *)(blk + bk.src_tok))[r];
            ((float *)(bw + ll->w))[row] = ((const float *)(blk + bk.w))[r];
        }
        for (int64_t i = 0; i < proto_lln_nent(g, L, cap); i++) {
            const int64_t ent = (int64_t)s * g->maxT + i;
            ((int32_t *)(bw + ll->ent_slot))[ent] =
                ((const int32_t *)(blk + bk.ent_slot))[i];
            memcpy((int32_t *)(bw + ll->ent_rows) + ent * K,
                   (const int32_t *)(blk + bk.ent_rows) + i * K,
                   sizeof(int32_t) * (size_t)K);
        }
    }
}

/* The receive geometry NCCL gave (bn) against the windows backend's (bw):
 * every word, every kept row's parts and metadata, every entry. */
static void lln_same(const proto_geom_t *g, const proto_ll_t *ll, int cap,
                     int L, const char *bn, const char *bw)
{
    const int R = g->R;
    assert_memory_equal(bn + ll->cw, bw + ll->cw, sizeof(int32_t) *
                        (size_t)(L * R));
    assert_memory_equal(bn + ll->fw, bw + ll->fw, sizeof(int32_t) * (size_t)R);
    assert_memory_equal(bn + ll->st, bw + ll->st, sizeof(int32_t) * (size_t)R);
    const int32_t *cw = (const int32_t *)(bw + ll->cw);
    for (int64_t row = 0; row < (int64_t)L * R * cap; row++) {
        if (proto_ll_row_source(g, cap, cw, row) < 0)
            continue;
        assert_memory_equal(bn + ll->rows + row * g->xrow_bytes,
                            bw + ll->rows + row * g->xrow_bytes,
                            (size_t)g->xrow_bytes);
        assert_memory_equal(bn + ll->scales + row * g->scale_bytes,
                            bw + ll->scales + row * g->scale_bytes,
                            (size_t)g->scale_bytes);
        if (g->gscale_bytes)
            assert_memory_equal(bn + ll->gscale + row * 4,
                                bw + ll->gscale + row * 4, 4);
        assert_memory_equal(bn + ll->src_tok + row * 4,
                            bw + ll->src_tok + row * 4, 4);
        assert_memory_equal(bn + ll->w + row * 4, bw + ll->w + row * 4, 4);
    }
    const int32_t *fw = (const int32_t *)(bw + ll->fw);
    for (int s = 0; s < R; s++) {
        assert_true((fw[s] & PROTO_LL_MASK) <= proto_lln_nent(g, L, cap));
        for (int64_t i = 0; i < (fw[s] & PROTO_LL_MASK); i++) {
            const int64_t ent = (int64_t)s * g->maxT + i;
            assert_memory_equal(bn + ll->ent_slot + ent * 4,
                                bw + ll->ent_slot + ent * 4, 4);
            assert_memory_equal(bn + ll->ent_rows + ent * g->K * 4,
                                bw + ll->ent_rows + ent * g->K * 4,
                                (size_t)g->K * 4);
        }
    }
}

/* Combine over NCCL at rank d (its buffer bw): each entry's partial into
 * its staging block for the entry's source at the entry's position, the
 * block's flag word the comb flag (use + 1). */
static void lln_comb_put(const proto_geom_t *g, const proto_ll_t *ll,
                         const char *bw, const char *y, int unweighted,
                         uint64_t use, char *cstage)
{
    const float *wt = unweighted ? NULL : (const float *)(bw + ll->w);
    const int64_t stride = proto_lln_comb_stride(g);
    for (int s = 0; s < g->R; s++) {
        const int32_t fw = ((const int32_t *)(bw + ll->fw))[s];
        char *blk = cstage + s * stride;
        const uint64_t flag = use + 1;
        memcpy(blk, &flag, sizeof(flag));
        for (int64_t i = 0; i < (fw & PROTO_LL_MASK); i++) {
            int64_t ent = (int64_t)s * g->maxT + i;
            const int32_t *rows = (const int32_t *)(bw + ll->ent_rows) +
                                  ent * g->K;
            put_partial(g, y, rows, wt, blk + 16 + i * g->row_bytes,
                        (int)(i & 1));
        }
    }
}

/* d sends s its block's first proto_lln_comb_bytes (its own L); s keeps
 * every d's at d * stride, then its scatter: the flag into the buffer's
 * comb flag of d, partial i from d to return slot sendoff[d] + i. */
static void lln_comb_exchange(const proto_geom_t *g0, int cap,
                              const int32_t *first, char **cstage,
                              char **crecv)
{
    const int64_t stride = proto_lln_comb_stride(g0);
    for (int d = 0; d < g0->R; d++)
        for (int s = 0; s < g0->R; s++)
            memcpy(crecv[s] + d * stride, cstage[d] + s * stride,
                   (size_t)proto_lln_comb_bytes(g0, first[d + 1] - first[d],
                                                cap));
}

static void lln_comb_scatter(const proto_geom_t *g, const proto_ll_t *ll,
                             int b, int cap, const int32_t *first,
                             const rank_state_t *s, const char *crecv,
                             char *win, uint64_t use)
{
    const int64_t stride = proto_lln_comb_stride(g);
    char *comb = win + ll->off_bufs + b * ll->buf + ll->comb;
    for (int d = 0; d < g->R; d++) {
        const char *blk = crecv + d * stride;
        uint64_t flag;
        memcpy(&flag, blk, sizeof(flag));
        assert_true(flag == use + 1);
        ((uint64_t *)(win + ll->off_comb_flags))[b * g->R + d] = flag;
        assert_true(s->mycnt[d] <= proto_lln_nent(g, first[d + 1] - first[d],
                                                  cap));
        for (int64_t i = 0; i < s->mycnt[d]; i++)
            memcpy(comb + (s->sendoff[d] + i) * g->row_bytes,
                   blk + 16 + i * g->row_bytes, (size_t)g->row_bytes);
    }
}

static void run_ll(int R, int E, int K, int H, int maxT, int cap,
                   epx_dtype_t dt, int unweighted, int skew, epx_wire_t wire,
                   int fused, int nccl)
{
    const int esize = dt_size(dt);
    proto_geom_t g0 = { 0 };
    g0.R = R;
    g0.E = E;
    g0.K = K;
    g0.H = H;
    g0.esize = esize;
    g0.maxT = maxT;
    g0.align = 1;
    g0.wire = wire;
    int32_t *e2r = malloc(sizeof(int32_t) * (size_t)E), *first =
        malloc(sizeof(int32_t) * (size_t)(R + 1));
    for (int r = 0; r <= R; r++)
        first[r] = proto_first_expert(R, E, r);
    for (int r = 0; r < R; r++) {
        int l = first[r + 1] - first[r];
        g0.Lmax = l > g0.Lmax ? l : g0.Lmax;
        for (int e = first[r]; e < first[r + 1]; e++)
            e2r[e] = r;
    }
    proto_geom_layout(&g0);
    proto_ll_t ll;
    const int B = 2, b = 1;
    const uint64_t use = 254 + 255;  /* tag 255: the top bit of the word */
    const int32_t tag = PROTO_LL_TAG(use);
    proto_ll_layout(&g0, B, cap, &ll);
    assert_true(tag >= 1 && tag <= 255 && tag != PROTO_LL_TAG(use - 1));
    {   /* regions in order, none overlapping the next, 16-byte aligned */
        const int64_t rows = (int64_t)g0.Lmax * R * cap;
        assert_true(ll.scales >= ll.rows + rows * g0.xrow_bytes);
        assert_true(ll.gscale >= ll.scales + rows * g0.scale_bytes);
        assert_true(ll.comb >= ll.gscale + rows * g0.gscale_bytes);
        assert_true(ll.buf >= ll.comb + maxT * g0.maxdest * g0.row_bytes);
        assert_int_equal(ll.rows % 16, 0);
        assert_int_equal(ll.scales % 16, 0);
        assert_int_equal(ll.gscale % 16, 0);
        assert_int_equal(ll.buf % 256, 0);
        assert_int_equal(ll.total, ll.off_bufs + B * ll.buf);
    }

    rank_state_t *rs = calloc((size_t)R, sizeof(*rs));
    ref_tokens_t *src = calloc((size_t)R, sizeof(*src));
    char **win = calloc((size_t)R, sizeof(char *));
    int32_t **keep = calloc((size_t)R, sizeof(int32_t *));
    int32_t **ecnt = calloc((size_t)R, sizeof(int32_t *));
    for (int r = 0; r < R; r++) {
        rank_state_t *s = &rs[r];
        s->T = (int64_t)epxt_below(&rng, (uint64_t)maxT + 1);
        s->x = calloc((size_t)(s->T * H + 1), (size_t)esize);
        s->idx64 = calloc((size_t)(s->T * K + 1), sizeof(int64_t));
        s->idx = calloc((size_t)(s->T * K + 1), 4);
        s->w = calloc((size_t)(s->T * K + 1), sizeof(float));
        for (int64_t i = 0; i < s->T * H; i++)
            if (esize == 8)   /* the double's low mantissa bits in use */
                ((double *)s->x)[i] =
                    (double)((int)epxt_below(&rng, 2001) - 1000) / 64.0 +
                    (double)epxt_below(&rng, 1u << 30) * 0x1p-52;
            else
                ref_store(dt, s->x, i,
                          (float)((int)epxt_below(&rng, 2001) - 1000) / 64.0f);
        for (int64_t t = 0; t < s->T; t++)
            for (int k = 0; k < K; k++) {
                /* distinct experts per token (the host's rule); skew:
                 * most choices on the first experts, so ranges overflow */
                int64_t e;
                int again;
                do {
                    e = epxt_below(&rng, 6) == 0 ? -1
                        : skew ? (int64_t)epxt_below(&rng, (uint64_t)(K + 2 < E ? K + 2 : E))
                               : (int64_t)epxt_below(&rng, (uint64_t)E);
                    again = 0;
                    for (int k2 = 0; k2 < k && e >= 0; k2++)
                        again |= s->idx64[t * K + k2] == e;
                } while (again);
                s->idx64[t * K + k] = e;
                ((int32_t *)s->idx)[t * K + k] = (int32_t)e;
                s->w[t * K + k] = (float)epxt_below(&rng, 1000) / 997.0f;
            }
        s->dest = malloc(sizeof(int32_t) * (size_t)(maxT * g0.maxdest + 1));
        s->pos = malloc(sizeof(int32_t) * (size_t)(maxT * g0.maxdest + 1));
        s->mycnt = calloc((size_t)(R + E), sizeof(int32_t));
        keep[r] = malloc(sizeof(int32_t) * (size_t)(maxT * K + 1));
        ecnt[r] = calloc((size_t)E, sizeof(int32_t));
        src[r] = (ref_tokens_t){ s->T, s->x, s->idx64, s->w, 0 };
        win[r] = calloc(1, (size_t)ll.total);
        assert_non_null(win[r]);
    }
    /* NCCL: the senders' and receivers' stagings (stale bytes from an
     * earlier call in them), and buffers the exchange fills */
    char **win2 = NULL, **sstage = NULL, **rstage = NULL, **cstage = NULL,
         **crecv = NULL;
    const int64_t sbytes = proto_lln_stage_bytes(&g0, cap),
                  cbytes = R * proto_lln_comb_stride(&g0);
    if (nccl) {
        win2 = calloc((size_t)R, sizeof(char *));
        sstage = calloc((size_t)R, sizeof(char *));
        rstage = calloc((size_t)R, sizeof(char *));
        cstage = calloc((size_t)R, sizeof(char *));
        crecv = calloc((size_t)R, sizeof(char *));
        for (int r = 0; r < R; r++) {
            win2[r] = calloc(1, (size_t)ll.total);
            sstage[r] = malloc((size_t)sbytes + 1);
            rstage[r] = malloc((size_t)sbytes + 1);
            cstage[r] = malloc((size_t)cbytes);
            crecv[r] = malloc((size_t)cbytes);
            memset(sstage[r], 0xa5, (size_t)sbytes + 1);
            memset(rstage[r], 0x5a, (size_t)sbytes + 1);
            memset(cstage[r], 0xa5, (size_t)cbytes);
            memset(crecv[r], 0x5a, (size_t)cbytes);
        }
        assert_true(proto_lln_send_off(&g0, first, cap, R) <= sbytes);
    }
    /* layout and pack */
    for (int r = 0; r < R; r++) {
        rank_state_t *s = &rs[r];
        proto_geom_t g = g0;
        g.rank = r;
        const proto_ids_t ids = { s->idx, 0, K, E, { 0, NULL, NULL, NULL } };
        /* the host's walk, then the kernels' blocks: the same slots and
         * positions */
        const size_t np = (size_t)(maxT * g.maxdest + 1),
                     nk = (size_t)(maxT * K + 1);
        int32_t *k1 = malloc(sizeof(int32_t) * nk);
        int32_t *d1 = malloc(sizeof(int32_t) * np), *p1 = malloc(sizeof(int32_t) * np);
        int32_t *c1 = malloc(sizeof(int32_t) * (size_t)(R + E));
        layout_walk(&g, &ids, e2r, s->T, cap, k1, d1, p1, NULL, c1);
        int32_t *unit = malloc(sizeof(int32_t) * nk);
        if (fused)
            proto_ll1_layout(&g, &ids, e2r, s->T, cap, unit, keep[r], s->dest,
                             s->pos, s->mycnt);
        else
            ll_layout_blocks(&g, &ids, e2r, s->T, layout_nb(s->T, r + skew),
                             cap, keep[r], s->dest, s->pos, s->mycnt);
        assert_memory_equal(c1, s->mycnt, sizeof(int32_t) * (size_t)(R + E));
        assert_memory_equal(k1, keep[r], sizeof(int32_t) * (size_t)(s->T * K));
        for (int64_t i = 0; i < s->T * g.maxdest; i++) {
            assert_int_equal(d1[i], s->dest[i]);
            if (d1[i] >= 0)
                assert_int_equal(p1[i], s->pos[i]);
        }
        free(k1), free(d1), free(p1), free(c1);
        for (int e = 0; e < E; e++)
            ecnt[r][e] = s->mycnt[R + e];
        int64_t o = 0;
        for (int d = 0; d < R; d++) {
            s->sendoff[d] = o;
            o += s->mycnt[d];
        }
        if (fused)
            ll1_pack_rows(&g, &ll, b, win, s, unit, keep[r], e2r, first, cap);
        free(unit);
        for (int64_t i = 0; i < s->T * g.maxdest; i++) {
            int d = s->dest[i];
            if (d < 0)
                continue;
            int64_t t = i / g.maxdest;
            char *bw = win[d] + ll.off_bufs + b * ll.buf;
            for (int k = 0; k < K && !fused; k++) {
                int64_t e = proto_kept_id(&ids, keep[r], t, k);
                if (e < 0 || e2r[e] != d)
                    continue;
                int64_t row = proto_ll_row(&g, cap, first[d], e, r,
                                          keep[r][t * K + k]);
                assert_true(row >= 0 && row < (int64_t)g.Lmax * R * cap);
                const char *xr = (const char *)s->x + t * g.row_bytes;
                if (g.qblock)
                    quant_row_chunks(&g, (const uint16_t *)xr,
                                     proto_ll_row_data(&g, &ll, bw, row),
                                     proto_ll_row_scales(&g, &ll, bw, row),
                                     proto_ll_row_gscale(&ll, bw, row));
                else
                    memcpy(proto_ll_row_data(&g, &ll, bw, row), xr,
                           (size_t)g.row_bytes);
                ((int32_t *)(bw + ll.src_tok))[row] = (int32_t)t;
                ((float *)(bw + ll.w))[row] = s->w[t * K + k];
            }
            int64_t ent = (int64_t)r * maxT + s->pos[i];
            ((int32_t *)(bw + ll.ent_slot))[ent] =
                (int32_t)(s->sendoff[d] + s->pos[i]);
            assert_true(proto_ll_entry_rows(&g, &ids, keep[r], e2r, cap,
                                           first[d], t, d,
                                           (int32_t *)(bw + ll.ent_rows) +
                                               ent * K) > 0);
        }
        for (int d = 0; d < R; d++) {
            char *bw = win[d] + ll.off_bufs + b * ll.buf;
            for (int e = first[d]; e < first[d + 1]; e++)
                ((int32_t *)(bw + ll.cw))[(e - first[d]) * R + r] =
                    PROTO_LL_WORD(tag, ecnt[r][e]);
            ((int32_t *)(bw + ll.fw))[r] = PROTO_LL_WORD(tag, s->mycnt[d]);
        }
        if (nccl)
            lln_pack(&g, cap, first, e2r, s, keep[r], tag, sstage[r]);
    }
    /* NCCL: the exchange and each receiver's scatter give the windows
     * backend's buffer; the checks below then read NCCL's */
    char **winw = win;
    if (nccl) {
        lln_exchange(&g0, cap, first, sstage, rstage);
        for (int r = 0; r < R; r++) {
            proto_geom_t g = g0;
            g.rank = r;
            const int L = first[r + 1] - first[r];
            lln_scatter(&g, &ll, cap, L, rstage[r],
                        win2[r] + ll.off_bufs + b * ll.buf);
            lln_same(&g, &ll, cap, L, win2[r] + ll.off_bufs + b * ll.buf,
                     win[r] + ll.off_bufs + b * ll.buf);
        }
        win = win2;
    }
    /* receive side against the reference */
    ref_cfg_t cfg = { R, E, K, H, dt, EPX_LAYOUT_EXPERT_MAJOR, 1, wire };
    char **ybuf = calloc((size_t)R, sizeof(char *));
    for (int r = 0; r < R; r++) {
        proto_geom_t g = g0;
        g.rank = r;
        char *bw = win[r] + ll.off_bufs + b * ll.buf;
        const int32_t *cw = (const int32_t *)(bw + ll.cw);
        ref_recv_t want;
        int64_t dropped = 0, got_dropped = 0;
        assert_int_equal(ref_dispatch_ll(&cfg, src, r, cap, &want, &dropped), 0);
        const int L = first[r + 1] - first[r];
        assert_int_equal(want.num_rows, (int64_t)L * R * cap);
        assert_int_equal(want.x_row, (size_t)g.xrow_bytes);
        if (g.qblock)
            assert_int_equal(want.scale_row, (size_t)g.scale_bytes);
        for (int j = 0; j < L; j++) {
            int64_t c = 0;
            for (int sr = 0; sr < R; sr++) {
                assert_int_equal(PROTO_LL_WTAG(cw[j * R + sr]), tag);
                c += proto_ll_kept(cw[j * R + sr], cap);
                got_dropped += proto_ll_dropped(cw[j * R + sr], cap);
            }
            assert_int_equal(c, want.counts[j]);
            assert_int_equal(want.offsets[j], (int64_t)j * R * cap);
            /* readiness (poll): every source's word there; one source's
             * word still of the buffer's previous use, or not stored: not */
            assert_true(proto_ll_unit_ready(&g, cw, j, tag));
            int32_t *wj = (int32_t *)cw + (int64_t)j * R +
                          (int64_t)epxt_below(&rng, (uint64_t)R);
            const int32_t was = *wj;
            *wj = PROTO_LL_WORD(PROTO_LL_TAG(use - 1), was & PROTO_LL_MASK);
            assert_false(proto_ll_unit_ready(&g, cw, j, tag));
            *wj = 0;
            assert_false(proto_ll_unit_ready(&g, cw, j, tag));
            *wj = was;
        }
        assert_int_equal(got_dropped, dropped);
        int32_t *srcs = NULL;
        if (fused)
            srcs = ll1_recv_marks(&g, &ll, bw, cw, L, cap);
        ybuf[r] = calloc((size_t)(want.num_rows * H + 1), (size_t)esize);
        for (int64_t i = 0; i < want.num_rows; i++) {
            int sr = fused ? srcs[i] : proto_ll_row_source(&g, cap, cw, i);
            if (fused && sr < 0) {   /* the padding marks, as classic */
                assert_int_equal(((int32_t *)(bw + ll.src_tok))[i],
                                 want.src_token[i]);
                assert_memory_equal(&((float *)(bw + ll.w))[i],
                                    &want.weights[i], 4);
            }
            assert_int_equal(sr, want.src_rank[i]);
            if (sr < 0)
                continue;
            int32_t tok = ((int32_t *)(bw + ll.src_tok))[i];
            assert_int_equal(tok, want.src_token[i]);
            assert_memory_equal(&((float *)(bw + ll.w))[i], &want.weights[i], 4);
            /* read as epx_recv_t describes the buffer (x, x_scales,
             * x_global_scale: dense arrays from the regions' bases) */
            assert_memory_equal(bw + ll.rows + (size_t)i * want.x_row,
                                want.x + (size_t)i * want.x_row, want.x_row);
            if (g.qblock)
                assert_memory_equal(bw + ll.scales + (size_t)i * want.scale_row,
                                    want.scales + (size_t)i * want.scale_row,
                                    want.scale_row);
            if (g.gscale_bytes)
                assert_memory_equal((float *)(bw + ll.gscale) + i,
                                    &want.gscale[i], sizeof(float));
            put_y(ybuf[r] + i * g.row_bytes, esize, H, sr, tok,
                  first[r] + want.row_expert[i]);
        }
        free(srcs);
        ref_recv_free(&want);
    }
    /* combine put: every source's entries, then the reduce */
    for (int d = 0; d < R; d++) {
        proto_geom_t g = g0;
        g.rank = d;
        char *bw = win[d] + ll.off_bufs + b * ll.buf;
        const float *wt = unweighted ? NULL : (const float *)(bw + ll.w);
        for (int sr = 0; sr < R; sr++) {
            int32_t fw = ((int32_t *)(bw + ll.fw))[sr];
            assert_int_equal(PROTO_LL_WTAG(fw), tag);
            for (int64_t i = 0; i < (fw & PROTO_LL_MASK); i++) {
                int64_t ent = (int64_t)sr * maxT + i;
                int64_t slot = ((int32_t *)(bw + ll.ent_slot))[ent];
                const int32_t *rows = (int32_t *)(bw + ll.ent_rows) + ent * K;
                char *dst = winw[sr] + ll.off_bufs + b * ll.buf + ll.comb +
                            slot * g.row_bytes;
                put_partial(&g, ybuf[d], rows, wt, dst, (int)(i & 1));
            }
        }
        if (nccl)
            lln_comb_put(&g, &ll, bw, ybuf[d], unweighted, use, cstage[d]);
    }
    if (nccl) {
        /* the partials NCCL returns are the windows backend's, slot by
         * slot */
        lln_comb_exchange(&g0, cap, first, cstage, crecv);
        for (int r = 0; r < R; r++) {
            proto_geom_t g = g0;
            g.rank = r;
            lln_comb_scatter(&g, &ll, b, cap, first, &rs[r], crecv[r], win[r],
                             use);
            const int64_t o = ll.off_bufs + b * ll.buf + ll.comb;
            for (int64_t i = 0; i < rs[r].T * g.maxdest; i++)
                if (rs[r].dest[i] >= 0) {
                    int64_t slot = rs[r].sendoff[rs[r].dest[i]] + rs[r].pos[i];
                    assert_memory_equal(win[r] + o + slot * g.row_bytes,
                                        winw[r] + o + slot * g.row_bytes,
                                        (size_t)g.row_bytes);
                }
        }
    }
    for (int r = 0; r < R; r++) {
        rank_state_t *s = &rs[r];
        proto_geom_t g = g0;
        g.rank = r;
        char *bw = win[r] + ll.off_bufs + b * ll.buf;
        const int oes = esize == 8 ? 8 : 4;   /* out FP64, or FP32 */
        char *want = calloc(1, (size_t)(s->T * H + 1) * (size_t)oes);
        int64_t *kidx = malloc(sizeof(int64_t) * (size_t)(s->T * K + 1));
        ref_ll_kept(&cfg, &src[r], cap, kidx);
        ref_tokens_t kept = { s->T, s->x, kidx, s->w, 0 };
        want_combine(&cfg, r, &kept, unweighted,
                     esize == 8 ? EPX_DTYPE_FP64 : EPX_DTYPE_FP32, want);
        for (int vec = 0; vec < 2; vec++) {
            char *got = reduce_out(&g, bw + ll.comb, s->sendoff, s->dest,
                                   s->pos, s->T, oes, vec);
            assert_memory_equal(got, want, (size_t)(s->T * H) * (size_t)oes);
            free(got);
        }
        free(kidx);
        free(want);
    }
    for (int r = 0; r < R; r++) {
        rank_state_free(&rs[r]);
        free(keep[r]);
        free(ecnt[r]);
        free(winw[r]);
        free(ybuf[r]);
        if (nccl) {
            free(win2[r]), free(sstage[r]), free(rstage[r]);
            free(cstage[r]), free(crecv[r]);
        }
    }
    free(win2), free(sstage), free(rstage), free(cstage), free(crecv);
    free(rs), free(src), free(winw), free(keep), free(ecnt), free(ybuf);
    free(e2r), free(first);
}

/* A source's status word as the receiver's outcome (proto_ll_src_fail),
 * against the host executor's header check (ll_dispatch.c
 * ll_check_source): more rows than cap, EPX_ERR_RANGE; any other
 * failure of a peer, EPX_ERR_PEER; a device rank's own failure (its
 * layout's, found on the device) is its own status. */
static void ll_fail_status(void **state)
{
    (void)state;
    static const int32_t sts[] = { 0, EPX_ERR_INVALID, EPX_ERR_RANGE,
                                   EPX_ERR_PEER, EPX_ERR_TIMEOUT,
                                   EPX_ERR_MISMATCH, EPX_ERR_NOMEM };
    for (size_t i = 0; i < sizeof(sts) / sizeof(sts[0]); i++)
        for (int s = 0; s < 3; s++) {
            const int32_t st = sts[i];
            const int32_t host = st == 0 ? 0
                                 : st == EPX_ERR_RANGE ? EPX_ERR_RANGE
                                                       : EPX_ERR_PEER;
            assert_int_equal(proto_ll_src_fail(st, s, 1),
                             s == 1 && st != 0 ? st : host);
        }
}

/* Each case in the classic kernels' form, the fused one's, and the classic
 * kernels' over NCCL (proto/ll_nccl.h: staging, exchange, scatter). */
static void low_latency(void **state)
{
    (void)state;
    static const int ranks[] = { 1, 2, 3, 8, 72 };
    for (int mode = 0; mode < 3; mode++) {
        const int fused = mode == 1, nccl = mode == 2;
        for (size_t i = 0; i < sizeof(ranks) / sizeof(ranks[0]); i++) {
            const int R = ranks[i], maxT = R >= 72 ? 6 : 20;
            /* capacity enough for everything; capacity 3 with drops and a
             * skewed routing; bf16 and fp32; unweighted */
            run_ll(R, 2 * R + 3, 4, 13, maxT, maxT, EPX_DTYPE_BF16, 0, 0,
                   EPX_WIRE_NATIVE, fused, nccl);
            run_ll(R, 2 * R + 3, 4, 24, maxT, 3, EPX_DTYPE_FP32, 0, 1,
                   EPX_WIRE_NATIVE, fused, nccl);
            run_ll(R, R + 1, 2, 8, maxT, 2, EPX_DTYPE_BF16, 1, 1,
                   EPX_WIRE_NATIVE, fused, nccl);
            /* every quantized wire: room for all, and drops; odd rows */
            run_ll(R, 2 * R + 3, 4, 160, maxT, maxT, EPX_DTYPE_BF16, 0, 0,
                   EPX_WIRE_FP8, fused, nccl);
            run_ll(R, 2 * R + 3, 4, 33, maxT, 3, EPX_DTYPE_BF16, 0, 1,
                   EPX_WIRE_FP8_UE8M0, fused, nccl);
            run_ll(R, 2 * R + 3, 3, 200, maxT, 2, EPX_DTYPE_BF16, 1, 1,
                   EPX_WIRE_MXFP8, fused, nccl);
            run_ll(R, 2 * R + 3, 4, 49, maxT, 3, EPX_DTYPE_BF16, 0, 1,
                   EPX_WIRE_NVFP4, fused, nccl);
        }
        /* every choice on few experts, capacity 1; one rank, one expert */
        run_ll(8, 19, 3, 16, 12, 1, EPX_DTYPE_BF16, 0, 1, EPX_WIRE_NATIVE,
               fused, nccl);
        run_ll(1, 1, 1, 8, 5, 2, EPX_DTYPE_FP32, 0, 0, EPX_WIRE_NATIVE, fused,
               nccl);
        run_ll(8, 19, 3, 7168, 4, 1, EPX_DTYPE_BF16, 0, 1, EPX_WIRE_NVFP4,
               fused, nccl);
        run_ll(1, 1, 1, 1, 5, 2, EPX_DTYPE_BF16, 0, 0, EPX_WIRE_FP8, fused,
               nccl);
    }
}

/* The fused low-latency layout (proto_ll1_layout: the stable ranks a warp
 * computes 32 items at a time) against the classic kernels' chunked
 * layout (ll_layout_blocks) and their status, on random calls: 0 tokens,
 * 1 rank, ids -1, out of range and repeated, every id on one rank's
 * experts, replicas (pick and round robin), int32 and int64 ids, overflow
 * of the capacity with and without DROP. */
static void ll_one_kernel_layout(void **state)
{
    (void)state;
    static const int ranks[] = { 1, 2, 3, 8, 72 };
    for (int it = 0; it < 400; it++) {
        const int R = ranks[it % 5];
        const int K = 1 + (int)epxt_below(&rng, R >= 72 ? 4 : 9);
        const int Elog = K + (int)epxt_below(&rng, 2 * (uint64_t)R + 3);
        const int reps = (it / 5) % 3;     /* 0 none, 1 pick, 2 round robin */
        const int E = reps ? Elog + R : Elog;
        const int64_t T = it % 7 == 0 ? 0 : it % 7 == 1 ? 1
                          : (int64_t)epxt_below(&rng, R >= 72 ? 40 : 300);
        const int cap = 1 + (int)epxt_below(&rng, it % 3 ? 8 : (uint64_t)T + 2);
        const int drop = (it / 3) % 2, kind = (it / 15) % 4, idx64 = it & 1;
        proto_geom_t g = { 0 };
        g.R = R;
        g.E = E;
        g.K = K;
        g.H = 8;
        g.esize = 2;
        g.maxT = T;
        g.align = 1;
        g.rank = (int)epxt_below(&rng, (uint64_t)R);
        int32_t *e2r = malloc(sizeof(int32_t) * (size_t)E);
        int32_t *first = malloc(sizeof(int32_t) * (size_t)(R + 1));
        for (int r = 0; r <= R; r++)
            first[r] = proto_first_expert(R, E, r);
        for (int r = 0; r < R; r++)
            for (int e = first[r]; e < first[r + 1]; e++)
                e2r[e] = r;
        proto_geom_layout(&g);
        /* replicas: logical e on slots e and (e < R) Elog + e */
        int32_t *pick = malloc(sizeof(int32_t) * (size_t)Elog);
        int32_t *off = malloc(sizeof(int32_t) * (size_t)(Elog + 1));
        int32_t *rep = malloc(sizeof(int32_t) * (size_t)(Elog + R));
        int n = 0;
        for (int e = 0; e < Elog; e++) {
            off[e] = n;
            rep[n++] = e;
            if (e < R)
                rep[n++] = Elog + e;
            pick[e] = rep[off[e] + (n - off[e] > 1 ? g.rank % 2 : 0)];
        }
        off[Elog] = n;
        const proto_route_t rt = { reps ? Elog : 0, reps == 1 ? pick : NULL,
                                   off, rep };
        const int nid = reps ? Elog : E;
        int64_t *i64 = malloc(sizeof(int64_t) * (size_t)(T * K + 1));
        int32_t *i32 = malloc(sizeof(int32_t) * (size_t)(T * K + 1));
        for (int64_t i = 0; i < T * K; i++) {
            int64_t e;
            switch (kind) {
            case 0:   /* random, -1, and rare bad ids */
                e = epxt_below(&rng, 5) == 0 ? -1
                    : epxt_below(&rng, 50) == 0 ? nid + (int64_t)epxt_below(&rng, 3)
                    : (int64_t)epxt_below(&rng, (uint64_t)nid);
                break;
            case 1:   /* every id on rank 0's experts (or -1) */
                e = epxt_below(&rng, 4) == 0 ? -1
                    : (int64_t)epxt_below(&rng, (uint64_t)(first[1] > 0 &&
                                                          first[1] <= nid
                                                              ? first[1] : 1));
                break;
            case 2:   /* distinct per token, the host's rule */
                e = (int64_t)((i % K + (i / K) * 7) % nid);
                if ((i % K) >= nid)
                    e = -1;
                break;
            default:  /* a few experts: ranges overflow */
                e = (int64_t)epxt_below(&rng, (uint64_t)(nid < 3 ? nid : 3));
            }
            i64[i] = e;
            i32[i] = (int32_t)e;
        }
        const proto_ids_t ids = { idx64 ? (void *)i64 : (void *)i32, idx64, K,
                                  E, rt };
        const size_t nk = (size_t)(T * K + 1), nd = (size_t)(T * g.maxdest + 1);
        int32_t *k0 = malloc(4 * nk), *k1 = malloc(4 * nk), *u1 = malloc(4 * nk);
        int32_t *d0 = malloc(4 * nd), *p0 = malloc(4 * nd);
        int32_t *d1 = malloc(4 * nd), *p1 = malloc(4 * nd);
        int32_t *c0 = malloc(4 * (size_t)(R + E)), *c1 = malloc(4 * (size_t)(R + E));
        ll_layout_blocks(&g, &ids, e2r, T, layout_nb(T, it), cap, k0, d0, p0,
                         c0);
        int bad0 = 0, over0 = 0;   /* the classic place kernel's status */
        for (int64_t i = 0; i < T * K; i++)
            bad0 |= proto_expert_bad(&ids, i / K, (int)(i % K));
        for (int e = 0; e < E; e++)
            over0 |= c0[R + e] > cap && !drop;
        const int32_t st0 = bad0 ? EPX_ERR_INVALID : over0 ? EPX_ERR_RANGE : 0;
        const int bad1 = proto_ll1_layout(&g, &ids, e2r, T, cap, u1, k1, d1, p1,
                                          c1);
        assert_int_equal(proto_ll1_status(&g, bad1, c1, cap, drop), st0);
        assert_memory_equal(c0, c1, 4 * (size_t)(R + E));
        if (T > 0)
            assert_memory_equal(k0, k1, 4 * (size_t)(T * K));
        for (int64_t i = 0; i < T * g.maxdest; i++) {
            assert_int_equal(d0[i], d1[i]);
            if (d0[i] >= 0)
                assert_int_equal(p0[i], p1[i]);
        }
        /* each token's kept rows: the classic pack's, in top-k order */
        int64_t row[EPX_MAX_TOPK];
        for (int64_t t = 0; t < T; t++) {
            proto_ll1_token_rows(&g, u1, k1, e2r, first, cap, t, row);
            for (int k = 0; k < K; k++) {
                int64_t e = proto_kept_id(&ids, k0, t, k);
                assert_int_equal(row[k], e < 0 ? -1
                                 : proto_ll_row(&g, cap, first[e2r[e]], e,
                                                g.rank, k0[t * K + k]));
            }
        }
        free(k0), free(k1), free(u1), free(d0), free(p0), free(d1), free(p1);
        free(c0), free(c1), free(i64), free(i32), free(pick), free(off);
        free(rep), free(e2r), free(first);
    }
    /* the warp's step alone: peers, ranks and the leader's count */
    int32_t key[40], cnt[4] = { 0 }, rank[40];
    for (int i = 0; i < 40; i++)
        key[i] = i % 5 == 4 ? -1 : (i * 7) % 4;
    proto_ll1_rank_step(key, 0, 32, cnt, rank);
    proto_ll1_rank_step(key, 32, 8, cnt, rank);
    int32_t seen[4] = { 0 };
    for (int i = 0; i < 40; i++)
        assert_int_equal(rank[i], key[i] < 0 ? -1 : seen[key[i]]++);
    assert_memory_equal(seen, cnt, sizeof(cnt));
    assert_int_equal(proto_popc32(0xf0f0f0f1u), 17);
}

/* The fused receive phase's marks over a sequence of uses of several
 * buffers, some abandoned (no receive phase: the sender's rows stay, the
 * use advances) or run by the classic kernels (everything rewritten, the
 * marks untouched): after every fused receive, each range's row sources,
 * tokens and weights are the classic receive's. */
static void ll_one_kernel_marks(void **state)
{
    (void)state;
    const int B = 3, P = 5, cap = 6;
    int32_t src[3][5][6], tok[3][5][6];
    float w[3][5][6];
    uint64_t mark[3][5];
    uint32_t use[3] = { 0, 0, 0 };
    memset(mark, 0, sizeof(mark));
    for (int b = 0; b < B; b++)   /* whatever memory held */
        for (int p = 0; p < P; p++)
            for (int i = 0; i < cap; i++) {
                src[b][p][i] = 99;
                tok[b][p][i] = 98;
                w[b][p][i] = 9.0f;
            }
    for (int call = 0; call < 3000; call++) {
        const int b = (int)epxt_below(&rng, B);
        const int how = (int)epxt_below(&rng, 8);   /* 0 abandon, 1 classic */
        const uint32_t u = use[b];
        int64_t kept[5];
        for (int p = 0; p < P; p++) {
            kept[p] = (int64_t)epxt_below(&rng, cap + 1);
            for (int i = 0; i < kept[p]; i++) {   /* the senders' rows */
                tok[b][p][i] = call;
                w[b][p][i] = (float)call + 0.5f;
            }
        }
        if (how == 1) {   /* classic recv: every row */
            for (int p = 0; p < P; p++)
                for (int i = 0; i < cap; i++) {
                    src[b][p][i] = i < kept[p] ? p : -1;
                    if (i >= kept[p]) {
                        tok[b][p][i] = -1;
                        w[b][p][i] = 0.0f;
                    }
                }
        } else if (how != 0) {
            for (int p = 0; p < P; p++) {
                int64_t lo, hi;
                proto_ll1_span(mark[b][p], u, kept[p], cap, &lo, &hi);
                assert_true(0 <= lo && lo <= hi && hi <= cap);
                for (int64_t i = lo; i < hi; i++) {
                    src[b][p][i] = i < kept[p] ? p : -1;
                    if (i >= kept[p]) {
                        tok[b][p][i] = -1;
                        w[b][p][i] = 0.0f;
                    }
                }
                mark[b][p] = proto_ll1_mark(u, kept[p]);
            }
        }
        if (how != 0)
            for (int p = 0; p < P; p++)
                for (int i = 0; i < cap; i++) {
                    assert_int_equal(src[b][p][i], i < kept[p] ? p : -1);
                    assert_int_equal(tok[b][p][i], i < kept[p] ? call : -1);
                    assert_true(w[b][p][i] ==
                                (i < kept[p] ? (float)call + 0.5f : 0.0f));
                }
        use[b] = u + 1;
    }
    /* combine's send phase: every received entry once, in source order,
     * sources without entries skipped */
    for (int it2 = 0; it2 < 200; it2++) {
        const int R = 1 + (int)epxt_below(&rng, 9);
        int64_t pre[10];
        pre[0] = 0;
        for (int s2 = 0; s2 < R; s2++)
            pre[s2 + 1] = pre[s2] + (int64_t)(epxt_below(&rng, 3) == 0
                                                  ? 0 : epxt_below(&rng, 5));
        int64_t it = 0;
        for (int s2 = 0; s2 < R; s2++)
            for (int64_t i = 0; i < pre[s2 + 1] - pre[s2]; i++, it++) {
                const int got = proto_ll1_entry_source(pre, R, it);
                assert_int_equal(got, s2);
                assert_int_equal(it - pre[got], i);
            }
        assert_int_equal(it, pre[R]);
    }
    /* the first use, and the use number's wrap */
    int64_t lo, hi;
    proto_ll1_span(0, 0, 2, cap, &lo, &hi);
    assert_true(lo == 0 && hi == cap);
    proto_ll1_span(proto_ll1_mark(0xffffffffu, 4), 0, 2, cap, &lo, &hi);
    assert_true(lo == 2 && hi == 4);
    proto_ll1_span(proto_ll1_mark(7, 4), 7, 2, cap, &lo, &hi);
    assert_true(lo == 0 && hi == cap);
}

static void edges(void **state)
{
    (void)state;
    /* every token to expert 0 (all on rank 0); no expert at all; half the
     * ranks with no token; fewer experts than ranks; topk = experts */
    scen_t a = { 8, 19, 4, 16, 12, EPX_DTYPE_BF16, EPX_DTYPE_BF16, 0, 1, 0, 0, 0, 0, 0, 0 };
    run(&a);
    scen_t b = { 3, 9, 2, 8, 10, EPX_DTYPE_FP32, EPX_DTYPE_FP32, 1, 2, 0, 0, 0, 0, 0, 0 };
    run(&b);
    scen_t c = { 8, 19, 4, 16, 12, EPX_DTYPE_BF16, EPX_DTYPE_FP32, 0, 0, 1, 0, 0, 0, 0, 0 };
    run(&c);
    scen_t d = { 8, 3, 3, 8, 12, EPX_DTYPE_BF16, EPX_DTYPE_BF16, 1, 0, 0, 0, 0, 0, 0, 0 };
    run(&d);
    scen_t e = { 1, 1, 1, 8, 0, EPX_DTYPE_BF16, EPX_DTYPE_BF16, 0, 0, 0, 0, 0, 0, 0, 0 };
    run(&e);
}

/* The layout's chunks: at most maxb, >= 1, at least PROTO_LAYOUT_TOKENS
 * tokens each when there are several, contiguous and covering [0, T). */
static void layout_chunks(void **state)
{
    (void)state;
    static const int64_t Ts[] = { 0, 1, 31, 32, 33, 64, 100, 4096, 4097,
                                  100000 };
    static const int maxbs[] = { 1, 2, 7, 16, 132 };
    for (size_t i = 0; i < sizeof(Ts) / sizeof(Ts[0]); i++)
        for (size_t j = 0; j < sizeof(maxbs) / sizeof(maxbs[0]); j++) {
            const int64_t T = Ts[i];
            const int nb = proto_layout_nblocks(T, maxbs[j]);
            assert_true(nb >= 1 && nb <= maxbs[j]);
            /* as many blocks as allowed with PROTO_LAYOUT_TOKENS each */
            assert_true(nb == maxbs[j] ||
                        (nb + 1) * (int64_t)PROTO_LAYOUT_TOKENS > T);
            int64_t next = 0;
            for (int b = 0; b < nb; b++) {
                int64_t t0, t1;
                proto_layout_range(T, nb, b, &t0, &t1);
                assert_int_equal(t0, next);
                assert_true(t1 - t0 == T / nb || t1 - t0 == T / nb + 1);
                assert_true(nb == 1 || t1 - t0 >= PROTO_LAYOUT_TOKENS);
                next = t1;
            }
            assert_int_equal(next, T);
        }
}

/* The fused layout alone, over more tokens than run() takes (tiles
 * split across warps, partial last tiles): 1, 2, 31, 32, 33, 64 and 72
 * ranks (several mask words), random ids with -1, invalid ids and
 * repeats, every expert on one rank, every id -1, 0 and 1 token. */
static void fused_layout(void **state)
{
    (void)state;
    static const int ranks[] = { 1, 2, 31, 32, 33, 64, 72 };
    static const int64_t Ts[] = { 0, 1, 31, 32, 33, 95, 200, 1031 };
    for (size_t ri = 0; ri < sizeof(ranks) / sizeof(ranks[0]); ri++)
        for (size_t ti = 0; ti < sizeof(Ts) / sizeof(Ts[0]); ti++)
            for (int mode = 0; mode < 3; mode++) {
                const int R = ranks[ri], K = 1 + (int)(ti % 8);
                const int E = mode == 1 ? K + 3 : 2 * R + 5;
                const int64_t T = Ts[ti];
                proto_geom_t g = { 0 };
                g.R = R;
                g.E = E;
                g.K = K;
                g.maxdest = K < R ? K : R;
                int32_t *e2r = malloc(sizeof(int32_t) * (size_t)E);
                for (int e = 0; e < E; e++)   /* mode 1: all on rank R-1 */
                    e2r[e] = mode == 1 ? R - 1
                                       : (int)((int64_t)e * R / E);
                int32_t *idx = malloc(sizeof(int32_t) * (size_t)(T * K + 1));
                for (int64_t i = 0; i < T * K; i++) {
                    uint64_t v = epxt_below(&rng, 12);
                    idx[i] = mode == 2 ? -1
                           : v == 0 ? -1
                           : v == 1 ? E + 2                 /* invalid */
                           : v == 2 && i % K ? idx[i - 1]   /* repeat */
                           : (int32_t)epxt_below(&rng, (uint64_t)E);
                }
                const proto_ids_t ids = { idx, 0, K, E, { 0, NULL, NULL,
                                                          NULL } };
                const size_t np = (size_t)(T * g.maxdest + 1);
                int32_t *d1 = malloc(sizeof(int32_t) * np);
                int32_t *p1 = malloc(sizeof(int32_t) * np);
                int32_t *e1 = malloc(sizeof(int32_t) * (size_t)(T * K + 1));
                int32_t *c1 = malloc(sizeof(int32_t) * (size_t)(R + E));
                layout_walk(&g, &ids, e2r, T, 0, NULL, d1, p1, e1, c1);
                fused_matches_walk(&g, &ids, e2r, T, d1, p1, c1, e1);
                free(d1), free(p1), free(e1), free(c1), free(idx), free(e2r);
            }
}

/* Quantize once per token (proto_q_row_fan, the fused dispatch's
 * fan-out) gives every destination the bits of the classic per-
 * destination quantization (quant_row_chunks, the pack warp's arithmetic
 * per row) and of the reference quantizer: every wire, odd and short
 * rows, NaN, infinities and zeros, the NVFP4 row's own scale and a
 * caller's, 1 to 4 destinations. */
static void fused_quant(void **state)
{
    (void)state;
    static const epx_wire_t wires[] = { EPX_WIRE_FP8, EPX_WIRE_FP8_UE8M0,
                                        EPX_WIRE_MXFP8, EPX_WIRE_NVFP4 };
    static const int Hs[] = { 1, 15, 16, 17, 129, 1000, 7168 };
    for (size_t wi = 0; wi < sizeof(wires) / sizeof(wires[0]); wi++)
        for (size_t hi = 0; hi < sizeof(Hs) / sizeof(Hs[0]); hi++)
            for (int round = 0; round < 6; round++) {
                proto_geom_t g = { 0 };
                g.R = 4;
                g.E = 4;
                g.K = 2;
                g.H = Hs[hi];
                g.esize = 2;
                g.maxT = 1;
                g.align = 1;
                g.wire = wires[wi];
                proto_geom_layout(&g);
                ref_wire_t rw;
                assert_int_equal(ref_wire_shape(g.wire, g.H, &rw), 0);
                const int n = 1 + round % 4;
                uint16_t *x = malloc(sizeof(uint16_t) * (size_t)g.H);
                for (int h = 0; h < g.H; h++) {
                    uint64_t v = epxt_below(&rng, 200);
                    x[h] = v == 0 && round == 1 ? 0x7fc1       /* NaN */
                         : v == 1 && round == 2 ? 0xff80       /* -inf */
                         : v < 20 && round == 4 ? 0
                         : (uint16_t)epxt_below(&rng, 0x7f80) |
                               (uint16_t)(epxt_below(&rng, 2) << 15);
                }
                float gv = 0.0f;   /* NVFP4: the row's own scale */
                if (g.wire == EPX_WIRE_NVFP4 && round >= 3)
                    gv = ref_nvfp4_tensor_scale(x, (size_t)g.H) *
                         (round == 5 ? 3.0f : 1.0f);
                char *q[4], *sc[4];
                float gsv[4], *gs[4];
                const size_t qb = (size_t)g.xrow_bytes + 16,
                             sb = (size_t)g.scale_bytes + 16;
                for (int j = 0; j < n; j++) {
                    q[j] = calloc(1, qb);
                    sc[j] = calloc(1, sb);
                    gsv[j] = -1.0f;
                    gs[j] = &gsv[j];
                }
                proto_q_row_fan(&g, x, gv, n, q, sc, gs);
                char *q1 = calloc(1, qb), *s1 = calloc(1, sb);
                float g1 = -1.0f;
                uint8_t *rq = calloc(1, rw.data_bytes + 1);
                unsigned char *rs = calloc(1, rw.scale_bytes + 1);
                float rg = -1.0f;
                ref_quant_row_given(g.wire, x, g.H, rq, rs, &rg, gv);
                if (gv <= 0.0f)   /* the classic pack's own-scale form */
                    quant_row_chunks(&g, x, q1, s1, &g1);
                for (int j = 0; j < n; j++) {
                    assert_memory_equal(q[j], rq, rw.data_bytes);
                    assert_memory_equal(sc[j], rs, rw.scale_bytes);
                    if (gv <= 0.0f) {
                        assert_memory_equal(q[j], q1, (size_t)g.xrow_bytes);
                        assert_memory_equal(sc[j], s1,
                                            (size_t)g.scale_bytes);
                    }
                    if (g.wire == EPX_WIRE_NVFP4) {
                        assert_memory_equal(&gsv[j], &rg, sizeof(float));
                        if (gv <= 0.0f)
                            assert_memory_equal(&gsv[j], &g1, sizeof(float));
                    } else {
                        assert_true(gsv[j] == -1.0f);   /* left alone */
                    }
                    free(q[j]), free(sc[j]);
                }
                free(q1), free(s1), free(rq), free(rs), free(x);
            }
}

static void invalid_ids(void **state)
{
    (void)state;
    /* Ids outside [-1, E) read as -1 and are flagged, never index e2r;
     * an expert a token names twice is flagged (the host executor refuses
     * it), -1 twice is not. */
    const int32_t idx[10] = { 0, -1, 5, -2, 4, 7, 3, 3, -1, -1 };
    const proto_ids_t ids = { idx, 0, 2, 5, { 0, NULL, NULL, NULL } };
    int bad = 0;
    for (int t = 0; t < 5; t++)
        for (int k = 0; k < 2; k++) {
            bad += proto_expert_bad(&ids, t, k);
            int64_t e = proto_expert_id(&ids, t, k);
            assert_true(e >= -1 && e < 5);
        }
    assert_int_equal(bad, 4);
    /* What a layout keeps for a cached dispatch: the id, -1 for an
     * invalid one; int64 ids are not truncated into range. */
    const int32_t want[10] = { 0, -1, -1, -1, 4, -1, 3, 3, -1, -1 };
    for (int i = 0; i < 10; i++)
        assert_int_equal(proto_cache_id(&ids, i / 2, i % 2), want[i]);
    const int64_t idx64[4] = { 4, (1ll << 32) + 1, -1, -(1ll << 32) - 1 };
    const proto_ids_t ids64 = { idx64, 1, 2, 5, { 0, NULL, NULL, NULL } };
    const int32_t want64[4] = { 4, -1, -1, -1 };
    for (int i = 0; i < 4; i++)
        assert_int_equal(proto_cache_id(&ids64, i / 2, i % 2), want64[i]);
    /* With replicas the logical id is kept (not the slot it routes to). */
    const int32_t pick[3] = { 4, 1, 2 }, off[4] = { 0, 2, 3, 5 },
                  rep[5] = { 0, 4, 1, 2, 3 };
    const int32_t lidx[4] = { 2, 0, 3, -1 };
    const proto_ids_t lids = { lidx, 0, 2, 5, { 3, pick, off, rep } };
    const int32_t lwant[4] = { 2, 0, -1, -1 };
    for (int i = 0; i < 4; i++)
        assert_int_equal(proto_cache_id(&lids, i / 2, i % 2), lwant[i]);
}

/* A device call's count block header (cached dispatch): agreement of one
 * source's header with this rank's call. */
static void cached_headers(void **state)
{
    (void)state;
    int32_t h[PROTO_CNT_HDR] = { 0 };
    const int32_t seq = 9, lay = 5;
    /* never written (uncached peer): agrees with an uncached call only */
    assert_int_equal(proto_cached_agree(h, seq, 0, 0), EPX_OK);
    assert_int_equal(proto_cached_agree(h, seq, 1, lay), EPX_ERR_MISMATCH);
    /* a cached call two calls ago left its words: still uncached now */
    h[PROTO_CNT_CACHED] = seq - 2;
    h[PROTO_CNT_HANDLE] = lay;
    assert_int_equal(proto_cached_agree(h, seq, 0, 0), EPX_OK);
    assert_int_equal(proto_cached_agree(h, seq, 1, lay), EPX_ERR_MISMATCH);
    /* cached in this call, the same layout */
    h[PROTO_CNT_CACHED] = seq;
    assert_int_equal(proto_cached_agree(h, seq, 1, lay), EPX_OK);
    assert_int_equal(proto_cached_agree(h, seq, 0, 0), EPX_ERR_MISMATCH);
    /* another call's layout */
    assert_int_equal(proto_cached_agree(h, seq, 1, lay + 2), EPX_ERR_MISMATCH);
    /* the source's ids differed from its layout's */
    h[PROTO_CNT_STATUS] = EPX_ERR_INVALID;
    assert_int_equal(proto_cached_agree(h, seq, 1, lay), EPX_ERR_PEER);
    assert_int_equal(proto_cached_agree(h, seq, 1, lay + 1), EPX_ERR_MISMATCH);
    /* the source refused its arguments in this call: every rank fails it,
     * whether its own call is cached (any layout) or not */
    h[PROTO_CNT_HANDLE] = PROTO_CNT_REFUSED;
    assert_int_equal(proto_cached_agree(h, seq, 0, 0), EPX_ERR_PEER);
    assert_int_equal(proto_cached_agree(h, seq, 1, lay), EPX_ERR_PEER);
    assert_int_equal(proto_cached_agree(h, seq, 1, lay + 3), EPX_ERR_PEER);
    /* a refusal of an earlier call is stale */
    h[PROTO_CNT_CACHED] = seq - 2;
    assert_int_equal(proto_cached_agree(h, seq, 0, 0), EPX_OK);
    assert_int_equal(proto_cached_agree(h, seq, 1, lay), EPX_ERR_MISMATCH);
}

/* Every rank's verdict on a call from the headers every rank sent
 * (proto_cnt_header, then proto_cached_agree_all over them), for random
 * mixes of uncached, cached (two layouts; ids differing on some ranks)
 * and refused calls on 1 to 9 ranks, against the host executor's rules
 * stated independently: the call goes through only where no rank refused,
 * every rank's call is alike (all uncached, or all cached on one layout)
 * and no rank's ids differ; a refusal, or a differing rank on one's own
 * layout, is EPX_ERR_PEER, any other difference EPX_ERR_MISMATCH.  The
 * NCCL backend's headers (every call sends one) and the windows
 * backend's (an uncached call leaves stale words) give the same verdicts,
 * and all ranks fail together, so none waits for rows not sent. */
static void cached_verdicts(void **state)
{
    (void)state;
    enum { FRESH, CACHED_A, CACHED_B, ROUTE_A, REFUSED };
    for (int iter = 0; iter < 4000; iter++) {
        const int R = 1 + (int)epxt_below(&rng, 9);
        proto_geom_t g;
        memset(&g, 0, sizeof(g));
        g.R = R;
        g.E = 1 + (int)epxt_below(&rng, 6);
        g.cnt_ints = PROTO_CNT_HDR + g.R + g.E + 1;
        /* calls go on past the int32 wrap (never 0: calls count from 1) */
        const uint32_t useq = 1u + (uint32_t)epxt_below(&rng, 1u << 31) +
                              (iter % 7 == 0 ? 0x7ffffffcu : 0u);
        const int32_t seq = (int32_t)useq;
        const int32_t lay[2] = {
            (int32_t)(useq - 1u - (uint32_t)epxt_below(&rng, 5)),
            (int32_t)(useq - 7u) };
        int kind[9];
        /* mostly alike (the calls that go through), sometimes one odd */
        const int common = (int)epxt_below(&rng, 3);
        for (int r = 0; r < R; r++)
            kind[r] = epxt_below(&rng, 4) ? common
                                           : (int)epxt_below(&rng, 5);
        int32_t *nccl = calloc((size_t)R * (size_t)g.cnt_ints, 4);
        int32_t *win = calloc((size_t)R * (size_t)g.cnt_ints, 4);
        for (int s = 0; s < R; s++) {
            const int k = kind[s], cached = k == CACHED_A || k == CACHED_B ||
                                            k == ROUTE_A;
            const int32_t l = k == CACHED_B ? lay[1] : lay[0];
            proto_cnt_header(nccl + (size_t)s * g.cnt_ints, seq, cached,
                             k == REFUSED, l, k == ROUTE_A);
            int32_t *w = win + (size_t)s * g.cnt_ints;
            if (k == FRESH) {   /* stale words of some earlier call */
                w[PROTO_CNT_CACHED] = (int32_t)(useq - 2u *
                                          (1u + (uint32_t)epxt_below(&rng, 3)));
                w[PROTO_CNT_HANDLE] = epxt_below(&rng, 2) ? PROTO_CNT_REFUSED
                                                           : lay[0];
                w[PROTO_CNT_STATUS] = epxt_below(&rng, 2) ? EPX_ERR_INVALID
                                                           : 0;
            } else {
                proto_cnt_header(w, seq, cached, k == REFUSED, l,
                                 k == ROUTE_A);
            }
        }
        int refused = 0, route = 0, alike = 1;
        for (int s = 0; s < R; s++) {
            refused |= kind[s] == REFUSED;
            route |= kind[s] == ROUTE_A;
            const int a = kind[s] == ROUTE_A ? CACHED_A : kind[s],
                      b = kind[0] == ROUTE_A ? CACHED_A : kind[0];
            alike &= a == b;
        }
        int fails = 0, voters = 0;
        for (int r = 0; r < R; r++) {
            if (kind[r] == REFUSED)   /* over at once on its own rank */
                continue;
            const int cached = kind[r] != FRESH;
            const int32_t l = kind[r] == CACHED_B ? lay[1] : lay[0];
            int want = EPX_OK;
            if (refused)
                want = EPX_ERR_PEER;
            else if (cached && kind[r] != CACHED_B && route)
                want = EPX_ERR_PEER;   /* a rank on its layout differs */
            else if (!alike)
                want = EPX_ERR_MISMATCH;
            const int got = proto_cached_agree_all(&g, nccl, seq, cached, l);
            if (got != want)
                fail_msg("R %d rank %d: verdict %d, %d expected (iter %d)",
                         R, r, got, want, iter);
            assert_int_equal(proto_cached_agree_all(&g, win, seq, cached, l),
                             want);
            fails += got != EPX_OK;
            voters++;
        }
        /* all or none: one rank's failure is every rank's */
        assert_true(fails == 0 || fails == voters);
        free(nccl);
        free(win);
    }
    /* an uncached header never reads as this call's, across the wrap */
    int32_t h[PROTO_CNT_HDR];
    const int32_t seqs[] = { 0, 1, INT32_MAX, INT32_MIN };
    for (int i = 0; i < 4; i++) {
        proto_cnt_header(h, seqs[i], 0, 0, 3, 0);
        assert_int_not_equal(h[PROTO_CNT_CACHED], seqs[i]);
        assert_int_equal(proto_cached_agree(h, seqs[i], 0, 0), EPX_OK);
    }
}

static void bf16_matches_host(void **state)
{
    (void)state;
    for (int i = 0; i < 200000; i++) {
        uint32_t u = (uint32_t)epxt_next(&rng);
        float f;
        memcpy(&f, &u, 4);
        if ((u & 0x7f800000u) == 0x7f800000u)
            continue;   /* ref: finite values only */
        assert_int_equal(proto_f32_to_bf16(f), ref_bf16(f));
    }
}

/* The 16-byte form of the expert-major partial (proto_partial_acc16 over
 * a row's pieces, then proto_pack16), as the combine-put kernels run it
 * where rows are aligned, against the element form (proto_partial_elem,
 * proto_store) bit for bit: bf16 and fp32, weighted and not, 1 to 8 rows
 * with -1 ends, random bits (NaN, Inf, subnormals, -0 included).  A NaN
 * matches any NaN: which payload a sum of two NaNs keeps depends on the
 * operand order the compiler picks (a vectorised gcc -O3 build under
 * UBSan swaps them), and GPUs return the canonical NaN anyway. */
static int same_or_both_nan(const unsigned char *got,
                            const unsigned char *want, int esize, int64_t H)
{
    for (int64_t h = 0; h < H; h++) {
        float a = proto_load((const char *)got, esize, h),
              b = proto_load((const char *)want, esize, h);
        if (isnan(a) && isnan(b))
            continue;
        if (memcmp(got + h * esize, want + h * esize, (size_t)esize) != 0) {
            print_error("element %lld: got %a, want %a\n", (long long)h,
                        (double)a, (double)b);
            return 0;
        }
    }
    return 1;
}

/* nrows rows of g's dtype: random bits, or (round % 3 == 0) plain
 * numbers, or random bits with -0 in every third element (a sum of -0
 * terms starts at +0); w[nrows] weights. */
static unsigned char *rand_rows(const proto_geom_t *g, int nrows, int round,
                                float *w)
{
    unsigned char *y = malloc((size_t)(nrows * g->row_bytes));
    assert_non_null(y);
    for (int64_t i = 0; i < nrows * g->row_bytes; i++)
        y[i] = (unsigned char)epxt_next(&rng);
    for (int64_t i = 0; round % 3 == 0 && i < nrows * (int64_t)g->H; i++)
        proto_store(y, g->esize, i,
                   (float)((int)epxt_below(&rng, 2001) - 1000) / 64.0f);
    for (int64_t i = 0; round % 3 == 1 && i < nrows * (int64_t)g->H; i += 3)
        proto_store(y, g->esize, i, -0.0f);
    for (int r = 0; r < nrows; r++)
        w[r] = (float)epxt_below(&rng, 1000) / 997.0f;
    return y;
}

static void partial_vec16(void **state)
{
    (void)state;
    for (int round = 0; round < 400; round++) {
        proto_geom_t g;
        memset(&g, 0, sizeof(g));
        g.esize = round % 2 ? 4 : 2;
        g.K = 1 + (int)epxt_below(&rng, 8);
        g.H = (16 / g.esize) * (1 + (int)epxt_below(&rng, 40));
        g.row_bytes = (int64_t)g.H * g.esize;
        const int nrows = 12;
        float w[12];
        unsigned char *y = rand_rows(&g, nrows, round, w);
        int32_t rows[8];
        int n = (int)epxt_below(&rng, (uint64_t)g.K + 1);
        for (int k = 0; k < g.K; k++)
            rows[k] = k < n ? (int32_t)epxt_below(&rng, nrows) : -1;
        const float *wt = round % 4 < 2 ? w : NULL;
        unsigned char *want = malloc((size_t)g.row_bytes);
        unsigned char *got = malloc((size_t)g.row_bytes);
        for (int64_t h = 0; h < g.H; h++)
            proto_store(want, g.esize, h,
                       proto_partial_elem(&g, (const char *)y, rows, wt, h));
        for (int64_t v = 0; v < g.row_bytes / 16; v++) {
            float acc[8] = { 0 };
            for (int k = 0; k < g.K && rows[k] >= 0; k++) {
                proto_v16_t p;
                memcpy(&p, y + rows[k] * g.row_bytes + v * 16, 16);
                proto_partial_acc16(g.esize, &p, wt != NULL,
                                   wt ? wt[rows[k]] : 0.0f, acc);
            }
            proto_v16_t o;
            proto_pack16(g.esize, acc, &o);
            memcpy(got + v * 16, &o, 16);
        }
        assert_true(same_or_both_nan(got, want, g.esize, g.H));
        free(y), free(want), free(got);
    }
}

/* Chunk lengths of a row of H elements cut at random, as the host
 * executor's passes cut it (of any length). */
static int rand_chunk(int64_t H, int64_t c0)
{
    return (int)(1 + epxt_below(&rng, (uint64_t)(H - c0)));
}

/* The host executor's row forms of the reduction (proto_partial_row,
 * proto_sum_row, proto_sum_wire_row, proto_store_row) give the element
 * forms' bits (proto_partial_elem, proto_combine_elem, proto_store),
 * whatever the chunks. */
static void reduce_rows(void **state)
{
    (void)state;
    for (int round = 0; round < 600; round++) {
        proto_geom_t g;
        memset(&g, 0, sizeof(g));
        g.esize = round % 2 ? 4 : 2;
        g.K = 1 + (int)epxt_below(&rng, 8);
        g.R = 1 + (int)epxt_below(&rng, 8);
        g.maxdest = g.K < g.R ? g.K : g.R;
        g.H = 1 + (int)epxt_below(&rng, 300);
        g.row_bytes = (int64_t)g.H * g.esize;
        const int oes = round % 4 < 2 ? 2 : 4, nrows = 2 * 8;
        float w[2 * 8];
        unsigned char *y = rand_rows(&g, nrows, round, w);
        const float *wt = round % 5 < 3 ? w : NULL;
        unsigned char *want = malloc((size_t)g.H * 4);
        unsigned char *got = malloc((size_t)g.H * 4);
        float *acc = malloc(sizeof(float) * (size_t)g.H);
        float *part = malloc(sizeof(float) * (size_t)g.H);

        /* An entry's partial (rows in top-k order), rounded for the wire. */
        int32_t rows[8];
        int n = (int)epxt_below(&rng, (uint64_t)g.K + 1);
        for (int k = 0; k < g.K; k++)
            rows[k] = k < n ? (int32_t)epxt_below(&rng, nrows) : -1;
        for (int64_t h = 0; h < g.H; h++)
            proto_store(want, g.esize, h,
                       proto_partial_elem(&g, (const char *)y, rows, wt, h));
        for (int64_t c0 = 0, c; c0 < g.H; c0 += c) {
            c = rand_chunk(g.H, c0);
            proto_partial_row(&g, (const char *)y, rows, n, wt, c0, (int)c,
                              part + c0);
        }
        proto_store_row(got, part, g.esize, g.H);
        assert_true(same_or_both_nan(got, want, g.esize, g.H));
        /* ... and as the first term of a sum, taken in unrounded (a
         * pulled entry): the wire's rounding, then 0 + the value (a -0
         * partial starts the sum at +0, as the element forms' acc = 0,
         * acc = acc + term). */
        for (int64_t h = 0; h < g.H; h++)
            ((float *)want)[h] = 0.0f + proto_load(got, g.esize, h);
        proto_sum_wire_row(acc, part, g.esize, 1, g.H);
        assert_true(same_or_both_nan((const unsigned char *)acc, want, 4, g.H));

        /* A token's sum over its destinations in ascending rank order,
         * from the partials at its return slots (two per rank). */
        int32_t dest[8], pos[8];
        int64_t sendoff[8];
        int nd = 0;
        for (int d = 0; d < g.R; d++) {
            sendoff[d] = 2 * d;
            if (nd < g.maxdest && epxt_below(&rng, 2)) {
                dest[nd] = d;
                pos[nd++] = (int32_t)epxt_below(&rng, 2);
            }
        }
        for (int j = nd; j < g.maxdest; j++)
            dest[j] = pos[j] = -1;
        for (int64_t h = 0; h < g.H; h++)
            proto_store(want, oes, h,
                       proto_combine_elem(&g, (const char *)y, sendoff, dest,
                                          pos, 0, h));
        for (int64_t c0 = 0, c; c0 < g.H; c0 += c) {
            c = rand_chunk(g.H, c0);
            if (nd == 0)
                memset(acc + c0, 0, sizeof(float) * (size_t)c);
            for (int j = 0; j < nd; j++)
                proto_sum_row(acc + c0, (const char *)y +
                              proto_ret_slot(&g, sendoff, dest, pos, 0, j) *
                              g.row_bytes + c0 * g.esize, g.esize, NULL,
                              j == 0, (int)c);
        }
        proto_store_row(got, acc, oes, g.H);
        assert_true(same_or_both_nan(got, want, oes, g.H));
        free(y), free(want), free(got), free(acc), free(part);
    }
}

/* FP64 engines on device ranks: the whole protocol over simulated ranks
 * (run, run_ll: rows, metadata, the put kernel's partials and the
 * reduce, element and 16-byte forms) against tests/ref's FP64 contract
 * (ref_combine_f64): both layouts, 1 to 72 ranks, odd rows (13 doubles:
 * not 16-byte rows) and even ones, weighted and unweighted, 0 tokens,
 * every token to one expert, no expert at all, replicas, low latency with
 * and without drops, classic and fused layouts. */
static void fp64(void **state)
{
    (void)state;
    static const int ranks[] = { 1, 2, 3, 8, 72 };
    for (size_t i = 0; i < sizeof(ranks) / sizeof(ranks[0]); i++) {
        const int R = ranks[i], maxT = R >= 72 ? 6 : 20;
        for (int c = 0; c < 5; c++) {
            scen_t sc = {
                .R = R, .E = c == 4 ? R + 1 : 2 * R + 3, .K = c == 4 ? 2 : 4,
                .H = c % 2 ? 24 : 13, .maxT = maxT,
                .dtype = EPX_DTYPE_FP64, .out = EPX_DTYPE_FP64,
                .idx64 = c & 1, .zero_tokens = c == 1 || c == 4,
                .em = c >= 2, .align = c == 2 ? 1 : c == 3 ? 4 : 7,
                .unweighted = c == 3,
            };
            run(&sc);
        }
        for (int mode = 0; mode < 3; mode++) {
            run_ll(R, 2 * R + 3, 4, 24, maxT, maxT, EPX_DTYPE_FP64, 0, 0,
                   EPX_WIRE_NATIVE, mode == 1, mode == 2);
            run_ll(R, 2 * R + 3, 4, 13, maxT, 3, EPX_DTYPE_FP64, 1, 1,
                   EPX_WIRE_NATIVE, mode == 1, mode == 2);
        }
    }
    for (int em = 0; em < 2; em++) {
        /* every token to expert 0; no expert at all; one rank, one expert;
         * replicas */
        scen_t a = { .R = 8, .E = 19, .K = 4, .H = 16, .maxT = 12,
                     .dtype = EPX_DTYPE_FP64, .out = EPX_DTYPE_FP64,
                     .route = 1, .em = em, .align = 8 };
        run(&a);
        scen_t b = { .R = 3, .E = 9, .K = 2, .H = 8, .maxT = 10,
                     .dtype = EPX_DTYPE_FP64, .out = EPX_DTYPE_FP64,
                     .idx64 = 1, .route = 2, .em = em, .align = 3 };
        run(&b);
        scen_t d = { .R = 1, .E = 1, .K = 1, .H = 8, .maxT = 5,
                     .dtype = EPX_DTYPE_FP64, .out = EPX_DTYPE_FP64,
                     .em = em, .align = 4 };
        run(&d);
        scen_t e = { .R = 4, .E = 10, .K = 3, .H = 10, .maxT = 15,
                     .dtype = EPX_DTYPE_FP64, .out = EPX_DTYPE_FP64,
                     .em = em, .align = em ? 2 : 1, .Elog = 6, .rr = em };
        run(&e);
    }
    run_ll(8, 19, 3, 16, 12, 1, EPX_DTYPE_FP64, 0, 1, EPX_WIRE_NATIVE, 0, 0);
    run_ll(8, 19, 3, 16, 12, 1, EPX_DTYPE_FP64, 0, 1, EPX_WIRE_NATIVE, 0, 1);
    run_ll(1, 1, 1, 1, 5, 2, EPX_DTYPE_FP64, 0, 0, EPX_WIRE_NATIVE, 1, 0);
}

/* Element e of a double row, NaN matching any NaN (as same_or_both_nan). */
static int same_or_both_nan64(const double *got, const double *want,
                              int64_t H)
{
    for (int64_t h = 0; h < H; h++) {
        if (isnan(got[h]) && isnan(want[h]))
            continue;
        if (memcmp(&got[h], &want[h], 8) != 0) {
            print_error("element %lld: got %a, want %a\n", (long long)h,
                        got[h], want[h]);
            return 0;
        }
    }
    return 1;
}

/* The FP64 forms the kernels run (proto.h, "FP64 on device": element and
 * 16-byte forms of the partial and the combine sum) against the host
 * executor's row forms (proto_partial_row_f64, proto_sum_row_f64 in
 * chunks, as src/moe/reduce.c walks them), on random bits (NaN, Inf,
 * subnormals), plain numbers with every mantissa bit in use, and -0
 * terms; 1 to 8 rows with -1 ends, weighted or not; a token with 0 to 8
 * destinations. */
static void fp64_forms(void **state)
{
    (void)state;
    for (int round = 0; round < 600; round++) {
        proto_geom_t g;
        memset(&g, 0, sizeof(g));
        g.esize = 8;
        g.K = 1 + (int)epxt_below(&rng, 8);
        g.R = 1 + (int)epxt_below(&rng, 8);
        g.maxdest = g.K < g.R ? g.K : g.R;
        g.H = round % 2 ? 2 * (1 + (int)epxt_below(&rng, 150))
                        : 1 + (int)epxt_below(&rng, 300);
        g.row_bytes = (int64_t)g.H * 8;
        const int nrows = 16;
        unsigned char *y = malloc((size_t)(nrows * g.row_bytes));
        double *yd = (double *)y;
        float w[16];
        for (int64_t i = 0; i < nrows * g.row_bytes; i++)
            y[i] = (unsigned char)epxt_next(&rng);
        for (int64_t i = 0; round % 3 == 0 && i < nrows * (int64_t)g.H; i++)
            yd[i] = (double)(epxt_next(&rng) >> 11) * 0x1p-50 - 4.0;
        for (int64_t i = 0; round % 3 == 1 && i < nrows * (int64_t)g.H; i += 3)
            yd[i] = -0.0;
        for (int r = 0; r < nrows; r++)
            w[r] = (float)epxt_below(&rng, 1000) / 997.0f;
        const float *wt = round % 5 < 3 ? w : NULL;
        double *want = malloc(sizeof(double) * (size_t)g.H);
        double *got = malloc(sizeof(double) * (size_t)g.H);

        /* An entry's partial: rows in top-k order, not rounded. */
        int32_t rows[8];
        int n = (int)epxt_below(&rng, (uint64_t)g.K + 1);
        for (int k = 0; k < g.K; k++)
            rows[k] = k < n ? (int32_t)epxt_below(&rng, nrows) : -1;
        for (int64_t c0 = 0, c; c0 < g.H; c0 += c) {
            c = rand_chunk(g.H, c0);
            proto_partial_row_f64(&g, (const char *)y, rows, n, wt, c0,
                                  (int)c, want + c0);
        }
        for (int64_t h = 0; h < g.H; h++)
            got[h] = proto_partial_elem_f64(&g, (const char *)y, rows, wt, h);
        assert_true(same_or_both_nan64(got, want, g.H));
        if (g.H % 2 == 0) {
            memset(got, 0xff, sizeof(double) * (size_t)g.H);
            put_partial(&g, (const char *)y, rows, wt, (char *)got, 1);
            assert_true(same_or_both_nan64(got, want, g.H));
        }

        /* A token's sum over its destinations in ascending rank order,
         * from the partials at its return slots (two per rank). */
        int32_t dest[8], pos[8];
        int64_t sendoff[8];
        int nd = 0;
        for (int d = 0; d < g.R; d++) {
            sendoff[d] = 2 * d;
            if (nd < g.maxdest && epxt_below(&rng, 2)) {
                dest[nd] = d;
                pos[nd++] = (int32_t)epxt_below(&rng, 2);
            }
        }
        for (int j = nd; j < g.maxdest; j++)
            dest[j] = pos[j] = -1;
        /* the host: moe_reduce_token's FP64 path, chunk by chunk */
        for (int64_t c0 = 0, c; c0 < g.H; c0 += c) {
            c = rand_chunk(g.H, c0);
            if (nd == 0)
                memset(want + c0, 0, sizeof(double) * (size_t)c);
            for (int j = 0; j < nd; j++)
                proto_sum_row_f64(want + c0, (const double *)(y +
                                  proto_ret_slot(&g, sendoff, dest, pos, 0,
                                                 j) * g.row_bytes) + c0,
                                  NULL, j == 0, (int)c);
        }
        for (int vec = 0; vec < 2; vec++) {
            char *o = reduce_out(&g, (const char *)y, sendoff, dest, pos, 1,
                                 8, vec);
            assert_true(same_or_both_nan64((const double *)o, want, g.H));
            free(o);
        }
        free(y), free(want), free(got);
    }
}

/* The pull combine's arithmetic (proto_pull_elem, proto_pull_acc16) on
 * random bits (NaN, Inf, subnormals, -0) against the classic put and
 * reduce (an expert-major partial by proto_partial_elem rounded by
 * proto_store into its slot, or the token-major row copied there; then
 * proto_combine_elem over the slots): a token with up to 8 destinations,
 * each pushed or in place, 1 to K rows each (expert-major), weighted or
 * not, bf16 or fp32, any out dtype. */
static void pull_bits(void **state)
{
    (void)state;
    for (int round = 0; round < 600; round++) {
        proto_geom_t g;
        memset(&g, 0, sizeof(g));
        g.esize = round % 2 ? 4 : 2;
        g.em = round % 3 != 0;
        g.K = 1 + (int)epxt_below(&rng, 8);
        g.R = 1 + (int)epxt_below(&rng, 8);
        g.maxdest = g.K < g.R ? g.K : g.R;
        g.H = (16 / g.esize) * (1 + (int)epxt_below(&rng, 20));
        g.row_bytes = (int64_t)g.H * g.esize;
        const int oes = round % 4 < 2 ? 2 : 4, nrows = 2 * 8;
        const int unweighted = round % 5 < 2;
        float w[2 * 8];
        unsigned char *y = rand_rows(&g, nrows, round, w);
        /* the classic comb slots: one per destination */
        unsigned char *comb = calloc((size_t)g.maxdest + 1,
                                     (size_t)g.row_bytes);
        int32_t dest[8], pos[8];
        int64_t sendoff[8];
        proto_pull_term_t terms[8];
        int nd = 0, nt = 0, left = g.K;
        for (int d = 0; d < g.R; d++) {
            sendoff[d] = nd;
            if (nd < g.maxdest && epxt_below(&rng, 2)) {
                dest[nd] = d;
                pos[nd++] = 0;
            }
        }
        for (int j = nd; j < g.maxdest; j++)
            dest[j] = pos[j] = -1;
        for (int j = 0; j < nd; j++) {
            char *slot = (char *)comb + proto_ret_slot(&g, sendoff, dest, pos,
                                                      0, j) * g.row_bytes;
            const int pushed = epxt_below(&rng, 3) == 0;
            int32_t rows[8];
            int n = 1;
            if (g.em) {   /* leave a row for each later destination */
                n = 1 + (int)epxt_below(&rng, (uint64_t)(left - (nd - 1 - j)));
                left -= n;
            }
            for (int k = 0; k < g.K; k++)
                rows[k] = k < n ? (int32_t)epxt_below(&rng, nrows) : -1;
            const float *wt = unweighted ? NULL : w;
            if (g.em)
                for (int64_t h = 0; h < g.H; h++)
                    proto_store(slot, g.esize, h,
                                proto_partial_elem(&g, (const char *)y, rows,
                                                   wt, h));
            else
                memcpy(slot, y + rows[0] * g.row_bytes, (size_t)g.row_bytes);
            if (pushed || !g.em) {
                terms[nt++] = (proto_pull_term_t){
                    pushed ? slot : (const char *)y + rows[0] * g.row_bytes,
                    0.0f, 0 };
                continue;
            }
            for (int k = 0; k < n; k++)
                terms[nt++] = (proto_pull_term_t){
                    (const char *)y + rows[k] * g.row_bytes,
                    wt ? wt[rows[k]] : 0.0f,
                    PROTO_TERM_PART | (wt ? PROTO_TERM_W : 0) |
                    (k == 0 ? PROTO_TERM_FIRST : 0) |
                    (k == n - 1 ? PROTO_TERM_LAST : 0) };
        }
        assert_true(nt <= g.K);
        unsigned char *want = malloc((size_t)g.H * 4);
        unsigned char *got = malloc((size_t)g.H * 4);
        unsigned char *got16 = malloc((size_t)g.H * 4);
        for (int64_t h = 0; h < g.H; h++) {
            proto_store(want, oes, h,
                        proto_combine_elem(&g, (const char *)comb, sendoff,
                                           dest, pos, 0, h));
            proto_store(got, oes, h, proto_pull_elem(g.esize, terms, nt, h));
        }
        const int V = 16 / g.esize;
        for (int64_t v = 0; v < g.row_bytes / 16; v++) {
            float acc[8] = { 0 }, part[8] = { 0 };
            for (int k = 0; k < nt; k++) {
                proto_v16_t p;
                memcpy(&p, terms[k].row + v * 16, 16);
                proto_pull_acc16(g.esize, terms[k].f, terms[k].w, &p, part,
                                 acc);
            }
            for (int e = 0; e < V; e++)
                proto_store(got16, oes, v * V + e, acc[e]);
        }
        assert_true(same_or_both_nan(got, want, oes, g.H));
        assert_true(same_or_both_nan(got16, want, oes, g.H));
        free(y), free(comb), free(want), free(got), free(got16);
    }
}

/* The pull fence's 32-bit sequence words: reached at and after the call,
 * not before, across the int32 wrap (calls go on past 2^31). */
static void seq_words(void **state)
{
    (void)state;
    static const uint32_t at[] = { 1, 2, 1000, 0x7ffffffe, 0x7fffffff,
                                   0x80000000u, 0xfffffffe, 0xffffffff, 0 };
    for (size_t i = 0; i < sizeof(at) / sizeof(at[0]); i++) {
        const int32_t want = (int32_t)at[i];
        for (uint32_t d = 0; d < 5; d++) {
            assert_true(proto_seq_reached((int32_t)(at[i] + d), want));
            if (d > 0)
                assert_false(proto_seq_reached((int32_t)(at[i] - d), want));
        }
    }
    assert_false(proto_seq_reached(0, 1));   /* a zeroed window */
}

int main(void)
{
    epxt_init("test_kern_host");
    rng.state = epxt_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(matrix),
        cmocka_unit_test(replicas),
        cmocka_unit_test(elastic),
        cmocka_unit_test(edges),
        cmocka_unit_test(expert_major),
        cmocka_unit_test(low_latency),
        cmocka_unit_test(ll_fail_status),
        cmocka_unit_test(ll_one_kernel_layout),
        cmocka_unit_test(ll_one_kernel_marks),
        cmocka_unit_test(layout_chunks),
        cmocka_unit_test(fused_layout),
        cmocka_unit_test(fused_quant),
        cmocka_unit_test(invalid_ids),
        cmocka_unit_test(cached_headers),
        cmocka_unit_test(cached_verdicts),
        cmocka_unit_test(bf16_matches_host),
        cmocka_unit_test(partial_vec16),
        cmocka_unit_test(reduce_rows),
        cmocka_unit_test(fp64),
        cmocka_unit_test(fp64_forms),
        cmocka_unit_test(pull_bits),
        cmocka_unit_test(seq_words),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
