/* Dispatch/combine scenarios checked against the reference. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/epx_test.h"
#include "ref/ref_quant.h"
#include "moe_case.h"

/* Streams of the counter-based generator. */
enum { TAG_T = 1, TAG_ROW, TAG_HOT, TAG_X, TAG_Y, TAG_JITTER };

static size_t esize(epx_dtype_t dt)
{
    return dt == EPX_DTYPE_BF16 ? 2 : dt == EPX_DTYPE_FP64 ? 8 : 4;
}

/* A float in [-4, 4) scaled by a power of two in [2^-3, 2^4]: values of
 * several magnitudes make the rounding steps of combine matter. */
static float gen_value(uint64_t h)
{
    static const float scale[8] = { 0.125f, 0.25f, 0.5f, 1.f, 2.f, 4.f, 8.f,
                                     16.f };
    double u = (double)(h >> 11) * (1.0 / 9007199254740992.0); /* [0,1) */
    return (float)(u * 8.0 - 4.0) * scale[h & 7];
}

/* The same for FP64 engines with every bit of the double's mantissa in
 * use, so that a sum taken in fp32 (or rounded to it anywhere) differs. */
static double gen_value64(uint64_t h)
{
    double u = (double)(h >> 11) * (1.0 / 9007199254740992.0); /* [0,1) */
    return (u * 8.0 - 4.0) * (double)(1 << (h & 7)) * 0.125;
}

/* EPX_TEST_DIGEST: what each rank received and its combine output
 * (tests/moe/test-transports.sh compares runs over different transports). */
static void digest(const moe_run_t *m, const char *what, int data,
                   const void *p, size_t bytes)
{
    epxt_digest(m->c->name, data, m->rank, what, p, bytes);
}

static int max_tokens_of(const moe_case_t *c, int rank)
{
    return c->max_tokens + rank * c->max_tokens_step;
}

static int64_t gen_T(const moe_run_t *m, int s, int route)
{
    int64_t max = max_tokens_of(m->c, s);
    uint64_t h = epxt_hash(m->seed, TAG_T, (uint64_t)s, (uint64_t)route, 0);
    switch (m->c->tokens) {
    case TOK_ZERO_ODD:
        return (s & 1) || max == 0 ? 0 : 1 + (int64_t)(h % (uint64_t)max);
    case TOK_ZERO_ALL:
        return 0;
    case TOK_FULL:
        return max;
    default:
        return (int64_t)(h % (uint64_t)(max + 1));
    }
}

static void gen_row(const moe_run_t *m, int s, int route, int64_t t,
                    int *perm, int64_t *idx, float *w)
{
    const int K = m->c->topk, E = m->c->experts;
    epxt_rng_t rng = { epxt_hash(m->seed, TAG_ROW, (uint64_t)s,
                                 (uint64_t)route, (uint64_t)t) };
    for (int k = 0; k < K; k++)
        idx[k] = -1;
    if (m->c->route == ROUTE_ZIPF) {
        /* min(K, E) distinct experts by inverse CDF of the Zipf weights,
         * redrawn on a repeat, in top-k slot order. */
        double tot = 0;
        for (int e = 0; e < E; e++)
            tot += pow(e + 1, -1.1);
        int n = K < E ? K : E;
        for (int i = 0; i < n; i++) {
            for (;;) {
                double u = (double)(epxt_next(&rng) >> 11) *
                           (1.0 / 9007199254740992.0) * tot;
                int e = 0;
                for (; e < E - 1 && (u -= pow(e + 1, -1.1)) > 0; e++)
                    ;
                int dup = 0;
                for (int j = 0; j < i; j++)
                    dup |= idx[j] == e;
                if (!dup) {
                    idx[i] = e;
                    break;
                }
            }
        }
    } else if (m->c->route == ROUTE_HOT) {
        int hot = (int)(epxt_hash(m->seed, TAG_HOT, (uint64_t)route, 0, 0) %
                        (uint64_t)E);
        idx[epxt_below(&rng, (uint64_t)K)] = hot;
    } else {
        /* min(K, E) distinct experts (partial Fisher-Yates) in shuffled
         * top-k slots. */
        for (int e = 0; e < E; e++)
            perm[e] = e;
        int n = K < E ? K : E;
        for (int i = 0; i < n; i++) {
            int j = i + (int)epxt_below(&rng, (uint64_t)(E - i));
            int tmp = perm[i];
            perm[i] = perm[j];
            perm[j] = tmp;
            idx[i] = perm[i];
        }
        for (int i = K - 1; i > 0; i--) {
            int j = (int)epxt_below(&rng, (uint64_t)i + 1);
            int64_t tmp = idx[i];
            idx[i] = idx[j];
            idx[j] = tmp;
        }
        if (m->c->route == ROUTE_HOLES) {
            int whole = epxt_below(&rng, 6) == 0;
            for (int k = 0; k < K; k++)
                if (whole || epxt_below(&rng, 4) == 0)
                    idx[k] = -1;
        }
    }
    for (int k = 0; k < K; k++) {
        uint64_t h = epxt_next(&rng);
        /* Weights in (0, 1]; a -1 slot carries junk nobody may use. */
        w[k] = idx[k] >= 0 ? (float)((h >> 40) + 1) * (1.0f / 16777216.0f)
                           : 1e30f;
    }
}

