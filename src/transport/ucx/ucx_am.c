/*
 * UCX puts and signals as active messages, for endpoints without RMA lanes.
 *
 * Over transports without hardware RMA (tcp) UCP emulates ucp_put_nbx
 * with a message the target handles (ucp_put_handler) and a completion it
 * sends back.  When the sender died meanwhile, that send fails and UCX
 * 1.13 aborts the target ("ucp_request.inl: Fatal: unexpected error"),
 * whatever the endpoint's error mode.  Here a put is instead an eager
 * active message of our own (no UCP_AM_SEND_FLAG_REPLY, no acknowledgement)
 * whose handler copies the data into the window: the target never sends
 * anything back, so a dead sender cannot make it fail.
 *
 * Ordering: UCX promises none between active messages (UCP design: "RMA,
 * AMO, AM - no order"), so each message carries a sequence number per
 * (sender, target) and the target applies them strictly in that order,
 * parking any that arrives early (a copy) until the gap is filled.  Puts
 * and signals therefore land in the order they were issued, which is what
 * the fence gives the RMA path: a signal lands after the data it covers.
 *
 * Messages are forced eager (UCP_AM_SEND_FLAG_EAGER): rendezvous would
 * make the target answer the sender again.  Puts are cut into chunks of
 * UCX_AM_CHUNK bytes so that the target never assembles a large message in
 * a temporary buffer.  A message for a window that does not exist (any
 * more) still takes its place in the sequence and is dropped.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "transport/ucx/ucx.h"

#define UCX_AM_ID 0x3e0            /* our handler's message id */
#define UCX_AM_CHUNK (64 * 1024)   /* bytes of one put message */
#define UCX_AM_BATCH 64            /* messages in flight per put */

typedef struct ucx_am_hdr {
    uint64_t seq;          /* per (sender, target), from 1 */
    uint64_t arg;          /* put: offset; signal: the sender's total */
    uint32_t win;          /* window id, the same on every rank */
    int32_t src;           /* sender's rank */
    int32_t slot;          /* signal slot, or -1 for a put */
    int32_t pad;
} ucx_am_hdr_t;

typedef struct ucx_am_parked {
    ucx_am_hdr_t h;
    size_t len;
    char data[];
} ucx_am_parked_t;

/* Apply one message in its turn. */
static void ucx_am_apply(epx_ucx_comm_t *u, const ucx_am_hdr_t *h,
                         const void *data, size_t len)
{
    epx_ucx_win_view_t *w = h->win < (uint32_t)u->cap_wins ? u->wins[h->win] : NULL;
    if (!w)
        return;   /* destroyed (or a failed creation): dropped */
    if (h->slot < 0) {
        if (h->arg > w->size || len > w->size - h->arg) {
            EPX_LOG(EPX_LOG_ERROR, "ucx", u->rank, "put of %zu bytes at %llu "
                    "from rank %d beyond window of %zu: dropped", len,
                    (unsigned long long)h->arg, h->src, w->size);
            return;
        }
        memcpy((char *)w->local + h->arg, data, len);
        return;
    }
    if (h->slot >= w->nsignals)
        return;
    uint64_t *word = w->sig + (size_t)h->slot * (size_t)u->nranks + (size_t)h->src;
    if (h->arg > *word)   /* totals never go back */
        __atomic_store_n(word, h->arg, __ATOMIC_RELEASE);
}

static ucs_status_t ucx_am_recv(void *arg, const void *header, size_t hlen,
                                void *data, size_t len,
                                const ucp_am_recv_param_t *param)
{
    epx_ucx_comm_t *u = arg;
    ucx_am_hdr_t h;
    if (hlen != sizeof(h) || (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV)) {
        /* Never sent by us (eager only); a rendezvous would need an
         * answer.  The sequence then stalls and the waits time out. */
        EPX_LOG(EPX_LOG_ERROR, "ucx", u->rank, "unexpected active message "
                "(header %zu bytes, rendezvous %d): dropped", hlen,
                !!(param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV));
        return UCS_OK;
    }
    memcpy(&h, header, sizeof(h));
    if (h.src < 0 || h.src >= u->nranks || h.seq < u->am_next[h.src])
        return UCS_OK;
    if (h.seq > u->am_next[h.src]) {   /* early: keep a copy for its turn */
        ucx_am_parked_t *p = malloc(sizeof(*p) + len);
        ucx_am_parked_t **q = u->nparked == u->cap_parked ? NULL : u->parked;
        if (!q && p) {
            int cap = u->cap_parked ? 2 * u->cap_parked : 16;
            if ((q = realloc(u->parked, sizeof(*q) * (size_t)cap))) {
                u->parked = q;
                u->cap_parked = cap;
            }
        }
        if (!p || !q) {
            free(p);
            EPX_LOG(EPX_LOG_ERROR, "ucx", u->rank, "out of memory keeping a "
                    "message of rank %d: dropped", h.src);
            return UCS_OK;
        }
        p->h = h;
        p->len = len;
        memcpy(p->data, data, len);
        u->parked[u->nparked++] = p;
        return UCS_OK;
    }
    ucx_am_apply(u, &h, data, len);
    u->am_next[h.src]++;
    for (int i = 0; i < u->nparked; i++) {   /* the ones now due, if any */
        ucx_am_parked_t *p = u->parked[i];
        if (p->h.src != h.src || p->h.seq != u->am_next[h.src])
            continue;
        ucx_am_apply(u, &p->h, p->data, p->len);
        u->am_next[h.src]++;
        free(p);
        u->parked[i] = u->parked[--u->nparked];
        i = -1;
    }
    return UCS_OK;
}

