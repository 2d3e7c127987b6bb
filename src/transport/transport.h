/*
 * transport layer: symmetric windows with put / signal / wait.
 *
 * A window is created collectively: every rank exposes `size` bytes plus
 * `nsignals` 64-bit signal counters of its own; peers write into it with put
 * and bump its counters with signal.  A signal is release-ordered after
 * every earlier put from the same rank to the same peer in the same window,
 * so a rank that waits for a counter then reads the data safely.  Waits
 * spin briefly, then yield, then sleep (72 ranks on 2 cores must work), and
 * fail with EPX_ERR_TIMEOUT after the communicator's timeout.
 *
 * flush(peer) orders this rank's puts to `peer` before it against the ones
 * after it; it is not a completion (a signal is: once the peer sees it, it
 * sees the data).
 *
 * Also true of every backend (tests/transport/test_conform checks it):
 * - put returns once `src` may be reused;
 * - a rank may poll its own window memory for a word put after a flush,
 *   calling epx__win_progress meanwhile, and then sees what the flush
 *   ordered before the word;
 * - peer outside [0, nranks), slot outside [0, nsignals): EPX_ERR_INVALID;
 *   a put beyond the window: EPX_ERR_RANGE; either way nothing is written
 *   or signalled (put_signal with a bad slot: its put may have happened)
 *   and the window stays usable.
 *
 * Destroying a window is local, so it must not race a put still on its
 * way in: over the network a put lands only when its target progresses,
 * and one landing after the destroy would write into freed memory.  Every
 * put into the window is either covered by a signal its target waited for
 * or issued before an epx_comm_barrier the ranks passed (the barrier first
 * waits until each rank's network puts have landed).
 *
 * Each backend (one folder under src/transport/) fills an epx_tl_ops_t;
 * the communicator picks the backend per peer (src/core/select.c), and a
 * window whose peers use several backends is a composite (multi.c) that
 * routes each call to the peer's backend.
 */
#ifndef EPX_TRANSPORT_H
#define EPX_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>
#include "epx.h"
#include "core/group.h"

typedef struct epx_win epx_win_t;

typedef struct epx_tl_ops {
    const char *name;
    epx_status_t (*win_create)(epx_comm_t *comm, size_t size, int nsignals,
                               epx_win_t **win);
    void (*win_destroy)(epx_win_t *win);
    epx_status_t (*put)(epx_win_t *win, int peer, size_t off, const void *src,
                        size_t len);
    epx_status_t (*signal)(epx_win_t *win, int peer, int slot, uint64_t inc);
    epx_status_t (*wait)(epx_win_t *win, int slot, uint64_t value);
    epx_status_t (*flush)(epx_win_t *win, int peer);
    /* Current value of this rank's counter `slot`, without waiting (acquire:
     * data signalled before it is visible). */
    uint64_t (*count)(epx_win_t *win, int slot);
    /* Make progress on incoming and outgoing operations (NULL: none needed). */
    void (*progress)(epx_win_t *win);
    /* Sleep up to `ns` or until network traffic arrives (NULL: sleep). */
    void (*idle)(epx_win_t *win, long ns);
} epx_tl_ops_t;


extern const epx_tl_ops_t epx__tl_shm;
extern const epx_tl_ops_t epx__tl_multi;
extern const epx_tl_ops_t epx__tl_ucx;     /* in the UCX module only */
/* The backend of index `tl` (UCX: loading its module), NULL when it is
 * not available. */
const epx_tl_ops_t *epx__tl_get(int tl);

/* The backend of that name if it is available (as epx__tl_get), else NULL. */
const epx_tl_ops_t *epx__tl_find(const char *name);
/* Name of the backend that carries this rank's operations to `peer`. */
const char *epx__win_peer_tl(const epx_win_t *w, int peer);

/* Base of a window as the transport sees it (all backends share this head). */
struct epx_win {
    const epx_tl_ops_t *ops;
    epx_comm_t *comm;
    size_t size;
    int nsignals;
    void *local;              /* this rank's `size` bytes */
    void **peer;              /* [nranks] direct pointers, NULL if not mapped
                                 (peers reached through the network) */
};

/* A wait by polling ops->count while calling ops->progress: spin, yield,
 * then short naps, EPX_ERR_TIMEOUT after the communicator's timeout. */
