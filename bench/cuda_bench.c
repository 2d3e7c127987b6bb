/*
 * epx-bench --device cuda: the GPU executor (<epx/cuda.h>) measured against
 * the device's own copy bandwidth in the same run.
 *
 * Ranks are threads of this process, each with its engine (its stream and
 * SM budget), all on GPU 0 (the windows backend, direct pointers); when
 * there are at least as many GPUs as ranks, the NCCL backend runs too, a
 * GPU per rank.  The limit: every rank, at the same time, copies the bytes
 * it must move in a phase with one cudaMemcpyAsync device to device on its
 * own stream and device placement.  Times are host clocks around the calls
 * and a stream synchronisation, after a barrier of the ranks; a phase's
 * time in an iteration is the slowest rank's.
 *
 * Verification (native wire): the expert output is the received x itself
 * (in place), so combine returns n(t) * x[t] exactly (n: the token's
 * destination ranks, token-major; its kept choices, expert-major and low
 * latency, combined unweighted), checked for every element of the last
 * iteration.  Quantized wires: the received row count is checked and the
 * expert output is zeros (combine must return zeros).
 *
 * --device-timing: CUDA events on each rank's stream around each phase,
 * read against one reference event per device, so that the ranks sharing
 * a GPU lie on one timeline: a phase's device span (first start to last
 * end over the ranks), each rank's own time and the start skew.  Two more
 * rows: a copy on the engine's SMs only (copy_sm.cu, the fair limit when
 * ranks share a GPU) and the engine on 1 token per rank (the fixed cost;
 * the rest of a phase's span is data).
 *
 * --json: the table goes to stderr and one JSON object to stdout (the
 * run's configuration, then per implementation its phase times, GB/s,
 * ratio to the copy limit and verification; bench/README.md, "GPU").
 */
#include "config.h"
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "bench.h"
#include "util/util.h"   /* bf16 rounding */
#include "util/tgroup.h"
#include "copy_sm.h"

#ifndef EPX_HAVE_CUDA
int bench_cuda_main(const bench_opts_t *o)
{
    (void)o;
    fprintf(stderr, "epx-bench: --device cuda: no CUDA device (epx was built "
            "without CUDA)\n");
    return BENCH_EXIT_NO_GPU;
}
#else
#include <cuda_runtime.h>
#include "epx/cuda.h"

enum { PH_DISPATCH = 0, PH_COMBINE = 1, NPH = 2 };
static const char *const ph_name[NPH] = { "dispatch", "combine" };
/* Quantiles of the slowest rank's time per iteration (the host bench's). */
enum { RUN_WINDOWS = 0, RUN_NCCL = 1, RUN_COPY = 2, RUN_SMCOPY = 3,
       RUN_FLOOR = 4, NRUN = 5 };
static const char *const run_name[NRUN] = { "epx-cuda", "epx-nccl",
                                            "d2d-copy", "sm-copy",
                                            "epx-cuda-1tok" };
/* The table's and the JSON's order: the limits first. */
static const int run_order[NRUN] = { RUN_COPY, RUN_SMCOPY, RUN_WINDOWS,
                                     RUN_NCCL, RUN_FLOOR };

typedef struct crank crank_t;

typedef struct cshared {
    const bench_opts_t *o;
    const bench_workload_t *wl;
    epx_tgroup_t g;
    int run, R, ndev;
    size_t wire_row;            /* bytes of a token row on the wire */
    double *times;              /* [R][NPH][iters] seconds */
    double *dev;                /* --device-timing: [R][NPH][iters][2]
                                   start, end in ms after ref[device] */
    cudaEvent_t *ref;           /* [devices]: each timeline's zero */
    int sms;                    /* blocks per rank: engine and sm-copy */
    double *bytes;              /* [R][NPH] per iteration */
    int64_t checked, mismatches;
    int64_t dropped;            /* low latency: rows dropped, last iteration */
    int failed;
    char msg[512];
    pthread_mutex_t mu;
} cshared_t;

struct crank {
    cshared_t *s;
    int rank;
};

