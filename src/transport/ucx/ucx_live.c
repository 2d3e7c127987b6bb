/*
 * Liveness of the peers reached over UCX: a thread per communicator with
 * its own worker (the data worker stays single-threaded) and one endpoint
 * per UCX peer in error mode PEER, sending every peer a heartbeat message
 * every LIVE_PERIOD_S.  A peer is dead when
 *  - its endpoint fails (UCX calls the error handler: over tcp a killed
 *    process's connections are reset at once), or
 *  - nothing came from it for EPX_PEER_SILENCE seconds (a stopped or hung
 *    process, a host cut off, whose connections stay open),
 * unless it said goodbye first (epx_comm_destroy sends one: a rank that
 * destroyed its communicator and exited left on purpose).  The first
 * death is published in the communicator (net_why, then net_dead), where
 * epx__comm_alive, polled by every wait's slow path, turns it into
 * EPX_ERR_PEER naming the rank, the same way as a shm peer's pidfd.
 * Every endpoint is wired up before the communicator is returned
 * (live_wire: UCX 1.13 aborts a process whose endpoint's peer dies during
 * the wire-up).
 *
 * Why a thread: a rank busy in its own compute between calls does not
 * progress the data worker, and must not look dead.  Why a second worker
 * and not the data endpoints: those stay in error mode NONE (UCX 1.13
 * leaves out the shared-memory RMA lanes in mode PEER), and the data
 * worker is used without locks.  Heartbeats are tiny eager messages that
 * are never answered.
 */
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "util/util.h"
#include "transport/ucx/ucx.h"

#define LIVE_AM_ID 0x3e1       /* heartbeat and goodbye messages */
#define LIVE_PERIOD_S 0.5      /* between two heartbeats to each peer */
/* silence after which a peer is dead: EPX_PEER_SILENCE (0: never) */
#define LIVE_BYE_S 0.5         /* longest wait for the goodbyes to leave */
#define LIVE_CLOSE_S 1.0       /* longest wait for the endpoints' close */

enum { LIVE_BEAT = 0, LIVE_BYE = 1 };

typedef struct live_msg {
    int32_t src, kind;
    uint64_t progress;          /* the sender's comm->progress_pub */
} live_msg_t;

typedef struct live_ep {
    struct epx_ucx_live *l;
    int peer;
} live_ep_t;

struct epx_ucx_live {
    epx_comm_t *c;
    ucp_worker_h worker;
    int efd;                    /* the worker's event fd, or -1 */
    int wake;                   /* eventfd: the main thread wants something */
    ucp_ep_h *eps;              /* [nranks]; NULL: not a UCX peer */
    live_ep_t *ectx;            /* [nranks] error handler arguments */
    /* The thread's alone (the handlers run in its progress): */
    double *seen;               /* [nranks] last message, or the start */
    double silence;             /* EPX_PEER_SILENCE; 0: never dead by it */
    unsigned char *heard, *left, *broken;
    ucs_status_t *err;          /* [nranks] why an endpoint failed */
    live_msg_t msg[2];          /* what is sent: stays until the worker goes */
    int said_bye, reported;
    /* Set by the main thread: */
    int leave, stop;
    pthread_t thread;
    int running;
};

static ucs_status_t live_recv(void *arg, const void *hdr, size_t hlen,
                              void *data, size_t len,
                              const ucp_am_recv_param_t *prm)
{
    (void)data;
    (void)len;
    (void)prm;
    epx_ucx_live_t *l = arg;
    live_msg_t m;
    if (hlen != sizeof(m))
        return UCS_OK;
    memcpy(&m, hdr, sizeof(m));
    if (m.src < 0 || m.src >= l->c->nranks || !l->eps[m.src])
        return UCS_OK;
    l->seen[m.src] = epx__now();
    l->heard[m.src] = 1;
    if (m.progress && l->c->net_progress)
        __atomic_store_n(&l->c->net_progress[m.src], m.progress,
                         __ATOMIC_RELAXED);
    if (m.kind == LIVE_BYE)
        l->left[m.src] = 1;
    return UCS_OK;
}

