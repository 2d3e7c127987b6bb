/*
 * UCX per communicator: one UCP context and worker per rank (UCX_* from the
 * environment, e.g. UCX_TLS=tcp), worker addresses all-gathered through the
 * bootstrap, one endpoint per peer that selection gave to ucx.
 *
 * Endpoints use UCP_ERR_HANDLING_MODE_NONE: in UCX 1.13 MODE_PEER leaves
 * out the shared-memory RMA lanes (on-host puts fall back to messages,
 * ~0.1 GB/s instead of ~7 GB/s here).  A dead peer is noticed by the
 * heartbeat thread's own worker and endpoints (ucx_live.c), which the
 * waits here ask through epx__comm_alive (EPX_ERR_PEER).
 * Endpoints without RMA lanes (tcp) send puts as active messages
 * (ucx_am.c), which the target never answers.
 *
 * Destruction follows epx_comm_destroy's two barriers (every rank's
 * operations done while all still progress): flush, close the endpoints in
 * flush mode (those with RMA lanes), meet every rank through the
 * bootstrap, then release the worker and context.  Without those barriers
 * (a peer failed) the worker is left to the process exit: destroying it
 * with requests still pending crashed inside UCX 1.13 (a send request
 * purged from a shared-memory lane, seen at 144 ranks).
 */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "util/util.h"
#include "transport/ucx/ucx.h"

/* Longest flush of the outgoing operations at destruction. */
#define UCX_FINI_FLUSH_S 10.0

typedef struct ucx_ep_ctx {
    epx_ucx_comm_t *u;
    int peer, rank;
} ucx_ep_ctx_t;

static void ucx_ep_error(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    (void)ep;
    ucx_ep_ctx_t *e = arg;
    e->u->ep_status[e->peer] = EPX_ERR_PEER;
    EPX_LOG(EPX_LOG_INFO, "ucx", e->rank, "endpoint to rank %d failed: %s",
            e->peer, ucs_status_string(status));
}

/* A request failed: the peer's death as the liveness thread saw it when
 * it did (the same message as every other wait), else UCX's word. */
static epx_status_t ucx_req_failed(epx_comm_t *c, const char *what, int peer,
                                   ucs_status_t s)
{
    epx_status_t alive = epx__comm_alive(c);
    if (alive != EPX_OK)
        return alive;
    if (peer < 0)
        return epx__error(EPX_ERR_PEER, "ucx: rank %d: %s failed: %s",
                          c->rank, what, ucs_status_string(s));
    return epx__error(EPX_ERR_PEER, "ucx: rank %d: %s to rank %d failed: %s",
                      c->rank, what, peer, ucs_status_string(s));
}

epx_status_t epx__ucx_wait(epx_comm_t *c, void *req, double timeout_s,
                           const char *what, int peer)
{
    if (req == NULL)
        return EPX_OK;
    if (UCS_PTR_IS_ERR(req))
        return ucx_req_failed(c, what, peer, UCS_PTR_STATUS(req));
    epx_ucx_comm_t *u = c->ucx;
    double deadline = 0;
    ucs_status_t s;
    for (long i = 0; (s = ucp_request_check_status(req)) == UCS_INPROGRESS; i++) {
        ucp_worker_progress(u->worker);
        if (i < 4096 || i % 256)
            continue;
        /* An operation to one peer waits on that peer's life only: a
         * third rank's death (which the communicator's calls report
         * anyway) must not fail a put to a live rank, as the puts of an
         * epx_comm_shrink after a loss go on. */
        epx_status_t alive = EPX_OK;
        if (peer < 0)
            alive = epx__comm_alive(c);
        else if (__atomic_load_n(&c->peer_gone[peer], __ATOMIC_ACQUIRE))
            alive = epx__error(EPX_ERR_PEER, "ucx: rank %d: %s to rank %d: "
                               "the rank is gone", c->rank, what, peer);
        if (alive != EPX_OK) {
            ucp_request_free(req);   /* released when it completes */
            return alive;
        }
        if (deadline == 0)
            deadline = epx__now() + timeout_s;
        else if (epx__now() > deadline) {
            ucp_request_free(req);   /* released when it completes */
            return epx__error(EPX_ERR_TIMEOUT,
                              "ucx: rank %d: %s (rank %d) not complete after "
                              "%.1f s", c->rank, what, peer, timeout_s);
        }
        sched_yield();
    }
    ucp_request_free(req);
    return s == UCS_OK ? EPX_OK : ucx_req_failed(c, what, peer, s);
}