void moe_input_free(moe_input_t *in)
{
    free(in->x);
    free(in->idx64);
    free(in->idx);
    free(in->w);
    memset(in, 0, sizeof(*in));
}

int moe_input_make(const moe_run_t *m, int s, int route, int data,
                   moe_input_t *in)
{
    const moe_case_t *c = m->c;
    const int K = c->topk, H = c->hidden;
    memset(in, 0, sizeof(*in));
    in->T = gen_T(m, s, route);
    size_t n = (size_t)in->T + 1;
    in->x = calloc(n * (size_t)H, esize(c->dtype));
    in->idx64 = calloc(n * (size_t)K, sizeof(int64_t));
    in->idx = calloc(n * (size_t)K, c->idx_dtype == EPX_DTYPE_INT64 ? 8 : 4);
    in->w = calloc(n * (size_t)K, sizeof(float));
    int *perm = malloc(sizeof(int) * (size_t)c->experts);
    if (!in->x || !in->idx64 || !in->idx || !in->w || !perm) {
        free(perm);
        moe_input_free(in);
        return epxt_fail(__FILE__, __LINE__, "out of memory");
    }
    for (int64_t t = 0; t < in->T; t++) {
        gen_row(m, s, route, t, perm, in->idx64 + t * K, in->w + t * K);
        for (int k = 0; k < K; k++) {
            if (c->idx_dtype == EPX_DTYPE_INT64)
                ((int64_t *)in->idx)[t * K + k] = in->idx64[t * K + k];
            else
                ((int32_t *)in->idx)[t * K + k] =
                    (int32_t)in->idx64[t * K + k];
        }
        for (int h = 0; h < H; h++) {
            uint64_t v = epxt_hash(m->seed, TAG_X, (uint64_t)s, (uint64_t)t,
                                   ((uint64_t)data << 32) | (uint64_t)h);
            float f = gen_value(v);
            /* Quantized wire: some all-zero rows (scales of empty blocks)
             * and some rows with one outlier 2^20 above the rest (blocks
             * whose scales leave the others tiny or zero). */
            if (c->wire != EPX_WIRE_NATIVE && t % 5 == 3)
                f = 0.0f;
            if (c->wire != EPX_WIRE_NATIVE && t % 5 == 4 && h == (int)(t % H))
                f *= 0x1p20f;
            if (c->dtype == EPX_DTYPE_FP64)
                ((double *)in->x)[t * H + h] = gen_value64(v);
            else
                ref_store(c->dtype, in->x, t * H + h, f);
        }
    }
    free(perm);
    if (c->gscale != GSCALE_NONE)
        in->gscale = ref_nvfp4_tensor_scale(in->x, (size_t)in->T * (size_t)H) /
                     (c->gscale == GSCALE_SMALL ? 64.0f : 1.0f);
    return 0;
}

