/*
 * Live weight migration (epx_moe_register_weights, epx_moe_rebalance): after
 * many random re-plans every slot of every rank holds exactly the weights of
 * the expert its layer's placement names (checked byte by byte against a
 * pattern of (layer, expert, byte)), unchanged slots are not touched, the
 * per-rank counts add up, and dispatch/combine of the other layer keeps
 * working in between.  8 and 72 ranks.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/epx_test.h"

enum { L = 2, ROUNDS = 12, H = 4, T = 3 };
static const size_t BYTES[L] = { 40, 72 };

static unsigned char pattern(int layer, int e, size_t i)
{
    return (unsigned char)epxt_hash(epxt_seed(), 3, (uint64_t)layer,
                                    (uint64_t)e, i);
}

/* Round `r`'s placement of `layer`: slot u holds perm[u % E]. */
static void placement(int R, int E, int S, int layer, int r, int32_t *p2l)
{
    int32_t perm[256];
    epxt_rng_t rng = { epxt_hash(epxt_seed(), 5, (uint64_t)layer, (uint64_t)r, 0) };
    for (int e = 0; e < E; e++)
        perm[e] = e;
    for (int e = E - 1; e > 0; e--) {
        int j = (int)epxt_below(&rng, (uint64_t)e + 1);
        int32_t x = perm[e]; perm[e] = perm[j]; perm[j] = x;
    }
    for (int u = 0; u < S; u++)
        p2l[u] = perm[u % E];
    (void)R;
}

static int check_weights(const unsigned char *w, int layer, const int32_t *p2l,
                          int first, int spr)
{
    for (int j = 0; j < spr; j++)
        for (size_t i = 0; i < BYTES[layer]; i++)
            CHECKF(w[(size_t)j * BYTES[layer] + i] == pattern(layer, p2l[first + j], i),
                   "layer %d slot %d (expert %d): byte %zu differs", layer,
                   first + j, p2l[first + j], i);
    return 0;
}

/* One dispatch/combine of `layer` with identity experts, expert-major so
 * combine weighs every (token, expert) row: out = 2 x. */
static int round_trip(epx_moe_t *m, int layer, int E, int me)
{
    float x[T * H], w[T * 2], out[T * H];
    int32_t idx[T * 2];
    for (int t = 0; t < T; t++) {
        for (int h = 0; h < H; h++)
            x[t * H + h] = (float)(me + t + h);
        idx[t * 2] = (me + t) % E;
        idx[t * 2 + 1] = (me + t + 1) % E;
        w[t * 2] = w[t * 2 + 1] = 1.0f;
    }
    epx_dispatch_args_t a = EPX_DISPATCH_ARGS_INIT;
    a.x = (epx_tensor_t){ x, EPX_DTYPE_FP32, T, H };
    a.topk_idx = (epx_tensor_t){ idx, EPX_DTYPE_INT32, T, 2 };
    a.topk_weights = (epx_tensor_t){ w, EPX_DTYPE_FP32, T, 2 };
    a.layer = layer;
    CHECK_CALL(epxt_round_inplace(m, &a, EPX_DTYPE_FP32, out, NULL));
    for (int i = 0; i < T * H; i++)
        CHECK(out[i] == 2 * x[i]);
    return 0;
}

static int migrate_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    const int R = epx_comm_size(comm), me = epx_comm_rank(comm);
    const int E = R + R / 2, S = 2 * R, spr = 2, first = me * spr;
    epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
    p.hidden = H;
    p.num_experts = E;
    p.topk = 2;
    p.max_tokens_per_rank = T;
    p.dtype = EPX_DTYPE_FP32;
    p.num_layers = L;
    p.num_slots = S;
    p.layout = EPX_LAYOUT_EXPERT_MAJOR;  /* combine weighs each (token, expert) */
    epx_moe_t *m;
    CHECK_OK(epx_moe_create(comm, &p, &m));

    int32_t cur[L][256], next[256];
    unsigned char *w[L];
    for (int l = 0; l < L; l++) {
        placement(R, E, S, l, 0, cur[l]);
        CHECK_OK(epx_moe_set_placement(m, l, cur[l], EPX_REPLICA_LOCAL_FIRST));
        w[l] = malloc(BYTES[l] * (size_t)spr);
        CHECK(w[l] != NULL);
        for (int j = 0; j < spr; j++)
            for (size_t i = 0; i < BYTES[l]; i++)
                w[l][(size_t)j * BYTES[l] + i] = pattern(l, cur[l][first + j], i);
        CHECK_OK(epx_moe_register_weights(m, l, w[l], BYTES[l]));
    }
    for (int r = 1; r <= ROUNDS; r++) {
        int l = r % L;
        /* every fourth round re-plans to the same placement: nothing moves */
        if (r % 4 == 0)
            memcpy(next, cur[l], sizeof(int32_t) * (size_t)S);
        else
            placement(R, E, S, l, r, next);
        int changed = 0;
        for (int j = 0; j < spr; j++)
            changed += next[first + j] != cur[l][first + j];
        epx_rebalance_stats_t st = { .struct_size = sizeof(st) };
        CHECK_OK(epx_moe_rebalance(m, l, next, r % 3 ? EPX_REPLICA_LOCAL_FIRST
                                                     : EPX_REPLICA_ROUND_ROBIN, &st));
        memcpy(cur[l], next, sizeof(int32_t) * (size_t)S);
        CHECKF(st.unchanged == spr - changed && st.local_copies + st.received == changed,
               "round %d: unchanged %d local %d received %d, %d changed", r,
               st.unchanged, st.local_copies, st.received, changed);
        for (int k = 0; k < L; k++)
            CHECK_CALL(check_weights(w[k], k, cur[k], first, spr));
        CHECK_CALL(round_trip(m, 1 - l, E, me));   /* the other layer */
        CHECK_CALL(round_trip(m, l, E, me));       /* and the new placement */
    }
    /* A bad placement moves nothing and is refused everywhere. */
    memcpy(next, cur[0], sizeof(int32_t) * (size_t)S);
    if (me == 0)
        next[0] = E;
    epx_status_t bad = epx_moe_rebalance(m, 0, next, EPX_REPLICA_LOCAL_FIRST, NULL);
    CHECK(bad == (me == 0 ? EPX_ERR_INVALID : EPX_ERR_PEER));
    CHECK_CALL(check_weights(w[0], 0, cur[0], first, spr));
    CHECK_CALL(round_trip(m, 0, E, me));
    epx_moe_destroy(m);
    for (int l = 0; l < L; l++)
        free(w[l]);
    return 0;
}

static void ranks8(void **state)
{
    (void)state;
    assert_int_equal(epxt_launch(8, 60, migrate_rank, NULL, NULL), EPX_OK);
}

static void ranks72(void **state)
{
    (void)state;
    assert_int_equal(epxt_launch(72, 120, migrate_rank, NULL, NULL), EPX_OK);
}

int main(void)
{
    epxt_init("test_migrate");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(ranks8),
        cmocka_unit_test(ranks72),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