static epx_status_t ucx_open(epx_comm_t *c, epx_ucx_comm_t *u)
{
    ucp_config_t *cfg;
    ucs_status_t s = ucp_config_read(NULL, NULL, &cfg);
    if (s != UCS_OK)
        return epx__error(EPX_ERR_SYSTEM, "ucx: reading UCX_* settings: %s",
                          ucs_status_string(s));
    ucp_params_t p = {
        .field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_ESTIMATED_NUM_EPS |
                      UCP_PARAM_FIELD_MT_WORKERS_SHARED,
        .features = UCP_FEATURE_RMA | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP,
        .estimated_num_eps = (size_t)c->tl_peers[EPX_TL_UCX],
        .mt_workers_shared = 1,   /* the liveness thread has a worker */
    };
    s = ucp_init(&p, cfg, &u->ctx);
    ucp_config_release(cfg);
    if (s != UCS_OK) {
        u->ctx = NULL;
        return epx__error(EPX_ERR_SYSTEM, "ucx: ucp_init: %s",
                          ucs_status_string(s));
    }
    ucp_worker_params_t wp = {
        .field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
        .thread_mode = UCS_THREAD_MODE_SINGLE,
    };
    if ((s = ucp_worker_create(u->ctx, &wp, &u->worker)) != UCS_OK) {
        u->worker = NULL;
        return epx__error(EPX_ERR_SYSTEM, "ucx: ucp_worker_create: %s",
                          ucs_status_string(s));
    }
    if (ucp_worker_get_efd(u->worker, &u->efd) != UCS_OK)
        u->efd = -1;   /* waits then nap without early wake-up */
    return epx__ucx_am_init(c, u);
}

/* Worker addresses: lengths, then addresses padded to the longest. */
epx_status_t epx__ucx_addr_gather(epx_comm_t *c, ucp_worker_h worker,
                                  epx_status_t mine, char **out,
                                  size_t *stride)
{
    ucp_address_t *addr = NULL;
    size_t alen = 0;
    *out = NULL;
    if (mine == EPX_OK && worker) {
        ucs_status_t s = ucp_worker_get_address(worker, &addr, &alen);
        if (s != UCS_OK)
            mine = epx__error(EPX_ERR_SYSTEM, "ucx: worker address: %s",
                              ucs_status_string(s));
    }
    epx_status_t st = epx__comm_agree_peer(c, mine, "ucx: set-up");
    int R = c->nranks;
    uint64_t len = alen, max = 0, *lens = malloc(sizeof(uint64_t) * (size_t)R);
    char *send = NULL, *all = NULL;
    if (st == EPX_OK && !lens)
        st = epx__error(EPX_ERR_NOMEM, "ucx: out of memory");
    if (st == EPX_OK)
        st = epx__comm_allgather(c, &len, lens, sizeof(len));
    for (int r = 0; st == EPX_OK && r < R; r++)
        max = lens[r] > max ? lens[r] : max;
    if (st == EPX_OK && (!(send = calloc(1, max + 1)) ||
                         !(all = malloc((max + 1) * (size_t)R))))
        st = epx__error(EPX_ERR_NOMEM, "ucx: out of memory");
    if (st == EPX_OK) {
        if (addr)
            memcpy(send, addr, alen);
        st = epx__comm_allgather(c, send, all, max + 1);
    }
    if (addr)
        ucp_worker_release_address(worker, addr);
    free(lens);
    free(send);
    if (st != EPX_OK) {
        free(all);
        return st;
    }
    *out = all;
    *stride = max + 1;
    return EPX_OK;
}

