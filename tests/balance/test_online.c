/*
 * The online loop: the statistics' moving window and decay
 * (epx_moe_stats_config), re-planning from them with a move budget
 * (epx_moe_rebalance_plan) and the split migration (start / finish)
 * overlapped with dispatch/combine.
 *
 * The switch is checked end to end: every slot's weights encode its
 * expert, the test's expert adds them to each row, and every combine —
 * before, during (the layer still on its old placement) and after a
 * migration — must equal the reference (tests/ref, contiguous placement,
 * no replicas) bit for bit.  Values are small integers and weights powers
 * of two, so every sum is exact whatever rank holds a replica: a token
 * lost, counted twice, or computed with another expert's weights changes
 * the result.  Window, decay and plan are checked against the test's own
 * counts of its own routing.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/epx_test.h"
#include "ref/ref.h"

enum { K = 2, H = 8, L = 2, TMAX = 6, STEPS = 12, W = 4, MAXS = 64 };

/* Routing and input of `rank` at `step` for `layer`: hot experts drift
 * with the step; the second choice of every fifth token is empty. */
typedef struct tok {
    int T;
    float x[TMAX * H], w[TMAX * K];
    int32_t idx[TMAX * K];
    int64_t idx64[TMAX * K];
} tok_t;

static void gen(int E, int rank, int step, int layer, tok_t *t)
{
    epxt_rng_t g = { epxt_hash(epxt_seed(), 11, (uint64_t)rank,
                               (uint64_t)step, (uint64_t)layer) };
    static const float wv[4] = { 0.5f, 1.0f, 2.0f, -1.0f };
    t->T = (int)epxt_below(&g, TMAX + 1);        /* 0 tokens too */
    int hot = (step / 3 + 5 * layer) % E;
    for (int i = 0; i < t->T; i++) {
        for (int h = 0; h < H; h++)
            t->x[i * H + h] = (float)((int)epxt_below(&g, 9) - 4);
        int e0 = epxt_below(&g, 4) ? (hot + (int)epxt_below(&g, 2)) % E
                                   : (int)epxt_below(&g, (uint64_t)E);
        int e1 = (e0 + 1 + (int)epxt_below(&g, (uint64_t)E - 1)) % E;
        t->idx[i * K] = e0;
        t->idx[i * K + 1] = i % 5 == 4 ? -1 : e1;
        for (int k = 0; k < K; k++) {
            t->w[i * K + k] = wv[epxt_below(&g, 4)];
            t->idx64[i * K + k] = t->idx[i * K + k];
        }
    }
}

static float pat(int layer, int e, int h)
{
    return (float)((e * 5 + h * 3 + layer) % 9 - 4);
}

typedef struct yctx { int E, step, layer; } yctx_t;

/* The reference expert: x + the expert's weights. */
static void ref_y(void *ctx, int src, int64_t token, int who, float *row)
{
    const yctx_t *c = ctx;
    tok_t t;
    gen(c->E, src, c->step, c->layer, &t);
    for (int h = 0; h < H; h++)
        row[h] = t.x[token * H + h] + pat(c->layer, who, h);
}

/* Layer `layer` of `step` on rank `me`: dispatch, the expert (x + the
 * weights of the local slot that received the row), combine; the result
 * against the reference.  With `pending`, a migration of this layer is
 * pending: between the expert and combine_send the switch is tried while
 * the call is in flight (rank 0 has already sent its combine, so it is
 * the only rank without the call in flight) and must be refused. */
