/* balance, elastic expert parallelism: epx_balance_shrink (the placement
 * left on the live ranks, the experts lost with the others) and planning
 * with lost experts (epx_balance_params_t.lost): fresh plans of both
 * policies, budgeted re-planning from a shrunk placement, the metrics.
 * Every expectation is computed here from the definitions, not by the
 * planner's code. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/epx_test.h"

static epxt_rng_t rng;

static double uniform01(void)
{
    return (double)(epxt_next(&rng) >> 11) * 0x1.0p-53;
}

/* Zipf-like loads (random expert order) or small integers with ties and
 * zeros. */
static void gen_load(int zipf, int L, int E, double *load)
{
    for (int l = 0; l < L; l++)
        for (int e = 0; e < E; e++)
            load[(size_t)l * E + e] =
                zipf ? 1e4 * pow((double)epxt_below(&rng, (uint64_t)E) + 1, -0.9)
                     : (double)epxt_below(&rng, 6);
}

static epx_balance_params_t params(int L, int E, int S, int G, int D, int R,
                                   int policy)
{
    epx_balance_params_t p = EPX_BALANCE_PARAMS_INIT;
    p.num_layers = L;
    p.num_experts = E;
    p.num_slots = S;
    p.num_groups = G;
    p.num_domains = D;
    p.num_ranks = R;
    p.policy = (epx_balance_policy_t)policy;
    return p;
}

/* Rank loads of one layer by the definition: a slot carries load / count
 * of its expert; experts without a slot carry nothing. */
static void ref_rank_loads(const double *load, const int32_t *p2l, int E,
                           int S, int R, double *rl)
{
    int *cnt = calloc((size_t)E, sizeof(int));
    for (int s = 0; s < S; s++)
        cnt[p2l[s]]++;
    for (int r = 0; r < R; r++)
        rl[r] = 0;
    for (int s = 0; s < S; s++)
        rl[s / (S / R)] += load[p2l[s]] / cnt[p2l[s]];
    free(cnt);
}

static double ref_max(const double *load, const int32_t *p2l, int E, int S,
                      int R)
{
    double *rl = malloc((size_t)R * sizeof(double)), mx = 0;
    ref_rank_loads(load, p2l, E, S, R, rl);
    for (int r = 0; r < R; r++)
        mx = rl[r] > mx ? rl[r] : mx;
    free(rl);
    return mx;
}

/* ------------------------------------------------------------- shrink */

/* The shrink by hand: new slot j is slot j % spr of the (j / spr)-th live
 * rank (found by counting); an expert is lost when no old slot on a live
 * rank holds it (asked of the old placement, not of the new one). */
static void ref_shrink(const int32_t *p2l, const uint8_t *live, int L, int E,
                       int S, int R, int32_t *out, uint8_t *lost,
                       long long *nlost)
{
    int spr = S / R, nlive = 0;
    for (int r = 0; r < R; r++)
        nlive += live[r] != 0;
    *nlost = 0;
    for (int l = 0; l < L; l++) {
        for (int j = 0; j < nlive * spr; j++) {
            int k = j / spr, r = 0;
            for (;; r++)
                if (live[r] && k-- == 0)
                    break;
            out[(size_t)l * nlive * spr + j] = p2l[(size_t)l * S + r * spr + j % spr];
        }
        for (int e = 0; e < E; e++) {
            int kept = 0;
            for (int s = 0; s < S; s++)
                kept |= live[s / spr] && p2l[(size_t)l * S + s] == e;
            lost[(size_t)l * E + e] = !kept;
            *nlost += !kept;
        }
    }
}

