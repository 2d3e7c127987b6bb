/* The communicator's upper half: creation, the transport of each peer,
 * a barrier window.  Its data and the bootstrap's collectives are the
 * lower half (core/group.h), below the transports. */
#ifndef EPX_COMM_H
#define EPX_COMM_H

#include "epx.h"
#include "core/group.h"
#include "transport/transport.h"


/* What every rank tells the others at creation (all-gathered). */
typedef struct epx_rank_info {
    char job[40];
    char host[64];
    char boot_id[40];
    int32_t pid;
    int32_t domain;             /* EPX_TOPO_FILE domain; -1: no file */
    int32_t topo_status;        /* loading EPX_TOPO_FILE (EPX_OK without) */
    char topo_err[128];         /* why it failed, for every rank to report */
    char transports[64];        /* EPX_TRANSPORTS as this rank read it */
    char pidns[32];             /* /proc/self/ns/pid: pids compare only
                                   within one pid namespace */
} epx_rank_info_t;

/* Transport selection (select.c).  Parse an EPX_TRANSPORTS value into a
 * mask of allowed backends (1 << EPX_TL_*). */
epx_status_t epx__select_parse(const char *spec, unsigned *allowed);
/* This rank's domain and EPX_TRANSPORTS, before the all-gather; may load
 * EPX_TOPO_FILE (kept in *topo when it loads, else NULL). */
void epx__select_local(int rank, int nranks, epx_rank_info_t *mine,
                       epx_topo_t **topo);
/* Pick the backend of every peer from every rank's info (same answer on
 * every rank: errors are about the first bad pair, seen by all). */
epx_status_t epx__select(epx_comm_t *comm, const epx_rank_info_t *all);
/* Name of the backend reaching `peer` ("shm", "ucx"), or NULL. */
const char *epx__comm_peer_transport(const epx_comm_t *comm, int peer);
/* "shm to 0-7, ucx to 8-15" (buf of len bytes). */
void epx__select_summary(const epx_comm_t *comm, char *buf, size_t len);

#define EPX_COMM_CTL_SIGNALS 32 /* one per dissemination round */
/* The barrier window's bytes: this rank's "left cleanly" word, then the
 * shrink mailbox (core/shrink.c): two rounds x nranks slots of
 * EPX_COMM_MBOX_SLOT bytes, touched only by epx_comm_shrink. */
#define EPX_COMM_CTL_HEAD 64
#define EPX_COMM_MBOX_SLOT 256
#define EPX_COMM_CTL_BYTES(nranks) \
    (EPX_COMM_CTL_HEAD + 2 * (size_t)(nranks) * EPX_COMM_MBOX_SLOT)

/* Build a communicator around a bootstrap (takes ownership of it). */
/* job: shared job id for resource names, or NULL to let rank 0 draw one. */
epx_status_t epx__comm_create_boot(epx_boot_t *boot, double timeout_s,
                                   const char *job, epx_comm_t **comm);
/* Random hex string of `nhex` characters (nhex + 1 bytes in buf). */
epx_status_t epx__random_hex(char *buf, size_t nhex);
/* The timeout a communicator uses: params' (if set) or EPX_TIMEOUT,
 * checked (positive, finite) and capped. */
epx_status_t epx__timeout(const epx_comm_params_t *params, double *out);

#endif /* EPX_COMM_H */
