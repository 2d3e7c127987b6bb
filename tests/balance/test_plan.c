/* balance: the placement planner (both policies) and its metrics.
 * The EPLB example exactly; invariants, the epx policy's gain over the
 * DeepSeek policy and keep-in-place on fresh random loads; bad input. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/epx_test.h"

typedef struct shape {
    const char *name;
    int L, E, S, G, D, R;
} shape_t;

/* Hierarchical and global, slots not a multiple of experts, one rank,
 * one layer, no spare slot, the production-sized case. */
static const shape_t shapes[] = {
    { "hier-16e-8r", 3, 16, 24, 4, 2, 8 },
    { "hier-256e-72r", 2, 256, 288, 8, 4, 72 },
    { "global-groups-12e", 2, 12, 20, 3, 2, 4 },
    { "global-60e-8r", 2, 60, 96, 6, 4, 8 },
    { "one-domain-64e", 2, 64, 80, 8, 1, 16 },
    { "one-rank", 2, 8, 8, 2, 1, 1 },
    { "one-rank-spare", 1, 8, 12, 2, 1, 1 },
    { "one-layer", 1, 32, 40, 4, 2, 8 },
    { "no-spare", 2, 32, 32, 4, 2, 8 },
    { "many-spare", 2, 10, 40, 2, 2, 4 },
};
#define NSHAPES (sizeof(shapes) / sizeof(shapes[0]))

enum { LOAD_ZIPF, LOAD_UNIFORM, LOAD_SMALLINT };

static double uniform01(epxt_rng_t *r)
{
    return (double)(epxt_next(r) >> 11) * 0x1.0p-53;
}

/* Zipf: expert ranks are a random permutation, load ~ 1/(rank+1)^s with
 * multiplicative noise.  Small integers: many ties and zeros. */
static void gen_load(epxt_rng_t *rng, int kind, double s, int L, int E,
                     double *load)
{
    int *perm = malloc((size_t)E * sizeof(int));
    for (int l = 0; l < L; l++) {
        for (int e = 0; e < E; e++)
            perm[e] = e;
        for (int e = E - 1; e > 0; e--) {
            int j = (int)epxt_below(rng, (uint64_t)e + 1), t = perm[e];
            perm[e] = perm[j];
            perm[j] = t;
        }
        for (int e = 0; e < E; e++) {
            double *x = &load[(size_t)l * E + e];
            if (kind == LOAD_ZIPF)
                *x = 1e4 * pow(perm[e] + 1.0, -s) * (0.9 + 0.2 * uniform01(rng));
            else if (kind == LOAD_UNIFORM)
                *x = 1000 * uniform01(rng);
            else
                *x = (double)epxt_below(rng, 6);
        }
    }
    free(perm);
}

static epx_balance_params_t params_of(const shape_t *sh, int policy)
{
    epx_balance_params_t p = EPX_BALANCE_PARAMS_INIT;
    p.num_layers = sh->L;
    p.num_experts = sh->E;
    p.num_slots = sh->S;
    p.num_groups = sh->G;
    p.num_domains = sh->D;
    p.num_ranks = sh->R;
    p.policy = (epx_balance_policy_t)policy;
    return p;
}

/* Max rank load of one layer, computed here from the definition. */
static double max_rank_load(const shape_t *sh, const double *load,
                            const int32_t *p2l)
{
    int cnt[512] = { 0 };
    double rl[512] = { 0 }, mx = 0;
    for (int s = 0; s < sh->S; s++)
        cnt[p2l[s]]++;
    for (int s = 0; s < sh->S; s++)
        rl[s / (sh->S / sh->R)] += load[p2l[s]] / cnt[p2l[s]];
    for (int r = 0; r < sh->R; r++)
        mx = rl[r] > mx ? rl[r] : mx;
    return mx;
}

/* Does a rank hold two replicas of one expert? */
static int colocated(const shape_t *sh, const int32_t *p2l)
{
    int spr = sh->S / sh->R;
    for (int r = 0; r < sh->R; r++)
        for (int i = 0; i < spr; i++)
            for (int j = 0; j < i; j++)
                if (p2l[r * spr + i] == p2l[r * spr + j])
                    return 1;
    return 0;
}

/* The invariants every plan meets; distinct: no two replicas of one
 * expert on one rank. */
static void check_plan(const shape_t *sh, const int32_t *p2l,
                       const int32_t *l2p, int maxrep, const int32_t *cnt,
                       int distinct)
{
    int spr = sh->S / sh->R;
    for (int l = 0; l < sh->L; l++) {
        const int32_t *P = p2l + (size_t)l * sh->S, *C = cnt + (size_t)l * sh->E;
        const int32_t *Q = l2p + (size_t)l * sh->E * maxrep;
        int seen[512] = { 0 }, total = 0;
        for (int s = 0; s < sh->S; s++) {
            assert_in_range(P[s], 0, sh->E - 1);
            seen[P[s]]++;
        }
        for (int e = 0; e < sh->E; e++) {
            assert_true(C[e] >= 1);
            assert_int_equal(C[e], seen[e]);
            total += C[e];
            for (int k = 0; k < maxrep; k++) {
                int32_t s = Q[e * maxrep + k];
                if (k < C[e]) {   /* the two maps are inverse */
                    assert_in_range(s, 0, sh->S - 1);
                    assert_int_equal(P[s], e);
                    for (int j = 0; j < k; j++)
                        assert_int_not_equal(Q[e * maxrep + j], s);
                } else {
                    assert_int_equal(s, -1);
                }
            }
        }
        assert_int_equal(total, sh->S);
        if (distinct)
            for (int r = 0; r < sh->R; r++)
                for (int i = 0; i < spr; i++)
                    for (int j = 0; j < i; j++)
                        assert_int_not_equal(P[r * spr + i], P[r * spr + j]);
    }
}

static void eplb_example(void **state)
{
    (void)state;
    static const double load[2][12] = {
        { 90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86 },
        { 20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27 } };
    static const int32_t want[2][16] = {
        { 5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1 },
        { 7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1 } };
    shape_t sh = { "eplb", 2, 12, 16, 4, 2, 8 };
    epx_balance_params_t p = params_of(&sh, EPX_BALANCE_DEEPSEEK);
    int maxrep = sh.S - sh.E + 1;
    int32_t p2l[32], l2p[2 * 12 * 5], cnt[24];
    assert_int_equal(epx_balance_plan(&p, &load[0][0], p2l, l2p, maxrep, cnt),
                     EPX_OK);
    assert_memory_equal(p2l, want, sizeof(want));
    check_plan(&sh, p2l, l2p, maxrep, cnt, 0);
}

/* Every random case: both policies meet the invariants, epx never has a
 * higher maximum rank load than DeepSeek, metrics agree with the
 * definition. */
static void random_invariants(void **state)
{
    (void)state;
    epxt_rng_t rng = { epxt_hash_str(epxt_seed(), "random_invariants") };
    static const double zipf_s[] = { 0.6, 1.0, 1.4 };
    double gain_sum = 0;
    int gain_n = 0, strictly = 0, coloc_n = 0, coloc_worse = 0;
    for (size_t i = 0; i < NSHAPES; i++) {
        const shape_t *sh = &shapes[i];
        int maxrep = sh->S - sh->E + 1;
        size_t LS = (size_t)sh->L * sh->S, LE = (size_t)sh->L * sh->E;
        double *load = malloc(LE * sizeof(double));
        int32_t *p2l[2], *l2p[2], *cnt[2];
        for (int k = 0; k < 2; k++) {
            p2l[k] = malloc(LS * sizeof(int32_t));
            l2p[k] = malloc(LE * maxrep * sizeof(int32_t));
            cnt[k] = malloc(LE * sizeof(int32_t));
        }
        for (int trial = 0; trial < 30; trial++) {
            int kind = trial % 5 < 3 ? LOAD_ZIPF
                       : trial % 5 == 3 ? LOAD_UNIFORM : LOAD_SMALLINT;
            gen_load(&rng, kind, zipf_s[trial % 3], sh->L, sh->E, load);
            for (int k = 0; k < 2; k++) {
                epx_balance_params_t p = params_of(sh, k);
                epx_status_t st = epx_balance_plan(&p, load, p2l[k], l2p[k],
                                                   maxrep, cnt[k]);
                if (st != EPX_OK)
                    fail_msg("%s: %s", sh->name, epx_last_error());
                check_plan(sh, p2l[k], l2p[k], maxrep, cnt[k], 0);
            }
            for (int l = 0; l < sh->L; l++) {
                const double *ld = load + (size_t)l * sh->E;
                double ds = max_rank_load(sh, ld, p2l[0] + (size_t)l * sh->S);
                double ep = max_rank_load(sh, ld, p2l[1] + (size_t)l * sh->S);
                /* Never above DeepSeek, wherever it puts its replicas. */
                coloc_n += colocated(sh, p2l[0] + (size_t)l * sh->S);
                coloc_worse += colocated(sh, p2l[1] + (size_t)l * sh->S);
                if (ep > ds * (1 + 1e-12)) {
                    fail_msg("%s trial %d layer %d: epx max rank load %.6f > "
                             "deepseek %.6f", sh->name, trial, l, ep, ds);
                }
                if (kind == LOAD_ZIPF && ds > 0) {
                    gain_sum += 1 - ep / ds;
                    gain_n++;
                    strictly += ep < ds * (1 - 1e-12);
                }
            }
            /* Metrics against the definition, layer 0. */
            epx_balance_params_t p = params_of(sh, EPX_BALANCE_EPX);
            double *lb = malloc((size_t)sh->L * sizeof(double));
            double *li = malloc((size_t)sh->L * sizeof(double));
            double b, im;
            assert_int_equal(epx_balance_metrics(&p, load, p2l[1], &b, &im, lb,
                                                 li), EPX_OK);
            double tot = 0;
            for (int e = 0; e < sh->E; e++)
                tot += load[e];
            double mx = max_rank_load(sh, load, p2l[1]), mean = tot / sh->R;
            if (mx > 0) {
                assert_true(fabs(lb[0] - mean / mx) < 1e-9);
                assert_true(fabs(li[0] - (mx - mean) / mean) < 1e-9);
            }
            assert_true(b > 0 && b <= 1 + 1e-12 && im >= -1e-12);
            free(lb);
            free(li);
        }
        free(load);
        for (int k = 0; k < 2; k++) {
            free(p2l[k]);
            free(l2p[k]);
            free(cnt[k]);
        }
    }
    double avg = gain_sum / gain_n;
    printf("# zipf loads: epx max rank load %.2f%% below deepseek on average, "
           "strictly lower in %d of %d layers\n", 100 * avg, strictly, gain_n);
    printf("# replicas of one expert on one rank: deepseek in %d layers, "
           "epx in %d\n", coloc_n, coloc_worse);
    assert_true(avg > 0.005);
}