static void live_ep_error(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    (void)ep;
    live_ep_t *e = arg;
    e->l->broken[e->peer] = 1;
    e->l->err[e->peer] = status;
}

static void live_send(epx_ucx_live_t *l, int kind)
{
    ucp_request_param_t p = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
        .flags = UCP_AM_SEND_FLAG_EAGER,
    };
    /* The newest record; a send still in flight may carry either. */
    l->msg[kind].progress = __atomic_load_n(&l->c->progress_pub,
                                            __ATOMIC_RELAXED);
    for (int r = 0; r < l->c->nranks; r++) {
        if (!l->eps[r] || l->broken[r] || l->left[r])
            continue;
        void *req = ucp_am_send_nbx(l->eps[r], LIVE_AM_ID, &l->msg[kind],
                                    sizeof(l->msg[kind]), NULL, 0, &p);
        if (UCS_PTR_IS_ERR(req)) {
            l->broken[r] = 1;
            l->err[r] = UCS_PTR_STATUS(req);
        } else if (req) {
            ucp_request_free(req);   /* released when it completes */
        }
    }
}

/* Every dead peer is marked in peer_gone (epx_comm_shrink reads them
 * all); the first is published once (net_why before net_dead). */
static void live_check(epx_ucx_live_t *l, double now)
{
    epx_comm_t *c = l->c;
    /* A peer never heard from has the communicator's timeout more: with
     * 100+ ranks starting on few cores its thread may run late. */
    double quiet = l->silence, first = l->silence + c->timeout_s;
    for (int r = 0; r < c->nranks; r++) {
        if (!l->eps[r] ||
            __atomic_load_n(&c->peer_gone[r], __ATOMIC_RELAXED))
            continue;
        if (l->left[r]) {
            __atomic_store_n(&c->peer_gone[r], 2, __ATOMIC_RELEASE);
            continue;
        }
        char why[120];
        if (l->broken[r])
            snprintf(why, sizeof(why), "its connection broke (%s)",
                     ucs_status_string(l->err[r]));
        else if (l->silence > 0 &&
                 now - l->seen[r] > (l->heard[r] ? quiet : first))
            snprintf(why, sizeof(why), "no heartbeat from it for %.1f s "
                     "(stopped, hung or cut off)", now - l->seen[r]);
        else
            continue;
        __atomic_store_n(&c->peer_gone[r], 1, __ATOMIC_RELEASE);
        if (l->reported || __atomic_load_n(&c->net_dead, __ATOMIC_ACQUIRE) >= 0)
            continue;
        snprintf(c->net_why, sizeof(c->net_why), "rank %d (over UCX) is "
                 "gone: %s (epx_comm_shrink goes on without it)", r, why);
        __atomic_store_n(&c->net_dead, r, __ATOMIC_RELEASE);
        l->reported = 1;
        EPX_LOG(EPX_LOG_INFO, "ucx", c->rank, "%s", c->net_why);
    }
}

static void live_drain(int fd)
{
    uint64_t v;
    if (read(fd, &v, sizeof(v)) < 0)
        return;   /* nothing to drain */
}

/* Progress until the goodbyes have left (bounded: a stopped peer's
 * connection may take them only later, or never). */
static void live_flush(epx_ucx_live_t *l, double limit_s)
{
    ucp_request_param_t p = { 0 };
    void *req = ucp_worker_flush_nbx(l->worker, &p);
    if (!req || UCS_PTR_IS_ERR(req))
        return;
    double deadline = epx__now() + limit_s;
    while (ucp_request_check_status(req) == UCS_INPROGRESS &&
           epx__now() < deadline)
        if (!ucp_worker_progress(l->worker))
            usleep(1000);
    ucp_request_free(req);
}