static epx_status_t ucx_connect(epx_comm_t *c, epx_ucx_comm_t *u,
                                epx_status_t mine)
{
    char *all = NULL;
    size_t stride = 0;
    epx_status_t st = epx__ucx_addr_gather(c, u->worker, mine, &all, &stride);
    int R = c->nranks;
    /* Endpoints; creation only queues the wire-up (done by progress). */
    mine = st;
    for (int r = 0; r < R && mine == EPX_OK; r++) {
        if (c->peer_tl[r] != EPX_TL_UCX)
            continue;
        ucx_ep_ctx_t *e = malloc(sizeof(*e));
        if (!e) {
            mine = epx__error(EPX_ERR_NOMEM, "ucx: out of memory");
            break;
        }
        *e = (ucx_ep_ctx_t){ u, r, c->rank };
        ucp_ep_params_t ep = {
            .field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS |
                          UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                          UCP_EP_PARAM_FIELD_ERR_HANDLER,
            .address = (const ucp_address_t *)(all + (size_t)r * stride),
            .err_mode = UCP_ERR_HANDLING_MODE_NONE,
            .err_handler = { ucx_ep_error, e },
        };
        ucs_status_t s = ucp_ep_create(u->worker, &ep, &u->eps[r]);
        if (s != UCS_OK) {
            free(e);
            u->eps[r] = NULL;
            mine = epx__error(EPX_ERR_SYSTEM, "ucx: endpoint to rank %d: %s",
                              r, ucs_status_string(s));
        } else {
            u->ep_ctx[r] = e;
            u->am_put[r] = !epx__ucx_ep_has_rma(u->eps[r]);
            if (u->am_put[r])
                EPX_LOG(EPX_LOG_DEBUG, "ucx", c->rank, "no RMA lane to rank "
                        "%d: puts go as active messages", r);
        }
    }
    free(all);
    return st == EPX_OK ? epx__comm_agree_peer(c, mine, "ucx: set-up") : st;
}

epx_status_t epx__ucx_comm_init(epx_comm_t *c)
{
    if (!c->ucx_any)
        return EPX_OK;
    int R = c->nranks;
    epx_ucx_comm_t *u = calloc(1, sizeof(*u));
    epx_status_t mine = EPX_OK;
    if (u)
        u->efd = -1;
    if (!u || !(u->eps = calloc((size_t)R, sizeof(*u->eps))) ||
        !(u->ep_ctx = calloc((size_t)R, sizeof(*u->ep_ctx))) ||
        !(u->ep_status = calloc((size_t)R, sizeof(*u->ep_status))) ||
        !(u->am_put = calloc((size_t)R, 1)) ||
        !(u->am_seq = calloc((size_t)R, sizeof(uint64_t))) ||
        !(u->am_next = malloc(sizeof(uint64_t) * (size_t)R)))
        mine = epx__error(EPX_ERR_NOMEM, "ucx: out of memory");
    for (int r = 0; mine == EPX_OK && r < R; r++)
        u->am_next[r] = 1;
    c->ucx = u;
    if (mine == EPX_OK && c->tl_peers[EPX_TL_UCX])
        mine = ucx_open(c, u);
    epx_status_t st = ucx_connect(c, u, mine);
    if (st == EPX_OK) {   /* whether any rank sends puts as messages */
        int32_t v = 0, *all = malloc(sizeof(int32_t) * (size_t)R);
        for (int r = 0; r < R; r++)
            v |= u->am_put[r];
        st = all ? epx__comm_allgather(c, &v, all, sizeof(v))
                 : epx__error(EPX_ERR_NOMEM, "ucx: out of memory");
        for (int r = 0; st == EPX_OK && r < R; r++)
            u->am_any |= all[r];
        free(all);
    }
    if (st == EPX_OK && u->worker) {
        /* Flush while all ranks progress (each is here, past the last
         * all-gather): an endpoint still wiring up when its peer dies
         * fails in error mode NONE, which UCX 1.13 answered with abort()
         * at the survivors' next progress (an epx_comm_shrink after a rank
         * lost before its first call).  This does not wire up the lanes
         * that UCX 1.13 wires at their first send (over tcp its debug log
         * shows their wire-up requests leave at the first barrier); the
         * liveness endpoints are wired up for certain (ucx_live.c). */
        ucp_request_param_t prm = { 0 };
        st = epx__ucx_wait(c, ucp_worker_flush_nbx(u->worker, &prm),
                           c->timeout_s, "wire-up flush", -1);
    }
    if (st == EPX_OK)
        st = epx__ucx_live_init(c, u);
    if (st != EPX_OK) {
        epx__ucx_comm_fini(c, 1);
        return st;
    }
    EPX_LOG(EPX_LOG_DEBUG, "ucx", c->rank, "worker up, %d endpoints",
            c->tl_peers[EPX_TL_UCX]);
    return EPX_OK;
}

