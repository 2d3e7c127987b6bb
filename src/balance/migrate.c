/*
 * Live weight migration: move a layer's expert weights to a new placement
 * and switch the layer to it, in one collective call between dispatches.
 *
 * Every rank knows the old and the new placement, so every rank computes
 * the same plan without talking: for each slot whose expert changes, the
 * source is a replica of the new expert in the old placement — on the
 * slot's own rank if there is one (local copy), else old replica number
 * (slot mod count) (spreads the senders).  Sources put old weights into
 * the destination's staging window (never into live weights), everyone
 * signals everyone, and only then does each rank copy its staging into
 * its weights and install the new placement.  A closing barrier keeps the
 * staging window free for the next call.
 *
 * Split in two (start: validate and put; finish: wait, agree, land,
 * switch) so that the move overlaps dispatch/combine: until the switch
 * the layer routes by its old placement and its live weights are
 * untouched, so calls in between see one consistent placement.  The
 * switch waits until no call of the layer is in flight on any rank.
 */
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "moe/moe.h"
#include "moe/ll.h"

epx_status_t epx_moe_register_weights(epx_moe_t *m, int layer, void *base,
                                      size_t bytes)
{
    if (!m)
        return epx__error(EPX_ERR_INVALID, "balance: engine NULL");
    if (m->mig)
        return epx__error(EPX_ERR_STATE, "balance: a migration is pending "
                          "(epx_moe_rebalance_finish first)");
    epx_status_t mine = EPX_OK;
    int spr = m->U / m->R;
    if (m->p.num_slots <= 0)
        mine = epx__error(EPX_ERR_INVALID, "balance: the engine has no slots "
                          "(num_slots) to move weights between");
    else if (m->gpu)
        mine = epx__error(EPX_ERR_UNSUPPORTED, "balance: moving expert "
                          "weights in device memory (device ranks) is not "
                          "implemented; place with epx_moe_set_placement and "
                          "move the weights yourself");
    else if (layer < 0 || layer >= m->layers)
        mine = epx__error(EPX_ERR_INVALID, "balance: layer %d out of range "
                          "[0, %d)", layer, m->layers);
    else if (bytes == 0 || (!base && spr > 0))
        mine = epx__error(EPX_ERR_INVALID, "balance: weights NULL or 0 bytes "
                          "per slot");
    /* Collective: agree, then grow the staging window if this layer needs
     * more than any before. */
    size_t need = mine == EPX_OK ? bytes * (size_t)spr : 0;
    struct { int32_t st; int32_t pad; uint64_t need; } me = { mine, 0, need };
    void *all = malloc(sizeof(me) * (size_t)m->R);
    if (!all)
        return epx__error(EPX_ERR_NOMEM, "balance: out of memory");
    epx_status_t st = epx__comm_allgather(m->comm, &me, all, sizeof(me));
    size_t most = 0;
    for (int r = 0; r < m->R && st == EPX_OK; r++) {
        memcpy(&me, (char *)all + sizeof(me) * (size_t)r, sizeof(me));
        if (me.st != EPX_OK)
            st = mine != EPX_OK ? mine
                : epx__error(EPX_ERR_PEER, "balance: rank %d refused to "
                             "register layer %d's weights", r, layer);
        else if (me.need > most)
            most = me.need;
    }
    free(all);
    if (st != EPX_OK)
        return st;
    if (most > m->w_stage_bytes) {
        epx__win_destroy(m->w_stage);
        m->w_stage = NULL;
        m->w_stage_bytes = 0;
        m->w_stage_calls = 0;              /* a new window's signal is 0 */
        if ((st = epx__win_create(m->comm, most, 1, &m->w_stage)) != EPX_OK)
            return st;
        m->w_stage_bytes = most;
    }
    m->w_base[layer] = base;
    m->w_bytes[layer] = bytes;
    return EPX_OK;
}

/* Old slot that feeds new slot u with expert e: a replica on u's own rank
 * first, else old replica number (u mod count); -1 if e had no replica. */
