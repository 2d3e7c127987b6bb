/* epx_balance_plan: checks, scratch memory, the per-layer loop, log2phy. */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "balance/balance.h"

epx_status_t epx__bal_shape(const epx_balance_params_t *p, bal_shape_t *sh)
{
    if (!p || p->struct_size < offsetof(epx_balance_params_t, current_phy2log) +
                                   sizeof(p->current_phy2log))
        return epx__error(EPX_ERR_INVALID,
                          "balance: params NULL or not set up with "
                          "EPX_BALANCE_PARAMS_INIT");
    epx_status_t vst = epx__check_version("balance params", p->version,
                                          EPX_BALANCE_PARAMS_VERSION);
    if (vst != EPX_OK)
        return vst;
    if (p->num_layers < 1 || p->num_experts < 1 || p->num_ranks < 1 ||
        p->num_groups < 1 || p->num_domains < 1)
        return epx__error(EPX_ERR_INVALID,
                          "balance: num_layers (%d), num_experts (%d), "
                          "num_ranks (%d), num_groups (%d) and num_domains (%d) "
                          "must all be >= 1", p->num_layers, p->num_experts,
                          p->num_ranks, p->num_groups, p->num_domains);
    /* With lost experts the slots need only cover the available ones:
     * checked per layer (epx__bal_avail_check). */
    if (p->num_slots < p->num_experts && !epx__bal_lost(p))
        return epx__error(EPX_ERR_INVALID,
                          "balance: num_slots %d < num_experts %d: every expert "
                          "needs a slot", p->num_slots, p->num_experts);
    if (p->num_slots % p->num_ranks)
        return epx__error(EPX_ERR_INVALID,
                          "balance: num_slots %d is not a multiple of "
                          "num_ranks %d (every rank holds as many slots)",
                          p->num_slots, p->num_ranks);
    if (p->num_experts % p->num_groups)
        return epx__error(EPX_ERR_INVALID,
                          "balance: num_groups %d does not divide num_experts %d",
                          p->num_groups, p->num_experts);
    if (p->num_ranks % p->num_domains)
        return epx__error(EPX_ERR_INVALID,
                          "balance: num_domains %d does not divide num_ranks %d",
                          p->num_domains, p->num_ranks);
    if (p->policy != EPX_BALANCE_DEEPSEEK && p->policy != EPX_BALANCE_EPX)
        return epx__error(EPX_ERR_INVALID, "balance: unknown policy %d",
                          (int)p->policy);
    if ((int64_t)p->num_layers * p->num_slots > INT32_MAX ||
        (int64_t)p->num_ranks * p->num_experts > INT32_MAX / 4)
        return epx__error(EPX_ERR_RANGE, "balance: problem too large");
    sh->L = p->num_layers;
    sh->E = p->num_experts;
    sh->S = p->num_slots;
    sh->R = p->num_ranks;
    sh->hier = p->num_groups % p->num_domains == 0;
    sh->G = sh->hier ? p->num_groups : 1;
    sh->D = sh->hier ? p->num_domains : 1;
    sh->gsize = sh->E / sh->G;
    sh->epd = sh->E / sh->D;
    sh->spd = sh->S / sh->D;
    sh->rpd = sh->R / sh->D;
    sh->spr = sh->S / sh->R;
    return EPX_OK;
}

int epx__bal_threads(const epx_balance_params_t *p)
{
    if (p->version >= 4 && p->struct_size >= offsetof(epx_balance_params_t,
                                                       num_threads) +
                                                  sizeof(p->num_threads))
        return p->num_threads > 1 ? p->num_threads : 1;
    return 1;
}

const uint8_t *epx__bal_lost(const epx_balance_params_t *p)
{
    if (p->version >= 3 && p->struct_size >= offsetof(epx_balance_params_t,
                                                       lost) + sizeof(p->lost))
        return p->lost;
    return NULL;
}