/* Finish the wire-up of every endpoint before the thread starts and the
 * communicator is returned, progressing the worker here (a peer done
 * first has its thread progress it).  UCX 1.13 wires an endpoint up at its
 * first send (a wire-up proxy queues it and asks the peer for its
 * endpoint id), and a peer that dies meanwhile aborts this process: the
 * queued wire-up message is sent when the tcp connection completes, the
 * send fails, and failing the endpoint purges the proxy while that message
 * is still counted ("Assertion `wireup_ep->pending_count == 0' failed" in
 * ucp_wireup_ep_pending_purge, from uct_tcp_ep_am_bcopy in this thread's
 * progress; tests/core/test_shrink ucx_early, a rank killed right after
 * creation).  So a first heartbeat starts every
 * wire-up here, and each endpoint's flush, queued behind the proxy,
 * completes once it is done (a worker flush does not wait for it). */
static epx_status_t live_wire(epx_ucx_live_t *l)
{
    epx_comm_t *c = l->c;
    int R = c->nranks;
    void **reqs = calloc((size_t)R, sizeof(*reqs));
    if (!reqs)
        return epx__error(EPX_ERR_NOMEM, "ucx: out of memory");
    ucp_request_param_t p = { 0 };
    epx_status_t st = EPX_OK;
    live_send(l, LIVE_BEAT);
    for (int r = 0; r < R && st == EPX_OK; r++) {
        if (!l->eps[r])
            continue;
        if (l->broken[r]) {
            st = epx__error(EPX_ERR_PEER, "ucx: rank %d: liveness endpoint "
                            "to rank %d: %s", c->rank, r,
                            ucs_status_string(l->err[r]));
            break;
        }
        reqs[r] = ucp_ep_flush_nbx(l->eps[r], &p);
        if (UCS_PTR_IS_ERR(reqs[r])) {
            st = epx__error(EPX_ERR_PEER, "ucx: rank %d: liveness endpoint "
                            "to rank %d: %s", c->rank, r,
                            ucs_status_string(UCS_PTR_STATUS(reqs[r])));
            reqs[r] = NULL;
        }
    }
    double deadline = epx__now() + c->timeout_s;
    for (int r = 0; r < R; r++) {
        ucs_status_t s = UCS_OK;
        while (reqs[r] && st == EPX_OK &&
               (s = ucp_request_check_status(reqs[r])) == UCS_INPROGRESS) {
            if (epx__now() > deadline)
                st = epx__error(EPX_ERR_TIMEOUT, "ucx: rank %d: liveness "
                                "endpoint to rank %d not wired up after "
                                "%.1f s", c->rank, r, c->timeout_s);
            else if (!ucp_worker_progress(l->worker))
                usleep(100);
        }
        if (st == EPX_OK && s != UCS_OK)
            st = epx__error(EPX_ERR_PEER, "ucx: rank %d: liveness endpoint to "
                            "rank %d: %s", c->rank, r, ucs_status_string(s));
        if (reqs[r])
            ucp_request_free(reqs[r]);   /* released when it completes */
    }
    free(reqs);
    return st;
}

