/*
 * Conformance, moving bytes: puts of every size class, unaligned source and
 * destination, many-to-one, and signal-after-data ordering under load.
 * Every byte received is compared with the sender's pattern stream, and
 * the bytes around each put with the receiver's guard stream (a put must
 * write exactly its range).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conform.h"

/* Guard: what the receiver wrote over its window before the puts. */
static uint64_t guard_key(int me, uint64_t round)
{
    return conf_key(TAG_GUARD, me, me, round);
}

static int expect_guard(const epx_win_t *w, size_t from, size_t to,
                        uint64_t key, int me)
{
    if (to > w->size)
        to = w->size;
    if (from >= to)
        return 0;
    return conf_expect((const char *)w->local + from, to - from, key, from,
                       "bytes outside every put (guard)", me);
}

/* ---- sizes: 0 B, 1 B, odd sizes, powers of two, up to max_len; one
 * ring step per size, in ascending order so the bytes after a put were
 * never written and still hold the guard */

static const size_t odd_sizes[] = {
    0, 3, 5, 7, 13, 31, 63, 65, 127, 129, 255, 257, 511, 1000, 1023, 1025,
    2047, 2049, 4095, 4097, 65535, 65537, (1u << 20) - 1, (1u << 20) + 1,
    (16u << 20) + 3,
};
#define PS_OFF 4096     /* where every put lands */
#define PS_TAIL 256     /* guard checked after it */

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

static size_t size_list(size_t max, size_t *out)
{
    size_t n = 0;
    for (size_t i = 0; i < sizeof(odd_sizes) / sizeof(odd_sizes[0]); i++)
        if (odd_sizes[i] <= max)
            out[n++] = odd_sizes[i];
    for (size_t p = 1; p <= max && p <= (64u << 20); p <<= 1)
        out[n++] = p;
    qsort(out, n, sizeof(*out), cmp_size);
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (m == 0 || out[m - 1] != out[i])
            out[m++] = out[i];
    return m;
}

int conf_put_sizes(epx_comm_t *comm, void *arg)
{
    const conf_scale_t *sc = arg;
    const int R = comm->nranks, me = comm->rank;
    const int to = (me + 1) % R, from = (me + R - 1) % R;
    size_t sizes[64];
    const size_t ns = size_list(sc->max_len, sizes), max = sizes[ns - 1];
    epx_win_t *w = NULL;
    CHECK_OK(epx__win_create(comm, PS_OFF + max + PS_TAIL, 2, &w));
    CHECK_CALL(conf_check_peers(comm, w));
    const uint64_t gk = guard_key(me, 0);
    conf_fill(w->local, w->size, gk, 0);
    CHECK_OK(epx_comm_barrier(comm));   /* guards written before any put */
    unsigned char *buf = conf_alloc(max);
    CHECK(buf);
    for (size_t n = 0; n < ns; n++) {
        const size_t len = sizes[n];
        CHECK_OK(epx__win_wait(w, 1, n));   /* `to` checked size n - 1 */
        conf_fill(buf, len, conf_key(TAG_SIZES, me, to, n), 0);
        CHECK_OK(epx__win_put_signal(w, to, PS_OFF, buf, len, 0, 1));
        CHECK_OK(epx__win_wait(w, 0, n + 1));
        char what[64];
        snprintf(what, sizeof(what), "put of %zu bytes", len);
        CHECK_CALL(conf_expect((char *)w->local + PS_OFF, len,
                               conf_key(TAG_SIZES, from, me, n), 0, what,
                               from));
        CHECK_CALL(expect_guard(w, PS_OFF - 64, PS_OFF, gk, me));
        CHECK_CALL(expect_guard(w, PS_OFF + len, PS_OFF + len + PS_TAIL, gk,
                                me));
        CHECK_OK(epx__win_signal(w, from, 1, 1));
    }
    CHECK_OK(epx__win_wait(w, 1, ns));
    free(buf);
    CHECK_OK(epx_comm_barrier(comm));   /* nobody puts into a freed window */
    epx__win_destroy(w);
    return 0;
}

/* ---- unaligned: each rank puts `rounds` segments into every rank (self
 * included); segment j has source misalignment 1 + j % 63 and a
 * destination misalignment that runs through 1..63 too (17 is prime to
 * 63), lengths from the list, 16-byte aligned destinations included (the
 * streaming-store path of shm) */

static const size_t seg_lens[] = { 0, 1, 2, 3, 7, 15, 16, 17, 63, 64, 65,
                                   127, 200, 1000, 2047, 2048, 2049, 3001,
                                   4109 };
#define NLENS (sizeof(seg_lens) / sizeof(seg_lens[0]))

typedef struct seg {
    size_t src_mis, dst_off, len;
} seg_t;