static void shrink_random(void **state)
{
    (void)state;
    for (int iter = 0; iter < 300; iter++) {
        int L = 1 + (int)epxt_below(&rng, 3), E = 1 + (int)epxt_below(&rng, 40);
        int R = 1 + (int)epxt_below(&rng, 12), spr = 1 + (int)epxt_below(&rng, 6);
        int S = R * spr;
        int32_t *p2l = malloc((size_t)L * S * sizeof(int32_t));
        int32_t *got = malloc((size_t)L * S * sizeof(int32_t));
        int32_t *want = malloc((size_t)L * S * sizeof(int32_t));
        uint8_t *live = malloc((size_t)R), *lg = malloc((size_t)L * E);
        uint8_t *lw = malloc((size_t)L * E);
        for (int i = 0; i < L * S; i++)
            p2l[i] = (int32_t)epxt_below(&rng, (uint64_t)E);
        int nlive = 0;
        while (nlive == 0) {
            nlive = 0;
            for (int r = 0; r < R; r++)   /* any nonzero byte means alive */
                nlive += (live[r] = epxt_below(&rng, 3) ? (uint8_t)(1 + epxt_below(&rng, 200)) : 0) != 0;
        }
        long long nw;
        int64_t ng = -1;
        ref_shrink(p2l, live, L, E, S, R, want, lw, &nw);
        /* num_slots below num_experts is fine for a shrink. */
        epx_balance_params_t p = params(L, E, S, 1, 1, R, EPX_BALANCE_EPX);
        assert_int_equal(epx_balance_shrink(&p, p2l, live, got, lg, &ng), EPX_OK);
        assert_memory_equal(got, want, (size_t)L * nlive * spr * sizeof(int32_t));
        assert_memory_equal(lg, lw, (size_t)L * E);
        assert_int_equal(ng, nw);
        ng = -1;   /* lost may be NULL, the count still right */
        assert_int_equal(epx_balance_shrink(&p, p2l, live, got, NULL, &ng), EPX_OK);
        assert_int_equal(ng, nw);
        assert_int_equal(epx_balance_shrink(&p, p2l, live, got, NULL, NULL), EPX_OK);
        assert_memory_equal(got, want, (size_t)L * nlive * spr * sizeof(int32_t));
        free(p2l); free(got); free(want); free(live); free(lg); free(lw);
    }
}

/* 8 experts on 4 ranks x 3 slots.  Rank 3's experts (1, 2, 3) all have a
 * replica elsewhere; rank 1 holds the only replicas of 4 and 5; ranks 1
 * and 2 together the only ones of 4, 5, 6, 7. */
static void shrink_cases(void **state)
{
    (void)state;
    static const int32_t p2l[12] = { 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3 };
    epx_balance_params_t p = params(1, 8, 12, 1, 1, 4, EPX_BALANCE_EPX);
    int32_t out[12];
    uint8_t lost[8];
    int64_t n;
    {
        static const uint8_t live[4] = { 1, 1, 1, 0 };
        static const int32_t want[9] = { 0, 1, 2, 3, 4, 5, 6, 7, 0 };
        static const uint8_t none[8] = { 0 };
        assert_int_equal(epx_balance_shrink(&p, p2l, live, out, lost, &n), EPX_OK);
        assert_memory_equal(out, want, sizeof(want));
        assert_memory_equal(lost, none, sizeof(none));
        assert_int_equal(n, 0);
    }
    {
        static const uint8_t live[4] = { 1, 0, 1, 1 };
        static const int32_t want[9] = { 0, 1, 2, 6, 7, 0, 1, 2, 3 };
        static const uint8_t gone[8] = { 0, 0, 0, 0, 1, 1, 0, 0 };
        assert_int_equal(epx_balance_shrink(&p, p2l, live, out, lost, &n), EPX_OK);
        assert_memory_equal(out, want, sizeof(want));
        assert_memory_equal(lost, gone, sizeof(gone));
        assert_int_equal(n, 2);
    }
    {
        static const uint8_t live[4] = { 1, 0, 0, 1 };
        static const int32_t want[6] = { 0, 1, 2, 1, 2, 3 };
        static const uint8_t gone[8] = { 0, 0, 0, 0, 1, 1, 1, 1 };
        assert_int_equal(epx_balance_shrink(&p, p2l, live, out, lost, &n), EPX_OK);
        assert_memory_equal(out, want, sizeof(want));
        assert_memory_equal(lost, gone, sizeof(gone));
        assert_int_equal(n, 4);
    }
    {   /* nothing lost: the identity */
        static const uint8_t live[4] = { 1, 1, 1, 1 };
        assert_int_equal(epx_balance_shrink(&p, p2l, live, out, lost, &n), EPX_OK);
        assert_memory_equal(out, p2l, sizeof(p2l));
        assert_int_equal(n, 0);
    }
}

/* A planned placement (epx policy: replicas on distinct ranks) with a
 * spare slot for every expert: losing one rank loses nothing; losing a
 * rank whose experts have one replica loses exactly those. */