/* The data pointer of a tensor of `rows` rows (frameworks hand empty
 * tensors over with no storage). */
static void *data_of(const moe_case_t *c, void *p, int64_t rows)
{
    return c->null_empty && rows == 0 ? NULL : p;
}

epx_dispatch_args_t moe_input_args(const moe_run_t *m, const moe_input_t *in)
{
    const moe_case_t *c = m->c;
    epx_dispatch_args_t a = EPX_DISPATCH_ARGS_INIT;
    a.x = (epx_tensor_t){ data_of(c, in->x, in->T), c->dtype, in->T,
                          c->hidden };
    a.topk_idx = (epx_tensor_t){ data_of(c, in->idx, in->T), c->idx_dtype,
                                 in->T, c->topk };
    a.topk_weights = (epx_tensor_t){ data_of(c, in->w, in->T), EPX_DTYPE_FP32,
                                     in->T, c->topk };
    a.x_global_scale = in->gscale;
    return a;
}

/* The expert outputs of a round, as the reference wants them. */
typedef struct y_ctx {
    const moe_run_t *m;
    int data;
} y_ctx_t;

static void y_row(void *ctx, int src, int64_t t, int who, float *row)
{
    const y_ctx_t *y = ctx;
    const moe_run_t *m = y->m;
    for (int h = 0; h < m->c->hidden; h++)
        row[h] = ref_round(m->c->dtype,
                           gen_value(epxt_hash(m->seed, TAG_Y, (uint64_t)src,
                                               (uint64_t)t,
                                               ((uint64_t)y->data << 48) |
                                                   ((uint64_t)who << 24) |
                                                   (uint64_t)h)));
}

static void y_row64(void *ctx, int src, int64_t t, int who, double *row)
{
    const y_ctx_t *y = ctx;
    const moe_run_t *m = y->m;
    for (int h = 0; h < m->c->hidden; h++)
        row[h] = gen_value64(epxt_hash(m->seed, TAG_Y, (uint64_t)src,
                                       (uint64_t)t,
                                       ((uint64_t)y->data << 48) |
                                           ((uint64_t)who << 24) |
                                           (uint64_t)h));
}

int moe_run_open(moe_run_t *m, epx_comm_t *comm, const moe_case_t *c)
{
    memset(m, 0, sizeof(*m));
    m->c = c;
    m->comm = comm;
    m->rank = epx_comm_rank(comm);
    m->nranks = epx_comm_size(comm);
    m->seed = epxt_hash_str(epxt_seed(), c->name);
    m->cfg = (ref_cfg_t){ m->nranks, c->experts, c->topk, c->hidden, c->dtype,
                          c->layout, c->align, c->wire };
    epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
    p.hidden = c->hidden;
    p.num_experts = c->experts;
    p.topk = c->topk;
    p.max_tokens_per_rank = max_tokens_of(c, m->rank);
    p.dtype = c->dtype;
    p.layout = c->layout;
    p.expert_alignment = c->align;
    p.flags = c->flags;
    p.wire = c->wire;
    epx_status_t st = epx_moe_create(comm, &p, &m->moe);
    CHECKF(st == EPX_OK, "case %s: epx_moe_create: %s (%s)", c->name,
           epx_status_str(st), epx_last_error());

    const int R = m->nranks, E = c->experts;
    CHECKF(epx_moe_num_local_experts(m->moe) ==
               ref_num_experts(R, E, m->rank) &&
           epx_moe_first_local_expert(m->moe) ==
               ref_first_expert(R, E, m->rank),
           "case %s: local experts [%d, +%d), want [%d, +%d)", c->name,
           epx_moe_first_local_expert(m->moe),
           epx_moe_num_local_experts(m->moe),
           ref_first_expert(R, E, m->rank), ref_num_experts(R, E, m->rank));
    for (int e = 0; e < E; e++)
        CHECKF(epx_moe_expert_rank(m->moe, e) == ref_expert_owner(R, E, e),
               "case %s: expert %d on rank %d, want %d", c->name, e,
               epx_moe_expert_rank(m->moe, e), ref_expert_owner(R, E, e));
    return 0;
}

