/*
 * --overlap: two-batch overlap.  Two engines, one per micro-batch, each
 * carrying the workload's tokens.  A step, after a first dispatch of mb0:
 *
 *   dispatch_send(mb1)
 *   mb0: poll, FFN of each expert as it is ready, recv, synthetic
 *        expert, combine_send          (overlaps mb1's dispatch)
 *   mb1: the same                      (overlaps mb0's combine)
 *   combine_recv(mb0), dispatch_send(mb0) of the next step,
 *   combine_recv(mb1)
 *
 * Three runs of --iters steps (after --warmup): the same schedule without
 * the expert (communication alone: combine sends the rows as received),
 * the expert (FFN and outputs) of both micro-batches on received rows
 * without any communication (compute alone), and the full schedule
 * (overlapped), interleaved in blocks (run_all).  A step's time is one
 * rank's time from one step's start to the next; the report takes the
 * slowest rank per step.  Received rows and combined outputs are verified
 * in the first step of every block, which is not timed (--verify-all:
 * every step, timed).  Timed, the check (milliseconds on the main thread)
 * counted as communication in one step of four.
 *
 * --overlap-thread: the expert runs on a compute thread of the rank (one
 * job at a time, a condition variable: waits sleep): the FFN, then the
 * outputs combine sends (the synthetic expert, expert.c), as an engine's
 * expert kernels write theirs.  The main thread drives all communication,
 * and each micro-batch's expert runs while the other one moves
 * (run_threaded):
 *
 *   [expert(mb0) posted]  dispatch mb1      | wait mb0's, post expert(mb1)
 *   combine mb0, dispatch the next mb0      | wait mb1's, post expert(mb0)
 *   combine mb1
 *
 * Communication alone runs the same schedule without jobs: combine sends
 * the rows as received (same bytes, same work; only the checking steps,
 * untimed, post a job that writes the outputs, so that they verify).
 * Compute alone runs both micro-batches' FFN and outputs on the main
 * thread, without communication.  So "communication" is the dispatch and
 * combine calls, and the expert's output writing counts as compute in
 * both other runs.  The same holds for the polled schedule above: its
 * communication alone writes outputs only to check.
 */
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include "bench.h"
#include "util/util.h"

typedef struct ov_mb {
    epx_moe_t *moe;
    epx_handle_t *h;
    epx_recv_t rv;
    void *out;                 /* [T, H] */
    void *y;                   /* outputs apart from x (ov_outputs) */
    int64_t y_rows;
    void *yp;                  /* this round's outputs: rv.x.data or y */
} ov_mb_t;

typedef struct ov {
    bench_ctx_t *ctx;
    ov_mb_t mb[2];
    bench_ffn_t *ffn;
    epx_dispatch_args_t da;
    void *idx;
    uint8_t *ready, *done;
    float *acc;
    bench_check_t chk;
    int verify_all;
    /* --overlap-thread's compute thread */
    pthread_t tid;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int job;                   /* micro-batch to compute, -1: none */
    int job_ffn, job_verify;   /* the job's FFN; its received rows checked */
    float *acc_job;            /* the thread's scratch row */
    bench_check_t chk_job;     /* the thread's checks, merged at the end */
    char msg_job[BENCH_MSG_LEN];
    int busy, quit, wrc, inited, started;
    double job_s;              /* the last job's own time */
    double wait_s;             /* the main thread's time in ov_join */
} ov_t;

static int fail(ov_t *v, const char *call, epx_status_t st)
{
    return bench_api_fail(v->ctx, call, st);
}

static int ov_send(ov_t *v, int i)
{
    epx_status_t st = epx_dispatch_send(v->mb[i].moe, &v->da, &v->mb[i].h);
    return st == EPX_OK ? 0 : fail(v, "epx_dispatch_send", st);
}

/* FFN of every local expert of mb i as epx_dispatch_poll reports it ready,
 * then recv. */