static int source_slot(const epx_moe_t *m, const int32_t *old, int u, int e)
{
    int spr = m->U / m->R, r = u / spr, n = 0;
    for (int v = r * spr; v < (r + 1) * spr; v++)
        if (old[v] == e)
            return v;
    for (int v = 0; v < m->U; v++)
        n += old[v] == e;
    if (n == 0)
        return -1;
    int want = u % n;
    for (int v = 0; v < m->U; v++)
        if (old[v] == e && want-- == 0)
            return v;
    return -1;
}

/* A migration between start and finish. */
typedef struct moe_mig {
    int layer, policy;
    int arrived;               /* the weights are all in staging */
    int32_t *old, *next;       /* [U] placement in use, pending one */
    epx_rebalance_stats_t s;
} moe_mig_t;

void moe_mig_free(epx_moe_t *m)
{
    if (m->mig) {
        free(m->mig->old);
        free(m->mig->next);
        free(m->mig);
        m->mig = NULL;
    }
}

/* Every rank's status; the first failure wins: `mine` on the rank that
 * had it, EPX_ERR_PEER (saying `what`) elsewhere. */
static epx_status_t agree(epx_moe_t *m, epx_status_t mine, int layer,
                          const char *what)
{
    int32_t v = mine, *all = malloc(sizeof(int32_t) * (size_t)m->R);
    if (!all)
        return epx__error(EPX_ERR_NOMEM, "balance: out of memory");
    epx_status_t st = epx__comm_allgather(m->comm, &v, all, sizeof(v));
    for (int r = 0; r < m->R && st == EPX_OK; r++)
        if (all[r] != EPX_OK)
            st = mine != EPX_OK ? mine
                : epx__error(EPX_ERR_PEER, "balance: rank %d refused %s of "
                             "layer %d", r, what, layer);
    free(all);
    return st;
}

/* A placement epx_moe_set_placement would take, whose every expert has
 * weights to move from: an expert lost in the placement in use
 * (EPX_MOE_ELASTIC) has none, so it cannot come back by migration. */
static epx_status_t check_placement(const epx_moe_t *m, int layer,
                                    const int32_t *p2l)
{
    const int U = m->U, E = m->E;
    uint8_t *seen = calloc((size_t)E, 1);
    if (!seen)
        return epx__error(EPX_ERR_NOMEM, "balance: out of memory");
    epx_status_t st = EPX_OK;
    for (int u = 0; u < U && st == EPX_OK; u++)
        if (p2l[u] < 0 || p2l[u] >= E)
            st = epx__error(EPX_ERR_INVALID, "balance: phy2log[%d] = %d is not "
                            "an expert of [0, %d)", u, (int)p2l[u], E);
        else if (epx_moe_expert_lost(m, layer, p2l[u]) == 1)
            st = epx__error(EPX_ERR_INVALID, "balance: phy2log[%d] = %d names "
                            "an expert lost in layer %d's placement in use: "
                            "no replica holds its weights", u, (int)p2l[u],
                            layer);
        else
            seen[p2l[u]] = 1;
    for (int e = 0; e < E && st == EPX_OK && !(m->p.flags & EPX_MOE_ELASTIC); e++)
        if (!seen[e])
            st = epx__error(EPX_ERR_INVALID, "balance: expert %d has no slot "
                            "in the placement", e);
    free(seen);
    return st;
}

/* A call of `layer` dispatched on this rank and not yet combine_sent or
 * released: its rows were routed by the placement in use. */
static int layer_in_flight(const epx_moe_t *m, int layer)
{
    if (m->ll) {
        for (int b = 0; b < m->ll->B; b++) {
            const epx_handle_t *h = m->ll->ring[b];
            if (h && h->ll && h->ll->layer == layer &&
                (h->ll->state == LL_SENT || h->ll->state == LL_RECEIVED))
                return 1;
        }
        return 0;
    }
    return m->cur && m->cur->layer == layer &&
           (m->state == MOE_SENT || m->state == MOE_RECEIVED);
}

