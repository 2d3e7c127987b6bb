/*
 * Elastic communicators (epx_comm_shrink).  After a rank is lost the
 * survivors agree on who is alive and build a communicator of the live
 * ranks, without the old bootstrap: its root may be the rank that died,
 * and a caller's all-gather (MPI, torch) would wait for the dead.
 *
 * Both steps go through a mailbox in the old communicator's barrier window
 * (EPX_COMM_CTL_BYTES): slot (round parity, source) of every rank holds
 * one message of up to MB_PAYLOAD bytes.  A sender puts the body, flushes,
 * then puts the round number into the slot's first word; the receiver
 * polls that word in its own memory (the transport contract).  Two
 * parities are enough: a rank sends round n + 2 only after it received
 * every peer's round n + 1, sent after that peer had read round n.
 *
 * Agreement: every rank sends its set of gone ranks (seen dead by a pidfd
 * or the UCX liveness thread, or left) to every rank it thinks alive and
 * merges what it receives; a peer found dead while awaited joins the set.
 * It ends after a round in which nothing changed and every message equals
 * the own set: then every live rank received the same messages and ends in
 * the same round.  A rank lost during the agreement can leave the ranks
 * apart; every later message carries its kind and a hash of the sender's
 * set, so a rank that went on sees it and fails (EPX_ERR_PEER) instead of
 * waiting out the timeout.
 *
 * The new communicator's bootstrap is an all-gather through the same
 * mailbox among the agreed ranks, so the old communicator lives (its
 * windows, UCX worker and watch) until the last communicator shrunk from
 * it is destroyed.
 */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <time.h>

#include "util/util.h"
#include "core/comm.h"

enum { MB_AGREE = 1, MB_GATHER = 2 };

typedef struct mb_slot {
    uint64_t seq;              /* the round, written last: the slot is full */
    uint32_t kind;             /* MB_AGREE, MB_GATHER */
    uint32_t len;              /* bytes of data used */
    uint64_t view;             /* hash of the sender's gone set */
    uint64_t pad;
    unsigned char data[EPX_COMM_MBOX_SLOT - 32];
} mb_slot_t;

#define MB_PAYLOAD ((size_t)(EPX_COMM_MBOX_SLOT - 32))

static size_t mb_off(const epx_comm_t *c, uint64_t round, int src)
{
    return EPX_COMM_CTL_HEAD +
           ((size_t)(round & 1) * (size_t)c->nranks + (size_t)src) *
               EPX_COMM_MBOX_SLOT;
}

static mb_slot_t *mb_local(epx_comm_t *c, uint64_t round, int src)
{
    return (mb_slot_t *)((char *)c->ctl->local + mb_off(c, round, src));
}

/* Peer r seen dead (its pidfd, or the UCX liveness thread) or gone on
 * purpose (it destroyed the communicator): either way it takes no part. */
static int mb_peer_gone(epx_comm_t *c, int r)
{
    if (r == c->rank)
        return 0;
    if (c->alive && c->alive[r].fd >= 0 &&
        poll(&c->alive[r], 1, 0) > 0 && c->alive[r].revents)
        __atomic_store_n(&c->peer_gone[r], 1, __ATOMIC_RELEASE);
    return __atomic_load_n(&c->peer_gone[r], __ATOMIC_ACQUIRE) ||
           (c->peer_left && c->peer_left[r] &&
            __atomic_load_n(c->peer_left[r], __ATOMIC_ACQUIRE));
}

static uint64_t mb_hash(const uint8_t *gone, int n)
{
    uint64_t h = 1469598103934665603ull;   /* FNV-1a over the set */
    for (int r = 0; r < n; r++)
        h = (h ^ (uint64_t)(gone[r] != 0)) * 1099511628211ull;
    return h;
}

static void mb_nap(long i)
{
    if (i < 64) {
        epx__cpu_relax();
    } else if (i < 256) {
        sched_yield();
    } else {
        struct timespec ts = { 0, 50 * 1000 };
        nanosleep(&ts, NULL);
    }
}

/* One round: `len` bytes (<= MB_PAYLOAD) to every rank not gone, theirs
 * into out + at[r] * stride.  allow_loss: a peer found dead meanwhile
 * joins gone (and *changed is set); else the round fails.  A message of
 * another kind or, for MB_GATHER, another set: EPX_ERR_PEER. */