static int ov_recv(ov_t *v, int i, int ffn)
{
    ov_mb_t *b = &v->mb[i];
    const int nl = v->ctx->num_local;
    epx_status_t st;
    memset(&b->rv, 0, sizeof(b->rv));
    b->rv.struct_size = sizeof(b->rv);
    if (ffn) {
        memset(v->done, 0, (size_t)nl + 1);
        for (int left = nl; left > 0;) {
            int n, fresh = 0;
            if ((st = epx_dispatch_poll(b->moe, b->h, &b->rv, v->ready, &n))
                != EPX_OK)
                return fail(v, "epx_dispatch_poll", st);
            for (int j = 0; j < nl; j++) {
                if (!v->ready[j] || v->done[j])
                    continue;
                if (bench_ffn_expert(v->ffn, &b->rv, v->ctx->o->layout, j) < 0) {
                    fprintf(stderr, "epx-bench: rank %d: out of memory in "
                            "the FFN\n", v->ctx->rank);
                    return -1;
                }
                v->done[j] = 1;
                left--;
                fresh++;
            }
            if (!fresh && left)
                sched_yield();
        }
    }
    if ((st = epx_dispatch_recv(b->moe, b->h, &b->rv)) != EPX_OK)
        return fail(v, "epx_dispatch_recv", st);
    return 0;
}

/* The FFN of every local expert of micro-batch i (received in full). */
static int ov_ffn_all(ov_t *v, int i)
{
    for (int j = 0; j < v->ctx->num_local; j++)
        if (bench_ffn_expert(v->ffn, &v->mb[i].rv, v->ctx->o->layout, j) < 0) {
            fprintf(stderr, "epx-bench: rank %d: out of memory in the FFN\n",
                    v->ctx->rank);
            return -1;
        }
    return 0;
}

static int ov_outputs(ov_t *v, int i, float *acc, bench_check_t *chk,
                      int verify, int apart);

static void *ov_worker(void *arg)
{
    ov_t *v = arg;
    pthread_mutex_lock(&v->mu);
    for (;;) {
        while (!v->quit && v->job < 0)
            pthread_cond_wait(&v->cv, &v->mu);
        if (v->quit)
            break;
        const int i = v->job, ffn = v->job_ffn, vf = v->job_verify;
        pthread_mutex_unlock(&v->mu);
        double t0 = epx__now();
        int rc = ffn ? ov_ffn_all(v, i) : 0;
        if (!rc)
            rc = ov_outputs(v, i, v->acc_job, &v->chk_job, vf, 0);
        double dt = epx__now() - t0;
        pthread_mutex_lock(&v->mu);
        v->job_s = dt;
        v->job = -1;
        v->busy = 0;
        if (rc)
            v->wrc = rc;
        pthread_cond_broadcast(&v->cv);
    }
    pthread_mutex_unlock(&v->mu);
    return NULL;
}

static int ov_no_outputs(ov_t *v, int i);

/* Post micro-batch i's expert job; communication alone (no FFN) posts
 * only to check, and otherwise combines the rows as received. */
static int ov_post(ov_t *v, int i, int ffn, int verify)
{
    if (!ffn && !verify)
        return ov_no_outputs(v, i);
    pthread_mutex_lock(&v->mu);
    v->job = i;
    v->job_ffn = ffn;
    v->job_verify = verify;
    v->busy = 1;
    pthread_cond_broadcast(&v->cv);
    pthread_mutex_unlock(&v->mu);
    return 0;
}

/* Wait for the posted FFN; its status.  *busy (may be NULL) += the job's
 * own time, v->wait_s += the time waited. */
static int ov_join(ov_t *v, double *busy)
{
    const double t0 = epx__now();
    pthread_mutex_lock(&v->mu);
    while (v->busy)
        pthread_cond_wait(&v->cv, &v->mu);
    int rc = v->wrc;
    if (busy)
        *busy += v->job_s;
    pthread_mutex_unlock(&v->mu);
    v->wait_s += epx__now() - t0;
    return rc;
}