epx_status_t epx__bal_work_alloc(const bal_shape_t *sh, bal_work_t *wk)
{
    /* S may be below E when experts are lost; the per-slot arrays also
     * hold per-expert values (loads, groups), so size them for both. */
    size_t S = (size_t)(sh->S > sh->E ? sh->S : sh->E);
    size_t E = (size_t)sh->E, R = (size_t)sh->R;
    memset(wk, 0, sizeof(*wk));
    wk->ord = malloc(S * sizeof(int32_t));
    wk->tmp = malloc(S * sizeof(int32_t));
    wk->w = malloc(S * sizeof(double));
    wk->packw = malloc(S * sizeof(double));
    wk->packn = malloc(S * sizeof(int32_t));
    wk->pack = malloc(S * sizeof(int32_t));
    wk->rip = malloc(S * sizeof(int32_t));
    wk->mlog2log = malloc(E * sizeof(int32_t));
    wk->p2m = malloc(S * sizeof(int32_t));
    wk->prank = malloc(S * sizeof(int32_t));
    wk->mcnt = malloc(E * sizeof(int32_t));
    wk->held = calloc(R * E, sizeof(int32_t));
    wk->slot_item = malloc(S * sizeof(int32_t));
    wk->pairs = malloc(R * R * 3 * sizeof(int32_t));
    wk->perm = malloc(S * sizeof(int32_t));
    wk->used = malloc(S * sizeof(int32_t));
    wk->ds_p2l = malloc(S * sizeof(int32_t));
    wk->ds_rank = malloc(S * sizeof(int32_t));
    wk->ds_cnt = malloc(E * sizeof(int32_t));
    wk->inv = malloc(E * sizeof(int32_t));
    wk->wd = malloc(E * sizeof(double));
    wk->cand = malloc(S * sizeof(int32_t));
    wk->ls = malloc(sizeof(bal_ls_t));
    if (wk->ls && epx__bal_ls_alloc(wk->ls, sh->E, sh->R, (int)S, sh->D) != EPX_OK) {
        free(wk->ls);
        wk->ls = NULL;
    }
    if (!wk->ds_p2l || !wk->ds_rank || !wk->ds_cnt || !wk->inv || !wk->wd ||
        !wk->cand || !wk->ls ||
        !wk->ord || !wk->tmp || !wk->w || !wk->packw || !wk->packn ||
        !wk->pack || !wk->rip || !wk->mlog2log || !wk->p2m || !wk->prank ||
        !wk->mcnt || !wk->held || !wk->slot_item || !wk->pairs || !wk->perm ||
        !wk->used) {
        epx__bal_work_free(wk);
        return epx__error(EPX_ERR_NOMEM,
                          "balance: out of memory planning %d experts into "
                          "%d slots on %d ranks", sh->E, sh->S, sh->R);
    }
    return EPX_OK;
}

void epx__bal_work_free(bal_work_t *wk)
{
    free(wk->ord); free(wk->tmp); free(wk->w); free(wk->packw);
    free(wk->packn); free(wk->pack); free(wk->rip); free(wk->mlog2log);
    free(wk->p2m); free(wk->prank); free(wk->mcnt); free(wk->held);
    free(wk->slot_item); free(wk->pairs); free(wk->perm); free(wk->used);
    free(wk->ds_p2l); free(wk->ds_rank); free(wk->ds_cnt); free(wk->inv);
    free(wk->wd); free(wk->cand);
    if (wk->ls)
        epx__bal_ls_free(wk->ls);
    free(wk->ls);
    memset(wk, 0, sizeof(*wk));
}

static epx_status_t check_inputs(const epx_balance_params_t *p,
                                 const bal_shape_t *sh, const double *load,
                                 const int32_t *phy2log, const int32_t *log2phy,
                                 int max_replicas)
{
    if (!load || !phy2log)
        return epx__error(EPX_ERR_INVALID, "balance: %s is NULL",
                          !load ? "load" : "phy2log");
    if (log2phy && max_replicas < 1)
        return epx__error(EPX_ERR_INVALID,
                          "balance: max_replicas %d must be >= 1 with log2phy",
                          max_replicas);
    for (size_t i = 0; i < (size_t)sh->L * sh->E; i++)
        if (!isfinite(load[i]) || load[i] < 0)
            return epx__error(EPX_ERR_INVALID,
                              "balance: load[%zu][%zu] = %g must be finite "
                              "and >= 0", i / sh->E, i % sh->E, load[i]);
    const uint8_t *lost = epx__bal_lost(p);
    if (p->policy == EPX_BALANCE_EPX && p->current_phy2log)
        for (size_t i = 0; i < (size_t)sh->L * sh->S; i++) {
            int32_t e = p->current_phy2log[i];
            size_t l = i / sh->S;
            if (e < 0 || e >= sh->E)
                return epx__error(EPX_ERR_INVALID,
                                  "balance: current_phy2log[%zu][%zu] = %d is "
                                  "not an expert (0..%d)", l, i % sh->S,
                                  e, sh->E - 1);
            if (lost && lost[l * sh->E + e])
                return epx__error(EPX_ERR_INVALID,
                                  "balance: current_phy2log[%zu][%zu] = %d, "
                                  "an expert that lost marks as lost (it has "
                                  "no weights to keep)", l, i % sh->S, e);
        }
    return EPX_OK;
}

