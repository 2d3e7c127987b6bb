/* What one rank does: build its inputs, create the engine, run each
 * implementation, publish its result block. */
#include <stdlib.h>
#include <string.h>
#include "bench.h"
#include "util/util.h"
#include "core/comm.h"

size_t bench_result_size(int iters)
{
    size_t s = sizeof(bench_result_t) +
               ((size_t)BENCH_NIMPL * BENCH_NPHASE + BENCH_NBAL) *
               (size_t)iters * sizeof(double);
    return (s + 63) & ~(size_t)63;   /* ranks write their own cache lines */
}

bench_result_t *bench_result_at(void *base, int rank, int iters)
{
    return (bench_result_t *)((char *)base +
                              (size_t)rank * bench_result_size(iters));
}

double *bench_result_times(bench_result_t *r, int iters, int impl, int phase)
{
    return r->times + ((size_t)impl * BENCH_NPHASE + (size_t)phase) *
                      (size_t)iters;
}

double *bench_result_load(bench_result_t *r, int iters, int run)
{
    return r->times + ((size_t)BENCH_NIMPL * BENCH_NPHASE + (size_t)run) *
                      (size_t)iters;
}

void bench_progress(const bench_ctx_t *ctx, const char *fmt, ...)
{
    if (!ctx->verbose)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    fprintf(stderr, "epx-bench: %s\n", line);
    fflush(stderr);
}

int bench_api_fail(const bench_ctx_t *ctx, const char *call, epx_status_t st)
{
    fprintf(stderr, "epx-bench: rank %d: %s: %s (%s)\n", ctx->rank, call,
            epx_status_str(st), epx_last_error());
    if (ctx->res) {
        ctx->res->failed = 1;
        snprintf(ctx->res->msg[0], BENCH_MSG_LEN, "rank %d: %s: %s (%s)",
                 ctx->rank, call, epx_status_str(st), epx_last_error());
    }
    return -1;
}

int bench_verify_iter(const bench_ctx_t *ctx, int it)
{
    const int total = ctx->o->warmup + ctx->o->iters;
    return ctx->o->verify_all || it == 0 || it == total - 1;
}

static int make_inputs(bench_ctx_t *ctx)
{
    const bench_workload_t *wl = ctx->wl;
    const int64_t T = wl->T[ctx->rank];
    const size_t rowb = (size_t)wl->hidden * wl->dsize;
    ctx->x = malloc((size_t)(T > 0 ? T : 1) * rowb);
    if (!ctx->x) {
        fprintf(stderr, "epx-bench: rank %d: out of memory for x\n",
                ctx->rank);
        return -1;
    }
    for (int64_t t = 0; t < T; t++)
        bench_x_row(wl, ctx->rank, t, (char *)ctx->x + (size_t)t * rowb);
    /* Placement as documented (independent of the engine's answer). */
    const int64_t E = wl->experts, R = ctx->nranks, r = ctx->rank;
    ctx->first_local = (int)(r * E / R);
    ctx->num_local = (int)((r + 1) * E / R - r * E / R);
    return 0;
}

void bench_moe_params(const bench_ctx_t *ctx, epx_moe_params_t *mp)
{
    const bench_workload_t *wl = ctx->wl;
    *mp = (epx_moe_params_t)EPX_MOE_PARAMS_INIT;
    mp->hidden = wl->hidden;
    mp->num_experts = wl->experts;
    mp->topk = wl->topk;
    mp->max_tokens_per_rank = (int)(wl->max_T > 0 ? wl->max_T : 1);
    mp->dtype = wl->dtype;
    mp->layout = ctx->o->layout;
    mp->expert_alignment = ctx->o->align;
    mp->mode = ctx->o->mode;
    mp->ll_capacity = ctx->o->ll_capacity;
    mp->ll_buffers = ctx->o->ll_buffers;
    mp->flags = ctx->o->ll_drop ? EPX_MOE_LL_DROP : 0;
    if (ctx->o->hierarchical)
        mp->flags |= EPX_MOE_HIERARCHICAL;
    mp->wire = wl->wire;
}

