/*
 * Low-latency mode against the reference (tests/ref: ref_dispatch_ll,
 * ref_ll_kept, ref_combine), bit for bit: 1, 2, 3, 8 and 72 ranks (72 with
 * EPX_TOPO_FILE=gb200-nvl72), routings uniform (with -1 holes), Zipf and
 * all-to-one-expert, bf16/fp32/fp64, weighted and unweighted, in place; odd or
 * all sources sending no token, and one expert (every expert on rank 0).  Calls
 * run as a pipeline of ll_buffers outstanding dispatches: each call's
 * output is checked again just before its combine, after the later calls
 * were sent, so a buffer overwritten too early shows.  Readiness is taken
 * through epx_dispatch_poll first.  Overflow: EPX_ERR_RANGE on every rank
 * with nothing usable, or with EPX_MOE_LL_DROP the rows beyond capacity
 * dropped, counted and left out of combine.  Misuse and peer errors; a
 * call abandoned early while a peer still combines the buffer's previous
 * call; padding after a failed call left rows in a buffer.  Every wire
 * format (x, scales and row scales against the reference quantizer of
 * tests/ref, never the library's), the in-place combine it refuses, and
 * the bytes put it counts.
 */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/epx_test.h"
#include "ref/ref.h"
#include "ref/ref_quant.h"

enum { R_UNIFORM = 0, R_ZIPF, R_ONE };
enum { TAG_T = 11, TAG_ROW, TAG_X, TAG_Y, TAG_JIT, TAG_HOT };

typedef struct ll_case {
    const char *name;
    int experts, topk, hidden, max_tokens, min_tokens;
    int cap, buffers, drop, route, rounds;
    epx_dtype_t dtype, out_dtype;
    unsigned comb_flags;
    int in_place, jitter_us;
    epx_wire_t wire;            /* quantized: x arrives as the reference
                                   quantizer (tests/ref) encodes it */
    int zero;                   /* ZERO_*: sources forced to send nothing */
    int gscale;                 /* NVFP4: G_* tensor scale given */
} ll_case_t;

enum { ZERO_NONE = 0, ZERO_ODD, ZERO_ALL };
/* G_TENSOR: each source passes its call's amax / (6 * 448); G_SMALL: that
 * / 64, so that large blocks saturate. */
enum { G_NONE = 0, G_TENSOR, G_SMALL };

typedef struct ll_in {
    int64_t T;
    void *x;
    int64_t *idx64;
    int32_t *idx;
    float *w;
    float gscale;               /* x_global_scale given, 0: none */
} ll_in_t;

typedef struct ll_run {
    const ll_case_t *c;
    epx_moe_t *moe;
    int rank, R;
    uint64_t seed;
    ref_cfg_t cfg;
} ll_run_t;

/* One call in flight. */
typedef struct ll_round {
    int r;
    ll_in_t *in;                /* [R] */
    ref_tokens_t *toks;
    ref_recv_t want;
    int64_t dropped;
    epx_handle_t *h;
    epx_recv_t rv;
} ll_round_t;

static size_t esz(epx_dtype_t d)
{
    return d == EPX_DTYPE_BF16 ? 2 : d == EPX_DTYPE_FP64 ? 8 : 4;
}

static float gen_value(uint64_t h)
{
    double u = (double)(h >> 11) * (1.0 / 9007199254740992.0);
    return (float)(u * 8.0 - 4.0) * (float)(1 << (h & 7)) * 0.125f;
}

/* FP64 engines: the same values with every mantissa bit in use. */
static double gen_value64(uint64_t h)
{
    double u = (double)(h >> 11) * (1.0 / 9007199254740992.0);
    return (u * 8.0 - 4.0) * (double)(1 << (h & 7)) * 0.125;
}

static void jitter(const ll_run_t *m, int r, int step)
{
    if (m->c->jitter_us > 0)
        usleep((useconds_t)(epxt_hash(m->seed, TAG_JIT, (uint64_t)m->rank,
                                      (uint64_t)r, (uint64_t)step) %
                            (uint64_t)m->c->jitter_us));
}

/* Zipf(1.1) over the experts, ranked by a per-round permutation-free
 * rotation: expert (hot + rank) % E has weight 1 / (rank + 1)^1.1. */
static int zipf_pick(int E, int hot, uint64_t h)
{
    double tot = 0, u;
    for (int i = 0; i < E; i++)
        tot += 1.0 / pow(i + 1, 1.1);
    u = (double)(h >> 11) * (1.0 / 9007199254740992.0) * tot;
    for (int i = 0; i < E; i++) {
        u -= 1.0 / pow(i + 1, 1.1);
        if (u < 0)
            return (hot + i) % E;
    }
    return (hot + E - 1) % E;
}

static void gen_route(const ll_run_t *m, int s, int r, int64_t t, int64_t *idx,
                      float *w)
{
    const int K = m->c->topk, E = m->c->experts;
    epxt_rng_t g = { epxt_hash(m->seed, TAG_ROW, (uint64_t)s, (uint64_t)r,
                               (uint64_t)t) };
    int hot = (int)(epxt_hash(m->seed, TAG_HOT, (uint64_t)r, 0, 0) % (uint64_t)E);
    for (int k = 0; k < K; k++)
        idx[k] = -1;
    if (m->c->route == R_ONE) {
        idx[epxt_below(&g, (uint64_t)K)] = hot;
    } else {
        int n = K < E ? K : E;
        for (int k = 0; k < n; k++) {
            int e, dup;
            do {
                e = m->c->route == R_ZIPF ? zipf_pick(E, hot, epxt_next(&g))
                                          : (int)epxt_below(&g, (uint64_t)E);
                dup = 0;
                for (int i = 0; i < k; i++)
                    dup |= idx[i] == e;
            } while (dup);
            idx[k] = e;
        }
        if (m->c->route == R_UNIFORM)   /* holes */
            for (int k = 0; k < K; k++)
                if (epxt_below(&g, 8) == 0)
                    idx[k] = -1;
    }
    for (int k = 0; k < K; k++)
        w[k] = idx[k] >= 0
            ? (float)((epxt_next(&g) >> 40) + 1) * (1.0f / 16777216.0f) : 1e30f;
}

static void in_free(ll_in_t *in)
{
    free(in->x);
    free(in->idx64);
    free(in->idx);
    free(in->w);
}