static int moved(const int32_t *a, const int32_t *b, size_t n)
{
    int m = 0;
    for (size_t i = 0; i < n; i++)
        m += a[i] != b[i];
    return m;
}

/* Keep-in-place: the same loads move nothing; a small change moves fewer
 * slots than planning from scratch, at the same rank loads. */
static void keep_in_place(void **state)
{
    (void)state;
    epxt_rng_t rng = { epxt_hash_str(epxt_seed(), "keep_in_place") };
    int kept_total = 0, scratch_total = 0;
    for (size_t i = 0; i < NSHAPES; i++) {
        const shape_t *sh = &shapes[i];
        size_t LS = (size_t)sh->L * sh->S, LE = (size_t)sh->L * sh->E;
        double *load = malloc(LE * sizeof(double));
        int32_t *cur = malloc(LS * sizeof(int32_t));
        int32_t *again = malloc(LS * sizeof(int32_t));
        int32_t *scratch = malloc(LS * sizeof(int32_t));
        for (int trial = 0; trial < 10; trial++) {
            gen_load(&rng, LOAD_ZIPF, 1.0, sh->L, sh->E, load);
            epx_balance_params_t p = params_of(sh, EPX_BALANCE_EPX);
            assert_int_equal(epx_balance_plan(&p, load, cur, NULL, 0, NULL),
                             EPX_OK);
            p.current_phy2log = cur;
            assert_int_equal(epx_balance_plan(&p, load, again, NULL, 0, NULL),
                             EPX_OK);
            assert_int_equal(moved(cur, again, LS), 0);
            for (size_t j = 0; j < LE; j++)   /* +-5 % */
                load[j] *= 0.95 + 0.1 * uniform01(&rng);
            assert_int_equal(epx_balance_plan(&p, load, again, NULL, 0, NULL),
                             EPX_OK);
            p.current_phy2log = NULL;
            assert_int_equal(epx_balance_plan(&p, load, scratch, NULL, 0, NULL),
                             EPX_OK);
            int mk = moved(cur, again, LS), ms = moved(cur, scratch, LS);
            assert_true(mk <= ms);
            kept_total += mk;
            scratch_total += ms;
            for (int l = 0; l < sh->L; l++) {   /* only slots permuted */
                const double *ld = load + (size_t)l * sh->E;
                assert_true(fabs(max_rank_load(sh, ld, again + (size_t)l * sh->S) -
                                 max_rank_load(sh, ld, scratch + (size_t)l * sh->S))
                            <= 1e-9 * (1 + ld[0]));
            }
        }
        free(load);
        free(cur);
        free(again);
        free(scratch);
    }
    printf("# +-5%% load change: %d slots moved keeping in place, %d from "
           "scratch\n", kept_total, scratch_total);
    assert_true(kept_total < scratch_total);
}

/* A call that must fail with `want`, leave the outputs alone and say why
 * (the message contains `word`). */
static void expect_plan_error(const epx_balance_params_t *p, const double *load,
                              int maxrep, epx_status_t want, const char *word)
{
    int32_t p2l[64], l2p[64 * 8], cnt[64];
    for (int i = 0; i < 64; i++)
        p2l[i] = cnt[i] = 7777;
    epx_status_t st = epx_balance_plan(p, load, p2l, l2p, maxrep, cnt);
    if (st != want || !strstr(epx_last_error(), word))
        fail_msg("got %s (%s), want %s mentioning '%s'", epx_status_str(st),
                 epx_last_error(), epx_status_str(want), word);
    for (int i = 0; i < 64; i++) {
        assert_int_equal(p2l[i], 7777);
        assert_int_equal(cnt[i], 7777);
    }
}

static void bad_input(void **state)
{
    (void)state;
    double load[16];
    for (int i = 0; i < 16; i++)
        load[i] = i % 3 ? 10.0 * i : 1000;
    shape_t sh = { "bad", 1, 16, 24, 4, 2, 8 };
    epx_balance_params_t p = params_of(&sh, EPX_BALANCE_EPX), q;
    int32_t p2l[24];

    q = p; q.num_slots = 12;
    expect_plan_error(&q, load, 9, EPX_ERR_INVALID, "num_slots 12 < num_experts 16");
    q = p; q.num_slots = 20;
    expect_plan_error(&q, load, 9, EPX_ERR_INVALID, "not a multiple of num_ranks");
    q = p; q.num_groups = 3;
    expect_plan_error(&q, load, 9, EPX_ERR_INVALID, "num_groups 3 does not divide");
    q = p; q.num_domains = 3;
    expect_plan_error(&q, load, 9, EPX_ERR_INVALID, "num_domains 3 does not divide");
    q = p; q.num_ranks = 0;
    expect_plan_error(&q, load, 9, EPX_ERR_INVALID, ">= 1");
    q = p; q.policy = (epx_balance_policy_t)7;
    expect_plan_error(&q, load, 9, EPX_ERR_INVALID, "unknown policy");
    q = p; q.struct_size = 8;
    expect_plan_error(&q, load, 9, EPX_ERR_INVALID, "EPX_BALANCE_PARAMS_INIT");
    expect_plan_error(NULL, load, 9, EPX_ERR_INVALID, "EPX_BALANCE_PARAMS_INIT");
    expect_plan_error(&p, NULL, 9, EPX_ERR_INVALID, "load is NULL");
    assert_int_equal(epx_balance_plan(&p, load, NULL, NULL, 0, NULL),
                     EPX_ERR_INVALID);
    assert_non_null(strstr(epx_last_error(), "phy2log is NULL"));
    expect_plan_error(&p, load, 0, EPX_ERR_INVALID, "max_replicas 0");
    load[5] = -1;
    expect_plan_error(&p, load, 9, EPX_ERR_INVALID, "load[0][5] = -1");
    load[5] = NAN;
    expect_plan_error(&p, load, 9, EPX_ERR_INVALID, "load[0][5]");
    load[5] = 50;
    /* Expert 0 carries most of the load: it needs more than 1 replica. */
    expect_plan_error(&p, load, 1, EPX_ERR_RANGE, "max_replicas = 1");
    int32_t cur[24] = { 0 };
    cur[3] = 16;
    q = p; q.current_phy2log = cur;
    expect_plan_error(&q, load, 9, EPX_ERR_INVALID, "current_phy2log[0][3] = 16");
    /* Without log2phy, max_replicas does not matter. */
    assert_int_equal(epx_balance_plan(&p, load, p2l, NULL, 0, NULL), EPX_OK);

    /* Metrics: a slot naming no expert, an expert with load and no slot. */
    double b = -1;
    p2l[2] = 99;
    assert_int_equal(epx_balance_metrics(&p, load, p2l, &b, NULL, NULL, NULL),
                     EPX_ERR_INVALID);
    assert_non_null(strstr(epx_last_error(), "phy2log[0][2] = 99"));
    assert_true(b == -1);
    for (int s = 0; s < 24; s++)
        p2l[s] = s % 15;   /* expert 15 missing */
    assert_int_equal(epx_balance_metrics(&p, load, p2l, &b, NULL, NULL, NULL),
                     EPX_ERR_INVALID);
    assert_non_null(strstr(epx_last_error(), "expert 15 has load"));
}