/* The version 2 fields, or their defaults for older callers. */
typedef struct plan_v2 {
    int64_t max_moves, max_bytes, bytes_per_slot;
    epx_balance_report_t *report;
} plan_v2_t;

static void read_v2(const epx_balance_params_t *p, plan_v2_t *v)
{
    v->max_moves = v->max_bytes = -1;
    v->bytes_per_slot = 0;
    v->report = NULL;
    if (p->version >= 2 && p->struct_size >= offsetof(epx_balance_params_t, report) +
                                                  sizeof(p->report)) {
        v->max_moves = p->max_moves;
        v->max_bytes = p->max_bytes;
        v->bytes_per_slot = p->bytes_per_slot;
        v->report = p->report;
    }
}

/* Max rank load of one layer's placement. */
static double layer_max(const bal_shape_t *sh, const double *load,
                        const int32_t *p2l, int32_t *cnt, double *rl)
{
    double mx = 0;
    memset(cnt, 0, (size_t)sh->E * sizeof(int32_t));
    for (int s = 0; s < sh->S; s++)
        cnt[p2l[s]]++;
    for (int r = 0; r < sh->R; r++)
        rl[r] = 0;
    for (int s = 0; s < sh->S; s++)
        rl[s / sh->spr] += load[p2l[s]] / cnt[p2l[s]];
    for (int r = 0; r < sh->R; r++)
        mx = rl[r] > mx ? rl[r] : mx;
    return mx;
}

static epx_status_t check_budget(const epx_balance_params_t *p,
                                 const bal_shape_t *sh, const plan_v2_t *v,
                                 int64_t *budget)
{
    *budget = -1;
    if (v->max_moves < 0 && v->max_bytes < 0)
        return EPX_OK;
    if (p->policy != EPX_BALANCE_EPX || !p->current_phy2log)
        return epx__error(EPX_ERR_INVALID,
                          "balance: max_moves / max_bytes re-plan the placement "
                          "in use: they need the EPX policy and "
                          "current_phy2log");
    if (v->max_bytes >= 0 && v->bytes_per_slot <= 0)
        return epx__error(EPX_ERR_INVALID,
                          "balance: max_bytes needs bytes_per_slot > 0 "
                          "(got %lld)", (long long)v->bytes_per_slot);
    const uint8_t *lost = epx__bal_lost(p);
    int32_t *seen = calloc((size_t)sh->E, sizeof(int32_t));
    if (!seen)
        return epx__error(EPX_ERR_NOMEM, "balance: out of memory");
    for (int l = 0; l < sh->L; l++) {
        memset(seen, 0, (size_t)sh->E * sizeof(int32_t));
        for (int s = 0; s < sh->S; s++)
            seen[p->current_phy2log[(size_t)l * sh->S + s]] = 1;
        for (int e = 0; e < sh->E; e++)
            if (!seen[e] && !(lost && lost[(size_t)l * sh->E + e])) {
                free(seen);
                return epx__error(EPX_ERR_INVALID,
                                  "balance: current_phy2log layer %d has no "
                                  "slot for expert %d%s", l, e,
                                  lost ? " (not marked lost)" : "");
            }
    }
    free(seen);
    int64_t b = v->max_moves >= 0 ? v->max_moves : INT64_MAX;
    if (v->max_bytes >= 0 && v->max_bytes / v->bytes_per_slot < b)
        b = v->max_bytes / v->bytes_per_slot;
    *budget = b;
    return EPX_OK;
}

/* Moves, bytes and the max rank loads before and after, into the report. */
static epx_status_t fill_report(const epx_balance_params_t *p,
                                const bal_shape_t *sh, const plan_v2_t *v,
                                const double *load, const int32_t *p2l)
{
    int32_t *cnt = malloc((size_t)sh->E * sizeof(int32_t));
    double *rl = malloc((size_t)sh->R * sizeof(double));
    if (!cnt || !rl) {
        free(cnt);
        free(rl);
        return epx__error(EPX_ERR_NOMEM, "balance: out of memory");
    }
    epx_balance_report_t r = { 0, 0, 0, 0 };
    const int32_t *cur = p->current_phy2log;
    for (int l = 0; l < sh->L; l++) {
        const double *ld = load + (size_t)l * sh->E;
        const int32_t *np = p2l + (size_t)l * sh->S;
        r.max_after += layer_max(sh, ld, np, cnt, rl);
        if (cur)
            r.max_before += layer_max(sh, ld, cur + (size_t)l * sh->S, cnt, rl);
        for (int s = 0; s < sh->S; s++)
            r.moves += !cur || cur[(size_t)l * sh->S + s] != np[s];
    }
    r.bytes = r.moves * v->bytes_per_slot;
    *v->report = r;
    free(cnt);
    free(rl);
    return EPX_OK;
}