static void shrink_planned(void **state)
{
    (void)state;
    enum { L = 2, E = 32, R = 16, S = 64 };
    double load[L * E];
    int32_t p2l[L * S], out[L * S], cnt[L * E];
    uint8_t live[R], lost[L * E];
    int64_t n;
    for (int e = 0; e < L * E; e++)   /* even loads: two replicas each */
        load[e] = 100 + (e * 37) % 11;
    epx_balance_params_t p = params(L, E, S, 1, 1, R, EPX_BALANCE_EPX);
    assert_int_equal(epx_balance_plan(&p, load, p2l, NULL, 0, cnt), EPX_OK);
    for (int e = 0; e < L * E; e++)
        assert_int_equal(cnt[e], 2);
    for (int dead = 0; dead < R; dead++) {
        memset(live, 1, sizeof(live));
        live[dead] = 0;
        assert_int_equal(epx_balance_shrink(&p, p2l, live, out, lost, &n), EPX_OK);
        assert_int_equal(n, 0);
    }
    /* Now make rank 5's experts single: plan where they are the only
     * experts with load and there is no spare slot for them. */
    int32_t single[S];
    for (int s = 0; s < S; s++)   /* expert s / 2 on slots 2k, 2k + 1 */
        single[s] = s / 2;
    memset(live, 1, sizeof(live));
    live[5] = 0;                  /* slots 20..23: experts 10 and 11 */
    epx_balance_params_t q = params(1, E, S, 1, 1, R, EPX_BALANCE_EPX);
    assert_int_equal(epx_balance_shrink(&q, single, live, out, lost, &n), EPX_OK);
    assert_int_equal(n, 2);
    for (int e = 0; e < E; e++)
        assert_int_equal(lost[e], e == 10 || e == 11);
}

static void shrink_errors(void **state)
{
    (void)state;
    static const int32_t p2l[8] = { 0, 1, 2, 3, 0, 1, 2, 3 };
    static const uint8_t live[4] = { 1, 1, 0, 1 }, dead[4] = { 0 };
    int32_t out[8];
    uint8_t lost[4];
    int64_t n = 77;
    epx_balance_params_t p = params(1, 4, 8, 1, 1, 4, EPX_BALANCE_EPX), q;
    struct { const char *what; int which; } cases[] = {
        { "no live rank", 0 }, { "not a multiple", 1 }, { "is not an expert", 2 },
        { "live is NULL", 3 }, { "version", 4 }, { "num_ranks (0)", 5 },
        { "EPX_BALANCE_PARAMS_INIT", 6 },
    };
    int32_t bad[8];
    memcpy(bad, p2l, sizeof(bad));
    bad[6] = 4;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const int32_t *pp = p2l;
        const uint8_t *lv = live;
        q = p;
        switch (cases[i].which) {
        case 0: lv = dead; break;
        case 1: q.num_slots = 9; break;
        case 2: pp = bad; break;
        case 3: lv = NULL; break;
        case 4: q.version = 99; break;
        case 5: q.num_ranks = 0; break;
        case 6: q.struct_size = 8; break;
        }
        for (int k = 0; k < 8; k++)
            out[k] = 7777;
        memset(lost, 9, sizeof(lost));
        epx_status_t st = epx_balance_shrink(&q, pp, lv, out, lost, &n);
        if (st != EPX_ERR_INVALID || !strstr(epx_last_error(), cases[i].what))
            fail_msg("case '%s': got %s (%s)", cases[i].what,
                     epx_status_str(st), epx_last_error());
        for (int k = 0; k < 8; k++)
            assert_int_equal(out[k], 7777);
        for (int k = 0; k < 4; k++)
            assert_int_equal(lost[k], 9);
        assert_int_equal(n, 77);
    }
    assert_int_equal(epx_balance_shrink(NULL, p2l, live, out, lost, &n),
                     EPX_ERR_INVALID);
}

/* ------------------------------------------------- planning with lost */

typedef struct shape {
    const char *name;
    int L, E, S, G, D, R;
} shape_t;

/* Hierarchical and global, slots below the experts (only the available
 * ones must fit), one rank, the production-sized case. */
static const shape_t shapes[] = {
    { "hier-16e-6r", 3, 16, 24, 4, 2, 6 },
    { "hier-32e-8r-no-spare", 2, 32, 32, 4, 2, 8 },
    { "global-groups-12e", 2, 12, 20, 3, 2, 4 },
    { "one-domain-64e-14r", 2, 64, 70, 8, 1, 14 },
    { "slots-below-experts", 2, 24, 20, 4, 2, 4 },
    { "one-rank", 2, 8, 6, 2, 1, 1 },
    { "256e-71r", 1, 256, 284, 8, 1, 71 },
};
#define NSHAPES (sizeof(shapes) / sizeof(shapes[0]))