static void unaligned_seg(const conf_scale_t *sc, int src, int dst, int j,
                          seg_t *s)
{
    size_t nl = 0;
    while (nl < NLENS && seg_lens[nl] <= sc->max_len)
        nl++;
    const size_t segsz = CONF_ROUND64(sc->max_len + 64);
    s->src_mis = 1 + (size_t)j % 63;
    s->len = seg_lens[((size_t)j + (size_t)src + (size_t)dst) % nl];
    s->dst_off = ((size_t)src * (size_t)sc->rounds + (size_t)j) * segsz +
                 1 + ((size_t)j * 17 + (size_t)dst * 5 + (size_t)src * 11) % 63;
}

int conf_unaligned(epx_comm_t *comm, void *arg)
{
    const conf_scale_t *sc = arg;
    const int R = comm->nranks, me = comm->rank;
    const size_t segsz = CONF_ROUND64(sc->max_len + 64);
    epx_win_t *w = NULL;
    CHECK_OK(epx__win_create(comm, (size_t)R * (size_t)sc->rounds * segsz, 1,
                             &w));
    CHECK_CALL(conf_check_peers(comm, w));
    const uint64_t gk = guard_key(me, 1);
    conf_fill(w->local, w->size, gk, 0);
    CHECK_OK(epx_comm_barrier(comm));
    unsigned char *buf = conf_alloc(sc->max_len + 128);
    CHECK(buf);
    for (int i = 1; i <= R; i++) {
        const int peer = (me + i) % R;   /* self last */
        for (int j = 0; j < sc->rounds; j++) {
            seg_t s;
            unaligned_seg(sc, me, peer, j, &s);
            conf_fill(buf + s.src_mis, s.len,
                      conf_key(TAG_UNALIGNED, me, peer, (uint64_t)j), 0);
            CHECK_OK(epx__win_put(w, peer, s.dst_off, buf + s.src_mis, s.len));
        }
        CHECK_OK(epx__win_signal(w, peer, 0, 1));
    }
    free(buf);
    CHECK_OK(epx__win_wait(w, 0, (uint64_t)R));
    size_t at = 0;   /* walk the window: guard, segment, guard, ... */
    for (int src = 0; src < R; src++)
        for (int j = 0; j < sc->rounds; j++) {
            seg_t s;
            unaligned_seg(sc, src, me, j, &s);
            char what[96];
            snprintf(what, sizeof(what),
                     "segment %d (%zu bytes at offset %zu, source +%zu)", j,
                     s.len, s.dst_off, s.src_mis);
            CHECK_CALL(expect_guard(w, at, s.dst_off, gk, me));
            CHECK_CALL(conf_expect((char *)w->local + s.dst_off, s.len,
                                   conf_key(TAG_UNALIGNED, src, me,
                                            (uint64_t)j), 0, what, src));
            at = s.dst_off + s.len;
        }
    CHECK_CALL(expect_guard(w, at, w->size, gk, me));
    CHECK_OK(epx_comm_barrier(comm));
    epx__win_destroy(w);
    return 0;
}

/* ---- many to one: in round r every rank puts a random-length,
 * misaligned block into rank r % R's window (in one or two puts), then
 * signals; the target checks every block and every byte between them */

int conf_many_to_one(epx_comm_t *comm, void *arg)
{
    const conf_scale_t *sc = arg;
    const int R = comm->nranks, me = comm->rank;
    const size_t reg = CONF_ROUND64(sc->max_len + 64);
    epx_win_t *w = NULL;
    CHECK_OK(epx__win_create(comm, (size_t)R * reg, 1, &w));
    CHECK_CALL(conf_check_peers(comm, w));
    unsigned char *buf = conf_alloc(sc->max_len);
    CHECK(buf);
    uint64_t rooted = 0;
    for (int round = 0; round < sc->rounds; round++) {
        const int root = round % R;
        const uint64_t gk = guard_key(me, (uint64_t)round + 2);
        if (me == root)
            conf_fill(w->local, w->size, gk, 0);
        /* Also keeps the next round's puts off a window being checked. */
        CHECK_OK(epx_comm_barrier(comm));
        size_t len = conf_rand(TAG_M2O, (uint64_t)me, (uint64_t)round, 0,
                               sc->max_len);
        size_t mis = conf_rand(TAG_M2O, (uint64_t)me, (uint64_t)round, 1, 63);
        size_t cut = conf_rand(TAG_M2O, (uint64_t)me, (uint64_t)round, 2, len);
        size_t off = (size_t)me * reg + mis;
        conf_fill(buf, len, conf_key(TAG_M2O, me, root, (uint64_t)round), 0);
        CHECK_OK(epx__win_put(w, root, off, buf, cut));
        CHECK_OK(epx__win_put(w, root, off + cut, buf + cut, len - cut));
        CHECK_OK(epx__win_signal(w, root, 0, 1));
        if (me != root)
            continue;
        rooted++;
        CHECK_OK(epx__win_wait(w, 0, rooted * (uint64_t)R));
        size_t at = 0;
        for (int src = 0; src < R; src++) {
            size_t l = conf_rand(TAG_M2O, (uint64_t)src, (uint64_t)round, 0,
                                 sc->max_len);
            size_t o = (size_t)src * reg +
                       conf_rand(TAG_M2O, (uint64_t)src, (uint64_t)round, 1, 63);
            char what[64];
            snprintf(what, sizeof(what), "round %d: block at %zu", round, o);
            CHECK_CALL(expect_guard(w, at, o, gk, me));
            CHECK_CALL(conf_expect((char *)w->local + o, l,
                                   conf_key(TAG_M2O, src, me, (uint64_t)round),
                                   0, what, src));
            at = o + l;
        }
        CHECK_CALL(expect_guard(w, at, w->size, gk, me));
    }
    free(buf);
    CHECK_OK(epx_comm_barrier(comm));
    epx__win_destroy(w);
    return 0;
}