static void *live_main(void *arg)
{
    epx_ucx_live_t *l = arg;
    double next = 0;
    while (!__atomic_load_n(&l->stop, __ATOMIC_ACQUIRE)) {
        double now = epx__now();
        if (!l->said_bye && __atomic_load_n(&l->leave, __ATOMIC_ACQUIRE)) {
            live_send(l, LIVE_BYE);
            l->said_bye = 1;
        }
        if (now >= next) {
            if (!l->said_bye)
                live_send(l, LIVE_BEAT);
            next = now + LIVE_PERIOD_S;
        }
        while (ucp_worker_progress(l->worker))
            ;
        if (!l->said_bye)   /* leaving: the others' fate is not ours */
            live_check(l, epx__now());
        /* Sleep until the next heartbeat, a message or the main thread. */
        if (l->efd >= 0 && ucp_worker_arm(l->worker) == UCS_ERR_BUSY)
            continue;
        struct pollfd pfd[2] = { { l->wake, POLLIN, 0 }, { l->efd, POLLIN, 0 } };
        double left = next - epx__now();
        int ms = left <= 0 ? 0 : (int)(left * 1000) + 1;
        if (l->efd < 0 && ms > 50)
            ms = 50;   /* no event fd: look for messages now and then */
        double due = epx__now() + ms * 1e-3;
        if (poll(pfd, l->efd >= 0 ? 2 : 1, ms) > 0 && pfd[0].revents)
            live_drain(l->wake);
        /* Woken far later than asked: this thread was not run (a host with
         * more ranks than cores, a sanitizer build), and the silence it
         * would see is its own.  The clocks of the peers move on by as
         * much. */
        double late = epx__now() - due;
        if (late > LIVE_PERIOD_S)
            for (int r = 0; r < l->c->nranks; r++)
                l->seen[r] += late;
    }
    if (!l->said_bye) {
        live_send(l, LIVE_BYE);
        l->said_bye = 1;
    }
    live_flush(l, LIVE_BYE_S);
    return NULL;
}

static void live_poke(epx_ucx_live_t *l)
{
    uint64_t one = 1;
    if (write(l->wake, &one, sizeof(one)) < 0)
        return;   /* the counter is full: the thread is awake anyway */
}

void epx__ucx_live_leave(epx_ucx_comm_t *u)
{
    epx_ucx_live_t *l = u->live;
    if (!l || !l->running)
        return;
    __atomic_store_n(&l->leave, 1, __ATOMIC_RELEASE);
    live_poke(l);
}

static void live_close(epx_ucx_live_t *l, ucp_ep_h ep)
{
    ucp_request_param_t p = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
        .flags = UCP_EP_CLOSE_FLAG_FORCE,   /* error mode PEER allows it */
    };
    void *req = ucp_ep_close_nbx(ep, &p);
    if (!req || UCS_PTR_IS_ERR(req))
        return;
    double deadline = epx__now() + LIVE_CLOSE_S;
    while (ucp_request_check_status(req) == UCS_INPROGRESS &&
           epx__now() < deadline)
        if (!ucp_worker_progress(l->worker))
            usleep(1000);
    ucp_request_free(req);
}

void epx__ucx_live_fini(epx_ucx_comm_t *u)
{
    epx_ucx_live_t *l = u->live;
    if (!l)
        return;
    if (l->running) {
        __atomic_store_n(&l->stop, 1, __ATOMIC_RELEASE);
        live_poke(l);
        pthread_join(l->thread, NULL);
    }
    for (int r = 0; l->eps && r < l->c->nranks; r++)
        if (l->eps[r])
            live_close(l, l->eps[r]);
    if (l->worker)
        ucp_worker_destroy(l->worker);
    if (l->wake >= 0)
        close(l->wake);
    free(l->eps);
    free(l->ectx);
    free(l->seen);
    free(l->heard);
    free(l->left);
    free(l->broken);
    free(l->err);
    free(l);
    u->live = NULL;
}

