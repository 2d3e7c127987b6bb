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
 */
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "moe/moe.h"

epx_status_t epx_moe_register_weights(epx_moe_t *m, int layer, void *base,
                                      size_t bytes)
{
    if (!m)
        return epx__error(EPX_ERR_INVALID, "balance: engine NULL");
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

epx_status_t epx_moe_rebalance(epx_moe_t *m, int layer, const int32_t *phy2log,
                               epx_replica_policy_t policy,
                               epx_rebalance_stats_t *out)
{
    if (!m)
        return epx__error(EPX_ERR_INVALID, "balance: engine NULL");
    epx_status_t st = moe_check_usable(m, "balance");
    if (st != EPX_OK)
        return st;
    if (m->state == MOE_SENT || m->state == MOE_COMBINING)
        return epx__error(EPX_ERR_STATE, "balance: a dispatch of the engine "
                          "is in flight");
    const int U = m->U, spr = U / m->R, me = m->rank;
    epx_rebalance_stats_t s = { sizeof(s), 0, 0, 0, 0 };
    epx_status_t mine = EPX_OK;
    if (m->p.num_slots <= 0 || layer < 0 || layer >= m->layers ||
        !m->w_base[layer] || !phy2log)
        mine = epx__error(EPX_ERR_INVALID, "balance: layer %d has no registered "
                          "weights, or phy2log NULL", layer);
    const int32_t *old = mine == EPX_OK ? m->phy2log + (size_t)layer * (size_t)U
                                        : NULL;
    if (mine == EPX_OK && old[0] < 0)
        mine = epx__error(EPX_ERR_INVALID, "balance: layer %d has no placement "
                          "to move from (epx_moe_set_placement first)", layer);
    /* Validate the new placement the way epx_moe_set_placement does, but
     * before anything moves: install it on a copy first. */
    int32_t *keep = malloc(sizeof(int32_t) * (size_t)U);
    if (!keep)
        return epx__error(EPX_ERR_NOMEM, "balance: out of memory");
    if (mine == EPX_OK) {
        epx_replica_policy_t was = (epx_replica_policy_t)m->policy[layer];
        memcpy(keep, old, sizeof(int32_t) * (size_t)U);
        mine = epx_moe_set_placement(m, layer, phy2log, policy);
        if (mine == EPX_OK)      /* back to the old one until the switch */
            epx_moe_set_placement(m, layer, keep, was);
    }
    /* Agree (collective) before any byte moves. */
    int32_t v = mine, *all = malloc(sizeof(int32_t) * (size_t)m->R);
    if (!all) {
        free(keep);
        return epx__error(EPX_ERR_NOMEM, "balance: out of memory");
    }
    st = epx__comm_allgather(m->comm, &v, all, sizeof(v));
    for (int r = 0; r < m->R && st == EPX_OK; r++)
        if (all[r] != EPX_OK)
            st = mine != EPX_OK ? mine
                : epx__error(EPX_ERR_PEER, "balance: rank %d refused the "
                             "rebalance of layer %d", r, layer);
    free(all);
    if (st != EPX_OK) {
        free(keep);
        return st;
    }
    const size_t B = m->w_bytes[layer];
    char *w = m->w_base[layer], *stage = m->w_stage->local;
    /* Sends: old weights of our slots to the stagings that need them. */
    for (int u = 0; u < U && st == EPX_OK; u++) {
        int e = phy2log[u], d = u / spr;
        if (keep[u] == e)
            continue;
        int src = source_slot(m, keep, u, e);
        if (src / spr != me)
            continue;
        st = epx__win_put(m->w_stage, d, (size_t)(u % spr) * B,
                          w + (size_t)(src % spr) * B, B);
        if (d == me)
            s.local_copies++;
        else
            s.sent++;
    }
    for (int d = 0; d < m->R && st == EPX_OK; d++)
        st = epx__win_signal(m->w_stage, d, 0, 1);
    m->w_stage_calls++;
    if (st == EPX_OK)
        st = epx__win_wait(m->w_stage, 0, (uint64_t)m->R * m->w_stage_calls);
    if (st != EPX_OK) {
        m->broken = 1;
        free(keep);
        return st;
    }
    /* Everything arrived: land it and switch the layer. */
    for (int j = 0; j < spr; j++) {
        int u = me * spr + j;
        if (keep[u] == phy2log[u]) {
            s.unchanged++;
            continue;
        }
        memcpy(w + (size_t)j * B, stage + (size_t)j * B, B);
        if (source_slot(m, keep, u, phy2log[u]) / spr != me)
            s.received++;
    }
    free(keep);
    epx_moe_set_placement(m, layer, phy2log, policy);   /* validated above */
    st = epx_comm_barrier(m->comm);      /* staging free for the next call */
    if (st == EPX_OK && out) {
        size_t n = out->struct_size && out->struct_size < sizeof(s)
            ? out->struct_size : sizeof(s);
        s.struct_size = n;
        memcpy(out, &s, n);
    }
    return st;
}