/* Metrics on hand-worked placements. */
static void metrics_by_hand(void **state)
{
    (void)state;
    epx_balance_params_t p = EPX_BALANCE_PARAMS_INIT;
    p.num_layers = 2;
    p.num_experts = 3;
    p.num_slots = 4;
    p.num_ranks = 2;
    /* layer 0: loads 4,1,1; slots 0,0 | 1,2 -> ranks 2+2=4 | 2: mean 3, max 4.
     * layer 1: loads 2,2,2; slots 0,1 | 2,2 -> 4 | 2: mean 3, max 4. */
    double load[6] = { 4, 1, 1, 2, 2, 2 };
    int32_t p2l[8] = { 0, 0, 1, 2, 0, 1, 2, 2 };
    double b, im, lb[2], li[2];
    assert_int_equal(epx_balance_metrics(&p, load, p2l, &b, &im, lb, li), EPX_OK);
    assert_true(fabs(lb[0] - 0.75) < 1e-12 && fabs(li[0] - 1.0 / 3) < 1e-12);
    assert_true(fabs(lb[1] - 0.75) < 1e-12 && fabs(li[1] - 1.0 / 3) < 1e-12);
    assert_true(fabs(b - 6.0 / 8) < 1e-12 && fabs(im - 2.0 / 6) < 1e-12);
    /* No balancer: contiguous blocks, rank 0 = {0}, rank 1 = {1, 2}:
     * layer 0: 4 | 2, layer 1: 2 | 4: max 4 + 4, mean 3 + 3. */
    assert_int_equal(epx_balance_metrics(&p, load, NULL, &b, &im, lb, li), EPX_OK);
    assert_true(fabs(b - 0.75) < 1e-12 && fabs(lb[1] - 0.75) < 1e-12);
    /* No load at all counts as perfect. */
    double zero[6] = { 0 };
    assert_int_equal(epx_balance_metrics(&p, zero, p2l, &b, &im, NULL, NULL),
                     EPX_OK);
    assert_true(b == 1.0 && im == 0.0);
}

/* ---- The optimum of small layers, by exhaustive search: every vector of
 * replica counts (each >= 1, summing to S), and for each the best packing
 * of its replicas (load w/c each) into R ranks of spr slots, by depth-first
 * search over the items heaviest first (ranks in the same state are tried
 * once).  Written apart from the planner: it shares no code with it. */
typedef struct opt {
    const double *w;
    int E, R, spr;
    int cnt[16];
    double item[64], rest[65], rl[16], best;
    int nfree[16], nitems;
} opt_t;

static int cmp_desc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x > y ? -1 : x < y;
}

static void opt_pack(opt_t *o, int i, double mx)
{
    if (mx >= o->best)
        return;
    if (i == o->nitems) {
        o->best = mx;
        return;
    }
    double room = 0;   /* what is left must fit below the best */
    for (int r = 0; r < o->R; r++)
        room += o->nfree[r] ? o->best - o->rl[r] : 0;
    if (room <= o->rest[i])
        return;
    for (int r = 0; r < o->R; r++) {
        int twin = 0;
        for (int q = 0; q < r && !twin; q++)
            twin = o->rl[q] == o->rl[r] && o->nfree[q] == o->nfree[r];
        if (!o->nfree[r] || twin || o->rl[r] + o->item[i] >= o->best)
            continue;
        o->rl[r] += o->item[i];
        o->nfree[r]--;
        opt_pack(o, i + 1, o->rl[r] > mx ? o->rl[r] : mx);
        o->nfree[r]++;
        o->rl[r] -= o->item[i];
    }
}

static void opt_counts(opt_t *o, int e, int left)
{
    if (e == o->E - 1) {
        o->cnt[e] = left;
        o->nitems = 0;
        double top = 0;
        for (int x = 0; x < o->E; x++)
            for (int k = 0; k < o->cnt[x]; k++)
                o->item[o->nitems++] = o->w[x] / o->cnt[x];
        qsort(o->item, (size_t)o->nitems, sizeof(double), cmp_desc);
        top = o->item[0];
        if (top >= o->best)
            return;
        /* Some rank holds k+1 of the k*R+1 heaviest items. */
        for (int k = 1; k < o->spr; k++) {
            double lb = 0;
            for (int j = k * o->R - k; j <= k * o->R; j++)
                lb += o->item[j];
            if (lb >= o->best)
                return;
        }
        if (o->spr == 2) {   /* pairs: heaviest with lightest is optimal */
            double mx = 0;
            for (int j = 0; j < o->R; j++) {
                double x = o->item[j] + o->item[o->nitems - 1 - j];
                mx = x > mx ? x : mx;
            }
            o->best = mx < o->best ? mx : o->best;
            return;
        }
        o->rest[o->nitems] = 0;
        for (int k = o->nitems - 1; k >= 0; k--)
            o->rest[k] = o->rest[k + 1] + o->item[k];
        for (int r = 0; r < o->R; r++) {
            o->rl[r] = 0;
            o->nfree[r] = o->spr;
        }
        opt_pack(o, 0, 0);
        return;
    }
    for (int c = 1; c <= left - (o->E - 1 - e); c++) {
        o->cnt[e] = c;
        opt_counts(o, e + 1, left - c);
    }
}

static double optimum(const double *w, int E, int R, int spr)
{
    opt_t o = { .w = w, .E = E, .R = R, .spr = spr, .best = 1e300 };
    opt_counts(&o, 0, R * spr);
    return o.best;
}

/* FlashLB's example: 8 experts on 8 ranks of 2 slots.  Both greedy
 * policies reach 232; the optimum with evenly split replicas is 590/3. */
static void flashlb_example(void **state)
{
    (void)state;
    static const double load[8] = { 600, 560, 120, 120, 20, 10, 10, 10 };
    shape_t sh = { "flashlb", 1, 8, 16, 1, 1, 8 };
    int32_t p2l[16], l2p[8 * 9], cnt[8];
    double opt = optimum(load, 8, 8, 2), got[2];
    assert_true(fabs(opt - 590.0 / 3) < 1e-9);
    for (int k = 0; k < 2; k++) {
        epx_balance_params_t p = params_of(&sh, k);
        assert_int_equal(epx_balance_plan(&p, load, p2l, l2p, 9, cnt), EPX_OK);
        check_plan(&sh, p2l, l2p, 9, cnt, 0);
        got[k] = max_rank_load(&sh, load, p2l);
    }
    printf("# flashlb example: deepseek %.2f, epx %.2f, optimum %.2f\n",
           got[0], got[1], opt);
    assert_true(fabs(got[0] - 232) < 1e-9);
    assert_true(got[1] <= opt * 1.02);
}

/* Small one-domain layers on fresh random loads: epx within 2 % of the
 * optimum (and never below it, which checks the exhaustive search). */
static void optimum_small(void **state)
{
    (void)state;
    epxt_rng_t rng = { epxt_hash_str(epxt_seed(), "optimum_small") };
    int n = 0, exact = 0;
    double worst = 1, worst_ds = 1;
    for (int trial = 0; trial < 150; trial++) {
        int E = 2 + (int)epxt_below(&rng, 6);          /* 2..7 */
        int R = 1 + (int)epxt_below(&rng, 4);          /* 1..4 */
        int spr = 1 + (int)epxt_below(&rng, 3);        /* 1..3 */
        if (R * spr < E)
            spr = (E + R - 1) / R;
        if (R * spr > 12)
            continue;
        shape_t sh = { "small", 1, E, R * spr, 1, 1, R };
        double load[8];
        int kind = trial % 3;
        for (int e = 0; e < E; e++)
            load[e] = kind == 0 ? 1e3 * pow(uniform01(&rng), 3)
                      : kind == 1 ? (double)epxt_below(&rng, 5)
                                  : 1 + 100 * uniform01(&rng);
        if (trial % 17 == 0)
            load[0] = 0;
        int32_t p2l[12], l2p[8 * 12], cnt[8];
        double got[2];
        for (int k = 0; k < 2; k++) {
            epx_balance_params_t p = params_of(&sh, k);
            assert_int_equal(epx_balance_plan(&p, load, p2l, l2p, 12, cnt),
                             EPX_OK);
            check_plan(&sh, p2l, l2p, 12, cnt, 0);
            got[k] = max_rank_load(&sh, load, p2l);
        }
        double opt = optimum(load, E, R, spr);
        if (got[1] < opt * (1 - 1e-9) || got[1] > opt * 1.02 + 1e-12)
            fail_msg("E=%d R=%d spr=%d: epx %.6f, optimum %.6f", E, R, spr,
                     got[1], opt);
        n++;
        exact += got[1] <= opt * (1 + 1e-9);
        if (opt > 0) {
            worst = got[1] / opt > worst ? got[1] / opt : worst;
            worst_ds = got[0] / opt > worst_ds ? got[0] / opt : worst_ds;
        }
    }
    printf("# small layers: epx optimal in %d of %d, worst %.4f x optimum "
           "(deepseek worst %.4f x)\n", exact, n, worst, worst_ds);
}

