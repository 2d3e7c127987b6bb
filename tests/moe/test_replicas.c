/*
 * Replica routing (engines with num_slots and epx_moe_set_placement): each
 * (token, expert) goes to the replica the documented rule names —
 * local-first or round-robin, computed here independently — in both
 * layouts, at 8 and 72 ranks; combine results stay exact (integer-valued
 * data, so any summation order gives the same bits); placements that
 * disagree between ranks, layers without a placement and bad placements
 * are refused.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/epx_test.h"

enum { K = 3, H = 5, TMAX = 7 };

typedef struct rcase {
    int ranks;
    epx_layout_t layout;
    epx_replica_policy_t policy;
} rcase_t;

typedef struct shape { int R, E, S, spr; uint64_t seed; } shape_t;

static shape_t shape_of(int R)
{
    shape_t s = { R, R + R / 2, 2 * R, 2, epxt_seed() };
    return s;
}

/* Slot u holds perm[u % E]: the first S-E experts of the permutation get a
 * second replica, on another rank. */
static void placement(const shape_t *sh, int32_t *phy2log)
{
    int32_t *perm = malloc(sizeof(int32_t) * (size_t)sh->E);
    epxt_rng_t rng = { epxt_hash(sh->seed, 7, 0, 0, 0) };
    for (int e = 0; e < sh->E; e++)
        perm[e] = e;
    for (int e = sh->E - 1; e > 0; e--) {
        int j = (int)epxt_below(&rng, (uint64_t)e + 1);
        int32_t x = perm[e]; perm[e] = perm[j]; perm[j] = x;
    }
    for (int u = 0; u < sh->S; u++)
        phy2log[u] = perm[u % sh->E];
    free(perm);
}

static int tokens(int rank) { return 4 + rank % 4; }

/* Routing of `rank`: K distinct experts, slot 2 of every third token empty. */
static void routing(const shape_t *sh, int rank, int32_t *idx)
{
    epxt_rng_t rng = { epxt_hash(sh->seed, 11, (uint64_t)rank, 0, 0) };
    for (int t = 0; t < tokens(rank); t++)
        for (int k = 0; k < K; k++) {
            int32_t e;
            int again;
            do {
                e = (int32_t)epxt_below(&rng, (uint64_t)sh->E);
                again = 0;
                for (int j = 0; j < k; j++)
                    again |= idx[t * K + j] == e;
            } while (again);
            idx[t * K + k] = (k == 2 && t % 3 == 0) ? -1 : e;
        }
}

static float xval(int rank, int t, int h) { return (float)((rank * 7 + t * 3 + h) % 11 - 5); }

/* The replica rule of epx.h, written out: slots of e in ascending order;
 * local-first: on the source rank, else (all ranks share one host domain
 * here) any, candidate (source mod count); round-robin: token mod count. */
static int expected_slot(const shape_t *sh, const int32_t *p2l,
                         epx_replica_policy_t pol, int src, int t, int e)
{
    int reps[64], n = 0, local[64], nl = 0;
    for (int u = 0; u < sh->S; u++)
        if (p2l[u] == e) {
            reps[n++] = u;
            if (u / sh->spr == src)
                local[nl++] = u;
        }
    if (pol == EPX_REPLICA_ROUND_ROBIN)
        return reps[t % n];
    return nl ? local[src % nl] : reps[src % n];
}

