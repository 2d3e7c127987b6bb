/*
 * Conformance, synchronisation: flush (ordering, as transport.h states
 * it), reuse of a put's source buffer, the barrier, and the backend check
 * of the mixed configuration.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conform.h"

/* ---- flush orders: a body, a flush, then an 8-byte sequence word after
 * it; the receiver polls the word in its own memory (no signal, as the
 * engine reads its count blocks) and must then find the whole body.  An
 * acknowledgement signal lets the sender overwrite. */

#define FO_BODY 64

int conf_flush_order(epx_comm_t *comm, void *arg)
{
    const conf_scale_t *sc = arg;
    const int R = comm->nranks, me = comm->rank;
    const int to = (me + 1) % R, from = (me + R - 1) % R;
    epx_win_t *w = NULL;
    CHECK_OK(epx__win_create(comm, FO_BODY + sc->max_len, 1, &w));
    CHECK_CALL(conf_check_peers(comm, w));
    unsigned char *buf = conf_alloc(sc->max_len);
    CHECK(buf);
    for (int n = 0; n < sc->rounds; n++) {
        CHECK_OK(epx__win_wait(w, 0, (uint64_t)n));   /* `to` read n - 1 */
        size_t len = conf_rand(TAG_FLUSH_A, (uint64_t)me, (uint64_t)n, 0,
                               sc->max_len);
        conf_fill(buf, len, conf_key(TAG_FLUSH_A, me, to, (uint64_t)n), 0);
        CHECK_OK(epx__win_put(w, to, FO_BODY, buf, len));
        CHECK_OK(epx__win_flush(w, to));
        uint64_t seq = (uint64_t)n + 1;
        CHECK_OK(epx__win_put(w, to, 0, &seq, sizeof(seq)));
        CHECK_OK(epx__win_flush(w, to));

        CHECK_CALL(conf_poll_u64(w, (volatile uint64_t *)w->local,
                                 (uint64_t)n + 1,
                                 epx__comm_timeout(comm)));
        size_t rlen = conf_rand(TAG_FLUSH_A, (uint64_t)from, (uint64_t)n, 0,
                                sc->max_len);
        char what[80];
        snprintf(what, sizeof(what), "round %d: body of %zu bytes seen after "
                 "the word put behind a flush", n, rlen);
        CHECK_CALL(conf_expect((char *)w->local + FO_BODY, rlen,
                               conf_key(TAG_FLUSH_A, from, me, (uint64_t)n), 0,
                               what, from));
        CHECK_OK(epx__win_signal(w, from, 0, 1));
    }
    CHECK_OK(epx__win_wait(w, 0, (uint64_t)sc->rounds));
    free(buf);
    CHECK_OK(epx_comm_barrier(comm));
    epx__win_destroy(w);
    return 0;
}

/* ---- flush orders overlapping puts: A, flush, then B over part of A;
 * after the signal the overlap must hold B and the rest A. */

typedef struct ovl {
    size_t la, d, lb;   /* A's length, B's start inside A, B's length */
} ovl_t;

static void overwrite_plan(const conf_scale_t *sc, int src, int n, ovl_t *o)
{
    o->la = 1 + conf_rand(TAG_FLUSH_B, (uint64_t)src, (uint64_t)n, 0,
                          sc->max_len - 1);
    o->d = conf_rand(TAG_FLUSH_B, (uint64_t)src, (uint64_t)n, 1, o->la);
    o->lb = conf_rand(TAG_FLUSH_B, (uint64_t)src, (uint64_t)n, 2,
                      sc->max_len - o->d);
}