/* The refinement of filler_bound below: the spare slots are shared.  For
 * the k largest replicas on k ranks, top_k + bot_{n} (n = k (spr - 1))
 * is bounded with top_k = min over theta of k theta + sum (y - theta)^+
 * (y the replicas; equality at theta = the k-th largest), so that every
 * part is a minimum: per expert, with x extra replicas and t replicas
 * counted among the n smallest, (w - theta (a + x))^+ + t w / (a + x);
 * the constraint sum x <= f is priced by a Lagrange multiplier lam >= 0
 * (weak duality: any lam gives a lower bound), and each expert's cost in
 * t is replaced by its lower convex envelope, whose n cheapest slopes
 * over all experts are the exact minimum of the envelopes.  Expert e0,
 * whose replica is M, has exactly a[e0] replicas (x = 0). */
static int cmp_asc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Set by EPX_TEST_SLOW=1: about a minute instead of seconds. */
static int shared_refine;

typedef struct shared_ctx {
    const double *w;
    const long *a;
    int E, e0;
    long f;
    double *mg, *hv, *cand;
} shared_ctx_t;

static double shared_lag(const shared_ctx_t *c, int n, double th, double lam)
{
    int m = 0;
    double s = -lam * c->f, *hv = c->hv;
    for (int e = 0; e < c->E; e++) {
        long fe = e == c->e0 ? 0 : c->f, a = c->a[e], tmax = a + fe;
        for (long t = 0; t <= tmax; t++) {
            double best = HUGE_VAL;
            for (long x = t > a ? t - a : 0; x <= fe; x++) {
                double ex = c->w[e] - th * (a + x);
                double v = (ex > 0 ? ex : 0) + t * c->w[e] / (a + x) + lam * x;
                best = v < best ? v : best;
            }
            hv[t] = best;
        }
        s += hv[0];
        for (long t0 = 0; t0 < tmax;) {   /* slopes of the envelope */
            long tb = t0 + 1;
            double sb = hv[t0 + 1] - hv[t0];
            for (long t = t0 + 2; t <= tmax; t++)
                if ((hv[t] - hv[t0]) / (t - t0) <= sb) {
                    sb = (hv[t] - hv[t0]) / (t - t0);
                    tb = t;
                }
            for (; t0 < tb; t0++)
                c->mg[m++] = sb;
        }
    }
    qsort(c->mg, (size_t)m, sizeof(double), cmp_asc);
    for (int i = 0; i < n && i < m; i++)
        s += c->mg[i];
    return s;
}

/* max over lam (the dual is concave in lam: ternary search; every value
 * tried is a bound, the largest is kept). */
static double shared_dual(const shared_ctx_t *c, int n, double th)
{
    double lo = 0, hi = 0, best = -HUGE_VAL;
    if (c->f == 0)
        return shared_lag(c, n, th, 0);
    for (int e = 0; e < c->E; e++)
        hi = c->w[e] > hi ? c->w[e] : hi;
    for (int it = 0; it < 30; it++) {
        double m1 = lo + (hi - lo) / 3, m2 = hi - (hi - lo) / 3;
        double v1 = shared_lag(c, n, th, m1), v2 = shared_lag(c, n, th, m2);
        best = v1 > best ? v1 : best;
        best = v2 > best ? v2 : best;
        if (v1 < v2)
            lo = m1;
        else
            hi = m2;
    }
    return best;
}

/* Bound on the load of the k ranks holding the k largest replicas, one
 * each: min over the candidate theta (replica sizes w/(a+x) between the
 * k-th largest with every expert split f more and with none).  Stops as
 * soon as it is at or below `floor` (it can then raise nothing). */
static double shared_term(const shared_ctx_t *c, int k, int spr, double floor)
{
    int m = 0, nc = 0;
    double *tmp = c->mg, thi, tlo, res = HUGE_VAL;
    for (int e = 0; e < c->E; e++)
        for (long i = 0; i < c->a[e]; i++)
            tmp[m++] = c->w[e] / c->a[e];
    qsort(tmp, (size_t)m, sizeof(double), cmp_desc);
    thi = k <= m ? tmp[k - 1] : 0;
    m = 0;
    for (int e = 0; e < c->E; e++) {
        long fe = e == c->e0 ? 0 : c->f;
        for (long i = 0; i < c->a[e] + fe; i++)
            tmp[m++] = c->w[e] / (c->a[e] + fe);
    }
    qsort(tmp, (size_t)m, sizeof(double), cmp_desc);
    tlo = k <= m ? tmp[k - 1] : 0;
    for (int e = 0; e < c->E; e++) {
        long fe = e == c->e0 ? 0 : c->f;
        for (long x = 0; x <= fe; x++) {
            double v = c->w[e] / (c->a[e] + x);
            if (v >= tlo * (1 - 1e-12) && v <= thi * (1 + 1e-12))
                c->cand[nc++] = v;
        }
    }
    qsort(c->cand, (size_t)nc, sizeof(double), cmp_desc);
    for (int i = 0; i < nc && res > floor; i++) {
        if (i && c->cand[i] == c->cand[i - 1])
            continue;
        double v = (k * c->cand[i] + shared_dual(c, k * (spr - 1), c->cand[i])) / k;
        res = v < res ? v : res;
    }
    return res;
}

/* Lower bound on the max rank load of any placement of w[E] on R ranks of
 * spr = S/R slots (replicas of an expert split its load evenly).  Let M be
 * the largest replica: some w[e]/k.  Every expert then has at least
 * a_e = ceil(w[e]/M) replicas, f = S - sum a_e are spare, so it has at
 * most a_e + f, each weighing at least w[e]/(a_e + f).  Hence the replicas
 * contain, per e, a_e of weight >= lo_e = w[e]/(a_e + f): the k largest
 * replicas weigh at least the k largest of that multiset (top_k); and any
 * n replicas weigh at least the n smallest of {lo_e, a_e + f times}
 * (bot_n).  The k largest replicas lie on some j ranks,
 * ceil(k/spr) <= j <= k, which hold j*spr - k more, so one of them
 * carries at least (top_k + bot_{j*spr-k}) / j; k = 1 with the exact
 * largest replica: M + bot_{spr-1}.  The bound is the least over M of the
 * largest of these, and of the mean total/R. */
static double filler_bound(const double *w, int E, int S, int R)
{
    int spr = S / R;
    double tot = 0, best = HUGE_VAL;
    long *a = malloc((size_t)E * sizeof(long));
    double *top = malloc((size_t)(S + 1) * sizeof(double));
    double *bot = malloc((size_t)(S + 1) * sizeof(double));
    double *tmp = malloc((size_t)E * (S + 1) * sizeof(double));
    double *mg = malloc((size_t)E * (S + 1) * sizeof(double));
    double *hv = malloc((size_t)(S + 1) * sizeof(double));
    double *cand = malloc((size_t)E * (S + 1) * sizeof(double));
    for (int e = 0; e < E; e++)
        tot += w[e];
    for (int e0 = 0; e0 < E; e0++) {
        for (long k0 = 1; w[e0] > 0; k0++) {
            double M = w[e0] / k0;
            long need = 0;
            for (int e = 0; e < E; e++) {
                /* Rounded down on ties: more to spare, a lower bound. */
                double c = ceil(w[e] / M * (1 - 1e-12));
                a[e] = c < 1 ? 1 : (long)c;
                need += a[e];
            }
            if (need > S)
                break;
            long f = S - need, n = 0;
            for (int e = 0; e < E; e++)
                for (long i = 0; i < a[e]; i++)
                    tmp[n++] = w[e] / (a[e] + f);
            qsort(tmp, (size_t)n, sizeof(double), cmp_desc);
            top[0] = 0;
            for (int i = 0; i < S; i++)
                top[i + 1] = top[i] + (i < n ? tmp[i] : 0);
            n = 0;
            for (int e = 0; e < E; e++)
                for (long i = 0; i < a[e] + f; i++)
                    tmp[n++] = w[e] / (a[e] + f);
            qsort(tmp, (size_t)n, sizeof(double), cmp_desc);
            bot[0] = 0;
            for (int i = 0; i < S; i++)
                bot[i + 1] = bot[i] + tmp[n - 1 - i];
            double lb = M + bot[spr - 1];
            lb = tot / R > lb ? tot / R : lb;
            for (int k = 2; k <= S && lb < best; k++) {
                double mk = HUGE_VAL;
                for (int jr = (k + spr - 1) / spr; jr <= k && jr <= R; jr++) {
                    double v = (top[k] + bot[jr * spr - k]) / jr;
                    mk = v < mk ? v : mk;
                }
                lb = mk > lb ? mk : lb;
            }
            /* The k largest on k distinct ranks, spare slots shared
             * (shared_term); the terms with j < k ranks stay as above. */
            shared_ctx_t sc = { w, a, E, e0, f, mg, hv, cand };
            for (int k = 1; shared_refine && k <= R && lb < best; k++) {
                double mk = shared_term(&sc, k, spr, lb);
                for (int jr = (k + spr - 1) / spr; jr < k && mk > lb; jr++) {
                    double v = (top[k] + bot[jr * spr - k]) / jr;
                    mk = v < mk ? v : mk;
                }
                lb = mk > lb ? mk : lb;
            }
            best = lb < best ? lb : best;
        }
    }
    free(a);
    free(top);
    free(bot);
    free(tmp);
    free(mg);
    free(hv);
    free(cand);
    if (best == HUGE_VAL)
        best = 0;   /* every load zero */
    return tot / R > best ? tot / R : best;
}