void moe_run_close(moe_run_t *m)
{
    epx_moe_destroy(m->moe);
    m->moe = NULL;
}

static int check_recv(const moe_run_t *m, int round, const char *when,
                      const ref_recv_t *e, const epx_recv_t *g)
{
    const moe_case_t *c = m->c;
    const int K = c->topk, H = c->hidden;
    const size_t rb = e->x_row;
    const char *n = c->name;
    const int em = c->layout == EPX_LAYOUT_EXPERT_MAJOR;
    ref_wire_t w;
    const int quant = ref_wire_shape(c->wire, H, &w) == 0;
    const epx_dtype_t xdt = quant ? w.x_dtype : c->dtype;
    const int64_t xcols = quant ? w.x_cols : H;

    CHECKF(g->num_rows == e->num_rows, "case %s round %d%s: num_rows %"
           PRId64 ", want %" PRId64, n, round, when, g->num_rows,
           e->num_rows);
    CHECKF(g->num_local_experts == e->num_local &&
               g->first_local_expert == e->first_local,
           "case %s round %d%s: recv local experts [%d, +%d), want "
           "[%d, +%d)", n, round, when, g->first_local_expert,
           g->num_local_experts, e->first_local, e->num_local);
    CHECKF(g->x.dtype == xdt && g->x.rows == e->num_rows &&
               g->x.cols == xcols,
           "case %s round %d%s: recv x is [%" PRId64 ", %" PRId64 "] dtype "
           "%d, want [%" PRId64 ", %" PRId64 "] dtype %d", n, round, when,
           g->x.rows, g->x.cols, (int)g->x.dtype, e->num_rows, xcols,
           (int)xdt);
    if (quant)
        CHECKF(g->x_scales.dtype == w.scale_dtype &&
                   g->x_scales.rows == e->num_rows &&
                   g->x_scales.cols == (int64_t)w.nblocks &&
                   (e->num_rows == 0 || g->x_scales.data) &&
                   !(c->wire == EPX_WIRE_NVFP4) == !g->x_global_scale,
               "case %s round %d%s: recv x_scales [%" PRId64 ", %" PRId64
               "] dtype %d data %p global %p, want [%" PRId64 ", %zu] dtype "
               "%d", n, round, when, g->x_scales.rows, g->x_scales.cols,
               (int)g->x_scales.dtype, g->x_scales.data,
               (const void *)g->x_global_scale, e->num_rows, w.nblocks,
               (int)w.scale_dtype);
    else
        CHECKF(!g->x_scales.data && !g->x_global_scale,
               "case %s: native wire with scales", n);
    for (int j = 0; j < e->num_local; j++) {
        CHECKF(g->expert_counts, "case %s: expert_counts NULL", n);
        CHECKF(g->expert_counts[j] == e->counts[j],
               "case %s round %d%s: expert_counts[%d] = %" PRId64 ", want %"
               PRId64, n, round, when, j, g->expert_counts[j], e->counts[j]);
    }
    if (em) {
        CHECKF(!g->topk_idx, "case %s: expert-major recv has topk_idx", n);
        for (int j = 0; j < e->num_local; j++) {
            CHECKF(g->expert_offsets, "case %s: expert_offsets NULL", n);
            CHECKF(g->expert_offsets[j] == e->offsets[j],
                   "case %s round %d%s: expert_offsets[%d] = %" PRId64
                   ", want %" PRId64 " (align %d)", n, round, when, j,
                   g->expert_offsets[j], e->offsets[j], c->align);
        }
    } else {
        CHECKF(!g->expert_offsets,
               "case %s: token-major recv has expert_offsets", n);
    }
    if (e->num_rows == 0)
        return 0;
    CHECKF(g->x.data && g->src_rank && g->src_token && g->topk_weights &&
               (em || g->topk_idx),
           "case %s round %d%s: %" PRId64 " rows but a NULL array", n, round,
           when, e->num_rows);
    const unsigned char *gx = g->x.data;
    for (int64_t i = 0; i < e->num_rows; i++) {
        CHECKF(g->src_rank[i] == e->src_rank[i] &&
                   g->src_token[i] == e->src_token[i],
               "case %s round %d%s: row %" PRId64 " from (rank %d, token %d), "
               "want (rank %d, token %d)", n, round, when, i, g->src_rank[i],
               g->src_token[i], e->src_rank[i], e->src_token[i]);
        if (e->src_rank[i] < 0)
            continue;   /* padding: x and weight unspecified */
        if (em) {
            CHECKF(memcmp(&g->topk_weights[i], &e->weights[i], 4) == 0,
                   "case %s round %d%s: row %" PRId64 " weight %a, want %a", n,
                   round, when, i, (double)g->topk_weights[i],
                   (double)e->weights[i]);
        } else {
            for (int k = 0; k < K; k++)
                CHECKF(g->topk_idx[i * K + k] == e->topk_idx[i * K + k] &&
                           memcmp(&g->topk_weights[i * K + k],
                                  &e->weights[i * K + k], 4) == 0,
                       "case %s round %d%s: row %" PRId64 " slot %d: local "
                       "expert %d weight %a, want %d weight %a", n, round,
                       when, i, k, g->topk_idx[i * K + k],
                       (double)g->topk_weights[i * K + k],
                       e->topk_idx[i * K + k], (double)e->weights[i * K + k]);
        }
        if (quant) {
            const unsigned char *gs = g->x_scales.data;
            size_t sr = e->scale_row;
            for (size_t b = 0; b < rb; b++)
                CHECKF(gx[(size_t)i * rb + b] == e->x[(size_t)i * rb + b],
                       "case %s round %d%s: row %" PRId64 " (rank %d token %d)"
                       " data byte %zu = 0x%02x, want 0x%02x", n, round, when,
                       i, e->src_rank[i], e->src_token[i], b,
                       gx[(size_t)i * rb + b], e->x[(size_t)i * rb + b]);
            for (size_t b = 0; b < sr; b++)
                CHECKF(gs[(size_t)i * sr + b] == e->scales[(size_t)i * sr + b],
                       "case %s round %d%s: row %" PRId64 " (rank %d token %d)"
                       " scale byte %zu = 0x%02x, want 0x%02x", n, round, when,
                       i, e->src_rank[i], e->src_token[i], b,
                       gs[(size_t)i * sr + b], e->scales[(size_t)i * sr + b]);
            if (c->wire == EPX_WIRE_NVFP4)
                CHECKF(memcmp(&g->x_global_scale[i], &e->gscale[i], 4) == 0,
                       "case %s round %d%s: row %" PRId64 " row scale %a, "
                       "want %a", n, round, when, i,
                       (double)g->x_global_scale[i], (double)e->gscale[i]);
            continue;
        }
        if (memcmp(gx + (size_t)i * rb, e->x + (size_t)i * rb, rb) != 0) {
            int h = 0;
            while (memcmp(gx + (size_t)i * rb + (size_t)h * esize(c->dtype),
                          e->x + (size_t)i * rb + (size_t)h * esize(c->dtype),
                          esize(c->dtype)) == 0)
                h++;
            return epxt_fail(__FILE__, __LINE__,
                             "case %s round %d%s: row %" PRId64 " (rank %d "
                             "token %d) x[%d] = %a, want %a", n, round,
                             when, i, e->src_rank[i], e->src_token[i], h,
                             ref_load64(c->dtype, gx, i * H + h),
                             ref_load64(c->dtype, e->x, i * H + h));
        }
    }
    return 0;
}