/* Random lost marks, leaving 1..S available experts.  mode 0: anywhere;
 * 1: the same number in every group (groups kept). */
static void gen_lost(const shape_t *sh, int mode, uint8_t *lost)
{
    int gs = sh->E / sh->G;
    for (int l = 0; l < sh->L; l++) {
        uint8_t *x = lost + (size_t)l * sh->E;
        for (;;) {
            int n = 0;
            if (mode == 0) {
                int pct = (int)epxt_below(&rng, 50);
                for (int e = 0; e < sh->E; e++)
                    x[e] = (int)epxt_below(&rng, 100) < pct;
            } else {
                int k = (int)epxt_below(&rng, (uint64_t)gs);   /* lost per group */
                memset(x, 0, (size_t)sh->E);
                for (int g = 0; g < sh->G; g++)
                    for (int i = 0; i < k;) {
                        int e = g * gs + (int)epxt_below(&rng, (uint64_t)gs);
                        if (!x[e]) {
                            x[e] = 1;
                            i++;
                        }
                    }
            }
            for (int e = 0; e < sh->E; e++)
                n += !x[e];
            if (n >= 1 && n <= sh->S)
                break;
        }
    }
}

/* The compact problem of layer l by hand: the available experts in order,
 * num_groups kept when every group keeps as many, else 1; planned alone
 * and mapped back. */
static void plan_compact(const shape_t *sh, int policy, const double *load,
                         const uint8_t *lost, int l, const int32_t *current,
                         int32_t *out)
{
    int E = sh->E, gs = sh->E / sh->G, n = 0, G = sh->G;
    int32_t *c2e = malloc((size_t)E * sizeof(int32_t));
    int32_t *e2c = malloc((size_t)E * sizeof(int32_t));
    double *w = malloc((size_t)E * sizeof(double));
    int32_t *cur = malloc((size_t)sh->S * sizeof(int32_t));
    for (int e = 0; e < E; e++) {
        e2c[e] = -1;
        if (!lost[(size_t)l * E + e]) {
            e2c[e] = n;
            c2e[n] = e;
            w[n++] = load[(size_t)l * E + e];
        }
    }
    for (int g = 1; g < sh->G; g++) {
        int a = 0, b = 0;
        for (int j = 0; j < gs; j++) {
            a += !lost[(size_t)l * E + j];
            b += !lost[(size_t)l * E + g * gs + j];
        }
        if (a != b)
            G = 1;
    }
    epx_balance_params_t p = params(1, n, sh->S, G, sh->D, sh->R, policy);
    if (current) {
        for (int s = 0; s < sh->S; s++)
            cur[s] = e2c[current[(size_t)l * sh->S + s]];
        p.current_phy2log = cur;
    }
    assert_int_equal(epx_balance_plan(&p, w, out, NULL, 0, NULL), EPX_OK);
    for (int s = 0; s < sh->S; s++)
        out[s] = c2e[out[s]];
    free(c2e); free(e2c); free(w); free(cur);
}

/* No lost expert placed, every available one at least once, logcnt and
 * log2phy agree with phy2log. */
static void check_lost_plan(const shape_t *sh, const uint8_t *lost,
                            const int32_t *p2l, const int32_t *l2p, int maxrep,
                            const int32_t *cnt)
{
    for (int l = 0; l < sh->L; l++) {
        const int32_t *P = p2l + (size_t)l * sh->S;
        int *seen = calloc((size_t)sh->E, sizeof(int));
        for (int s = 0; s < sh->S; s++) {
            assert_in_range(P[s], 0, sh->E - 1);
            seen[P[s]]++;
        }
        for (int e = 0; e < sh->E; e++) {
            size_t i = (size_t)l * sh->E + e;
            if (lost[i]) {
                if (seen[e])
                    fail_msg("%s layer %d: lost expert %d has %d slots",
                             sh->name, l, e, seen[e]);
            } else {
                assert_true(seen[e] >= 1);
            }
            assert_int_equal(cnt[i], seen[e]);
            for (int k = 0; k < maxrep; k++) {
                int32_t s = l2p[i * maxrep + k];
                if (k < seen[e])
                    assert_int_equal(P[s], e);
                else
                    assert_int_equal(s, -1);
            }
        }
        free(seen);
    }
}