static epx_status_t mb_round(epx_comm_t *c, uint8_t *gone, int allow_loss,
                             int *changed, uint32_t kind, uint64_t view,
                             const void *send, size_t len, unsigned char *out,
                             const int *at, size_t stride)
{
    uint64_t n = ++c->mbox_seq;
    epx_win_t *w = c->ctl;
    mb_slot_t msg;
    memset(&msg, 0, sizeof(msg));
    msg.seq = n;
    msg.kind = kind;
    msg.len = (uint32_t)len;
    msg.view = view;
    memcpy(msg.data, send, len);
    size_t off_body = offsetof(mb_slot_t, kind);
    epx_status_t bad = EPX_OK;
    for (int r = 0; r < c->nranks; r++) {
        if (r == c->rank || gone[r])
            continue;
        size_t off = mb_off(c, n, c->rank);
        epx_status_t st = epx__win_put(w, r, off + off_body,
                                       (char *)&msg + off_body,
                                       offsetof(mb_slot_t, data) - off_body + len);
        if (st == EPX_OK)
            st = epx__win_flush(w, r);
        if (st == EPX_OK)
            st = epx__win_put(w, r, off, &msg.seq, sizeof(msg.seq));
        if (st != EPX_OK) {
            /* the others still get theirs: they must not wait on this
             * rank for what it failed to send to a third */
            if (!allow_loss) {
                if (bad == EPX_OK)
                    bad = st;
                continue;
            }
            gone[r] = 1;   /* unreachable: as good as dead */
            *changed = 1;
        }
    }
    if (out)
        memcpy(out + (size_t)at[c->rank] * stride, send, len);
    uint8_t *got = calloc((unsigned)c->nranks, 1);
    if (!got)
        return epx__error(EPX_ERR_NOMEM, "shrink: out of memory");
    int pending = 0;
    for (int r = 0; r < c->nranks; r++)
        pending += r != c->rank && !gone[r];
    double deadline = epx__now() + c->timeout_s, next_scan = 0;
    for (long i = 0; pending > 0 && bad == EPX_OK; i++) {
        for (epx_comm_t *x = c; x; x = x->parent)   /* our bootstrap's too */
            epx__win_progress(x->ctl);
        for (int r = 0; r < c->nranks; r++) {
            mb_slot_t *s = mb_local(c, n, r);
            if (r == c->rank || gone[r] || got[r] ||
                __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE) != n)
                continue;
            got[r] = 1;
            pending--;
            if (s->kind != kind || (kind == MB_GATHER && s->view != view) ||
                s->len != len) {
                bad = epx__error(EPX_ERR_PEER, "shrink: rank %d: rank %d "
                                 "ended the agreement on the live ranks with "
                                 "another answer (a rank was lost during "
                                 "it)", c->rank, r);
                break;
            }
            if (out)
                memcpy(out + (size_t)at[r] * stride, s->data, len);
        }
        if (pending == 0 || bad != EPX_OK)
            break;
        double now = i >= 256 ? epx__now() : 0;
        if (now > next_scan) {
            next_scan = now + 0.01;
            int first = -1;
            for (int r = 0; r < c->nranks && bad == EPX_OK; r++) {
                if (r == c->rank || gone[r] || got[r])
                    continue;
                if (!mb_peer_gone(c, r)) {
                    first = first < 0 ? r : first;
                    continue;
                }
                if (!allow_loss) {   /* the agreed set stays as agreed */
                    bad = epx__error(EPX_ERR_PEER, "rank %d: rank %d (of the "
                                     "communicator this one was shrunk from, "
                                     "whose mailbox is its bootstrap) is "
                                     "gone", c->rank, r);
                    break;
                }
                gone[r] = 1;
                *changed = 1;
                pending--;
            }
            if (bad == EPX_OK && pending > 0 && now > deadline)
                bad = epx__error(EPX_ERR_TIMEOUT, "shrink: rank %d: nothing "
                                 "from rank %d after %.1f s", c->rank, first,
                                 c->timeout_s);
        }
        mb_nap(i);
    }
    free(got);
    return bad;
}

/* All-gather of `bytes` through the mailbox among the ranks not gone (a
 * round per MB_PAYLOAD bytes); rank r's bytes land at recv + at[r]*bytes. */
static epx_status_t mb_exchange(epx_comm_t *c, uint8_t *gone, int allow_loss,
                                int *changed, uint32_t kind, uint64_t view,
                                const void *send, void *recv, size_t bytes,
                                const int *at)
{
    size_t done = 0;
    do {
        size_t len = bytes - done < MB_PAYLOAD ? bytes - done : MB_PAYLOAD;
        epx_status_t st = mb_round(c, gone, allow_loss, changed, kind, view,
                                   (const char *)send + done, len,
                                   (unsigned char *)recv + done, at, bytes);
        if (st != EPX_OK)
            return st;
        done += len;
    } while (done < bytes);
    return EPX_OK;
}

