/* Helpers of the transport conformance suite: patterns, backend checks. */
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "conform.h"

conf_mode_t conf_mode = CONF_SHM;
uint64_t *conf_entered;

uint64_t conf_key(int tag, int src, int dst, uint64_t round)
{
    return epxt_hash(epxt_seed(), (uint64_t)tag, (uint64_t)src,
                     (uint64_t)dst, round);
}

void conf_fill(void *dst, size_t len, uint64_t key, size_t from)
{
    unsigned char *p = dst;
    size_t i = 0;
    while (i < len) {
        size_t pos = from + i;
        uint64_t v = epxt_mix64(key ^ (pos >> 3));
        for (unsigned b = pos & 7; b < 8 && i < len; b++, i++)
            p[i] = (unsigned char)(v >> (8 * b));
    }
}

int conf_expect(const void *p, size_t len, uint64_t key, size_t from,
                const char *what, int src)
{
    const unsigned char *got = p;
    unsigned char want[4096];
    for (size_t at = 0; at < len; at += sizeof(want)) {
        size_t n = len - at < sizeof(want) ? len - at : sizeof(want);
        conf_fill(want, n, key, from + at);
        if (memcmp(got + at, want, n) == 0)
            continue;
        size_t i = 0;
        while (got[at + i] == want[i])
            i++;
        size_t bad = 0;
        for (size_t j = i; j < n; j++)
            bad += got[at + j] != want[j];
        CHECKF(0, "%s (from rank %d, %zu bytes): byte %zu is 0x%02x, want "
               "0x%02x (%zu of the next %zu bytes differ)", what, src, len,
               at + i, got[at + i], want[i], bad, n - i);
    }
    return 0;
}

size_t conf_rand(int tag, uint64_t a, uint64_t b, uint64_t c, size_t n)
{
    return (size_t)(epxt_hash(epxt_seed() ^ 0x5eed, (uint64_t)tag, a, b, c) %
                    ((uint64_t)n + 1));
}

/* Mixed: pairs in one domain of EPX_TOPO_FILE's description use shm, the
 * others ucx. */
static int expected_tl(epx_comm_t *comm, int peer, const char **want)
{
    *want = NULL;
    switch (conf_mode) {
    case CONF_SHM:
        *want = "shm";
        break;
    case CONF_UCX:
        *want = peer == comm->rank ? NULL : "ucx";
        break;
    case CONF_MIXED: {
        const epx_topo_t *topo = NULL;
        CHECK_OK(epx_comm_topology(comm, &topo));
        if (peer != comm->rank)
            *want = epx_topo_rank_domain(topo, peer) ==
                    epx_topo_rank_domain(topo, comm->rank) ? "shm" : "ucx";
        break;
    }
    }
    return 0;
}

int conf_check_peers(epx_comm_t *comm, epx_win_t *w)
{
    for (int p = 0; p < comm->nranks; p++) {
        const char *got = epx__win_peer_tl(w, p), *want;
        CHECKF(got && epx__tl_find(got), "peer %d: backend %s is not a built "
               "one", p, got ? got : "(null)");
        CHECK_CALL(expected_tl(comm, p, &want));
        CHECKF(!want || strcmp(got, want) == 0,
               "peer %d is reached by %s, want %s (EPX_TEST_TRANSPORT=%s)", p,
               got, want, conf_mode == CONF_SHM ? "shm"
                          : conf_mode == CONF_UCX ? "ucx" : "mixed");
    }
    return 0;
}

int conf_poll_u64(epx_win_t *w, const volatile uint64_t *word, uint64_t want,
                  double secs)
{
    double deadline = epxt_now() + secs;
    for (long spins = 0; __atomic_load_n(word, __ATOMIC_ACQUIRE) != want;
         spins++) {
        epx__win_progress(w);
        if (spins < 1000)
            continue;
        CHECKF(epxt_now() < deadline, "word at %p is %llu after %.0f s, want "
               "%llu", (const void *)word,
               (unsigned long long)__atomic_load_n(word, __ATOMIC_ACQUIRE),
               secs, (unsigned long long)want);
        sched_yield();
    }
    return 0;
}

void *conf_alloc(size_t n)
{
    return aligned_alloc(64, CONF_ROUND64(n ? n : 1));
}