static int in_make(const ll_run_t *m, int s, int r, ll_in_t *in)
{
    const ll_case_t *c = m->c;
    const int K = c->topk, H = c->hidden;
    int64_t span = c->max_tokens - c->min_tokens + 1;
    in->T = c->min_tokens + (int64_t)(epxt_hash(m->seed, TAG_T, (uint64_t)s,
                                                (uint64_t)r, 0) % (uint64_t)span);
    if (c->zero == ZERO_ALL || (c->zero == ZERO_ODD && s % 2))
        in->T = 0;
    size_t n = (size_t)in->T + 1;
    in->x = calloc(n * (size_t)H, esz(c->dtype));
    in->idx64 = calloc(n * (size_t)K, sizeof(int64_t));
    in->idx = calloc(n * (size_t)K, sizeof(int32_t));
    in->w = calloc(n * (size_t)K, sizeof(float));
    CHECKF(in->x && in->idx64 && in->idx && in->w, "out of memory");
    for (int64_t t = 0; t < in->T; t++) {
        gen_route(m, s, r, t, in->idx64 + t * K, in->w + t * K);
        for (int k = 0; k < K; k++)
            in->idx[t * K + k] = (int32_t)in->idx64[t * K + k];
        for (int h = 0; h < H; h++) {
            uint64_t v = epxt_hash(m->seed, TAG_X, (uint64_t)s, (uint64_t)t,
                                   ((uint64_t)r << 32) | (uint64_t)h);
            if (c->dtype == EPX_DTYPE_FP64)
                ((double *)in->x)[t * H + h] = gen_value64(v);
            else
                ref_store(c->dtype, in->x, t * H + h, gen_value(v));
        }
    }
    if (c->gscale != G_NONE)
        in->gscale = ref_nvfp4_tensor_scale(in->x, (size_t)in->T * (size_t)H) /
                     (c->gscale == G_SMALL ? 64.0f : 1.0f);
    return 0;
}

static void y_row(void *ctx, int src, int64_t t, int e, float *row)
{
    const ll_run_t *m = ctx;
    for (int h = 0; h < m->c->hidden; h++)
        row[h] = ref_round(m->c->dtype,
                           gen_value(epxt_hash(m->seed, TAG_Y, (uint64_t)src,
                                               (uint64_t)t,
                                               ((uint64_t)e << 24) | (uint64_t)h)));
}

static void y_row64(void *ctx, int src, int64_t t, int e, double *row)
{
    const ll_run_t *m = ctx;
    for (int h = 0; h < m->c->hidden; h++)
        row[h] = gen_value64(epxt_hash(m->seed, TAG_Y, (uint64_t)src,
                                       (uint64_t)t,
                                       ((uint64_t)e << 24) | (uint64_t)h));
}

/* The call overflows somewhere without DROP: it must fail everywhere. */
static int overflows(const ll_run_t *m, const ll_round_t *x, int s)
{
    int cap = m->c->cap > 0 ? m->c->cap : m->c->max_tokens;
    int64_t *tmp = malloc(sizeof(int64_t) * (size_t)(x->in[s].T + 1) * (size_t)m->c->topk);
    int64_t d = ref_ll_kept(&m->cfg, &x->toks[s], cap, tmp);
    free(tmp);
    return d > 0 && !m->c->drop;
}

/* Local expert j of the output against the reference (rows of the expert
 * only: poll hands out ready experts). */
static int check_expert(const ll_run_t *m, const ll_round_t *x, int j,
                        const char *when)
{
    const ref_recv_t *e = &x->want;
    const epx_recv_t *g = &x->rv;
    const size_t rb = e->x_row, sb = e->scale_row;
    const int64_t per = (int64_t)m->R * g->capacity;
    CHECKF(g->expert_counts[j] == e->counts[j] && g->expert_offsets[j] == e->offsets[j],
           "%s round %d %s: expert %d count %" PRId64 " at %" PRId64 ", want %"
           PRId64 " at %" PRId64, m->c->name, x->r, when, j, g->expert_counts[j],
           g->expert_offsets[j], e->counts[j], e->offsets[j]);
    for (int64_t i = j * per; i < (j + 1) * per; i++) {
        CHECKF(g->src_rank[i] == e->src_rank[i] && g->src_token[i] == e->src_token[i],
               "%s round %d %s: row %" PRId64 " from (%d, %d), want (%d, %d)",
               m->c->name, x->r, when, i, g->src_rank[i], g->src_token[i],
               e->src_rank[i], e->src_token[i]);
        /* padding: weight 0, however the range was filled before */
        CHECKF(e->src_rank[i] >= 0 || g->topk_weights[i] == 0.0f,
               "%s round %d %s: padding row %" PRId64 " has weight %g",
               m->c->name, x->r, when, i, (double)g->topk_weights[i]);
        if (e->src_rank[i] < 0)
            continue;
        CHECKF(memcmp(&g->topk_weights[i], &e->weights[i], 4) == 0 &&
                   memcmp((const char *)g->x.data + (size_t)i * rb,
                          e->x + (size_t)i * rb, rb) == 0,
               "%s round %d %s: row %" PRId64 " weight or x differs", m->c->name,
               x->r, when, i);
        CHECKF(!sb || memcmp((const char *)g->x_scales.data + (size_t)i * sb,
                             e->scales + (size_t)i * sb, sb) == 0,
               "%s round %d %s: row %" PRId64 " scales differ", m->c->name,
               x->r, when, i);
        CHECKF(m->c->wire != EPX_WIRE_NVFP4 ||
                   memcmp(&g->x_global_scale[i], &e->gscale[i], 4) == 0,
               "%s round %d %s: row %" PRId64 " row scale %g, want %g",
               m->c->name, x->r, when, i, (double)g->x_global_scale[i],
               (double)e->gscale[i]);
    }
    return 0;
}

/* x, x_scales and x_global_scale as the wire format shapes them. */
static int check_shape(const ll_run_t *m, const ll_round_t *x, const char *when)
{
    const epx_recv_t *g = &x->rv;
    const int64_t n = x->want.num_rows;
    ref_wire_t w;
    if (ref_wire_shape(m->c->wire, m->c->hidden, &w) != 0) {
        CHECKF(g->x.dtype == m->c->dtype && g->x.cols == m->c->hidden &&
                   !g->x_scales.data && !g->x_global_scale,
               "%s round %d %s: native x is %d x %" PRId64 " with scales %p",
               m->c->name, x->r, when, (int)g->x.dtype, g->x.cols,
               g->x_scales.data);
        return 0;
    }
    CHECKF(g->x.dtype == w.x_dtype && g->x.cols == w.x_cols &&
               g->x_scales.data && g->x_scales.dtype == w.scale_dtype &&
               g->x_scales.rows == n && g->x_scales.cols == (int64_t)w.nblocks &&
               !g->x_global_scale == !w.global_bytes,
           "%s round %d %s: x %d x %" PRId64 ", scales %d [%" PRId64 " x %"
           PRId64 "], row scales %p; want %d x %" PRId64 ", %d [%" PRId64
           " x %zu]", m->c->name, x->r, when, (int)g->x.dtype, g->x.cols,
           (int)g->x_scales.dtype, g->x_scales.rows, g->x_scales.cols,
           (const void *)g->x_global_scale, (int)w.x_dtype, w.x_cols,
           (int)w.scale_dtype, n, w.nblocks);
    return 0;
}

