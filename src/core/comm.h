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
    size_t shm_bytes;           /* live shm windows of this rank (bytes) */
    int nwin;                   /* live windows, the barrier's included */
    int destroyed;              /* epx_comm_destroy called; teardown waits
                                   for the engines' windows */
    int tearing;                /* teardown under way */
    uint8_t *peer_tl;           /* [nranks] EPX_TL_* reaching each rank */
    int tl_peers[EPX_TL_COUNT]; /* ranks (self included) per backend */
    int ucx_any;                /* some pair of the comm uses ucx */
    struct epx_ucx_comm *ucx;   /* UCX context, worker, endpoints, or NULL */
    epx_win_t *ctl;             /* barrier window */
    uint64_t barrier_epoch;
    int barrier_rounds;         /* ceil(log2(nranks)) dissemination rounds */
    void *owned;                /* freed with the comm (bootstrap context) */
    epx_topo_t *topo;           /* epx_comm_topology's map, built on first use */
};

/* What every rank tells the others at creation (all-gathered). */
typedef struct epx_rank_info {
    char job[40];
    char host[64];
    char boot_id[40];
    int32_t pid;
    int32_t domain;             /* EPX_TOPO_FILE domain; -1: no file */
    int32_t topo_status;        /* loading EPX_TOPO_FILE (EPX_OK without) */
    char transports[64];        /* EPX_TRANSPORTS as this rank read it */
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

/* UCX per communicator (src/transport/ucx): collective when any pair uses
 * UCX; a rank without UCX peers takes part without opening anything. */
epx_status_t epx__ucx_comm_init(epx_comm_t *comm);
/* clean: every rank reached this point together (the destruction
 * barriers passed); otherwise the worker is left to the process exit. */
void epx__ucx_comm_fini(epx_comm_t *comm, int clean);
/* Local: returns once every put and signal this rank issued over UCX has
 * landed in its target's memory (a worker flush: over tcp a put lands
 * only when its target progresses, so this progresses ours meanwhile). */
epx_status_t epx__ucx_comm_quiet(epx_comm_t *comm);

#define EPX_COMM_CTL_SIGNALS 32 /* one per dissemination round */

epx_status_t epx__comm_allgather(epx_comm_t *comm, const void *send,
                                 void *recv, size_t bytes);
/* Collective: every rank learns whether every rank succeeded.  Returns
 * EPX_OK, or the first failed rank's status (lowest rank) with that rank
 * in *bad_rank (may be NULL; -1 when the all-gather itself failed or all
 * succeeded).  Call it on every path, failed or not, before a step that
 * needs all ranks, so one rank's local failure fails all of them at once
 * instead of leaving the others waiting. */
epx_status_t epx__comm_agree(epx_comm_t *comm, epx_status_t mine,
                             int *bad_rank);
/* The same, returning this rank's own failure as is and a peer's as
 * EPX_ERR_PEER, "<what>: rank N failed (its status)". */
epx_status_t epx__comm_agree_peer(epx_comm_t *comm, epx_status_t mine,
                                  const char *what);
/* Build a communicator around a bootstrap (takes ownership of it). */
/* job: shared job id for resource names, or NULL to let rank 0 draw one. */
epx_status_t epx__comm_create_boot(epx_boot_t *boot, double timeout_s,
                                   const char *job, epx_comm_t **comm);
/* Random hex string of `nhex` characters (nhex + 1 bytes in buf). */
epx_status_t epx__random_hex(char *buf, size_t nhex);
double epx__comm_timeout(const epx_comm_t *comm);
/* A window of the communicator was destroyed: the last engine window of a
 * communicator already destroyed by the caller completes its teardown. */
void epx__comm_win_gone(epx_comm_t *comm);
/* A user of the communicator other than a window (a device rank's
 * engine) holds it as a window does; epx__comm_win_gone lets go. */
void epx__comm_hold(epx_comm_t *comm);
/* The timeout a communicator uses: params' (if set) or EPX_TIMEOUT,
 * checked (positive, finite) and capped. */
epx_status_t epx__timeout(const epx_comm_params_t *params, double *out);

#endif /* EPX_COMM_H */
