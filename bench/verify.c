/*
 * Verification, independent of the code under test: what each rank must
 * receive follows from the routing of every rank and the documented
 * contiguous placement; received rows are compared bit for bit with the
 * regenerated source rows; combined outputs with a plain computation.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "bench.h"
#include "util/util.h"

#define BENCH_MAX_MSGS 4

void bench_check_fail(bench_check_t *c, const char *fmt, ...)
{
    if (c->mismatches++ >= BENCH_MAX_MSGS || !c->msg)
        return;
    size_t used = strlen(c->msg);
    if (used + 2 >= c->msglen)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(c->msg + used, c->msglen - used - 1, fmt, ap);
    va_end(ap);
    used = strlen(c->msg);
    if (n >= 0 && used + 1 < c->msglen) {
        c->msg[used] = '\n';
        c->msg[used + 1] = '\0';
    }
}

double bench_tolerance_unit(epx_dtype_t dt, int topk)
{
    double u = dt == EPX_DTYPE_BF16 ? 0x1p-8 : 0x1p-24;
    return 3 * u + (topk + 4) * 0x1p-24;
}

static float load(const bench_workload_t *wl, const void *row, int64_t h)
{
    return wl->dtype == EPX_DTYPE_BF16
        ? epx__bf16_to_f32(((const uint16_t *)row)[h])
        : ((const float *)row)[h];
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* What this rank should receive. */
typedef struct expect {
    int64_t *base;       /* [nranks + 1] first token index of each source */
    uint32_t *mask;      /* [total tokens] bit k: expert k is local */
    unsigned char *seen; /* [total tokens * K] */
    int64_t *counts;     /* [num_local] */
    int64_t rows;        /* tokens with at least one local expert */
    void *row;           /* regenerated source row */
} expect_t;

static void expect_free(expect_t *x)
{
    free(x->base);
    free(x->mask);
    free(x->seen);
    free(x->counts);
    free(x->row);
}

static int expect_build(const bench_ctx_t *ctx, expect_t *x)
{
    const bench_workload_t *wl = ctx->wl;
    const int N = wl->nranks, K = wl->topk;
    memset(x, 0, sizeof(*x));
    x->base = calloc((size_t)N + 1, sizeof(int64_t));
    if (!x->base)
        return -1;
    for (int s = 0; s < N; s++)
        x->base[s + 1] = x->base[s] + wl->T[s];
    const int64_t total = x->base[N];
    x->mask = calloc((size_t)total + 1, sizeof(uint32_t));
    x->seen = calloc((size_t)(total * K) + 1, 1);
    x->counts = calloc((size_t)ctx->num_local + 1, sizeof(int64_t));
    x->row = malloc((size_t)wl->hidden * wl->dsize);
    if (!x->mask || !x->seen || !x->counts || !x->row)
        return -1;
    for (int s = 0; s < N; s++)
        for (int64_t t = 0; t < wl->T[s]; t++) {
            uint32_t m = 0;
            for (int k = 0; k < K; k++) {
                int32_t e = wl->idx[s][t * K + k];
                if (e >= 0 && wl->expert_rank[e] == ctx->rank) {
                    m |= 1u << k;
                    x->counts[e - ctx->first_local]++;
                }
            }
            x->mask[x->base[s] + t] = m;
            x->rows += m != 0;
        }
    return 0;
}

/* Source (s, t) of received row i, or -1 (reported) if invalid. */
static int64_t row_source(const bench_ctx_t *ctx, const epx_recv_t *recv,
                          const expect_t *x, int64_t i, const char *impl,
                          bench_check_t *c)
{
    int32_t s = recv->src_rank[i], t = recv->src_token[i];
    if (s < 0 || s >= ctx->nranks || t < 0 || t >= ctx->wl->T[s]) {
        bench_check_fail(c, "rank %d %s dispatch: row %lld has source "
                         "%d:%d, which does not exist", ctx->rank, impl,
                         (long long)i, s, t);
        return -1;
    }
    int64_t g = x->base[s] + t;
    if (!x->mask[g]) {
        bench_check_fail(c, "rank %d %s dispatch: row %lld is token %d:%d, "
                         "which has no expert here", ctx->rank, impl,
                         (long long)i, s, t);
        return -1;
    }
    return g;
}

/* A quantized row: dequantized (bench_wire_dequant), each element within
 * the format's bound of the source row's. */
