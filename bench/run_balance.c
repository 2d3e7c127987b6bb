/*
 * --balance: the same routing, step after step, through two engines:
 * without the balancer (contiguous experts) and with replicas whose
 * placement the ranks re-plan every --replan-every steps.  Each rank takes
 * the global statistics (collective, identical everywhere), so each
 * computes the same plan and passes the same placement: no broadcast.
 * A step's load on a rank is the (token, expert) pairs it received, the
 * work its experts do; its time is dispatch + combine as in run_epx.c.
 */
#include <stdlib.h>
#include <string.h>
#include "bench.h"
#include "util/util.h"

int bench_balance_slots(const bench_opts_t *o, int nranks)
{
    if (o->slots > 0)
        return o->slots;
    int64_t s = o->experts + (o->experts + 7) / 8;
    return (int)((s + nranks - 1) / nranks * nranks);
}

epx_balance_params_t bench_balance_params(const bench_opts_t *o, int E, int S,
                                          int R)
{
    epx_balance_params_t bp = EPX_BALANCE_PARAMS_INIT;
    bp.num_layers = 1;
    bp.num_experts = E;
    bp.num_slots = S;
    bp.num_groups = o->groups;
    bp.num_domains = o->domains;
    bp.num_ranks = R;
    bp.policy = o->policy;
    return bp;
}

typedef struct bal_run {
    epx_moe_t *moe;
    int run, slots;            /* BENCH_BAL_*; slots 0 without replicas */
    int32_t *phy2log;          /* [slots] placement in use */
    int64_t window_pairs;      /* pairs received since the stats reset */
    int changed;               /* placement changed since the last step */
} bal_run_t;

static int set_placement(bench_ctx_t *ctx, bal_run_t *b)
{
    epx_status_t st = epx_moe_set_placement(b->moe, 0, b->phy2log,
                                            EPX_REPLICA_LOCAL_FIRST);
    b->changed = 1;
    return st == EPX_OK ? 0 : bench_api_fail(ctx, "epx_moe_set_placement", st);
}

/* Global window -> plan -> placement; the stats must agree with what this
 * rank's slots received (a check of the statistics themselves). */
static int replan(bench_ctx_t *ctx, bal_run_t *b, bench_check_t *chk)
{
    const bench_opts_t *o = ctx->o;
    const int E = ctx->wl->experts, R = ctx->nranks, S = b->slots;
    epx_moe_stats_t ms;
    memset(&ms, 0, sizeof(ms));
    ms.struct_size = sizeof(ms);
    epx_status_t st = epx_moe_stats(b->moe, 1, &ms);
    if (st != EPX_OK)
        return bench_api_fail(ctx, "epx_moe_stats", st);
    if (ms.num_slots != S || ms.num_experts != E || !ms.physical) {
        bench_check_fail(chk, "rank %d stats: %d slots, %d experts, want "
                         "%d, %d", ctx->rank, ms.num_slots, ms.num_experts,
                         S, E);
        return 0;
    }
    int64_t mine = 0;
    for (int s = ctx->rank * (S / R); s < (ctx->rank + 1) * (S / R); s++)
        mine += ms.physical[s];
    if (mine != b->window_pairs)
        bench_check_fail(chk, "rank %d stats: its slots received %lld pairs "
                         "by the global statistics, %lld by dispatch",
                         ctx->rank, (long long)mine,
                         (long long)b->window_pairs);
    double *load = malloc((size_t)E * sizeof(double));
    if (!load) {
        fprintf(stderr, "epx-bench: rank %d: out of memory\n", ctx->rank);
        return -1;
    }
    for (int e = 0; e < E; e++)
        load[e] = (double)ms.window[e];
    epx_balance_params_t bp = bench_balance_params(o, E, S, R);
    bp.current_phy2log = b->phy2log;
    int32_t *plan = malloc((size_t)S * sizeof(int32_t));
    st = plan ? epx_balance_plan(&bp, load, plan, NULL, 0, NULL)
              : EPX_ERR_NOMEM;
    free(load);
    if (st != EPX_OK) {
        free(plan);
        return bench_api_fail(ctx, "epx_balance_plan", st);
    }
    memcpy(b->phy2log, plan, (size_t)S * sizeof(int32_t));
    free(plan);
    if (set_placement(ctx, b) != 0)
        return -1;
    b->window_pairs = 0;
    st = epx_moe_stats_reset(b->moe);
    return st == EPX_OK ? 0 : bench_api_fail(ctx, "epx_moe_stats_reset", st);
}

static int barrier(bench_ctx_t *ctx)
{
    epx_status_t st = epx_comm_barrier(ctx->comm);
    return st == EPX_OK ? 0 : bench_api_fail(ctx, "epx_comm_barrier", st);
}