epx_status_t epx_moe_rebalance_start(epx_moe_t *m, int layer,
                                     const int32_t *phy2log,
                                     epx_replica_policy_t policy)
{
    if (!m)
        return epx__error(EPX_ERR_INVALID, "balance: engine NULL");
    epx_status_t st = moe_check_usable(m, "balance");
    if (st != EPX_OK)
        return st;
    const int U = m->U, spr = m->p.num_slots > 0 ? U / m->R : 0, me = m->rank;
    epx_status_t mine = EPX_OK;
    if (m->mig)
        mine = epx__error(EPX_ERR_STATE, "balance: a migration of layer %d is "
                          "pending", m->mig->layer);
    else if (m->p.num_slots <= 0 || layer < 0 || layer >= m->layers ||
             !m->w_base[layer] || !phy2log)
        mine = epx__error(EPX_ERR_INVALID, "balance: layer %d has no registered "
                          "weights, or phy2log NULL", layer);
    else if (m->phy2log[(size_t)layer * (size_t)U] < 0)
        mine = epx__error(EPX_ERR_INVALID, "balance: layer %d has no placement "
                          "to move from (epx_moe_set_placement first)", layer);
    else if (policy != EPX_REPLICA_LOCAL_FIRST &&
             policy != EPX_REPLICA_ROUND_ROBIN)
        mine = epx__error(EPX_ERR_INVALID, "balance: unknown replica policy %d",
                          (int)policy);
    else
        mine = check_placement(m, layer, phy2log);
    moe_mig_t *g = NULL;
    if (mine == EPX_OK) {
        g = calloc(1, sizeof(*g));
        if (g) {
            g->old = malloc(sizeof(int32_t) * (size_t)U);
            g->next = malloc(sizeof(int32_t) * (size_t)U);
        }
        if (!g || !g->old || !g->next)
            mine = epx__error(EPX_ERR_NOMEM, "balance: out of memory");
    }
    /* Agree (collective) before any byte moves. */
    st = agree(m, mine, layer, "the rebalance");
    if (st != EPX_OK) {
        if (g) {
            free(g->old);
            free(g->next);
            free(g);
        }
        return st;
    }
    g->layer = layer;
    g->policy = policy;
    g->s = (epx_rebalance_stats_t){ sizeof(g->s), 0, 0, 0, 0 };
    memcpy(g->old, m->phy2log + (size_t)layer * (size_t)U,
           sizeof(int32_t) * (size_t)U);
    memcpy(g->next, phy2log, sizeof(int32_t) * (size_t)U);
    m->mig = g;
    const size_t B = m->w_bytes[layer];
    const char *w = m->w_base[layer];
    /* Sends: old weights of our slots to the stagings that need them; the
     * live weights are only read until the switch. */
    for (int u = 0; u < U && st == EPX_OK; u++) {
        int e = g->next[u], d = u / spr;
        if (g->old[u] == e)
            continue;
        int src = source_slot(m, g->old, u, e);
        if (src / spr != me)
            continue;
        st = epx__win_put(m->w_stage, d, (size_t)(u % spr) * B,
                          w + (size_t)(src % spr) * B, B);
        if (d == me)
            g->s.local_copies++;
        else
            g->s.sent++;
    }
    for (int d = 0; d < m->R && st == EPX_OK; d++)
        st = epx__win_signal(m->w_stage, d, 0, 1);
    m->w_stage_calls++;
    if (st != EPX_OK) {
        m->broken = 1;
        moe_mig_free(m);
    }
    return st;
}