static void check_row_quant(const bench_ctx_t *ctx, const epx_recv_t *recv,
                            expect_t *x, int64_t i, const char *impl,
                            bench_check_t *c)
{
    const bench_workload_t *wl = ctx->wl;
    const int H = wl->hidden;
    bench_wire_t w;
    bench_wire_shape(wl->wire, H, wl->dsize, &w);
    float *src = malloc((size_t)H * 2 * sizeof(float)), *deq = src + H;
    double *bmax = malloc((size_t)w.nblocks * sizeof(double));
    if (!src || !bmax) {
        free(src);
        free(bmax);
        bench_check_fail(c, "rank %d %s dispatch: out of memory", ctx->rank,
                         impl);
        return;
    }
    bench_x_row(wl, recv->src_rank[i], recv->src_token[i], x->row);
    for (int h = 0; h < H; h++)
        src[h] = load(wl, x->row, h);
    bench_wire_dequant(&w, recv, i, H, deq);
    const double rmax = bench_wire_maxima(&w, src, H, bmax);
    for (int h = 0; h < H; h++) {
        double b = bench_wire_bound(&w, bmax, src, h, rmax);
        if (!(fabs((double)deq[h] - src[h]) <= b)) {
            bench_check_fail(c, "rank %d %s dispatch: row %lld (token %d:%d) "
                             "x[%d] dequantizes to %g, source %g, beyond the "
                             "%s bound %g", ctx->rank, impl, (long long)i,
                             recv->src_rank[i], recv->src_token[i], h,
                             (double)deq[h], (double)src[h],
                             bench_wire_name(wl->wire), b);
            break;
        }
    }
    free(src);
    free(bmax);
}

static void check_row_x(const bench_ctx_t *ctx, const epx_recv_t *recv,
                        expect_t *x, int64_t i, const char *impl,
                        bench_check_t *c)
{
    const bench_workload_t *wl = ctx->wl;
    const size_t rowb = (size_t)wl->hidden * wl->dsize;
    if (recv->x_scales.data) {   /* quantized (the MPI baseline never is) */
        check_row_quant(ctx, recv, x, i, impl, c);
        return;
    }
    const char *got = (const char *)recv->x.data + (size_t)i * rowb;
    bench_x_row(wl, recv->src_rank[i], recv->src_token[i], x->row);
    if (memcmp(got, x->row, rowb) == 0)
        return;
    int h = 0;
    while (h < wl->hidden - 1 &&
           f32_bits(load(wl, got, h)) == f32_bits(load(wl, x->row, h)))
        h++;
    bench_check_fail(c, "rank %d %s dispatch: row %lld (token %d:%d) x[%d] "
                     "= %g, source has %g", ctx->rank, impl, (long long)i,
                     recv->src_rank[i], recv->src_token[i], h,
                     (double)load(wl, got, h), (double)load(wl, x->row, h));
}

static void verify_token_major(const bench_ctx_t *ctx, const epx_recv_t *recv,
                               expect_t *x, const char *impl,
                               bench_check_t *c)
{
    const bench_workload_t *wl = ctx->wl;
    const int K = wl->topk;
    if (recv->num_rows != x->rows)
        bench_check_fail(c, "rank %d %s dispatch: %lld rows received, the "
                         "routing sends %lld", ctx->rank, impl,
                         (long long)recv->num_rows, (long long)x->rows);
    for (int64_t i = 0; i < recv->num_rows; i++) {
        int64_t g = row_source(ctx, recv, x, i, impl, c);
        if (g < 0)
            continue;
        int32_t s = recv->src_rank[i], t = recv->src_token[i];
        if (x->seen[g * K]++) {
            bench_check_fail(c, "rank %d %s dispatch: token %d:%d received "
                             "twice (row %lld)", ctx->rank, impl, s, t,
                             (long long)i);
            continue;
        }
        for (int k = 0; k < K; k++) {
            int32_t e = wl->idx[s][(int64_t)t * K + k];
            int32_t want = (x->mask[g] >> k & 1) ? e - ctx->first_local : -1;
            int32_t have = recv->topk_idx[i * K + k];
            if (have != want) {
                bench_check_fail(c, "rank %d %s dispatch: token %d:%d slot "
                                 "%d local expert %d, want %d", ctx->rank,
                                 impl, s, t, k, have, want);
                break;
            }
            float w = wl->w[s][(int64_t)t * K + k];
            if (want >= 0 &&
                f32_bits(recv->topk_weights[i * K + k]) != f32_bits(w)) {
                bench_check_fail(c, "rank %d %s dispatch: token %d:%d slot "
                                 "%d weight %.9g, want %.9g", ctx->rank, impl,
                                 s, t, k,
                                 (double)recv->topk_weights[i * K + k],
                                 (double)w);
                break;
            }
        }
        check_row_x(ctx, recv, x, i, impl, c);
    }
    for (int s = 0; s < ctx->nranks; s++)
        for (int64_t t = 0; t < wl->T[s]; t++) {
            int64_t g = x->base[s] + t;
            if (x->mask[g] && !x->seen[g * K])
                bench_check_fail(c, "rank %d %s dispatch: token %d:%lld "
                                 "never arrived", ctx->rank, impl, s,
                                 (long long)t);
        }
}