/* ---- Hot ranks (any slots per rank): a proven bound whose count step is
 * exact.  Suppose a placement has every rank at or below M.  Then
 * (1) each expert has c_e >= a_e = ceil(w_e / M) replicas, sum c_e = S;
 * (2) for u < M/2, the "hot" replicas y >= M - u are above M/2, so no
 *     two share a rank: the hot ranks H hold one each, plus spr - 1
 *     non-hot replicas (the set T, |T| = (spr - 1)|H|), and each hot
 *     rank's load is at most M: sum_hot (y - M) + sum_T z <= 0;
 * (3) for any theta, with N the non-hot replicas (T inside N),
 *     sum_T z >= sum_N min(z, theta) - theta (|N| - |T|), since every
 *     replica of T is at least its min(z, theta) and every other one's
 *     min(z, theta) is at most theta.
 * Together: sum over all replicas of g(y) <= 0, where g(y) =
 * y - M + (spr - 1) theta for a hot y, -(theta - y)^+ otherwise.  That
 * sum splits over the experts (c_e replicas of w_e / c_e each), so its
 * least value over every count vector of (1) is an exact knapsack over
 * the spare replicas (dynamic programming): if it is above 0, no placement
 * reaches M.  For fixed counts the sum is concave in theta, so its least
 * value over the counts is too (a minimum of concave functions): theta by
 * ternary search, u over the points M - w_e / c where the hot set
 * changes.  Unlike filler_bound, no expert is assumed split more than the
 * spare slots allow all at once. */
static double hot_min(const double *w, int E, const int *a, int X, double M,
                      double u, double th, int spm1, double *dp, double *nd,
                      double *v)
{
    for (int x = 0; x <= X; x++)
        dp[x] = x ? HUGE_VAL : 0;
    for (int e = 0; e < E; e++) {
        for (int y = 0; y <= X; y++) {
            int c = a[e] + y;
            double z = w[e] / c;
            v[y] = c * (z >= M - u ? z - M + spm1 * th : z < th ? z - th : 0);
        }
        for (int x = 0; x <= X; x++) {
            double b = HUGE_VAL;
            for (int y = 0; y <= x; y++)
                b = dp[x - y] + v[y] < b ? dp[x - y] + v[y] : b;
            nd[x] = b;
        }
        memcpy(dp, nd, (size_t)(X + 1) * sizeof(double));
    }
    return dp[X];   /* every spare replica placed: sum c_e = S */
}

/* The fewest replicas each expert needs for a maximum of M, a[e] =
 * ceil(w[e]/M) (at least 1), and the slots of S left over: -1 when they
 * do not fit. */
static int spare_replicas(const double *w, int E, int S, double M, int *a)
{
    long need = 0;
    for (int e = 0; e < E; e++) {
        double c = ceil(w[e] / M);
        a[e] = c < 1 ? 1 : (int)c;
        while (w[e] / a[e] > M)   /* ceil of a rounded quotient */
            a[e]++;
        need += a[e];
    }
    return need > S ? -1 : S - (int)need;
}

/* Is no placement of w[E] on R ranks of S/R slots at or below M?  (1:
 * proven, by the argument above.) */
static int hot_infeasible(const double *w, int E, int S, int R, double M)
{
    int spr = S / R, X, nu = 0, proven = 0;
    double tot = 0;
    for (int e = 0; e < E; e++)
        tot += w[e];
    if (tot > R * M * (1 + 1e-12))
        return 1;
    int *a = malloc((size_t)E * sizeof(int));
    if ((X = spare_replicas(w, E, S, M, a)) < 0) {
        free(a);
        return 1;
    }
    double *U = malloc((size_t)E * (X + 1) * sizeof(double));
    double *dp = malloc((size_t)3 * (X + 1) * sizeof(double));
    for (int e = 0; e < E; e++)
        for (int x = 0; x <= X; x++)
            if (w[e] / (a[e] + x) > M / 2)
                U[nu++] = M - w[e] / (a[e] + x);
    qsort(U, (size_t)nu, sizeof(double), cmp_asc);
    for (int i = 0; i < nu && !proven; i++) {
        if (i && U[i] == U[i - 1])
            continue;
        double lo = 0, hi = U[i];   /* a useful theta is below u */
        for (int it = 0; it < 40 && !proven; it++) {
            double m1 = lo + (hi - lo) / 3, m2 = hi - (hi - lo) / 3;
            double v1 = hot_min(w, E, a, X, M, U[i], m1, spr - 1, dp,
                                dp + X + 1, dp + 2 * (X + 1));
            double v2 = hot_min(w, E, a, X, M, U[i], m2, spr - 1, dp,
                                dp + X + 1, dp + 2 * (X + 1));
            proven = v1 > 1e-9 * M || v2 > 1e-9 * M;   /* margin: rounding */
            if (v1 < v2)
                lo = m1;
            else
                hi = m2;
        }
    }
    free(a);
    free(U);
    free(dp);
    return proven;
}

/* A bound's test: nonzero when it proves no placement has maximum <= M. */
typedef struct bound_ctx {
    const double *w;
    int E, S, R, rounds;
    int (*out_of_reach)(const struct bound_ctx *c, double M);
} bound_ctx_t;

/* The largest M between lo (a bound already) and hi that the test proves
 * out of reach (bisection); lo if it proves none. */
static double bisect_bound(const bound_ctx_t *c, double lo, double hi)
{
    if (lo >= hi || !c->out_of_reach(c, lo))
        return lo;
    for (int it = 0; it < 30 && hi - lo > 1e-7 * hi; it++) {
        double m = 0.5 * (lo + hi);
        if (c->out_of_reach(c, m))
            lo = m;
        else
            hi = m;
    }
    return lo;
}

static int hot_out_of_reach(const bound_ctx_t *c, double M)
{
    return hot_infeasible(c->w, c->E, c->S, c->R, M);
}

/* The largest M between lo and hi that hot_infeasible proves out of
 * reach; lo if it proves none. */
static double hot_bound(const double *w, int E, int S, int R, double lo,
                        double hi)
{
    const bound_ctx_t c = { w, E, S, R, 0, hot_out_of_reach };
    return bisect_bound(&c, lo, hi);
}

/* hot_infeasible never refutes the exact optimum: small layers of 3 and 4
 * slots per rank, exhaustive optimum. */
static void hot_bound_small(void **state)
{
    (void)state;
    epxt_rng_t rng = { epxt_hash_str(epxt_seed(), "hot_bound_small") };
    int n = 0, tight = 0;
    for (int trial = 0; trial < 60; trial++) {
        int spr = 3 + (int)epxt_below(&rng, 2);            /* 3..4 */
        int R = 2 + (int)epxt_below(&rng, spr == 3 ? 3 : 2);  /* slots <= 12 */
        int E = R + 1 + (int)epxt_below(&rng, (uint64_t)(R * spr - R));
        double load[16], tot = 0;
        gen_load(&rng, trial % 3 ? LOAD_ZIPF : LOAD_UNIFORM,
                 trial % 2 ? 0.6 : 1.2, 1, E, load);
        for (int e = 0; e < E; e++)
            tot += load[e];
        double opt = optimum(load, E, R, spr);
        double lb = hot_bound(load, E, R * spr, R, tot / R, opt * 1.5);
        if (hot_infeasible(load, E, R * spr, R, opt) || lb > opt * (1 + 1e-9))
            fail_msg("E=%d R=%d spr=%d: bound %.6f above the optimum %.6f", E,
                     R, spr, lb, opt);
        n++;
        tight += lb >= opt * (1 - 1e-6);
    }
    printf("# hot-rank bound, 3-4 slots per rank: equal to the optimum in %d "
           "of %d small layers, never above\n", tight, n);
}

/* ---- Two slots per rank.  For given replica counts the best packing
 * pairs the i-th largest replica with the i-th smallest (it minimises the
 * largest pair), so the optimum is a minimum over count vectors only.
 * pair_optimum enumerates them (with the sorted pairing); pair_bound is a
 * proven lower bound where that is too many. */