static void plan_with_lost(void **state)
{
    (void)state;
    double gain = 0;
    int ngain = 0;
    for (size_t k = 0; k < NSHAPES; k++) {
        const shape_t *sh = &shapes[k];
        int reps = sh->E > 100 ? 1 : 6, maxrep = sh->S;
        size_t LS = (size_t)sh->L * sh->S, LE = (size_t)sh->L * sh->E;
        double *load = malloc(LE * sizeof(double));
        uint8_t *lost = malloc(LE);
        int32_t *p2l[2], *l2p = malloc(LE * maxrep * sizeof(int32_t));
        int32_t *cnt = malloc(LE * sizeof(int32_t));
        int32_t *ref = malloc((size_t)sh->S * sizeof(int32_t));
        p2l[0] = malloc(LS * sizeof(int32_t));
        p2l[1] = malloc(LS * sizeof(int32_t));
        for (int rep = 0; rep < reps; rep++) {
            gen_load(rep % 3 != 2, sh->L, sh->E, load);
            gen_lost(sh, rep % 2, lost);
            for (int pol = 0; pol < 2; pol++) {
                epx_balance_params_t p = params(sh->L, sh->E, sh->S, sh->G,
                                                sh->D, sh->R, pol);
                p.lost = lost;
                epx_status_t st = epx_balance_plan(&p, load, p2l[pol], l2p,
                                                   maxrep, cnt);
                if (st != EPX_OK)
                    fail_msg("%s: %s", sh->name, epx_last_error());
                check_lost_plan(sh, lost, p2l[pol], l2p, maxrep, cnt);
                /* The same as planning the compact layers one by one. */
                for (int l = 0; l < sh->L; l++) {
                    plan_compact(sh, pol, load, lost, l, NULL, ref);
                    assert_memory_equal(p2l[pol] + (size_t)l * sh->S, ref,
                                        (size_t)sh->S * sizeof(int32_t));
                }
            }
            /* The epx policy never above DeepSeek's, layer by layer. */
            for (int l = 0; l < sh->L; l++) {
                const double *ld = load + (size_t)l * sh->E;
                double ds = ref_max(ld, p2l[0] + (size_t)l * sh->S, sh->E, sh->S, sh->R);
                double ep = ref_max(ld, p2l[1] + (size_t)l * sh->S, sh->E, sh->S, sh->R);
                if (ep > ds * (1 + 1e-12))
                    fail_msg("%s layer %d: epx %.6f above deepseek %.6f",
                             sh->name, l, ep, ds);
                if (ds > 0) {
                    gain += 1 - ep / ds;
                    ngain++;
                }
            }
        }
        free(load); free(lost); free(p2l[0]); free(p2l[1]); free(l2p);
        free(cnt); free(ref);
    }
    printf("# with lost experts: epx max rank load %.2f %% below deepseek's "
           "on average (%d layers)\n", 100 * gain / ngain, ngain);
}

/* lost all zero plans exactly as without lost; a version 2 caller's struct
 * has no lost field and is not read past its end. */
static void lost_none_and_versions(void **state)
{
    (void)state;
    const shape_t sh = { "hier", 3, 16, 24, 4, 2, 6 };
    double load[48];
    uint8_t none[48] = { 0 }, all[48];
    int32_t a[72], b[72];
    gen_load(1, 3, 16, load);
    memset(all, 1, sizeof(all));
    for (int pol = 0; pol < 2; pol++) {
        epx_balance_params_t p = params(3, 16, 24, 4, 2, 6, pol);
        assert_int_equal(epx_balance_plan(&p, load, a, NULL, 0, NULL), EPX_OK);
        p.lost = none;
        assert_int_equal(epx_balance_plan(&p, load, b, NULL, 0, NULL), EPX_OK);
        assert_memory_equal(a, b, sizeof(a));
        /* Version 2: lost not read (all-lost would be refused). */
        p.lost = all;
        p.version = 2;
        p.struct_size = offsetof(epx_balance_params_t, lost);
        assert_int_equal(epx_balance_plan(&p, load, b, NULL, 0, NULL), EPX_OK);
        assert_memory_equal(a, b, sizeof(a));
        /* Version 3 struct but version 2 declared: not read either. */
        p.struct_size = sizeof(p);
        assert_int_equal(epx_balance_plan(&p, load, b, NULL, 0, NULL), EPX_OK);
        assert_memory_equal(a, b, sizeof(a));
    }
    (void)sh;
}

static void expect_error(epx_status_t st, const char *word)
{
    if (st != EPX_ERR_INVALID || !strstr(epx_last_error(), word))
        fail_msg("got %s (%s), want EPX_ERR_INVALID mentioning '%s'",
                 epx_status_str(st), epx_last_error(), word);
}

