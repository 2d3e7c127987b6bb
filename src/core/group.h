/*
 * The communicator's lower half: its data, and the collectives of its
 * bootstrap (all-gather, agreement).  Everything here sits below the
 * transports, which use it to set up windows; the communicator's upper
 * half (core/comm.h: creation, transport selection, barrier) sits above
 * them.  Nothing here includes a transport header.
 */
#ifndef EPX_CORE_GROUP_H
#define EPX_CORE_GROUP_H

#include <stddef.h>
#include <stdint.h>
#include "epx.h"
#include "core/bootstrap.h"

/* Backends, by index in epx_comm_t.peer_tl (src/transport). */
enum { EPX_TL_SHM = 0, EPX_TL_UCX = 1, EPX_TL_COUNT = 2 };

struct epx_win;

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
    int settled;                /* destroyed with an engine window alive:
                                   the UCX exchanges of the teardown done */
    int tearing;                /* teardown under way */
    uint8_t *peer_tl;           /* [nranks] EPX_TL_* reaching each rank */
    int tl_peers[EPX_TL_COUNT]; /* ranks (self included) per backend */
    int ucx_any;                /* some pair of the comm uses ucx */
    struct epx_ucx_comm *ucx;   /* UCX context, worker, endpoints, or NULL */
    struct epx_win *ctl;             /* barrier window */
    uint64_t barrier_epoch;
    int barrier_rounds;         /* ceil(log2(nranks)) dissemination rounds */
    void *owned;                /* freed with the comm (bootstrap context) */
    epx_topo_t *topo;           /* epx_comm_topology's map, built on first use */
    /* frees the communicator once destroyed and its last window gone
     * (comm.c: the upper half, which group.c may not call by name) */
    void (*teardown)(epx_comm_t *comm);
    /* liveness of the peers on this host: a pidfd each (fd -1 for the
     * others), polled by epx__comm_alive at most every 50 ms */
    struct pollfd *alive;       /* [nranks], or NULL (none to watch) */
    int32_t *peer_pid;          /* [nranks] as all-gathered */
    /* [nranks] each watched peer's "left cleanly" word, in its barrier
     * window as mapped here: a peer that destroyed its communicator and
     * exited is not dead to the others (comm.c sets the pointers) */
    const int32_t **peer_left;
    double next_alive;          /* epx__now() of the next poll */
    int dead_rank;              /* a peer seen dead, else -1 */
    /* A peer reached over the network seen dead by the UCX module's
     * liveness thread (ucx_live.c): it writes net_why, then publishes the
     * rank in net_dead (release; -1: none), once. */
    int net_dead;
    char net_why[200];
    /* [nranks] every peer seen gone, not only the first: 1 dead (pidfd or
     * the UCX liveness thread, which writes it), 2 left on purpose.
     * Read by epx_comm_shrink (core/shrink.c) to agree on the live set. */
    uint8_t *peer_gone;
    uint64_t mbox_seq;          /* shrink mailbox rounds so far */
    /* Where this rank is (the last engine step it entered, packed by
     * EPX_PROGRESS_PACK) for the UCX liveness thread to send with every
     * heartbeat, and where each UCX peer was by its last heartbeat (0:
     * nothing heard): a timeout names where network peers are too. */
    uint64_t progress_pub;
    uint64_t *net_progress;     /* [nranks] (written only with UCX) */
    unsigned next_engine;       /* engines created: their id */
    struct epx_comm *parent;    /* shrunk from it: its mailbox is our
                                   bootstrap, progressed with ours */
    int successors;             /* communicators shrunk from this one that
                                   still use its mailbox as their bootstrap
                                   (each also counts in nwin) */
};

/* A progress record in one word: engine id (mod 4095, + 1), step (0-15),
 * layer (mod 65536), call (mod 2^32). */
#define EPX_PROGRESS_PACK(engine, at, layer, call)                            \
    ((uint64_t)((engine) % 4095u + 1u) << 52 |                               \
     (uint64_t)((at) & 15) << 48 | (uint64_t)((layer) & 0xffff) << 32 |       \
     (uint64_t)((call) & 0xffffffffu))

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
double epx__comm_timeout(const epx_comm_t *comm);
/* A window of the communicator was destroyed: the last engine window of a
 * communicator already destroyed by the caller completes its teardown. */
void epx__comm_win_gone(epx_comm_t *comm);
/* A user of the communicator other than a window (a device rank's
 * engine) holds it as a window does; epx__comm_win_gone lets go. */
void epx__comm_hold(epx_comm_t *comm);
/* EPX_OK while every watched peer lives (or left cleanly: it destroyed
 * its communicator first); EPX_ERR_PEER naming the first one seen dead,
 * from then on (a dead peer never comes back).  Watched: the peers of this
 * host mapped over shm (pidfds, polled at most every 50 ms) and the peers
 * reached over UCX (net_dead: a broken connection or a heartbeat that
 * stopped, src/transport/ucx/ucx_live.c).  Cheap: a clock read and a load
 * except every 50 ms.  Waits call it on their slow path, so a peer's death
 * ends them in about that time instead of the timeout. */
epx_status_t epx__comm_alive(epx_comm_t *comm);

#endif /* EPX_CORE_GROUP_H */