/* Puts sent as messages have left when a flush returns, but land only when
 * their target handles them: every rank learns how many messages each peer
 * sent it, and handles them all before it goes on.  The counts are
 * gathered first, through the bootstrap (which does not progress UCX): a
 * rank blocked there while a peer's flush needed its progress would stall
 * both. */
epx_status_t epx__ucx_comm_quiet(epx_comm_t *c)
{
    epx_ucx_comm_t *u = c->ucx;
    if (!u)
        return EPX_OK;
    int R = c->nranks;
    uint64_t *all = NULL;
    /* A peer known dead would never answer the gather below. */
    epx_status_t st = epx__comm_alive(c);
    if (st == EPX_OK && u->am_any) {   /* agreed: every rank takes part */
        all = malloc(sizeof(uint64_t) * (size_t)R * (size_t)R);
        st = all ? epx__comm_allgather(c, u->am_seq, all,
                                       sizeof(uint64_t) * (size_t)R)
                 : epx__error(EPX_ERR_NOMEM, "ucx: out of memory");
    }
    if (st == EPX_OK && u->worker) {
        ucp_request_param_t prm = { 0 };
        st = epx__ucx_wait(c, ucp_worker_flush_nbx(u->worker, &prm),
                           c->timeout_s, "flush", -1);
    }
    double deadline = epx__now() + c->timeout_s;
    for (int r = 0; all && r < R && st == EPX_OK; r++) {
        uint64_t sent = all[(size_t)r * (size_t)R + (size_t)c->rank];
        for (long i = 0; u->am_next[r] <= sent && st == EPX_OK; i++) {
            ucp_worker_progress(u->worker);
            if (i % 256 == 255 && (st = epx__comm_alive(c)) != EPX_OK)
                break;
            if (i % 256 == 255 && epx__now() > deadline)
                st = epx__error(EPX_ERR_TIMEOUT, "ucx: rank %d: %llu messages "
                                "of rank %d not arrived after %.1f s", c->rank,
                                (unsigned long long)(sent + 1 - u->am_next[r]),
                                r, c->timeout_s);
            else if (i > 4096)
                sched_yield();
        }
    }
    free(all);
    return st;
}

typedef struct ucx_hold {
    void *addr;
    size_t len;
} ucx_hold_t;

void epx__ucx_comm_hold(epx_comm_t *c, void *addr, size_t len, int replace)
{
    epx_ucx_comm_t *u = c->ucx;
    if (!u || !u->worker || !addr)
        return;
    uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)addr / pg * pg;
    size_t n = ((uintptr_t)addr + (len ? len : 1) + pg - 1) / pg * pg - a;
    if (u->nholds == u->cap_holds) {
        int cap = u->cap_holds ? 2 * u->cap_holds : 16;
        ucx_hold_t *h = realloc(u->holds, sizeof(*h) * (size_t)cap);
        if (!h) {
            if (replace)
                munmap((void *)a, n);
            return;
        }
        u->holds = h;
        u->cap_holds = cap;
    }
    /* NORESERVE: nothing is committed unless a late put touches a page.
     * FIXED replaces a mapping in one step; NOREPLACE never clobbers a
     * range someone else mapped since (then it is not ours to hold). */
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE |
                (replace ? MAP_FIXED : MAP_FIXED_NOREPLACE);
    void *p = mmap((void *)a, n, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (p == MAP_FAILED || p != (void *)a) {
        if (p != MAP_FAILED)
            munmap(p, n);   /* a kernel without NOREPLACE took it as a hint */
        if (replace)
            munmap((void *)a, n);
        EPX_LOG(EPX_LOG_DEBUG, "ucx", c->rank, "window range %p+%zu not held",
                (void *)a, n);
        return;
    }
    u->holds[u->nholds++] = (ucx_hold_t){ p, n };
}

/* Leave the context, worker and held ranges to the process exit (kept
 * reachable: not a leak).  For a rank that could not finish with its
 * peers: requests may still be inside the worker, and destroying it under
 * them, or unmapping ranges they may still write, can crash. */
static void ucx_keep(epx_comm_t *c, epx_ucx_comm_t *u)
{
    static epx_ucx_comm_t *kept;
    EPX_LOG(EPX_LOG_INFO, "ucx", c->rank, "the UCX worker is left to the "
            "process exit");
    u->kept = __atomic_exchange_n(&kept, u, __ATOMIC_ACQ_REL);
    c->ucx = NULL;
}