static void lost_errors(void **state)
{
    (void)state;
    double load[16];
    int32_t p2l[12], cur[12], keep[12];
    uint8_t lost[16] = { 0 };
    for (int e = 0; e < 16; e++)
        load[e] = 1 + e;
    /* 16 experts, 12 slots: refused without lost, fine with 4 lost. */
    epx_balance_params_t p = params(1, 16, 12, 1, 1, 4, EPX_BALANCE_EPX);
    expect_error(epx_balance_plan(&p, load, p2l, NULL, 0, NULL), "num_slots 12 < num_experts 16");
    p.lost = lost;
    expect_error(epx_balance_plan(&p, load, p2l, NULL, 0, NULL), "16 available");
    lost[0] = lost[5] = lost[9] = 1;
    expect_error(epx_balance_plan(&p, load, p2l, NULL, 0, NULL), "13 available experts (3 of 16 lost)");
    lost[15] = 1;
    assert_int_equal(epx_balance_plan(&p, load, cur, NULL, 0, NULL), EPX_OK);
    memset(lost, 1, sizeof(lost));
    expect_error(epx_balance_plan(&p, load, p2l, NULL, 0, NULL), "all 16 experts lost");
    memset(lost, 0, sizeof(lost));
    lost[0] = lost[5] = lost[9] = lost[15] = 1;
    /* current_phy2log placing a lost expert. */
    memcpy(keep, cur, sizeof(keep));
    keep[3] = 5;
    p.current_phy2log = keep;
    expect_error(epx_balance_plan(&p, load, p2l, NULL, 0, NULL), "lost marks as lost");
    /* Budget: current must hold every available expert. */
    memcpy(keep, cur, sizeof(keep));
    int victim = keep[0];
    keep[0] = keep[11];   /* 12 available experts, 12 slots: one each */
    int still = 0;
    for (int s = 0; s < 12; s++)
        still |= keep[s] == victim;
    assert_false(still);
    p.max_moves = 4;
    char want[64];
    snprintf(want, sizeof(want), "no slot for expert %d (not marked lost)", victim);
    expect_error(epx_balance_plan(&p, load, p2l, NULL, 0, NULL), want);
    lost[victim] = 1;   /* marked lost now: fine, and it stays out */
    assert_int_equal(epx_balance_plan(&p, load, p2l, NULL, 0, NULL), EPX_OK);
    for (int s = 0; s < 12; s++)
        assert_false(lost[p2l[s]]);
}

/* From a plan on R ranks, ranks die; re-plan the shrunk placement within a
 * budget: no lost expert placed, every available one kept, at most the
 * budget of slots changed, no layer worse than the shrunk placement; and
 * the unbudgeted keep-in-place plan from it. */