/* Every layer keeps 1..S available experts. */
static epx_status_t check_lost(const bal_shape_t *sh, const uint8_t *lost)
{
    bal_avail_t a;
    epx_status_t st = epx__bal_avail_alloc(&a, sh->E);
    for (int l = 0; st == EPX_OK && l < sh->L; l++) {
        epx__bal_avail_layer(&a, lost + (size_t)l * sh->E, NULL, sh->E, 1);
        st = epx__bal_avail_check(&a, l, sh->E, sh->S);
    }
    epx__bal_avail_free(&a);
    return st;
}

/* Plans with lost experts: each layer as the problem restricted to its
 * available experts (params with num_experts = their number, the groups
 * epx__bal_avail_layer keeps, current_phy2log renumbered), mapped back.
 * The policies run unchanged on the compact layer; wk, allocated for the
 * full shape, is large enough for every compact one. */
/* Planning from scratch, a layer at a time (parallel.c runs them). */
typedef struct plan_ctx {
    const epx_balance_params_t *params;
    const bal_shape_t *sh;
    const uint8_t *lost;       /* or NULL */
    const double *load;
    int32_t *p2l, *prank, *cnt;
} plan_ctx_t;

typedef struct plan_tls {
    bal_work_t wk;
    bal_avail_t a;             /* with lost experts: */
    int32_t *ccur, *ccnt;      /* [S], [E] a compact layer's */
} plan_tls_t;

static void plan_tls_fini(void *tls)
{
    plan_tls_t *t = tls;
    epx__bal_work_free(&t->wk);
    epx__bal_avail_free(&t->a);
    free(t->ccur);
    free(t->ccnt);
    free(t);
}

static epx_status_t plan_tls_init(void *ctx, void **out)
{
    const plan_ctx_t *c = ctx;
    plan_tls_t *t = calloc(1, sizeof(*t));
    if (!t)
        return epx__error(EPX_ERR_NOMEM, "balance: out of memory");
    epx_status_t st = epx__bal_work_alloc(c->sh, &t->wk);
    if (st != EPX_OK) {
        free(t);
        return st;
    }
    if (c->lost && (st = epx__bal_avail_alloc(&t->a, c->sh->E)) == EPX_OK &&
        (!(t->ccur = malloc((size_t)c->sh->S * sizeof(int32_t))) ||
         !(t->ccnt = malloc((size_t)c->sh->E * sizeof(int32_t)))))
        st = epx__error(EPX_ERR_NOMEM, "balance: out of memory");
    if (st != EPX_OK) {
        plan_tls_fini(t);
        return st;
    }
    *out = t;
    return EPX_OK;
}

/* Layer l over its available experts only, mapped back. */
static epx_status_t plan_lost_layer(const plan_ctx_t *c, plan_tls_t *t, int l)
{
    const epx_balance_params_t *params = c->params;
    const bal_shape_t *sh = c->sh;
    bal_avail_t *a = &t->a;
    int keep = params->policy == EPX_BALANCE_EPX && params->current_phy2log;
    epx__bal_avail_layer(a, c->lost + (size_t)l * sh->E,
                         c->load + (size_t)l * sh->E, sh->E,
                         params->num_groups);
    /* The compact layer's own problem, shaped as the public call would
     * shape it. */
    epx_balance_params_t sub = EPX_BALANCE_PARAMS_INIT;
    bal_shape_t lsh;
    sub.num_layers = 1;
    sub.num_experts = a->n;
    sub.num_slots = params->num_slots;
    sub.num_groups = a->groups;
    sub.num_domains = params->num_domains;
    sub.num_ranks = params->num_ranks;
    sub.policy = params->policy;
    epx_status_t st = epx__bal_shape(&sub, &lsh);
    if (st != EPX_OK)
        return st;
    int32_t *lp = c->p2l + (size_t)l * sh->S, *lr = c->prank + (size_t)l * sh->S;
    if (params->policy == EPX_BALANCE_DEEPSEEK) {
        epx__plan_deepseek(&lsh, a->w, &t->wk, lp, lr, t->ccnt);
    } else {
        if (keep) {
            const int32_t *cur = params->current_phy2log + (size_t)l * sh->S;
            for (int s = 0; s < sh->S; s++)
                t->ccur[s] = a->e2c[cur[s]];   /* no lost expert: checked */
        }
        epx__plan_epx(&lsh, a->w, keep ? t->ccur : NULL, &t->wk, lp, lr,
                      t->ccnt);
    }
    for (int s = 0; s < sh->S; s++)
        lp[s] = a->c2e[lp[s]];
    for (int e = 0; e < sh->E; e++)
        c->cnt[(size_t)l * sh->E + e] = a->e2c[e] >= 0 ? t->ccnt[a->e2c[e]] : 0;
    return EPX_OK;
}