static void verify_expert_major(const bench_ctx_t *ctx,
                                const epx_recv_t *recv, expect_t *x,
                                const char *impl, bench_check_t *c)
{
    const bench_workload_t *wl = ctx->wl;
    const int K = wl->topk;
    const int align = ctx->o->align;
    unsigned char *covered = calloc((size_t)recv->num_rows + 1, 1);
    if (!covered) {
        bench_check_fail(c, "rank %d %s dispatch: out of memory while "
                         "verifying", ctx->rank, impl);
        return;
    }
    if (!recv->expert_offsets) {
        bench_check_fail(c, "rank %d %s dispatch: expert-major without "
                         "expert_offsets", ctx->rank, impl);
        free(covered);
        return;
    }
    for (int j = 0; j < ctx->num_local; j++) {
        const int64_t off = recv->expert_offsets[j];
        /* low latency: every source's range, padding rows in between */
        const int64_t n = recv->capacity > 0
            ? (int64_t)ctx->nranks * recv->capacity : recv->expert_counts[j];
        const int32_t e = ctx->first_local + j;
        if (off < 0 || n < 0 || off + n > recv->num_rows || off % align) {
            bench_check_fail(c, "rank %d %s dispatch: expert %d segment "
                             "[%lld, +%lld) bad (num_rows %lld, align %d)",
                             ctx->rank, impl, e, (long long)off, (long long)n,
                             (long long)recv->num_rows, align);
            continue;
        }
        for (int64_t i = off; i < off + n; i++) {
            if (covered[i]++) {
                bench_check_fail(c, "rank %d %s dispatch: row %lld lies in "
                                 "two expert segments", ctx->rank, impl,
                                 (long long)i);
                continue;
            }
            if (recv->capacity > 0 && recv->src_rank[i] < 0)
                continue;   /* padding of a source's range */
            int64_t g = row_source(ctx, recv, x, i, impl, c);
            if (g < 0)
                continue;
            int32_t s = recv->src_rank[i], t = recv->src_token[i];
            int k = 0;
            while (k < K && wl->idx[s][(int64_t)t * K + k] != e)
                k++;
            if (k == K) {
                bench_check_fail(c, "rank %d %s dispatch: token %d:%d in the "
                                 "segment of expert %d, not one of its "
                                 "experts", ctx->rank, impl, s, t, e);
                continue;
            }
            if (x->seen[g * K + k]++) {
                bench_check_fail(c, "rank %d %s dispatch: token %d:%d "
                                 "received twice for expert %d", ctx->rank,
                                 impl, s, t, e);
                continue;
            }
            float w = wl->w[s][(int64_t)t * K + k];
            if (f32_bits(recv->topk_weights[i]) != f32_bits(w))
                bench_check_fail(c, "rank %d %s dispatch: token %d:%d expert "
                                 "%d weight %.9g, want %.9g", ctx->rank, impl,
                                 s, t, e, (double)recv->topk_weights[i],
                                 (double)w);
            check_row_x(ctx, recv, x, i, impl, c);
        }
    }
    for (int64_t i = 0; i < recv->num_rows; i++)
        if (!covered[i] && recv->src_rank[i] != -1)
            bench_check_fail(c, "rank %d %s dispatch: padding row %lld has "
                             "src_rank %d, want -1", ctx->rank, impl,
                             (long long)i, recv->src_rank[i]);
    free(covered);
    for (int s = 0; s < ctx->nranks; s++)
        for (int64_t t = 0; t < wl->T[s]; t++) {
            int64_t g = x->base[s] + t;
            for (int k = 0; k < K; k++)
                if ((x->mask[g] >> k & 1) && !x->seen[g * K + k])
                    bench_check_fail(c, "rank %d %s dispatch: token %d:%lld "
                                     "never arrived for expert %d", ctx->rank,
                                     impl, s, (long long)t,
                                     wl->idx[s][t * K + k]);
        }
}