static int check_recv(const ll_run_t *m, const ll_round_t *x, const char *when)
{
    const ref_recv_t *e = &x->want;
    const epx_recv_t *g = &x->rv;
    int cap = m->c->cap > 0 ? m->c->cap : m->c->max_tokens;
    CHECKF(g->num_rows == e->num_rows && g->x.rows == e->num_rows &&
               g->capacity == cap && g->num_local_experts == e->num_local &&
               g->first_local_expert == e->first_local && !g->topk_idx &&
               g->num_dropped == x->dropped,
           "%s round %d %s: recv has %" PRId64 " rows, capacity %d, %d experts "
           "from %d, %" PRId64 " dropped; want %" PRId64 ", %d, %d from %d, %"
           PRId64, m->c->name, x->r, when, g->num_rows, g->capacity,
           g->num_local_experts, g->first_local_expert, g->num_dropped,
           e->num_rows, cap, e->num_local, e->first_local, x->dropped);
    CHECK_CALL(check_shape(m, x, when));
    for (int j = 0; j < e->num_local; j++)
        CHECK_CALL(check_expert(m, x, j, when));
    return 0;
}

/* EPX_TEST_DIGEST: the received rows that hold data (padding left out:
 * its bytes are whatever an earlier call left), their block scales and
 * row scales, in row order, as one digest each. */
static void digest_recv(const ll_run_t *m, const ll_round_t *x)
{
    const char *dg = getenv("EPX_TEST_DIGEST");
    const epx_recv_t *g = &x->rv;
    if (!dg || !*dg)
        return;
    const size_t xb = (size_t)g->x.cols * epx_dtype_size(g->x.dtype);
    const size_t sb = g->x_scales.data
        ? (size_t)g->x_scales.cols * epx_dtype_size(g->x_scales.dtype) : 0;
    char *buf = malloc((xb + sb + sizeof(float)) * (size_t)(g->num_rows + 1));
    if (!buf)
        return;   /* no line: the comparison reports it missing */
    size_t nx = 0, ns = 0, ng = 0;
    int64_t n = 0;
    for (int64_t i = 0; i < g->num_rows; i++)
        n += g->src_rank[i] >= 0;
    char *sc = buf + xb * (size_t)n, *gs = sc + sb * (size_t)n;
    for (int64_t i = 0; i < g->num_rows; i++) {
        if (g->src_rank[i] < 0)
            continue;
        memcpy(buf + nx, (const char *)g->x.data + xb * (size_t)i, xb);
        nx += xb;
        if (sb) {
            memcpy(sc + ns, (const char *)g->x_scales.data + sb * (size_t)i, sb);
            ns += sb;
        }
        if (g->x_global_scale) {
            memcpy(gs + ng, &g->x_global_scale[i], sizeof(float));
            ng += sizeof(float);
        }
    }
    epxt_digest(m->c->name, x->r, m->rank, "ll-x", buf, nx);
    if (sb)
        epxt_digest(m->c->name, x->r, m->rank, "ll-scales", sc, ns);
    if (g->x_global_scale)
        epxt_digest(m->c->name, x->r, m->rank, "ll-row-scales", gs, ng);
    free(buf);
}

static void round_free(const ll_run_t *m, ll_round_t *x)
{
    for (int s = 0; s < m->R && x->in; s++)
        in_free(&x->in[s]);
    free(x->in);
    free(x->toks);
    ref_recv_free(&x->want);
    epx_handle_release(x->h);
    memset(x, 0, sizeof(*x));
}

/* Send call r; 1 on a failed check, 0 otherwise (*failed: the call failed
 * as expected and is gone). */
static int round_start(const ll_run_t *m, ll_round_t *x, int r, int *failed)
{
    const ll_case_t *c = m->c;
    int cap = c->cap > 0 ? c->cap : c->max_tokens;
    memset(x, 0, sizeof(*x));
    x->r = r;
    x->in = calloc((size_t)m->R, sizeof(*x->in));
    x->toks = calloc((size_t)m->R, sizeof(*x->toks));
    CHECKF(x->in && x->toks, "out of memory");
    int bad = 0;
    for (int s = 0; s < m->R; s++) {
        CHECK_CALL(in_make(m, s, r, &x->in[s]));
        x->toks[s] = (ref_tokens_t){ x->in[s].T, x->in[s].x, x->in[s].idx64,
                                     x->in[s].w, x->in[s].gscale };
    }
    for (int s = 0; s < m->R; s++)
        bad |= overflows(m, x, s);
    CHECKF(ref_dispatch_ll(&m->cfg, x->toks, m->rank, cap, &x->want,
                           &x->dropped) == 0, "out of memory");
    const ll_in_t *in = &x->in[m->rank];
    epx_dispatch_args_t a = EPX_DISPATCH_ARGS_INIT;
    a.x = (epx_tensor_t){ in->x, c->dtype, in->T, c->hidden };
    a.x_global_scale = in->gscale;
    a.topk_idx = (epx_tensor_t){ in->idx, EPX_DTYPE_INT32, in->T, c->topk };
    a.topk_weights = (epx_tensor_t){ in->w, EPX_DTYPE_FP32, in->T, c->topk };
    jitter(m, r, 0);
    epx_status_t st = epx_dispatch_send(m->moe, &a, &x->h);
    *failed = bad;
    if (bad && overflows(m, x, m->rank)) {
        CHECKF(st == EPX_ERR_RANGE && !x->h, "%s round %d: overflowing "
               "dispatch_send -> %s, want EPX_ERR_RANGE", c->name, r,
               epx_status_str(st));
        return 0;
    }
    CHECKF(st == EPX_OK, "%s round %d: dispatch_send: %s (%s)", c->name, r,
           epx_status_str(st), epx_last_error());
    jitter(m, r, 1);
    /* Poll until every expert is ready, checking each one as it comes. */
    int nl = epx_moe_num_local_experts(m->moe), n = 0, seen = 0;
    uint8_t *ready = calloc((size_t)nl + 1, 1), *checked = calloc((size_t)nl + 1, 1);
    CHECKF(ready && checked, "out of memory");
    x->rv.struct_size = sizeof(x->rv);
    while (!bad && seen < nl) {
        st = epx_dispatch_poll(m->moe, x->h, &x->rv, ready, &n);
        CHECKF(st == EPX_OK, "%s round %d: poll: %s (%s)", c->name, r,
               epx_status_str(st), epx_last_error());
        for (int j = 0; j < nl; j++)
            if (ready[j] && !checked[j]) {
                if (check_expert(m, x, j, "poll")) {
                    free(ready);
                    free(checked);
                    return 1;
                }
                checked[j] = 1;
                seen++;
            }
        CHECKF(n == seen, "poll counts %d ready, %d flagged", n, seen);
    }
    free(ready);
    free(checked);
    st = epx_dispatch_recv(m->moe, x->h, &x->rv);
    if (bad) {
        CHECKF(st == EPX_ERR_RANGE, "%s round %d: dispatch_recv of a call "
               "that overflowed elsewhere -> %s, want EPX_ERR_RANGE", c->name,
               r, epx_status_str(st));
        return 0;
    }
    CHECKF(st == EPX_OK, "%s round %d: dispatch_recv: %s (%s)", c->name, r,
           epx_status_str(st), epx_last_error());
    digest_recv(m, x);
    return check_recv(m, x, "recv");
}