static double pair_value(const double *w, int E, const int *c, double *tmp)
{
    int n = 0;
    double mx = 0;
    for (int e = 0; e < E; e++)
        for (int k = 0; k < c[e]; k++)
            tmp[n++] = w[e] / c[e];
    qsort(tmp, (size_t)n, sizeof(double), cmp_desc);
    for (int j = 0; j < n / 2; j++)
        mx = tmp[j] + tmp[n - 1 - j] > mx ? tmp[j] + tmp[n - 1 - j] : mx;
    return mx;
}

static void pair_enum(const double *w, int E, int e, int left, int *c,
                      double *tmp, double *best)
{
    if (e == E - 1) {
        c[e] = 1 + left;
        double v = pair_value(w, E, c, tmp);
        *best = v < *best ? v : *best;
        return;
    }
    for (int x = 0; x <= left; x++) {
        c[e] = 1 + x;
        if (w[e] / c[e] >= *best)   /* that replica alone is too heavy */
            continue;
        pair_enum(w, E, e + 1, left - x, c, tmp, best);
    }
}

/* Exact optimum of E experts on R ranks of 2 slots: every count vector. */
static double pair_optimum(const double *w, int E, int R)
{
    int *c = malloc((size_t)E * sizeof(int));
    double *tmp = malloc((size_t)2 * R * sizeof(double)), best = HUGE_VAL;
    pair_enum(w, E, 0, 2 * R - E, c, tmp, &best);
    free(c);
    free(tmp);
    return best;
}

/* Is no placement of w[E] on R ranks of 2 slots at or below M?  (1: proven.)
 * In such a placement every replica y > M/2 shares its rank with one of
 * at most M - y, and no two replicas > M/2 share a rank; so for every
 * u < M/2, G(u) = #{replicas <= u} - #{replicas >= M - u} >= 0 (Hall's
 * condition, the necessary half).  Also each replica is at most M, so
 * expert e has c_e >= a_e = ceil(w_e / M), and sum c_e = 2R.  For any
 * weights lam_u >= 0, sum_u lam_u G(u) >= 0 then, and that sum splits
 * over the experts: expert e with c replicas adds c * Lam(w_e / c) if
 * w_e / c < M/2, else -c * Lam(M - w_e / c) (Lam(x) = sum of lam_u over
 * u >= x).  If its maximum over the counts (a knapsack over the
 * X = 2R - sum a_e extra replicas, by dynamic programming) is below 0, no
 * such placement exists.  The weights are found by multiplicative
 * updates against the maximising counts' G (a zero-sum game between a
 * threshold and the counts); each round is a proof attempt of its own.
 * u ranges over the points M - w_e / c where G can drop. */
static int pair_infeasible(const double *w, int E, int R, double M, int rounds)
{
    int S = 2 * R, nu = 0, X, proven = 0;
    int *a = malloc((size_t)E * sizeof(int));
    if ((X = spare_replicas(w, E, S, M, a)) < 0) {
        free(a);
        return 1;
    }
    double *U = malloc((size_t)E * (X + 1) * sizeof(double));
    for (int e = 0; e < E; e++)
        for (int x = 0; x <= X; x++)
            if (w[e] / (a[e] + x) > M / 2)
                U[nu++] = M - w[e] / (a[e] + x);
    if (nu == 0) {   /* no replica above M/2 can be forced */
        free(a);
        free(U);
        return 0;
    }
    qsort(U, (size_t)nu, sizeof(double), cmp_asc);
    double *lam = malloc((size_t)nu * sizeof(double));
    double *Lam = malloc((size_t)(nu + 1) * sizeof(double));
    double *G = malloc((size_t)(nu + 1) * sizeof(double));
    int *pos = malloc((size_t)E * (X + 1) * sizeof(int));
    int *sgn = malloc((size_t)E * (X + 1) * sizeof(int));
    double *dp = malloc((size_t)E * (X + 1) * sizeof(double));
    int *ch = malloc((size_t)E * (X + 1) * sizeof(int));
    /* Where each (expert, count) counts: from index pos on, sign sgn. */
    for (int e = 0; e < E; e++)
        for (int x = 0; x <= X; x++) {
            int c = a[e] + x, i = e * (X + 1) + x, lo = 0, hi = nu;
            double y = w[e] / c, p;
            if (y > M / 2) {
                p = M - y;        /* counted at u >= p exactly */
                sgn[i] = -1;
            } else {
                p = y;            /* a supply counts at u >= y */
                sgn[i] = y < M / 2 ? 1 : 0;
            }
            while (lo < hi) {
                int m = (lo + hi) / 2;
                if (U[m] < p)
                    lo = m + 1;
                else
                    hi = m;
            }
            pos[i] = lo;
        }
    for (int i = 0; i < nu; i++)
        lam[i] = 1.0 / nu;
    for (int it = 0; it < rounds && !proven; it++) {
        Lam[nu] = 0;
        for (int i = nu - 1; i >= 0; i--)
            Lam[i] = Lam[i + 1] + lam[i];
        for (int e = 0; e < E; e++)
            for (int x = 0; x <= X; x++) {
                int i = e * (X + 1) + x;
                double best = -HUGE_VAL;
                int bc = 0;
                for (int y = 0; y <= x; y++) {   /* y extras to e */
                    double prev = e ? dp[(e - 1) * (X + 1) + x - y] : (x == y ? 0 : -HUGE_VAL);
                    double vy = sgn[e * (X + 1) + y] * (a[e] + y) *
                                Lam[pos[e * (X + 1) + y]];
                    if (prev + vy > best) {
                        best = prev + vy;
                        bc = y;
                    }
                }
                dp[i] = best;
                ch[i] = bc;
            }
        /* All X extras placed (sum c = 2R); below 0 (with a margin for
         * rounding): no placement at or below M. */
        if (dp[(E - 1) * (X + 1) + X] < -1e-9) {
            proven = 1;
            break;
        }
        for (int i = 0; i <= nu; i++)
            G[i] = 0;
        for (int e = E - 1, x = X; e >= 0; e--) {
            int y = ch[e * (X + 1) + x], i = e * (X + 1) + y;
            G[pos[i]] += sgn[i] * (a[e] + y);
            x -= y;
        }
        double run = 0, z = 0;
        for (int i = 0; i < nu; i++) {
            run += G[i];
            lam[i] *= exp(-0.5 * run / S);
            z += lam[i];
        }
        for (int i = 0; i < nu; i++)
            lam[i] /= z;
    }
    free(a); free(U); free(lam); free(Lam); free(G); free(pos); free(sgn);
    free(dp); free(ch);
    return proven;
}

/* Lower bound for 2 slots per rank: the largest M (bisection between
 * total/R and hi, a value some placement reaches) that pair_infeasible
 * proves out of reach; the optimum is above it. */
static int pair_out_of_reach(const bound_ctx_t *c, double M)
{
    return pair_infeasible(c->w, c->E, c->R, M, c->rounds);
}

static double pair_bound(const double *w, int E, int R, double hi, int rounds)
{
    double tot = 0;
    for (int e = 0; e < E; e++)
        tot += w[e];
    const bound_ctx_t c = { w, E, 2 * R, R, rounds, pair_out_of_reach };
    return bisect_bound(&c, tot / R, hi);
}

/* Two slots per rank: the epx policy within 2 % of the exact optimum
 * (small and middle layers, every count vector) and of pair_bound on
 * 144 ranks (256 experts -> 288 slots, Zipf 0.6 and 1.0); the bound never
 * above the optimum. */
