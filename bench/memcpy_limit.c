/*
 * The "memcpy-limit" row: every rank copies, at the same time, as many
 * bytes as it sends in each phase, between two private buffers.  On one
 * host that is what any shared-memory exchange must at least do (one copy
 * of each byte), so it bounds what dispatch and combine can reach.
 * Low latency (--mode ll) moves a row per (token, expert) pair instead of
 * per (token, destination rank): a copy per expert range in dispatch, a
 * read per expert row in combine; the row copies that many bytes.
 * A quantized --dtype moves wire rows (codes, block scales, row scale) in
 * dispatch and bf16 rows in combine; so does this row.
 */
#include <stdlib.h>
#include <string.h>
#include "bench.h"
#include "util/util.h"

int bench_run_memcpy(bench_ctx_t *ctx)
{
    const bench_opts_t *o = ctx->o;
    const bench_workload_t *wl = ctx->wl;
    int64_t rows = wl->rows_sent[ctx->rank];
    if (o->mode == EPX_MODE_LOW_LATENCY) {
        rows = 0;
        for (int64_t i = 0; i < wl->T[ctx->rank] * wl->topk; i++)
            rows += wl->idx[ctx->rank][i] >= 0;
    }
    bench_wire_t w;
    bench_wire_shape(wl->wire, wl->hidden, wl->dsize, &w);
    const size_t phase_bytes[BENCH_NPHASE] = {
        [BENCH_PHASE_DISPATCH] = (size_t)rows * (w.data_bytes + w.scale_bytes +
                                                 w.global_bytes),
        [BENCH_PHASE_COMBINE] = (size_t)rows * (size_t)wl->hidden * wl->dsize,
    };
    size_t bytes = phase_bytes[BENCH_PHASE_COMBINE];
    if (phase_bytes[BENCH_PHASE_DISPATCH] > bytes)
        bytes = phase_bytes[BENCH_PHASE_DISPATCH];
    const int total = o->warmup + o->iters;
    char *src = malloc(bytes + 1), *dst = malloc(bytes + 1);
    int rc = -1;
    if (!src || !dst) {
        fprintf(stderr, "epx-bench: rank %d: out of memory for %zu bytes\n",
                ctx->rank, bytes);
        goto out;
    }
    /* Touch every page before timing. */
    memset(src, 0x5a, bytes + 1);
    memset(dst, 0, bytes + 1);

    bench_progress(ctx, "memcpy-limit: %d warm-up + %d timed iterations",
                   o->warmup, o->iters);
    double start = epx__now();
    for (int it = 0; it < total; it++) {
        for (int ph = 0; ph < BENCH_NPHASE; ph++) {
            epx_status_t st = epx_comm_barrier(ctx->comm);
            if (st != EPX_OK) {
                bench_api_fail(ctx, "epx_comm_barrier", st);
                goto out;
            }
            double t0 = epx__now();
            memcpy(dst, src, phase_bytes[ph]);
            /* The copy is observable: the compiler may not drop it. */
            __asm__ __volatile__("" : : "r"(dst) : "memory");
            double t1 = epx__now();
            if (it >= o->warmup)
                bench_result_times(ctx->res, o->iters, BENCH_IMPL_MEMCPY,
                                   ph)[it - o->warmup] = t1 - t0;
        }
    }
    bench_progress(ctx, "memcpy-limit: done in %.1f s", epx__now() - start);
    rc = 0;
out:
    free(src);
    free(dst);
    return rc;
}