static int round_finish(const ll_run_t *m, ll_round_t *x)
{
    const ll_case_t *c = m->c;
    const int H = c->hidden, K = c->topk;
    int cap = c->cap > 0 ? c->cap : c->max_tokens;
    CHECK_CALL(check_recv(m, x, "before combine"));
    const ref_recv_t *e = &x->want;
    void *y = c->in_place ? x->rv.x.data
                          : calloc((size_t)(e->num_rows + 1) * (size_t)H, esz(c->dtype));
    float *row = malloc(sizeof(float) * (size_t)H);
    CHECKF(y && row, "out of memory");
    for (int64_t i = 0; i < e->num_rows; i++) {
        if (e->src_rank[i] < 0) {
            for (int h = 0; h < H; h++)
                ref_store(c->dtype, y, i * H + h, NAN);
            continue;
        }
        if (c->dtype == EPX_DTYPE_FP64) {
            y_row64((void *)m, e->src_rank[i], e->src_token[i],
                    e->first_local + e->row_expert[i], (double *)y + i * H);
            continue;
        }
        y_row((void *)m, e->src_rank[i], e->src_token[i],
              e->first_local + e->row_expert[i], row);
        for (int h = 0; h < H; h++)
            ref_store(c->dtype, y, i * H + h, row[h]);
    }
    free(row);
    jitter(m, x->r, 2);
    epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
    ca.y = (epx_tensor_t){ y, c->dtype, e->num_rows, H };
    ca.flags = c->comb_flags;
    epx_status_t st = epx_combine_send(m->moe, x->h, &ca);
    if (!c->in_place)
        free(y);
    CHECKF(st == EPX_OK, "%s round %d: combine_send: %s (%s)", c->name, x->r,
           epx_status_str(st), epx_last_error());
    const ll_in_t *in = &x->in[m->rank];
    size_t ob = esz(c->out_dtype) * (size_t)H * (size_t)(in->T + 1);
    void *out = malloc(ob), *want = malloc(ob);
    int64_t *kept = malloc(sizeof(int64_t) * (size_t)(in->T + 1) * (size_t)K);
    CHECKF(out && want && kept, "out of memory");
    memset(out, 0x7f, ob);
    epx_tensor_t o = { out, c->out_dtype, in->T, H };
    jitter(m, x->r, 3);
    st = epx_combine_recv(m->moe, x->h, &o);
    ref_ll_kept(&m->cfg, &x->toks[m->rank], cap, kept);
    ref_tokens_t mine = { in->T, in->x, kept, in->w, in->gscale };
    const int unw = (c->comb_flags & EPX_COMBINE_UNWEIGHTED) != 0;
    int rc = c->dtype == EPX_DTYPE_FP64
        ? ref_combine_f64(&m->cfg, m->rank, &mine, unw, y_row64, (void *)m,
                          want)
        : ref_combine(&m->cfg, m->rank, &mine, unw, y_row, (void *)m,
                      c->out_dtype, want);
    int same = st == EPX_OK && rc == 0 &&
               memcmp(out, want, esz(c->out_dtype) * (size_t)H * (size_t)in->T) == 0;
    int64_t t0 = -1;
    for (int64_t i = 0; !same && st == EPX_OK && i < in->T * H && t0 < 0; i++)
        if (memcmp((char *)out + i * esz(c->out_dtype),
                   (char *)want + i * esz(c->out_dtype), esz(c->out_dtype)))
            t0 = i;
    epxt_digest(c->name, x->r, m->rank, "ll-out", out,   /* EPX_TEST_DIGEST */
                st == EPX_OK ? esz(c->out_dtype) * (size_t)H * (size_t)in->T : 0);
    free(out);
    free(want);
    free(kept);
    CHECKF(st == EPX_OK, "%s round %d: combine_recv: %s (%s)", c->name, x->r,
           epx_status_str(st), epx_last_error());
    CHECKF(same, "%s round %d: combine output differs from the reference at "
           "token %" PRId64 " element %" PRId64, c->name, x->r,
           t0 / H, t0 % H);
    return 0;
}

static int run_case(epx_comm_t *comm, const ll_case_t *c)
{
    ll_run_t m = { .c = c, .rank = epx_comm_rank(comm), .R = epx_comm_size(comm) };
    m.seed = epxt_hash_str(epxt_seed(), c->name);
    m.cfg = (ref_cfg_t){ m.R, c->experts, c->topk, c->hidden, c->dtype,
                         EPX_LAYOUT_EXPERT_MAJOR, 1, c->wire };
    epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
    p.hidden = c->hidden;
    p.num_experts = c->experts;
    p.topk = c->topk;
    p.max_tokens_per_rank = c->max_tokens;
    p.dtype = c->dtype;
    p.layout = EPX_LAYOUT_EXPERT_MAJOR;
    p.mode = EPX_MODE_LOW_LATENCY;
    p.ll_capacity = c->cap;
    p.ll_buffers = c->buffers;
    p.flags = c->drop ? EPX_MOE_LL_DROP : 0;
    p.wire = c->wire;
    CHECK_OK(epx_moe_create(comm, &p, &m.moe));
    /* Call r uses buffer r % B (failed calls count): before sending it,
     * the call r - B, if still queued, is combined. */
    int B = c->buffers > 0 ? c->buffers : 2, rc = 0;
    ll_round_t *q = calloc((size_t)B, sizeof(*q));
    CHECKF(q, "out of memory");
    for (int r = 0; r < c->rounds + B && !rc; r++) {
        ll_round_t *x = &q[r % B];
        if (x->in) {
            rc = round_finish(&m, x);
            round_free(&m, x);
        }
        int failed = 0;
        if (r >= c->rounds || rc)
            continue;
        rc = round_start(&m, x, r, &failed);
        if (failed || rc)
            round_free(&m, x);
    }
    for (int i = 0; i < B; i++)
        if (q[i].in)
            round_free(&m, &q[i]);
    free(q);
    epx_moe_destroy(m.moe);
    return rc;
}

static int cases_rank(epx_comm_t *comm, void *arg)
{
    for (const ll_case_t *c = arg; c->name; c++)
        CHECK_CALL(run_case(comm, c));
    return 0;
}

/* The standard set at R ranks: three routings, two buffers and three,
 * bf16 and fp32, dropping; then every quantized wire format (short last
 * blocks, odd H for the packed e2m1 codes) over the same routings, with a
 * drop and an overflow among them. */
