/*
 * Throughput-mode readiness (epx_dispatch_poll).
 *
 * After the count exchange every rank knows how many rows each source
 * sends to each of its local units.  A source finishes its data phase at
 * every destination with a flush and a completion word (the data call + 1)
 * in its slot of the destination's `done` array, then the data signal
 * (dispatch.c, signal_data): a receiver that reads the word (acquire) sees
 * the source's rows.  A unit is ready when every source with rows for it
 * has written this call's word.  Only window puts carry the word, so it
 * works on any transport; reading it is a load from this rank's own window.
 */
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "moe/moe.h"

void (*moe_hook_before_data)(epx_moe_t *m) = NULL;

void moe_ht_poll_free(epx_handle_t *h)
{
    free(h->feed_off);
    free(h->feed_src);
    h->feed_off = h->feed_src = NULL;
}

epx_status_t moe_ht_poll_plan(epx_moe_t *m, epx_handle_t *h)
{
    const int nl = moe_nlocal(m, m->rank), R = m->R, u0 = m->first[m->rank];
    if (!h->feed_off) {   /* handles are reused: allocated once */
        h->feed_off = malloc(sizeof(int32_t) * (size_t)(nl + 1));
        h->feed_src = malloc(sizeof(int32_t) * (size_t)(nl > 0 ? nl : 1) *
                             (size_t)R);
        if (!h->feed_off || !h->feed_src) {
            moe_ht_poll_free(h);
            m->broken = 1;   /* peers already count on our data */
            return epx__error(EPX_ERR_NOMEM, "dispatch: out of memory");
        }
    }
    uint64_t call = m->n_counts - 1;
    int32_t n = 0;
    for (int j = 0; j < nl; j++) {
        h->feed_off[j] = n;
        for (int s = 0; s < R; s++)
            if (moe_blk(m, call, s)[proto_cnt_unit(&m->g, u0 + j)] > 0)
                h->feed_src[n++] = s;
    }
    h->feed_off[nl] = n;
    return EPX_OK;
}

epx_status_t moe_ht_poll(epx_moe_t *m, epx_handle_t *h, epx_recv_t *recv,
                         uint8_t *ready, int *num_ready)
{
    if (!h || !recv || !num_ready || h->moe != m)
        return epx__error(EPX_ERR_INVALID,
                          "dispatch_poll: handle, recv or num_ready NULL, or "
                          "handle of another engine");
    const int nl = moe_nlocal(m, m->rank);
    if (!ready && nl > 0)
        return epx__error(EPX_ERR_INVALID, "dispatch_poll: ready is NULL "
                          "(%d local experts)", nl);
    epx_status_t st = moe_check_usable(m, "dispatch_poll");
    if (st != EPX_OK)
        return st;
    if ((m->state != MOE_SENT && m->state != MOE_RECEIVED) || m->cur != h)
        return epx__error(EPX_ERR_STATE, "dispatch_poll: no dispatch of this "
                          "handle between its send and its combine_send");
    int count = 0;
    if (m->state == MOE_RECEIVED) {   /* recv saw every source */
        memset(ready, 1, (size_t)nl);
        count = nl;
    } else {
        /* Sources done with this data phase (recv has not counted it). */
        epx__win_progress(m->win);   /* network puts land by progress */
        const int32_t want = (int32_t)(m->n_data + 1);
        const int32_t *done = (const int32_t *)moe_local(m, m->g.off_done);
        for (int j = 0; j < nl; j++) {
            int ok = 1;
            for (int i = h->feed_off[j]; i < h->feed_off[j + 1] && ok; i++)
                ok = __atomic_load_n(&done[h->feed_src[i]], __ATOMIC_ACQUIRE)
                     == want;
            ready[j] = (uint8_t)ok;
            count += ok;
        }
    }
    moe_recv_describe(m, h, recv);
    *num_ready = count;
    return EPX_OK;
}