epx_status_t epx__ucx_am_init(epx_comm_t *c, epx_ucx_comm_t *u)
{
    u->rank = c->rank;
    u->nranks = c->nranks;
    ucp_am_handler_param_t p = {
        .field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID |
                      UCP_AM_HANDLER_PARAM_FIELD_CB |
                      UCP_AM_HANDLER_PARAM_FIELD_ARG |
                      UCP_AM_HANDLER_PARAM_FIELD_FLAGS,
        .id = UCX_AM_ID,
        .cb = ucx_am_recv,
        .arg = u,
        .flags = UCP_AM_FLAG_WHOLE_MSG,
    };
    ucs_status_t s = ucp_worker_set_am_recv_handler(u->worker, &p);
    if (s != UCS_OK)
        return epx__error(EPX_ERR_SYSTEM, "ucx: active message handler: %s",
                          ucs_status_string(s));
    return EPX_OK;
}

void epx__ucx_am_fini(epx_ucx_comm_t *u)
{
    for (int i = 0; i < u->nparked; i++)
        free(u->parked[i]);
    free(u->parked);
    free(u->wins);
}

/* Whether the endpoint has RMA lanes: UCX 1.13 has no query for an
 * endpoint's transports, so read what ucp_ep_print_info says: one "put[i]"
 * line per RMA lane (with UCX_PROTO_ENABLE=y, one "put" protocol line).
 * Should the format change, no line matches and puts go as messages:
 * slower with hardware RMA, never wrong. */
int epx__ucx_ep_has_rma(ucp_ep_h ep)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    if (!f)
        return 0;
    ucp_ep_print_info(ep, f);
    fclose(f);
    int rma = buf && (strstr(buf, "put[") || strstr(buf, " rma#"));
    free(buf);
    return rma;
}

epx_status_t epx__ucx_am_win_add(epx_ucx_comm_t *u, epx_ucx_win_view_t *w,
                                 uint32_t *id)
{
    *id = u->win_count++;   /* taken even on failure: ids stay in step */
    if (*id >= (uint32_t)u->cap_wins) {
        int cap = u->cap_wins ? 2 * u->cap_wins : 16;
        while ((uint32_t)cap <= *id)
            cap *= 2;
        epx_ucx_win_view_t **v = realloc(u->wins, sizeof(*v) * (size_t)cap);
        if (!v)
            return epx__error(EPX_ERR_NOMEM, "ucx: out of memory");
        memset(v + u->cap_wins, 0, sizeof(*v) * (size_t)(cap - u->cap_wins));
        u->wins = v;
        u->cap_wins = cap;
    }
    u->wins[*id] = w;
    return EPX_OK;
}

void epx__ucx_am_win_remove(epx_ucx_comm_t *u, uint32_t id)
{
    if (id < (uint32_t)u->cap_wins)
        u->wins[id] = NULL;
}

int epx__ucx_am_win_live(const epx_ucx_comm_t *u)
{
    int n = 0;
    for (int i = 0; i < u->cap_wins; i++)
        n += u->wins[i] != NULL;
    return n;
}

typedef struct ucx_am_batch {
    ucx_am_hdr_t h[UCX_AM_BATCH];   /* alive until their sends complete */
    void *req[UCX_AM_BATCH];
    int n;
} ucx_am_batch_t;

static epx_status_t ucx_am_drain(epx_comm_t *c, ucx_am_batch_t *b, int peer)
{
    epx_status_t st = EPX_OK;
    for (int i = 0; i < b->n; i++) {
        epx_status_t s = epx__ucx_wait(c, b->req[i], c->timeout_s, "message",
                                       peer);
        if (st == EPX_OK)
            st = s;
    }
    b->n = 0;
    return st;
}

static epx_status_t ucx_am_send(epx_comm_t *c, ucx_am_batch_t *b, int peer,
                                uint32_t win, int slot, uint64_t arg,
                                const void *src, size_t len)
{
    epx_ucx_comm_t *u = c->ucx;
    epx_status_t st = b->n == UCX_AM_BATCH ? ucx_am_drain(c, b, peer) : EPX_OK;
    if (st != EPX_OK)
        return st;
    ucx_am_hdr_t *h = &b->h[b->n];
    *h = (ucx_am_hdr_t){ ++u->am_seq[peer], arg, win, c->rank, slot, 0 };
    ucp_request_param_t p = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
        .flags = UCP_AM_SEND_FLAG_EAGER,
    };
    b->req[b->n++] = ucp_am_send_nbx(u->eps[peer], UCX_AM_ID, h, sizeof(*h),
                                     src, len, &p);
    return EPX_OK;
}

epx_status_t epx__ucx_am_put(epx_comm_t *c, int peer, uint32_t win,
                             size_t off, const void *src, size_t len)
{
    ucx_am_batch_t b;
    b.n = 0;
    epx_status_t st = EPX_OK;
    for (size_t done = 0; done < len && st == EPX_OK; done += UCX_AM_CHUNK) {
        size_t n = len - done < UCX_AM_CHUNK ? len - done : UCX_AM_CHUNK;
        st = ucx_am_send(c, &b, peer, win, -1, off + done,
                         (const char *)src + done, n);
    }
    epx_status_t s = ucx_am_drain(c, &b, peer);
    return st == EPX_OK ? s : st;
}

epx_status_t epx__ucx_am_signal(epx_comm_t *c, int peer, uint32_t win,
                                int slot, uint64_t total)
{
    ucx_am_batch_t b;
    b.n = 0;
    epx_status_t st = ucx_am_send(c, &b, peer, win, slot, total, NULL, 0);
    epx_status_t s = ucx_am_drain(c, &b, peer);
    return st == EPX_OK ? s : st;
}
