/*
 * Windows: the factory and the composite.
 *
 * A window whose peers all use one backend is that backend's window.  When
 * the pairs mix backends (shm inside a domain, ucx across), the window is a
 * composite: one shm sub-window (its local object is the window's memory,
 * mapped only by the shm peers) and one ucx sub-window registering that
 * same memory, so both kinds of peer write into one buffer.  Put, signal
 * and flush go to the peer's backend.  A counter is the sum of the
 * backends' counters (each source signals through one backend only), and
 * a wait polls that sum while it drives the network's progress: it never
 * sleeps on the shm futex, since a network signal would not wake it.
 */
#include <sched.h>
#include <stdlib.h>
#include <time.h>

#include "util/util.h"
#include "core/group.h"
#include "transport/transport.h"

typedef struct multi_win {
    epx_win_t base;
    epx_win_t *sub[EPX_TL_COUNT];
} multi_win_t;

/* Spin (EPX_SPIN), yield (EPX_YIELD), then nap (50 us doubling to 1 ms,
 * woken early by network traffic where the backend can) until the counter reaches `value` or the communicator's timeout. */
epx_status_t epx__win_bad_index(const epx_win_t *win, const char *op,
                                int peer, int slot)
{
    if (EPX_WIN_BAD_PEER(win, peer))
        return epx__error(EPX_ERR_INVALID, "%s: %s to rank %d of %d",
                          win->ops->name, op, peer, win->comm->nranks);
    return epx__error(EPX_ERR_INVALID, "%s: %s on signal slot %d of %d",
                      win->ops->name, op, slot, win->nsignals);
}

epx_status_t epx__win_poll_wait(epx_win_t *w, int slot, uint64_t value)
{
    const epx_tl_ops_t *ops = w->ops;
    if (EPX_WIN_BAD_SLOT(w, slot))
        return epx__win_bad_index(w, "wait", w->comm->rank, slot);
    long spin = epx__cfg_long("EPX_SPIN"), yield = epx__cfg_long("EPX_YIELD");
    double deadline = 0;
    long nap_ns = 50 * 1000;
    for (long i = 0;; i++) {
        if (ops->progress)
            ops->progress(w);
        uint64_t v = ops->count(w, slot);
        if (v >= value)
            return EPX_OK;
        if (i < spin) {
            epx__cpu_relax();
            continue;
        }
        if (i < spin + yield) {
            sched_yield();
            continue;
        }
        epx_status_t alive = epx__comm_alive(w->comm);
        if (alive != EPX_OK)
            return alive;
        if (deadline == 0)
            deadline = epx__now() + epx__comm_timeout(w->comm);
        else if (epx__now() > deadline)
            return epx__error(EPX_ERR_TIMEOUT,
                              "rank %d: no signal from peers after %.1f s "
                              "(slot %d at %llu, waiting for %llu)",
                              w->comm->rank, epx__comm_timeout(w->comm), slot,
                              (unsigned long long)v, (unsigned long long)value);
        if (ops->idle) {
            ops->idle(w, nap_ns);
        } else {
            struct timespec ts = { 0, nap_ns };
            nanosleep(&ts, NULL);
        }
        if (nap_ns < 1000 * 1000)
            nap_ns *= 2;
    }
}

/* The sub-window of the peer's backend (the peer checked first: it
 * indexes peer_tl). */
static epx_win_t *route(epx_win_t *win, int peer)
{
    return ((multi_win_t *)win)->sub[win->comm->peer_tl[peer]];
}

static epx_status_t multi_put(epx_win_t *win, int peer, size_t off,
                              const void *src, size_t len)
{
    if (EPX_WIN_BAD_PEER(win, peer))
        return epx__win_bad_index(win, "put", peer, 0);
    epx_win_t *s = route(win, peer);
    return s->ops->put(s, peer, off, src, len);
}

static epx_status_t multi_signal(epx_win_t *win, int peer, int slot,
                                 uint64_t inc)
{
    if (EPX_WIN_BAD_PEER(win, peer) || EPX_WIN_BAD_SLOT(win, slot))
        return epx__win_bad_index(win, "signal", peer, slot);
    epx_win_t *s = route(win, peer);
    return s->ops->signal(s, peer, slot, inc);
}