static void replan_after_shrink(void **state)
{
    (void)state;
    static const struct { int L, E, G, D, R, spr, Dn; } cases[] = {
        { 3, 16, 4, 2, 8, 2, 2 },     /* one rank lost per domain */
        { 2, 32, 1, 1, 8, 5, 1 },
        { 2, 64, 8, 1, 16, 5, 1 },
        { 2, 12, 1, 1, 4, 3, 1 },
    };
    long long moved_total = 0;
    int planned = 0, skipped = 0;
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++)
        for (int rep = 0; rep < 8; rep++) {
            int L = cases[c].L, E = cases[c].E, R = cases[c].R, spr = cases[c].spr;
            int S = R * spr;
            size_t LE = (size_t)L * E;
            double *load = malloc(LE * sizeof(double));
            int32_t *p2l = malloc((size_t)L * S * sizeof(int32_t));
            int32_t *shr = malloc((size_t)L * S * sizeof(int32_t));
            int32_t *out = malloc((size_t)L * S * sizeof(int32_t));
            int32_t *cnt = malloc(LE * sizeof(int32_t));
            uint8_t *lost = malloc(LE), live[16];
            gen_load(1, L, E, load);
            epx_balance_params_t p = params(L, E, S, cases[c].G, cases[c].D, R,
                                            EPX_BALANCE_EPX);
            assert_int_equal(epx_balance_plan(&p, load, p2l, NULL, 0, NULL), EPX_OK);
            /* Lose ranks: one per domain (or 1-3 anywhere). */
            int Dn = cases[c].Dn, nlive = R;
            memset(live, 1, sizeof(live));
            if (Dn > 1) {
                for (int d = 0; d < Dn; d++)
                    live[d * (R / Dn) + (int)epxt_below(&rng, (uint64_t)(R / Dn))] = 0;
                nlive = R - Dn;
            } else {
                int k = 1 + (int)epxt_below(&rng, 3);
                while (nlive > R - k) {
                    int r = (int)epxt_below(&rng, (uint64_t)R);
                    nlive -= live[r];
                    live[r] = 0;
                }
            }
            int64_t nl;
            assert_int_equal(epx_balance_shrink(&p, p2l, live, shr, lost, &nl), EPX_OK);
            int Sn = nlive * spr, avail_ok = 1;
            for (int l = 0; l < L; l++) {
                int n = 0;
                for (int e = 0; e < E; e++)
                    n += !lost[(size_t)l * E + e];
                avail_ok &= n <= Sn;
            }
            if (!avail_ok) {   /* more experts left than live slots */
                skipped++;
                goto next;
            }
            planned++;
            /* Loads drift before the re-plan. */
            for (size_t i = 0; i < LE; i++)
                load[i] *= 0.7 + 0.6 * uniform01();
            epx_balance_params_t q = params(L, E, Sn, cases[c].G, Dn, nlive,
                                            EPX_BALANCE_EPX);
            epx_balance_report_t rp;
            q.lost = lost;
            q.current_phy2log = shr;
            q.max_moves = (int64_t)epxt_below(&rng, 12);
            q.report = &rp;
            epx_status_t st = epx_balance_plan(&q, load, out, NULL, 0, cnt);
            if (st != EPX_OK)
                fail_msg("case %zu: %s", c, epx_last_error());
            long long moves = 0;
            double before = 0, after = 0;
            for (int l = 0; l < L; l++) {
                const int32_t *o = out + (size_t)l * Sn, *s0 = shr + (size_t)l * Sn;
                const double *ld = load + (size_t)l * E;
                for (int s = 0; s < Sn; s++) {
                    moves += o[s] != s0[s];
                    assert_false(lost[(size_t)l * E + o[s]]);
                }
                for (int e = 0; e < E; e++)
                    assert_int_equal(cnt[(size_t)l * E + e] == 0,
                                     lost[(size_t)l * E + e] != 0);
                double m0 = ref_max(ld, s0, E, Sn, nlive), m1 = ref_max(ld, o, E, Sn, nlive);
                if (m1 > m0 * (1 + 1e-12))
                    fail_msg("case %zu layer %d: %.6f above the shrunk %.6f", c,
                             l, m1, m0);
                before += m0;
                after += m1;
            }
            assert_true(moves <= q.max_moves);
            assert_int_equal(rp.moves, moves);
            assert_true(fabs(rp.max_before - before) <= 1e-9 * before);
            assert_true(fabs(rp.max_after - after) <= 1e-9 * before);
            moved_total += moves;
            /* Unbudgeted: from scratch, kept in place against the shrunk one. */
            q.max_moves = -1;
            assert_int_equal(epx_balance_plan(&q, load, out, NULL, 0, cnt), EPX_OK);
            for (int l = 0; l < L; l++)
                for (int s = 0; s < Sn; s++)
                    assert_false(lost[(size_t)l * E + out[(size_t)l * Sn + s]]);
            for (int l = 0; l < L; l++) {
                shape_t sh = { "kept", L, E, Sn, cases[c].G, Dn, nlive };
                int32_t *ref = malloc((size_t)Sn * sizeof(int32_t));
                plan_compact(&sh, EPX_BALANCE_EPX, load, lost, l, shr, ref);
                assert_memory_equal(out + (size_t)l * Sn, ref, (size_t)Sn * sizeof(int32_t));
                free(ref);
            }
        next:
            free(load); free(p2l); free(shr); free(out); free(cnt); free(lost);
        }
    printf("# %d shrunk placements re-planned (%d with more experts left "
           "than slots skipped), %lld slots moved\n", planned, skipped,
           moved_total);
    assert_true(moved_total > 0 && planned >= 16);
}

