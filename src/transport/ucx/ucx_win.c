/*
 * UCX windows: RMA puts into memory every rank registered with ucp_mem_map
 * and whose rkeys were all-gathered through the bootstrap.
 *
 * Memory of a window: the data area (`size` bytes: allocated by UCX, or
 * the shm object of a composite window) and a
 * signal area of nsignals x nranks 64-bit words, word [slot][src] written
 * only by rank src.  Each area is one registration, one rkey per rank.
 *
 * Signals are puts, never remote atomics, so no word is shared between the
 * CPU atomics of shm peers and the network: the sender keeps its running
 * total per (peer, slot) and puts the new total into word [slot][me] of the
 * peer.  Ordering: ucp_worker_fence() before that put.  UCX documents the
 * fence as "communication operations issued on the worker prior to this
 * call are guaranteed to be completed before any subsequent communication
 * operations to the same worker which follow the call" (ucp.h,
 * ucp_worker_fence; https://openucx.readthedocs.io/en/master/api/file/ucp_8h.html),
 * so the total lands after the data it covers, and totals land in order
 * (a word never goes back).  The waiter sums the words of its UCX sources
 * (plus, in a composite window, its shm counter) and drives
 * ucp_worker_progress while waiting: over tcp, puts land only when the
 * target progresses.
 *
 * Puts wait for local completion before returning (callers reuse their
 * source buffers at once, as with shm); a put completes remotely by the
 * next signal's ordering, or at a flush of the worker (destruction).
 */
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <unistd.h>

#include "util/util.h"
#include "transport/ucx/ucx.h"

typedef struct ucx_win {
    epx_win_t base;
    epx_ucx_comm_t *u;
    uint64_t *sig;             /* [nsignals][nranks] words, by source */
    size_t sig_len;
    ucp_mem_h mh_data, mh_sig;
    int own_data;              /* data allocated by UCX (not a composite's) */
    ucp_rkey_h *rk_data, *rk_sig;     /* [nranks], NULL for shm peers */
    uint64_t *ra_data, *ra_sig;       /* [nranks] remote base addresses */
    uint64_t *sent;            /* [nranks][nsignals] totals signalled */
    int *srcs, nsrcs;          /* ranks that signal us through UCX */
    epx_ucx_win_view_t view;   /* for puts that come as messages */
    uint32_t id;               /* the same on every rank (ucx_am.c) */
    int has_id;
} ucx_win_t;

typedef struct ucx_win_info {
    int32_t status;
    uint32_t len_data, len_sig;
    uint32_t pad;
    uint64_t addr_data, addr_sig;
} ucx_win_info_t;

static size_t page_round(size_t n)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    return (n + pg - 1) / pg * pg;
}

static void ucx_win_free(ucx_win_t *w)
{
    int R = w->base.comm->nranks;
    if (w->has_id)   /* messages still coming for it are dropped */
        epx__ucx_am_win_remove(w->u, w->id);
    for (int r = 0; r < R; r++) {
        if (w->rk_data && w->rk_data[r])
            ucp_rkey_destroy(w->rk_data[r]);
        if (w->rk_sig && w->rk_sig[r])
            ucp_rkey_destroy(w->rk_sig[r]);
    }
    /* Peers may still have puts on their way into both areas: the ranges
     * stay held until the worker is gone (epx__ucx_comm_hold). */
    if (w->mh_data) {
        ucp_mem_unmap(w->u->ctx, w->mh_data);
        if (w->own_data)
            epx__ucx_comm_hold(w->base.comm, w->base.local, w->base.size, 0);
    }
    if (w->mh_sig)
        ucp_mem_unmap(w->u->ctx, w->mh_sig);
    if (w->sig)
        epx__ucx_comm_hold(w->base.comm, w->sig, w->sig_len, 1);
    free(w->rk_data);
    free(w->rk_sig);
    free(w->ra_data);
    free(w->ra_sig);
    free(w->sent);
    free(w->srcs);
    free(w);
}

