/*
 * Low-latency mode on both executors, by the same code and against the
 * same reference: host ranks always, device ranks where the build has
 * CUDA and the machine a GPU (as tests/moe/test_executors.c does for
 * throughput mode).  Thread ranks (2 and 4): eager calls over both
 * buffers with drops counted by epx_moe_check; two micro-batches in
 * flight; on the device, dispatch and combine captured into one CUDA
 * graph and replayed with new inputs each time (same shapes).  Every
 * call's counts, row sources, received rows and combine output are
 * compared bit for bit with ref_dispatch_ll and the combine of the kept
 * routing.  An overflow without EPX_MOE_LL_DROP: the host refuses the
 * call (EPX_ERR_RANGE on every rank), the device reports it from
 * epx_moe_check.  The quantized wires the same way: data, block scales
 * and row scales of every kept row against the reference's rows quantized
 * by the reference quantizer, and y inside the buffers refused.  The
 * load statistics of every call (on the device recorded by the kernels,
 * captured calls too, and read by epx_moe_stats) against the routing.
 * The device's kernel set is EPX_CUDA_KERNELS's (bench/gpu-run.sh runs
 * both: classic, and fused, low latency in one kernel per operation);
 * on the device also a call released before its recv (abandoned), then
 * both buffers again.  epx_dispatch_poll (each expert's rows read as soon
 * as a poll says it is ready, counts of the others 0) and a bad argument
 * on one rank (its peers' calls fail, without waiting for the timeout)
 * on both executors: ll_poll_rank.
 * Elastic engines (EPX_MOE_ELASTIC, `nlost`): some
 * experts have no slot, an entry naming one is sent nowhere (the
 * reference sees -1), the lost mask is checked entry for entry and the
 * statistics count the lost demand per logical expert.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>
#include <sys/wait.h>
#include <unistd.h>
#include "config.h"
#ifdef EPX_HAVE_CUDA
#include <cuda_runtime.h>
#endif

#include "common/epx_test.h"
#include "common/thread_ranks.h"
#include "common/xmem.h"
#include "ref/ref.h"
#include "ref/ref_quant.h"
#include "epx/cuda.h"

typedef struct llcase {
    int R, E, K, H, maxT, cap;
    epx_dtype_t dtype;
    int drop;        /* EPX_MOE_LL_DROP */
    int skew;        /* choices on few experts: ranges overflow */
    epx_wire_t wire;
    int host;        /* set by run_case: the executor, host or device */
    int nccl;        /* device ranks over the NCCL backend, a GPU each */
} llcase_t;

#define MEM(call) CHECKF((call) == 0, "%s failed", #call)

/* Bytes of an element of the engine dtype. */
static size_t esz(epx_dtype_t dt)
{
    return dt == EPX_DTYPE_BF16 ? 2 : dt == EPX_DTYPE_FP64 ? 8 : 4;
}

/* FP64 engines: expert outputs with every bit of the double's mantissa
 * in use, so that a sum taken or rounded in fp32 anywhere differs. */
static void y64_fn(void *ctx, int src, int64_t t, int who, double *row)
{
    const int H = *(const int *)ctx;
    for (int h = 0; h < H; h++) {
        uint64_t v = epxt_hash(epxt_seed() ^ 0x64, (uint64_t)src, (uint64_t)t,
                               (uint64_t)who, (uint64_t)h);
        double u = (double)(v >> 11) * (1.0 / 9007199254740992.0);
        row[h] = (u * 8.0 - 4.0) * (double)(1 << (v & 7)) * 0.125;
    }
}

/* Elastic (EPX_MOE_ELASTIC): experts 1, 3, .. (nlost of them) have no
 * slot; the live ones hold one slot each, in order, so the engine has E -
 * nlost slots (a multiple of the ranks).  Set by `elastic` around its
 * cases; 0: no slots, the units are the experts. */
static int nlost;

static int is_lost(const llcase_t *c, int64_t e)
{
    return nlost && e >= 0 && e < c->E && e % 2 == 1 && e < 2 * nlost;
}

/* The units the kernels route to: the experts, or the live ones' slots. */
static int units(const llcase_t *c)
{
    return c->E - nlost;
}

/* Slot of logical expert e (-1: lost, or -1 itself): the live experts
 * below it. */
static int64_t unit_of(const llcase_t *c, int64_t e)
{
    if (!nlost || e < 0)
        return e;
    if (is_lost(c, e))
        return -1;
    int64_t u = 0;
    for (int64_t f = 0; f < e; f++)
        u += !is_lost(c, f);
    return u;
}

static void y_fn(void *ctx, int src, int64_t t, int who, float *row)
{
    const int H = *(const int *)ctx;
    for (int h = 0; h < H; h++)
        row[h] = (float)((int)(epxt_hash(epxt_seed(), (uint64_t)src, (uint64_t)t,
                                         (uint64_t)who, (uint64_t)h) % 33) - 16) / 8.0f;
}

/* Rank r's input of call `call`: T fixed per rank (a graph keeps shapes),
 * distinct experts per token. */
static void gen(const llcase_t *c, int r, int call, ref_tokens_t *t,
                int64_t *idx, float *w, void *x)
{
    epxt_rng_t g = { epxt_hash(epxt_seed(), (uint64_t)r, 23, (uint64_t)call, 0) };
    const int64_t T = c->maxT - r % 3;
    const int span = c->skew && c->K + 1 < c->E ? c->K + 1 : c->E;
    for (int64_t i = 0; i < T; i++)
        for (int k = 0; k < c->K; k++) {
            int64_t e;
            int again;
            do {
                e = epxt_below(&g, 6) == 0 ? -1 : (int64_t)epxt_below(&g, (uint64_t)span);
                again = 0;
                for (int k2 = 0; k2 < k && e >= 0; k2++)
                    again |= idx[i * c->K + k2] == e;
            } while (again);
            idx[i * c->K + k] = e;
            w[i * c->K + k] = (float)epxt_below(&g, 1000) / 997.0f;
        }
    for (int64_t i = 0; i < T * c->H; i++)
        if (c->dtype == EPX_DTYPE_FP64)   /* the low mantissa bits too */
            ((double *)x)[i] = (double)((int)epxt_below(&g, 2001) - 1000) /
                               64.0 + (double)epxt_below(&g, 1u << 30) *
                               0x1p-52;
        else
            ref_store(c->dtype, x, i,
                      (float)((int)epxt_below(&g, 2001) - 1000) / 64.0f);
    *t = (ref_tokens_t){ T, x, idx, w, 0 };
}

typedef struct rank_bufs {
    void *dx, *didx, *dw, *dy, *dout, *dxcopy, *dscopy, *dgcopy;
    void *dlost;                /* elastic: the lost mask [maxT][K] */
    int64_t *hlog;              /* the logical ids last staged here */
    const xmem_t *xm;           /* where they live, the rank's stream */
} rank_bufs_t;

/* Copies of the received rows, scales and row scales on the rank's stream
 * (inside a captured graph too): the buffer is reused by a later call. */
static int copy_rows(const epx_recv_t *rv, const rank_bufs_t *b,
                     const ref_recv_t *want)
{
    const size_t n = (size_t)rv->num_rows;
    MEM(mem_copy(b->xm, b->dxcopy, rv->x.data, n * want->x_row));
    if (rv->x_scales.data)
        MEM(mem_copy(b->xm, b->dscopy, rv->x_scales.data, n * want->scale_row));
    if (rv->x_global_scale)
        MEM(mem_copy(b->xm, b->dgcopy, rv->x_global_scale, n * sizeof(float)));
    return 0;
}

