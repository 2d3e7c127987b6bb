/* The communicator: ranks, bootstrap, per-peer transport, a barrier window. */
#ifndef EPX_COMM_H
#define EPX_COMM_H

#include "epx.h"
#include "core/bootstrap.h"
#include "transport/transport.h"

struct epx_comm {
    int rank, nranks;
    double timeout_s;
    epx_boot_t *boot;
    char job[40];               /* unique job id shared by all ranks (hex) */
    unsigned next_win;          /* windows created so far (names) */
    const epx_tl_ops_t *tl;     /* v0: shm for every peer */
    epx_win_t *ctl;             /* barrier window */
    uint64_t barrier_epoch;
    int barrier_rounds;         /* ceil(log2(nranks)) dissemination rounds */
    void *owned;                /* freed with the comm (bootstrap context) */
    epx_topo_t *topo;           /* epx_comm_topology's map, built on first use */
};

#define EPX_COMM_CTL_SIGNALS 32 /* one per dissemination round */

epx_status_t epx__comm_allgather(epx_comm_t *comm, const void *send,
                                 void *recv, size_t bytes);
/* Build a communicator around a bootstrap (takes ownership of it). */
/* job: shared job id for resource names, or NULL to let rank 0 draw one. */
epx_status_t epx__comm_create_boot(epx_boot_t *boot, double timeout_s,
                                   const char *job, epx_comm_t **comm);
/* Random hex string of `nhex` characters (nhex + 1 bytes in buf). */
epx_status_t epx__random_hex(char *buf, size_t nhex);
double epx__comm_timeout(const epx_comm_t *comm);
/* The timeout a communicator uses: params' (if set) or EPX_TIMEOUT,
 * checked (positive, finite) and capped. */
epx_status_t epx__timeout(const epx_comm_params_t *params, double *out);

#endif /* EPX_COMM_H */