/* Sets micro-batch i's outputs (b->yp): in place over x where the options
 * allow and `apart` is 0, else its own buffer, grown to the rows received
 * (zeroed: never uninitialised bytes on the wire).  A quantized x is
 * narrower than y (as in run_epx.c). */
static int ov_place_outputs(ov_t *v, int i, int apart)
{
    ov_mb_t *b = &v->mb[i];
    const bench_ctx_t *ctx = v->ctx;
    const size_t rowb = (size_t)ctx->wl->hidden * ctx->wl->dsize;
    b->yp = b->rv.x.data;
    if (!apart && ctx->o->inplace && ctx->wl->wire == EPX_WIRE_NATIVE)
        return 0;
    int64_t rows = b->rv.num_rows > 0 ? b->rv.num_rows : 1;
    if (rows > b->y_rows) {
        void *p = realloc(b->y, (size_t)rows * rowb);
        if (!p) {
            fprintf(stderr, "epx-bench: rank %d: out of memory for the "
                    "expert outputs\n", ctx->rank);
            return -1;
        }
        memset(p, 0, (size_t)rows * rowb);
        b->y = p;
        b->y_rows = rows;
    }
    b->yp = b->y;
    return 0;
}

/* The expert's outputs (the synthetic expert: verifiable) for micro-batch
 * i, after checking its received rows (verify). */
static int ov_outputs(ov_t *v, int i, float *acc, bench_check_t *chk,
                      int verify, int apart)
{
    ov_mb_t *b = &v->mb[i];
    const bench_ctx_t *ctx = v->ctx;
    if (verify)
        bench_verify_recv(ctx, &b->rv, ctx->o->layout, "epx", chk);
    if (ov_place_outputs(v, i, apart))
        return -1;
    bench_expert_compute(ctx, &b->rv, ctx->o->layout, b->yp, acc);
    return 0;
}

/* Communication alone, an unchecked step: combine sends the rows as
 * received (in place), or what the outputs' buffer holds. */
static int ov_no_outputs(ov_t *v, int i)
{
    return ov_place_outputs(v, i, 0);
}

/* combine_send of the outputs ov_outputs wrote. */
static int ov_combine_put(ov_t *v, int i)
{
    ov_mb_t *b = &v->mb[i];
    const bench_workload_t *wl = v->ctx->wl;
    epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
    ca.y = (epx_tensor_t){ b->yp, wl->dtype, b->rv.num_rows, wl->hidden };
    epx_status_t st = epx_combine_send(b->moe, b->h, &ca);
    return st == EPX_OK ? 0 : fail(v, "epx_combine_send", st);
}

/* The outputs on this thread, then combine_send; communication alone
 * (no FFN) writes them only to check. */
static int ov_combine_send(ov_t *v, int i, int ffn, int verify)
{
    int rc = ffn || verify ? ov_outputs(v, i, v->acc, &v->chk, verify, 0)
                           : ov_no_outputs(v, i);
    return rc || ov_combine_put(v, i);
}

static int ov_combine_recv(ov_t *v, int i, int verify)
{
    ov_mb_t *b = &v->mb[i];
    const bench_workload_t *wl = v->ctx->wl;
    epx_tensor_t out = { b->out, wl->dtype, wl->T[v->ctx->rank], wl->hidden };
    epx_status_t st = epx_combine_recv(b->moe, b->h, &out);
    if (st != EPX_OK)
        return fail(v, "epx_combine_recv", st);
    if (verify)
        bench_verify_out(v->ctx, b->out, "epx", &v->chk);
    epx_handle_release(b->h);
    b->h = NULL;
    return 0;
}

/* --pin: thread t on the k-th CPU of `allowed` (what the process could
 * use before any pinning), modulo their number; a warning when the
 * system refuses. */