static void two_slots(void **state)
{
    (void)state;
    epxt_rng_t rng = { epxt_hash_str(epxt_seed(), "two_slots") };
    double worst_mid = 1, worst_ds = 1;
    int tight = 0, nmid = 0;
    for (int trial = 0; trial < 40; trial++) {
        int E = 6 + (int)epxt_below(&rng, 19);            /* 6..24 */
        int R = (E + 1) / 2 + (int)epxt_below(&rng, 3);   /* 0..5 spare */
        if (2 * R - E > 4)
            R = (E + 4) / 2;
        shape_t sh = { "two", 1, E, 2 * R, 1, 1, R };
        double load[24], got[2];
        int32_t p2l[64];
        gen_load(&rng, trial % 3 ? LOAD_ZIPF : LOAD_UNIFORM,
                 trial % 2 ? 0.6 : 1.0, 1, E, load);
        for (int k = 0; k < 2; k++) {
            epx_balance_params_t p = params_of(&sh, k);
            assert_int_equal(epx_balance_plan(&p, load, p2l, NULL, 0, NULL),
                             EPX_OK);
            got[k] = max_rank_load(&sh, load, p2l);
        }
        double opt = pair_optimum(load, E, R);
        double lb = pair_bound(load, E, R, got[1], 400);
        if (E <= 7 && 2 * R <= 12)   /* the general exhaustive search too */
            assert_true(fabs(optimum(load, E, R, 2) - opt) <= 1e-9 * opt);
        if (lb > opt * (1 + 1e-9) || got[1] < opt * (1 - 1e-9) ||
            got[1] > opt * 1.02)
            fail_msg("E=%d R=%d: bound %.6f, optimum %.6f, epx %.6f", E, R,
                     lb, opt, got[1]);
        tight += lb >= opt * (1 - 1e-6);
        nmid++;
        worst_mid = got[1] / opt > worst_mid ? got[1] / opt : worst_mid;
        worst_ds = got[0] / opt > worst_ds ? got[0] / opt : worst_ds;
    }
    printf("# 2 slots per rank, up to 24 experts: epx worst %.4f x optimum "
           "(deepseek %.4f x); bound equal to the optimum in %d of %d\n",
           worst_mid, worst_ds, tight, nmid);
    static const double zs[] = { 0.6, 1.0 };
    shape_t sh = { "256e-288s-144r", 4, 256, 288, 1, 1, 144 };
    double *load = malloc((size_t)sh.L * sh.E * sizeof(double));
    int32_t *p2l[2];
    for (int k = 0; k < 2; k++)
        p2l[k] = malloc((size_t)sh.L * sh.S * sizeof(int32_t));
    for (int z = 0; z < 2; z++)
        for (int draw = 0; draw < 2; draw++) {
            double worst = 0, worst_d = 0;
            gen_load(&rng, LOAD_ZIPF, zs[z], sh.L, sh.E, load);
            for (int k = 0; k < 2; k++) {
                epx_balance_params_t p = params_of(&sh, k);
                assert_int_equal(epx_balance_plan(&p, load, p2l[k], NULL, 0,
                                                  NULL), EPX_OK);
            }
            for (int l = 0; l < sh.L; l++) {
                const double *ld = load + (size_t)l * sh.E;
                double ds = max_rank_load(&sh, ld, p2l[0] + (size_t)l * sh.S);
                double got = max_rank_load(&sh, ld, p2l[1] + (size_t)l * sh.S);
                double lb = pair_bound(ld, sh.E, sh.R, got, 1500);
                if (got > lb * 1.01)   /* more rounds: a tighter bound */
                    lb = pair_bound(ld, sh.E, sh.R, got, 8000);
                assert_true(got >= lb * (1 - 1e-9));   /* it is a bound */
                worst = got / lb > worst ? got / lb : worst;
                worst_d = ds / lb > worst_d ? ds / lb : worst_d;
            }
            printf("# %s zipf %.1f draw %d: epx worst %.4f x pair bound "
                   "(deepseek %.4f x)\n", sh.name, zs[z], draw, worst, worst_d);
            /* Before the counts built from Hall's condition (pair.c,
             * pair_hall) about one run in ten had a Zipf 0.6 layer 2.1-3.4 %
             * above the bound (EPX_TEST_SEED=378: 3.39 %, the optimum,
             * found by an integer program outside the test, is 1.12 %
             * above the bound and 2.19 % below that plan); now the plan
             * meets the optimum there, and seeds 1-46 are within 1.5 %.
             * Not every seed is within 2 % of this bound: EPX_TEST_SEED=1001
             * has a layer 2.18 % above it (18 other random seeds up to
             * 1.81 %); hence 3 %.  That layer's plan is the optimum: the
             * bound is loose there.  The 2 % against the exact optimum is
             * python/tests/test_balance_exact.py's (an integer program). */
            assert_true(worst <= 1.03);
        }
    free(load);
    free(p2l[0]);
    free(p2l[1]);
}

/* Production-sized layers, one domain, Zipf loads: within 2 % of the lower
 * bound max(filler_bound, hot_bound) (above); filler_bound is checked to be
 * at least the simple
 * bound max(total / R, least possible largest replica), computed here by
 * replaying the greedy replication, which minimises the largest replica. */
static void lower_bound_large(void **state)
{
    (void)state;
    epxt_rng_t rng = { epxt_hash_str(epxt_seed(), "lower_bound_large") };
    const char *slow = getenv("EPX_TEST_SLOW");
    shared_refine = slow && *slow && strcmp(slow, "0");
    static const shape_t big[] = {
        { "256e-288s-72r", 4, 256, 288, 8, 1, 72 },
        { "256e-320s-32r", 4, 256, 320, 8, 1, 32 },
        { "64e-80s-16r", 4, 64, 80, 8, 1, 16 },
    };
    static const double zs[] = { 0.6, 1.0 };
    for (size_t i = 0; i < sizeof(big) / sizeof(big[0]); i++)
        for (int z = 0; z < 2; z++) {
            const shape_t *sh = &big[i];
            double *load = malloc((size_t)sh->L * sh->E * sizeof(double));
            int32_t *p2l = malloc((size_t)sh->L * sh->S * sizeof(int32_t));
            int *c = malloc((size_t)sh->E * sizeof(int));
            gen_load(&rng, LOAD_ZIPF, zs[z], sh->L, sh->E, load);
            epx_balance_params_t p = params_of(sh, EPX_BALANCE_EPX);
            assert_int_equal(epx_balance_plan(&p, load, p2l, NULL, 0, NULL),
                             EPX_OK);
            double worst = 0, worst_old = 0, worst_fb = 0;
            for (int l = 0; l < sh->L; l++) {
                const double *ld = load + (size_t)l * sh->E;
                double tot = 0, top = 0;
                for (int e = 0; e < sh->E; e++) {
                    c[e] = 1;
                    tot += ld[e];
                }
                for (int k = sh->E; k < sh->S; k++) {
                    int b = 0;
                    for (int e = 1; e < sh->E; e++)
                        if (ld[e] / c[e] > ld[b] / c[b])
                            b = e;
                    c[b]++;
                }
                for (int e = 0; e < sh->E; e++)
                    top = ld[e] / c[e] > top ? ld[e] / c[e] : top;
                /* The simple bound max(mean, least largest replica). */
                double lb0 = tot / sh->R > top ? tot / sh->R : top;
                double fb = filler_bound(ld, sh->E, sh->S, sh->R);
                double got = max_rank_load(sh, ld, p2l + (size_t)l * sh->S);
                /* hot_bound where filler_bound leaves more than 1 %
                 * (72 ranks x 4 slots, Zipf 1.0: 5-9 % before it). */
                double lb = got > fb * 1.01
                            ? hot_bound(ld, sh->E, sh->S, sh->R, fb, got) : fb;
                assert_true(fb >= lb0 * (1 - 1e-12));
                assert_true(got >= lb * (1 - 1e-9));   /* it is a bound */
                worst = got / lb > worst ? got / lb : worst;
                worst_fb = got / fb > worst_fb ? got / fb : worst_fb;
                worst_old = got / lb0 > worst_old ? got / lb0 : worst_old;
            }
            printf("# %s zipf %.1f: epx worst %.4f x lower bound "
                   "(%.4f x filler_bound alone, %.4f x max(mean, least "
                   "largest replica))\n", sh->name, zs[z], worst, worst_fb,
                   worst_old);
            /* 72 ranks x 4 slots, Zipf 1.0: up to 3.4 % before the count
             * moves with a repack (plan_epx.c, recount), at most 1.9 % on
             * the seeds 1-520 since (seed 207). */
            assert_true(worst <= 1.02);
            free(load);
            free(p2l);
            free(c);
        }
}

/* Budgeted re-planning: from a plan for old loads, new loads whose hot
 * experts moved; at most the budget of slots change (counted here), no
 * layer's max rank load rises, the report matches the placement, and
 * more budget buys a lower total. */