static int layer_step(epx_moe_t *m, int R, int E, int me, int step, int layer,
                      const float *wts, int pending)
{
    tok_t t;
    epx_dispatch_args_t a = EPX_DISPATCH_ARGS_INIT;
    epx_handle_t *hd = NULL;
    epx_recv_t rv = { .struct_size = sizeof(rv) };
    float out[TMAX * H], want[TMAX * H];
    float *y = malloc(sizeof(float) * (size_t)(R * TMAX * K * H + 1));
    CHECK(y != NULL);
    gen(E, me, step, layer, &t);
    a.x = (epx_tensor_t){ t.x, EPX_DTYPE_FP32, t.T, H };
    a.topk_idx = (epx_tensor_t){ t.idx, EPX_DTYPE_INT32, t.T, K };
    a.topk_weights = (epx_tensor_t){ t.w, EPX_DTYPE_FP32, t.T, K };
    a.layer = layer;
    CHECK_OK(epx_dispatch_send(m, &a, &hd));
    CHECK_OK(epx_dispatch_recv(m, hd, &rv));
    CHECK(rv.num_rows <= R * TMAX * K);
    const float *x = rv.x.data;
    for (int j = 0; j < rv.num_local_experts; j++)
        for (int64_t i = rv.expert_offsets[j];
             i < rv.expert_offsets[j] + rv.expert_counts[j]; i++)
            for (int h = 0; h < H; h++)
                y[i * H + h] = x[i * H + h] + wts[j * H + h];
    epx_combine_args_t c = EPX_COMBINE_ARGS_INIT;
    c.y = (epx_tensor_t){ y, EPX_DTYPE_FP32, rv.num_rows, H };
    if (pending) {
        if (me == 0)
            CHECK_OK(epx_combine_send(m, hd, &c));
        epx_rebalance_stats_t st = { .struct_size = sizeof(st) };
        CHECK_ST(epx_moe_rebalance_finish(m, &st),
                 me == 0 ? EPX_ERR_PEER : EPX_ERR_STATE);
    }
    if (!(pending && me == 0))
        CHECK_OK(epx_combine_send(m, hd, &c));
    epx_tensor_t o = { out, EPX_DTYPE_FP32, t.T, H };
    CHECK_OK(epx_combine_recv(m, hd, &o));
    epx_handle_release(hd);
    free(y);

    ref_cfg_t cfg = { R, E, K, H, EPX_DTYPE_FP32, EPX_LAYOUT_EXPERT_MAJOR, 1,
                      EPX_WIRE_NATIVE };
    ref_tokens_t mine = { t.T, t.x, t.idx64, t.w, 0.0f };
    yctx_t yc = { E, step, layer };
    CHECK(ref_combine(&cfg, me, &mine, 0, ref_y, &yc, EPX_DTYPE_FP32, want) == 0);
    CHECKF(memcmp(out, want, sizeof(float) * (size_t)t.T * H) == 0,
           "step %d layer %d: combine differs from the reference", step, layer);
    return 0;
}

/* Max rank load of a placement (load[e] split evenly over its replicas). */
static double max_rank_load(int R, int E, int S, const int32_t *p2l,
                            const double *load)
{
    int cnt[MAXS] = { 0 };
    double most = 0;
    for (int u = 0; u < S; u++)
        cnt[p2l[u]]++;
    for (int r = 0; r < R; r++) {
        double s = 0;
        for (int u = r * (S / R); u < (r + 1) * (S / R); u++)
            s += load[p2l[u]] / cnt[p2l[u]];
        most = s > most ? s : most;
    }
    (void)E;
    return most;
}

/* Tokens every rank routed to each expert of `layer` over steps
 * [from, to): the window the engine must hold. */
static void window_load(int R, int E, int layer, int from, int to, double *ld)
{
    memset(ld, 0, sizeof(double) * (size_t)E);
    for (int s = from < 0 ? 0 : from; s < to; s++)
        for (int r = 0; r < R; r++) {
            tok_t t;
            gen(E, r, s, layer, &t);
            for (int i = 0; i < t.T * K; i++)
                if (t.idx[i] >= 0)
                    ld[t.idx[i]] += 1;
        }
}

