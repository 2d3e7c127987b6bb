/* balance: the budgeted step search's cuts (src/balance/search.c).
 * With a placement in use, epx__bal_ls_find skips steps whose gain per
 * slot cannot beat the best found so far; these cuts must never change
 * the step found.  On random layers (Zipf loads, small integers with ties
 * and zeros; distinct replicas or not; with domains) the search with cuts
 * and the one that evaluates every step (nocut) must return the same
 * step, bit for bit, along whole re-planning trajectories with random
 * budgets.  The budgeted plan of fixed inputs is pinned by its hash, with
 * one thread and two. */
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

/* ---- the budgeted plan, pinned.  The hashes below are those of the
 * plans made before the cuts were tightened (the search that evaluated
 * most steps), for inputs that any build computes alike: loads from
 * divisions only, a random placement in use (every expert once, the
 * spare slots at random), 8 layers of 256 experts on 72 ranks x 4 slots,
 * one domain and four.  One thread and two must give them too. */
/* Pinned inputs: no libm, no epxt seed, so that any build computes the
 * same loads and placement. */
static uint64_t pin_next(uint64_t *s)
{
    uint64_t x = *s += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static void pin_inputs(uint64_t seed, int L, int E, int S, double *w,
                       int32_t *cur)
{
    uint64_t st = seed;
    int32_t *perm = malloc((size_t)E * sizeof(int32_t));
    for (int l = 0; l < L; l++) {
        for (int e = 0; e < E; e++)
            perm[e] = e;
        for (int e = E - 1; e > 0; e--) {
            int j = (int)(pin_next(&st) % (uint64_t)(e + 1));
            int32_t t = perm[e];
            perm[e] = perm[j];
            perm[j] = t;
        }
        for (int e = 0; e < E; e++) {
            double u = (double)(pin_next(&st) >> 11) * 0x1.0p-53;
            w[(size_t)l * E + e] = 1e4 / (perm[e] + 1) * (0.9 + 0.2 * u);
        }
        int32_t *p = cur + (size_t)l * S;
        for (int s = 0; s < S; s++)
            p[s] = s < E ? s : (int32_t)(pin_next(&st) % (uint64_t)E);
        for (int s = S - 1; s > 0; s--) {
            int j = (int)(pin_next(&st) % (uint64_t)(s + 1));
            int32_t t = p[s];
            p[s] = p[j];
            p[j] = t;
        }
    }
    free(perm);
}

static uint64_t pin_hash(uint64_t h, const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++) {
        h ^= c[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* The budgeted plan of the pinned inputs: a hash of phy2log, moves and
 * the sum of maximum rank loads after. */
static uint64_t pin_plan(int D, int64_t moves, int threads, int *ok)
{
    enum { L = 8, E = 256, S = 288, R = 72 };
    double *w = malloc((size_t)L * E * sizeof(double));
    int32_t *cur = malloc((size_t)L * S * sizeof(int32_t));
    int32_t *out = malloc((size_t)L * S * sizeof(int32_t));
    pin_inputs(0x5eed0000u + (uint64_t)D, L, E, S, w, cur);
    epx_balance_params_t p = EPX_BALANCE_PARAMS_INIT;
    epx_balance_report_t rep;
    p.num_layers = L;
    p.num_experts = E;
    p.num_slots = S;
    p.num_ranks = R;
    p.num_groups = 8;
    p.num_domains = D;
    p.policy = EPX_BALANCE_EPX;
    p.current_phy2log = cur;
    p.max_moves = moves;
    p.report = &rep;
    p.num_threads = threads;
    *ok = epx_balance_plan(&p, w, out, NULL, 0, NULL) == EPX_OK;
    uint64_t h = pin_hash(0xcbf29ce484222325ull, out, (size_t)L * S * sizeof(int32_t));
    h = pin_hash(h, &rep.moves, sizeof(rep.moves));
    h = pin_hash(h, &rep.max_after, sizeof(rep.max_after));
    free(w);
    free(cur);
    free(out);
    return h;
}

static void budgeted_plan_pinned(void **state)
{
    (void)state;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    skip();   /* the hashes read the plans' bytes little-endian */
#endif
    static const struct {
        int D;
        int64_t moves;
        uint64_t hash;
    } pins[] = {
        { 1, 16, 0xfdd0d911f54ada8dull },   { 1, 256, 0x455584053b71a861ull },
        { 1, 1024, 0x3c709e7ad8ba1537ull }, { 4, 16, 0xbe5b2e5cb32bfe9full },
        { 4, 256, 0xd2af68f561cff1d1ull },  { 4, 1024, 0xef5d9c91772d7f1bull },
    };
    for (size_t i = 0; i < sizeof(pins) / sizeof(pins[0]); i++)
        for (int t = 1; t <= 2; t++) {
            int ok;
            uint64_t h = pin_plan(pins[i].D, pins[i].moves, t, &ok);
            if (!ok)
                fail_msg("%d domains, %lld moves: %s", pins[i].D,
                         (long long)pins[i].moves, epx_last_error());
            if (h != pins[i].hash)
                fail_msg("%d domains, %lld moves, %d thread(s): plan hash "
                         "0x%016llx, pinned 0x%016llx", pins[i].D,
                         (long long)pins[i].moves, t, (unsigned long long)h,
                         (unsigned long long)pins[i].hash);
        }
}

int main(void)
{
    epxt_init("test_search");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(cuts_change_nothing),
        cmocka_unit_test(budgeted_plan_pinned),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
