/*
 * epx_dispatch_poll and EPX_DISPATCH_CACHED (throughput mode) on both
 * executors by the same code, against the same reference (tests/ref),
 * bit for bit: host ranks always, device ranks (thread ranks on one GPU)
 * where the build has CUDA and the machine a GPU (`--device`: a missing
 * device is a skip, for the GPU machine's script).
 *
 * Each rank dispatches, then polls without waiting until every local
 * expert is ready; at every poll the experts reported ready must have all
 * their rows (and metadata, and expert-major padding marks) in place, read
 * by a copy the caller queues after the poll returned; counts are final
 * once published (device: zeros and nothing ready before), readiness
 * never goes back.  Then recv, combine, and the same routing dispatched
 * cached with new tokens and weights, polled and combined the same way.
 * Refusals: a cached dispatch without a handle, with another token count,
 * for another layer; poll after combine_send; ids that differ from the
 * handle's on one rank (its own EPX_ERR_INVALID, EPX_ERR_PEER on the
 * others: from dispatch_send on host ranks, dispatch_recv on device
 * ranks); one rank cached and the others not (EPX_ERR_MISMATCH); the
 * engine usable after each, and the statistics count exactly the
 * dispatches that succeeded, cached ones too.  Device ranks over the
 * NCCL backend (one rank per GPU: 1, 2 and 4 ranks, as many as there
 * are GPUs) take the same rounds and refusals.
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

#include "common/epx_test.h"
#include "common/thread_ranks.h"
#include "common/xmem.h"
#include "ref/ref.h"
#include "epx/cuda.h"

typedef struct pcase {
    int R, E, K, H, maxT;
    epx_dtype_t dtype;
    int em, align;
    int host;           /* set by run_case */
    epx_gpu_backend_t backend;   /* device ranks: NCCL, one GPU per rank */
} pcase_t;

/* Rank r's routing of `route` (T, ids) and its data of `data` (x, w). */
static void gen(const pcase_t *c, int r, int route, int data, int64_t *T,
                int64_t **idx, float **w, void **x)
{
    epxt_rng_t g = { epxt_hash(epxt_seed(), (uint64_t)r, 21, (uint64_t)route,
                               0) };
    const int es = c->dtype == EPX_DTYPE_BF16 ? 2 : 4;
    *T = (int64_t)epxt_below(&g, (uint64_t)c->maxT + 1);
    *idx = calloc((size_t)(*T * c->K + 1), sizeof(int64_t));
    *w = calloc((size_t)(*T * c->K + 1), sizeof(float));
    *x = calloc((size_t)(*T * c->H + 1), (size_t)es);
    for (int64_t i = 0; i < *T * c->K; i++) {   /* distinct, with holes */
        int64_t e = -1;
        if (epxt_below(&g, 5) != 0)
            for (int again = 1; again;) {
                e = (int64_t)epxt_below(&g, (uint64_t)c->E);
                again = 0;
                for (int64_t j = i - i % c->K; j < i; j++)
                    again |= (*idx)[j] == e;
            }
        (*idx)[i] = e;
    }
    epxt_rng_t d = { epxt_hash(epxt_seed(), (uint64_t)r, 22, (uint64_t)route,
                               (uint64_t)data) };
    for (int64_t i = 0; i < *T * c->K; i++)
        (*w)[i] = (float)epxt_below(&d, 1000) / 997.0f;
    for (int64_t i = 0; i < *T * c->H; i++)
        ref_store(c->dtype, *x, i,
                  (float)((int)epxt_below(&d, 2001) - 1000) / 64.0f);
}

static void y_fn(void *ctx, int src, int64_t t, int who, float *row)
{
    const int H = *(const int *)ctx;
    for (int h = 0; h < H; h++)
        row[h] = (float)((int)(epxt_hash(epxt_seed(), (uint64_t)src,
                                         (uint64_t)t, (uint64_t)who,
                                         (uint64_t)h) % 33) - 16) / 8.0f;
}

#define MEM(call) CHECKF((call) == 0, "%s failed", #call)

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