epx_status_t epx_moe_rebalance_finish(epx_moe_t *m, epx_rebalance_stats_t *out)
{
    if (!m)
        return epx__error(EPX_ERR_INVALID, "balance: engine NULL");
    epx_status_t st = moe_check_usable(m, "balance");
    if (st != EPX_OK)
        return st;
    moe_mig_t *g = m->mig;
    if (!g)
        return epx__error(EPX_ERR_STATE, "balance: no migration pending "
                          "(epx_moe_rebalance_start first)");
    const int U = m->U, spr = U / m->R, me = m->rank, layer = g->layer;
    if (!g->arrived) {
        st = epx__win_wait(m->w_stage, 0, (uint64_t)m->R * m->w_stage_calls);
        if (st != EPX_OK) {
            m->broken = 1;
            moe_mig_free(m);
            return st;
        }
        g->arrived = 1;
    }
    epx_status_t mine = layer_in_flight(m, layer)
        ? epx__error(EPX_ERR_STATE, "balance: a call of layer %d is in flight "
                     "(combine_send or release it before the switch)", layer)
        : EPX_OK;
    if ((st = agree(m, mine, layer, "the switch")) != EPX_OK)
        return st;                     /* still pending: finish again */
    /* Everything arrived and nobody routes by the old placement: land it
     * and switch the layer. */
    const size_t B = m->w_bytes[layer];
    char *w = m->w_base[layer];
    const char *stage = m->w_stage->local;
    for (int j = 0; j < spr; j++) {
        int u = me * spr + j;
        if (g->old[u] == g->next[u]) {
            g->s.unchanged++;
            continue;
        }
        memcpy(w + (size_t)j * B, stage + (size_t)j * B, B);
        if (source_slot(m, g->old, u, g->next[u]) / spr != me)
            g->s.received++;
    }
    epx_rebalance_stats_t s = g->s;
    moe_placement_install(m, layer, g->next,
                          (epx_replica_policy_t)g->policy);  /* checked */
    moe_mig_free(m);
    st = epx_comm_barrier(m->comm);      /* staging free for the next call */
    if (st == EPX_OK && out) {
        size_t n = out->struct_size && out->struct_size < sizeof(s)
            ? out->struct_size : sizeof(s);
        s.struct_size = n;
        memcpy(out, &s, n);
    }
    return st;
}

epx_status_t epx_moe_rebalance(epx_moe_t *m, int layer, const int32_t *phy2log,
                               epx_replica_policy_t policy,
                               epx_rebalance_stats_t *out)
{
    epx_status_t st = epx_moe_rebalance_start(m, layer, phy2log, policy);
    return st == EPX_OK ? epx_moe_rebalance_finish(m, out) : st;
}

epx_status_t epx_moe_rebalance_plan(epx_moe_t *m,
                                    const epx_rebalance_args_t *a,
                                    int32_t *phy2log,
                                    epx_balance_report_t *report)
{
    if (!m || !a || !phy2log)
        return epx__error(EPX_ERR_INVALID, "balance: engine, args or phy2log "
                          "NULL");
    if (a->struct_size < sizeof(epx_rebalance_args_t) || a->version < 1)
        return epx__error(EPX_ERR_INVALID, "balance: epx_rebalance_args_t not "
                          "initialised (EPX_REBALANCE_ARGS_INIT)");
    epx_status_t mine = EPX_OK;
    if (m->p.num_slots <= 0)
        mine = epx__error(EPX_ERR_INVALID, "balance: the engine has no slots");
    for (int l = 0; l < m->layers && mine == EPX_OK; l++)
        if (m->phy2log[(size_t)l * (size_t)m->U] < 0)
            mine = epx__error(EPX_ERR_INVALID, "balance: layer %d has no "
                              "placement to re-plan from", l);
    epx_status_t st = agree(m, mine, 0, "to re-plan");
    epx_moe_stats_t s = { .struct_size = sizeof(s) };
    if (st == EPX_OK)
        st = epx_moe_stats(m, 1, &s);   /* every rank gets the same sums */
    if (st != EPX_OK)
        return st;
    size_t n = (size_t)m->layers * (size_t)m->E;
    double *load = malloc(sizeof(double) * n);
    if (!load)
        return epx__error(EPX_ERR_NOMEM, "balance: out of memory");
    for (size_t i = 0; i < n; i++)
        load[i] = a->use_decayed ? s.decayed[i] : (double)s.window[i];
    size_t bytes = 0;
    for (int l = 0; l < m->layers; l++)
        if (m->w_bytes[l] > bytes)
            bytes = m->w_bytes[l];
    epx_balance_params_t p = EPX_BALANCE_PARAMS_INIT;
    p.num_layers = m->layers;
    p.num_experts = m->E;
    p.num_slots = m->U;
    p.num_groups = a->num_groups;
    p.num_domains = a->num_domains;
    p.num_ranks = m->R;
    p.policy = a->policy;
    p.current_phy2log = m->phy2log;
    p.max_moves = a->max_moves;
    p.max_bytes = a->max_bytes;
    p.bytes_per_slot = (int64_t)bytes;
    p.report = report;
    st = epx_balance_plan(&p, load, phy2log, NULL, 0, NULL);
    free(load);
    return st;
}