/* y in the recv layout: each row's values from (source, token, expert or
 * this rank); padding rows get NaN, which combine must never read. */
static void *make_y(const moe_run_t *m, const ref_recv_t *e, y_ctx_t *yc)
{
    const moe_case_t *c = m->c;
    const int H = c->hidden, f64 = c->dtype == EPX_DTYPE_FP64;
    float *row = malloc(sizeof(float) * (size_t)H);
    void *y = calloc((size_t)(e->num_rows + 1) * (size_t)H, esize(c->dtype));
    if (!row || !y) {
        free(row);
        free(y);
        return NULL;
    }
    for (int64_t i = 0; i < e->num_rows; i++) {
        if (e->src_rank[i] < 0) {
            for (int h = 0; h < H; h++)
                ref_store(c->dtype, y, i * H + h, __builtin_nanf(""));
            continue;
        }
        int who = c->layout == EPX_LAYOUT_TOKEN_MAJOR
            ? m->rank : e->first_local + e->row_expert[i];
        if (f64) {
            y_row64(yc, e->src_rank[i], e->src_token[i], who,
                    (double *)y + i * H);
            continue;
        }
        y_row(yc, e->src_rank[i], e->src_token[i], who, row);
        for (int h = 0; h < H; h++)
            ref_store(c->dtype, y, i * H + h, row[h]);
    }
    free(row);
    return y;
}