static epx_status_t multi_flush(epx_win_t *win, int peer)
{
    if (EPX_WIN_BAD_PEER(win, peer))
        return epx__win_bad_index(win, "flush", peer, 0);
    epx_win_t *s = route(win, peer);
    return s->ops->flush(s, peer);
}

static uint64_t multi_count(epx_win_t *win, int slot)
{
    multi_win_t *w = (multi_win_t *)win;
    uint64_t v = 0;
    for (int t = 0; t < EPX_TL_COUNT; t++)
        v += w->sub[t]->ops->count(w->sub[t], slot);
    return v;
}

static void multi_progress(epx_win_t *win)
{
    multi_win_t *w = (multi_win_t *)win;
    for (int t = 0; t < EPX_TL_COUNT; t++)
        if (w->sub[t]->ops->progress)
            w->sub[t]->ops->progress(w->sub[t]);
}

/* Network traffic wakes the network side; shm signals do not wake it, so
 * the nap stays short (at most 1 ms). */
static void multi_idle(epx_win_t *win, long ns)
{
    epx_win_t *u = ((multi_win_t *)win)->sub[EPX_TL_UCX];
    u->ops->idle(u, ns);
}

static void multi_destroy(epx_win_t *win)
{
    multi_win_t *w = (multi_win_t *)win;
    /* The network side first: it registered the shm side's memory. */
    for (int t = EPX_TL_COUNT - 1; t >= 0; t--)
        if (w->sub[t])
            w->sub[t]->ops->win_destroy(w->sub[t]);
    /* The shm side unmapped that memory; network puts may still come. */
    epx__ucx_comm_hold(win->comm, win->local, win->size, 0);
    free(w);
}

static epx_status_t multi_create(epx_comm_t *comm, size_t size, int nsignals,
                                 epx_win_t **out)
{
    multi_win_t *w = calloc(1, sizeof(*w));
    epx_status_t mine = w ? EPX_OK : epx__error(EPX_ERR_NOMEM,
                                                "window: out of memory");
    /* Collective steps run on every rank even when this one failed: the
     * backends agree on the outcome through the all-gather. */
    epx_win_t *shm = NULL, *ucx = NULL;
    epx_status_t st = epx__tl_shm.win_create(comm, size, nsignals, &shm);
    if (st == EPX_OK)
        st = epx__ucx_win_create(comm, size, nsignals, shm->local, &ucx);
    if (st == EPX_OK && mine != EPX_OK)
        st = mine;
    if (st != EPX_OK) {
        if (ucx)
            ucx->ops->win_destroy(ucx);
        if (shm)
            shm->ops->win_destroy(shm);
        free(w);
        return st;
    }
    w->base = *shm;   /* local memory, and direct pointers to shm peers */
    w->base.ops = &epx__tl_multi;
    w->sub[EPX_TL_SHM] = shm;
    w->sub[EPX_TL_UCX] = ucx;
    *out = &w->base;
    return EPX_OK;
}

/* The communicator counts its windows, so that destroying it while an
 * engine still holds one defers the teardown to the last window's end
 * (epx__comm_win_gone) instead of leaving the engine on freed memory. */
epx_status_t epx__win_create(epx_comm_t *comm, size_t size, int nsignals,
                             epx_win_t **win)
{
    if (comm->destroyed)
        return epx__error(EPX_ERR_STATE, "comm: window on a destroyed "
                          "communicator");
    epx_status_t st = EPX_ERR_INVALID;
    int t;
    for (t = 0; t < EPX_TL_COUNT; t++)
        if (comm->tl_peers[t] == comm->nranks) {
            st = epx__tl_get(t)->win_create(comm, size, nsignals, win);
            break;
        }
    if (t == EPX_TL_COUNT)
        st = multi_create(comm, size, nsignals, win);
    if (st == EPX_OK)
        comm->nwin++;
    return st;
}

void epx__win_destroy(epx_win_t *win)
{
    if (!win)
        return;
    epx_comm_t *comm = win->comm;
    win->ops->win_destroy(win);
    epx__comm_win_gone(comm);
}

const epx_tl_ops_t epx__tl_multi = {
    .name = "multi",
    .win_create = multi_create,
    .win_destroy = multi_destroy,
    .put = multi_put,
    .signal = multi_signal,
    .wait = epx__win_poll_wait,
    .flush = multi_flush,
    .count = multi_count,
    .progress = multi_progress,
    .idle = multi_idle,
};