/* Agree on gone[] with every live rank (see the top of the file). */
static epx_status_t shrink_agree(epx_comm_t *c, uint8_t *gone)
{
    int n = c->nranks;
    size_t nb = ((size_t)n + 7) / 8;   /* a gone set as a bitmap */
    int *at = malloc(sizeof(int) * (size_t)n);
    uint8_t *all = malloc((size_t)n * nb);
    if (!at || !all) {
        free(at);
        free(all);
        return epx__error(EPX_ERR_NOMEM, "shrink: out of memory");
    }
    for (int r = 0; r < n; r++)
        at[r] = r;
    epx_status_t st = EPX_OK;
    for (int r = 0; r < n; r++)
        gone[r] = (uint8_t)mb_peer_gone(c, r);
    for (int round = 0;; round++) {
        if (round > n + 2) {   /* each round that changes adds a rank */
            st = epx__error(EPX_ERR_PEER, "shrink: rank %d: no agreement on "
                            "the live ranks after %d rounds", c->rank, round);
            break;
        }
        int changed = 0;
        uint8_t mine[EPX_MAX_RANKS / 8 + 1];
        memset(mine, 0, nb);
        for (int r = 0; r < n; r++)
            if (gone[r])
                mine[r / 8] |= (uint8_t)(1u << (r % 8));
        memset(all, 0, (size_t)n * nb);
        st = mb_exchange(c, gone, 1, &changed, MB_AGREE, 0, mine, all, nb, at);
        if (st != EPX_OK)
            break;
        int same = !changed;
        for (int r = 0; r < n; r++) {
            if (gone[r] || r == c->rank)
                continue;
            const uint8_t *theirs = all + (size_t)r * nb;
            same &= !memcmp(theirs, mine, nb);
            for (int q = 0; q < n; q++)
                if (theirs[q / 8] & (1u << (q % 8)))
                    gone[q] = 1;
        }
        if (gone[c->rank]) {
            st = epx__error(EPX_ERR_PEER, "shrink: rank %d: the other ranks "
                            "took this rank for dead", c->rank);
            break;
        }
        if (same)
            break;
    }
    free(at);
    free(all);
    return st;
}

/* The new communicator's bootstrap: the mailbox of the old one. */
typedef struct shrink_boot {
    epx_boot_t base;
    epx_comm_t *old;
    uint8_t *gone;             /* [old nranks], agreed */
    int *at;                   /* [old nranks] new rank of each (or -1) */
    uint64_t view;
} shrink_boot_t;

static epx_status_t sb_allgather(epx_boot_t *base, const void *send,
                                 void *recv, size_t bytes)
{
    shrink_boot_t *b = (shrink_boot_t *)base;
    int changed = 0;
    return mb_exchange(b->old, b->gone, 0, &changed, MB_GATHER, b->view, send,
                       recv, bytes, b->at);
}

static void sb_destroy(epx_boot_t *base)
{
    shrink_boot_t *b = (shrink_boot_t *)base;
    epx_comm_t *old = b->old;
    free(b->gone);
    free(b->at);
    free(b);
    old->successors--;
    epx__comm_win_gone(old);   /* the old one goes if destroyed already */
}

epx_status_t epx_comm_shrink(epx_comm_t *comm, uint8_t *live,
                             epx_comm_t **out)
{
    if (!comm || !out)
        return epx__error(EPX_ERR_INVALID, "shrink: comm or output NULL");
    *out = NULL;
    if (comm->destroyed || !comm->ctl)
        return epx__error(EPX_ERR_STATE, "shrink: the communicator was "
                          "destroyed");
    int n = comm->nranks;
    shrink_boot_t *b = calloc(1, sizeof(*b));
    if (!b || !(b->gone = calloc((size_t)n, 1)) ||
        !(b->at = malloc(sizeof(int) * (size_t)n))) {
        if (b)
            free(b->gone);
        free(b);
        return epx__error(EPX_ERR_NOMEM, "shrink: out of memory");
    }
    double t0 = epx__now();
    epx_status_t st = shrink_agree(comm, b->gone);
    if (st != EPX_OK) {
        free(b->gone);
        free(b->at);
        free(b);
        return st;
    }
    int nlive = 0, first_gone = -1;
    for (int r = 0; r < n; r++) {
        b->at[r] = b->gone[r] ? -1 : nlive++;
        if (b->gone[r] && first_gone < 0)
            first_gone = r;
    }
    if (live)
        for (int r = 0; r < n; r++)
            live[r] = !b->gone[r];
    /* The old communicator's calls end now (its teardown then skips the
     * barrier the dead would never pass). */
    if (first_gone >= 0 && comm->dead_rank < 0)
        comm->dead_rank = first_gone;
    b->view = mb_hash(b->gone, n);
    b->base.rank = b->at[comm->rank];
    b->base.nranks = nlive;
    b->base.allgather = sb_allgather;
    b->base.destroy = sb_destroy;
    b->base.timeout_s = comm->timeout_s;
    b->old = comm;
    epx__comm_hold(comm);
    comm->successors++;
    EPX_LOG(EPX_LOG_INFO, "core", comm->rank, "shrink: %d of %d ranks live "
            "(agreed in %.3f s); this rank becomes %d", nlive, n,
            epx__now() - t0, b->base.rank);
    /* Takes the bootstrap: on failure it is destroyed, letting go of
     * the old communicator. */
    epx_status_t st2 = epx__comm_create_boot(&b->base, comm->timeout_s, NULL,
                                             out);
    if (st2 == EPX_OK)
        (*out)->parent = comm;
    return st2;
}