static int cr_allgather(void *ctx, const void *send, void *recv, size_t n)
{
    crank_t *c = ctx;
    return epx__tgroup_allgather(&c->s->g, c->rank, send, recv, n);
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int rank_fail(cshared_t *s, int rank, const char *what,
                     const char *detail)
{
    pthread_mutex_lock(&s->mu);
    if (!s->failed)
        snprintf(s->msg, sizeof(s->msg), "%s: rank %d: %s: %s",
                 run_name[s->run], rank, what, detail);
    s->failed = 1;
    pthread_mutex_unlock(&s->mu);
    epx__tgroup_break(&s->g);   /* the others give up at their next barrier */
    return -1;
}
#define API(call)                                                              \
    do {                                                                       \
        epx_status_t st_ = (call);                                             \
        if (st_ != EPX_OK) {                                                   \
            rank_fail(s, me, #call, epx_last_error());                         \
            goto out;                                                          \
        }                                                                      \
    } while (0)
#define CUDA(call)                                                             \
    do {                                                                       \
        cudaError_t e_ = (call);                                               \
        if (e_ != cudaSuccess) {                                               \
            rank_fail(s, me, #call, cudaGetErrorString(e_));                   \
            goto out;                                                          \
        }                                                                      \
    } while (0)

/* What rank r sends per iteration: dispatch rows (a row per (token,
 * destination rank) token-major, per kept (token, expert) otherwise) on
 * the wire, and combine partials (one per (token, destination rank)). */
static void rank_bytes(const cshared_t *s, int r, double *b)
{
    const bench_workload_t *wl = s->wl;
    int64_t pairs = 0;
    for (int64_t i = 0; i < wl->T[r] * wl->topk; i++)
        pairs += wl->idx[r][i] >= 0;
    int per_expert = s->o->layout == EPX_LAYOUT_EXPERT_MAJOR ||
                     s->o->mode == EPX_MODE_LOW_LATENCY;
    b[PH_DISPATCH] = (double)(per_expert ? pairs : wl->rows_sent[r]) *
                     (double)s->wire_row;
    b[PH_COMBINE] = (double)wl->rows_sent[r] * wl->hidden * (double)wl->dsize;
}

/* Rows rank me receives token-major: tokens of every rank with an expert
 * here. */
static int64_t rows_expected(const bench_workload_t *wl, int me)
{
    int64_t n = 0;
    for (int r = 0; r < wl->nranks; r++)
        for (int64_t t = 0; t < wl->T[r]; t++) {
            int hit = 0;
            for (int k = 0; k < wl->topk; k++) {
                int32_t e = wl->idx[r][t * wl->topk + k];
                hit |= e >= 0 && wl->expert_rank[e] == me;
            }
            n += hit;
        }
    return n;
}

/* Native wire: out[t] = the sum over t's destination ranks d, ascending,
 * of d's partial, n_d * x[t] rounded to bf16 (n_d: 1 token-major; t's kept
 * choices at d otherwise, combined unweighted); exact in fp32.  Quantized
 * wires: zeros.  Every element. */
static void verify_out(cshared_t *s, int me, const float *out,
                       const uint16_t *x)
{
    const bench_workload_t *wl = s->wl;
    const int H = wl->hidden, K = wl->topk, R = wl->nranks;
    const int tm = s->o->layout == EPX_LAYOUT_TOKEN_MAJOR &&
                   s->o->mode != EPX_MODE_LOW_LATENCY;
    int64_t bad = 0, checked = 0;
    int *cnt = calloc((size_t)R, sizeof(int));
    if (!cnt)
        return;
    for (int64_t t = 0; t < wl->T[me]; t++) {
        memset(cnt, 0, sizeof(int) * (size_t)R);
        for (int k = 0; k < K; k++) {
            int32_t e = wl->idx[me][t * K + k];
            if (e >= 0)
                cnt[wl->expert_rank[e]]++;
        }
        for (int h = 0; h < H; h++) {
            float want = 0.0f;
            if (wl->wire == EPX_WIRE_NATIVE) {
                float xf = epx__bf16_to_f32(x[t * H + h]);
                for (int d = 0; d < R; d++)
                    if (cnt[d])
                        want += epx__bf16_to_f32(epx__f32_to_bf16(
                            (float)(tm ? 1 : cnt[d]) * xf));
            }
            bad += out[t * H + h] != want;
            checked++;
        }
    }
    free(cnt);
    pthread_mutex_lock(&s->mu);
    s->checked += checked;
    s->mismatches += bad;
    pthread_mutex_unlock(&s->mu);
}

/* --device-timing: the times of events a (start) and b (end) of phase p,
 * timed iteration i, on the device's timeline.  Both completed. */
static int dev_mark(cshared_t *s, int me, int dev, cudaEvent_t a,
                    cudaEvent_t b, int p, int i)
{
    double *d = s->dev + (((size_t)me * NPH + p) * s->o->iters + i) * 2;
    /* The length from a to b itself: a float of ms since the reference
     * loses its microseconds after some seconds. */
    float start = 0, len = 0;
    cudaError_t e = cudaEventElapsedTime(&start, s->ref[dev], a);
    if (e == cudaSuccess)
        e = cudaEventElapsedTime(&len, a, b);
    if (e != cudaSuccess)
        return rank_fail(s, me, "cudaEventElapsedTime", cudaGetErrorString(e));
    d[0] = start;
    d[1] = (double)start + len;
    return 0;
}

/* --cuda-graph: end the capture the caller began on st (its calls into
 * the engine returned est) and instantiate the graph into *gx.  0, or -1
 * with the rank failed. */
static int capture_end(cshared_t *s, int me, cudaStream_t st,
                       epx_status_t est, const char *what,
                       cudaGraphExec_t *gx)
{
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(st, &g);
    if (est != EPX_OK)
        rank_fail(s, me, what, epx_last_error());
    else if (e != cudaSuccess)
        rank_fail(s, me, "cudaStreamEndCapture", cudaGetErrorString(e));
    else if ((e = cudaGraphInstantiate(gx, g, 0)) != cudaSuccess)
        rank_fail(s, me, "cudaGraphInstantiate", cudaGetErrorString(e));
    if (g)
        cudaGraphDestroy(g);
    return est == EPX_OK && e == cudaSuccess ? 0 : -1;
}

static void *rank_main(void *arg)
{
    crank_t *c = arg;
    cshared_t *s = c->s;
    const bench_opts_t *o = s->o;
    const bench_workload_t *wl = s->wl;
    const int me = c->rank, R = s->R, H = wl->hidden, K = wl->topk;
    const int iters = o->iters, total = o->warmup + o->iters;
    const int64_t T = wl->T[me];
    const int dev = s->run == RUN_NCCL ? me : 0;
    const int dt = o->device_timing;
    cudaEvent_t ev[4] = { NULL, NULL, NULL, NULL };   /* phase starts, ends */
    epx_comm_t *comm = NULL;
    epx_moe_t *m = NULL;
    epx_handle_t *h = NULL, *gh = NULL;   /* eager call, captured call */
    cudaStream_t st = NULL;
    void *dx = NULL, *didx = NULL, *dw = NULL, *dout = NULL, *dy = NULL;
    void *csrc = NULL, *cdst = NULL;
    uint16_t *hx = NULL;
    float *hout = NULL;
    double *tm = s->times + (size_t)me * NPH * (size_t)iters;
    const double *b = s->bytes + (size_t)me * NPH;   /* counted by main */

    CUDA(cudaSetDevice(dev));
    CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    for (int i = 0; dt && i < 4; i++)
        CUDA(cudaEventCreate(&ev[i]));
    if (s->run == RUN_COPY || s->run == RUN_SMCOPY) {
        size_t n = (size_t)(b[0] > b[1] ? b[0] : b[1]) + 16;
        CUDA(cudaMalloc(&csrc, n));
        CUDA(cudaMalloc(&cdst, n));
        CUDA(cudaMemset(csrc, 1, n));
        for (int it = 0; it < total; it++)
            for (int p = 0; p < NPH; p++) {
                if (epx__tgroup_barrier(&s->g))
                    goto out;
                double t0 = now_s();
                if (dt)
                    CUDA(cudaEventRecord(ev[0], st));
                if (s->run == RUN_SMCOPY) {
                    int e = bench_copy_sm(cdst, csrc, (size_t)b[p], s->sms, st);
                    if (e) {
                        rank_fail(s, me, "bench_copy_sm",
                                  cudaGetErrorString((cudaError_t)e));
                        goto out;
                    }
                } else {
                    CUDA(cudaMemcpyAsync(cdst, csrc, (size_t)b[p],
                                         cudaMemcpyDeviceToDevice, st));
                }
                if (dt)
                    CUDA(cudaEventRecord(ev[1], st));
                CUDA(cudaStreamSynchronize(st));
                if (it < o->warmup)
                    continue;
                tm[p * iters + it - o->warmup] = now_s() - t0;
                if (dt && dev_mark(s, me, dev, ev[0], ev[1], p,
                                   it - o->warmup))
                    goto out;
            }
        goto out;
    }

    epx_comm_params_t cp = EPX_COMM_PARAMS_INIT;
    cp.bootstrap = EPX_BOOTSTRAP_ALLGATHER;
    cp.rank = me;
    cp.nranks = R;
    cp.allgather = cr_allgather;
    cp.allgather_ctx = c;
    API(epx_comm_create(&cp, &comm));
    epx_moe_params_t mp = EPX_MOE_PARAMS_INIT;
    mp.hidden = H;
    mp.num_experts = wl->experts;
    mp.topk = K;
    mp.max_tokens_per_rank = (int)wl->max_T;
    mp.dtype = wl->dtype;
    mp.layout = o->mode == EPX_MODE_LOW_LATENCY ? EPX_LAYOUT_EXPERT_MAJOR
                                                : o->layout;
    mp.expert_alignment = mp.layout == EPX_LAYOUT_EXPERT_MAJOR ? o->align : 1;
    mp.mode = o->mode;
    mp.wire = wl->wire;
    mp.ll_capacity = o->ll_capacity;
    mp.ll_buffers = o->ll_buffers;
    mp.flags = o->mode == EPX_MODE_LOW_LATENCY && o->ll_drop
               ? EPX_MOE_LL_DROP : 0u;
    mp.device = dev;
    mp.num_sms = o->sms;   /* 0: the engine's default, as s->sms */
    mp.gpu_backend = s->run == RUN_NCCL ? EPX_GPU_BACKEND_NCCL
                                        : EPX_GPU_BACKEND_WINDOWS;
    API(epx_moe_create(comm, &mp, &m));

    const size_t es = wl->dsize, xb = (size_t)(T * H) * es;
    hx = malloc(xb + 16);
    hout = malloc(sizeof(float) * (size_t)(T * H) + 16);
    if (!hx || !hout) {
        rank_fail(s, me, "malloc", "out of memory");
        goto out;
    }
    for (int64_t t = 0; t < T; t++)
        bench_x_row(wl, me, t, (char *)hx + (size_t)t * H * es);
    CUDA(cudaMalloc(&dx, xb + 16));
    CUDA(cudaMalloc(&didx, (size_t)(T * K) * 4 + 16));
    CUDA(cudaMalloc(&dw, (size_t)(T * K) * 4 + 16));
    CUDA(cudaMalloc(&dout, sizeof(float) * (size_t)(T * H) + 16));
    /* On st: a plain cudaMemcpy may return before its DMA lands, and st
     * does not wait for the legacy stream. */
    CUDA(cudaMemcpyAsync(dx, hx, xb, cudaMemcpyHostToDevice, st));
    CUDA(cudaMemcpyAsync(didx, wl->idx[me], (size_t)(T * K) * 4,
                         cudaMemcpyHostToDevice, st));
    CUDA(cudaMemcpyAsync(dw, wl->w[me], (size_t)(T * K) * 4,
                         cudaMemcpyHostToDevice, st));
    CUDA(cudaStreamSynchronize(st));
    epx_dispatch_args_t a = EPX_DISPATCH_ARGS_INIT;
    a.x = (epx_tensor_t){ dx, wl->dtype, T, H };
    a.topk_idx = (epx_tensor_t){ didx, EPX_DTYPE_INT32, T, K };
    a.topk_weights = (epx_tensor_t){ dw, EPX_DTYPE_FP32, T, K };
    a.stream = st;
    epx_tensor_t out = { dout, EPX_DTYPE_FP32, T, H };
    const int tmaj = mp.layout == EPX_LAYOUT_TOKEN_MAJOR;
    const int64_t want_rows = tmaj ? rows_expected(wl, me) : -1;
    size_t ycap = 0;
    /* --cuda-graph: the dispatch and the combine captured once, in the
     * first timed iteration, and replayed by every timed iteration.  The
     * captured call keeps its buffer, its recv descriptor (grv) and its
     * y, so the y below stays the same from then on. */
    cudaGraphExec_t gx[2] = { NULL, NULL };
    epx_recv_t grv = { .struct_size = sizeof(grv) };

    for (int it = 0; it < total; it++) {
        const int graph = o->cuda_graph && it >= o->warmup;
        if (graph && !gx[0]) {
            CUDA(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
            epx_status_t e = epx_dispatch_send(m, &a, &gh);
            if (e == EPX_OK)
                e = epx_dispatch_recv(m, gh, &grv);
            if (capture_end(s, me, st, e, "capturing the dispatch", &gx[0]))
                goto out;
        }
        epx_recv_t rv = { .struct_size = sizeof(rv) };
        if (epx__tgroup_barrier(&s->g))
            goto out;
        double t0 = now_s();
        if (dt)
            CUDA(cudaEventRecord(ev[0], st));
        if (graph) {
            CUDA(cudaGraphLaunch(gx[0], st));
            rv = grv;
        } else {
            API(epx_dispatch_send(m, &a, &h));
            API(epx_dispatch_recv(m, h, &rv));
        }
        if (dt)
            CUDA(cudaEventRecord(ev[1], st));
        CUDA(cudaStreamSynchronize(st));
        double t1 = now_s();
        if (o->mode == EPX_MODE_LOW_LATENCY) {
            int64_t dropped = 0;
            API(epx_moe_check(m, &dropped));
            if (it == total - 1) {
                pthread_mutex_lock(&s->mu);
                s->dropped += dropped;
                pthread_mutex_unlock(&s->mu);
            }
        }
        if (want_rows >= 0 && rv.num_rows != want_rows) {
            char d[96];
            snprintf(d, sizeof(d), "%lld rows, expected %lld",
                     (long long)rv.num_rows, (long long)want_rows);
            rank_fail(s, me, "dispatch", d);
            goto out;
        }
        /* The expert: x itself in place (native), zeros apart (quantized) */
        epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
        ca.y = (epx_tensor_t){ rv.x.data, wl->dtype, rv.num_rows, H };
        if (wl->wire != EPX_WIRE_NATIVE) {
            size_t need = (size_t)rv.num_rows * H * es + 16;
            if (need > ycap) {
                cudaFree(dy);
                dy = NULL;
                CUDA(cudaMalloc(&dy, need));
                /* on st: the engine's kernels do not wait for the
                 * legacy stream.  (No peer has a kernel in flight that
                 * waits for this rank here, so cudaFree cannot hang.) */
                CUDA(cudaMemsetAsync(dy, 0, need, st));
                ycap = need;
            }
            ca.y.data = dy;
        }
        ca.flags = tmaj ? 0u : EPX_COMBINE_UNWEIGHTED;
        ca.stream = st;
        if (graph && !gx[1]) {
            CUDA(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
            epx_status_t e = epx_combine_send(m, gh, &ca);
            if (e == EPX_OK)
                e = epx_combine_recv(m, gh, &out);
            if (capture_end(s, me, st, e, "capturing the combine", &gx[1]))
                goto out;
        }
        if (epx__tgroup_barrier(&s->g))
            goto out;
        double t2 = now_s();
        if (dt)
            CUDA(cudaEventRecord(ev[2], st));
        if (graph) {
            CUDA(cudaGraphLaunch(gx[1], st));
        } else {
            API(epx_combine_send(m, h, &ca));
            API(epx_combine_recv(m, h, &out));
            epx_handle_release(h);
            h = NULL;
        }
        if (dt)
            CUDA(cudaEventRecord(ev[3], st));
        CUDA(cudaStreamSynchronize(st));
        double t3 = now_s();
        if (it >= o->warmup) {
            tm[PH_DISPATCH * iters + it - o->warmup] = t1 - t0;
            tm[PH_COMBINE * iters + it - o->warmup] = t3 - t2;
            if (dt && (dev_mark(s, me, dev, ev[0], ev[1], PH_DISPATCH,
                                it - o->warmup) ||
                       dev_mark(s, me, dev, ev[2], ev[3], PH_COMBINE,
                                it - o->warmup)))
                goto out;
        }
    }
    CUDA(cudaMemcpy(hout, dout, sizeof(float) * (size_t)(T * H),
                    cudaMemcpyDeviceToHost));
    if (!o->ll_drop)   /* dropped rows are missing by design */
        verify_out(s, me, hout, hx);
out:
    for (int i = 0; i < 2; i++)
        if (gx[i])
            cudaGraphExecDestroy(gx[i]);
    epx_handle_release(h);
    epx_handle_release(gh);
    if (m)
        epx_moe_destroy(m);
    if (comm)
        epx_comm_destroy(comm);
    cudaFree(dx);
    cudaFree(didx);
    cudaFree(dw);
    cudaFree(dout);
    cudaFree(dy);
    cudaFree(csrc);
    cudaFree(cdst);
    for (int i = 0; i < 4; i++)
        if (ev[i])
            cudaEventDestroy(ev[i]);
    if (st)
        cudaStreamDestroy(st);
    free(hx);
    free(hout);
    return NULL;
}

/* Slowest rank per iteration, then the quantiles over iterations
 * (seconds). */
static void phase_stats(const cshared_t *s, int p, double *tmp,
                        double q[BENCH_NQ])
{
    const int iters = s->o->iters;
    for (int it = 0; it < iters; it++) {
        double mx = 0;
        for (int r = 0; r < s->R; r++) {
            double v = s->times[((size_t)r * NPH + p) * iters + it];
            mx = v > mx ? v : mx;
        }
        tmp[it] = mx;
    }
    bench_quantiles(tmp, iters, q);
}

/* --device-timing, one phase: quantiles over iterations of the device
 * span (seconds), and the p50s of the slowest and the mean rank's time and
 * of the start skew.  Ranks on different GPUs (the NCCL run) share no
 * timeline: their span is the slowest rank's time, their skew unknown. */
typedef struct dev_res {
    double span[BENCH_NQ];
    double rank_max, rank_mean, skew;
} dev_res_t;

static void dev_stats(const cshared_t *s, int p, double *tmp, dev_res_t *d)
{
    const int iters = s->o->iters, R = s->R, one = s->run != RUN_NCCL;
    double q[BENCH_NQ];
    for (int what = 0; what < 4; what++) {
        if (what == 3 && !one) {
            d->skew = NAN;
            break;
        }
        for (int it = 0; it < iters; it++) {
            double lo = INFINITY, hi = -INFINITY, late = -INFINITY;
            double mx = 0, sum = 0;
            for (int r = 0; r < R; r++) {
                const double *e = s->dev +
                                 (((size_t)r * NPH + p) * iters + it) * 2;
                const double len = (double)e[1] - e[0];
                lo = fmin(lo, e[0]);
                hi = fmax(hi, e[1]);
                late = fmax(late, e[0]);
                mx = fmax(mx, len);
                sum += len;
            }
            tmp[it] = 1e-3 * (what == 0 ? (one ? hi - lo : mx)
                              : what == 1 ? mx
                              : what == 2 ? sum / R : late - lo);
        }
        bench_quantiles(tmp, iters, q);
        if (what == 0)
            memcpy(d->span, q, sizeof(q));
        else
            *(what == 1 ? &d->rank_max : what == 2 ? &d->rank_mean
                                                   : &d->skew) =
                q[BENCH_Q_P50];
    }
}

/* What one implementation gave, for the table and the JSON. */
typedef struct run_res {
    enum { RES_NONE = 0, RES_RAN, RES_SKIPPED, RES_FAILED } state;
    char why[512];              /* skipped or failed: why */
    double s[NPH][BENCH_NQ];          /* seconds */
    double gbps[NPH], copy_gbps[NPH];
    int64_t checked, mismatches, dropped;
    dev_res_t dev[NPH];         /* --device-timing */
} run_res_t;

/* The engine's kernel set (EPX_CUDA_KERNELS, vetted by the library). */
static const char *kernel_set(void)
{
    const char *k = getenv("EPX_CUDA_KERNELS");
    return k && *k ? k : "classic";
}

/* --device-timing fields of one result: per phase the device span's
 * quantiles, the slowest and mean rank and the start skew (p50, us), the
 * span over the sm-copy row's, and for the engine the span less the
 * 1-token run's (its data part). */
static void json_dev(FILE *f, const bench_opts_t *o, const run_res_t *r,
                     const run_res_t res[NRUN])
{
    if (!o->device_timing)
        return;
    for (int p = 0; p < NPH; p++) {
        const dev_res_t *d = &r->dev[p];
        char name[48];
        snprintf(name, sizeof(name), "%s_device_span", ph_name[p]);
        bench_json_quantiles(f, name, d->span, 1e6);
        fprintf(f, ",\n     \"%s_device_rank_max_us\": ", ph_name[p]);
        bench_json_num(f, d->rank_max * 1e6);
        fprintf(f, ", \"%s_device_rank_mean_us\": ", ph_name[p]);
        bench_json_num(f, d->rank_mean * 1e6);
        fprintf(f, ", \"%s_device_skew_us\": ", ph_name[p]);
        bench_json_num(f, d->skew * 1e6);
        const run_res_t *sm = &res[RUN_SMCOPY], *fl = &res[RUN_FLOOR];
        const double t = d->span[BENCH_Q_P50];
        if (sm->state == RES_RAN && r != sm) {
            fprintf(f, ", \"%s_device_x_sm_copy\": ", ph_name[p]);
            bench_json_num(f, t / sm->dev[p].span[BENCH_Q_P50]);
        }
        if (fl->state == RES_RAN && r != fl && r != sm &&
            r != &res[RUN_COPY]) {
            fprintf(f, ", \"%s_device_data_us\": ", ph_name[p]);
            bench_json_num(f, (t - fl->dev[p].span[BENCH_Q_P50]) * 1e6);
        }
    }
}

/* One JSON object: the configuration, then per implementation its times
 * (microseconds), bandwidth, ratio to the copy limit and verification. */
static void print_json(FILE *f, const bench_opts_t *o,
                       const bench_workload_t *wl, const cshared_t *s,
                       const char *gpu, int ndev, const run_res_t res[NRUN],
                       const double bytes[NPH], int verified)
{
    const int ll = o->mode == EPX_MODE_LOW_LATENCY;
    bench_wire_t w;
    bench_wire_shape(wl->wire, wl->hidden, wl->dsize, &w);
    fprintf(f, "{\n  \"verified\": %s,\n", verified ? "true" : "false");
    fprintf(f, "  \"config\": {\n    \"device\": \"cuda\",\n"
            "    \"gpu\": ");
    bench_json_str(f, gpu);
    fprintf(f, ",\n    \"gpus\": %d,\n    \"ranks\": %d,\n"
            "    \"launcher\": \"threads\",\n    \"epx_version\": ", ndev,
            s->R);
    bench_json_str(f, epx_version_string());
    fprintf(f, ",\n    \"tokens_per_rank\": [");
    for (int r = 0; r < wl->nranks; r++)
        fprintf(f, "%s%lld", r ? ", " : "", (long long)wl->T[r]);
    fprintf(f, "],\n    \"hidden\": %d,\n    \"experts\": %d,\n"
            "    \"topk\": %d,\n    \"dtype\": \"%s\",\n"
            "    \"mode\": \"%s\",\n    \"layout\": \"%s\",\n"
            "    \"expert_alignment\": %d,\n",
            wl->hidden, wl->experts, wl->topk, bench_dtype_name(wl->dtype),
            ll ? "ll" : "ht",
            ll ? "expert" : bench_layout_name(o->layout),
            ll || o->layout == EPX_LAYOUT_EXPERT_MAJOR ? o->align : 1);
    if (ll)
        fprintf(f, "    \"ll_capacity\": %d,\n    \"ll_buffers\": %d,\n"
                "    \"ll_drop\": %s,\n    \"ll_rows_dropped\": %lld,\n"
                "    \"cuda_graph\": %s,\n",
                o->ll_capacity > 0 ? o->ll_capacity : (int)wl->max_T,
                o->ll_buffers > 0 ? o->ll_buffers : 2,
                o->ll_drop ? "true" : "false",
                (long long)res[RUN_WINDOWS].dropped,
                o->cuda_graph ? "true" : "false");
    fprintf(f, "    \"wire\": \"%s\",\n    \"wire_bytes_per_token_row\": "
            "%zu,\n    \"wire_data_bytes\": %zu,\n"
            "    \"wire_scale_bytes\": %zu,\n    \"wire_global_bytes\": "
            "%zu,\n    \"routing\": ",
            wl->wire == EPX_WIRE_NATIVE ? bench_dtype_name(wl->dtype)
                                        : bench_wire_name(wl->wire),
            w.data_bytes + w.scale_bytes + w.global_bytes, w.data_bytes,
            w.scale_bytes, w.global_bytes);
    bench_json_str(f, o->routing_str);
    fprintf(f, ",\n    \"drop\": ");
    bench_json_num(f, o->drop);
    fprintf(f, ",\n    \"device_timing\": %s,\n    \"sms_per_rank\": %d",
            o->device_timing ? "true" : "false", s->sms);
    fprintf(f, ",\n    \"kernels\": ");
    bench_json_str(f, kernel_set());
    fprintf(f, ",\n    \"seed\": %llu,\n    \"iters\": %d,\n"
            "    \"warmup\": %d,\n    \"dispatch_bytes\": %.0f,\n"
            "    \"combine_bytes\": %.0f\n  },\n  \"results\": [",
            (unsigned long long)o->seed, o->iters, o->warmup,
            bytes[PH_DISPATCH], bytes[PH_COMBINE]);
    const char *sep = "";
    for (int i = 0; i < NRUN; i++) {
        const int run = run_order[i];
        const run_res_t *r = &res[run];
        if (r->state == RES_NONE)
            continue;
        fprintf(f, "%s\n    {\"impl\": \"%s\"", sep, run_name[run]);
        sep = ",";
        if (r->state != RES_RAN) {
            fprintf(f, ", \"%s\": ",
                    r->state == RES_SKIPPED ? "skipped" : "failed");
            bench_json_str(f, r->why);
            fputc('}', f);
            continue;
        }
        for (int p = 0; p < NPH; p++)
            bench_json_quantiles(f, ph_name[p], r->s[p], 1e6);
        if (run == RUN_FLOOR) {   /* the fixed cost: no bytes to speak of */
            json_dev(f, o, r, res);
            bench_json_verified(f, r->checked, r->mismatches);
            fputc('}', f);
            continue;
        }
        json_dev(f, o, r, res);
        for (int p = 0; p < NPH; p++) {
            fprintf(f, ",\n     \"%s_gbps\": ", ph_name[p]);
            bench_json_num(f, r->gbps[p]);
            if (run != RUN_COPY && run != RUN_SMCOPY) {
                fprintf(f, ", \"%s_vs_copy\": ", ph_name[p]);
                bench_json_num(f, r->copy_gbps[p] > 0
                                      ? r->gbps[p] / r->copy_gbps[p] : NAN);
            }
        }
        if (run != RUN_COPY && run != RUN_SMCOPY)
            bench_json_verified(f, r->checked, r->mismatches);
        fputc('}', f);
    }
    fprintf(f, "\n  ]\n}\n");
}

/* --device-timing's table: per implementation and phase the p50 of the
 * device span, of the slowest and the mean rank and of the start skew,
 * the span over sm-copy's (the "x the SM-limited copy") and the
 * span less the 1-token run's (data). */
static void print_dev_table(FILE *tf, const run_res_t res[NRUN])
{
    const run_res_t *sm = &res[RUN_SMCOPY], *fl = &res[RUN_FLOOR];
    fprintf(tf, "# device timing (CUDA events on one timeline per GPU), "
            "p50 over iterations, us\n");
    fprintf(tf, "# %-13s %-9s %9s %9s %9s %9s %9s %9s\n", "impl", "phase",
            "span", "rank_max", "rank_mean", "skew", "x_smcopy", "data");
    for (int i = 0; i < NRUN; i++) {
        const int run = run_order[i];
        const run_res_t *r = &res[run];
        if (r->state != RES_RAN)
            continue;
        for (int p = 0; p < NPH; p++) {
            const dev_res_t *d = &r->dev[p];
            const double t = d->span[BENCH_Q_P50];
            const int eng = run == RUN_WINDOWS || run == RUN_NCCL;
            fprintf(tf, "  %-13s %-9s %9.1f %9.1f %9.1f %9.1f", run_name[run],
                    ph_name[p], t * 1e6, d->rank_max * 1e6,
                    d->rank_mean * 1e6, d->skew * 1e6);
            if (sm->state == RES_RAN && run != RUN_SMCOPY)
                fprintf(tf, " %9.2f", t / sm->dev[p].span[BENCH_Q_P50]);
            else
                fprintf(tf, " %9s", "-");
            if (eng && fl->state == RES_RAN)
                fprintf(tf, " %9.1f\n",
                        (t - fl->dev[p].span[BENCH_Q_P50]) * 1e6);
            else
                fprintf(tf, " %9s\n", "-");
        }
    }
}

static int run_one(cshared_t *s, int run)
{
    s->run = run;
    s->failed = 0;
    s->msg[0] = '\0';
    s->checked = s->mismatches = 0;
    epx__tgroup_init(&s->g, s->R, 120);
    /* --device-timing: each device's zero, recorded and complete before
     * any rank records an event there */
    const int ndev_used = s->o->device_timing ? (run == RUN_NCCL ? s->R : 1)
                                              : 0;
    for (int d = 0; d < ndev_used && !s->failed; d++) {
        cudaError_t e = cudaSetDevice(d);
        if (e == cudaSuccess)
            e = cudaEventCreate(&s->ref[d]);
        if (e == cudaSuccess)
            e = cudaEventRecord(s->ref[d], NULL);
        if (e == cudaSuccess)
            e = cudaEventSynchronize(s->ref[d]);
        if (e != cudaSuccess) {
            s->failed = 1;
            snprintf(s->msg, sizeof(s->msg), "device %d: timeline event: %s",
                     d, cudaGetErrorString(e));
        }
    }
    crank_t *c = calloc((size_t)s->R, sizeof(*c));
    pthread_t *th = calloc((size_t)s->R, sizeof(*th));
    const int pre = s->failed;   /* no rank starts after a failure */
    int started = 0;
    if (!c || !th) {
        s->failed = 1;
        snprintf(s->msg, sizeof(s->msg), "out of memory");
    }
    for (; c && th && !pre && started < s->R; started++) {
        c[started] = (crank_t){ s, started };
        if (pthread_create(&th[started], NULL, rank_main, &c[started])) {
            s->failed = 1;
            snprintf(s->msg, sizeof(s->msg), "pthread_create failed");
            epx__tgroup_break(&s->g);
            break;
        }
    }
    for (int r = 0; r < started; r++)
        pthread_join(th[r], NULL);
    for (int d = 0; d < ndev_used; d++)
        if (s->ref[d]) {
            cudaEventDestroy(s->ref[d]);
            s->ref[d] = NULL;
        }
    epx__tgroup_fini(&s->g);
    free(c);
    free(th);
    return s->failed ? -1 : 0;
}

int bench_cuda_main(const bench_opts_t *o)
{
    int ndev = 0;
    /* The ranks are threads of one context: each rank's streams need
     * hardware queues of their own, or a kernel waiting for a peer can
     * queue in front of that peer's kernel (src/cuda/README.md, "Ranks
     * as threads").  Read when the context is created, so set first. */
    setenv("CUDA_DEVICE_MAX_CONNECTIONS", "32", 0);
    if (epx_cuda_devices(&ndev) != EPX_OK || ndev < 1) {
        fprintf(stderr, "epx-bench: --device cuda: no CUDA device (%s)\n",
                epx_last_error());
        return BENCH_EXIT_NO_GPU;
    }
    if (o->trace_dir || o->dump_dir || o->balance || o->overlap ||
        o->hierarchical || o->nsweep > 0 || o->dtype != EPX_DTYPE_BF16) {
        fprintf(stderr, "epx-bench: --device cuda takes bf16 rows (--dtype "
                "bf16 or a quantized wire), no --trace, --dump, --balance, "
                "--overlap, --hierarchical or --tokens-sweep\n");
        return 2;
    }
    const int R = o->ranks ? o->ranks : 8;
    bench_workload_t wl;
    char err[256];
    if (bench_workload_build(o, R, &wl, err, sizeof(err)) != 0) {
        fprintf(stderr, "epx-bench: %s\n", err);
        bench_workload_free(&wl);
        return 2;
    }
    cshared_t s;
    memset(&s, 0, sizeof(s));
    s.o = o;
    s.wl = &wl;
    s.R = R;
    s.ndev = ndev;
    bench_wire_t bw;
    bench_wire_shape(wl.wire, wl.hidden, wl.dsize, &bw);
    s.wire_row = bw.data_bytes + bw.scale_bytes + bw.global_bytes;
    s.times = calloc((size_t)R * NPH * (size_t)o->iters, sizeof(double));
    s.bytes = calloc((size_t)R * NPH, sizeof(double));
    double *tmp = calloc((size_t)o->iters, sizeof(double));
    if (o->device_timing) {
        s.dev = calloc((size_t)R * NPH * (size_t)o->iters * 2, sizeof(double));
        s.ref = calloc((size_t)(ndev > R ? ndev : R), sizeof(cudaEvent_t));
    }
    pthread_mutex_init(&s.mu, NULL);
    if (!s.times || !s.bytes || !tmp ||
        (o->device_timing && (!s.dev || !s.ref))) {
        fprintf(stderr, "epx-bench: out of memory\n");
        return 2;
    }
    struct cudaDeviceProp prop;
    memset(&prop, 0, sizeof(prop));
    if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess)
        snprintf(prop.name, sizeof(prop.name), "unknown");
    /* The engine's default SMs per rank (src/cuda/engine.c): the device's
     * shared by the ranks on it, all R on GPU 0 here. */
    s.sms = o->sms ? o->sms : prop.multiProcessorCount / R;
    if (s.sms < 1)
        s.sms = 1;
    /* --device-timing's floor: the same run on 1 token per rank. */
    bench_workload_t wl1;
    memset(&wl1, 0, sizeof(wl1));
    if (o->device_timing) {
        bench_opts_t o1 = *o;
        int64_t one = 1;
        o1.tokens = &one;
        o1.ntokens = 1;
        if (bench_workload_build(&o1, R, &wl1, err, sizeof(err)) != 0) {
            fprintf(stderr, "epx-bench: the 1-token run: %s\n", err);
            bench_workload_free(&wl1);
            bench_workload_free(&wl);
            return 2;
        }
    }
    FILE *tf = o->json ? stderr : stdout;   /* the table */
    const int ll = o->mode == EPX_MODE_LOW_LATENCY;
    fprintf(tf, "# epx-bench --device cuda: %d ranks (threads), %s x %d, "
            "%lld tokens/rank max, hidden %d, %d experts, top-%d, %s, "
            "layout %s, wire %s, %d iterations%s (+%d warm-up)\n",
            R, prop.name, ndev, (long long)wl.max_T, wl.hidden, wl.experts,
            wl.topk, ll ? "low latency" : "throughput",
            ll ? "expert" : bench_layout_name(o->layout),
            bench_wire_name(wl.wire), o->iters,
            o->cuda_graph ? " (CUDA graph replays)" : "", o->warmup);
    if (o->device_timing)
        fprintf(tf, "# device timing: CUDA events; %d SMs per rank for the "
                "engine and sm-copy\n", s.sms);
    fprintf(tf, "# kernels: %s (EPX_CUDA_KERNELS)\n", kernel_set());
    fprintf(tf, "# %-9s %-9s %12s %12s %12s %9s  %s\n", "impl", "phase",
            "p50_us", "GB/s", "copy_GB/s", "vs_copy", "verified");

    run_res_t res[NRUN];
    memset(res, 0, sizeof(res));
    double lim[NPH] = { 0, 0 }, sum[NPH] = { 0, 0 };
    for (int r = 0; r < R; r++) {
        rank_bytes(&s, r, s.bytes + (size_t)r * NPH);
        for (int p = 0; p < NPH; p++)
            sum[p] += s.bytes[(size_t)r * NPH + p];
    }
    int rc = 0, verified = 1;   /* every GPU run checked and exact */
    for (int i = 0; i < NRUN; i++) {
        const int run = run_order[i];
        run_res_t *rr = &res[run];
        if ((run == RUN_SMCOPY || run == RUN_FLOOR) && !o->device_timing)
            continue;
        if (run == RUN_NCCL && (ndev < R || ll ||
                                o->layout == EPX_LAYOUT_EXPERT_MAJOR)) {
            rr->state = RES_SKIPPED;
            snprintf(rr->why, sizeof(rr->why), "%s",
                     ll || o->layout == EPX_LAYOUT_EXPERT_MAJOR
                     ? "token-major throughput only"
                     : "needs one GPU per rank");
            fprintf(tf, "# %-9s skipped: %s\n", run_name[run], rr->why);
            continue;
        }
        s.dropped = 0;
        s.wl = run == RUN_FLOOR ? &wl1 : &wl;
        if (run_one(&s, run) != 0) {
            rr->state = RES_FAILED;
            verified = 0;
            snprintf(rr->why, sizeof(rr->why), "%s", s.msg);
            fprintf(tf, "# %-9s FAILED: %s\n", run_name[run], s.msg);
            rc = 1;
            continue;
        }
        rr->state = RES_RAN;
        if (run != RUN_COPY && run != RUN_SMCOPY)
            verified &= s.checked > 0 && s.mismatches == 0;
        rr->checked = s.checked;
        rr->mismatches = s.mismatches;
        rr->dropped = s.dropped;
        for (int p = 0; p < NPH; p++) {
            phase_stats(&s, p, tmp, rr->s[p]);
            if (o->device_timing)
                dev_stats(&s, p, tmp, &rr->dev[p]);
            double t = rr->s[p][BENCH_Q_P50];
            double gbs = t > 0 ? sum[p] / t / 1e9 : 0;
            rr->gbps[p] = gbs;
            if (run == RUN_FLOOR) {   /* other bytes: time only */
                fprintf(tf, "  %-9s %-9s %12.1f %12s %12s %9s  %s\n",
                        run_name[run], ph_name[p], t * 1e6, "-", "-", "-",
                        s.mismatches ? "MISMATCH" : s.checked ? "yes"
                                                              : "unchecked");
                continue;
            }
            if (run == RUN_COPY || run == RUN_SMCOPY) {
                if (run == RUN_COPY)   /* vs_copy: the whole device's */
                    lim[p] = gbs;
                fprintf(tf, "  %-9s %-9s %12.1f %12.1f %12s %9s  -\n",
                        run_name[run], ph_name[p], t * 1e6, gbs, "-", "-");
                continue;
            }
            rr->copy_gbps[p] = lim[p];
            fprintf(tf, "  %-9s %-9s %12.1f %12.1f %12.1f %8.1f%%  %s\n",
                    run_name[run], ph_name[p], t * 1e6, gbs, lim[p],
                    lim[p] > 0 ? 100.0 * gbs / lim[p] : 0.0,
                    s.mismatches ? "MISMATCH" : s.checked ? "yes"
                                                          : "unchecked");
        }
        if (s.mismatches) {
            fprintf(tf, "# %s: %lld of %lld output elements differ\n",
                    run_name[run], (long long)s.mismatches,
                    (long long)s.checked);
            rc = 1;
        }
    }
    fprintf(tf, "# bytes: dispatch rows on the wire (token-major: per "
            "(token, destination rank); else per kept (token, expert)), "
            "combine partials per (token, destination rank), summed over "
            "ranks; GB/s = 1e9 bytes/s over the slowest rank's time\n");
    if (o->device_timing)
        print_dev_table(tf, res);
    if (o->json)
        print_json(stdout, o, &wl, &s, prop.name, ndev, res, sum,
                   rc == 0 && verified);
    pthread_mutex_destroy(&s.mu);
    free(s.times);
    free(s.bytes);
    free(tmp);
    free(s.dev);
    free(s.ref);
    bench_workload_free(&wl);
    bench_workload_free(&wl1);
    return rc;
}
#endif /* EPX_HAVE_CUDA */
