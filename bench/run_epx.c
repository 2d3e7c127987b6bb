/*
 * The "epx" implementation: epx_dispatch_send + epx_dispatch_recv (timed),
 * the synthetic expert (not timed), epx_combine_send + epx_combine_recv
 * (timed).  A fresh dispatch every iteration: the layout step is measured.
 */
#include <stdlib.h>
#include <string.h>
#include "bench.h"
#include "util/util.h"

typedef struct epx_bufs {
    void *idx;          /* own topk_idx in the dtype the routing came in */
    void *out;          /* [T, H] */
    void *y;            /* [capacity, H] expert outputs */
    int64_t y_rows;
    float *acc;         /* [H] */
    int64_t *counts;    /* [num_local] of the last dispatch, for --dump */
    int64_t *src_counts; /* low latency: [num_local][R] rows per (expert,
                            source) of the last dispatch, for --dump */
} epx_bufs_t;

static void bufs_free(epx_bufs_t *b)
{
    free(b->idx);
    free(b->out);
    free(b->y);
    free(b->acc);
    free(b->counts);
    free(b->src_counts);
}

static int bufs_init(const bench_ctx_t *ctx, epx_bufs_t *b)
{
    const bench_workload_t *wl = ctx->wl;
    const int64_t T = wl->T[ctx->rank], n = (T > 0 ? T : 1) * wl->topk;
    memset(b, 0, sizeof(*b));
    b->idx = malloc((size_t)n * (wl->idx64 ? 8 : 4));
    b->out = malloc((size_t)(T > 0 ? T : 1) * (size_t)wl->hidden * wl->dsize);
    b->acc = malloc((size_t)wl->hidden * sizeof(float));
    b->counts = calloc((size_t)ctx->num_local + 1, sizeof(int64_t));
    b->src_counts = calloc((size_t)ctx->num_local * (size_t)ctx->nranks + 1,
                           sizeof(int64_t));
    if (!b->idx || !b->out || !b->acc || !b->counts || !b->src_counts)
        return -1;
    for (int64_t i = 0; i < T * wl->topk; i++) {
        if (wl->idx64)
            ((int64_t *)b->idx)[i] = wl->idx[ctx->rank][i];
        else
            ((int32_t *)b->idx)[i] = wl->idx[ctx->rank][i];
    }
    return 0;
}

static int ensure_y(const bench_ctx_t *ctx, epx_bufs_t *b, int64_t rows)
{
    if (rows <= b->y_rows)
        return 0;
    void *y = realloc(b->y, (size_t)rows * (size_t)ctx->wl->hidden *
                            ctx->wl->dsize);
    if (!y)
        return -1;
    b->y = y;
    b->y_rows = rows;
    return 0;
}

/* The engine's placement must be the documented one. */
static void check_placement(const bench_ctx_t *ctx, epx_moe_t *moe,
                            bench_check_t *c)
{
    const bench_workload_t *wl = ctx->wl;
    for (int e = 0; e < wl->experts; e++)
        if (epx_moe_expert_rank(moe, e) != wl->expert_rank[e]) {
            bench_check_fail(c, "rank %d epx: epx_moe_expert_rank(%d) = %d, "
                             "contiguous placement says %d", ctx->rank, e,
                             epx_moe_expert_rank(moe, e), wl->expert_rank[e]);
            return;
        }
    if (epx_moe_first_local_expert(moe) != ctx->first_local ||
        epx_moe_num_local_experts(moe) != ctx->num_local)
        bench_check_fail(c, "rank %d epx: local experts %d..+%d, placement "
                         "says %d..+%d", ctx->rank,
                         epx_moe_first_local_expert(moe),
                         epx_moe_num_local_experts(moe), ctx->first_local,
                         ctx->num_local);
}