typedef struct rank_ctx {
    const pcase_t *c;
    epx_moe_t *m;
    xmem_t xm;
    int R, me, L;
    void *dx, *didx, *dw, *dy, *dout;
    unsigned char *hrows;       /* pinned staging: rows and metadata */
    int dispatches;             /* successful ones (statistics) */
} rank_ctx_t;

/* Is received row i one of local expert j's? */
static int row_of(const pcase_t *c, const ref_recv_t *want, int64_t i, int j)
{
    if (c->em)
        return i >= want->offsets[j] &&
               i < want->offsets[j] + (j + 1 < want->num_local
                                       ? want->offsets[j + 1] - want->offsets[j]
                                       : want->num_rows - want->offsets[j]);
    for (int k = 0; k < c->K; k++)
        if (want->topk_idx[i * c->K + k] == j)
            return 1;
    return 0;
}

/* The rows (and padding) of the experts ready, read after the poll. */
static int check_ready_rows(rank_ctx_t *x, const ref_recv_t *want,
                            const epx_recv_t *rv, const uint8_t *ready)
{
    const pcase_t *c = x->c;
    const int64_t n = want->num_rows, wk = c->em ? 1 : c->K;
    const size_t rb = (size_t)want->x_row;
    unsigned char *hx = x->hrows;
    int32_t *hs = (int32_t *)(hx + (size_t)n * rb);
    int32_t *ht = hs + n, *hi = ht + n;
    float *hw = (float *)(hi + n * c->K);
    MEM(mem_get(&x->xm, hx, rv->x.data, (size_t)n * rb));
    MEM(mem_get(&x->xm, hs, rv->src_rank, 4 * (size_t)n));
    MEM(mem_get(&x->xm, ht, rv->src_token, 4 * (size_t)n));
    if (!c->em)
        MEM(mem_get(&x->xm, hi, rv->topk_idx, 4 * (size_t)(n * c->K)));
    MEM(mem_get(&x->xm, hw, rv->topk_weights, 4 * (size_t)(n * wk)));
    for (int64_t i = 0; i < n; i++) {
        int mine = 0;
        for (int j = 0; j < x->L && !mine; j++)
            mine = ready[j] && row_of(c, want, i, j);
        if (!mine)
            continue;
        CHECKF(hs[i] == want->src_rank[i] && ht[i] == want->src_token[i],
               "row %lld of a ready expert: source %d/%d, token %d/%d",
               (long long)i, hs[i], want->src_rank[i], ht[i],
               want->src_token[i]);
        CHECK(memcmp(hw + i * wk, want->weights + i * wk, 4 * (size_t)wk) == 0);
        CHECK(c->em || memcmp(hi + i * c->K, want->topk_idx + i * c->K,
                              4 * (size_t)c->K) == 0);
        CHECKF(want->src_rank[i] < 0 ||
               memcmp(hx + (size_t)i * rb, want->x + (size_t)i * rb, rb) == 0,
               "row %lld of a ready expert differs", (long long)i);
    }
    return 0;
}

/* Poll until every local expert is ready, checking each answer. */
static int poll_all(rank_ctx_t *x, epx_handle_t *h, const ref_recv_t *want)
{
    const pcase_t *c = x->c;
    uint8_t *ready = calloc((size_t)x->L + 1, 1), *was = calloc((size_t)x->L + 1, 1);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int polls = 0, num = -1;
    for (;;) {
        epx_recv_t rv = { .struct_size = sizeof(rv) };
        CHECK_OK(epx_dispatch_poll(x->m, h, &rv, ready, &num));
        polls++;
        int count = 0;
        for (int j = 0; j < x->L; j++) {
            count += ready[j];
            CHECKF(ready[j] || !was[j], "expert %d was ready, now not", j);
            was[j] = ready[j];
        }
        CHECK(count == num);
        CHECK(rv.num_local_experts == x->L);
        if (rv.num_rows != want->num_rows) {
            /* device ranks before the counts are published: nothing yet */
            CHECKF(!c->host && rv.num_rows == 0 && num == 0,
                   "poll: %lld rows, %lld expected, %d ready",
                   (long long)rv.num_rows, (long long)want->num_rows, num);
            for (int j = 0; j < x->L; j++)
                CHECK(rv.expert_counts[j] == 0);
        } else {
            for (int j = 0; j < x->L; j++) {
                CHECK(rv.expert_counts[j] == want->counts[j] ||
                      (!c->host && num == 0 && rv.expert_counts[j] == 0));
                CHECK(!c->em || num == 0 ||
                      rv.expert_offsets[j] == want->offsets[j]);
            }
            if (num > 0)
                CHECK_CALL(check_ready_rows(x, want, &rv, ready));
        }
        if (num == x->L)
            break;
        clock_gettime(CLOCK_MONOTONIC, &t);
        CHECKF(t.tv_sec - t0.tv_sec < 30, "poll: %d of %d experts ready "
               "after 30 s (%d polls)", num, x->L, polls);
        usleep(50);
    }
    free(ready), free(was);
    return 0;
}