/* Inputs of every rank for `call`; this rank's uploaded, its y built from
 * the reference's rows.  Returns the reference's view in *want. */
static int stage(const llcase_t *c, int R, int me, int call, rank_bufs_t *b,
                 ref_tokens_t *src, int64_t **idx, float **w, void **x,
                 ref_recv_t *want, int64_t *dropped)
{
    const size_t es = esz(c->dtype);
    for (int r = 0; r < R; r++)
        gen(c, r, call, &src[r], idx[r], w[r], x[r]);
    /* the engine gets the logical ids (kept for the lost mask), the
     * reference the units they route to */
    MEM(mem_put(b->xm, b->didx, idx[me], (size_t)(src[me].T * c->K) * 8));
    memcpy(b->hlog, idx[me], sizeof(int64_t) * (size_t)(src[me].T * c->K));
    for (int r = 0; r < R; r++)
        for (int64_t i = 0; i < src[r].T * c->K; i++)
            idx[r][i] = unit_of(c, idx[r][i]);
    ref_cfg_t cfg = { R, units(c), c->K, c->H, c->dtype,
                      EPX_LAYOUT_EXPERT_MAJOR, 1, c->wire };
    CHECK(ref_dispatch_ll(&cfg, src, me, c->cap, want, dropped) == 0);
    const int64_t T = src[me].T, n = want->num_rows;
    MEM(mem_put(b->xm, b->dx, x[me], (size_t)(T * c->H) * es));
    MEM(mem_put(b->xm, b->dw, w[me], (size_t)(T * c->K) * 4));
    unsigned char *hy = calloc((size_t)(n * c->H + 1), es);
    float *row = malloc(sizeof(float) * (size_t)c->H);
    int H = c->H;
    for (int64_t i = 0; i < n; i++) {
        if (want->src_rank[i] < 0)
            continue;
        if (c->dtype == EPX_DTYPE_FP64) {
            y64_fn(&H, want->src_rank[i], want->src_token[i],
                   want->first_local + want->row_expert[i],
                   (double *)hy + i * c->H);
            continue;
        }
        y_fn(&H, want->src_rank[i], want->src_token[i],
             want->first_local + want->row_expert[i], row);
        for (int h = 0; h < c->H; h++)
            ref_store(c->dtype, hy, i * c->H + h, row[h]);
    }
    MEM(mem_put(b->xm, b->dy, hy, (size_t)(n * c->H) * es));
    free(hy);
    free(row);
    return 0;
}

/* After a call: counts, sources, rows (with their scales; from the
 * copies made on the stream) and the combine output against the
 * reference. */
static int verify(const llcase_t *c, int R, int me, const epx_recv_t *rv,
                  const rank_bufs_t *b, const ref_tokens_t *src,
                  const ref_recv_t *want, int64_t dropped)
{
    const int64_t n = want->num_rows, T = src[me].T;
    const size_t xr = want->x_row, sr = want->scale_row;
    const int q = c->wire != EPX_WIRE_NATIVE;
    CHECK(rv->num_rows == n && rv->capacity == c->cap);
    /* the host counts the drops as it receives; the device cannot know
     * them before the data moved (epx_moe_check counts them) */
    CHECKF(rv->num_dropped == (c->host ? dropped : -1), "num_dropped %lld, "
           "want %lld", (long long)rv->num_dropped,
           (long long)(c->host ? dropped : -1));
    ref_wire_t shape;   /* the format's shape, from the reference */
    CHECK(ref_wire_shape(c->wire, c->H, &shape) == (q ? 0 : -1));
    CHECK(rv->x.rows == n && rv->x.cols == (q ? shape.x_cols : c->H));
    CHECK(rv->x.dtype == (q ? shape.x_dtype : c->dtype));
    CHECK(q == (rv->x_scales.data != NULL));
    CHECK(!q || (rv->x_scales.rows == n &&
                 rv->x_scales.cols == (int64_t)shape.nblocks &&
                 rv->x_scales.dtype == shape.scale_dtype));
    CHECK((c->wire == EPX_WIRE_NVFP4) == (rv->x_global_scale != NULL));
    int64_t *counts = calloc((size_t)want->num_local + 1, sizeof(int64_t));
    int32_t *srank = calloc((size_t)n + 1, sizeof(int32_t));
    unsigned char *hx = calloc((size_t)n * xr + 1, 1);
    unsigned char *hs = calloc((size_t)n * sr + 1, 1);
    float *hg = calloc((size_t)n + 1, sizeof(float));
    const int f64 = c->dtype == EPX_DTYPE_FP64;   /* out FP64, else FP32 */
    const size_t oes = f64 ? 8 : 4;
    char *got = calloc((size_t)(T * c->H + 1), oes);
    char *exp = calloc((size_t)(T * c->H + 1), oes);
    const xmem_t *xm = b->xm;
    MEM(mem_get(xm, counts, rv->expert_counts,
                sizeof(int64_t) * (size_t)want->num_local));
    MEM(mem_get(xm, srank, rv->src_rank, sizeof(int32_t) * (size_t)n));
    MEM(mem_get(xm, hx, b->dxcopy, (size_t)n * xr));
    if (q)
        MEM(mem_get(xm, hs, b->dscopy, (size_t)n * sr));
    if (rv->x_global_scale)
        MEM(mem_get(xm, hg, b->dgcopy, sizeof(float) * (size_t)n));
    MEM(mem_get(xm, got, b->dout, oes * (size_t)(T * c->H)));
    for (int j = 0; j < want->num_local; j++) {
        CHECKF(counts[j] == want->counts[j], "expert %d: count %lld, want %lld", j, (long long)counts[j], (long long)want->counts[j]);
        CHECK(rv->expert_offsets[j] == want->offsets[j]);
    }
    CHECK(memcmp(srank, want->src_rank, 4 * (size_t)n) == 0);
    for (int64_t i = 0; i < n; i++) {
        if (want->src_rank[i] < 0)
            continue;
        CHECKF(memcmp(hx + i * xr, want->x + i * xr, xr) == 0,
               "row %lld differs (wire %d)", (long long)i, (int)c->wire);
        CHECK(!q || memcmp(hs + i * sr, want->scales + i * sr, sr) == 0);
        CHECK(!rv->x_global_scale || memcmp(hg + i, want->gscale + i, 4) == 0);
    }
    ref_cfg_t cfg = { R, units(c), c->K, c->H, c->dtype,
                      EPX_LAYOUT_EXPERT_MAJOR, 1, c->wire };
    if (nlost) {   /* 1 exactly where the logical id is lost */
        uint8_t *lm = malloc((size_t)(T * c->K + 1));
        MEM(mem_get(xm, lm, b->dlost, (size_t)(T * c->K)));
        for (int64_t i = 0; i < T * c->K; i++)
            CHECKF(lm[i] == is_lost(c, b->hlog[i]), "lost mask entry %lld "
                   "(expert %lld): %d (%s executor)", (long long)i,
                   (long long)b->hlog[i], lm[i], c->host ? "host" : "device");
        free(lm);
    }
    int64_t *kidx = malloc(sizeof(int64_t) * (size_t)(T * c->K + 1));
    ref_ll_kept(&cfg, &src[me], c->cap, kidx);
    ref_tokens_t kept = { T, src[me].x, kidx, src[me].w, 0 };
    int H = c->H;
    if (f64)
        CHECK(ref_combine_f64(&cfg, me, &kept, 0, y64_fn, &H,
                              (double *)exp) == 0);
    else
        CHECK(ref_combine(&cfg, me, &kept, 0, y_fn, &H, EPX_DTYPE_FP32,
                          exp) == 0);
    CHECK(memcmp(got, exp, oes * (size_t)(T * c->H)) == 0);
    free(counts), free(srank), free(hx), free(hs), free(hg), free(got);
    free(exp), free(kidx);
    return 0;
}