static epx_status_t ucx_map(ucx_win_t *w, void *addr, size_t len, ucp_mem_h *mh)
{
    ucp_mem_map_params_t p = {
        .field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS |
                      UCP_MEM_MAP_PARAM_FIELD_LENGTH,
        .address = addr,
        .length = len,
    };
    ucs_status_t s = ucp_mem_map(w->u->ctx, &p, mh);
    if (s != UCS_OK) {
        *mh = NULL;
        return epx__error(EPX_ERR_NOMEM, "ucx: ucp_mem_map of %zu bytes: %s",
                          len, ucs_status_string(s));
    }
    return EPX_OK;
}

/* This rank's part: map and register both areas, pack their rkeys. */
static epx_status_t ucx_win_local(ucx_win_t *w, void *local, void **kd,
                                  size_t *ld, void **ks, size_t *ls)
{
    epx_comm_t *c = w->base.comm;
    int R = c->nranks, S = w->base.nsignals;
    w->rk_data = calloc((size_t)R, sizeof(ucp_rkey_h));
    w->rk_sig = calloc((size_t)R, sizeof(ucp_rkey_h));
    w->ra_data = calloc((size_t)R, sizeof(uint64_t));
    w->ra_sig = calloc((size_t)R, sizeof(uint64_t));
    w->sent = calloc((size_t)R * (size_t)(S > 0 ? S : 1), sizeof(uint64_t));
    w->srcs = calloc((size_t)R, sizeof(int));
    if (!w->rk_data || !w->rk_sig || !w->ra_data || !w->ra_sig || !w->sent ||
        !w->srcs)
        return epx__error(EPX_ERR_NOMEM, "ucx: out of memory");
    for (int r = 0; r < R; r++)
        if (c->peer_tl[r] == EPX_TL_UCX)
            w->srcs[w->nsrcs++] = r;
    if (!local) {
        /* UCX allocates it (UCX_ALLOC_PRIO: shared memory first), so that
         * peers of this host can reach it with direct RMA instead of
         * messages the target must progress; lazily committed pages. */
        ucp_mem_map_params_t p = {
            .field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS |
                          UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                          UCP_MEM_MAP_PARAM_FIELD_FLAGS,
            .address = NULL,
            .length = page_round(w->base.size ? w->base.size : 1),
            .flags = UCP_MEM_MAP_ALLOCATE,
        };
        ucp_mem_attr_t a = { .field_mask = UCP_MEM_ATTR_FIELD_ADDRESS };
        ucs_status_t s = ucp_mem_map(w->u->ctx, &p, &w->mh_data);
        if (s == UCS_OK && (s = ucp_mem_query(w->mh_data, &a)) != UCS_OK)
            ucp_mem_unmap(w->u->ctx, w->mh_data);
        if (s != UCS_OK) {
            w->mh_data = NULL;
            return epx__error(EPX_ERR_NOMEM, "ucx: ucp_mem_map of %zu bytes: "
                              "%s", (size_t)p.length, ucs_status_string(s));
        }
        local = a.address;
        w->own_data = 1;
    }
    w->base.local = local;
    w->sig_len = page_round(sizeof(uint64_t) * (size_t)R * (size_t)(S > 0 ? S : 1));
    w->sig = mmap(NULL, w->sig_len, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (w->sig == MAP_FAILED) {
        w->sig = NULL;
        return epx__syserror(EPX_ERR_NOMEM, "ucx: mmap of %zu bytes", w->sig_len);
    }
    epx_status_t st = w->mh_data ? EPX_OK
        : ucx_map(w, local, w->base.size ? w->base.size : 1, &w->mh_data);
    if (st == EPX_OK)
        st = ucx_map(w, w->sig, w->sig_len, &w->mh_sig);
    if (st != EPX_OK)
        return st;
    ucs_status_t s = ucp_rkey_pack(w->u->ctx, w->mh_data, kd, ld);
    if (s == UCS_OK && (s = ucp_rkey_pack(w->u->ctx, w->mh_sig, ks, ls)) != UCS_OK) {
        ucp_rkey_buffer_release(*kd);
        *kd = NULL;
    }
    if (s != UCS_OK)
        return epx__error(EPX_ERR_SYSTEM, "ucx: ucp_rkey_pack: %s",
                          ucs_status_string(s));
    return EPX_OK;
}

/* Every rank's addresses and rkeys; unpack those of our UCX peers. */
static epx_status_t ucx_win_exchange(ucx_win_t *w, epx_status_t mine,
                                     void *kd, size_t ld, void *ks, size_t ls)
{
    epx_comm_t *c = w->base.comm;
    int R = c->nranks;
    ucx_win_info_t me = { mine, (uint32_t)ld, (uint32_t)ls, 0,
                          (uint64_t)(uintptr_t)w->base.local,
                          (uint64_t)(uintptr_t)w->sig };
    ucx_win_info_t *all = malloc(sizeof(*all) * (size_t)R);
    char *send = NULL, *keys = NULL;
    if (!all)
        return epx__error(EPX_ERR_NOMEM, "ucx: out of memory");
    epx_status_t st = epx__comm_allgather(c, &me, all, sizeof(me));
    size_t max = 1;
    for (int r = 0; r < R && st == EPX_OK; r++) {
        if (all[r].status != EPX_OK)
            st = mine != EPX_OK ? mine
                : epx__error(EPX_ERR_PEER, "ucx: rank %d could not create its "
                             "window (%s)", r,
                             epx_status_str((epx_status_t)all[r].status));
        size_t n = (size_t)all[r].len_data + all[r].len_sig;
        max = n > max ? n : max;
    }
    if (st == EPX_OK && (!(send = calloc(1, max)) ||
                         !(keys = malloc(max * (size_t)R))))
        st = epx__error(EPX_ERR_NOMEM, "ucx: out of memory");
    if (st == EPX_OK) {
        memcpy(send, kd, ld);
        memcpy(send + ld, ks, ls);
        st = epx__comm_allgather(c, send, keys, max);
    }
    mine = st;
    for (int r = 0; r < R && mine == EPX_OK; r++) {
        if (c->peer_tl[r] != EPX_TL_UCX)
            continue;
        const char *k = keys + (size_t)r * max;
        ucs_status_t s = ucp_ep_rkey_unpack(w->u->eps[r], k, &w->rk_data[r]);
        if (s == UCS_OK)
            s = ucp_ep_rkey_unpack(w->u->eps[r], k + all[r].len_data,
                                   &w->rk_sig[r]);
        if (s != UCS_OK)
            mine = epx__error(EPX_ERR_SYSTEM, "ucx: rkey of rank %d: %s", r,
                              ucs_status_string(s));
        w->ra_data[r] = all[r].addr_data;
        w->ra_sig[r] = all[r].addr_sig;
    }
    free(send);
    free(keys);
    free(all);
    if (st != EPX_OK)
        return st;
    /* Agree, so that no rank keeps a window its peers gave up. */
    int32_t v = mine, *sts = malloc(sizeof(int32_t) * (size_t)R);
    if (!sts)
        return epx__error(EPX_ERR_NOMEM, "ucx: out of memory");
    st = epx__comm_allgather(c, &v, sts, sizeof(v));
    for (int r = 0; r < R && st == EPX_OK; r++)
        if (sts[r] != EPX_OK)
            st = mine != EPX_OK ? mine
                : epx__error(EPX_ERR_PEER, "ucx: rank %d could not reach a "
                             "window's peers (%s)", r,
                             epx_status_str((epx_status_t)sts[r]));
    free(sts);
    return st;
}

epx_status_t epx__ucx_win_create(epx_comm_t *c, size_t size, int nsignals,
                                 void *local, epx_win_t **out)
{
    ucx_win_t *w = calloc(1, sizeof(*w));
    if (!w) {   /* still take part in the collective steps */
        uint32_t id;
        epx__ucx_am_win_add(c->ucx, NULL, &id);   /* ids stay in step */
        return ucx_win_exchange(&(ucx_win_t){ .base.comm = c },
                                epx__error(EPX_ERR_NOMEM, "ucx: out of memory"),
                                NULL, 0, NULL, 0);
    }
    w->base.ops = &epx__tl_ucx;
    w->base.comm = c;
    w->base.size = size;
    w->base.nsignals = nsignals;
    w->u = c->ucx;
    w->base.peer = calloc((size_t)c->nranks, sizeof(void *)); /* none mapped */
    void *kd = NULL, *ks = NULL;
    size_t ld = 0, ls = 0;
    epx_status_t mine = w->base.peer ? ucx_win_local(w, local, &kd, &ld, &ks, &ls)
                                     : epx__error(EPX_ERR_NOMEM, "ucx: out of memory");
    /* Registered before the exchange: no peer can send before it ends. */
    w->view = (epx_ucx_win_view_t){ w->base.local, size, w->sig, nsignals };
    epx_status_t ids = epx__ucx_am_win_add(w->u, mine == EPX_OK ? &w->view : NULL,
                                           &w->id);
    w->has_id = ids == EPX_OK;
    if (mine == EPX_OK)
        mine = ids;
    epx_status_t st = ucx_win_exchange(w, mine, kd, ld, ks, ls);
    if (kd)
        ucp_rkey_buffer_release(kd);
    if (ks)
        ucp_rkey_buffer_release(ks);
    if (st != EPX_OK) {
        free(w->base.peer);
        ucx_win_free(w);
        return st;
    }
    EPX_LOG(EPX_LOG_DEBUG, "ucx", c->rank,
            "window: %zu bytes, %d signals, %d UCX peers", size, nsignals,
            w->nsrcs);
    *out = &w->base;
    return EPX_OK;
}

static epx_status_t ucx_win_create_ops(epx_comm_t *c, size_t size,
                                       int nsignals, epx_win_t **out)
{
    return epx__ucx_win_create(c, size, nsignals, NULL, out);
}

static void ucx_win_destroy(epx_win_t *win)
{
    if (!win)
        return;
    free(win->peer);
    ucx_win_free((ucx_win_t *)win);
}

/* A peer selection gave to another backend has no endpoint here (only a
 * composite window routes to this one, and it never sends such a peer). */
static epx_status_t not_ucx(const epx_win_t *win, const char *op, int peer)
{
    return epx__error(EPX_ERR_INVALID, "ucx: %s to rank %d, which rank %d "
                      "reaches by %s", op, peer, win->comm->rank,
                      epx__win_peer_tl(win, peer));
}

static epx_status_t ucx_put(epx_win_t *win, int peer, size_t off,
                            const void *src, size_t len)
{
    ucx_win_t *w = (ucx_win_t *)win;
    epx_comm_t *c = win->comm;
    if (EPX_WIN_BAD_PEER(win, peer))
        return epx__win_bad_index(win, "put", peer, 0);
    if (EPX_UNLIKELY(c->peer_tl[peer] != EPX_TL_UCX))
        return not_ucx(win, "put", peer);
    if (EPX_UNLIKELY(off > win->size || len > win->size - off))
        return epx__error(EPX_ERR_RANGE,
                          "ucx: put of %zu bytes at %zu beyond window of %zu",
                          len, off, win->size);
    if (EPX_UNLIKELY(w->u->ep_status[peer] != EPX_OK))
        return epx__error(EPX_ERR_PEER, "ucx: rank %d: connection to rank %d "
                          "broken", c->rank, peer);
    if (len == 0)
        return EPX_OK;
    if (w->u->am_put[peer])
        return epx__ucx_am_put(c, peer, w->id, off, src, len);
    ucp_request_param_t p = { 0 };
    void *req = ucp_put_nbx(w->u->eps[peer], src, len, w->ra_data[peer] + off,
                            w->rk_data[peer], &p);
    return epx__ucx_wait(c, req, c->timeout_s, "put", peer);
}

static epx_status_t ucx_signal(epx_win_t *win, int peer, int slot, uint64_t inc)
{
    ucx_win_t *w = (ucx_win_t *)win;
    epx_comm_t *c = win->comm;
    if (EPX_WIN_BAD_PEER(win, peer) || EPX_WIN_BAD_SLOT(win, slot))
        return epx__win_bad_index(win, "signal", peer, slot);
    if (EPX_UNLIKELY(c->peer_tl[peer] != EPX_TL_UCX))
        return not_ucx(win, "signal", peer);
    if (EPX_UNLIKELY(w->u->ep_status[peer] != EPX_OK))
        return epx__error(EPX_ERR_PEER, "ucx: rank %d: connection to rank %d "
                          "broken", c->rank, peer);
    uint64_t *tot = &w->sent[(size_t)peer * (size_t)win->nsignals + (size_t)slot];
    *tot += inc;
    if (w->u->am_put[peer])   /* in sequence after the earlier puts */
        return epx__ucx_am_signal(c, peer, w->id, slot, *tot);
    ucs_status_t s = ucp_worker_fence(w->u->worker);
    if (s != UCS_OK)
        return epx__error(EPX_ERR_SYSTEM, "ucx: ucp_worker_fence: %s",
                          ucs_status_string(s));
    uint64_t at = w->ra_sig[peer] +
                  sizeof(uint64_t) * ((size_t)slot * (size_t)c->nranks + (size_t)c->rank);
    ucp_request_param_t p = { 0 };
    void *req = ucp_put_nbx(w->u->eps[peer], tot, sizeof(*tot), at,
                            w->rk_sig[peer], &p);
    return epx__ucx_wait(c, req, c->timeout_s, "signal", peer);
}

/* Ordering only, like shm's flush: the fence keeps the puts before it
 * ahead of the ones after it. */
static epx_status_t ucx_flush(epx_win_t *win, int peer)
{
    if (EPX_WIN_BAD_PEER(win, peer))
        return epx__win_bad_index(win, "flush", peer, 0);
    ucs_status_t s = ucp_worker_fence(((ucx_win_t *)win)->u->worker);
    if (s != UCS_OK)
        return epx__error(EPX_ERR_SYSTEM, "ucx: ucp_worker_fence: %s",
                          ucs_status_string(s));
    return EPX_OK;
}

/* Each word is written whole by one source with a monotonic total (well
 * below 2^32 in practice, so a torn 8-byte read cannot invent a value). */
static uint64_t ucx_count(epx_win_t *win, int slot)
{
    ucx_win_t *w = (ucx_win_t *)win;
    const uint64_t *row = w->sig + (size_t)slot * (size_t)win->comm->nranks;
    uint64_t v = 0;
    for (int i = 0; i < w->nsrcs; i++)
        v += __atomic_load_n(&row[w->srcs[i]], __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return v;
}

static void ucx_progress(epx_win_t *win)
{
    ucp_worker_progress(((ucx_win_t *)win)->u->worker);
}

/* Sleep on the worker's event fd: incoming network traffic wakes us at
 * once (ucp_worker_arm says UCS_ERR_BUSY when events are already due). */
static void ucx_idle(epx_win_t *win, long ns)
{
    epx_ucx_comm_t *u = ((ucx_win_t *)win)->u;
    struct timespec ts = { 0, ns };
    if (u->efd < 0) {
        nanosleep(&ts, NULL);
        return;
    }
    if (ucp_worker_arm(u->worker) != UCS_OK)
        return;
    struct pollfd pfd = { u->efd, POLLIN, 0 };
    ppoll(&pfd, 1, &ts, NULL);
}

const epx_tl_ops_t epx__tl_ucx = {
    .name = "ucx",
    .win_create = ucx_win_create_ops,
    .win_destroy = ucx_win_destroy,
    .put = ucx_put,
    .signal = ucx_signal,
    .wait = epx__win_poll_wait,
    .flush = ucx_flush,
    .count = ucx_count,
    .progress = ucx_progress,
    .idle = ucx_idle,
};