static void run_at(int R, int quick)
{
    static char names[19][48];
    const char *tags[19] = { "uni", "zipf", "one-drop", "uni-b3-fp32",
                             "zipf-unw-inplace", "one-range", "fp8-uni",
                             "ue8m0-zipf-b3", "mxfp8-one-drop-unw",
                             "nvfp4-uni", "nvfp4-one-range", "zero-odd",
                             "zero-all-fp8", "e1-zipf", "nvfp4-tensor-zipf",
                             "nvfp4-small-uni", "fp64-uni-b3",
                             "fp64-one-drop-inplace", "fp64-zipf-unw" };
    for (int i = 0; i < 19; i++)
        snprintf(names[i], sizeof(names[i]), "ll-R%d-%s", R, tags[i]);
    int E = 2 * R + 3, T = quick ? 5 : 12;
    ll_case_t cases[] = {
        { names[0], E, 4, 24, T, 0, 0, 0, 0, R_UNIFORM, 6, EPX_DTYPE_BF16,
          EPX_DTYPE_BF16, 0, 0, 300, EPX_WIRE_NATIVE, ZERO_NONE, G_NONE },
        { names[1], E, 4, 24, T, 0, 0, 2, 0, R_ZIPF, 6, EPX_DTYPE_BF16,
          EPX_DTYPE_FP32, 0, 0, 0, EPX_WIRE_NATIVE, ZERO_NONE, G_NONE },
        /* capacity 3 per (expert, source): the hot expert drops rows */
        { names[2], E, 3, 16, T, 1, 3, 2, 1, R_ONE, 5, EPX_DTYPE_BF16,
          EPX_DTYPE_BF16, 0, 0, 0, EPX_WIRE_NATIVE, ZERO_NONE, G_NONE },
        { names[3], E, 5 < E ? 5 : E, 40, T, 0, 0, 3, 0, R_UNIFORM, 7,
          EPX_DTYPE_FP32, EPX_DTYPE_FP32, 0, 0, 200, EPX_WIRE_NATIVE, ZERO_NONE, G_NONE },
        { names[4], E, 4, 24, T, 0, T / 2, 2, 1, R_ZIPF, 5, EPX_DTYPE_BF16,
          EPX_DTYPE_BF16, EPX_COMBINE_UNWEIGHTED, 1, 0, EPX_WIRE_NATIVE, ZERO_NONE, G_NONE },
        /* capacity 2 without DROP: overflowing calls fail on every rank,
         * the others go through */
        { names[5], E, 2, 8, 4, 0, 2, 2, 0, R_ONE, 6, EPX_DTYPE_BF16,
          EPX_DTYPE_FP32, 0, 0, 0, EPX_WIRE_NATIVE, ZERO_NONE, G_NONE },
        { names[6], E, 4, 136, T, 0, 0, 0, 0, R_UNIFORM, 4, EPX_DTYPE_BF16,
          EPX_DTYPE_BF16, 0, 0, 200, EPX_WIRE_FP8, ZERO_NONE, G_NONE },
        { names[7], E, 3, 130, T, 0, 0, 3, 0, R_ZIPF, 5, EPX_DTYPE_BF16,
          EPX_DTYPE_FP32, 0, 0, 0, EPX_WIRE_FP8_UE8M0, ZERO_NONE, G_NONE },
        { names[8], E, 3, 40, T, 1, 3, 2, 1, R_ONE, 4, EPX_DTYPE_BF16,
          EPX_DTYPE_BF16, EPX_COMBINE_UNWEIGHTED, 0, 0, EPX_WIRE_MXFP8, ZERO_NONE, G_NONE },
        { names[9], E, 4, 33, T, 0, 0, 2, 0, R_UNIFORM, 5, EPX_DTYPE_BF16,
          EPX_DTYPE_FP32, 0, 0, 0, EPX_WIRE_NVFP4, ZERO_NONE, G_NONE },
        { names[10], E, 2, 24, 4, 0, 2, 2, 0, R_ONE, 5, EPX_DTYPE_BF16,
          EPX_DTYPE_BF16, 0, 0, 0, EPX_WIRE_NVFP4, ZERO_NONE, G_NONE },
        /* odd sources send nothing (at least one token on even ones) */
        { names[11], E, 4, 24, T, 1, 0, 2, 0, R_ZIPF, 4, EPX_DTYPE_BF16,
          EPX_DTYPE_FP32, 0, 1, 0, EPX_WIRE_NATIVE, ZERO_ODD, G_NONE },
        { names[12], E, 4, 130, T, 0, 0, 3, 0, R_UNIFORM, 4, EPX_DTYPE_BF16,
          EPX_DTYPE_BF16, 0, 0, 0, EPX_WIRE_FP8, ZERO_ALL, G_NONE },
        /* one expert: every expert on rank 0, the others hold none */
        { names[13], 1, 1, 24, T, 0, 0, 2, 0, R_ZIPF, 4, EPX_DTYPE_BF16,
          EPX_DTYPE_BF16, 0, 1, 0, EPX_WIRE_NATIVE, ZERO_NONE, G_NONE },
        /* the caller's tensor scale, then one so small that blocks
         * saturate */
        { names[14], E, 4, 40, T, 0, 0, 2, 0, R_ZIPF, 4, EPX_DTYPE_BF16,
          EPX_DTYPE_FP32, 0, 0, 0, EPX_WIRE_NVFP4, ZERO_ODD, G_TENSOR },
        { names[15], E, 3, 33, T, 0, 0, 3, 0, R_UNIFORM, 4, EPX_DTYPE_BF16,
          EPX_DTYPE_BF16, 0, 0, 0, EPX_WIRE_NVFP4, ZERO_NONE, G_SMALL },
        /* FP64: fp64 rows and partials, double sums (ref_combine_f64);
         * pushed, dropping and in place (the pull path), unweighted */
        { names[16], E, 4, 24, T, 0, 0, 3, 0, R_UNIFORM, 5, EPX_DTYPE_FP64,
          EPX_DTYPE_FP64, 0, 0, 200, EPX_WIRE_NATIVE, ZERO_NONE, G_NONE },
        { names[17], E, 3, 16, T, 1, 3, 2, 1, R_ONE, 5, EPX_DTYPE_FP64,
          EPX_DTYPE_FP64, 0, 1, 0, EPX_WIRE_NATIVE, ZERO_NONE, G_NONE },
        { names[18], E, 4, 24, T, 0, 0, 2, 0, R_ZIPF, 4, EPX_DTYPE_FP64,
          EPX_DTYPE_FP64, EPX_COMBINE_UNWEIGHTED, 0, 0, EPX_WIRE_NATIVE,
          ZERO_ODD, G_NONE },
        { NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, ZERO_NONE, G_NONE },
    };
    assert_int_equal(epxt_launch(R, 0, cases_rank, cases, NULL), EPX_OK);
}