static epx_status_t plan_layer(void *ctx, void *tls, int l)
{
    const plan_ctx_t *c = ctx;
    plan_tls_t *t = tls;
    const bal_shape_t *sh = c->sh;
    if (c->lost)
        return plan_lost_layer(c, t, l);
    const double *ld = c->load + (size_t)l * sh->E;
    int32_t *lp = c->p2l + (size_t)l * sh->S, *lr = c->prank + (size_t)l * sh->S;
    int32_t *lc = c->cnt + (size_t)l * sh->E;
    const int32_t *cur = c->params->current_phy2log;
    if (c->params->policy == EPX_BALANCE_DEEPSEEK)
        epx__plan_deepseek(sh, ld, &t->wk, lp, lr, lc);
    else
        epx__plan_epx(sh, ld, cur ? cur + (size_t)l * sh->S : NULL, &t->wk,
                      lp, lr, lc);
    return EPX_OK;
}

epx_status_t epx_balance_plan(const epx_balance_params_t *params,
                              const double *load, int32_t *phy2log,
                              int32_t *log2phy, int max_replicas,
                              int32_t *logcnt)
{
    bal_shape_t sh;
    epx_status_t st = epx__bal_shape(params, &sh);
    plan_v2_t v2;
    int64_t budget = -1;
    if (st == EPX_OK)
        st = check_inputs(params, &sh, load, phy2log, log2phy, max_replicas);
    if (st == EPX_OK) {
        read_v2(params, &v2);
        st = check_budget(params, &sh, &v2, &budget);
    }
    const uint8_t *lost = st == EPX_OK ? epx__bal_lost(params) : NULL;
    if (st == EPX_OK && lost)
        st = check_lost(&sh, lost);
    if (st != EPX_OK)
        return st;
    /* Outputs are written only on success: plan into private arrays. */
    size_t LS = (size_t)sh.L * sh.S, LE = (size_t)sh.L * sh.E;
    int32_t *p2l = malloc(LS * sizeof(int32_t));
    int32_t *prank = malloc(LS * sizeof(int32_t));
    int32_t *cnt = malloc(LE * sizeof(int32_t));
    st = p2l && prank && cnt ? EPX_OK
                             : epx__error(EPX_ERR_NOMEM, "balance: out of memory");
    if (st != EPX_OK)
        goto out;
    if (budget >= 0) {
        double before, after;
        st = epx__bal_replan(&sh, load, params->current_phy2log, lost, budget,
                             epx__bal_threads(params), p2l, prank, cnt,
                             &before, &after);
    } else {
        plan_ctx_t c = { params, &sh, lost, load, p2l, prank, cnt };
        bal_par_t par = { sh.L, epx__bal_threads(params), plan_layer,
                          plan_tls_init, plan_tls_fini, &c };
        st = epx__bal_par_run(&par);
    }
    if (st != EPX_OK)
        goto out;
    int maxcnt = 0;
    for (size_t i = 0; i < LE; i++)
        maxcnt = cnt[i] > maxcnt ? cnt[i] : maxcnt;
    if (log2phy && maxcnt > max_replicas) {
        st = epx__error(EPX_ERR_RANGE,
                        "balance: an expert got %d replicas but log2phy has "
                        "room for max_replicas = %d (num_slots - num_experts "
                        "+ 1 = %d is always enough%s)", maxcnt, max_replicas,
                        sh.S - sh.E + 1,
                        lost ? ", counting only the available experts" : "");
        goto out;
    }
    if (v2.report && (st = fill_report(params, &sh, &v2, load, p2l)) != EPX_OK)
        goto out;
    memcpy(phy2log, p2l, LS * sizeof(int32_t));
    if (logcnt)
        memcpy(logcnt, cnt, LE * sizeof(int32_t));
    if (log2phy) {
        size_t n = LE * (size_t)max_replicas;
        for (size_t i = 0; i < n; i++)
            log2phy[i] = -1;
        for (int l = 0; l < sh.L; l++)
            for (int s = 0; s < sh.S; s++) {
                size_t i = (size_t)l * sh.S + s;
                log2phy[((size_t)l * sh.E + p2l[i]) * max_replicas + prank[i]] = s;
            }
    }
out:
    free(p2l);
    free(prank);
    free(cnt);
    return st;
}