static void ov_pin(const bench_ctx_t *ctx, const cpu_set_t *allowed,
                   pthread_t t, int k)
{
    cpu_set_t one;
    int n = CPU_COUNT(allowed), cpu = -1;
    if (n <= 0)
        return;
    k %= n;
    for (int c = 0; c < CPU_SETSIZE && cpu < 0; c++)
        if (CPU_ISSET(c, allowed) && k-- == 0)
            cpu = c;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    if (pthread_setaffinity_np(t, sizeof(one), &one) != 0)
        fprintf(stderr, "epx-bench: rank %d: --pin: cannot bind a thread to "
                "CPU %d\n", ctx->rank, cpu);
}

static int barrier(ov_t *v)
{
    epx_status_t st = epx_comm_barrier(v->ctx->comm);
    return st == EPX_OK ? 0 : fail(v, "epx_comm_barrier", st);
}

/* Steps of the two-batch schedule, with or without the FFN: `count`
 * steps, the first `skip` untimed, times from times[0]. */
static int run_schedule(ov_t *v, int ffn, int skip, int count, double *times)
{
    if (barrier(v) || ov_send(v, 0))
        return -1;
    for (int it = 0; it < count; it++) {
        const int vf = v->verify_all || it == 0;
        double t0 = epx__now();
        if (ov_send(v, 1) || ov_recv(v, 0, ffn) ||
            ov_combine_send(v, 0, ffn, vf) || ov_recv(v, 1, ffn) ||
            ov_combine_send(v, 1, ffn, vf) ||
            ov_combine_recv(v, 0, vf) || ov_send(v, 0) ||
            ov_combine_recv(v, 1, vf))
            return -1;
        if (it >= skip)
            times[it - skip] = epx__now() - t0;
    }
    /* The last step's dispatch of mb0, taken in untimed. */
    return ov_recv(v, 0, 0) || ov_combine_send(v, 0, 0, 0) ||
           ov_combine_recv(v, 0, 0) ? -1 : 0;
}

/* run_schedule with run_threaded's signature (it has no breakdown). */
static int run_polled(ov_t *v, int ffn, int skip, int count, double *times,
                      double *busy, double *commin)
{
    (void)busy, (void)commin;
    return run_schedule(v, ffn, skip, count, times);
}

/* run_schedule's counterpart for --overlap-thread (top of file); ffn 0:
 * the same communication without jobs (but to check).  With
 * ffn, per step (either may be NULL): busy, the own time of the jobs
 * waited for in it (FFN and outputs); commin, the step's time less the
 * main thread's waits for them. */
static int run_threaded(ov_t *v, int ffn, int skip, int count, double *times,
                        double *busy, double *commin)
{
    if (barrier(v) || ov_send(v, 0) || ov_recv(v, 0, 0))
        return -1;
    int rc = ov_post(v, 0, ffn, 1);
    for (int it = 0; it < count && !rc; it++) {
        const int vf = v->verify_all || it == 0;
        const int vnext = v->verify_all;   /* the next step's mb0 */
        double t0 = epx__now(), b = 0;
        v->wait_s = 0;
        rc = ov_send(v, 1) || ov_recv(v, 1, 0);
        /* joined even after a failure: the thread reads mb0 */
        rc = ov_join(v, &b) || rc;
        if (!rc)
            rc = ov_post(v, 1, ffn, vf);
        rc = rc || ov_combine_put(v, 0) || ov_combine_recv(v, 0, vf) ||
             ov_send(v, 0) || ov_recv(v, 0, 0);
        rc = ov_join(v, &b) || rc;
        if (!rc)
            rc = ov_post(v, 0, ffn, vnext);
        rc = rc || ov_combine_put(v, 1) || ov_combine_recv(v, 1, vf);
        if (!rc && it >= skip) {
            times[it - skip] = epx__now() - t0;
            if (busy)
                busy[it - skip] = b;
            if (commin)
                commin[it - skip] = times[it - skip] - v->wait_s;
        }
    }
    rc = ov_join(v, NULL) || rc;
    return rc || ov_combine_put(v, 0) || ov_combine_recv(v, 0, 0) ? -1 : 0;
}