static int online_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    const int R = epx_comm_size(comm), me = epx_comm_rank(comm);
    const int E = R + R / 2, S = 2 * R, spr = 2, first = me * spr;
    epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
    p.hidden = H;
    p.num_experts = E;
    p.topk = K;
    p.max_tokens_per_rank = TMAX;
    p.dtype = EPX_DTYPE_FP32;
    p.num_layers = L;
    p.num_slots = S;
    p.layout = EPX_LAYOUT_EXPERT_MAJOR;
    epx_moe_t *m;
    CHECK_OK(epx_moe_create(comm, &p, &m));
    CHECK_ST(epx_moe_stats_config(m, W, 1.0), EPX_ERR_INVALID);
    CHECK_OK(epx_moe_stats_config(m, W, 0.5));
    CHECK_ST(epx_moe_rebalance_finish(m, NULL), EPX_ERR_STATE);

    int32_t cur[L][MAXS], plan[L * MAXS];
    float *wts[L];
    for (int l = 0; l < L; l++) {
        for (int u = 0; u < S; u++)
            cur[l][u] = u % E;
        CHECK_OK(epx_moe_set_placement(m, l, cur[l], EPX_REPLICA_LOCAL_FIRST));
        wts[l] = malloc(sizeof(float) * spr * H);
        CHECK(wts[l] != NULL);
        for (int j = 0; j < spr; j++)
            for (int h = 0; h < H; h++)
                wts[l][j * H + h] = pat(l, cur[l][first + j], h);
        CHECK_OK(epx_moe_register_weights(m, l, wts[l], sizeof(float) * H));
    }
    int moved = 0;
    for (int step = 0; step < STEPS; step++) {
        int mig = -1;
        if (step % 3 == 2) {
            /* Re-plan from the window (the last W steps of each layer)
             * with a budget of 3 slots, then move one layer. */
            epx_rebalance_args_t ra = EPX_REBALANCE_ARGS_INIT;
            ra.max_moves = 3;
            epx_balance_report_t rep;
            CHECK_OK(epx_moe_rebalance_plan(m, &ra, plan, &rep));
            int changed = 0;
            double before = 0, after = 0;
            for (int l = 0; l < L; l++) {
                double ld[MAXS];
                window_load(R, E, l, step - W, step, ld);
                before += max_rank_load(R, E, S, cur[l], ld);
                after += max_rank_load(R, E, S, plan + l * S, ld);
                CHECKF(max_rank_load(R, E, S, plan + l * S, ld) <=
                       max_rank_load(R, E, S, cur[l], ld) + 1e-9,
                       "step %d layer %d: the plan is worse", step, l);
                int seen[MAXS] = { 0 };
                for (int u = 0; u < S; u++) {
                    changed += plan[l * S + u] != cur[l][u];
                    seen[plan[l * S + u]] = 1;
                }
                for (int e = 0; e < E; e++)
                    CHECK(seen[e]);
            }
            CHECKF(changed <= 3 && rep.moves == changed,
                   "step %d: %d slots changed, report %lld, budget 3", step,
                   changed, (long long)rep.moves);
            CHECKF(fabs(rep.max_before - before) <= 1e-9 * (1 + before) &&
                   fabs(rep.max_after - after) <= 1e-9 * (1 + after),
                   "step %d: report %g -> %g, want %g -> %g", step,
                   rep.max_before, rep.max_after, before, after);
            mig = (step / 3) % L;
            CHECK_OK(epx_moe_rebalance_start(m, mig, plan + mig * S,
                                             EPX_REPLICA_LOCAL_FIRST));
            /* one at a time */
            CHECK_ST(epx_moe_rebalance_start(m, 1 - mig, plan + (1 - mig) * S,
                                             EPX_REPLICA_LOCAL_FIRST),
                     EPX_ERR_STATE);
        }
        /* Both layers run; the migrating one on its old placement and
         * weights, its switch refused while its call is in flight. */
        for (int l = 0; l < L; l++)
            CHECK_CALL(layer_step(m, R, E, me, step, l, wts[l], l == mig));
        if (mig >= 0) {
            epx_rebalance_stats_t st = { .struct_size = sizeof(st) };
            CHECK_OK(epx_moe_rebalance_finish(m, &st));
            int changed = 0;
            for (int j = 0; j < spr; j++)
                changed += plan[mig * S + first + j] != cur[mig][first + j];
            CHECK(st.unchanged == spr - changed &&
                  st.local_copies + st.received == changed);
            memcpy(cur[mig], plan + mig * S, sizeof(int32_t) * (size_t)S);
            for (int j = 0; j < spr; j++)
                for (int h = 0; h < H; h++)
                    CHECK(wts[mig][j * H + h] == pat(mig, cur[mig][first + j], h));
            int64_t all = 0;
            for (int u = 0; u < S; u++)
                all += plan[mig * S + u] != (u % E);
            moved += all > 0;
        }
        /* the window: the engine's sums against the test's */
        epx_moe_stats_t s = { .struct_size = sizeof(s) };
        CHECK_OK(epx_moe_stats(m, 1, &s));
        CHECK(s.window_size == W);
        for (int l = 0; l < L; l++) {
            double ld[MAXS];
            window_load(R, E, l, step + 1 - W, step + 1, ld);
            for (int e = 0; e < E; e++)
                CHECKF(s.window[l * E + e] == (int64_t)ld[e],
                       "step %d layer %d expert %d: window %lld want %g", step,
                       l, e, (long long)s.window[l * E + e], ld[e]);
        }
    }
    CHECK(moved > 0);                   /* the drift made the plans move */
    /* decay: the recurrence over every step so far, this rank only */
    epx_moe_stats_t s = { .struct_size = sizeof(s) };
    CHECK_OK(epx_moe_stats(m, 0, &s));
    for (int l = 0; l < L; l++) {
        double d[MAXS] = { 0 };
        for (int st = 0; st < STEPS; st++) {
            tok_t t;
            double c[MAXS] = { 0 };
            gen(E, me, st, l, &t);
            for (int i = 0; i < t.T * K; i++)
                if (t.idx[i] >= 0)
                    c[t.idx[i]] += 1;
            for (int e = 0; e < E; e++)
                d[e] = 0.5 * d[e] + c[e];
        }
        for (int e = 0; e < E; e++)
            CHECK(s.decayed[l * E + e] == d[e]);
    }
    /* window 0: since the reset again */
    CHECK_OK(epx_moe_stats_config(m, 0, -1));
    CHECK_CALL(layer_step(m, R, E, me, 0, 0, wts[0], 0));
    CHECK_CALL(layer_step(m, R, E, me, 1, 0, wts[0], 0));
    CHECK_OK(epx_moe_stats(m, 0, &s));
    CHECK(s.window_size == 0);
    {
        tok_t t0, t1;
        int64_t c[MAXS] = { 0 };
        gen(E, me, 0, 0, &t0);
        gen(E, me, 1, 0, &t1);
        for (int i = 0; i < t0.T * K; i++)
            c[t0.idx[i] >= 0 ? t0.idx[i] : MAXS - 1]++;
        for (int i = 0; i < t1.T * K; i++)
            c[t1.idx[i] >= 0 ? t1.idx[i] : MAXS - 1]++;
        for (int e = 0; e < E; e++)
            CHECK(s.window[e] == c[e]);
    }
    epx_moe_destroy(m);
    for (int l = 0; l < L; l++)
        free(wts[l]);
    return 0;
}