/* One round: dispatch (fresh or cached), poll, recv, combine, checked. */
static int round_run(rank_ctx_t *x, int route, int data, epx_handle_t **h,
                     int cached)
{
    const pcase_t *c = x->c;
    const int R = x->R, me = x->me, es = c->dtype == EPX_DTYPE_BF16 ? 2 : 4;
    ref_tokens_t *src = calloc((size_t)R, sizeof(*src));
    int64_t **idx = calloc((size_t)R, sizeof(*idx));
    float **w = calloc((size_t)R, sizeof(*w));
    void **xs = calloc((size_t)R, sizeof(*xs));
    for (int r = 0; r < R; r++) {
        gen(c, r, route, data, &src[r].T, &idx[r], &w[r], &xs[r]);
        src[r] = (ref_tokens_t){ src[r].T, xs[r], idx[r], w[r], 0.0f };
    }
    const int64_t T = src[me].T;
    MEM(mem_put(&x->xm, x->dx, xs[me], (size_t)(T * c->H) * es));
    MEM(mem_put(&x->xm, x->didx, idx[me], (size_t)(T * c->K) * 8));
    MEM(mem_put(&x->xm, x->dw, w[me], (size_t)(T * c->K) * 4));
    epx_dispatch_args_t a = EPX_DISPATCH_ARGS_INIT;
    a.x = (epx_tensor_t){ x->dx, c->dtype, T, c->H };
    a.topk_idx = (epx_tensor_t){ x->didx, EPX_DTYPE_INT64, T, c->K };
    a.topk_weights = (epx_tensor_t){ x->dw, EPX_DTYPE_FP32, T, c->K };
    a.stream = x->xm.stream;
    a.flags = cached ? EPX_DISPATCH_CACHED : 0u;
    epx_handle_t *before = *h;
    CHECK_OK(epx_dispatch_send(x->m, &a, h));
    CHECK(!cached || *h == before);
    x->dispatches++;
    ref_cfg_t cfg = { R, c->E, c->K, c->H, c->dtype,
                      c->em ? EPX_LAYOUT_EXPERT_MAJOR : EPX_LAYOUT_TOKEN_MAJOR,
                      c->em ? c->align : 1, EPX_WIRE_NATIVE };
    ref_recv_t want;
    CHECK(ref_dispatch(&cfg, src, me, &want) == 0);
    CHECK_CALL(poll_all(x, *h, &want));
    epx_recv_t rv = { .struct_size = sizeof(rv) };
    CHECK_OK(epx_dispatch_recv(x->m, *h, &rv));
    CHECK(rv.num_rows == want.num_rows);
    uint8_t *ready = calloc((size_t)x->L + 1, 1);
    int num = -1;
    epx_recv_t pv = { .struct_size = sizeof(pv) };
    CHECK_OK(epx_dispatch_poll(x->m, *h, &pv, ready, &num));   /* all, now */
    CHECK(num == x->L && pv.num_rows == rv.num_rows && pv.x.data == rv.x.data);
    memset(ready, 1, (size_t)x->L);
    CHECK_CALL(check_ready_rows(x, &want, &rv, ready));
    /* Expert outputs, in a buffer of their own. */
    const int64_t n = rv.num_rows;
    unsigned char *hy = calloc((size_t)(n * c->H + 1), (size_t)es);
    float *row = malloc(sizeof(float) * (size_t)c->H);
    for (int64_t i = 0; i < n; i++) {
        if (want.src_rank[i] < 0)
            continue;
        y_fn(&cfg.hidden, want.src_rank[i], want.src_token[i],
             c->em ? want.first_local + want.row_expert[i] : me, row);
        for (int hh = 0; hh < c->H; hh++)
            ref_store(c->dtype, hy, i * c->H + hh, row[hh]);
    }
    MEM(mem_put(&x->xm, x->dy, hy, (size_t)(n * c->H) * es));
    epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
    ca.y = (epx_tensor_t){ x->dy, c->dtype, n, c->H };
    CHECK_OK(epx_combine_send(x->m, *h, &ca));
    CHECK_ST(epx_dispatch_poll(x->m, *h, &pv, ready, &num), EPX_ERR_STATE);
    epx_tensor_t out = { x->dout, EPX_DTYPE_FP32, T, c->H };
    CHECK_OK(epx_combine_recv(x->m, *h, &out));
    MEM(mem_sync(&x->xm));
    CHECK_OK(epx_moe_check(x->m, NULL));
    float *got = malloc(sizeof(float) * (size_t)(T * c->H + 1));
    float *exp = malloc(sizeof(float) * (size_t)(T * c->H + 1));
    MEM(mem_get(&x->xm, got, x->dout, sizeof(float) * (size_t)(T * c->H)));
    CHECK(ref_combine(&cfg, me, &src[me], 0, y_fn, &cfg.hidden,
                      EPX_DTYPE_FP32, exp) == 0);
    CHECKF(memcmp(got, exp, sizeof(float) * (size_t)(T * c->H)) == 0,
           "combine differs (%s executor, %s round)",
           c->host ? "host" : "device", cached ? "cached" : "fresh");
    ref_recv_free(&want);
    for (int r = 0; r < R; r++)
        free(idx[r]), free(w[r]), free(xs[r]);
    free(src), free(idx), free(w), free(xs), free(hy), free(row), free(got);
    free(exp), free(ready);
    return 0;
}