static int check_out(const moe_run_t *m, int round, const moe_input_t *in,
                     const void *want, const void *got)
{
    const moe_case_t *c = m->c;
    const int H = c->hidden, K = c->topk;
    const size_t es = esize(c->out_dtype);
    for (int64_t t = 0; t < in->T; t++)
        for (int h = 0; h < H; h++) {
            const char *a = (const char *)got + (size_t)(t * H + h) * es;
            const char *b = (const char *)want + (size_t)(t * H + h) * es;
            if (memcmp(a, b, es) == 0)
                continue;
            char route[256] = "";
            size_t len = 0;
            for (int k = 0; k < K && len < sizeof(route) - 16; k++)
                len += (size_t)snprintf(route + len, sizeof(route) - len,
                                        " %" PRId64, in->idx64[t * K + k]);
            return epxt_fail(__FILE__, __LINE__,
                             "case %s round %d: out[%" PRId64 "][%d] = %a, "
                             "want %a (token's experts:%s)", c->name, round,
                             t, h,
                             ref_load64(c->out_dtype, got, t * H + h),
                             ref_load64(c->out_dtype, want, t * H + h),
                             route);
        }
    return 0;
}

/* A pause of up to jitter_us, different on every rank, round and step:
 * ranks reach each call at different times. */
static void jitter(const moe_run_t *m, int data, int step)
{
    if (m->c->jitter_us <= 0)
        return;
    uint64_t h = epxt_hash(m->seed, TAG_JITTER, (uint64_t)m->rank,
                           (uint64_t)data, (uint64_t)step);
    usleep((useconds_t)(h % (uint64_t)m->c->jitter_us));
}