/* Load statistics after the calls `calls[0..n)` (in dispatch order):
 * this rank's choices of each expert (dropped ones too: the demand), the
 * window since the reset, the physical units (the experts here) and the
 * decayed load (stats_decay 0.9, in call order), as every executor must
 * record them (on the device: recorded by the kernels, read back by
 * epx_moe_stats). */
static int check_stats(const llcase_t *c, epx_moe_t *m, int me,
                       const int *calls, int n)
{
    const size_t es = esz(c->dtype);
    int64_t *idx = calloc((size_t)(c->maxT * c->K + 1), 8);
    float *w = calloc((size_t)(c->maxT * c->K + 1), 4);
    void *x = calloc((size_t)(c->maxT * c->H + 1), es);
    int64_t *win = calloc((size_t)c->E, sizeof(int64_t));
    int64_t *phys = calloc((size_t)c->E, sizeof(int64_t));
    double *dec = calloc((size_t)c->E, sizeof(double));
    for (int i = 0; i < n; i++) {
        ref_tokens_t t;
        int32_t *cnt = calloc((size_t)c->E, sizeof(int32_t));
        gen(c, me, calls[i], &t, idx, w, x);
        /* the demand per logical expert, lost ones included; per unit
         * only what was routed */
        for (int64_t j = 0; j < t.T * c->K; j++)
            if (idx[j] >= 0) {
                cnt[idx[j]]++;
                if (unit_of(c, idx[j]) >= 0)
                    phys[unit_of(c, idx[j])]++;
            }
        for (int e = 0; e < c->E; e++) {
            win[e] += cnt[e];
            dec[e] = 0.9 * dec[e] + (double)cnt[e];
        }
        free(cnt);
    }
    epx_moe_stats_t ms = { .struct_size = sizeof(ms) };
    CHECK_OK(epx_moe_stats(m, 0, &ms));
    CHECKF(ms.dispatches == n, "statistics: %lld dispatches, want %d",
           (long long)ms.dispatches, n);
    CHECK(ms.num_slots == units(c));
    for (int u = 0; u < units(c); u++)
        CHECKF(ms.physical[u] == phys[u], "statistics: unit %d: %lld, want "
               "%lld", u, (long long)ms.physical[u], (long long)phys[u]);
    for (int e = 0; e < c->E; e++) {
        CHECKF(ms.window[e] == win[e], "statistics: expert %d: %lld, want "
               "%lld", e, (long long)ms.window[e], (long long)win[e]);
        CHECKF(memcmp(&ms.decayed[e], &dec[e], sizeof(double)) == 0,
               "statistics: expert %d decayed %.17g, want %.17g", e,
               ms.decayed[e], dec[e]);
    }
    /* read once: a second read adds nothing */
    CHECK_OK(epx_moe_stats(m, 0, &ms));
    CHECK(ms.dispatches == n && (c->E == 0 || ms.window[0] == win[0]));
    free(idx), free(w), free(x), free(win), free(phys), free(dec);
    return 0;
}

/* Does this rank's own routing of `call` put more than cap choices on
 * one expert?  The device counts a call whose own layout is good (its
 * kernels cannot know that a peer's failed). */
static int own_over(const llcase_t *c, int me, int call)
{
    const size_t es = esz(c->dtype);
    int64_t *idx = calloc((size_t)(c->maxT * c->K + 1), 8);
    float *w = calloc((size_t)(c->maxT * c->K + 1), 4);
    void *x = calloc((size_t)(c->maxT * c->H + 1), es);
    int32_t *cnt = calloc((size_t)c->E, sizeof(int32_t));
    ref_tokens_t t;
    int over = 0;
    gen(c, me, call, &t, idx, w, x);
    for (int64_t j = 0; j < t.T * c->K; j++)
        if (unit_of(c, idx[j]) >= 0 && ++cnt[unit_of(c, idx[j])] > c->cap)
            over = 1;
    free(idx), free(w), free(x), free(cnt);
    return over;
}

/* The case's engine on this rank (collective). */
static int ll_create(epx_comm_t *comm, const llcase_t *c, epx_moe_t **m)
{
    epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
    p.hidden = c->H;
    p.num_experts = c->E;
    p.topk = c->K;
    p.max_tokens_per_rank = c->maxT;
    p.dtype = c->dtype;
    p.layout = EPX_LAYOUT_EXPERT_MAJOR;
    p.mode = EPX_MODE_LOW_LATENCY;
    p.ll_capacity = c->cap;
    p.ll_buffers = 2;
    p.flags = (c->drop ? EPX_MOE_LL_DROP : 0u) |
              (nlost ? EPX_MOE_ELASTIC : 0u);
    p.num_slots = nlost ? units(c) : 0;
    p.wire = c->wire;
    p.device = c->host ? EPX_DEVICE_HOST : 0;
    if (!c->host && c->nccl) {
        const int me = epx_comm_rank(comm);
        p.device = me;   /* NCCL: a GPU of its own per rank */
        p.gpu_backend = EPX_GPU_BACKEND_NCCL;
#ifdef EPX_HAVE_CUDA
        MEM(cudaSetDevice(me));   /* the buffers below on it too */
#endif
    }
    CHECK_OK(epx_moe_create(comm, &p, m));
    return 0;
}

/* One micro-batch's buffers on this rank (xm's memory), sized for the
 * case; rows: the largest receive. */
static int bufs_alloc(const llcase_t *c, xmem_t *xm, int64_t rows,
                      rank_bufs_t *b)
{
    const size_t es = esz(c->dtype);
    b->xm = xm;
    MEM(mem_alloc(xm, &b->dx, (size_t)(c->maxT * c->H + 1) * es));
    MEM(mem_alloc(xm, &b->didx, (size_t)(c->maxT * c->K + 1) * 8));
    MEM(mem_alloc(xm, &b->dw, (size_t)(c->maxT * c->K + 1) * 4));
    MEM(mem_alloc(xm, &b->dy, (size_t)(rows * c->H + 1) * es));
    MEM(mem_alloc(xm, &b->dxcopy, (size_t)(rows * c->H + 1) * es));
    MEM(mem_alloc(xm, &b->dscopy, (size_t)(rows * c->H + 1) * 4));
    MEM(mem_alloc(xm, &b->dgcopy, (size_t)(rows + 1) * 4));
    MEM(mem_alloc(xm, &b->dout, (size_t)(c->maxT * c->H + 1) * 8)); /* FP64 */
    MEM(mem_alloc(xm, &b->dlost, (size_t)(c->maxT * c->K + 1)));
    b->hlog = calloc((size_t)(c->maxT * c->K + 1), sizeof(int64_t));
    CHECK(b->hlog != NULL);
    return 0;
}