/* A call that fails on some rank: from dispatch_send (host ranks) or
 * dispatch_recv (device ranks, found on the device); want: this rank's
 * status.  A handle a failed uncached dispatch left is released. */
static int failed_call(rank_ctx_t *x, epx_dispatch_args_t *a,
                       epx_handle_t **h, epx_status_t want)
{
    epx_handle_t *before = *h;
    epx_status_t st = epx_dispatch_send(x->m, a, h);
    if (st == EPX_OK) {
        CHECK(!x->c->host);
        epx_recv_t rv = { .struct_size = sizeof(rv) };
        st = epx_dispatch_recv(x->m, *h, &rv);
        /* the call is over: its combine is refused */
        epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
        CHECK_ST(epx_combine_send(x->m, *h, &ca), EPX_ERR_STATE);
    }
    CHECKF(st == want, "rank %d: %s, %s expected (%s)", x->me,
           epx_status_str(st), epx_status_str(want), epx_last_error());
    if (*h != before) {
        epx_handle_release(*h);
        *h = before;
    }
    return 0;
}

static int poll_rank(epx_comm_t *comm, void *arg)
{
    const pcase_t *c = arg;
    rank_ctx_t x = { .c = c, .R = epx_comm_size(comm),
                     .me = epx_comm_rank(comm) };
    epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
    p.hidden = c->H;
    p.num_experts = c->E;
    p.topk = c->K;
    p.max_tokens_per_rank = c->maxT;
    p.dtype = c->dtype;
    p.layout = c->em ? EPX_LAYOUT_EXPERT_MAJOR : EPX_LAYOUT_TOKEN_MAJOR;
    p.expert_alignment = c->em ? c->align : 1;
    p.num_layers = 2;
    p.device = c->host ? EPX_DEVICE_HOST : 0;
    if (!c->host && c->backend == EPX_GPU_BACKEND_NCCL) {
        p.device = x.me;   /* NCCL: a GPU of its own per rank */
        p.gpu_backend = EPX_GPU_BACKEND_NCCL;
#ifdef EPX_HAVE_CUDA
        MEM(cudaSetDevice(x.me));   /* the buffers below on it too */
#endif
    }
    CHECK_OK(epx_moe_create(comm, &p, &x.m));
    x.L = epx_moe_num_local_experts(x.m);
    x.xm = (xmem_t){ !c->host, NULL };
    MEM(mem_stream_create(&x.xm));
    const int es = c->dtype == EPX_DTYPE_BF16 ? 2 : 4;
    const size_t rows = (size_t)x.R * c->maxT * c->K + (size_t)c->E * c->align;
    MEM(mem_alloc(&x.xm, &x.dx, ((size_t)c->maxT * c->H + 1) * es));
    MEM(mem_alloc(&x.xm, &x.didx, ((size_t)c->maxT * c->K + 1) * 8));
    MEM(mem_alloc(&x.xm, &x.dw, ((size_t)c->maxT * c->K + 1) * 4));
    MEM(mem_alloc(&x.xm, &x.dout, ((size_t)c->maxT * c->H + 1) * 4));
    MEM(mem_alloc(&x.xm, &x.dy, (rows * c->H + 1) * es));
    x.hrows = stage_alloc(&x.xm, rows * ((size_t)c->H * es + 12 + 8 *
                                         (size_t)c->K) + 64);
    CHECK(x.hrows != NULL);
    CHECK_OK(epx_comm_barrier(comm));   /* allocations before any call */

    epx_handle_t *h = NULL, *h2 = NULL;
    /* Fresh, then cached with new tokens and weights (twice: the second
     * cached call reuses the layout again), then another routing. */
    CHECK_CALL(round_run(&x, 0, 0, &h, 0));
    CHECK_CALL(round_run(&x, 0, 1, &h, 1));
    CHECK_CALL(round_run(&x, 0, 2, &h, 1));
    CHECK_CALL(round_run(&x, 1, 0, &h2, 0));
    /* Both handles live: each keeps its own layout. */
    CHECK_CALL(round_run(&x, 0, 3, &h, 1));
    CHECK_CALL(round_run(&x, 1, 1, &h2, 1));

    /* Refused where called, nothing sent (every rank alike). */
    int64_t T, *idx;
    float *w;
    void *xv;
    gen(c, x.me, 0, 4, &T, &idx, &w, &xv);
    MEM(mem_put(&x.xm, x.didx, idx, (size_t)(T * c->K) * 8));
    epx_dispatch_args_t a = EPX_DISPATCH_ARGS_INIT;
    a.x = (epx_tensor_t){ x.dx, c->dtype, T, c->H };
    a.topk_idx = (epx_tensor_t){ x.didx, EPX_DTYPE_INT64, T, c->K };
    a.topk_weights = (epx_tensor_t){ x.dw, EPX_DTYPE_FP32, T, c->K };
    a.stream = x.xm.stream;
    a.flags = EPX_DISPATCH_CACHED;
    epx_handle_t *none = NULL;
    CHECK_ST(epx_dispatch_send(x.m, &a, &none), EPX_ERR_INVALID);
    CHECK(none == NULL);
    if (T < c->maxT) {   /* another token count (every rank: T differs) */
        a.x.rows = a.topk_idx.rows = a.topk_weights.rows = T + 1;
        CHECK_ST(epx_dispatch_send(x.m, &a, &h), EPX_ERR_INVALID);
        a.x.rows = a.topk_idx.rows = a.topk_weights.rows = T;
    } else {
        a.x.rows = a.topk_idx.rows = a.topk_weights.rows = T - 1;
        CHECK_ST(epx_dispatch_send(x.m, &a, &h), EPX_ERR_INVALID);
        a.x.rows = a.topk_idx.rows = a.topk_weights.rows = T;
    }
    a.layer = 1;
    CHECK_ST(epx_dispatch_send(x.m, &a, &h), EPX_ERR_INVALID);
    a.layer = 0;

    /* Rank 0's ids differ from its handle's (same count): its own
     * INVALID, the others PEER; then the handle still works. */
    if (x.me == 0 && T > 0) {   /* token 0 to expert 0 alone, or 1 */
        int64_t *other = malloc(sizeof(int64_t) * (size_t)c->K);
        int was0 = idx[0] == 0;
        for (int k = 1; k < c->K; k++)
            was0 &= idx[k] == -1;
        for (int k = 0; k < c->K; k++)
            other[k] = k == 0 ? (was0 ? 1 : 0) : -1;
        MEM(mem_put(&x.xm, x.didx, other, (size_t)(c->K) * 8));
        free(other);
    }
    int r0_changed = 0;
    {   /* does rank 0 have a token to change?  every rank regenerates */
        int64_t T0, *i0;
        float *w0;
        void *x0;
        gen(c, 0, 0, 4, &T0, &i0, &w0, &x0);
        r0_changed = T0 > 0;
        free(i0), free(w0), free(x0);
    }
    if (r0_changed)
        CHECK_CALL(failed_call(&x, &a, &h, x.me == 0 ? EPX_ERR_INVALID
                                                     : EPX_ERR_PEER));
    /* Rank 0 cached, the others fresh: every rank EPX_ERR_MISMATCH
     * (with several). */
    MEM(mem_put(&x.xm, x.didx, idx, (size_t)(T * c->K) * 8));
    if (x.me != 0)
        a.flags = 0;
    epx_handle_t *hm = x.me == 0 ? h : NULL;
    if (x.R > 1)
        CHECK_CALL(failed_call(&x, &a, &hm, EPX_ERR_MISMATCH));
    /* A bad argument on one rank only fails the call on every rank (its
     * own EPX_ERR_RANGE or _INVALID, the others EPX_ERR_PEER; device ranks: from
     * their recv), uncached (too many tokens, a layer out of range) or
     * cached (no handle; weights of another dtype); then the engine goes
     * on. */
    if (x.R > 1) {
        const int bad = x.R - 1;
        epx_handle_t *hf = NULL;
        a.flags = 0;
        if (x.me == bad)
            a.x.rows = a.topk_idx.rows = a.topk_weights.rows = c->maxT + 1;
        CHECK_CALL(failed_call(&x, &a, &hf, x.me == bad ? EPX_ERR_RANGE
                                                         : EPX_ERR_PEER));
        a.x.rows = a.topk_idx.rows = a.topk_weights.rows = T;
        if (x.me == bad)
            a.layer = 7;
        CHECK_CALL(failed_call(&x, &a, &hf, x.me == bad ? EPX_ERR_INVALID
                                                         : EPX_ERR_PEER));
        a.layer = 0;
        a.flags = EPX_DISPATCH_CACHED;
        epx_handle_t *hc = x.me == bad ? NULL : h;
        CHECK_CALL(failed_call(&x, &a, &hc, x.me == bad ? EPX_ERR_INVALID
                                                         : EPX_ERR_PEER));
        /* cached with its handle, but weights of another dtype there */
        hc = h;
        if (x.me == bad)
            a.topk_weights.dtype = EPX_DTYPE_INT32;
        CHECK_CALL(failed_call(&x, &a, &hc, x.me == bad ? EPX_ERR_INVALID
                                                         : EPX_ERR_PEER));
        CHECK(hc == h);
        a.topk_weights.dtype = EPX_DTYPE_FP32;
        CHECK(hf == NULL);
    }
    a.flags = EPX_DISPATCH_CACHED;
    free(idx), free(w), free(xv);
    /* Usable: the cached handle once more, checked. */
    CHECK_CALL(round_run(&x, 0, 5, &h, 1));
    epx_handle_release(h);
    epx_handle_release(h2);
    h = NULL;
    CHECK_CALL(round_run(&x, 2, 0, &h, 0));
    epx_handle_release(h);

    epx_moe_stats_t ms = { .struct_size = sizeof(ms) };
    CHECK_OK(epx_moe_stats(x.m, 0, &ms));
    CHECKF(ms.dispatches == x.dispatches, "%lld dispatches recorded, %d "
           "succeeded", (long long)ms.dispatches, x.dispatches);
    epx_moe_destroy(x.m);
    mem_free(&x.xm, x.dx), mem_free(&x.xm, x.didx), mem_free(&x.xm, x.dw);
    mem_free(&x.xm, x.dout), mem_free(&x.xm, x.dy);
    stage_free(&x.xm, x.hrows);
    mem_stream_destroy(&x.xm);
    return 0;
}

