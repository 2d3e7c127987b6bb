/* Budgeted re-planning: from the placement in use and new loads, the best
 * placement reachable with a bounded number of changed slots.  Every layer
 * keeps its own local-search state and its best next step (search.c);
 * the budget goes, one step at a time, to the layer whose next step lowers
 * its max rank load most per slot moved.  A layer's step is searched again
 * only after it changed or when the budget left no longer covers it, so
 * the work is about (layers + steps taken) searches. */
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "balance/balance.h"

typedef struct layer_q {
    bal_step_t step;
    int has, budget_seen;    /* a step is cached; the budget it was found with */
} layer_q_t;

/* Each layer's state and first search, independent of the others (run by
 * parallel.c); with lost experts a thread renumbers through its own
 * bal_avail_t. */
typedef struct init_ctx {
    const bal_shape_t *sh;
    const double *load;
    const int32_t *current;
    const uint8_t *lost;
    bal_ls_t *ls;
    layer_q_t *q;
    int32_t *c2e, *ccur;
    double *cw;
    int cap;
} init_ctx_t;

static epx_status_t init_tls(void *ctx, void **tls)
{
    const init_ctx_t *c = ctx;
    bal_avail_t *a = calloc(1, sizeof(*a));
    epx_status_t st = a ? EPX_OK
                        : epx__error(EPX_ERR_NOMEM, "balance: out of memory");
    if (st == EPX_OK && c->lost && (st = epx__bal_avail_alloc(a, c->sh->E)) != EPX_OK)
        free(a);
    if (st == EPX_OK)
        *tls = a;
    return st;
}

static void init_fini(void *tls)
{
    epx__bal_avail_free(tls);
    free(tls);
}

static epx_status_t init_layer(void *ctx, void *tls, int l)
{
    const init_ctx_t *c = ctx;
    const bal_shape_t *sh = c->sh;
    int E = sh->E, S = sh->S, R = sh->R, D = sh->hier ? sh->D : 1;
    bal_avail_t *a = tls;
    bal_ls_t *x = &c->ls[l];
    const int32_t *cur = c->current + (size_t)l * S;
    x->E = E;
    x->w = c->load + (size_t)l * E;
    if (c->lost) {
        int32_t *cc = c->ccur + (size_t)l * S;
        epx__bal_avail_layer(a, c->lost + (size_t)l * E, x->w, E, 1);
        memcpy(c->c2e + (size_t)l * E, a->c2e, (size_t)a->n * sizeof(int32_t));
        memcpy(c->cw + (size_t)l * E, a->w, (size_t)a->n * sizeof(double));
        for (int s = 0; s < S; s++)
            cc[s] = a->e2c[cur[s]];     /* no lost expert: checked */
        x->E = a->n;
        x->w = c->cw + (size_t)l * E;
        cur = cc;
    }
    x->spr = sh->spr;
    x->rpd = R / D;
    x->distinct = sh->spr <= x->E;
    epx__bal_ls_load(x, cur, cur);
    c->q[l].has = epx__bal_ls_find(x, c->cap, &c->q[l].step);
    c->q[l].budget_seen = c->cap;
    return EPX_OK;
}

epx_status_t epx__bal_replan(const bal_shape_t *sh, const double *load,
                             const int32_t *current, const uint8_t *lost,
                             int64_t budget, int nthreads,
                             int32_t *phy2log, int32_t *phyrank,
                             int32_t *logcnt, double *max_before,
                             double *max_after)
{
    int L = sh->L, E = sh->E, S = sh->S, R = sh->R;
    int D = sh->hier ? sh->D : 1;
    bal_ls_t *ls = calloc((size_t)L, sizeof(bal_ls_t));
    layer_q_t *q = calloc((size_t)L, sizeof(layer_q_t));
    /* With lost experts each layer is searched over its available ones,
     * renumbered (c2e), so no step can give a lost expert a slot. */
    int32_t *c2e = NULL, *ccur = NULL;
    double *cw = NULL;
    if (lost) {
        c2e = malloc((size_t)L * E * sizeof(int32_t));
        ccur = malloc((size_t)L * S * sizeof(int32_t));
        cw = malloc((size_t)L * E * sizeof(double));
    }
    epx_status_t st = ls && q && (!lost || (c2e && ccur && cw))
                          ? EPX_OK
                          : epx__error(EPX_ERR_NOMEM, "balance: out of memory");
    int nalloc = 0;
    for (; st == EPX_OK && nalloc < L; nalloc++)
        st = epx__bal_ls_alloc(&ls[nalloc], E, R, S, D);
    if (st != EPX_OK)
        goto out;
    int cap = budget > INT32_MAX ? INT32_MAX : (int)budget;
    init_ctx_t ic = { sh, load, current, lost, ls, q, c2e, ccur, cw, cap };
    bal_par_t par = { L, nthreads, init_layer, init_tls, init_fini, &ic };
    if ((st = epx__bal_par_run(&par)) != EPX_OK)
        goto out;
    *max_before = *max_after = 0;
    for (int l = 0; l < L; l++)
        *max_before += epx__bal_ls_max(&ls[l]);
    for (;;) {
        int best = -1;
        for (int l = 0; l < L; l++) {
            if (!q[l].has)
                continue;
            if (q[l].step.cost > cap) {   /* found with more budget: again */
                q[l].has = epx__bal_ls_find(&ls[l], cap, &q[l].step);
                q[l].budget_seen = cap;
                if (!q[l].has)
                    continue;
            }
            if (best < 0 || q[l].step.val > q[best].step.val)
                best = l;
        }
        if (best < 0)
            break;
        epx__bal_ls_apply(&ls[best], &q[best].step);
        cap -= q[best].step.cost;
        q[best].has = epx__bal_ls_find(&ls[best], cap, &q[best].step);
        q[best].budget_seen = cap;
    }
    for (int l = 0; l < L; l++) {
        bal_ls_t *x = &ls[l];
        int32_t *p = phy2log + (size_t)l * S, *pr = phyrank + (size_t)l * S;
        int32_t *c = logcnt + (size_t)l * E;
        *max_after += epx__bal_ls_max(x);
        memcpy(p, x->slot, (size_t)S * sizeof(int32_t));
        if (lost)
            for (int s = 0; s < S; s++)
                p[s] = c2e[(size_t)l * E + p[s]];
        memset(c, 0, (size_t)E * sizeof(int32_t));
        for (int s = 0; s < S; s++)
            pr[s] = c[p[s]]++;
    }
out:
    for (int l = 0; l < nalloc; l++)
        epx__bal_ls_free(&ls[l]);
    free(ls);
    free(q);
    free(c2e);
    free(ccur);
    free(cw);
    return st;
}