static void bufs_free(rank_bufs_t *b)
{
    const xmem_t *xm = b->xm;
    mem_free(xm, b->dx), mem_free(xm, b->didx), mem_free(xm, b->dw);
    mem_free(xm, b->dy), mem_free(xm, b->dxcopy), mem_free(xm, b->dscopy);
    mem_free(xm, b->dgcopy), mem_free(xm, b->dout), mem_free(xm, b->dlost);
    free(b->hlog);
}

/* Every rank's inputs of a call, for the reference (stage). */
typedef struct ins {
    ref_tokens_t *src;
    int64_t **idx;
    float **w;
    void **x;
} ins_t;

static int ins_alloc(const llcase_t *c, int R, ins_t *in)
{
    const size_t es = esz(c->dtype);
    in->src = calloc((size_t)R, sizeof(*in->src));
    in->idx = calloc((size_t)R, sizeof(*in->idx));
    in->w = calloc((size_t)R, sizeof(*in->w));
    in->x = calloc((size_t)R, sizeof(*in->x));
    CHECK(in->src && in->idx && in->w && in->x);
    for (int r = 0; r < R; r++) {
        in->idx[r] = calloc((size_t)(c->maxT * c->K + 1), 8);
        in->w[r] = calloc((size_t)(c->maxT * c->K + 1), 4);
        in->x[r] = calloc((size_t)(c->maxT * c->H + 1), es);
        CHECK(in->idx[r] && in->w[r] && in->x[r]);
    }
    return 0;
}

static void ins_free(int R, ins_t *in)
{
    for (int r = 0; r < R; r++)
        free(in->idx[r]), free(in->w[r]), free(in->x[r]);
    free(in->src), free(in->idx), free(in->w), free(in->x);
}

