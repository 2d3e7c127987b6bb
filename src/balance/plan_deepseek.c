/* The DeepSeek EPLB policy, one layer: groups onto domains, greedy
 * replication within each domain, greedy packing onto the domain's ranks.
 * Tie-breaking: src/balance/README.md. */
#include <limits.h>

#include "balance/balance.h"

void epx__plan_deepseek(const bal_shape_t *sh, const double *load,
                        bal_work_t *wk, int32_t *phy2log, int32_t *phyrank,
                        int32_t *logcnt)
{
    epx__bal_groups(sh, load, wk);
    for (int d = 0; d < sh->D; d++) {
        const int32_t *m2l = wk->mlog2log + (size_t)d * sh->epd;
        double *w = wk->w;     /* expert loads in domain order, then items */
        for (int i = 0; i < sh->epd; i++)
            w[i] = load[m2l[i]];
        epx__bal_replicate(w, sh->epd, sh->spd, INT_MAX, wk->p2m, wk->prank,
                           wk->mcnt);
        for (int i = 0; i < sh->epd; i++)
            logcnt[m2l[i]] = wk->mcnt[i];
        /* Item loads: load per replica, computed from `load` since w is
         * reused by the packing. */
        for (int k = 0; k < sh->spd; k++)
            w[k] = load[m2l[wk->p2m[k]]] / wk->mcnt[wk->p2m[k]];
        epx__bal_pack(w, sh->spd, sh->rpd, wk, wk->pack, wk->rip);
        for (int k = 0; k < sh->spd; k++) {
            int slot = d * sh->spd + wk->pack[k] * sh->spr + wk->rip[k];
            phy2log[slot] = m2l[wk->p2m[k]];
            phyrank[slot] = wk->prank[k];
        }
    }
}