/* The FFN and the outputs of both micro-batches on rows received once,
 * no communication inside the timed steps; the outputs written apart, so
 * that x stays as received. */
static int run_compute(ov_t *v, int skip, int count, double *times)
{
    if (barrier(v) || ov_send(v, 0) || ov_recv(v, 0, 0) || ov_send(v, 1) ||
        ov_recv(v, 1, 0))
        return -1;
    for (int it = 0; it < count; it++) {
        double t0 = epx__now();
        for (int i = 0; i < 2; i++)
            if (ov_ffn_all(v, i) || ov_outputs(v, i, v->acc, &v->chk, 0, 1))
                return -1;
        if (it >= skip)
            times[it - skip] = epx__now() - t0;
    }
    for (int i = 0; i < 2; i++)
        if (ov_combine_send(v, i, 1, 1) || ov_combine_recv(v, i, 1))
            return -1;
    return 0;
}

/* The three runs interleaved in blocks of BENCH_OV_BLOCK steps, so that a
 * change in the machine's load (other processes) falls on all three
 * alike; the warm-up steps come first, in the first block of each run. */
static int run_all(ov_t *v)
{
    const bench_opts_t *o = v->ctx->o;
    const int n = o->iters;
    bench_result_t *res = v->ctx->res;
    for (int done = 0, b = 0; done < n; b++) {
        int count = n - done < BENCH_OV_BLOCK ? n - done : BENCH_OV_BLOCK;
        /* At least the block's first step untimed: it verifies. */
        int skip = b == 0 && o->warmup > 1 ? o->warmup : 1;
        v->verify_all = o->verify_all;
        int (*const steps)(ov_t *, int, int, int, double *, double *,
                           double *) =
            o->overlap_thread ? run_threaded : run_polled;
        int rc = steps(v, 0, skip, skip + count,
                       BENCH_OV_COMM(res, n) + done, NULL, NULL) ||
                 run_compute(v, skip, skip + count,
                             BENCH_OV_COMP(res, n) + done) ||
                 steps(v, 1, skip, skip + count,
                       BENCH_OV_BOTH(res, n) + done,
                       BENCH_OV_FFN(res, n) + done,
                       BENCH_OV_COMMIN(res, n) + done);
        if (rc)
            return -1;
        done += count;
    }
    return 0;
}