static int ll_rank(epx_comm_t *comm, void *arg)
{
    const llcase_t *c = arg;
    const int R = epx_comm_size(comm), me = epx_comm_rank(comm);
    epx_moe_t *m = NULL;
    CHECK_CALL(ll_create(comm, c, &m));
    if (nlost) {   /* the live experts, one slot each */
        int32_t *p2l = malloc(sizeof(int32_t) * (size_t)units(c));
        for (int e = 0; e < c->E; e++)
            if (unit_of(c, e) >= 0)
                p2l[unit_of(c, e)] = e;
        CHECK_OK(epx_moe_set_placement(m, 0, p2l, EPX_REPLICA_LOCAL_FIRST));
        free(p2l);
    }
    xmem_t xm = { !c->host, NULL };
    MEM(mem_stream_create(&xm));
    const int64_t rows = (int64_t)(c->E / R + 1) * R * c->cap;
    /* b: the calls below; b2 and src2...: a second micro-batch in flight
     * beside the first (every buffer allocated before the first call) */
    rank_bufs_t b, b2;
    CHECK_CALL(bufs_alloc(c, &xm, rows, &b));
    CHECK_CALL(bufs_alloc(c, &xm, rows, &b2));
    ins_t in1, in2;
    CHECK_CALL(ins_alloc(c, R, &in1));
    CHECK_CALL(ins_alloc(c, R, &in2));
    ref_tokens_t *src = in1.src, *src2 = in2.src;
    int64_t **idx = in1.idx, **idx2 = in2.idx;
    float **w = in1.w, **w2 = in2.w;
    void **x = in1.x, **x2 = in2.x;
    const int64_t T = c->maxT - me % 3;
    epx_handle_t *h = NULL;
    epx_dispatch_args_t a = EPX_DISPATCH_ARGS_INIT;
    a.x = (epx_tensor_t){ b.dx, c->dtype, T, c->H };
    a.topk_idx = (epx_tensor_t){ b.didx, EPX_DTYPE_INT64, T, c->K };
    a.topk_weights = (epx_tensor_t){ b.dw, EPX_DTYPE_FP32, T, c->K };
    a.stream = xm.stream;
    a.lost = nlost ? b.dlost : NULL;
    const epx_dtype_t odt = c->dtype == EPX_DTYPE_FP64 ? EPX_DTYPE_FP64
                                                        : EPX_DTYPE_FP32;
    epx_tensor_t out = { b.dout, odt, T, c->H };
    epx_recv_t rv = { .struct_size = sizeof(rv) };
    ref_recv_t want;
    int64_t dropped = 0, got_dropped = -1;
    int calls[16], ncalls = 0;   /* recorded in the statistics */

    if (!c->drop && c->skew && c->host) {
        /* Overflow without DROP on the host: the call fails on every rank
         * (the rank that overflowed, the others from its header). */
        CHECK_CALL(stage(c, R, me, 0, &b, src, idx, w, x, &want, &dropped));
        epx_status_t st = epx_dispatch_send(m, &a, &h);
        if (st == EPX_OK)
            st = epx_dispatch_recv(m, h, &rv);
        CHECKF(st == EPX_ERR_RANGE, "overflow: %s (%s)", epx_status_str(st),
               epx_last_error());
        epx_handle_release(h);
        h = NULL;
        CHECK_OK(epx_moe_check(m, NULL));
        ref_recv_free(&want);
        goto done;
    }
    if (!c->drop && c->skew) {
        /* Overflow without DROP on the device: every rank's check says
         * EPX_ERR_RANGE. */
        CHECK_CALL(stage(c, R, me, 0, &b, src, idx, w, x, &want, &dropped));
        CHECK_OK(epx_dispatch_send(m, &a, &h));
        CHECK_OK(epx_dispatch_recv(m, h, &rv));
        epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
        ca.y = (epx_tensor_t){ b.dy, c->dtype, rv.num_rows, c->H };
        CHECK_OK(epx_combine_send(m, h, &ca));
        CHECK_OK(epx_combine_recv(m, h, &out));
        epx_handle_release(h);
        h = NULL;
        CHECK_ST(epx_moe_check(m, NULL), EPX_ERR_RANGE);
        CHECK_OK(epx_moe_check(m, NULL));
        ref_recv_free(&want);
        if (!own_over(c, me, 0))
            calls[ncalls++] = 0;
        goto done;
    }
    /* Eager: three calls (buffers 0, 1, 0). */
    for (int call = 0; call < 3; call++) {
        CHECK_CALL(stage(c, R, me, call, &b, src, idx, w, x, &want, &dropped));
        CHECK_OK(epx_dispatch_send(m, &a, &h));
        CHECK_OK(epx_dispatch_recv(m, h, &rv));
        MEM(mem_sync(&xm));
        epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
        if (c->wire != EPX_WIRE_NATIVE && call == 0) {
            /* y over the buffers: refused, nothing consumed */
            ca.y = (epx_tensor_t){ (void *)rv.x.data, c->dtype, rv.num_rows,
                                   c->H };
            CHECK_ST(epx_combine_send(m, h, &ca), EPX_ERR_INVALID);
        }
        ca.y = (epx_tensor_t){ b.dy, c->dtype, rv.num_rows, c->H };
        CHECK_CALL(copy_rows(&rv, &b, &want));
        CHECK_OK(epx_combine_send(m, h, &ca));
        CHECK_OK(epx_combine_recv(m, h, &out));
        CHECK_OK(epx_moe_check(m, &got_dropped));
        CHECKF(got_dropped == dropped, "epx_moe_check: %lld dropped, want "
               "%lld", (long long)got_dropped, (long long)dropped);
        /* the recv's counts belong to the handle: read before release */
        CHECK_CALL(verify(c, R, me, &rv, &b, src, &want, dropped));
        epx_handle_release(h);
        h = NULL;
        ref_recv_free(&want);
        calls[ncalls++] = call;
    }
    /* Two micro-batches in flight (ll_buffers 2): both dispatched and
     * received, then combined in dispatch order; the second combined
     * first is refused with nothing queued. */
    {
        int64_t dropped2 = 0;
        ref_recv_t want2;
        epx_handle_t *h2 = NULL;
        epx_dispatch_args_t a2 = a;
        a2.x.data = b2.dx;
        a2.topk_idx.data = b2.didx;
        a2.topk_weights.data = b2.dw;
        a2.lost = nlost ? b2.dlost : NULL;
        epx_recv_t rv2 = { .struct_size = sizeof(rv2) };
        CHECK_CALL(stage(c, R, me, 20, &b, src, idx, w, x, &want, &dropped));
        CHECK_CALL(stage(c, R, me, 21, &b2, src2, idx2, w2, x2, &want2,
                         &dropped2));
        CHECK_OK(epx_dispatch_send(m, &a, &h));
        CHECK_OK(epx_dispatch_send(m, &a2, &h2));
        /* a third would need the first's buffer */
        epx_handle_t *h3 = NULL;
        CHECK_ST(epx_dispatch_send(m, &a, &h3), EPX_ERR_STATE);
        CHECK_OK(epx_dispatch_recv(m, h2, &rv2));
        CHECK_OK(epx_dispatch_recv(m, h, &rv));
        CHECK_CALL(copy_rows(&rv, &b, &want));
        CHECK_CALL(copy_rows(&rv2, &b2, &want2));
        epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT, ca2 = ca;
        ca.y = (epx_tensor_t){ b.dy, c->dtype, rv.num_rows, c->H };
        ca2.y = (epx_tensor_t){ b2.dy, c->dtype, rv2.num_rows, c->H };
        CHECK_ST(epx_combine_send(m, h2, &ca2), EPX_ERR_STATE);
        CHECK_OK(epx_combine_send(m, h, &ca));
        CHECK_OK(epx_combine_recv(m, h, &out));
        epx_tensor_t out2 = { b2.dout, odt, T, c->H };
        CHECK_OK(epx_combine_send(m, h2, &ca2));
        CHECK_OK(epx_combine_recv(m, h2, &out2));
        MEM(mem_sync(&xm));
        CHECK_OK(epx_moe_check(m, &got_dropped));
        CHECK(got_dropped == dropped + dropped2);
        CHECK_CALL(verify(c, R, me, &rv, &b, src, &want, dropped));
        CHECK_CALL(verify(c, R, me, &rv2, &b2, src2, &want2, dropped2));
        calls[ncalls++] = 20;
        calls[ncalls++] = 21;
        epx_handle_release(h);
        epx_handle_release(h2);
        h = NULL;
        ref_recv_free(&want);
        ref_recv_free(&want2);
    }
#ifdef EPX_HAVE_CUDA
    /* Device: captured once, replayed with new inputs (the row sizes of
     * the copies do not depend on the inputs). */
    if (c->host)
        goto done;
    /* What the eager calls recorded, then cleared: the replays below are
     * counted from the reset on, with no host code in them. */
    CHECK_CALL(check_stats(c, m, me, calls, ncalls));
    CHECK_OK(epx_moe_stats_reset(m));
    ncalls = 0;
    /* A call released before its recv (abandoned on the device; the fused
     * kernels' receive phase never runs for it, so the next receive of
     * its buffer rewrites every row's metadata), then a call on each
     * buffer, whole.  Recorded at its send (its own status good). */
    CHECK_CALL(stage(c, R, me, 30, &b, src, idx, w, x, &want, &dropped));
    ref_recv_free(&want);
    CHECK_OK(epx_dispatch_send(m, &a, &h));
    epx_handle_release(h);
    h = NULL;
    calls[ncalls++] = 30;
    CHECK_OK(epx_moe_check(m, NULL));   /* its drops, if counted, cleared */
    for (int call = 31; call < 33; call++) {
        CHECK_CALL(stage(c, R, me, call, &b, src, idx, w, x, &want, &dropped));
        CHECK_OK(epx_dispatch_send(m, &a, &h));
        CHECK_OK(epx_dispatch_recv(m, h, &rv));
        MEM(mem_sync(&xm));
        epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
        ca.y = (epx_tensor_t){ b.dy, c->dtype, rv.num_rows, c->H };
        CHECK_CALL(copy_rows(&rv, &b, &want));
        CHECK_OK(epx_combine_send(m, h, &ca));
        CHECK_OK(epx_combine_recv(m, h, &out));
        CHECK_OK(epx_moe_check(m, &got_dropped));
        CHECK(got_dropped == dropped);
        CHECK_CALL(verify(c, R, me, &rv, &b, src, &want, dropped));
        epx_handle_release(h);
        h = NULL;
        ref_recv_free(&want);
        calls[ncalls++] = call;
    }
    cudaStream_t st = (cudaStream_t)xm.stream;
#define CU(call) CHECKF((call) == cudaSuccess, "%s failed", #call)
    CHECK_CALL(stage(c, R, me, 9, &b, src, idx, w, x, &want, &dropped));
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CU(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    CHECK_OK(epx_dispatch_send(m, &a, &h));
    CHECK_OK(epx_dispatch_recv(m, h, &rv));
    CHECK_CALL(copy_rows(&rv, &b, &want));
    ref_recv_free(&want);
    epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
    ca.y = (epx_tensor_t){ b.dy, c->dtype, rv.num_rows, c->H };
    CHECK_OK(epx_combine_send(m, h, &ca));
    CHECK_OK(epx_combine_recv(m, h, &out));
    epx_handle_release(h);
    h = NULL;
    CU(cudaStreamEndCapture(st, &graph));
    CU(cudaGraphInstantiate(&exec, graph, 0));
    for (int rep = 0; rep < 4; rep++) {
        CHECK_CALL(stage(c, R, me, 10 + rep, &b, src, idx, w, x, &want, &dropped));
        CU(cudaGraphLaunch(exec, st));
        CU(cudaStreamSynchronize(st));
        CHECK_OK(epx_moe_check(m, &got_dropped));
        CHECK(got_dropped == dropped);
        CHECK_CALL(verify(c, R, me, &rv, &b, src, &want, dropped));
        ref_recv_free(&want);
        calls[ncalls++] = 10 + rep;
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
#undef CU
#endif
done:
    /* Refused (host) or failed on the device (its status): not counted. */
    CHECK_CALL(check_stats(c, m, me, calls, ncalls));
    epx_moe_destroy(m);
    bufs_free(&b), bufs_free(&b2);
    mem_stream_destroy(&xm);
    ins_free(R, &in1), ins_free(R, &in2);
    return 0;
}

/* Host staging for copies made while peers' kernels may still run:
 * pinned on the device (src/cuda/README.md, "Ranks as threads"). */
static void *stage_alloc(const xmem_t *xm, size_t n)
{
#ifdef EPX_HAVE_CUDA
    void *p = NULL;
    if (xm->dev)
        return cudaMallocHost(&p, n) == cudaSuccess ? p : NULL;
#endif
    (void)xm;
    return malloc(n);
}

static void stage_free(const xmem_t *xm, void *p)
{
#ifdef EPX_HAVE_CUDA
    if (xm->dev) {
        cudaFreeHost(p);
        return;
    }
#endif
    (void)xm;
    free(p);
}

/* The rows of the local experts a poll said ready, read by copies queued
 * after it (the caller's stream is not ordered after the engine's before
 * epx_dispatch_recv): sources, tokens, weights and data against the
 * reference; the range of expert j is rows [j R cap, (j + 1) R cap). */
static int check_ready(const llcase_t *c, int R, const xmem_t *xm,
                       const epx_recv_t *rv, const ref_recv_t *want,
                       const uint8_t *ready, unsigned char *hs)
{
    const int64_t n = want->num_rows, per = (int64_t)R * c->cap;
    const size_t xr = want->x_row;
    int32_t *srank = (int32_t *)hs, *stok = srank + n;
    float *wt = (float *)(stok + n);
    unsigned char *hx = (unsigned char *)(wt + n);
    MEM(mem_get(xm, srank, rv->src_rank, 4 * (size_t)n));
    MEM(mem_get(xm, stok, rv->src_token, 4 * (size_t)n));
    MEM(mem_get(xm, wt, rv->topk_weights, 4 * (size_t)n));
    MEM(mem_get(xm, hx, rv->x.data, (size_t)n * xr));
    for (int j = 0; j < want->num_local; j++) {
        if (!ready[j])
            continue;
        for (int64_t i = j * per; i < (j + 1) * per; i++) {
            CHECKF(srank[i] == want->src_rank[i] &&
                   stok[i] == want->src_token[i],
                   "row %lld of ready expert %d: source %d/%d, token %d/%d",
                   (long long)i, j, srank[i], want->src_rank[i], stok[i],
                   want->src_token[i]);
            CHECK(memcmp(&wt[i], &want->weights[i], 4) == 0);
            CHECKF(want->src_rank[i] < 0 ||
                   memcmp(hx + (size_t)i * xr, want->x + (size_t)i * xr,
                          xr) == 0,
                   "row %lld of ready expert %d differs", (long long)i, j);
        }
    }
    return 0;
}

/* Poll without waiting until every local expert is ready (or the call
 * fails: *st), checking each answer: readiness never goes back, the
 * counts of ready experts are final and the others' 0 (host memory on
 * both executors), offsets and rows fixed, ready experts' rows in
 * place.  want NULL: the call is to fail, nothing may be ready before. */
static int poll_ll(const llcase_t *c, int R, epx_moe_t *m, const xmem_t *xm,
                   epx_handle_t *h, const ref_recv_t *want, unsigned char *hs,
                   epx_status_t *st)
{
    const int L = epx_moe_num_local_experts(m);
    uint8_t *ready = calloc((size_t)L + 1, 1), *was = calloc((size_t)L + 1, 1);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int polls = 0, num = -1;
    for (;;) {
        epx_recv_t rv = { .struct_size = sizeof(rv) };
        *st = epx_dispatch_poll(m, h, &rv, ready, &num);
        polls++;
        if (*st != EPX_OK)
            break;
        int count = 0;
        for (int j = 0; j < L; j++) {
            count += ready[j];
            CHECKF(ready[j] || !was[j], "expert %d was ready, now not", j);
            was[j] = ready[j];
        }
        CHECK(count == num && rv.num_local_experts == L);
        CHECK(rv.num_rows == (int64_t)L * R * c->cap && rv.capacity == c->cap);
        if (!want) {
            CHECKF(num == 0, "a call that fails had %d experts ready", num);
        } else {
            for (int j = 0; j < L; j++) {
                CHECKF(rv.expert_counts[j] == (ready[j] ? want->counts[j] : 0),
                       "poll: expert %d (%s) count %lld, want %lld", j,
                       ready[j] ? "ready" : "not ready",
                       (long long)rv.expert_counts[j],
                       (long long)(ready[j] ? want->counts[j] : 0));
                CHECK(rv.expert_offsets[j] == want->offsets[j]);
            }
            if (num > 0)
                CHECK_CALL(check_ready(c, R, xm, &rv, want, ready, hs));
            if (num == L)
                break;
        }
        clock_gettime(CLOCK_MONOTONIC, &t);
        CHECKF(t.tv_sec - t0.tv_sec < 30, "poll: %d of %d experts ready "
               "after 30 s (%d polls)", num, L, polls);
        usleep(50);
    }
    free(ready), free(was);
    return 0;
}

/* epx_dispatch_poll in low latency and a bad argument on one rank, on
 * both executors.  Three calls (buffers 0, 1, 0), each polled until
 * every expert is ready, then received, polled again (all ready),
 * combined and checked whole.  Then (R > 1) the last rank passes a layer
 * out of range, too many tokens, EPX_DISPATCH_CACHED: its own
 * dispatch_send refuses it (EPX_ERR_INVALID, EPX_ERR_RANGE,
 * EPX_ERR_INVALID) and the others' calls fail without waiting for the
 * timeout: EPX_ERR_PEER (EPX_ERR_RANGE for the tokens, the host
 * executor's header rule), from their poll (no expert ever ready before)
 * and then recv, or, not polled, from recv on host ranks and from
 * epx_moe_check on device ranks (whose recv does not wait; their combine
 * of the call ends without waiting either); then a whole call again. */
static int ll_poll_rank(epx_comm_t *comm, void *arg)
{
    const llcase_t *c = arg;
    const int R = epx_comm_size(comm), me = epx_comm_rank(comm);
    const size_t es = esz(c->dtype);
    epx_moe_t *m = NULL;
    CHECK_CALL(ll_create(comm, c, &m));
    xmem_t xm = { !c->host, NULL };
    MEM(mem_stream_create(&xm));
    const int64_t rows = (int64_t)(c->E / R + 1) * R * c->cap;
    rank_bufs_t b;
    CHECK_CALL(bufs_alloc(c, &xm, rows, &b));
    unsigned char *hs = stage_alloc(&xm, (size_t)rows * (12 + (size_t)c->H * es)
                                             + 64);
    CHECK(hs != NULL);
    ins_t in;
    CHECK_CALL(ins_alloc(c, R, &in));
    ref_tokens_t *src = in.src;
    int64_t **idx = in.idx;
    float **w = in.w;
    void **x = in.x;
    CHECK_OK(epx_comm_barrier(comm));   /* allocations before any call */
    const int64_t T = c->maxT - me % 3;
    epx_dispatch_args_t a = EPX_DISPATCH_ARGS_INIT;
    a.x = (epx_tensor_t){ b.dx, c->dtype, T, c->H };
    a.topk_idx = (epx_tensor_t){ b.didx, EPX_DTYPE_INT64, T, c->K };
    a.topk_weights = (epx_tensor_t){ b.dw, EPX_DTYPE_FP32, T, c->K };
    a.stream = xm.stream;
    epx_tensor_t out = { b.dout, EPX_DTYPE_FP32, T, c->H };
    const int L = epx_moe_num_local_experts(m);
    uint8_t *ready = calloc((size_t)L + 1, 1);
    epx_status_t st;
    for (int call = 40; call < 44; call++) {
        /* call 43: after the failed calls below */
        if (call == 43 && R > 1) {
            const int bad = R - 1;
            /* layer, tokens, cached: the bad rank's own status, the
             * peers'; polled or not */
            static const epx_status_t own[3] = { EPX_ERR_INVALID,
                                                 EPX_ERR_RANGE,
                                                 EPX_ERR_INVALID };
            static const epx_status_t peer[3] = { EPX_ERR_PEER,
                                                  EPX_ERR_RANGE,
                                                  EPX_ERR_PEER };
            for (int k = 0; k < 3; k++) {
                const int polled = k != 1;
                ref_recv_t want;
                int64_t dropped;
                CHECK_CALL(stage(c, R, me, 50 + k, &b, src, idx, w, x, &want,
                                 &dropped));
                epx_dispatch_args_t fa = a;
                if (me == bad && k == 0)
                    fa.layer = 7;
                if (me == bad && k == 1)
                    fa.x.rows = fa.topk_idx.rows = fa.topk_weights.rows =
                        c->maxT + 1;
                if (me == bad && k == 2)
                    fa.flags = EPX_DISPATCH_CACHED;
                epx_handle_t *h = NULL;
                st = epx_dispatch_send(m, &fa, &h);
                if (me == bad) {
                    CHECKF(st == own[k], "bad rank: %s, want %s (%s)",
                           epx_status_str(st), epx_status_str(own[k]),
                           epx_last_error());
                    CHECK(h == NULL);
                } else {
                    CHECK_OK(st);
                    epx_recv_t rv = { .struct_size = sizeof(rv) };
                    if (polled) {
                        CHECK_CALL(poll_ll(c, R, m, &xm, h, NULL, hs, &st));
                        CHECKF(st == peer[k], "peer's poll: %s, want %s (%s)",
                               epx_status_str(st), epx_status_str(peer[k]),
                               epx_last_error());
                        CHECK_ST(epx_dispatch_recv(m, h, &rv), peer[k]);
                        epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
                        ca.y = (epx_tensor_t){ b.dy, c->dtype, want.num_rows,
                                               c->H };
                        CHECK_ST(epx_combine_send(m, h, &ca), EPX_ERR_STATE);
                    } else if (c->host) {
                        CHECK_ST(epx_dispatch_recv(m, h, &rv), peer[k]);
                    } else {
                        /* device: found on the device, told by check;
                         * the combine does not wait for the bad rank */
                        CHECK_OK(epx_dispatch_recv(m, h, &rv));
                        epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
                        ca.y = (epx_tensor_t){ b.dy, c->dtype, rv.num_rows,
                                               c->H };
                        CHECK_OK(epx_combine_send(m, h, &ca));
                        CHECK_OK(epx_combine_recv(m, h, &out));
                    }
                    epx_handle_release(h);
                }
                MEM(mem_sync(&xm));
                st = epx_moe_check(m, NULL);
                const epx_status_t wst = c->host || me == bad ? EPX_OK
                                                              : peer[k];
                CHECKF(st == wst, "check after a failed call: %s, want %s",
                       epx_status_str(st), epx_status_str(wst));
                ref_recv_free(&want);
            }
        }
        ref_recv_t want;
        int64_t dropped = 0, got_dropped = -1;
        CHECK_CALL(stage(c, R, me, call, &b, src, idx, w, x, &want, &dropped));
        epx_handle_t *h = NULL;
        CHECK_OK(epx_dispatch_send(m, &a, &h));
        CHECK_CALL(poll_ll(c, R, m, &xm, h, &want, hs, &st));
        CHECK_OK(st);
        epx_recv_t rv = { .struct_size = sizeof(rv) };
        CHECK_OK(epx_dispatch_recv(m, h, &rv));
        MEM(mem_sync(&xm));
        /* after recv (and its stream): every expert, as recv describes */
        epx_recv_t pv = { .struct_size = sizeof(pv) };
        int num = -1;
        CHECK_OK(epx_dispatch_poll(m, h, &pv, ready, &num));
        CHECK(num == L && pv.x.data == rv.x.data &&
              pv.src_rank == rv.src_rank && pv.num_rows == rv.num_rows);
        for (int j = 0; j < L; j++)
            CHECK(pv.expert_counts[j] == want.counts[j]);
        CHECK_CALL(copy_rows(&rv, &b, &want));
        epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
        ca.y = (epx_tensor_t){ b.dy, c->dtype, rv.num_rows, c->H };
        CHECK_OK(epx_combine_send(m, h, &ca));
        CHECK_ST(epx_dispatch_poll(m, h, &pv, ready, &num), EPX_ERR_STATE);
        CHECK_OK(epx_combine_recv(m, h, &out));
        MEM(mem_sync(&xm));
        CHECK_OK(epx_moe_check(m, &got_dropped));
        CHECK(got_dropped == dropped);
        CHECK_CALL(verify(c, R, me, &rv, &b, src, &want, dropped));
        epx_handle_release(h);
        ref_recv_free(&want);
    }
    epx_moe_destroy(m);
    bufs_free(&b);
    stage_free(&xm, hs);
    mem_stream_destroy(&xm);
    ins_free(R, &in);
    free(ready);
    return 0;
}

/* Whether device ranks run here (main probes it). */
static int device_ok;

/* One case on each executor, thread ranks. */
static void run_case(llcase_t *c)
{
    for (int host = 1; host >= 0; host--) {
        if (!host && !device_ok)
            continue;
        c->host = host;
        const char *ks = getenv("EPX_CUDA_KERNELS");
        fprintf(stderr, "# %s%s%s: R %d, H %d, dtype %d, cap %d, %s%s, wire "
                "%d%s\n", host ? "host" : "device",
                host || !ks ? "" : ", kernels ", host || !ks ? "" : ks, c->R,
                c->H, (int)c->dtype, c->cap, c->drop ? "drop" : "no drop",
                c->skew ? ", skewed" : "", (int)c->wire,
                !host && c->nccl ? ", NCCL" : "");
        assert_int_equal(epxt_thread_ranks(c->R, 120, ll_rank, c), 0);
    }
}

static void run_poll_case(llcase_t *c)
{
    for (int host = 1; host >= 0; host--) {
        if (!host && !device_ok)
            continue;
        c->host = host;
        const char *ks = getenv("EPX_CUDA_KERNELS");
        fprintf(stderr, "# poll, %s%s%s: R %d, H %d, cap %d, %s, wire %d%s\n",
                host ? "host" : "device", host || !ks ? "" : ", kernels ",
                host || !ks ? "" : ks, c->R, c->H, c->cap,
                c->drop ? "drop" : "no drop", (int)c->wire,
                !host && c->nccl ? ", NCCL" : "");
        assert_int_equal(epxt_thread_ranks(c->R, 120, ll_poll_rank, c), 0);
    }
}

static void low_latency(void **state)
{
    (void)state;
    static const int ranks[] = { 2, 4 };
    for (size_t i = 0; i < 2; i++) {
        const int R = ranks[i];
        /* room for everything; drops; overflow without DROP */
        llcase_t a = { R, 2 * R + 3, 4, 24, 16, 16, EPX_DTYPE_FP32, 0, 0,
                       EPX_WIRE_NATIVE, 0, 0 };
        llcase_t b = { R, 2 * R + 3, 4, 512, 16, 3, EPX_DTYPE_BF16, 1, 1,
                       EPX_WIRE_NATIVE, 0, 0 };
        llcase_t c = { R, 2 * R + 3, 4, 24, 16, 2, EPX_DTYPE_BF16, 0, 1,
                       EPX_WIRE_NATIVE, 0, 0 };
        run_case(&a);
        run_case(&b);
        run_case(&c);
    }
}

/* epx_dispatch_poll and a bad argument on one rank (ll_poll_rank): 1, 2
 * and 4 ranks, room for all and drops, native and a quantized wire. */
static void low_latency_poll(void **state)
{
    (void)state;
    static const int ranks[] = { 1, 2, 4 };
    for (size_t i = 0; i < 3; i++) {
        const int R = ranks[i];
        llcase_t a = { R, 2 * R + 3, 4, 24, 16, 16, EPX_DTYPE_FP32, 0, 0,
                       EPX_WIRE_NATIVE, 0, 0 };
        llcase_t b = { R, 2 * R + 3, 4, 256, 12, 3, EPX_DTYPE_BF16, 1, 1,
                       EPX_WIRE_FP8, 0, 0 };
        run_poll_case(&a);
        run_poll_case(&b);
    }
}

/* Every quantized wire: room for all (H 7168) and drops with odd rows (H
 * 200, 33). */
static void low_latency_quantized(void **state)
{
    (void)state;
    static const epx_wire_t wires[] = { EPX_WIRE_FP8, EPX_WIRE_FP8_UE8M0,
                                        EPX_WIRE_MXFP8, EPX_WIRE_NVFP4 };
    static const int ranks[] = { 2, 4 };
    for (size_t i = 0; i < 2; i++)
        for (size_t f = 0; f < 4; f++) {
            const int R = ranks[i];
            llcase_t a = { R, 2 * R + 3, 4, 7168, 8, 8, EPX_DTYPE_BF16, 0, 0,
                           wires[f], 0, 0 };
            llcase_t b = { R, 2 * R + 3, 4, f % 2 ? 33 : 200, 16, 3,
                           EPX_DTYPE_BF16, 1, 1, wires[f], 0, 0 };
            run_case(&a);
            run_case(&b);
        }
}

/* FP64 engines (native wire, combine in double, out FP64): room for all
 * (16-byte rows, 24 doubles), drops with odd rows (33: the element
 * paths), overflow without DROP. */
static void low_latency_fp64(void **state)
{
    (void)state;
    static const int ranks[] = { 2, 4 };
    for (size_t i = 0; i < 2; i++) {
        const int R = ranks[i];
        llcase_t a = { R, 2 * R + 3, 4, 24, 16, 16, EPX_DTYPE_FP64, 0, 0,
                       EPX_WIRE_NATIVE, 0, 0 };
        llcase_t b = { R, 2 * R + 3, 4, 33, 16, 3, EPX_DTYPE_FP64, 1, 1,
                       EPX_WIRE_NATIVE, 0, 0 };
        llcase_t c = { R, 2 * R + 3, 4, 24, 16, 2, EPX_DTYPE_FP64, 0, 1,
                       EPX_WIRE_NATIVE, 0, 0 };
        run_case(&a);
        run_case(&b);
        run_case(&c);
    }
}

/* Elastic: 7 experts (1 lost) on 6 slots over 2 ranks, 11 (3 lost) on 8
 * over 4; room for everything, drops, and an overflow without DROP. */
static void elastic(void **state)
{
    (void)state;
    static const int ranks[] = { 2, 4 };
    for (size_t i = 0; i < 2; i++) {
        const int R = ranks[i], E = 2 * R + 3;
        llcase_t a = { R, E, 3, 24, 16, 16, EPX_DTYPE_FP32, 0, 0,
                       EPX_WIRE_NATIVE, 0, 0 };
        llcase_t b = { R, E, 3, 512, 16, 3, EPX_DTYPE_BF16, 1, 1,
                       EPX_WIRE_NATIVE, 0, 0 };
        llcase_t c = { R, E, 3, 24, 16, 2, EPX_DTYPE_BF16, 0, 1,
                       EPX_WIRE_FP8, 0, 0 };
        nlost = E % R ? E % R : R;
        run_case(&a);
        run_case(&b);
        run_case(&c);
        nlost = 0;
    }
}

/* Device ranks over the NCCL backend (src/cuda/README.md, "Low latency
 * over NCCL"), one rank per GPU: 1 rank where there is one GPU, 2 and 4
 * where there are as many.  The rounds above (eager, two micro-batches,
 * a CUDA graph, an abandoned call), drops, a quantized wire, FP64, and
 * poll with a bad argument on one rank, each against the host executor
 * run on the same case first. */
static void low_latency_nccl(void **state)
{
    (void)state;
#ifndef EPX_HAVE_NCCL
    skip();   /* built without the NCCL module */
#endif
    int ndev = 0;
    if (!device_ok || epx_cuda_devices(&ndev) != EPX_OK || ndev < 1)
        skip();
    static const int ranks[] = { 1, 2, 4 };
    for (size_t i = 0; i < 3; i++) {
        const int R = ranks[i];
        if (R > ndev)
            continue;
        llcase_t a = { R, 2 * R + 3, 4, 24, 16, 16, EPX_DTYPE_FP32, 0, 0,
                       EPX_WIRE_NATIVE, 0, 1 };
        llcase_t b = { R, 2 * R + 3, 4, 512, 16, 3, EPX_DTYPE_BF16, 1, 1,
                       EPX_WIRE_NATIVE, 0, 1 };
        llcase_t c = { R, 2 * R + 3, 4, 24, 16, 2, EPX_DTYPE_BF16, 0, 1,
                       EPX_WIRE_NATIVE, 0, 1 };
        llcase_t q = { R, 2 * R + 3, 4, 200, 16, 3, EPX_DTYPE_BF16, 1, 1,
                       EPX_WIRE_FP8, 0, 1 };
        llcase_t f = { R, 2 * R + 3, 4, 33, 16, 3, EPX_DTYPE_FP64, 1, 1,
                       EPX_WIRE_NATIVE, 0, 1 };
        llcase_t pa = { R, 2 * R + 3, 4, 24, 16, 16, EPX_DTYPE_FP32, 0, 0,
                        EPX_WIRE_NATIVE, 0, 1 };
        llcase_t pb = { R, 2 * R + 3, 4, 256, 12, 3, EPX_DTYPE_BF16, 1, 1,
                        EPX_WIRE_FP8, 0, 1 };
        run_case(&a);
        run_case(&b);
        run_case(&c);
        run_case(&q);
        run_case(&f);
        run_poll_case(&pa);
        run_poll_case(&pb);
    }
}

int main(int argc, char **argv)
{
    /* Line by line, so that a run killed by a time limit keeps them. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    epxt_init("test_executors_ll");
    /* Thread ranks share one context: their streams need hardware queues
     * of their own (src/cuda/README.md, "Ranks as threads"). */
    setenv("CUDA_DEVICE_MAX_CONNECTIONS", "32", 0);
    int n = 0;
    device_ok = epx_cuda_devices(&n) == EPX_OK;
    if (!device_ok)
        printf("# device executor not run: %s\n", epx_last_error());
    /* --device: the device executor is what is asked for (the GPU
     * machine's script), so no device is a skip, not a pass. */
    if (argc > 1 && !strcmp(argv[1], "--device") && !device_ok)
        return 77;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(low_latency),
        cmocka_unit_test(low_latency_quantized),
        cmocka_unit_test(low_latency_fp64),
        cmocka_unit_test(low_latency_poll),
        cmocka_unit_test(elastic),
        cmocka_unit_test(low_latency_nccl),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