/* Metrics with lost experts against the definitions computed here. */
static void metrics_with_lost(void **state)
{
    (void)state;
    for (int iter = 0; iter < 100; iter++) {
        int L = 1 + (int)epxt_below(&rng, 3), E = 2 + (int)epxt_below(&rng, 20);
        int R = 1 + (int)epxt_below(&rng, 6), spr = 1 + (int)epxt_below(&rng, 4);
        int S = R * spr;
        double *load = malloc((size_t)L * E * sizeof(double));
        int32_t *p2l = malloc((size_t)L * S * sizeof(int32_t));
        uint8_t *lost = malloc((size_t)L * E);
        double *lb = malloc((size_t)L * sizeof(double)), *li = malloc((size_t)L * sizeof(double));
        double *rl = malloc((size_t)R * sizeof(double));
        gen_load(iter % 2, L, E, load);
        for (int i = 0; i < L * S; i++)
            p2l[i] = (int32_t)epxt_below(&rng, (uint64_t)E);
        for (int l = 0; l < L; l++)   /* lost = what the placement leaves out */
            for (int e = 0; e < E; e++) {
                int in = 0;
                for (int s = 0; s < S; s++)
                    in |= p2l[(size_t)l * S + s] == e;
                lost[(size_t)l * E + e] = !in;
            }
        for (int contiguous = 0; contiguous < 2; contiguous++) {
            double smean = 0, smax = 0;
            for (int l = 0; l < L; l++) {
                const double *ld = load + (size_t)l * E;
                if (contiguous) {
                    for (int r = 0; r < R; r++)
                        rl[r] = 0;
                    for (int e = 0; e < E; e++)   /* rank of e: the block rule */
                        if (!lost[(size_t)l * E + e]) {
                            int r = 0;
                            while ((long)(r + 1) * E / R <= e)
                                r++;
                            rl[r] += ld[e];
                        }
                } else {
                    ref_rank_loads(ld, p2l + (size_t)l * S, E, S, R, rl);
                }
                double sum = 0, mx = 0, served = 0;
                for (int r = 0; r < R; r++) {
                    sum += rl[r];
                    mx = rl[r] > mx ? rl[r] : mx;
                }
                for (int e = 0; e < E; e++)
                    served += lost[(size_t)l * E + e] ? 0 : ld[e];
                assert_true(fabs(sum - served) <= 1e-9 * (served + 1));
                smean += sum / R;
                smax += mx;
                lb[l] = mx > 0 ? sum / R / mx : 1;
                li[l] = sum > 0 ? (mx - sum / R) / (sum / R) : 0;
            }
            epx_balance_params_t p = params(L, E, S, 1, 1, R, EPX_BALANCE_EPX);
            p.lost = lost;
            double b, im, gb[3], gi[3];
            assert_int_equal(epx_balance_metrics(&p, load, contiguous ? NULL : p2l,
                                                 &b, &im, gb, gi), EPX_OK);
            assert_true(fabs(b - (smax > 0 ? smean / smax : 1)) < 1e-12);
            assert_true(fabs(im - (smean > 0 ? (smax - smean) / smean : 0)) < 1e-9);
            for (int l = 0; l < L; l++) {
                assert_true(fabs(gb[l] - lb[l]) < 1e-12);
                assert_true(fabs(gi[l] - li[l]) < 1e-9);
            }
        }
        /* Without lost: refused when a loaded expert is left out. */
        int missing = -1;
        for (int i = 0; i < L * E && missing < 0; i++)
            if (lost[i] && load[i] > 0)
                missing = i;
        epx_balance_params_t p = params(L, E, S, 1, 1, R, EPX_BALANCE_EPX);
        if (missing >= 0 && S >= E) {
            expect_error(epx_balance_metrics(&p, load, p2l, NULL, NULL, NULL, NULL),
                         "but no slot");
            /* With lost marking every left-out expert but that one. */
            p.lost = lost;
            lost[missing] = 0;
            expect_error(epx_balance_metrics(&p, load, p2l, NULL, NULL, NULL, NULL),
                         "not marked lost");
            lost[missing] = 1;
        }
        /* A lost expert that has a slot is refused. */
        p.lost = lost;
        lost[p2l[0]] = 1;
        expect_error(epx_balance_metrics(&p, load, p2l, NULL, NULL, NULL, NULL),
                     "lost marks it as lost");
        free(load); free(p2l); free(lost); free(lb); free(li); free(rl);
    }
}

int main(void)
{
    epxt_init("test_elastic");
    rng.state = epxt_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(shrink_random),
        cmocka_unit_test(shrink_cases),
        cmocka_unit_test(shrink_planned),
        cmocka_unit_test(shrink_errors),
        cmocka_unit_test(plan_with_lost),
        cmocka_unit_test(lost_none_and_versions),
        cmocka_unit_test(lost_errors),
        cmocka_unit_test(replan_after_shrink),
        cmocka_unit_test(metrics_with_lost),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