epx_status_t epx__win_poll_wait(epx_win_t *win, int slot, uint64_t value);

/* Index checks shared by the backends: a peer outside [0, nranks) or a
 * slot outside [0, nsignals) is the caller's bug, refused before anything
 * is touched.  EPX_WIN_BAD_PEER / _SLOT test; epx__win_bad_index reports
 * (EPX_ERR_INVALID; a good peer means the slot was bad). */
#define EPX_WIN_BAD_PEER(win, peer) \
    EPX_UNLIKELY((unsigned)(peer) >= (unsigned)(win)->comm->nranks)
#define EPX_WIN_BAD_SLOT(win, slot) \
    EPX_UNLIKELY((unsigned)(slot) >= (unsigned)(win)->nsignals)
epx_status_t epx__win_bad_index(const epx_win_t *win, const char *op,
                                int peer, int slot);

/* A UCX window over memory the caller owns (the composite passes the shm
 * window's local object, so shm and UCX peers write into one buffer). */
epx_status_t epx__ucx_win_create(epx_comm_t *comm, size_t size, int nsignals,
                                 void *local, epx_win_t **win);

/* After a window's memory at [addr, addr + len) was released (replace 0:
 * unmapped; 1: still mapped, replaced at once), keep the range reserved
 * with blank pages until the communicator's UCX worker is gone: a peer's
 * put that was on its way lands there (the worker's progress writes it)
 * instead of in freed or reused memory.  No-op without UCX. */
void epx__ucx_comm_hold(epx_comm_t *comm, void *addr, size_t len, int replace);

/* Collective; `size` may be far above what is touched: pages are committed
 * only when written (memory grows with use). */
epx_status_t epx__win_create(epx_comm_t *comm, size_t size, int nsignals,
                             epx_win_t **win);
void epx__win_destroy(epx_win_t *win);

static inline epx_status_t epx__win_put(epx_win_t *w, int peer, size_t off,
                                        const void *src, size_t len)
{ return w->ops->put(w, peer, off, src, len); }
static inline epx_status_t epx__win_signal(epx_win_t *w, int peer, int slot,
                                           uint64_t inc)
{ return w->ops->signal(w, peer, slot, inc); }
/* Put-with-signal: `len` bytes at `off`, then the peer's counter `slot`
 * += inc; a peer that sees the counter sees the bytes. */
static inline epx_status_t epx__win_put_signal(epx_win_t *w, int peer,
                                               size_t off, const void *src,
                                               size_t len, int slot,
                                               uint64_t inc)
{
    epx_status_t st = w->ops->put(w, peer, off, src, len);
    return st == EPX_OK ? w->ops->signal(w, peer, slot, inc) : st;
}
/* Wait until this rank's counter `slot` >= value. */
static inline epx_status_t epx__win_wait(epx_win_t *w, int slot, uint64_t value)
{ return w->ops->wait(w, slot, value); }
static inline epx_status_t epx__win_flush(epx_win_t *w, int peer)
{ return w->ops->flush(w, peer); }
/* Let operations in flight advance (a caller polling window memory itself
 * must call it: network puts may land only through progress). */
static inline void epx__win_progress(epx_win_t *w)
{ if (w->ops->progress) w->ops->progress(w); }
/* Direct load/store address of a peer's window, or NULL. */
static inline void *epx__win_peer_ptr(epx_win_t *w, int peer)
{ return w->peer[peer]; }

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
/* epx_comm_destroy was called: tell the UCX peers this rank leaves on
 * purpose, so its exit is not taken for a death.  No-op without UCX. */
void epx__ucx_comm_leave(epx_comm_t *comm);
/* Collective, for a communicator destroyed while an engine still holds a
 * window (its teardown waits for the engine; its peers may exit now):
 * after the destruction barriers, flush this rank's worker and meet every
 * rank through the bootstrap (the same exchanges as a clean
 * epx__ucx_comm_fini, so a rank tearing down at once pairs with it), so
 * no rank exits while a peer still needs its last signals.  The worker
 * stays to the process exit. */
void epx__ucx_comm_settle(epx_comm_t *comm);

#endif /* EPX_TRANSPORT_H */