static void ll_r1(void **s) { (void)s; run_at(1, 0); }
static void ll_r2(void **s) { (void)s; run_at(2, 0); }
static void ll_r3(void **s) { (void)s; run_at(3, 0); }
static void ll_r8(void **s) { (void)s; run_at(8, 0); }

/* 72 ranks as one NVL72 domain: 288 experts (4 per rank) top-8, and 40
 * experts (most ranks hold none). */
static void ll_r72(void **s)
{
    (void)s;
    const char *q = getenv("EPX_TEST_QUICK");
    if (q && *q && *q != '0')
        skip();
    setenv("EPX_TOPO_FILE", "gb200-nvl72", 1);
    static const ll_case_t cases[] = {
        { "ll-R72-e288-uni", 288, 8, 16, 3, 0, 0, 2, 0, R_UNIFORM, 4,
          EPX_DTYPE_BF16, EPX_DTYPE_BF16, 0, 0, 0, EPX_WIRE_NATIVE, ZERO_NONE, G_NONE },
        { "ll-R72-e288-zipf", 288, 8, 16, 3, 0, 0, 2, 0, R_ZIPF, 3,
          EPX_DTYPE_BF16, EPX_DTYPE_FP32, 0, 1, 0, EPX_WIRE_NATIVE, ZERO_NONE, G_NONE },
        { "ll-R72-e40-one-drop", 40, 2, 8, 3, 1, 2, 2, 1, R_ONE, 3,
          EPX_DTYPE_FP32, EPX_DTYPE_FP32, 0, 0, 0, EPX_WIRE_NATIVE, ZERO_NONE, G_NONE },
        { "ll-R72-e288-nvfp4-zipf", 288, 8, 32, 3, 0, 0, 2, 0, R_ZIPF, 3,
          EPX_DTYPE_BF16, EPX_DTYPE_BF16, 0, 0, 0, EPX_WIRE_NVFP4, ZERO_NONE, G_NONE },
        { "ll-R72-e288-fp8-uni", 288, 8, 136, 3, 0, 0, 2, 0, R_UNIFORM, 3,
          EPX_DTYPE_BF16, EPX_DTYPE_FP32, 0, 0, 0, EPX_WIRE_FP8, ZERO_NONE, G_NONE },
        { "ll-R72-e144-ue8m0-one-drop", 144, 4, 130, 3, 1, 2, 2, 1, R_ONE, 3,
          EPX_DTYPE_BF16, EPX_DTYPE_BF16, 0, 0, 0, EPX_WIRE_FP8_UE8M0, ZERO_NONE, G_NONE },
        { "ll-R72-e288-mxfp8-zipf-zero-odd", 288, 8, 40, 3, 1, 0, 2, 0,
          R_ZIPF, 3, EPX_DTYPE_BF16, EPX_DTYPE_BF16, EPX_COMBINE_UNWEIGHTED,
          0, 0, EPX_WIRE_MXFP8, ZERO_ODD, G_NONE },
        { NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, EPX_WIRE_NATIVE,
          ZERO_NONE, G_NONE },
    };
    assert_int_equal(epxt_launch(72, 0, cases_rank, (void *)cases, NULL), EPX_OK);
    unsetenv("EPX_TOPO_FILE");
}

/* ---- misuse and peer errors (3 ranks, small shapes) */

static epx_status_t mk(epx_comm_t *comm, int buffers, epx_layout_t layout,
                       epx_mode_t mode, epx_moe_t **moe)
{
    epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
    p.hidden = 8;
    p.num_experts = 6;
    p.topk = 2;
    p.max_tokens_per_rank = 4;
    p.layout = layout;
    p.mode = mode;
    p.ll_buffers = buffers;
    return epx_moe_create(comm, &p, moe);
}

typedef struct small {
    uint16_t x[4 * 8];
    int32_t idx[4 * 2];
    float w[4 * 2];
    epx_dispatch_args_t a;
} small_t;

/* Token t of rank r picks experts (r + t) % 6 and (r + t + 3) % 6. */
static void small_in(small_t *in, int rank, int bad)
{
    for (int i = 0; i < 32; i++)
        in->x[i] = ref_bf16((float)(rank * 32 + i));
    for (int t = 0; t < 4; t++) {
        in->idx[2 * t] = (rank + t) % 6;
        in->idx[2 * t + 1] = bad ? 6 : (rank + t + 3) % 6;
        in->w[2 * t] = in->w[2 * t + 1] = 0.5f;
    }
    in->a = (epx_dispatch_args_t)EPX_DISPATCH_ARGS_INIT;
    in->a.x = (epx_tensor_t){ in->x, EPX_DTYPE_BF16, 4, 8 };
    in->a.topk_idx = (epx_tensor_t){ in->idx, EPX_DTYPE_INT32, 4, 2 };
    in->a.topk_weights = (epx_tensor_t){ in->w, EPX_DTYPE_FP32, 4, 2 };
}

static int combine_all(epx_moe_t *moe, epx_handle_t *h, const epx_recv_t *rv,
                       epx_status_t want)
{
    static uint16_t out[4 * 8];
    epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
    ca.y = rv->x;
    CHECK_OK(epx_combine_send(moe, h, &ca));
    epx_tensor_t o = { out, EPX_DTYPE_BF16, 4, 8 };
    CHECK_ST(epx_combine_recv(moe, h, &o), want);
    return 0;
}

