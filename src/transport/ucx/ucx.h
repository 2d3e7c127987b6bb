/* UCX backend internals: the communicator's UCP context, worker and
 * endpoints (ucx_comm.c), shared by its windows (ucx_win.c). */
#ifndef EPX_TRANSPORT_UCX_H
#define EPX_TRANSPORT_UCX_H

#include <ucp/api/ucp.h>
#include "core/comm.h"

typedef struct epx_ucx_comm {
    ucp_context_h ctx;
    ucp_worker_h worker;
    int efd;                    /* the worker's event fd (wake-up), or -1 */
    ucp_ep_h *eps;              /* [nranks]; NULL where the peer uses shm */
    epx_status_t *ep_status;    /* [nranks]; set by the error handler */
    struct ucx_ep_ctx **ep_ctx; /* [nranks] the error handler's argument */
    struct ucx_hold *holds;     /* address ranges of destroyed windows */
    int nholds, cap_holds;
} epx_ucx_comm_t;

/* Wait for a request of ucp_*_nbx (NULL: done at once) while progressing
 * the worker; frees it.  Fails with EPX_ERR_TIMEOUT after `timeout_s`
 * (the request is then released when it completes), EPX_ERR_PEER when UCX
 * reports the peer's endpoint broken. */
epx_status_t epx__ucx_wait(epx_comm_t *comm, void *req, double timeout_s,
                           const char *what, int peer);

#endif /* EPX_TRANSPORT_UCX_H */
