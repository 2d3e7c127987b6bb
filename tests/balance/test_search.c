/* balance: the budgeted step search's cuts (src/balance/search.c).
 * With a placement in use, epx__bal_ls_find skips steps whose gain per
 * slot cannot beat the best found so far; these cuts must never change
 * the step found.  On random layers (Zipf loads, small integers with ties
 * and zeros; distinct replicas or not; with domains) the search with cuts
 * and the one that evaluates every step (nocut) must return the same
 * step, bit for bit, along whole re-planning trajectories with random
 * budgets. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <cmocka.h>

#include "common/epx_test.h"
#include "balance/balance.h"

typedef struct lshape {
    int E, R, spr, D;
} lshape_t;

/* Production (256 experts, 72 ranks x 4), few slots per rank, domains,
 * more slots per rank than experts (no distinct rule), one rank. */
static const lshape_t lshapes[] = {
    { 256, 72, 4, 1 }, { 256, 72, 4, 4 }, { 64, 16, 5, 1 }, { 64, 32, 10, 2 },
    { 16, 8, 3, 2 }, { 12, 4, 5, 2 }, { 6, 4, 8, 1 }, { 8, 1, 12, 1 },
};

static double uniform01(epxt_rng_t *r)
{
    return (double)(epxt_next(r) >> 11) * 0x1.0p-53;
}

static void gen_w(epxt_rng_t *rng, int kind, int E, double *w)
{
    double s = 0.4 + uniform01(rng);
    for (int e = 0; e < E; e++) {
        if (kind == 0)
            w[e] = 1e4 * pow(e + 1.0, -s) * (0.9 + 0.2 * uniform01(rng));
        else if (kind == 1)
            w[e] = round(1e4 * pow(e + 1.0, -s));
        else
            w[e] = (double)epxt_below(rng, 6);
    }
    for (int e = E - 1; e > 0; e--) {   /* hot experts anywhere */
        int j = (int)epxt_below(rng, (uint64_t)e + 1);
        double t = w[e];
        w[e] = w[j];
        w[j] = t;
    }
}

/* A placement in use: the planner's own for other loads (either policy:
 * DeepSeek's may put two replicas of an expert on a rank), or a random one
 * (every expert once, the spare slots to random experts of the domain). */
static void gen_place(epxt_rng_t *rng, const lshape_t *sh, int how, double *w,
                      int32_t *slot)
{
    int S = sh->R * sh->spr, spd = S / sh->D, epd = sh->E / sh->D;
    if (how < 2) {
        epx_balance_params_t p = EPX_BALANCE_PARAMS_INIT;
        p.num_layers = 1;
        p.num_experts = sh->E;
        p.num_slots = S;
        p.num_ranks = sh->R;
        p.num_groups = sh->D;
        p.num_domains = sh->D;
        p.policy = how ? EPX_BALANCE_EPX : EPX_BALANCE_DEEPSEEK;
        assert_int_equal(epx_balance_plan(&p, w, slot, NULL, 0, NULL), EPX_OK);
        return;
    }
    for (int d = 0; d < sh->D; d++) {
        int32_t *p = slot + (size_t)d * spd;
        for (int i = 0; i < spd; i++)
            p[i] = d * epd + (i < epd ? i : (int)epxt_below(rng, (uint64_t)epd));
        for (int i = spd - 1; i > 0; i--) {
            int j = (int)epxt_below(rng, (uint64_t)i + 1);
            int32_t t = p[i];
            p[i] = p[j];
            p[j] = t;
        }
    }
}

static void same_step(const bal_step_t *a, const bal_step_t *b, const char *what,
                      int step)
{
    if (a->kind != b->kind || a->s1 != b->s1 || a->cost != b->cost ||
        (a->kind == 1 ? a->s2 != b->s2 : a->b != b->b) ||
        memcmp(&a->gain, &b->gain, sizeof(double)) ||
        memcmp(&a->val, &b->val, sizeof(double)))
        fail_msg("%s, step %d: with cuts kind %d s1 %d s2 %d b %d cost %d "
                 "val %.17g; every step evaluated: kind %d s1 %d s2 %d b %d "
                 "cost %d val %.17g", what, step, a->kind, a->s1, a->s2, a->b,
                 a->cost, a->val, b->kind, b->s1, b->s2, b->b, b->cost, b->val);
}

static void cuts_change_nothing(void **state)
{
    (void)state;
    epxt_rng_t rng = { epxt_hash_str(epxt_seed(), "cuts_change_nothing") };
    long steps = 0;
    for (size_t i = 0; i < sizeof(lshapes) / sizeof(lshapes[0]); i++) {
        const lshape_t *sh = &lshapes[i];
        int S = sh->R * sh->spr;
        double *w = malloc((size_t)sh->E * sizeof(double));
        int32_t *orig = malloc((size_t)S * sizeof(int32_t));
        bal_ls_t ls;
        assert_int_equal(epx__bal_ls_alloc(&ls, sh->E, sh->R, S, sh->D), EPX_OK);
        for (int trial = 0; trial < 30; trial++) {
            char what[96];
            int kind = trial % 3;
            snprintf(what, sizeof(what), "E %d R %d spr %d D %d, loads %d, trial %d",
                     sh->E, sh->R, sh->spr, sh->D, kind, trial);
            gen_w(&rng, kind, sh->E, w);
            gen_place(&rng, sh, trial % 3 == 0 ? 2 : trial % 2, w, orig);
            gen_w(&rng, kind, sh->E, w);   /* the loads drifted */
            ls.E = sh->E;
            ls.w = w;
            ls.spr = sh->spr;
            ls.rpd = sh->R / sh->D;
            ls.distinct = sh->spr <= sh->E;
            epx__bal_ls_load(&ls, orig, orig);
            /* Budgets: plenty, tight, and random small ones. */
            int cap = trial % 4 == 0 ? 3 * S : (int)epxt_below(&rng, 40);
            for (int k = 0; k < 600; k++) {
                bal_step_t a, b;
                int budget = trial % 2 ? cap : (int)epxt_below(&rng, (uint64_t)cap + 1);
                ls.nocut = 0;
                int fa = epx__bal_ls_find(&ls, budget, &a);
                ls.nocut = 1;
                int fb = epx__bal_ls_find(&ls, budget, &b);
                if (fa != fb)
                    fail_msg("%s, step %d: a step found %d with cuts, %d without",
                             what, k, fa, fb);
                if (!fa)
                    break;
                same_step(&a, &b, what, k);
                int changed = ls.changed;
                epx__bal_ls_apply(&ls, &a);
                assert_int_equal(ls.changed, changed + a.cost);
                cap -= a.cost;
                steps++;
            }
            /* The loads kept along the way are the loads recomputed. */
            epx__bal_ls_load(&ls, ls.slot, orig);
        }
        epx__bal_ls_free(&ls);
        free(w);
        free(orig);
    }
    print_message("steps compared: %ld\n", steps);
    assert_true(steps > 1000);
}

int main(void)
{
    epxt_init("test_search");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(cuts_change_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
