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
 *
 * The plan (moe_mig_plan, moe/mig.h) is the one both executors move:
 * host ranks with window puts and signals, device ranks through the GPU
 * executor (src/cuda/migrate.c: device copies into the peers' staging
 * windows, or NCCL send/recv, on a stream of their own).  Device ranks
 * follow the same protocol with these differences: "arrived" is every
 * rank's own transfers done (finish waits for them, then agrees); the
 * landing and the switch of the layer's routing tables are queued on the
 * device, after the engine's work queued before finish and before its
 * later work; and the next start (or register) waits for that landing
 * before anything is put into staging again, instead of a barrier.
 */
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "moe/moe.h"
#include "moe/mig.h"
#include "moe/ll.h"
#include "cuda/gpu.h"

static epx_status_t agree(epx_moe_t *m, epx_status_t mine, int layer,
                          const char *what);

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
    else if (layer < 0 || layer >= m->layers)
        mine = epx__error(EPX_ERR_INVALID, "balance: layer %d out of range "
                          "[0, %d)", layer, m->layers);
    else if (bytes == 0 || (!base && spr > 0))
        mine = epx__error(EPX_ERR_INVALID, "balance: weights NULL or 0 bytes "
                          "per slot");
    /* Device ranks: device memory, and staging allocated while no call
     * is in flight (an allocation or free may wait for the device, where
     * a peer's kernels could be waiting for this rank). */
    else if (m->gpu && gpu_moe_busy(m->gpu))
        mine = epx__error(EPX_ERR_STATE, "balance: register_weights while a "
                          "call of the engine is in flight (device ranks)");
    else if (m->gpu && spr > 0)
        mine = gpu_mig_check(m->gpu, base, bytes * (size_t)spr);
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
    if (m->gpu) {
        /* Collective: the device staging, shared as the windows are. */
        st = agree(m, gpu_mig_reserve(m->gpu, most), layer,
                   "the device staging");
        if (st != EPX_OK)
            return st;
        m->w_stage_bytes = most > m->w_stage_bytes ? most : m->w_stage_bytes;
    } else if (most > m->w_stage_bytes) {
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

int moe_mig_source(int U, int R, const int32_t *old, int u, int e)
{
    int spr = U / R, r = u / spr, n = 0;
    for (int v = r * spr; v < (r + 1) * spr; v++)
        if (old[v] == e)
            return v;
    for (int v = 0; v < U; v++)
        n += old[v] == e;
    if (n == 0)
        return -1;
    int want = u % n;
    for (int v = 0; v < U; v++)
        if (old[v] == e && want-- == 0)
            return v;
    return -1;
}

void moe_mig_plan_free(moe_mig_plan_t *p)
{
    free(p->x);
    free(p->land);
    p->x = NULL;
    p->land = NULL;
    p->n = p->nland = 0;
}

epx_status_t moe_mig_plan(int U, int R, int me, const int32_t *old,
                          const int32_t *next, moe_mig_plan_t *p)
{
    const int spr = U / R;
    memset(p, 0, sizeof(*p));
    p->s.struct_size = sizeof(p->s);
    p->x = malloc(sizeof(moe_mig_xfer_t) * (size_t)(U + spr + 1));
    p->land = malloc(sizeof(int32_t) * (size_t)(spr + 1));
    if (!p->x || !p->land) {
        moe_mig_plan_free(p);
        return epx__error(EPX_ERR_NOMEM, "balance: out of memory");
    }
    for (int u = 0; u < U; u++) {
        int e = next[u], d = u / spr;
        if (old[u] == e) {
            p->s.unchanged += d == me;
            continue;
        }
        int src = moe_mig_source(U, R, old, u, e);
        if (src < 0) {
            moe_mig_plan_free(p);
            return epx__error(EPX_ERR_INVALID, "balance: slot %d's new expert "
                              "%d has no replica to move from", u, e);
        }
        if (d == me)
            p->land[p->nland++] = u % spr;
        if (src / spr == me) {
            p->x[p->n++] = (moe_mig_xfer_t){ d, 0, src % spr, u % spr };
            if (d == me)
                p->s.local_copies++;
            else
                p->s.sent++;
        } else if (d == me) {
            p->x[p->n++] = (moe_mig_xfer_t){ src / spr, 1, -1, u % spr };
            p->s.received++;
        }
    }
    return EPX_OK;
}

/* A migration between start and finish. */
typedef struct moe_mig {
    int layer, policy;
    int arrived;               /* the weights are all in staging */
    int32_t *old, *next;       /* [U] placement in use, pending one */
    moe_mig_plan_t plan;       /* this rank's transfers and landings */
} moe_mig_t;

void moe_mig_free(epx_moe_t *m)
{
    if (m->mig) {
        moe_mig_plan_free(&m->mig->plan);
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
    if (m->gpu)
        return gpu_moe_layer_busy(m->gpu, layer);
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
    const int U = m->U, me = m->rank;
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
    /* Device ranks: the previous migration landed, so its staging is
     * free and its weights final (what the host's closing barrier gives). */
    if (mine == EPX_OK && m->gpu)
        mine = gpu_mig_quiet(m->gpu);
    moe_mig_t *g = NULL;
    if (mine == EPX_OK) {
        g = calloc(1, sizeof(*g));
        if (g) {
            g->old = malloc(sizeof(int32_t) * (size_t)U);
            g->next = malloc(sizeof(int32_t) * (size_t)U);
        }
        if (!g || !g->old || !g->next)
            mine = epx__error(EPX_ERR_NOMEM, "balance: out of memory");
        else
            mine = moe_mig_plan(U, m->R, me, m->phy2log + (size_t)layer *
                                (size_t)U, phy2log, &g->plan);
    }
    /* Agree (collective) before any byte moves. */
    st = agree(m, mine, layer, "the rebalance");
    if (st != EPX_OK) {
        if (g) {
            moe_mig_plan_free(&g->plan);
            free(g->old);
            free(g->next);
            free(g);
        }
        return st;
    }
    g->layer = layer;
    g->policy = policy;
    memcpy(g->old, m->phy2log + (size_t)layer * (size_t)U,
           sizeof(int32_t) * (size_t)U);
    memcpy(g->next, phy2log, sizeof(int32_t) * (size_t)U);
    m->mig = g;
    const size_t B = m->w_bytes[layer];
    const char *w = m->w_base[layer];
    const moe_mig_plan_t *pl = &g->plan;
    /* Sends: old weights of our slots to the stagings that need them; the
     * live weights are only read until the switch. */
    if (m->gpu) {
        st = gpu_mig_send(m->gpu, w, B, pl->x, pl->n);
    } else {
        for (int i = 0; i < pl->n && st == EPX_OK; i++)
            if (!pl->x[i].recv)
                st = epx__win_put(m->w_stage, pl->x[i].peer,
                                  (size_t)pl->x[i].stage * B,
                                  w + (size_t)pl->x[i].slot * B, B);
        for (int d = 0; d < m->R && st == EPX_OK; d++)
            st = epx__win_signal(m->w_stage, d, 0, 1);
        m->w_stage_calls++;
    }
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
    const int layer = g->layer;
    if (!g->arrived) {
        st = m->gpu ? gpu_mig_wait(m->gpu)   /* this rank's transfers */
                    : epx__win_wait(m->w_stage, 0,
                                    (uint64_t)m->R * m->w_stage_calls);
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
    const moe_mig_plan_t *pl = &g->plan;
    epx_rebalance_stats_t s = pl->s;
    if (m->gpu) {
        /* The host's tables first (checked at start), then the device's
         * landing and tables, queued; no barrier (gpu_mig_quiet). */
        st = moe_placement_tables(m, layer, g->next,
                                  (epx_replica_policy_t)g->policy);
        if (st == EPX_OK) {
            const size_t E = (size_t)m->E, U = (size_t)m->U;
            st = gpu_mig_land(m->gpu, layer, w, B, pl->land, pl->nland,
                              m->phy2log + (size_t)layer * U,
                              m->pick + (size_t)layer * E,
                              m->rep_off + (size_t)layer * (E + 1),
                              m->rep + (size_t)layer * U,
                              g->policy == EPX_REPLICA_ROUND_ROBIN);
        }
        moe_mig_free(m);
        if (st != EPX_OK)
            m->broken = 1;
    } else {
        const char *stage = m->w_stage->local;
        for (int i = 0; i < pl->nland; i++)
            memcpy(w + (size_t)pl->land[i] * B,
                   stage + (size_t)pl->land[i] * B, B);
        moe_placement_install(m, layer, g->next,
                              (epx_replica_policy_t)g->policy);  /* checked */
        moe_mig_free(m);
        st = epx_comm_barrier(m->comm);  /* staging free for the next call */
    }
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
