/*
 * The CUDA module's side of the NCCL backend: the NCCL module
 * (epx_nccl.so, which needs libnccl) is loaded by the first engine that
 * asks for EPX_GPU_BACKEND_NCCL, so the windows backend runs where NCCL is
 * absent.  Every call after create has a handle, so the module is there.
 */
#include <stdio.h>
#include "cuda/nccl_ex.h"
#include "core/group.h"
#include "core/module.h"
#include "util/util.h"

static const epx_nccl_module_ops_t *mod;

epx_status_t epx__nccl_create(epx_comm_t *comm, void *adopt, epx_nccl_t **nc)
{
    const void *ops;
    epx_status_t st = epx__module_load("nccl", &ops);
    if (st != EPX_OK) {
        char why[1024];  /* the message is rewritten in its own buffer */
        snprintf(why, sizeof(why), "%s", epx_last_error());
        st = epx__error(EPX_ERR_UNSUPPORTED, "cuda moe: the NCCL backend: "
                        "%s", why);
    }
    /* Collective: no rank goes on to exchange NCCL's id with one that
     * could not load it. */
    if ((st = epx__comm_agree_peer(comm, st, "nccl: loading the backend")) !=
        EPX_OK)
        return st;
    mod = ops;
    return mod->create(comm, adopt, nc);
}

void epx__nccl_destroy(epx_nccl_t *nc)
{
    if (nc)
        mod->destroy(nc);
}

int epx__nccl_adopted(const epx_nccl_t *nc) { return mod->adopted(nc); }

epx_status_t epx__nccl_counts(epx_nccl_t *nc, const proto_geom_t *g,
                              const int32_t *blk, int32_t *cnt, void *stream)
{
    return mod->counts(nc, g, blk, cnt, stream);
}

epx_status_t epx__nccl_dispatch(epx_nccl_t *nc, const proto_geom_t *g,
                                char *stage, char *win, const int64_t *nsend,
                                const int64_t *sendoff, const int64_t *nrecv,
                                const int64_t *rbase, void *stream)
{
    return mod->dispatch(nc, g, stage, win, nsend, sendoff, nrecv, rbase,
                         stream);
}

epx_status_t epx__nccl_combine(epx_nccl_t *nc, const proto_geom_t *g,
                               const void *y, char *win, const int64_t *nsend,
                               const int64_t *sendoff, const int64_t *nrecv,
                               const int64_t *rbase, void *stream)
{
    return mod->combine(nc, g, y, win, nsend, sendoff, nrecv, rbase, stream);
}

epx_status_t epx__nccl_p2p(epx_nccl_t *nc, const epx_nccl_p2p_t *ops, int n,
                           void *stream)
{
    return mod->p2p(nc, ops, n, stream);
}

epx_status_t epx__nccl_dispatch_em(epx_nccl_t *nc, const proto_geom_t *g,
                                   char *stage, char *rstage, char *win,
                                   const int64_t *ent, const int64_t *rows,
                                   void *stream)
{
    return mod->dispatch_em(nc, g, stage, rstage, win, ent, rows, stream);
}
