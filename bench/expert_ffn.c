/*
 * --overlap's expert: the FFN of a DeepSeek-V3 routed expert, scaled down
 * (hidden H, intermediate F, DeepSeek-V3: 7168 and 2048), on the rows a
 * local expert received: y = (silu(x W1) * (x W3)) W2 in fp32, x converted
 * from the wire dtype; W1 and W3 side by side as one H x 2F matrix, so two
 * OpenBLAS sgemm calls per expert.  Real work of the right shape; its
 * outputs stay in scratch, because combine must carry values the bench
 * can check (the synthetic expert, expert.c).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "bench.h"
#include "util/util.h"

int bench_ffn_size(const bench_opts_t *o)
{
    if (o->ffn > 0)
        return o->ffn;
    int f = (2 * o->hidden / 7 + 7) / 8 * 8;
    return f > 8 ? f : 8;
}

#ifdef EPX_HAVE_OPENBLAS
#include <cblas.h>

struct bench_ffn {
    int H, F, K, nl;
    epx_dtype_t dt;
    float *w13;                /* [nl][H][2F] */
    float *w2;                 /* [nl][F][H] */
    float *x, *g, *y;          /* [cap][H], [cap][2F], [cap][H] */
    int64_t cap;
};

int bench_ffn_available(void) { return 1; }

void bench_ffn_free(bench_ffn_t *f)
{
    if (!f)
        return;
    free(f->w13);
    free(f->w2);
    free(f->x);
    free(f->g);
    free(f->y);
    free(f);
}

/* Weights: uniform in [-1, 1) / sqrt(fan-in), from the seed and the
 * global expert id. */
static void init_weights(float *w, size_t n, uint64_t seed, int expert,
                         int which, double fan_in)
{
    uint64_t st = bench_mix(seed, 0xff0000ull + (uint64_t)which,
                            (uint64_t)expert);
    float s = (float)(1.0 / sqrt(fan_in));
    for (size_t i = 0; i < n; i++)
        w[i] = ((float)(bench_rng_next(&st) >> 40) * 0x1p-23f - 1.0f) * s;
}

bench_ffn_t *bench_ffn_new(const bench_ctx_t *ctx, int nl)
{
    openblas_set_num_threads(ctx->o->blas_threads);
    bench_ffn_t *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    f->H = ctx->wl->hidden;
    f->F = bench_ffn_size(ctx->o);
    f->K = ctx->wl->topk;
    f->nl = nl;
    f->dt = ctx->wl->dtype;
    size_t hf = (size_t)f->H * (size_t)f->F, n = nl > 0 ? (size_t)nl : 1;
    f->w13 = malloc(sizeof(float) * 2 * hf * n);
    f->w2 = malloc(sizeof(float) * hf * n);
    if (!f->w13 || !f->w2) {
        bench_ffn_free(f);
        return NULL;
    }
    for (int j = 0; j < nl; j++) {
        int e = ctx->first_local + j;
        init_weights(f->w13 + 2 * hf * (size_t)j, 2 * hf, ctx->wl->seed, e, 0,
                     f->H);
        init_weights(f->w2 + hf * (size_t)j, hf, ctx->wl->seed, e, 1, f->F);
    }
    return f;
}

static int ensure(bench_ffn_t *f, int64_t rows)
{
    if (rows <= f->cap)
        return 0;
    size_t r = (size_t)rows, H = (size_t)f->H, F = (size_t)f->F;
    float *x = realloc(f->x, sizeof(float) * r * H);
    if (x)
        f->x = x;
    float *g = realloc(f->g, sizeof(float) * r * 2 * F);
    if (g)
        f->g = g;
    float *y = realloc(f->y, sizeof(float) * r * H);
    if (y)
        f->y = y;
    if (!x || !g || !y)
        return -1;
    f->cap = rows;
    return 0;
}

static void load_row(const bench_ffn_t *f, const epx_recv_t *rv, int64_t i,
                     float *dst)
{
    if (f->dt == EPX_DTYPE_BF16) {
        const uint16_t *s = (const uint16_t *)rv->x.data + (size_t)i * (size_t)f->H;
        for (int h = 0; h < f->H; h++)
            dst[h] = epx__bf16_to_f32(s[h]);
    } else {
        memcpy(dst, (const float *)rv->x.data + (size_t)i * (size_t)f->H,
               sizeof(float) * (size_t)f->H);
    }
}

int64_t bench_ffn_expert(bench_ffn_t *f, const epx_recv_t *rv,
                         epx_layout_t layout, int j)
{
    const int H = f->H, F = f->F, K = f->K;
    int64_t n = rv->expert_counts[j];
    if (n <= 0)
        return 0;
    if (ensure(f, n) != 0)
        return -1;
    int64_t got = 0;
    if (layout == EPX_LAYOUT_EXPERT_MAJOR) {
        for (int64_t i = 0; i < n; i++)
            load_row(f, rv, rv->expert_offsets[j] + i, f->x + (size_t)i * H);
        got = n;
    } else {
        for (int64_t i = 0; i < rv->num_rows && got < n; i++)
            for (int k = 0; k < K; k++)
                if (rv->topk_idx[i * K + k] == j) {
                    load_row(f, rv, i, f->x + (size_t)got++ * H);
                    break;
                }
    }
    size_t hf = (size_t)H * (size_t)F;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)got, 2 * F, H,
                1.0f, f->x, H, f->w13 + 2 * hf * (size_t)j, 2 * F, 0.0f, f->g,
                2 * F);
    for (int64_t i = 0; i < got; i++) {
        float *g = f->g + (size_t)i * 2 * (size_t)F;
        for (int c = 0; c < F; c++)
            g[c] = g[c] / (1.0f + expf(-g[c])) * g[F + c];
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)got, H, F,
                1.0f, f->g, 2 * F, f->w2 + hf * (size_t)j, H, 0.0f, f->y, H);
    return got;
}

#else  /* no OpenBLAS: --overlap is refused when parsing the options */

int bench_ffn_available(void) { return 0; }
bench_ffn_t *bench_ffn_new(const bench_ctx_t *ctx, int nl)
{
    (void)ctx; (void)nl;
    return NULL;
}
void bench_ffn_free(bench_ffn_t *f) { (void)f; }
int64_t bench_ffn_expert(bench_ffn_t *f, const epx_recv_t *rv,
                         epx_layout_t layout, int j)
{
    (void)f; (void)rv; (void)layout; (void)j;
    return -1;
}
#endif