int bench_run_epx(bench_ctx_t *ctx, epx_moe_t *moe)
{
    const bench_opts_t *o = ctx->o;
    const bench_workload_t *wl = ctx->wl;
    const int64_t T = wl->T[ctx->rank];
    const int total = o->warmup + o->iters;
    bench_result_t *res = ctx->res;
    bench_check_t chk = { 0, 0, res->msg[BENCH_IMPL_EPX], BENCH_MSG_LEN };
    epx_bufs_t b;
    epx_handle_t *handle = NULL;
    int rc = -1;
    epx_status_t st;

    if (bufs_init(ctx, &b) != 0) {
        fprintf(stderr, "epx-bench: rank %d: out of memory\n", ctx->rank);
        goto out;
    }
    check_placement(ctx, moe, &chk);

    epx_dispatch_args_t da = EPX_DISPATCH_ARGS_INIT;
    da.x = (epx_tensor_t){ ctx->x, wl->dtype, T, wl->hidden };
    da.topk_idx = (epx_tensor_t){ b.idx, wl->idx64 ? EPX_DTYPE_INT64
                                                   : EPX_DTYPE_INT32,
                                  T, wl->topk };
    da.topk_weights = (epx_tensor_t){ wl->w[ctx->rank], EPX_DTYPE_FP32, T,
                                      wl->topk };
    epx_tensor_t out = { b.out, wl->dtype, T, wl->hidden };

    int64_t cd0 = 0, cc0 = 0;
    const int hier = epx_moe_cross_domain_bytes(moe, &cd0, &cc0) == EPX_OK;
    bench_progress(ctx, "epx: %d warm-up + %d timed iterations", o->warmup,
                   o->iters);
    double start = epx__now(), last = start;
    for (int it = 0; it < total; it++) {
        const int verify = bench_verify_iter(ctx, it);
        epx_recv_t recv;
        memset(&recv, 0, sizeof(recv));
        recv.struct_size = sizeof(recv);

        if ((st = epx_comm_barrier(ctx->comm)) != EPX_OK) {
            bench_api_fail(ctx, "epx_comm_barrier", st);
            goto out;
        }
        double t0 = epx__now();
        if ((st = epx_dispatch_send(moe, &da, &handle)) != EPX_OK) {
            bench_api_fail(ctx, "epx_dispatch_send", st);
            goto out;
        }
        if ((st = epx_dispatch_recv(moe, handle, &recv)) != EPX_OK) {
            bench_api_fail(ctx, "epx_dispatch_recv", st);
            goto out;
        }
        double t1 = epx__now();

        /* Rows dropped at capacity (--ll-drop) are missing by design:
         * such an iteration is not verified, and the report says so. */
        res->dropped += recv.num_dropped;
        res->skipped += verify && recv.num_dropped > 0;
        if (verify && recv.num_dropped == 0)
            bench_verify_recv(ctx, &recv, o->layout, "epx", &chk);
        if (it == total - 1 && recv.expert_counts)
            memcpy(b.counts, recv.expert_counts,
                   (size_t)ctx->num_local * sizeof(int64_t));
        if (it == total - 1 && recv.capacity > 0)
            for (int64_t i = 0; i < recv.num_rows; i++)
                if (recv.src_rank[i] >= 0)
                    b.src_counts[(i / ((int64_t)ctx->nranks * recv.capacity)) *
                                 ctx->nranks + recv.src_rank[i]]++;
        /* A quantized x is narrower than y: never in place. */
        const int inplace = o->inplace && wl->wire == EPX_WIRE_NATIVE;
        void *y = recv.x.data;
        if (it == total - 1 && o->dump_dir && wl->wire != EPX_WIRE_NATIVE) {
            char err[BENCH_ERR_LEN];
            if (bench_dump_recv(ctx, &recv, err, sizeof(err)) != 0) {
                fprintf(stderr, "epx-bench: rank %d: --dump: %s\n",
                        ctx->rank, err);
                goto out;
            }
        }
        if (!inplace &&
            ensure_y(ctx, &b, recv.num_rows > 0 ? recv.num_rows : 1) != 0) {
            fprintf(stderr, "epx-bench: rank %d: out of memory for %lld "
                    "expert output rows\n", ctx->rank,
                    (long long)recv.num_rows);
            goto out;
        }
        if (!inplace)
            y = b.y;
        bench_expert_compute(ctx, &recv, o->layout, y, b.acc);

        epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
        ca.y = (epx_tensor_t){ y, wl->dtype, recv.num_rows, wl->hidden };
        if ((st = epx_comm_barrier(ctx->comm)) != EPX_OK) {
            bench_api_fail(ctx, "epx_comm_barrier", st);
            goto out;
        }
        double t2 = epx__now();
        if ((st = epx_combine_send(moe, handle, &ca)) != EPX_OK) {
            bench_api_fail(ctx, "epx_combine_send", st);
            goto out;
        }
        if ((st = epx_combine_recv(moe, handle, &out)) != EPX_OK) {
            bench_api_fail(ctx, "epx_combine_recv", st);
            goto out;
        }
        double t3 = epx__now();
        if (verify && recv.num_dropped == 0)
            bench_verify_out(ctx, b.out, "epx", &chk);
        epx_handle_release(handle);
        handle = NULL;

        if (it >= o->warmup) {
            int i = it - o->warmup;
            bench_result_times(res, o->iters, BENCH_IMPL_EPX,
                               BENCH_PHASE_DISPATCH)[i] = t1 - t0;
            bench_result_times(res, o->iters, BENCH_IMPL_EPX,
                               BENCH_PHASE_COMBINE)[i] = t3 - t2;
        }
        double now = epx__now();
        if (now - last > 5.0 && it + 1 < total) {
            bench_progress(ctx, "epx: iteration %d/%d", it + 1, total);
            last = now;
        }
    }
    int64_t cd1, cc1;
    if (hier && epx_moe_cross_domain_bytes(moe, &cd1, &cc1) == EPX_OK) {
        res->cross_meas_dispatch = (cd1 - cd0) / total;
        res->cross_meas_combine = (cc1 - cc0) / total;
    }
    /* Bytes actually put, as the engine counted them: per iteration. */
    epx_moe_stats_t stt = { .struct_size = sizeof(stt) };
    if ((st = epx_moe_stats(moe, 0, &stt)) == EPX_OK && stt.dispatches > 0) {
        res->put_bytes[BENCH_PHASE_DISPATCH] = stt.dispatch_bytes / stt.dispatches;
        res->put_bytes[BENCH_PHASE_COMBINE] = stt.combine_bytes / stt.dispatches;
    }
    res->checked[BENCH_IMPL_EPX] = chk.checked;
    res->mismatches[BENCH_IMPL_EPX] = chk.mismatches;
    bench_progress(ctx, "epx: done in %.1f s%s", epx__now() - start,
                   chk.mismatches ? " (MISMATCHES on rank 0)" : "");

    if (o->dump_dir) {
        char err[BENCH_ERR_LEN];
        if (bench_dump_rank(ctx, b.out, b.counts, ctx->num_local,
                            o->mode == EPX_MODE_LOW_LATENCY ? b.src_counts
                                                            : NULL,
                            err, sizeof(err)) != 0) {
            fprintf(stderr, "epx-bench: rank %d: --dump: %s\n", ctx->rank,
                    err);
            goto out;
        }
    }
    rc = 0;
out:
    epx_handle_release(handle);
    bufs_free(&b);
    return rc;
}