void bench_verify_recv(const bench_ctx_t *ctx, const epx_recv_t *recv,
                       epx_layout_t layout, const char *impl,
                       bench_check_t *c)
{
    expect_t x;
    if (expect_build(ctx, &x) != 0) {
        bench_check_fail(c, "rank %d %s dispatch: out of memory while "
                         "verifying", ctx->rank, impl);
        expect_free(&x);
        return;
    }
    if (recv->num_local_experts != ctx->num_local ||
        recv->first_local_expert != ctx->first_local) {
        bench_check_fail(c, "rank %d %s dispatch: local experts %d..+%d, "
                         "placement says %d..+%d", ctx->rank, impl,
                         recv->first_local_expert, recv->num_local_experts,
                         ctx->first_local, ctx->num_local);
        expect_free(&x);
        return;
    }
    if (layout == EPX_LAYOUT_TOKEN_MAJOR)
        verify_token_major(ctx, recv, &x, impl, c);
    else
        verify_expert_major(ctx, recv, &x, impl, c);
    for (int j = 0; j < ctx->num_local; j++)
        if (recv->expert_counts[j] != x.counts[j])
            bench_check_fail(c, "rank %d %s dispatch: expert %d count %lld, "
                             "the routing sends %lld", ctx->rank, impl,
                             ctx->first_local + j,
                             (long long)recv->expert_counts[j],
                             (long long)x.counts[j]);
    for (int j = 0; recv->local_experts && j < ctx->num_local; j++)
        if (recv->local_experts[j] != ctx->first_local + j)
            bench_check_fail(c, "rank %d %s dispatch: local expert %d is "
                             "logical expert %d, the contiguous placement "
                             "says %d", ctx->rank, impl, j,
                             recv->local_experts[j], ctx->first_local + j);
    c->checked += recv->num_rows;
    expect_free(&x);
}

/*
 * With replicas the placement changes at run time, so instead of an
 * expectation per rank each received row is checked against its source:
 * the row bit for bit, and every (row, local slot) against the source's
 * routing through local_experts (the slot's logical expert must be one the
 * source chose, with its weight).  Tokens that never arrive, or arrive at
 * two replicas, show in the combined output (bench_verify_out).
 */
void bench_verify_recv_replicas(const bench_ctx_t *ctx,
                                const epx_recv_t *recv, epx_layout_t layout,
                                const char *impl, bench_check_t *c)
{
    const bench_workload_t *wl = ctx->wl;
    const int K = wl->topk, L = recv->num_local_experts;
    void *row = malloc((size_t)wl->hidden * wl->dsize);
    if (!row || !recv->local_experts) {
        bench_check_fail(c, "rank %d %s dispatch: %s", ctx->rank, impl,
                         row ? "no local_experts" : "out of memory");
        free(row);
        return;
    }
    expect_t x = { .row = row };
    for (int64_t i = 0; i < recv->num_rows; i++) {
        int32_t s = recv->src_rank[i], t = recv->src_token[i];
        if (layout == EPX_LAYOUT_EXPERT_MAJOR && s < 0)
            continue;   /* padding */
        if (s < 0 || s >= ctx->nranks || t < 0 || t >= wl->T[s]) {
            bench_check_fail(c, "rank %d %s dispatch: row %lld has source "
                             "%d:%d, which does not exist", ctx->rank, impl,
                             (long long)i, s, t);
            continue;
        }
        check_row_x(ctx, recv, &x, i, impl, c);
        if (layout != EPX_LAYOUT_TOKEN_MAJOR)
            continue;
        for (int k = 0; k < K; k++) {
            int32_t j = recv->topk_idx[i * K + k];
            int32_t e = wl->idx[s][(int64_t)t * K + k];
            float w = wl->w[s][(int64_t)t * K + k];
            if (j < 0)
                continue;
            if (j >= L || e != recv->local_experts[j] ||
                f32_bits(recv->topk_weights[i * K + k]) != f32_bits(w)) {
                bench_check_fail(c, "rank %d %s dispatch: token %d:%d choice "
                                 "%d: local slot %d (expert %d) weight %.9g, "
                                 "source chose expert %d weight %.9g",
                                 ctx->rank, impl, s, t, k, j,
                                 j < L ? recv->local_experts[j] : -1,
                                 (double)recv->topk_weights[i * K + k], e,
                                 (double)w);
                break;
            }
        }
    }
    for (int j = 0; layout == EPX_LAYOUT_EXPERT_MAJOR && j < L; j++) {
        const int64_t off = recv->expert_offsets[j], n = recv->expert_counts[j];
        if (off < 0 || n < 0 || off + n > recv->num_rows) {
            bench_check_fail(c, "rank %d %s dispatch: slot %d segment bad",
                             ctx->rank, impl, j);
            continue;
        }
        for (int64_t i = off; i < off + n; i++) {
            int32_t s = recv->src_rank[i], t = recv->src_token[i], k;
            if (s < 0 || s >= ctx->nranks || t < 0 || t >= wl->T[s])
                continue;   /* reported above */
            for (k = 0; k < K; k++)
                if (wl->idx[s][(int64_t)t * K + k] == recv->local_experts[j])
                    break;
            if (k == K) {
                bench_check_fail(c, "rank %d %s dispatch: token %d:%d in the "
                                 "segment of slot %d (expert %d), which it "
                                 "did not choose", ctx->rank, impl, s, t, j,
                                 recv->local_experts[j]);
                break;
            }
        }
    }
    c->checked += recv->num_rows;
    free(row);
}