static int errors_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    const int me = epx_comm_rank(comm);
    epx_moe_t *moe = NULL;
    epx_handle_t *h[3] = { NULL, NULL, NULL };
    epx_recv_t rv[3];
    small_t in;
    uint8_t ready[8];
    int n;
    /* parameters */
    CHECK_ST(mk(comm, 2, EPX_LAYOUT_TOKEN_MAJOR, EPX_MODE_LOW_LATENCY, &moe),
             EPX_ERR_INVALID);
    CHECK_ST(mk(comm, 1, EPX_LAYOUT_EXPERT_MAJOR, EPX_MODE_LOW_LATENCY, &moe),
             EPX_ERR_INVALID);
    CHECK_ST(mk(comm, me == 1 ? 3 : 2, EPX_LAYOUT_EXPERT_MAJOR,
                EPX_MODE_LOW_LATENCY, &moe), EPX_ERR_MISMATCH);
    /* poll works in throughput mode too (ht_poll.c) */
    CHECK_OK(mk(comm, 0, EPX_LAYOUT_EXPERT_MAJOR, EPX_MODE_THROUGHPUT, &moe));
    small_in(&in, me, 0);
    CHECK_OK(epx_dispatch_send(moe, &in.a, &h[0]));
    memset(&rv[0], 0, sizeof(rv[0]));
    CHECK_OK(epx_dispatch_poll(moe, h[0], &rv[0], ready, &n));
    CHECK_OK(epx_dispatch_recv(moe, h[0], &rv[0]));
    CHECK_CALL(combine_all(moe, h[0], &rv[0], EPX_OK));
    epx_handle_release(h[0]);
    h[0] = NULL;
    epx_moe_destroy(moe);

    CHECK_OK(mk(comm, 2, EPX_LAYOUT_EXPERT_MAJOR, EPX_MODE_LOW_LATENCY, &moe));
    /* bad input on rank 1: its own error there, EPX_ERR_PEER elsewhere */
    small_in(&in, me, me == 1);
    epx_status_t st = epx_dispatch_send(moe, &in.a, &h[0]);
    if (me == 1) {
        CHECKF(st == EPX_ERR_INVALID && !h[0], "bad input -> %s",
               epx_status_str(st));
    } else {
        CHECK_OK(st);
        CHECK_ST(epx_dispatch_recv(moe, h[0], &rv[0]), EPX_ERR_PEER);
        epx_handle_release(h[0]);
        h[0] = NULL;
    }
    /* B = 2 outstanding: a third send is refused with nothing sent */
    small_in(&in, me, 0);
    for (int i = 0; i < 2; i++) {
        CHECK_OK(epx_dispatch_send(moe, &in.a, &h[i]));
        rv[i].struct_size = sizeof(rv[i]);
        CHECK_OK(epx_dispatch_recv(moe, h[i], &rv[i]));
        CHECK(rv[i].capacity == 4 && rv[i].num_dropped == 0);
    }
    CHECK_ST(epx_dispatch_send(moe, &in.a, &h[2]), EPX_ERR_STATE);
    /* combine out of order is refused too, nothing sent */
    epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
    ca.y = rv[1].x;
    CHECK_ST(epx_combine_send(moe, h[1], &ca), EPX_ERR_STATE);
    CHECK_CALL(combine_all(moe, h[0], &rv[0], EPX_OK));
    /* call 3 while call 2's output is still there; then rank 0 releases
     * call 2 uncombined: the others' combine of it fails, nothing hangs */
    CHECK_OK(epx_dispatch_send(moe, &in.a, &h[2]));
    if (me == 0) {
        epx_handle_release(h[1]);
    } else {
        CHECK_CALL(combine_all(moe, h[1], &rv[1], EPX_ERR_PEER));
        epx_handle_release(h[1]);
    }
    h[1] = NULL;
    rv[2].struct_size = sizeof(rv[2]);
    CHECK_OK(epx_dispatch_recv(moe, h[2], &rv[2]));
    CHECK_CALL(combine_all(moe, h[2], &rv[2], EPX_OK));
    epx_handle_release(h[0]);
    epx_handle_release(h[2]);
    epx_moe_destroy(moe);
    return 0;
}

static void ll_errors(void **s)
{
    (void)s;
    assert_int_equal(epxt_launch(3, 0, errors_rank, NULL, NULL), EPX_OK);
}

/* Every wire format at 3 ranks: combine into the quantized x is refused
 * with nothing consumed, then goes through with y of its own; the bytes
 * put are counted: dispatch differs from bf16 by exactly the row size
 * per row sent, combine (in bf16 whatever the wire) is a partial per
 * (token, destination) plus a status word per rank. */
static int wire_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    enum { H = 40, T = 4, NW = 5 };
    static const epx_wire_t wires[NW] = { EPX_WIRE_NATIVE, EPX_WIRE_FP8,
                                          EPX_WIRE_FP8_UE8M0, EPX_WIRE_MXFP8,
                                          EPX_WIRE_NVFP4 };
    const int me = epx_comm_rank(comm), R = epx_comm_size(comm);
    uint16_t x[T * H], out[T * H];
    int32_t idx[T * 2];
    float w[T * 2];
    int64_t put_d[NW], put_c[NW];
    for (int i = 0; i < T * H; i++)
        x[i] = ref_bf16(gen_value(epxt_hash(epxt_seed(), TAG_X, (uint64_t)me,
                                            (uint64_t)i, 0)));
    for (int t = 0; t < T; t++) {
        idx[2 * t] = (me + t) % 6;
        idx[2 * t + 1] = (me + t + 3) % 6;
        w[2 * t] = w[2 * t + 1] = 0.5f;
    }
    for (int v = 0; v < NW; v++) {
        epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
        p.hidden = H;
        p.num_experts = 6;
        p.topk = 2;
        p.max_tokens_per_rank = T;
        p.layout = EPX_LAYOUT_EXPERT_MAJOR;
        p.mode = EPX_MODE_LOW_LATENCY;
        p.wire = wires[v];
        epx_moe_t *moe = NULL;
        CHECK_OK(epx_moe_create(comm, &p, &moe));
        epx_dispatch_args_t a = EPX_DISPATCH_ARGS_INIT;
        a.x = (epx_tensor_t){ x, EPX_DTYPE_BF16, T, H };
        a.topk_idx = (epx_tensor_t){ idx, EPX_DTYPE_INT32, T, 2 };
        a.topk_weights = (epx_tensor_t){ w, EPX_DTYPE_FP32, T, 2 };
        epx_handle_t *h = NULL;
        epx_recv_t rv = { .struct_size = sizeof(rv) };
        CHECK_OK(epx_dispatch_send(moe, &a, &h));
        CHECK_OK(epx_dispatch_recv(moe, h, &rv));
        /* (source, token) pairs here: the partials this rank sends back */
        int64_t pairs = 0;
        for (int64_t i = 0; i < rv.num_rows; i++) {
            int first = rv.src_rank[i] >= 0;
            for (int64_t k = 0; k < i && first; k++)
                first = rv.src_rank[k] != rv.src_rank[i] ||
                        rv.src_token[k] != rv.src_token[i];
            pairs += first;
        }
        uint16_t *y = calloc((size_t)rv.num_rows + 1, sizeof(uint16_t) * H);
        CHECKF(y, "out of memory");
        epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
        ca.y = (epx_tensor_t){ (void *)rv.x.data, EPX_DTYPE_BF16, rv.num_rows, H };
        if (v > 0)
            CHECK_ST(epx_combine_send(moe, h, &ca), EPX_ERR_INVALID);
        ca.y.data = y;
        CHECK_OK(epx_combine_send(moe, h, &ca));
        epx_tensor_t o = { out, EPX_DTYPE_BF16, T, H };
        CHECK_OK(epx_combine_recv(moe, h, &o));
        free(y);
        epx_moe_stats_t st = { .struct_size = sizeof(st) };
        CHECK_OK(epx_moe_stats(moe, 0, &st));
        put_d[v] = st.dispatch_bytes;
        put_c[v] = st.combine_bytes;
        CHECKF(put_c[v] == pairs * 2 * H + 4 * R, "wire %d: combine put %"
               PRId64 " bytes, want %" PRId64 " partials + %d status words",
               (int)wires[v], put_c[v], pairs, R);
        epx_handle_release(h);
        epx_moe_destroy(moe);
    }
    for (int v = 1; v < NW; v++) {
        ref_wire_t rw;
        ref_wire_shape(wires[v], H, &rw);
        int64_t diff = (int64_t)T * 2 * (int64_t)(2 * H - (rw.data_bytes +
                                                    rw.scale_bytes +
                                                    rw.global_bytes));
        CHECKF(put_d[0] - put_d[v] == diff, "wire %d: %" PRId64 " bytes put, "
               "bf16 %" PRId64 ": difference %" PRId64 ", want %" PRId64,
               (int)wires[v], put_d[v], put_d[0], put_d[0] - put_d[v], diff);
    }
    return 0;
}

