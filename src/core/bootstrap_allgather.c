/* Bootstrap over a caller-supplied all-gather (torch.distributed, a KV
 * store, MPI...): nothing to connect, just forward. */
#include <stdlib.h>
#include "util/util.h"
#include "core/bootstrap.h"

typedef struct cb_boot {
    epx_boot_t base;
    epx_allgather_fn fn;
    void *ctx;
} cb_boot_t;

static epx_status_t cb_allgather(epx_boot_t *base, const void *send,
                                 void *recv, size_t bytes)
{
    cb_boot_t *b = (cb_boot_t *)base;
    int rc = b->fn(b->ctx, send, recv, bytes);
    if (rc != 0)
        return epx__error(EPX_ERR_BOOTSTRAP,
                          "bootstrap: the caller's all-gather returned %d", rc);
    return EPX_OK;
}

static void cb_destroy(epx_boot_t *base) { free(base); }

epx_status_t epx__boot_allgather_create(int rank, int nranks,
                                        epx_allgather_fn fn, void *ctx,
                                        double timeout_s, epx_boot_t **out)
{
    if (!fn || nranks < 1 || nranks > EPX_MAX_RANKS || rank < 0 ||
        rank >= nranks)
        return epx__error(EPX_ERR_INVALID,
                          "bootstrap: all-gather bootstrap needs a function and "
                          "0 <= rank (%d) < nranks (%d) <= %d", rank, nranks,
                          EPX_MAX_RANKS);
    cb_boot_t *b = calloc(1, sizeof(*b));
    if (!b)
        return epx__error(EPX_ERR_NOMEM, "bootstrap: out of memory");
    b->base.rank = rank;
    b->base.nranks = nranks;
    b->base.allgather = cb_allgather;
    b->base.destroy = cb_destroy;
    b->base.timeout_s = timeout_s;
    b->fn = fn;
    b->ctx = ctx;
    *out = &b->base;
    return EPX_OK;
}