/* ---- signal after data, under load: each rank streams rounds to its
 * right-hand neighbour through `slots` regions, each with its own signal
 * slot, so up to `slots` rounds are in flight per pair; a round overwrites
 * its region with data of a fresh random length (one put_signal, or two
 * puts then a signal), the receiver waits for that slot's count and must
 * find exactly that round's bytes, then acknowledges on the sender's ack
 * slot so the region can be reused */

static size_t order_len(const conf_scale_t *sc, int src, int n, int what)
{
    return conf_rand(TAG_ORDER, (uint64_t)src, (uint64_t)n, (uint64_t)what,
                     what == 1 ? 63 : sc->max_len);
}

static int order_recv(epx_win_t *w, const conf_scale_t *sc, int me, int from,
                      int n, size_t reg)
{
    const int k = n % sc->slots;
    CHECK_OK(epx__win_wait(w, k, (uint64_t)(n / sc->slots) + 1));
    size_t len = order_len(sc, from, n, 0), mis = order_len(sc, from, n, 1);
    char what[80];
    snprintf(what, sizeof(what), "round %d (slot %d), %zu bytes", n, k, len);
    CHECK_CALL(conf_expect((char *)w->local + (size_t)k * reg + mis, len,
                           conf_key(TAG_ORDER, from, me, (uint64_t)n), 0,
                           what, from));
    CHECK_OK(epx__win_signal(w, from, sc->slots + k, 1));
    return 0;
}

int conf_signal_order(epx_comm_t *comm, void *arg)
{
    const conf_scale_t *sc = arg;
    const int R = comm->nranks, me = comm->rank, K = sc->slots;
    const int to = (me + 1) % R, from = (me + R - 1) % R;
    const size_t reg = CONF_ROUND64(sc->max_len + 64);
    epx_win_t *w = NULL;
    CHECK_OK(epx__win_create(comm, (size_t)K * reg, 2 * K, &w));
    CHECK_CALL(conf_check_peers(comm, w));
    unsigned char *buf = conf_alloc(sc->max_len);
    CHECK(buf);
    for (int n = 0; n < sc->rounds; n++) {
        const int k = n % K;
        if (n >= K)   /* `to` has checked this region's previous round */
            CHECK_OK(epx__win_wait(w, K + k, (uint64_t)(n / K)));
        size_t len = order_len(sc, me, n, 0), mis = order_len(sc, me, n, 1);
        size_t off = (size_t)k * reg + mis;
        conf_fill(buf, len, conf_key(TAG_ORDER, me, to, (uint64_t)n), 0);
        if (n % 2) {
            CHECK_OK(epx__win_put_signal(w, to, off, buf, len, k, 1));
        } else {
            size_t cut = conf_rand(TAG_ORDER, (uint64_t)me, (uint64_t)n, 2, len);
            CHECK_OK(epx__win_put(w, to, off + cut, buf + cut, len - cut));
            CHECK_OK(epx__win_put(w, to, off, buf, cut));
            CHECK_OK(epx__win_signal(w, to, k, 1));
        }
        if (n >= K - 1)   /* receive K - 1 rounds behind */
            CHECK_CALL(order_recv(w, sc, me, from, n - (K - 1), reg));
    }
    for (int m = sc->rounds - (K - 1); m < sc->rounds; m++)
        if (m >= 0)
            CHECK_CALL(order_recv(w, sc, me, from, m, reg));
    free(buf);
    CHECK_OK(epx_comm_barrier(comm));
    epx__win_destroy(w);
    return 0;
}
