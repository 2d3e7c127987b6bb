/*
 * The engine's public calls: checks every executor needs, then the
 * executor's ops (ops.h).  What each executor does is in its own files.
 */
#include <stdlib.h>

#include "util/util.h"
#include "moe/moe.h"

static epx_status_t bad_handle(const char *what)
{
    return epx__error(EPX_ERR_INVALID, "%s: engine, handle or output NULL, "
                      "or a handle of another engine", what);
}

epx_status_t epx_dispatch_send(epx_moe_t *m, const epx_dispatch_args_t *a,
                               epx_handle_t **handle)
{
    if (!m)
        return epx__error(EPX_ERR_INVALID, "dispatch: engine NULL");
    return m->ops->dispatch_send(m, a, handle);
}

epx_status_t epx_dispatch_recv(epx_moe_t *m, epx_handle_t *h, epx_recv_t *out)
{
    if (!m || !h || !out || h->moe != m)
        return bad_handle("dispatch");
    return m->ops->dispatch_recv(m, h, out);
}

/* Per-expert readiness of a dispatch in flight: low latency reads the
 * per-(expert, source) count words (ll_dispatch.c), throughput mode the
 * per-source completion words (ht_poll.c). */
epx_status_t epx_dispatch_poll(epx_moe_t *m, epx_handle_t *h, epx_recv_t *recv,
                               uint8_t *ready, int *num_ready)
{
    if (!m)
        return epx__error(EPX_ERR_INVALID, "dispatch_poll: engine NULL");
    /* A caller polling in a loop learns of a dead peer here too. */
    epx_status_t alive = epx__comm_alive(m->comm);
    if (alive != EPX_OK)
        return alive;
    if (!h || !recv || !num_ready || h->moe != m ||
        (!ready && epx_moe_num_local_experts(m) > 0))
        return epx__error(EPX_ERR_INVALID,
                          "dispatch_poll: handle, recv, ready (%d local "
                          "experts) or num_ready NULL, or a handle of "
                          "another engine", epx_moe_num_local_experts(m));
    return m->ops->dispatch_poll(m, h, recv, ready, num_ready);
}

epx_status_t epx_combine_send(epx_moe_t *m, epx_handle_t *h,
                              const epx_combine_args_t *a)
{
    if (!m || !h || h->moe != m)
        return bad_handle("combine");
    return m->ops->combine_send(m, h, a);
}

epx_status_t epx_combine_recv(epx_moe_t *m, epx_handle_t *h, epx_tensor_t *out)
{
    if (!m || !h || h->moe != m)
        return bad_handle("combine");
    return m->ops->combine_recv(m, h, out);
}

epx_status_t epx_moe_check(epx_moe_t *m, int64_t *dropped)
{
    if (!m)
        return epx__error(EPX_ERR_INVALID, "moe check: engine NULL");
    return m->ops->check(m, dropped);
}

void epx_handle_release(epx_handle_t *h)
{
    if (!h)
        return;
    epx_moe_t *m = h->moe;
    if (m)
        m->ops->release(m, h);
    if (m && !m->spare)
        m->spare = h;      /* reused by the next dispatch */
    else
        moe_handle_free(h);
}

int64_t epx_handle_num_tokens(const epx_handle_t *h) { return h ? h->T : -1; }
