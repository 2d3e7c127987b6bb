/* Built without UCX: selection never gives a pair to ucx (it refuses with
 * EPX_ERR_UNSUPPORTED), so these are never reached with UCX peers. */
#include "util/util.h"
#include "core/group.h"
#include "transport/transport.h"

epx_status_t epx__ucx_comm_init(epx_comm_t *comm)
{
    if (comm->ucx_any)
        return epx__error(EPX_ERR_UNSUPPORTED, "ucx: not built in");
    return EPX_OK;
}

void epx__ucx_comm_fini(epx_comm_t *comm, int clean) { (void)comm; (void)clean; }

epx_status_t epx__ucx_comm_quiet(epx_comm_t *comm)
{
    (void)comm;
    return EPX_OK;
}

epx_status_t epx__ucx_win_create(epx_comm_t *comm, size_t size, int nsignals,
                                 void *local, epx_win_t **win)
{
    (void)comm; (void)size; (void)nsignals; (void)local; (void)win;
    return epx__error(EPX_ERR_UNSUPPORTED, "ucx: not built in");
}

void epx__ucx_comm_hold(epx_comm_t *comm, void *addr, size_t len, int replace)
{
    (void)comm; (void)addr; (void)len; (void)replace;
}