int bench_run_overlap(bench_ctx_t *ctx)
{
    const bench_workload_t *wl = ctx->wl;
    const int64_t T = wl->T[ctx->rank];
    const int nl = ctx->num_local;
    bench_result_t *res = ctx->res;
    ov_t v;
    int rc = -1;
    memset(&v, 0, sizeof(v));
    v.ctx = ctx;
    v.chk = (bench_check_t){ 0, 0, res->msg[0], BENCH_MSG_LEN };
    v.idx = malloc((size_t)(T > 0 ? T : 1) * (size_t)wl->topk *
                   (wl->idx64 ? 8 : 4));
    v.ready = malloc((size_t)nl + 1);
    v.done = malloc((size_t)nl + 1);
    v.acc = malloc(sizeof(float) * (size_t)wl->hidden);
    v.acc_job = malloc(sizeof(float) * (size_t)wl->hidden);
    v.chk_job = (bench_check_t){ 0, 0, v.msg_job, BENCH_MSG_LEN };
    v.ffn = bench_ffn_new(ctx, nl);
    for (int i = 0; i < 2; i++)
        v.mb[i].out = malloc((size_t)(T > 0 ? T : 1) * (size_t)wl->hidden *
                             wl->dsize);
    if (!v.idx || !v.ready || !v.done || !v.acc || !v.acc_job || !v.ffn ||
        !v.mb[0].out ||
        !v.mb[1].out) {
        fprintf(stderr, "epx-bench: rank %d: out of memory (--overlap)\n",
                ctx->rank);
        goto out;
    }
    for (int64_t i = 0; i < T * wl->topk; i++) {
        if (wl->idx64)
            ((int64_t *)v.idx)[i] = wl->idx[ctx->rank][i];
        else
            ((int32_t *)v.idx)[i] = wl->idx[ctx->rank][i];
    }
    v.da = (epx_dispatch_args_t)EPX_DISPATCH_ARGS_INIT;
    v.da.x = (epx_tensor_t){ ctx->x, wl->dtype, T, wl->hidden };
    v.da.topk_idx = (epx_tensor_t){ v.idx, wl->idx64 ? EPX_DTYPE_INT64
                                                     : EPX_DTYPE_INT32,
                                    T, wl->topk };
    v.da.topk_weights = (epx_tensor_t){ wl->w[ctx->rank], EPX_DTYPE_FP32, T,
                                        wl->topk };
    epx_moe_params_t mp;
    bench_moe_params(ctx, &mp);
    for (int i = 0; i < 2; i++) {
        epx_status_t st = epx_moe_create(ctx->comm, &mp, &v.mb[i].moe);
        if (st != EPX_OK) {
            bench_api_fail(ctx, "epx_moe_create", st);
            goto out;
        }
    }
    v.job = -1;
    if (ctx->o->overlap_thread) {
        pthread_mutex_init(&v.mu, NULL);
        pthread_cond_init(&v.cv, NULL);
        v.inited = 1;
        if (pthread_create(&v.tid, NULL, ov_worker, &v) != 0) {
            fprintf(stderr, "epx-bench: rank %d: cannot start the compute "
                    "thread\n", ctx->rank);
            goto out;
        }
        v.started = 1;
    }
    cpu_set_t allowed;
    if (ctx->o->pin && sched_getaffinity(0, sizeof(allowed), &allowed) == 0) {
        const int th = ctx->o->overlap_thread;
        if (th)
            ov_pin(ctx, &allowed, v.tid, 2 * ctx->rank + 1);
        ov_pin(ctx, &allowed, pthread_self(), th ? 2 * ctx->rank : ctx->rank);
    }
    bench_progress(ctx, "overlap: %d steps of each run (communication "
                   "alone, FFN %d x %d alone, both), interleaved by %d",
                   ctx->o->iters, wl->hidden, bench_ffn_size(ctx->o), BENCH_OV_BLOCK);
    if (run_all(&v))
        goto out;
    res->ran[0] = 1;
    res->checked[0] = v.chk.checked + v.chk_job.checked;
    res->mismatches[0] = v.chk.mismatches + v.chk_job.mismatches;
    size_t used = strlen(res->msg[0]);   /* the thread's messages after */
    snprintf(res->msg[0] + used, BENCH_MSG_LEN - used, "%s", v.msg_job);
    rc = 0;
out:
    if (v.started) {
        pthread_mutex_lock(&v.mu);
        v.quit = 1;
        pthread_cond_broadcast(&v.cv);
        pthread_mutex_unlock(&v.mu);
        pthread_join(v.tid, NULL);
    }
    if (v.inited) {
        pthread_mutex_destroy(&v.mu);
        pthread_cond_destroy(&v.cv);
    }
    for (int i = 0; i < 2; i++) {
        epx_handle_release(v.mb[i].h);
        epx_moe_destroy(v.mb[i].moe);
        free(v.mb[i].out);
        free(v.mb[i].y);
    }
    bench_ffn_free(v.ffn);
    free(v.idx);
    free(v.ready);
    free(v.done);
    free(v.acc);
    free(v.acc_job);
    return rc;
}
