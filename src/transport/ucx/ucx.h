/* UCX backend internals: the communicator's UCP context, worker and
 * endpoints (ucx_comm.c), shared by its windows (ucx_win.c). */
#ifndef EPX_TRANSPORT_UCX_H
#define EPX_TRANSPORT_UCX_H

#include <ucp/api/ucp.h>
#include "core/group.h"
#include "transport/transport.h"

/* What the active-message handler (ucx_am.c) needs of a window. */
typedef struct epx_ucx_win_view {
    void *local;                /* data area */
    size_t size;
    uint64_t *sig;              /* [nsignals][nranks] words, by source */
    int nsignals;
} epx_ucx_win_view_t;

typedef struct epx_ucx_comm {
    ucp_context_h ctx;
    ucp_worker_h worker;
    int efd;                    /* the worker's event fd (wake-up), or -1 */
    ucp_ep_h *eps;              /* [nranks]; NULL where the peer uses shm */
    epx_status_t *ep_status;    /* [nranks]; set by the error handler */
    struct ucx_ep_ctx **ep_ctx; /* [nranks] the error handler's argument */
    struct ucx_hold *holds;     /* address ranges of destroyed windows */
    int nholds, cap_holds;
    int rank, nranks;
    /* Puts as active messages (ucx_am.c), for peers without RMA lanes. */
    int am_any;                 /* some rank of the comm does (agreed) */
    unsigned char *am_put;      /* [nranks] 1: puts to this peer are messages */
    uint64_t *am_seq;           /* [nranks] last sequence number sent */
    uint64_t *am_next;          /* [nranks] next sequence number to apply */
    struct ucx_am_parked **parked;   /* arrived before their turn */
    int nparked, cap_parked;
    epx_ucx_win_view_t **wins;  /* [cap_wins] by window id; NULL: none */
    int cap_wins;
    uint32_t win_count;         /* ids handed out */
    struct epx_ucx_comm *kept;  /* next of the ones left to process exit */
    struct epx_ucx_live *live;  /* the peers' liveness (ucx_live.c) */
} epx_ucx_comm_t;

typedef struct epx_ucx_live epx_ucx_live_t;

/* Wait for a request of ucp_*_nbx (NULL: done at once) while progressing
 * the worker; frees it.  Fails with EPX_ERR_TIMEOUT after `timeout_s`
 * (the request is then released when it completes), EPX_ERR_PEER when UCX
 * reports the peer's endpoint broken. */
epx_status_t epx__ucx_wait(epx_comm_t *comm, void *req, double timeout_s,
                           const char *what, int peer);

/* Every rank's address of `worker` (NULL: none, length 0), agreeing on
 * `mine` first; *all holds nranks addresses `*stride` bytes apart (free
 * it).  Collective. */
epx_status_t epx__ucx_addr_gather(epx_comm_t *comm, ucp_worker_h worker,
                                  epx_status_t mine, char **all,
                                  size_t *stride);

/* ucx_live.c: the heartbeat thread.  init is collective (after the data
 * endpoints); leave says goodbye to the peers (epx_comm_destroy); fini
 * stops the thread and releases its worker, before anything it reads. */
epx_status_t epx__ucx_live_init(epx_comm_t *comm, epx_ucx_comm_t *u);
void epx__ucx_live_leave(epx_ucx_comm_t *u);
void epx__ucx_live_fini(epx_ucx_comm_t *u);

/* ucx_am.c */
epx_status_t epx__ucx_am_init(epx_comm_t *comm, epx_ucx_comm_t *u);
void epx__ucx_am_fini(epx_ucx_comm_t *u);
int epx__ucx_ep_has_rma(ucp_ep_h ep);
/* Every rank registers its windows in the same (collective) order, so a
 * window has the same id everywhere. */
epx_status_t epx__ucx_am_win_add(epx_ucx_comm_t *u, epx_ucx_win_view_t *w,
                                 uint32_t *id);
void epx__ucx_am_win_remove(epx_ucx_comm_t *u, uint32_t id);
/* Windows created and not destroyed yet. */
int epx__ucx_am_win_live(const epx_ucx_comm_t *u);
epx_status_t epx__ucx_am_put(epx_comm_t *comm, int peer, uint32_t win,
                             size_t off, const void *src, size_t len);
epx_status_t epx__ucx_am_signal(epx_comm_t *comm, int peer, uint32_t win,
                                int slot, uint64_t total);

#endif /* EPX_TRANSPORT_UCX_H */