int conf_flush_overwrite(epx_comm_t *comm, void *arg)
{
    const conf_scale_t *sc = arg;
    const int R = comm->nranks, me = comm->rank;
    const int to = (me + 1) % R, from = (me + R - 1) % R;
    epx_win_t *w = NULL;
    CHECK_OK(epx__win_create(comm, 64 + sc->max_len, 2, &w));
    CHECK_CALL(conf_check_peers(comm, w));
    unsigned char *a = conf_alloc(sc->max_len), *b = conf_alloc(sc->max_len);
    CHECK(a && b);
    for (int n = 0; n < sc->rounds; n++) {
        CHECK_OK(epx__win_wait(w, 0, (uint64_t)n));
        ovl_t o;
        overwrite_plan(sc, me, n, &o);
        conf_fill(a, o.la, conf_key(TAG_FLUSH_A, me, to, (uint64_t)n), 0);
        conf_fill(b, o.lb, conf_key(TAG_FLUSH_B, me, to, (uint64_t)n), 0);
        CHECK_OK(epx__win_put(w, to, 64, a, o.la));
        CHECK_OK(epx__win_flush(w, to));
        CHECK_OK(epx__win_put(w, to, 64 + o.d, b, o.lb));
        CHECK_OK(epx__win_signal(w, to, 1, 1));

        CHECK_OK(epx__win_wait(w, 1, (uint64_t)n + 1));
        overwrite_plan(sc, from, n, &o);
        const char *p = (const char *)w->local + 64;
        uint64_t ka = conf_key(TAG_FLUSH_A, from, me, (uint64_t)n),
                 kb = conf_key(TAG_FLUSH_B, from, me, (uint64_t)n);
        char what[96];
        snprintf(what, sizeof(what), "round %d: A (%zu bytes) before B", n,
                 o.la);
        CHECK_CALL(conf_expect(p, o.d, ka, 0, what, from));
        snprintf(what, sizeof(what), "round %d: B (%zu bytes at +%zu), put "
                 "after A and a flush", n, o.lb, o.d);
        CHECK_CALL(conf_expect(p + o.d, o.lb, kb, 0, what, from));
        if (o.d + o.lb < o.la) {
            snprintf(what, sizeof(what), "round %d: A after B", n);
            CHECK_CALL(conf_expect(p + o.d + o.lb, o.la - o.d - o.lb, ka,
                                   o.d + o.lb, what, from));
        }
        CHECK_OK(epx__win_signal(w, from, 0, 1));
    }
    CHECK_OK(epx__win_wait(w, 0, (uint64_t)sc->rounds));
    free(a);
    free(b);
    CHECK_OK(epx_comm_barrier(comm));
    epx__win_destroy(w);
    return 0;
}

/* ---- a put's source may be reused as soon as put returns: the buffer is
 * overwritten and put again at once, a stack buffer goes out of scope */

#define STACK_PUT 48

static __attribute__((noinline)) epx_status_t
put_from_stack(epx_win_t *w, int to, size_t off, uint64_t key)
{
    unsigned char tmp[STACK_PUT];
    conf_fill(tmp, sizeof(tmp), key, 0);
    return epx__win_put(w, to, off, tmp, sizeof(tmp));
}

static __attribute__((noinline)) void scrub_stack(void)
{
    volatile unsigned char junk[4 * STACK_PUT];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = 0xa5;
}

int conf_source_reuse(epx_comm_t *comm, void *arg)
{
    const conf_scale_t *sc = arg;
    const int R = comm->nranks, me = comm->rank;
    const int to = (me + 1) % R, from = (me + R - 1) % R;
    const size_t reg = CONF_ROUND64(sc->max_len + 64);
    epx_win_t *w = NULL;
    CHECK_OK(epx__win_create(comm, 2 * reg + STACK_PUT, 2, &w));
    CHECK_CALL(conf_check_peers(comm, w));
    unsigned char *buf = conf_alloc(sc->max_len);
    CHECK(buf);
    for (int n = 0; n < sc->rounds; n++) {
        CHECK_OK(epx__win_wait(w, 1, (uint64_t)n));
        size_t len = conf_rand(TAG_REUSE, (uint64_t)me, (uint64_t)n, 0,
                               sc->max_len);
        conf_fill(buf, len, conf_key(TAG_REUSE, me, to, (uint64_t)n), 0);
        CHECK_OK(epx__win_put(w, to, 0, buf, len));
        conf_fill(buf, len, conf_key(TAG_SCRIBBLE, me, to, (uint64_t)n), 0);
        CHECK_OK(epx__win_put(w, to, reg, buf, len));
        memset(buf, 0x5a, len);
        CHECK_OK(put_from_stack(w, to, 2 * reg,
                                conf_key(TAG_REUSE, me, to, (uint64_t)n + 1000000)));
        scrub_stack();
        CHECK_OK(epx__win_signal(w, to, 0, 1));

        CHECK_OK(epx__win_wait(w, 0, (uint64_t)n + 1));
        size_t rl = conf_rand(TAG_REUSE, (uint64_t)from, (uint64_t)n, 0,
                              sc->max_len);
        const char *p = w->local;
        char what[96];
        snprintf(what, sizeof(what), "round %d: %zu bytes whose source was "
                 "overwritten after put returned", n, rl);
        CHECK_CALL(conf_expect(p, rl, conf_key(TAG_REUSE, from, me, (uint64_t)n),
                               0, what, from));
        snprintf(what, sizeof(what), "round %d: second put from the same "
                 "buffer", n);
        CHECK_CALL(conf_expect(p + reg, rl,
                               conf_key(TAG_SCRIBBLE, from, me, (uint64_t)n), 0,
                               what, from));
        snprintf(what, sizeof(what), "round %d: put from a stack buffer gone "
                 "out of scope", n);
        CHECK_CALL(conf_expect(p + 2 * reg, STACK_PUT,
                               conf_key(TAG_REUSE, from, me, (uint64_t)n + 1000000),
                               0, what, from));
        CHECK_OK(epx__win_signal(w, from, 1, 1));
    }
    CHECK_OK(epx__win_wait(w, 1, (uint64_t)sc->rounds));
    free(buf);
    CHECK_OK(epx_comm_barrier(comm));
    epx__win_destroy(w);
    return 0;
}