static int replicas_rank(epx_comm_t *comm, void *arg)
{
    const rcase_t *c = arg;
    const int me = epx_comm_rank(comm);
    shape_t sh = shape_of(epx_comm_size(comm));
    int32_t *p2l = malloc(sizeof(int32_t) * (size_t)sh.S);
    placement(&sh, p2l);

    epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
    p.hidden = H;
    p.num_experts = sh.E;
    p.topk = K;
    p.max_tokens_per_rank = TMAX;
    p.dtype = EPX_DTYPE_FP32;
    p.layout = c->layout;
    p.expert_alignment = 2;
    p.num_layers = 2;
    p.num_slots = sh.S;
    epx_moe_t *m;
    CHECK_OK(epx_moe_create(comm, &p, &m));

    int32_t idx[TMAX * K];
    float x[TMAX * H], w[TMAX * K], out[TMAX * H];
    routing(&sh, me, idx);
    int T = tokens(me);
    for (int t = 0; t < T; t++) {
        for (int h = 0; h < H; h++)
            x[t * H + h] = xval(me, t, h);
        for (int k = 0; k < K; k++)
            w[t * K + k] = 1.0f;
    }
    epx_dispatch_args_t a = EPX_DISPATCH_ARGS_INIT;
    a.x = (epx_tensor_t){ x, EPX_DTYPE_FP32, T, H };
    a.topk_idx = (epx_tensor_t){ idx, EPX_DTYPE_INT32, T, K };
    a.topk_weights = (epx_tensor_t){ w, EPX_DTYPE_FP32, T, K };
    a.layer = 1;
    epx_handle_t *hd = NULL;

    /* No placement for layer 1 yet: refused on every rank. */
    epx_status_t st = epx_dispatch_send(m, &a, &hd);
    CHECK(st == EPX_ERR_INVALID);
    CHECK(strstr(epx_last_error(), "no placement") != NULL);
    /* Bad placements change nothing. */
    int32_t bad[512];
    memcpy(bad, p2l, sizeof(int32_t) * (size_t)sh.S);
    bad[0] = sh.E;
    CHECK_ST(epx_moe_set_placement(m, 1, bad, c->policy), EPX_ERR_INVALID);
    for (int u = 0; u < sh.S; u++)
        bad[u] = u % 2;                       /* experts >= 2 have no slot */
    CHECK_ST(epx_moe_set_placement(m, 1, bad, c->policy), EPX_ERR_INVALID);
    /* Rank 0 disagrees with the others: refused everywhere. */
    CHECK_OK(epx_moe_set_placement(m, 1, p2l, me == 0 ? !c->policy : c->policy));
    st = epx_dispatch_send(m, &a, &hd);
    CHECK(st == EPX_ERR_MISMATCH);
    CHECK_OK(epx_moe_set_placement(m, 1, p2l, c->policy));

    for (int round = 0; round < 2; round++) {   /* fresh, then cached */
        a.flags = round ? EPX_DISPATCH_CACHED : 0;
        epx_recv_t rv = { .struct_size = sizeof(rv) };
        CHECK_OK(epx_dispatch_send(m, &a, &hd));
        CHECK_OK(epx_dispatch_recv(m, hd, &rv));
        int nl = rv.num_local_experts, first = rv.first_local_expert;
        CHECK(nl == sh.spr && first == me * sh.spr);
        for (int j = 0; j < nl; j++)
            CHECK(rv.local_experts[j] == p2l[first + j]);
        /* What must arrive: every source's (token, expert) whose slot is here. */
        int64_t want_cnt[8] = { 0 }, rows = 0, seg_at[8] = { 0 };
        float *y = (float *)rv.x.data;
        for (int s = 0; s < sh.R; s++) {
            int32_t sidx[TMAX * K];
            routing(&sh, s, sidx);
            for (int t = 0; t < tokens(s); t++) {
                int here = 0, slots[K];
                for (int k = 0; k < K; k++) {
                    int e = sidx[t * K + k];
                    slots[k] = e < 0 ? -1 : expected_slot(&sh, p2l, c->policy, s, t, e);
                    if (slots[k] >= 0 && slots[k] / sh.spr == me) {
                        here = 1;
                        want_cnt[slots[k] - first]++;
                    }
                }
                if (!here || c->layout != EPX_LAYOUT_TOKEN_MAJOR)
                    continue;
                CHECKF(rows < rv.num_rows && rv.src_rank[rows] == s &&
                       rv.src_token[rows] == t, "row %lld: from %d:%d, want %d:%d",
                       (long long)rows, rv.src_rank[rows], rv.src_token[rows], s, t);
                for (int k = 0; k < K; k++) {
                    int want = slots[k] >= 0 && slots[k] / sh.spr == me ? slots[k] - first : -1;
                    CHECKF(rv.topk_idx[rows * K + k] == want, "row %lld slot %d: %d want %d",
                           (long long)rows, k, rv.topk_idx[rows * K + k], want);
                }
                rows++;
            }
        }
        for (int j = 0; j < nl; j++)
            CHECKF(rv.expert_counts[j] == want_cnt[j], "local slot %d: %lld tokens, want %lld",
                   j, (long long)rv.expert_counts[j], (long long)want_cnt[j]);
        if (c->layout == EPX_LAYOUT_TOKEN_MAJOR) {
            CHECK(rows == rv.num_rows);
            for (int64_t r = 0; r < rows; r++) {   /* y = sum of x*(e+1) */
                float f = 0;
                for (int k = 0; k < K; k++)
                    if (rv.topk_idx[r * K + k] >= 0)
                        f += (float)(rv.local_experts[rv.topk_idx[r * K + k]] + 1);
                for (int h = 0; h < H; h++)
                    y[r * H + h] *= f;
            }
        } else {
            for (int j = 0; j < nl; j++) {
                seg_at[j] = rv.expert_offsets[j];
                for (int64_t r = seg_at[j]; r < seg_at[j] + rv.expert_counts[j]; r++)
                    for (int h = 0; h < H; h++)
                        y[r * H + h] *= (float)(rv.local_experts[j] + 1);
            }
        }
        epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
        ca.y = rv.x;                              /* in place */
        CHECK_OK(epx_combine_send(m, hd, &ca));
        epx_tensor_t o = { out, EPX_DTYPE_FP32, T, H };
        CHECK_OK(epx_combine_recv(m, hd, &o));
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++) {
                float want = 0;
                for (int k = 0; k < K; k++)
                    if (idx[t * K + k] >= 0)
                        want += xval(me, t, h) * (float)(idx[t * K + k] + 1);
                CHECKF(out[t * H + h] == want, "out[%d][%d] = %g, want %g", t, h,
                       out[t * H + h], want);
            }
    }
    /* Statistics: logical counts per expert, physical per slot (both
     * rounds: fresh and cached). */
    epx_moe_stats_t stt = { .struct_size = sizeof(stt) };
    CHECK_OK(epx_moe_stats(m, 0, &stt));
    CHECK(stt.num_slots == sh.S && stt.dispatches == 2);
    for (int u = 0; u < sh.S; u++) {
        int64_t want = 0;
        for (int t = 0; t < T; t++)
            for (int k = 0; k < K; k++)
                want += idx[t * K + k] >= 0 &&
                        expected_slot(&sh, p2l, c->policy, me, t, idx[t * K + k]) == u;
        CHECKF(stt.physical[(size_t)sh.S + u] == 2 * want,
               "slot %d: %lld tokens recorded, want %lld", u,
               (long long)stt.physical[(size_t)sh.S + u], (long long)(2 * want));
    }
    for (int e = 0; e < sh.E; e++) {
        int64_t want = 0;
        for (int i = 0; i < T * K; i++)
            want += idx[i] == e;
        CHECK(stt.window[(size_t)sh.E + e] == 2 * want);
    }
    epx_handle_release(hd);
    epx_moe_destroy(m);
    free(p2l);
    return 0;
}