void bench_verify_out(const bench_ctx_t *ctx, const void *out,
                      const char *impl, bench_check_t *c)
{
    const bench_workload_t *wl = ctx->wl;
    const int H = wl->hidden, K = wl->topk, r = ctx->rank;
    const double unit = bench_tolerance_unit(wl->dtype, K);
    const size_t rowb = (size_t)H * wl->dsize;
    bench_wire_t w;
    bench_wire_shape(wl->wire, H, wl->dsize, &w);
    float *xs = w.block ? malloc((size_t)H * sizeof(float)) : NULL;
    double *bmax = w.block ? malloc((size_t)w.nblocks * sizeof(double)) : NULL;
    if (w.block && (!xs || !bmax)) {
        free(xs);
        free(bmax);
        bench_check_fail(c, "rank %d %s combine: out of memory", r, impl);
        return;
    }
    for (int64_t t = 0; t < wl->T[r]; t++) {
        /* out = x * sum_k w_k (1 + e_k/E); the scales are positive, so
         * sum_k |w_k x (1 + e_k/E)| = |x| * sum_k |w_k| (1 + e_k/E). */
        double coef = 0, cabs = 0;
        for (int k = 0; k < K; k++) {
            int32_t e = wl->idx[r][t * K + k];
            if (e < 0)
                continue;
            double w = wl->w[r][t * K + k];
            double s = 1.0 + (double)e / wl->experts;
            coef += w * s;
            cabs += fabs(w) * s;
        }
        const char *xr = (const char *)ctx->x + (size_t)t * rowb;
        const char *orow = (const char *)out + (size_t)t * rowb;
        for (int h = 0; xs && h < H; h++)
            xs[h] = load(wl, xr, h);
        const double rmax = xs ? bench_wire_maxima(&w, xs, H, bmax) : 0;
        for (int h = 0; h < H; h++) {
            double xv = load(wl, xr, h);
            double ref = xv * coef, got = load(wl, orow, h);
            double tol = unit * fabs(xv) * cabs;
            /* Quantized: the experts saw x within the format's bound q,
             * then rounded to bf16 (2^-8 relative, with the error). */
            if (xs) {
                double q = bench_wire_bound(&w, bmax, xs, h, rmax);
                tol = (unit + 0x1p-8) * (fabs(xv) + q) * cabs + q * cabs;
            }
            if (!(fabs(got - ref) <= tol)) {
                bench_check_fail(c, "rank %d %s combine: out[%lld][%d] = "
                                 "%.9g, want %.9g (tolerance %.3g)", r, impl,
                                 (long long)t, h, got, ref, tol);
                break;   /* one report per token */
            }
        }
    }
    c->checked += wl->T[r];
    free(xs);
    free(bmax);
}