/* Low latency: the switch is refused while a call of the layer is
 * dispatched and not yet combine_sent on some rank (STATE there, PEER on
 * the others), lands once every rank has combined, and the weights are
 * the new placement's. */
static int ll_in_flight_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    const int R = epx_comm_size(comm), me = epx_comm_rank(comm);
    const int E = 2 * R, S = 2 * R, spr = S / R, first = me * spr;
    epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
    p.hidden = H;
    p.num_experts = E;
    p.topk = K;
    p.max_tokens_per_rank = TMAX;
    p.dtype = EPX_DTYPE_FP32;
    p.layout = EPX_LAYOUT_EXPERT_MAJOR;
    p.mode = EPX_MODE_LOW_LATENCY;
    p.num_slots = S;
    epx_moe_t *m;
    CHECK_OK(epx_moe_create(comm, &p, &m));
    int32_t cur[MAXS], next[MAXS];
    for (int u = 0; u < S; u++) {
        cur[u] = u;
        next[u] = u;
    }
    next[0] = 1;   /* slots 0 and 1 trade experts: both move */
    next[1] = 0;
    CHECK_OK(epx_moe_set_placement(m, 0, cur, EPX_REPLICA_LOCAL_FIRST));
    float wts[MAXS * H];
    for (int j = 0; j < spr; j++)
        for (int h = 0; h < H; h++)
            wts[j * H + h] = pat(0, cur[first + j], h);
    CHECK_OK(epx_moe_register_weights(m, 0, wts, sizeof(float) * H));
    CHECK_OK(epx_moe_rebalance_start(m, 0, next, EPX_REPLICA_LOCAL_FIRST));
    tok_t t;
    gen(E, me, 0, 0, &t);
    epx_dispatch_args_t a = EPX_DISPATCH_ARGS_INIT;
    a.x = (epx_tensor_t){ t.x, EPX_DTYPE_FP32, t.T, H };
    a.topk_idx = (epx_tensor_t){ t.idx, EPX_DTYPE_INT32, t.T, K };
    a.topk_weights = (epx_tensor_t){ t.w, EPX_DTYPE_FP32, t.T, K };
    epx_handle_t *hd = NULL;
    epx_recv_t rv = { .struct_size = sizeof(rv) };
    CHECK_OK(epx_dispatch_send(m, &a, &hd));
    CHECK_OK(epx_dispatch_recv(m, hd, &rv));
    epx_combine_args_t c = EPX_COMBINE_ARGS_INIT;
    float *y = calloc((size_t)(rv.num_rows * H + 1), sizeof(float));
    CHECK(y != NULL);
    c.y = (epx_tensor_t){ y, EPX_DTYPE_FP32, rv.num_rows, H };
    if (me == 0)
        CHECK_OK(epx_combine_send(m, hd, &c));
    CHECK_ST(epx_moe_rebalance_finish(m, NULL),
             me == 0 ? EPX_ERR_PEER : EPX_ERR_STATE);
    if (me != 0)
        CHECK_OK(epx_combine_send(m, hd, &c));
    float out[TMAX * H];
    epx_tensor_t o = { out, EPX_DTYPE_FP32, t.T, H };
    CHECK_OK(epx_combine_recv(m, hd, &o));
    epx_handle_release(hd);
    free(y);
    CHECK_OK(epx_moe_rebalance_finish(m, NULL));
    for (int j = 0; j < spr; j++)
        for (int h = 0; h < H; h++)
            CHECK(wts[j * H + h] == pat(0, next[first + j], h));
    epx_moe_destroy(m);
    return 0;
}

static void ll_in_flight(void **state)
{
    (void)state;
    assert_int_equal(epxt_launch(3, 60, ll_in_flight_rank, NULL, NULL),
                     EPX_OK);
}

static void ranks8(void **state)
{
    (void)state;
    assert_int_equal(epxt_launch(8, 120, online_rank, NULL, NULL), EPX_OK);
}

static void ranks3(void **state)
{
    (void)state;
    assert_int_equal(epxt_launch(3, 60, online_rank, NULL, NULL), EPX_OK);
}

int main(void)
{
    epxt_init("test_online");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(ranks3),
        cmocka_unit_test(ranks8),
        cmocka_unit_test(ll_in_flight),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