static int device_ok;

static void run_case(pcase_t *c)
{
    for (int host = 1; host >= 0; host--) {
        if (!host && !device_ok)
            continue;
        c->host = host;
        fprintf(stderr, "# %s threads: R %d, E %d, H %d, dtype %d, "
                "%s-major%s\n", host ? "host" : "device", c->R, c->E, c->H,
                (int)c->dtype, c->em ? "expert" : "token",
                !host && c->backend == EPX_GPU_BACKEND_NCCL ? ", NCCL" : "");
        assert_int_equal(epxt_thread_ranks(c->R, 180, poll_rank, c), 0);
    }
}

static void token_major(void **state)
{
    (void)state;
    pcase_t a = { 2, 7, 3, 24, 40, EPX_DTYPE_FP32, 0, 1, 0,
                  EPX_GPU_BACKEND_WINDOWS };
    run_case(&a);
    pcase_t b = { 4, 11, 4, 7168, 24, EPX_DTYPE_BF16, 0, 1, 0,
                  EPX_GPU_BACKEND_WINDOWS };
    run_case(&b);
    pcase_t one = { 1, 3, 2, 16, 8, EPX_DTYPE_FP32, 0, 1, 0,
                    EPX_GPU_BACKEND_WINDOWS };
    run_case(&one);
}