int bench_cross_domain(bench_ctx_t *ctx)
{
    const bench_workload_t *wl = ctx->wl;
    const epx_topo_t *t;
    epx_status_t st = epx_comm_topology(ctx->comm, &t);
    if (st != EPX_OK)
        return bench_api_fail(ctx, "epx_comm_topology", st);
    const int R = ctx->nranks, K = wl->topk, me = ctx->rank;
    int *dom = malloc(sizeof(int) * (size_t)R), nd = 0;
    if (!dom)
        return -1;
    for (int r = 0; r < R; r++) {
        dom[r] = epx_topo_rank_domain(t, r);
        int seen = 0;
        for (int q = 0; q < r; q++)
            seen |= dom[q] == dom[r];
        nd += !seen;
    }
    bench_wire_t bw;   /* a row crosses as it travels: in its wire format */
    bench_wire_shape(wl->wire, wl->hidden, wl->dsize, &bw);
    const int64_t rowb = (int64_t)(bw.data_bytes + bw.scale_bytes +
                                   bw.global_bytes);
    int64_t flat = 0, hier = 0;
    for (int64_t i = 0; i < wl->T[me]; i++) {
        const int32_t *ids = wl->idx[me] + i * K;
        for (int k = 0; k < K; k++) {
            if (ids[k] < 0)
                continue;
            int r = wl->expert_rank[ids[k]], dup_r = 0, dup_d = 0;
            for (int j = 0; j < k; j++) {
                if (ids[j] < 0)
                    continue;
                dup_r |= wl->expert_rank[ids[j]] == r;
                dup_d |= dom[wl->expert_rank[ids[j]]] == dom[r];
            }
            if (dom[r] == dom[me])
                continue;
            flat += dup_r ? 0 : rowb;
            hier += dup_d ? 0 : rowb;
        }
    }
    free(dom);
    ctx->res->cross_known = 1;
    ctx->res->num_domains = nd;
    ctx->res->cross_flat = flat;
    ctx->res->cross_hier = hier;
    return 0;
}

int bench_rank_main(bench_ctx_t *ctx)
{
    const bench_opts_t *o = ctx->o;
    const bench_workload_t *wl = ctx->wl;
    int rc = -1;
    epx_moe_t *moe = NULL;

    ctx->res->rows_sent = wl->rows_sent[ctx->rank];
    /* The backend of each peer, as the communicator's selection made it. */
    for (int r = 0; r < ctx->nranks; r++) {
        const char *tl = epx__comm_peer_transport(ctx->comm, r);
        ctx->res->tl_peers[tl && !strcmp(tl, "ucx")]++;
    }
    epx__select_summary(ctx->comm, ctx->res->tl_summary,
                        sizeof(ctx->res->tl_summary));
    if (make_inputs(ctx) != 0)
        goto out;
    if (o->balance) {
        rc = bench_run_balance(ctx);
        goto out;
    }
    if (o->overlap) {
        rc = bench_run_overlap(ctx);
        goto out;
    }

    if ((o->hierarchical || getenv("EPX_TOPO_FILE")) &&
        bench_cross_domain(ctx) != 0)
        goto out;
    epx_moe_params_t mp;
    bench_moe_params(ctx, &mp);
    epx_status_t st = epx_moe_create(ctx->comm, &mp, &moe);
    if (st != EPX_OK) {
        rc = bench_api_fail(ctx, "epx_moe_create", st);
        goto out;
    }

    if (o->impl_mask & (1u << BENCH_IMPL_EPX)) {
        if (bench_run_epx(ctx, moe) != 0)
            goto out;
        ctx->res->ran[BENCH_IMPL_EPX] = 1;
    }
#ifdef EPX_HAVE_MPI
    if ((o->impl_mask & (1u << BENCH_IMPL_MPI)) && ctx->under_mpi) {
        if (bench_run_mpi(ctx) != 0)
            goto out;
        ctx->res->ran[BENCH_IMPL_MPI] = 1;
    }
#endif
    if (o->impl_mask & (1u << BENCH_IMPL_MEMCPY)) {
        if (bench_run_memcpy(ctx) != 0)
            goto out;
        ctx->res->ran[BENCH_IMPL_MEMCPY] = 1;
    }
    rc = 0;
out:
    epx_moe_destroy(moe);
    free(ctx->x);
    ctx->x = NULL;
    return rc;
}