static void ll_wire(void **s)
{
    (void)s;
    assert_int_equal(epxt_launch(3, 0, wire_rank, NULL, NULL), EPX_OK);
}

/* Regression: a rank abandons call n + B (dispatch_send with bad input on
 * rank 1, a release right after dispatch_send on rank 2) as soon as every
 * rank has combine_sent call n, while rank 0 has not combine_recv'd call n
 * yet.  Rank 0's recv of call n must still see every peer's combine of it
 * (and give the right output); call n + B fails where it is received, and
 * the calls after it go through.  Calls 0, 1 and 3 on have one token per
 * rank, call 2 four: the rows call 2 left in buffer 0 must show as padding
 * in call 4. */
static int comb_check(epx_moe_t *moe, epx_handle_t *h, const epx_recv_t *rv,
                      const small_t *in, int send)
{
    uint16_t out[4 * 8];
    const int64_t T = in->a.x.rows;
    if (send) {
        epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
        ca.y = rv->x;
        CHECK_OK(epx_combine_send(moe, h, &ca));
    }
    epx_tensor_t o = { out, EPX_DTYPE_BF16, T, 8 };
    CHECK_OK(epx_combine_recv(moe, h, &o));
    /* y = x in place, two experts weighted 0.5 each: the output is x */
    CHECKF(memcmp(out, in->x, sizeof(uint16_t) * 8 * (size_t)T) == 0,
           "combine output is not x");
    return 0;
}

/* Rows outside the counts are padding: src_rank, src_token -1, weight 0. */
static int padding_check(const epx_recv_t *rv, int R)
{
    int64_t n = 0, want = 0;
    for (int j = 0; j < rv->num_local_experts; j++)
        want += rv->expert_counts[j];
    for (int64_t i = 0; i < rv->num_rows; i++) {
        int s = (int)(i / rv->capacity % R);
        if (rv->src_rank[i] >= 0) {
            CHECKF(rv->src_rank[i] == s, "row %" PRId64 " of source %d's "
                   "range has src_rank %d", i, s, rv->src_rank[i]);
            n++;
            continue;
        }
        CHECKF(rv->src_token[i] == -1 && rv->topk_weights[i] == 0.0f,
               "padding row %" PRId64 ": src_token %d, weight %g", i,
               rv->src_token[i], (double)rv->topk_weights[i]);
    }
    CHECKF(n == want, "%" PRId64 " rows have a source, counts say %" PRId64,
           n, want);
    return 0;
}

static void small_rows(small_t *in, int64_t T)
{
    in->a.x.rows = in->a.topk_idx.rows = in->a.topk_weights.rows = T;
}

static int early_abandon_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    const int me = epx_comm_rank(comm), R = epx_comm_size(comm);
    epx_moe_t *moe = NULL;
    epx_handle_t *h[3] = { NULL, NULL, NULL };
    epx_recv_t rv[3];
    small_t in, one, bad;
    small_in(&in, me, 0);
    small_in(&one, me, 0);
    small_rows(&one, 1);
    small_in(&bad, me, 1);
    CHECK_OK(mk(comm, 2, EPX_LAYOUT_EXPERT_MAJOR, EPX_MODE_LOW_LATENCY, &moe));
    for (int i = 0; i < 2; i++) {
        CHECK_OK(epx_dispatch_send(moe, &one.a, &h[i]));
        rv[i].struct_size = sizeof(rv[i]);
        CHECK_OK(epx_dispatch_recv(moe, h[i], &rv[i]));
        CHECK_CALL(padding_check(&rv[i], R));
    }
    epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
    ca.y = rv[0].x;
    CHECK_OK(epx_combine_send(moe, h[0], &ca));
    if (me > 0) {
        /* call 2 reuses call 0's buffer: sent once all combined call 0 */
        CHECK_CALL(comb_check(moe, h[0], &rv[0], &one, 0));
        if (me == 1) {
            CHECK_ST(epx_dispatch_send(moe, &bad.a, &h[2]), EPX_ERR_INVALID);
        } else {
            CHECK_OK(epx_dispatch_send(moe, &in.a, &h[2]));
            epx_handle_release(h[2]);
        }
        h[2] = NULL;
    }
    CHECK_OK(epx_comm_barrier(comm));
    if (me == 0)
        CHECK_CALL(comb_check(moe, h[0], &rv[0], &one, 0));
    CHECK_CALL(comb_check(moe, h[1], &rv[1], &one, 1));
    epx_handle_release(h[0]);
    epx_handle_release(h[1]);
    h[0] = h[1] = NULL;
    if (me == 0) {
        CHECK_OK(epx_dispatch_send(moe, &in.a, &h[2]));
        rv[2].struct_size = sizeof(rv[2]);
        CHECK_ST(epx_dispatch_recv(moe, h[2], &rv[2]), EPX_ERR_PEER);
        epx_handle_release(h[2]);
    }
    /* calls 3 to 6: both parities of both buffers again */
    for (int i = 0; i < 4; i++) {
        CHECK_OK(epx_dispatch_send(moe, &one.a, &h[0]));
        rv[0].struct_size = sizeof(rv[0]);
        CHECK_OK(epx_dispatch_recv(moe, h[0], &rv[0]));
        CHECK_CALL(padding_check(&rv[0], R));
        CHECK_CALL(comb_check(moe, h[0], &rv[0], &one, 1));
        epx_handle_release(h[0]);
        h[0] = NULL;
    }
    epx_moe_destroy(moe);
    return 0;
}

static void ll_early_abandon(void **s)
{
    (void)s;
    assert_int_equal(epxt_launch(2, 0, early_abandon_rank, NULL, NULL), EPX_OK);
    assert_int_equal(epxt_launch(3, 0, early_abandon_rank, NULL, NULL), EPX_OK);
}

int main(void)
{
    epxt_init("test_ll");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(ll_r72),
        cmocka_unit_test(ll_r1),
        cmocka_unit_test(ll_r2),
        cmocka_unit_test(ll_r3),
        cmocka_unit_test(ll_r8),
        cmocka_unit_test(ll_errors),
        cmocka_unit_test(ll_wire),
        cmocka_unit_test(ll_early_abandon),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
