/* The backends built into this library, by name, and which one reaches a
 * peer (tests ask; the conformance suite skips a backend not built). */
#include <string.h>
#include "transport/transport.h"

/* Weak: defined only where the ucx backend is built in. */
extern const epx_tl_ops_t epx__tl_ucx __attribute__((weak));

const epx_tl_ops_t *epx__tl_find(const char *name)
{
    const epx_tl_ops_t *const builtin[] = { &epx__tl_shm, &epx__tl_ucx };
    for (size_t i = 0; i < sizeof(builtin) / sizeof(builtin[0]); i++)
        if (name && builtin[i] && strcmp(builtin[i]->name, name) == 0)
            return builtin[i];
    return NULL;
}

/* v0: a window has one backend for every peer.  A window mixing backends
 * must answer per peer here. */
const char *epx__win_peer_tl(const epx_win_t *w, int peer)
{
    (void)peer;
    return w->ops->name;
}