/* ---- barrier: before barrier r every rank records "entered r" in memory
 * all ranks share (outside the transport, so the check needs nothing of
 * flush or signals); after it, every rank must have entered r, and none
 * may be past r + 1.  One rank per round arrives late on purpose. */

int conf_barrier(epx_comm_t *comm, void *arg)
{
    const conf_scale_t *sc = arg;
    const int R = comm->nranks, me = comm->rank;
    CHECK(R <= CONF_MAX_RANKS && conf_entered);
    __atomic_store_n(&conf_entered[me], 0, __ATOMIC_SEQ_CST);
    CHECK_OK(epx_comm_barrier(comm));   /* every rank reset its entry */
    for (int r = 1; r <= sc->rounds; r++) {
        if ((int)conf_rand(TAG_BARRIER, (uint64_t)r, 0, 0, (size_t)R - 1) == me)
            usleep(R > 8 ? 200 : 2000);
        __atomic_store_n(&conf_entered[me], (uint64_t)r, __ATOMIC_SEQ_CST);
        CHECK_OK(epx_comm_barrier(comm));
        for (int src = 0; src < R; src++) {
            uint64_t v = __atomic_load_n(&conf_entered[src], __ATOMIC_SEQ_CST);
            CHECKF(v >= (uint64_t)r, "left barrier %d before rank %d entered "
                   "it (rank %d is at round %llu)", r, src, src,
                   (unsigned long long)v);
            CHECKF(v <= (uint64_t)r + 1, "rank %d is at round %llu while this "
                   "rank just left barrier %d", src, (unsigned long long)v, r);
        }
    }
    CHECK_OK(epx_comm_barrier(comm));
    return 0;
}

/* ---- mixed configuration: the description must really span two
 * domains and the window must use both backends */

int conf_mixed_selection(epx_comm_t *comm, void *arg)
{
    (void)arg;
    const int R = comm->nranks, me = comm->rank;
    const epx_topo_t *topo = NULL;
    CHECK_OK(epx_comm_topology(comm, &topo));
    CHECKF(epx_topo_rank_domain(topo, 0) != epx_topo_rank_domain(topo, R - 1),
           "ranks 0 and %d are in one domain of %s: EPX_TOPO_FILE does not "
           "describe two domains", R - 1, epx_topo_name(topo));
    epx_win_t *w = NULL;
    CHECK_OK(epx__win_create(comm, 64, 1, &w));
    CHECK_CALL(conf_check_peers(comm, w));
    int n_shm = 0, n_ucx = 0;
    for (int p = 0; p < R; p++)
        if (p != me) {
            n_shm += strcmp(epx__win_peer_tl(w, p), "shm") == 0;
            n_ucx += strcmp(epx__win_peer_tl(w, p), "ucx") == 0;
        }
    CHECKF(n_shm > 0 && n_ucx > 0, "one window reaches %d peers by shm and "
           "%d by ucx: not mixed", n_shm, n_ucx);
    /* Both kinds carry data: a ring of put_signal. */
    uint64_t v = conf_key(TAG_ERR, me, (me + 1) % R, 0);
    CHECK_OK(epx__win_put_signal(w, (me + 1) % R, 0, &v, sizeof(v), 0, 1));
    CHECK_OK(epx__win_wait(w, 0, 1));
    CHECK(*(const uint64_t *)w->local == conf_key(TAG_ERR, (me + R - 1) % R,
                                                  me, 0));
    CHECK_OK(epx_comm_barrier(comm));
    epx__win_destroy(w);
    return 0;
}