static void budgeted_replan(void **state)
{
    (void)state;
    epxt_rng_t rng = { epxt_hash_str(epxt_seed(), "budgeted_replan") };
    static const int64_t budgets[] = { 0, 1, 3, 10, 40, 200, 100000 };
    for (size_t i = 0; i < NSHAPES; i++) {
        const shape_t *sh = &shapes[i];
        size_t LS = (size_t)sh->L * sh->S, LE = (size_t)sh->L * sh->E;
        double *load = malloc(LE * sizeof(double));
        int32_t *cur = malloc(LS * sizeof(int32_t));
        int32_t *p2l = malloc(LS * sizeof(int32_t));
        int32_t *cnt = malloc(LE * sizeof(int32_t));
        int maxrep = sh->S - sh->E + 1;
        int32_t *l2p = malloc(LE * maxrep * sizeof(int32_t));
        for (int trial = 0; trial < 4; trial++) {
            gen_load(&rng, trial == 3 ? LOAD_SMALLINT : LOAD_ZIPF, 1.0, sh->L,
                     sh->E, load);
            epx_balance_params_t p = params_of(sh, EPX_BALANCE_EPX);
            assert_int_equal(epx_balance_plan(&p, load, cur, NULL, 0, NULL),
                             EPX_OK);
            gen_load(&rng, LOAD_ZIPF, 1.0, sh->L, sh->E, load);  /* drift */
            double before = 0, prev = 1e300;
            for (int l = 0; l < sh->L; l++)
                before += max_rank_load(sh, load + (size_t)l * sh->E,
                                        cur + (size_t)l * sh->S);
            for (size_t b = 0; b < sizeof(budgets) / sizeof(budgets[0]); b++) {
                epx_balance_report_t rep;
                p.current_phy2log = cur;
                p.report = &rep;
                p.bytes_per_slot = 1000;
                /* Odd budgets as moves, even ones as bytes. */
                p.max_moves = b % 2 ? budgets[b] : -1;
                p.max_bytes = b % 2 ? -1 : budgets[b] * 1000 + 999;
                epx_status_t st = epx_balance_plan(&p, load, p2l, l2p, maxrep,
                                                   cnt);
                if (st != EPX_OK)
                    fail_msg("%s: %s", sh->name, epx_last_error());
                check_plan(sh, p2l, l2p, maxrep, cnt, 0);
                assert_int_equal(rep.moves, moved(cur, p2l, LS));
                assert_true(rep.moves <= budgets[b]);
                assert_true(rep.bytes == rep.moves * 1000);
                double after = 0;
                for (int l = 0; l < sh->L; l++) {
                    const double *ld = load + (size_t)l * sh->E;
                    double m0 = max_rank_load(sh, ld, cur + (size_t)l * sh->S);
                    double m1 = max_rank_load(sh, ld, p2l + (size_t)l * sh->S);
                    assert_true(m1 <= m0 * (1 + 1e-12));
                    after += m1;
                }
                assert_true(fabs(rep.max_before - before) <= 1e-9 * before);
                assert_true(fabs(rep.max_after - after) <= 1e-9 * (after + 1));
                if (budgets[b] == 0)
                    assert_int_equal(rep.moves, 0);
                /* The last budget is unbounded in effect: below the first. */
                if (budgets[b] == 100000 && before > 0)
                    assert_true(after < before || after <= prev);
                prev = after;
            }
        }
        free(load); free(cur); free(p2l); free(cnt); free(l2p);
    }
}

/* num_threads plans layers at once: the same plan, bit for bit, as one
 * thread, from scratch (both policies, with a placement in use, with lost
 * experts) and budgeted; a caller built against version 3 of the params
 * (no num_threads) plans alone. */
static void threads_same_plan(void **state)
{
    (void)state;
    epxt_rng_t rng = { epxt_hash_str(epxt_seed(), "threads_same_plan") };
    static const int threads[] = { 2, 3, 64 };
    for (size_t i = 0; i < NSHAPES; i++) {
        const shape_t *sh = &shapes[i];
        size_t LS = (size_t)sh->L * sh->S, LE = (size_t)sh->L * sh->E;
        int maxrep = sh->S;   /* enough with lost experts too */
        double *load = malloc(LE * sizeof(double));
        int32_t *cur = malloc(LS * sizeof(int32_t));
        int32_t *p2l[2], *l2p[2], *cnt[2];
        uint8_t *lost = calloc(LE, 1);
        for (int k = 0; k < 2; k++) {
            p2l[k] = malloc(LS * sizeof(int32_t));
            l2p[k] = malloc(LE * maxrep * sizeof(int32_t));
            cnt[k] = malloc(LE * sizeof(int32_t));
        }
        gen_load(&rng, LOAD_ZIPF, 1.0, sh->L, sh->E, load);
        epx_balance_params_t p0 = params_of(sh, EPX_BALANCE_EPX);
        assert_int_equal(epx_balance_plan(&p0, load, cur, NULL, 0, NULL), EPX_OK);
        gen_load(&rng, LOAD_ZIPF, 1.0, sh->L, sh->E, load);   /* drift */
        for (size_t e = 0; e < LE; e += 5)   /* a fifth of the experts lost */
            lost[e] = 1;
        for (int mode = 0; mode < 5; mode++) {
            for (size_t t = 0; t < sizeof(threads) / sizeof(threads[0]); t++) {
                epx_balance_report_t rep[2];
                for (int k = 0; k < 2; k++) {
                    epx_balance_params_t p = params_of(sh, mode == 0
                                                               ? EPX_BALANCE_DEEPSEEK
                                                               : EPX_BALANCE_EPX);
                    p.num_threads = k ? threads[t] : 1;
                    p.report = &rep[k];
                    if (mode == 2 || mode == 3)
                        p.current_phy2log = cur;
                    if (mode == 3)
                        p.max_moves = 3 * sh->L;   /* budgeted */
                    if (mode == 4)
                        p.lost = lost;
                    epx_status_t st = epx_balance_plan(&p, load, p2l[k], l2p[k],
                                                       maxrep, cnt[k]);
                    if (st != EPX_OK)
                        fail_msg("%s mode %d: %s", sh->name, mode,
                                 epx_last_error());
                }
                if (memcmp(p2l[0], p2l[1], LS * sizeof(int32_t)) ||
                    memcmp(cnt[0], cnt[1], LE * sizeof(int32_t)) ||
                    memcmp(l2p[0], l2p[1], LE * maxrep * sizeof(int32_t)) ||
                    rep[0].moves != rep[1].moves)
                    fail_msg("%s mode %d: %d threads plan otherwise than one",
                             sh->name, mode, threads[t]);
            }
        }
        /* Version 3 of the params: no num_threads read. */
        epx_balance_params_t p3 = params_of(sh, EPX_BALANCE_EPX);
        p3.version = 3;
        p3.struct_size = offsetof(epx_balance_params_t, num_threads);
        p3.num_threads = 1 << 30;   /* beyond its size: never read */
        assert_int_equal(epx_balance_plan(&p3, load, p2l[1], NULL, 0, NULL),
                         EPX_OK);
        epx_balance_params_t p1 = params_of(sh, EPX_BALANCE_EPX);
        assert_int_equal(epx_balance_plan(&p1, load, p2l[0], NULL, 0, NULL),
                         EPX_OK);
        assert_memory_equal(p2l[0], p2l[1], LS * sizeof(int32_t));
        free(load); free(cur); free(lost);
        for (int k = 0; k < 2; k++) {
            free(p2l[k]); free(l2p[k]); free(cnt[k]);
        }
    }
}

/* Budget errors, and a caller built against version 1 of the params. */
static void budget_errors(void **state)
{
    (void)state;
    shape_t sh = { "b", 1, 16, 24, 4, 2, 8 };
    double load[16];
    for (int e = 0; e < 16; e++)
        load[e] = 1 + e * e;
    int32_t cur[24], p2l[24], plain[24];
    epx_balance_params_t p = params_of(&sh, EPX_BALANCE_EPX), q;
    assert_int_equal(epx_balance_plan(&p, load, cur, NULL, 0, NULL), EPX_OK);
    q = p; q.max_moves = 3;
    expect_plan_error(&q, load, 9, EPX_ERR_INVALID, "current_phy2log");
    q.current_phy2log = cur;
    q.policy = EPX_BALANCE_DEEPSEEK;
    expect_plan_error(&q, load, 9, EPX_ERR_INVALID, "EPX policy");
    q = p; q.current_phy2log = cur; q.max_bytes = 10;
    expect_plan_error(&q, load, 9, EPX_ERR_INVALID, "bytes_per_slot");
    int32_t bad[24];
    memcpy(bad, cur, sizeof(bad));
    for (int s = 0; s < 24; s++)
        bad[s] = bad[s] == 7 ? 8 : bad[s];
    q = p; q.current_phy2log = bad; q.max_moves = 3;
    expect_plan_error(&q, load, 9, EPX_ERR_INVALID, "no slot for expert 7");
    /* Version 1: the fields past current_phy2log are not read. */
    for (int e = 0; e < 16; e++)
        load[e] = 1 + (e * 7) % 16 * 10;
    q = p; q.current_phy2log = cur;
    assert_int_equal(epx_balance_plan(&q, load, plain, NULL, 0, NULL), EPX_OK);
    q.struct_size = offsetof(epx_balance_params_t, max_moves);
    q.version = 1;
    q.max_moves = 0;
    q.report = (epx_balance_report_t *)8;   /* would crash if written */
    assert_int_equal(epx_balance_plan(&q, load, p2l, NULL, 0, NULL), EPX_OK);
    assert_memory_equal(p2l, plain, sizeof(plain));
}

int main(void)
{
    epxt_init("test_plan");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(eplb_example),
        cmocka_unit_test(random_invariants),
        cmocka_unit_test(flashlb_example),
        cmocka_unit_test(optimum_small),
        cmocka_unit_test(hot_bound_small),
        cmocka_unit_test(lower_bound_large),
        cmocka_unit_test(two_slots),
        cmocka_unit_test(budgeted_replan),
        cmocka_unit_test(threads_same_plan),
        cmocka_unit_test(budget_errors),
        cmocka_unit_test(keep_in_place),
        cmocka_unit_test(bad_input),
        cmocka_unit_test(metrics_by_hand),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