static epx_status_t live_open(epx_comm_t *c, epx_ucx_live_t *l)
{
    int R = c->nranks;
    if (!(l->eps = calloc((size_t)R, sizeof(*l->eps))) ||
        !(l->ectx = calloc((size_t)R, sizeof(*l->ectx))) ||
        !(l->seen = calloc((size_t)R, sizeof(*l->seen))) ||
        !(l->heard = calloc((size_t)R, 1)) || !(l->left = calloc((size_t)R, 1)) ||
        !(l->broken = calloc((size_t)R, 1)) ||
        !(l->err = calloc((size_t)R, sizeof(*l->err))))
        return epx__error(EPX_ERR_NOMEM, "ucx: out of memory");
    if ((l->wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
        return epx__syserror(EPX_ERR_SYSTEM, "ucx: eventfd");
    if (!c->ucx->worker)   /* no UCX peer here: nothing to watch */
        return EPX_OK;
    ucp_worker_params_t wp = {
        .field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
        .thread_mode = UCS_THREAD_MODE_SERIALIZED,   /* made here, run there */
    };
    ucs_status_t s = ucp_worker_create(c->ucx->ctx, &wp, &l->worker);
    if (s != UCS_OK) {
        l->worker = NULL;
        return epx__error(EPX_ERR_SYSTEM, "ucx: liveness worker: %s",
                          ucs_status_string(s));
    }
    if (ucp_worker_get_efd(l->worker, &l->efd) != UCS_OK)
        l->efd = -1;
    ucp_am_handler_param_t hp = {
        .field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID |
                      UCP_AM_HANDLER_PARAM_FIELD_CB |
                      UCP_AM_HANDLER_PARAM_FIELD_ARG,
        .id = LIVE_AM_ID,
        .cb = live_recv,
        .arg = l,
    };
    if ((s = ucp_worker_set_am_recv_handler(l->worker, &hp)) != UCS_OK)
        return epx__error(EPX_ERR_SYSTEM, "ucx: heartbeat handler: %s",
                          ucs_status_string(s));
    return EPX_OK;
}

epx_status_t epx__ucx_live_init(epx_comm_t *c, epx_ucx_comm_t *u)
{
    int R = c->nranks;
    epx_ucx_live_t *l = calloc(1, sizeof(*l));
    epx_status_t mine;
    if (l) {
        l->c = c;
        l->efd = l->wake = -1;
        /* checked by epx_settings_check before any communicator */
        l->silence = strtod(epx__cfg_str("EPX_PEER_SILENCE"), NULL);
        l->msg[LIVE_BEAT] = (live_msg_t){ c->rank, LIVE_BEAT, 0 };
        l->msg[LIVE_BYE] = (live_msg_t){ c->rank, LIVE_BYE, 0 };
        u->live = l;
        mine = live_open(c, l);
    } else {
        mine = epx__error(EPX_ERR_NOMEM, "ucx: out of memory");
    }
    char *all = NULL;
    size_t stride = 0;
    epx_status_t st = epx__ucx_addr_gather(c, l ? l->worker : NULL, mine,
                                           &all, &stride);
    double now = epx__now();
    mine = st;
    for (int r = 0; r < R && mine == EPX_OK && l->worker; r++) {
        if (c->peer_tl[r] != EPX_TL_UCX || !u->eps[r])
            continue;
        l->ectx[r] = (live_ep_t){ l, r };
        l->seen[r] = now;
        ucp_ep_params_t ep = {
            .field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS |
                          UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                          UCP_EP_PARAM_FIELD_ERR_HANDLER,
            .address = (const ucp_address_t *)(all + (size_t)r * stride),
            .err_mode = UCP_ERR_HANDLING_MODE_PEER,
            .err_handler = { live_ep_error, &l->ectx[r] },
        };
        ucs_status_t s = ucp_ep_create(l->worker, &ep, &l->eps[r]);
        if (s != UCS_OK) {
            l->eps[r] = NULL;
            mine = epx__error(EPX_ERR_SYSTEM, "ucx: liveness endpoint to "
                              "rank %d: %s", r, ucs_status_string(s));
        }
    }
    free(all);
    if (mine == EPX_OK && l->worker)
        mine = live_wire(l);
    if (mine == EPX_OK && l->worker) {
        int e = pthread_create(&l->thread, NULL, live_main, l);
        if (e)
            mine = epx__error(EPX_ERR_SYSTEM, "ucx: liveness thread: %s",
                              strerror(e));
        l->running = !e;
    }
    return st == EPX_OK ? epx__comm_agree_peer(c, mine, "ucx: liveness") : st;
}