static void expert_major(void **state)
{
    (void)state;
    pcase_t a = { 3, 8, 3, 256, 32, EPX_DTYPE_BF16, 1, 4, 0,
                  EPX_GPU_BACKEND_WINDOWS };
    run_case(&a);
    pcase_t b = { 4, 3, 2, 24, 16, EPX_DTYPE_FP32, 1, 1, 0,
                  EPX_GPU_BACKEND_WINDOWS };   /* E < R */
    run_case(&b);
}

/* Device ranks over the NCCL backend, one rank per GPU (so 1 rank where
 * there is one GPU, 2 and 4 where there are as many): the same rounds,
 * cached ones included, and refusals (ids that differ, one rank cached,
 * a bad argument on one rank: EPX_ERR_PEER from the peers' recv) as
 * above; the host executor runs these cases above. */
static void nccl(void **state)
{
    (void)state;
#ifndef EPX_HAVE_NCCL
    skip();   /* built without the NCCL module */
#endif
    int ndev = 0;
    if (!device_ok || epx_cuda_devices(&ndev) != EPX_OK || ndev < 1)
        skip();
    pcase_t one = { 1, 3, 2, 16, 8, EPX_DTYPE_FP32, 0, 1, 0,
                    EPX_GPU_BACKEND_NCCL };
    pcase_t tm = { 2, 7, 3, 24, 40, EPX_DTYPE_FP32, 0, 1, 0,
                   EPX_GPU_BACKEND_NCCL };
    pcase_t em = { 2, 8, 3, 256, 32, EPX_DTYPE_BF16, 1, 4, 0,
                   EPX_GPU_BACKEND_NCCL };
    pcase_t tm4 = { 4, 11, 4, 7168, 24, EPX_DTYPE_BF16, 0, 1, 0,
                    EPX_GPU_BACKEND_NCCL };
    pcase_t em4 = { 4, 3, 2, 24, 16, EPX_DTYPE_FP32, 1, 1, 0,
                    EPX_GPU_BACKEND_NCCL };   /* E < R */
    pcase_t *cs[] = { &one, &tm, &em, &tm4, &em4 };
    for (size_t i = 0; i < sizeof(cs) / sizeof(cs[0]); i++) {
        if (cs[i]->R > ndev)
            continue;
        cs[i]->host = 0;
        fprintf(stderr, "# device threads: R %d, E %d, H %d, dtype %d, "
                "%s-major, NCCL\n", cs[i]->R, cs[i]->E, cs[i]->H,
                (int)cs[i]->dtype, cs[i]->em ? "expert" : "token");
        assert_int_equal(epxt_thread_ranks(cs[i]->R, 180, poll_rank, cs[i]),
                         0);
    }
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    epxt_init("test_executors_poll");
    setenv("CUDA_DEVICE_MAX_CONNECTIONS", "32", 0);
    device_ok = xmem_have_gpu();
    if (argc > 1 && !strcmp(argv[1], "--device") && !device_ok)
        return 77;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(token_major),
        cmocka_unit_test(expert_major),
        cmocka_unit_test(nccl),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