static void run(void **state)
{
    const rcase_t *c = *state;
    assert_int_equal(epxt_launch(c->ranks, 60, replicas_rank, *state, NULL), EPX_OK);
}

static rcase_t cases[] = {
    { 8, EPX_LAYOUT_TOKEN_MAJOR, EPX_REPLICA_LOCAL_FIRST },
    { 8, EPX_LAYOUT_TOKEN_MAJOR, EPX_REPLICA_ROUND_ROBIN },
    { 8, EPX_LAYOUT_EXPERT_MAJOR, EPX_REPLICA_LOCAL_FIRST },
    { 8, EPX_LAYOUT_EXPERT_MAJOR, EPX_REPLICA_ROUND_ROBIN },
    { 72, EPX_LAYOUT_TOKEN_MAJOR, EPX_REPLICA_LOCAL_FIRST },
    { 72, EPX_LAYOUT_EXPERT_MAJOR, EPX_REPLICA_ROUND_ROBIN },
};

int main(void)
{
    epxt_init("test_replicas");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_prestate(run, &cases[0]),
        cmocka_unit_test_prestate(run, &cases[1]),
        cmocka_unit_test_prestate(run, &cases[2]),
        cmocka_unit_test_prestate(run, &cases[3]),
        cmocka_unit_test_prestate(run, &cases[4]),
        cmocka_unit_test_prestate(run, &cases[5]),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