void epx__ucx_comm_leave(epx_comm_t *c)
{
    if (c->ucx)
        epx__ucx_live_leave(c->ucx);
}

/* The end of a clean finish that every rank takes part in: this rank's
 * worker flushed (and, with `close`, its endpoints closed), then every rank
 * met through the bootstrap, which does not progress UCX (nothing is left
 * that needs it).  No worker goes before every rank has closed its
 * endpoints: a worker destroyed early closes its sockets under a peer's
 * close still flushing (tcp: "Endpoint timeout"). */
static epx_status_t ucx_finish(epx_comm_t *c, epx_ucx_comm_t *u, int close)
{
    double t = c->timeout_s < UCX_FINI_FLUSH_S ? c->timeout_s : UCX_FINI_FLUSH_S;
    epx_status_t st = EPX_OK;
    if (u->worker && u->eps) {
        /* Flush mode (force is refused in error mode NONE): each close
         * completes once its lanes are flushed, which the destruction
         * barriers made quick.  Endpoints without RMA lanes (tcp) stay
         * open: closing one waits for its peer's progress, which a peer in
         * the rendezvous below does not make (10 s each); after the
         * barriers and the flush nothing is pending on them, and they go
         * with the worker. */
        ucp_request_param_t prm = { 0 };
        st = epx__ucx_wait(c, ucp_worker_flush_nbx(u->worker, &prm), t,
                           "flush at destruction", -1);
        for (int r = 0; close && r < c->nranks && st == EPX_OK; r++) {
            if (!u->eps[r] || u->am_put[r])
                continue;
            st = epx__ucx_wait(c, ucp_ep_close_nbx(u->eps[r], &prm), t,
                               "endpoint close", r);
            u->eps[r] = NULL;
        }
    }
    int32_t mine = st, *all = malloc(sizeof(int32_t) * (size_t)c->nranks);
    epx_status_t ag = all ? epx__comm_allgather(c, &mine, all, sizeof(mine))
                          : EPX_ERR_NOMEM;
    free(all);
    return st != EPX_OK ? st : ag;
}

void epx__ucx_comm_settle(epx_comm_t *c)
{
    epx_ucx_comm_t *u = c->ucx;
    if (u && ucx_finish(c, u, 0) != EPX_OK)
        EPX_LOG(EPX_LOG_INFO, "ucx", c->rank, "settling at destruction: %s",
                epx_last_error());
}

void epx__ucx_comm_fini(epx_comm_t *c, int clean)
{
    epx_ucx_comm_t *u = c->ucx;
    if (!u)
        return;
    /* Its thread reads the communicator, which goes after this. */
    epx__ucx_live_fini(u);
    if (!clean && u->worker) {
        ucx_keep(c, u);
        return;
    }
    /* a rank without a worker after a failure skips the rendezvous too */
    epx_status_t st = clean ? ucx_finish(c, u, 1) : EPX_OK;
    /* A window still alive (an engine not destroyed before its
     * communicator) keeps memory registered: ucp_cleanup would abort in
     * UCX's registration cache. */
    int live = epx__ucx_am_win_live(u);
    if (st != EPX_OK || live) {
        if (live)
            EPX_LOG(EPX_LOG_WARN, "ucx", c->rank, "%d window(s) still alive "
                    "at epx_comm_destroy (destroy engines first)", live);
        else
            EPX_LOG(EPX_LOG_INFO, "ucx", c->rank, "%s", epx_last_error());
        ucx_keep(c, u);
        return;
    }
    if (u->worker)
        ucp_worker_destroy(u->worker);
    epx__ucx_am_fini(u);
    for (int i = 0; i < u->nholds; i++)   /* nothing can land there now */
        munmap(u->holds[i].addr, u->holds[i].len);
    free(u->holds);
    if (u->ctx)
        ucp_cleanup(u->ctx);
    if (u->ep_ctx)
        for (int r = 0; r < c->nranks; r++)
            free(u->ep_ctx[r]);
    free(u->ep_ctx);
    free(u->eps);
    free(u->ep_status);
    free(u->am_put);
    free(u->am_seq);
    free(u->am_next);
    free(u);
    c->ucx = NULL;
}