static int run_steps(bench_ctx_t *ctx, bal_run_t *b)
{
    const bench_opts_t *o = ctx->o;
    const bench_workload_t *wl = ctx->wl;
    const int64_t T = wl->T[ctx->rank];
    const int total = o->warmup + o->iters;
    const char *name = b->run == BENCH_BAL_ON ? "balanced" : "unbalanced";
    bench_result_t *res = ctx->res;
    bench_check_t chk = { 0, 0, res->msg[b->run], BENCH_MSG_LEN };
    epx_handle_t *handle = NULL;
    epx_status_t st;
    int rc = -1;
    void *idx = malloc((size_t)((T > 0 ? T : 1) * wl->topk) *
                       (wl->idx64 ? 8 : 4));
    void *out = malloc((size_t)(T > 0 ? T : 1) * (size_t)wl->hidden *
                       wl->dsize);
    float *acc = malloc((size_t)wl->hidden * sizeof(float));
    if (!idx || !out || !acc) {
        fprintf(stderr, "epx-bench: rank %d: out of memory\n", ctx->rank);
        goto done;
    }
    for (int64_t i = 0; i < T * wl->topk; i++) {
        if (wl->idx64)
            ((int64_t *)idx)[i] = wl->idx[ctx->rank][i];
        else
            ((int32_t *)idx)[i] = wl->idx[ctx->rank][i];
    }
    epx_dispatch_args_t da = EPX_DISPATCH_ARGS_INIT;
    da.x = (epx_tensor_t){ ctx->x, wl->dtype, T, wl->hidden };
    da.topk_idx = (epx_tensor_t){ idx, wl->idx64 ? EPX_DTYPE_INT64
                                                 : EPX_DTYPE_INT32,
                                  T, wl->topk };
    da.topk_weights = (epx_tensor_t){ wl->w[ctx->rank], EPX_DTYPE_FP32, T,
                                      wl->topk };
    epx_tensor_t outt = { out, wl->dtype, T, wl->hidden };

    bench_progress(ctx, "%s: %d warm-up + %d steps", name, o->warmup,
                   o->iters);
    for (int it = 0; it < total; it++) {
        const int step = it - o->warmup;   /* < 0: warm-up */
        const int verify = bench_verify_iter(ctx, it) || b->changed;
        b->changed = 0;
        epx_recv_t recv;
        memset(&recv, 0, sizeof(recv));
        recv.struct_size = sizeof(recv);
        if (barrier(ctx) != 0)
            goto done;
        double t0 = epx__now();
        if ((st = epx_dispatch_send(b->moe, &da, &handle)) != EPX_OK ||
            (st = epx_dispatch_recv(b->moe, handle, &recv)) != EPX_OK) {
            bench_api_fail(ctx, "epx_dispatch", st);
            goto done;
        }
        double t1 = epx__now();
        if (verify && b->slots)
            bench_verify_recv_replicas(ctx, &recv, o->layout, name, &chk);
        else if (verify)
            bench_verify_recv(ctx, &recv, o->layout, name, &chk);
        int64_t pairs = 0;
        for (int j = 0; j < recv.num_local_experts; j++)
            pairs += recv.expert_counts[j];
        b->window_pairs += pairs;
        bench_expert_compute(ctx, &recv, o->layout, recv.x.data, acc);

        epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
        ca.y = (epx_tensor_t){ recv.x.data, wl->dtype, recv.num_rows,
                               wl->hidden };
        if (barrier(ctx) != 0)
            goto done;
        double t2 = epx__now();
        if ((st = epx_combine_send(b->moe, handle, &ca)) != EPX_OK ||
            (st = epx_combine_recv(b->moe, handle, &outt)) != EPX_OK) {
            bench_api_fail(ctx, "epx_combine", st);
            goto done;
        }
        double t3 = epx__now();
        if (verify)
            bench_verify_out(ctx, out, name, &chk);
        epx_handle_release(handle);
        handle = NULL;

        if (step >= 0) {
            bench_result_times(res, o->iters, b->run,
                               BENCH_PHASE_DISPATCH)[step] = t1 - t0;
            bench_result_times(res, o->iters, b->run,
                               BENCH_PHASE_COMBINE)[step] = t3 - t2;
            bench_result_load(res, o->iters, b->run)[step] = (double)pairs;
        }
        if (!b->slots)
            continue;
        if (step < 0) {   /* plans use the timed steps' loads only */
            if (step == -1) {
                b->window_pairs = 0;
                if ((st = epx_moe_stats_reset(b->moe)) != EPX_OK) {
                    bench_api_fail(ctx, "epx_moe_stats_reset", st);
                    goto done;
                }
            }
            continue;
        }
        if ((step + 1) % o->replan_every == 0 && step + 1 < o->iters &&
            replan(ctx, b, &chk) != 0)
            goto done;
    }
    res->ran[b->run] = 1;
    res->checked[b->run] = chk.checked;
    res->mismatches[b->run] = chk.mismatches;
    rc = 0;
done:
    epx_handle_release(handle);
    free(idx);
    free(out);
    free(acc);
    return rc;
}

int bench_run_balance(bench_ctx_t *ctx)
{
    const bench_workload_t *wl = ctx->wl;
    int rc = 0;
    for (int run = 0; run < BENCH_NBAL && rc == 0; run++) {
        bal_run_t b = { .run = run };
        epx_moe_params_t mp;
        bench_moe_params(ctx, &mp);
        mp.num_layers = 1;
        if (run == BENCH_BAL_ON) {
            b.slots = mp.num_slots = bench_balance_slots(ctx->o, ctx->nranks);
            b.phy2log = malloc((size_t)b.slots * sizeof(int32_t));
            if (!b.phy2log) {
                fprintf(stderr, "epx-bench: rank %d: out of memory\n",
                        ctx->rank);
                return -1;
            }
            for (int s = 0; s < b.slots; s++)
                b.phy2log[s] = s % wl->experts;
        }
        epx_status_t st = epx_moe_create(ctx->comm, &mp, &b.moe);
        if (st != EPX_OK)
            rc = bench_api_fail(ctx, "epx_moe_create", st);
        else if (b.slots && set_placement(ctx, &b) != 0)
            rc = -1;
        else
            rc = run_steps(ctx, &b);
        epx_moe_destroy(b.moe);
        free(b.phy2log);
    }
    return rc;
}
