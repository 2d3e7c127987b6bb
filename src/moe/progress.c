/*
 * Where each rank is, for finding a slow or stuck rank: every rank keeps
 * a small record in its own window (the call it is in, the step, the
 * layer), stored as it enters each step; a rank whose wait times out reads
 * the records of the peers it maps and names the ones behind it.  One
 * store per step: nothing on the data path.  Peers reached over UCX send
 * their last record (one word, EPX_PROGRESS_PACK) with every heartbeat
 * (src/transport/ucx/ucx_live.c, every 0.5 s), which stands in for it.
 */
#include <stdio.h>
#include <string.h>

#include "util/util.h"
#include "moe/moe.h"

static const char *step_name(int64_t at)
{
    switch (at) {
    case MOE_AT_DISPATCH_SEND: return "dispatch_send";
    case MOE_AT_DISPATCH_RECV: return "dispatch_recv";
    case MOE_AT_COMBINE_SEND: return "combine_send";
    case MOE_AT_COMBINE_RECV: return "combine_recv";
    case MOE_AT_DONE: return "the end";
    default: return "between calls";
    }
}

void moe_progress(epx_moe_t *m, int at, int layer, uint64_t call)
{
    if (!m->win || !m->win_progress)
        return;
    int64_t *p = (int64_t *)moe_local(m, m->win_progress);
    /* Only forward: low latency works on several calls at once, and the
     * record keeps the furthest (a combine of call n after the dispatch
     * of n + 1 is not "behind"). */
    if ((int64_t)call < p[MOE_PR_CALL] ||
        ((int64_t)call == p[MOE_PR_CALL] && at < p[MOE_PR_AT]))
        return;
    __atomic_store_n(&p[MOE_PR_CALL], (int64_t)call, __ATOMIC_RELAXED);
    __atomic_store_n(&p[MOE_PR_LAYER], (int64_t)layer, __ATOMIC_RELAXED);
    __atomic_store_n(&p[MOE_PR_AT], (int64_t)at, __ATOMIC_RELEASE);
    if (m->comm->ucx_any)   /* sent with the UCX heartbeats */
        __atomic_store_n(&m->comm->progress_pub,
                         EPX_PROGRESS_PACK(m->eid, at, layer, call),
                         __ATOMIC_RELAXED);
}

/* A network peer's record as of its last heartbeat, when it is about this
 * engine: 1 and the words, else 0. */
static int net_record(const epx_moe_t *m, int r, int64_t *pc, int64_t *pa,
                      int64_t *pl, uint32_t call_now)
{
    if (!m->comm->ucx_any)
        return 0;
    uint64_t v = __atomic_load_n(&m->comm->net_progress[r], __ATOMIC_RELAXED);
    if (!v || v >> 52 != EPX_PROGRESS_PACK(m->eid, 0, 0, 0) >> 52)
        return 0;
    /* the call mod 2^32, unwrapped near ours */
    int32_t d = (int32_t)((uint32_t)v - call_now);
    *pc = (int64_t)call_now + d;
    *pa = (int64_t)(v >> 48 & 15);
    *pl = (int64_t)(v >> 32 & 0xffff);
    return 1;
}

epx_status_t moe_diagnose(epx_moe_t *m, epx_status_t st, const char *what)
{
    if (st != EPX_ERR_TIMEOUT || !m->win || !m->win_progress)
        return st;
    char msg[480], prev[200];
    snprintf(prev, sizeof(prev), "%s", epx_last_error());
    const int64_t *mine = (const int64_t *)moe_local(m, m->win_progress);
    const int64_t call = mine[MOE_PR_CALL], at = mine[MOE_PR_AT];
    int n = snprintf(msg, sizeof(msg), "%s (call %lld, layer %lld): ranks "
                     "behind:", what, (long long)call,
                     (long long)mine[MOE_PR_LAYER]);
    int behind = 0, unknown = 0, shown = 0, heard = 0;
    for (int r = 0; r < m->R; r++) {
        if (r == m->rank)
            continue;
        const char *pw = epx__win_peer_ptr(m->win, r);
        int64_t pc, pa, pl;
        if (pw) {
            const int64_t *p = (const int64_t *)(pw + m->win_progress);
            pc = __atomic_load_n(&p[MOE_PR_CALL], __ATOMIC_RELAXED);
            pa = __atomic_load_n(&p[MOE_PR_AT], __ATOMIC_ACQUIRE);
            pl = __atomic_load_n(&p[MOE_PR_LAYER], __ATOMIC_RELAXED);
        } else if (net_record(m, r, &pc, &pa, &pl, (uint32_t)call)) {
            heard++;   /* over the network: its last heartbeat's record */
        } else {
            unknown++;
            continue;
        }
        int late = pc < call || (pc == call && pa < at);
        if (!late)
            continue;
        behind++;
        /* The message is short; the log has every rank behind. */
        EPX_LOG(EPX_LOG_ERROR, "moe", m->rank, "%s: rank %d is behind: %s "
                "of call %lld (layer %lld)", what, r, step_name(pa),
                (long long)pc, (long long)pl);
        if (shown < 6 && n < (int)sizeof(msg) - 64) {
            n += snprintf(msg + n, sizeof(msg) - (size_t)n,
                          "%s rank %d in %s of call %lld (layer %lld)",
                          shown ? "," : "", r, step_name(pa), (long long)pc,
                          (long long)pl);
            shown++;
        }
    }
    if (behind > shown)
        n += snprintf(msg + n, sizeof(msg) - (size_t)n, ", and %d more (log)",
                      behind - shown);
    if (behind == 0)
        n += snprintf(msg + n, sizeof(msg) - (size_t)n, " none seen");
    if (heard && n < (int)sizeof(msg))
        n += snprintf(msg + n, sizeof(msg) - (size_t)n, "; %d over the "
                      "network as of their last heartbeat", heard);
    if (unknown && n < (int)sizeof(msg))
        snprintf(msg + n, sizeof(msg) - (size_t)n, "; %d over the network "
                 "not heard from", unknown);
    return epx__error(st, "%s [%s]", msg, prev);
}