int moe_round_dispatch(moe_run_t *m, moe_round_t *r, int route, int data,
                       epx_handle_t **handle)
{
    const moe_case_t *c = m->c;
    const int R = m->nranks;
    memset(r, 0, sizeof(*r));
    r->m = m;
    r->data = data;
    r->all = calloc((size_t)R, sizeof(*r->all));
    r->toks = calloc((size_t)R, sizeof(*r->toks));
    CHECKF(r->all && r->toks, "out of memory");
    for (int s = 0; s < R; s++) {
        CHECK_CALL(moe_input_make(m, s, route, data, &r->all[s]));
        r->toks[s] = (ref_tokens_t){ r->all[s].T, r->all[s].x,
                                     r->all[s].idx64, r->all[s].w,
                                     r->all[s].gscale };
    }
    CHECKF(ref_dispatch(&m->cfg, r->toks, m->rank, &r->want) == 0,
           "out of memory");

    const moe_input_t *mine = &r->all[m->rank];
    epx_dispatch_args_t a = moe_input_args(m, mine);
    int cached = *handle != NULL;
    if (cached)
        a.flags |= EPX_DISPATCH_CACHED;
    jitter(m, data, 0);
    epx_status_t st = epx_dispatch_send(m->moe, &a, handle);
    CHECKF(st == EPX_OK, "case %s round %d: epx_dispatch_send%s: %s (%s)",
           c->name, data, cached ? " (cached)" : "", epx_status_str(st),
           epx_last_error());
    CHECKF(*handle, "case %s: dispatch gave no handle", c->name);
    jitter(m, data, 1);
    r->rv.struct_size = sizeof(r->rv);
    st = epx_dispatch_recv(m->moe, *handle, &r->rv);
    CHECKF(st == EPX_OK, "case %s round %d: epx_dispatch_recv: %s (%s)",
           c->name, data, epx_status_str(st), epx_last_error());
    CHECK_CALL(check_recv(m, data, "", &r->want, &r->rv));
    digest(m, "recv-x", data, r->rv.x.data,
           (size_t)(r->rv.x.rows * r->rv.x.cols) * epx_dtype_size(r->rv.x.dtype));
    if (r->rv.x_scales.data)
        digest(m, "recv-scales", data, r->rv.x_scales.data,
               (size_t)(r->rv.x_scales.rows * r->rv.x_scales.cols) *
               epx_dtype_size(r->rv.x_scales.dtype));
    if (r->rv.x_global_scale)
        digest(m, "recv-gscale", data, r->rv.x_global_scale,
               (size_t)r->rv.num_rows * sizeof(float));
    CHECKF(epx_handle_num_tokens(*handle) == mine->T,
           "case %s: handle records %" PRId64 " tokens, want %" PRId64,
           c->name, epx_handle_num_tokens(*handle), mine->T);
    return 0;
}

