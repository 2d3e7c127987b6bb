/*
 * libepx's side of the UCX transport: the module (epx_ucx.so) is loaded
 * when a communicator first has a pair that needs UCX, every rank of it
 * agreeing first that it could (so all fail alike, none waits).  Without
 * UCX pairs nothing is loaded and these calls do nothing.
 */
#include "util/util.h"
#include "core/group.h"
#include "core/module.h"
#include "transport/ucx/ucx_module.h"

static const epx_ucx_module_ops_t *mod;   /* set once loaded */

static epx_status_t ucx_load(void)
{
    const void *ops;
    epx_status_t st = epx__module_load("ucx", &ops);
    if (st == EPX_OK)
        mod = ops;
    return st;
}

const epx_tl_ops_t *epx__ucx_tl(void)
{
    return ucx_load() == EPX_OK ? mod->tl : NULL;
}

epx_status_t epx__ucx_comm_init(epx_comm_t *comm)
{
    if (!comm->ucx_any)
        return EPX_OK;
    epx_status_t st = epx__comm_agree_peer(comm, ucx_load(),
                                           "ucx: loading the transport");
    return st == EPX_OK ? mod->comm_init(comm) : st;
}

void epx__ucx_comm_fini(epx_comm_t *comm, int clean)
{
    if (comm->ucx_any && mod)
        mod->comm_fini(comm, clean);
}

epx_status_t epx__ucx_comm_quiet(epx_comm_t *comm)
{
    return comm->ucx_any && mod ? mod->comm_quiet(comm) : EPX_OK;
}

void epx__ucx_comm_leave(epx_comm_t *comm)
{
    if (comm->ucx_any && mod)
        mod->comm_leave(comm);
}

void epx__ucx_comm_settle(epx_comm_t *comm)
{
    if (comm->ucx_any && mod)
        mod->comm_settle(comm);
}

epx_status_t epx__ucx_win_create(epx_comm_t *comm, size_t size, int nsignals,
                                 void *local, epx_win_t **win)
{
    if (!comm->ucx_any || !mod)
        return epx__error(EPX_ERR_STATE, "ucx: window on a communicator "
                          "without UCX pairs");
    return mod->win_create(comm, size, nsignals, local, win);
}

void epx__ucx_comm_hold(epx_comm_t *comm, void *addr, size_t len, int replace)
{
    if (comm->ucx_any && mod)
        mod->comm_hold(comm, addr, len, replace);
}
