/* The available backends, by name, and which one reaches a peer (tests
 * ask; the conformance suite needs the UCX module of a build with UCX). */
#include <string.h>
#include "core/group.h"
#include "transport/transport.h"

const epx_tl_ops_t *epx__tl_find(const char *name)
{
    for (int t = 0; name && t < EPX_TL_COUNT; t++) {
        const epx_tl_ops_t *ops = epx__tl_get(t);
        if (ops && strcmp(ops->name, name) == 0)
            return ops;
    }
    return NULL;
}

/* The backend the communicator's selection gave the pair (a composite
 * window routes each peer to it). */
const char *epx__win_peer_tl(const epx_win_t *w, int peer)
{
    if (!w || peer < 0 || peer >= w->comm->nranks)
        return NULL;
    const epx_tl_ops_t *ops = epx__tl_get(w->comm->peer_tl[peer]);
    return ops ? ops->name : NULL;
}