int moe_round_combine(moe_round_t *r, epx_handle_t *handle)
{
    const moe_run_t *m = r->m;
    const moe_case_t *c = m->c;
    const int H = c->hidden, data = r->data;
    const moe_input_t *mine = &r->all[m->rank];
    const ref_recv_t *want = &r->want;
    epx_status_t st;

    y_ctx_t yc = { m, data };
    r->y = make_y(m, want, &yc);
    size_t ob = (size_t)(mine->T + 1) * (size_t)H * esize(c->out_dtype);
    r->out = malloc(ob);
    r->ref_out = calloc(1, ob);
    CHECKF(r->y && r->out && r->ref_out, "out of memory");
    memset(r->out, 0xa5, ob);   /* every element must be written */

    /* Received pointers stay valid until this rank's next combine_send,
     * whatever the other ranks did meanwhile. */
    jitter(m, data, 2);
    CHECK_CALL(check_recv(m, data, " (received data before combine_send)",
                          want, &r->rv));

    epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
    ca.flags = c->combine_flags;
    if (c->misuse & MISUSE_COMBINE_Y) {
        ca.y = (epx_tensor_t){ r->y, c->dtype, want->num_rows + 1, H };
        st = epx_combine_send(m->moe, handle, &ca);
        CHECKF(st == EPX_ERR_INVALID, "case %s round %d: epx_combine_send "
               "with y of %" PRId64 " rows for %" PRId64 ": %s, want "
               "EPX_ERR_INVALID", c->name, data, want->num_rows + 1,
               want->num_rows, epx_status_str(st));
    }
    ca.y = (epx_tensor_t){ data_of(c, r->y, want->num_rows), c->dtype,
                           want->num_rows, H };
    if (c->in_place && want->num_rows > 0) {
        /* the outputs over the received rows: peers mapped over shm read
         * them from there (the pull path) */
        memcpy(r->rv.x.data, r->y,
               (size_t)want->num_rows * (size_t)H * esize(c->dtype));
        ca.y.data = r->rv.x.data;
    }
    st = epx_combine_send(m->moe, handle, &ca);
    CHECKF(st == EPX_OK, "case %s round %d: epx_combine_send%s: %s (%s)",
           c->name, data,
           c->misuse & MISUSE_COMBINE_Y ? " after one with a wrong y" : "",
           epx_status_str(st), epx_last_error());
    epx_tensor_t ot = { r->out, c->out_dtype, mine->T + 1, H };
    if (c->misuse & MISUSE_COMBINE_OUT) {
        st = epx_combine_recv(m->moe, handle, &ot);
        CHECKF(st == EPX_ERR_INVALID, "case %s round %d: epx_combine_recv "
               "with out of %" PRId64 " rows for %" PRId64 " tokens: %s, "
               "want EPX_ERR_INVALID", c->name, data, mine->T + 1, mine->T,
               epx_status_str(st));
    }
    if (c->misuse & MISUSE_OUT_DTYPE) {
        epx_tensor_t bad = { r->out, c->dtype == EPX_DTYPE_FP64
                             ? EPX_DTYPE_FP32 : EPX_DTYPE_FP64, mine->T, H };
        st = epx_combine_recv(m->moe, handle, &bad);
        CHECKF(st == EPX_ERR_INVALID && strstr(epx_last_error(), "FP64"),
               "case %s round %d: epx_combine_recv with out of dtype %d: %s "
               "(%s), want EPX_ERR_INVALID naming FP64", c->name, data,
               (int)bad.dtype, epx_status_str(st), epx_last_error());
    }
    ot = (epx_tensor_t){ data_of(c, r->out, mine->T), c->out_dtype, mine->T,
                         H };
    jitter(m, data, 3);
    st = epx_combine_recv(m->moe, handle, &ot);
    CHECKF(st == EPX_OK, "case %s round %d: epx_combine_recv%s: %s (%s)",
           c->name, data,
           c->misuse & (MISUSE_COMBINE_OUT | MISUSE_OUT_DTYPE)
               ? " after one with a wrong out" : "",
           epx_status_str(st), epx_last_error());

    const int unw = (c->combine_flags & EPX_COMBINE_UNWEIGHTED) != 0;
    if (c->dtype == EPX_DTYPE_FP64)
        CHECKF(ref_combine_f64(&m->cfg, m->rank, &r->toks[m->rank], unw,
                               y_row64, &yc, r->ref_out) == 0, "out of memory");
    else
        CHECKF(ref_combine(&m->cfg, m->rank, &r->toks[m->rank], unw, y_row,
                           &yc, c->out_dtype, r->ref_out) == 0,
               "out of memory");
    digest(m, "out", data, data_of(c, r->out, mine->T),
           (size_t)mine->T * (size_t)H * esize(c->out_dtype));
    return check_out(m, data, mine, r->ref_out, r->out);
}

void moe_round_free(moe_round_t *r)
{
    for (int s = 0; r->all && s < r->m->nranks; s++)
        moe_input_free(&r->all[s]);
    free(r->all);
    free(r->toks);
    ref_recv_free(&r->want);
    free(r->y);
    free(r->out);
    free(r->ref_out);
    memset(r, 0, sizeof(*r));
}

int moe_run_round(moe_run_t *m, int route, int data, epx_handle_t **handle)
{
    moe_round_t r;
    int rc = moe_round_dispatch(m, &r, route, data, handle);
    if (rc == 0)
        rc = moe_round_combine(&r, *handle);
    moe_round_free(&r);
    return rc;
}

int moe_case_run(epx_comm_t *comm, const moe_case_t *c)
{
    moe_run_t m;
    CHECK_CALL(moe_run_open(&m, comm, c));
    /* Several routings on the same engine; each dispatched fresh, then
     * again through its handle (cached) with new tokens and outputs. */
    for (int route = 0; route < MOE_ROUTES; route++) {
        epx_handle_t *h = NULL;
        CHECK_CALL(moe_run_round(&m, route, 2 * route, &h));
        CHECK_CALL(moe_run_round(&m, route, 2 * route + 1, &h));
        epx_handle_release(h);
    }
    moe_run_close(&m);
    return 0;
}

int moe_cases_rank(epx_comm_t *comm, void *arg)
{
    for (const moe_case_t *c = arg; c->name; c++)
        CHECK_CALL(moe_case_run(comm, c));
    return 0;
}
