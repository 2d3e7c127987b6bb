/*
 * vg_ucx: a UCX communicator and window lifecycle, run under valgrind by
 * valgrind-ucx.sh (its README entry says what is checked).  Two forked
 * ranks, every pair over ucx (EPX_TRANSPORTS=ucx from the script):
 *
 *   1. a window: put, signal, wait, check the bytes; a second window
 *      with put_signal; barrier; destroy both;
 *   2. a failed window creation: rank 1 asks for memory nobody has, so
 *      rank 1 fails with EPX_ERR_NOMEM and rank 0, which had allocated
 *      and registered its part, with EPX_ERR_PEER;
 *   3. a wait nobody answers: EPX_ERR_TIMEOUT after 1 s (the comm's
 *      timeout, 30 s elsewhere since valgrind is slow, is lowered for that
 *      wait), the window still usable and destroyed after a barrier.
 *
 * With VG_UCX_LEAK=1 each rank also drops a malloc'd block on purpose:
 * valgrind must then report a definite leak (the script checks that the
 * leak check can fail).  Exit status: 0 when every step behaved.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/comm.h"
#include "transport/transport.h"

#define FAIL(...)                                                          \
    do {                                                                   \
        fprintf(stderr, "vg_ucx: rank %d: ", comm->rank);                  \
        fprintf(stderr, __VA_ARGS__);                                      \
        fprintf(stderr, " (%s)\n", epx_last_error());                      \
        return 1;                                                          \
    } while (0)

static void *volatile leaked;

static int lifecycle(epx_comm_t *comm)
{
    const int me = comm->rank, peer = 1 - me;
    epx_win_t *w = NULL, *w2 = NULL;
    if (epx__win_create(comm, 1 << 16, 2, &w) != EPX_OK)
        FAIL("window create");
    if (strcmp(epx__win_peer_tl(w, peer), "ucx"))
        FAIL("peer reached by %s, not ucx", epx__win_peer_tl(w, peer));
    char buf[4096];
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (char)(i * 7 + (size_t)me);
    if (epx__win_put(w, peer, 100, buf, sizeof(buf)) != EPX_OK ||
        epx__win_signal(w, peer, 1, 1) != EPX_OK)
        FAIL("put/signal");
    if (epx__win_wait(w, 1, 1) != EPX_OK)
        FAIL("wait");
    for (size_t i = 0; i < sizeof(buf); i++)
        if (((char *)w->local)[100 + i] != (char)(i * 7 + (size_t)peer))
            FAIL("byte %zu wrong", i);
    if (epx__win_create(comm, 64, 1, &w2) != EPX_OK)
        FAIL("second window");
    uint64_t v = 0x1234 + (uint64_t)me;
    if (epx__win_put_signal(w2, peer, 0, &v, sizeof(v), 0, 1) != EPX_OK ||
        epx__win_wait(w2, 0, 1) != EPX_OK ||
        *(uint64_t *)w2->local != 0x1234 + (uint64_t)peer)
        FAIL("put_signal on the second window");
    if (epx_comm_barrier(comm) != EPX_OK)
        FAIL("barrier");
    epx__win_destroy(w2);
    epx__win_destroy(w);
    return 0;
}

static int failed_create(epx_comm_t *comm)
{
    /* Far beyond any address space: UCX cannot allocate it. */
    size_t size = comm->rank == 1 ? (size_t)1 << 60 : 1 << 16;
    epx_win_t *w = NULL;
    epx_status_t st = epx__win_create(comm, size, 1, &w);
    epx_status_t want = comm->rank == 1 ? EPX_ERR_NOMEM : EPX_ERR_PEER;
    if (st != want)
        FAIL("failed creation gave %s, expected %s", epx_status_str(st),
             epx_status_str(want));
    if (w)
        FAIL("failed creation left a window");
    return 0;
}

static int timeout(epx_comm_t *comm)
{
    epx_win_t *w = NULL;
    if (epx__win_create(comm, 64, 2, &w) != EPX_OK)
        FAIL("window create");
    double keep = comm->timeout_s;
    comm->timeout_s = 1.0;
    epx_status_t st = epx__win_wait(w, 0, 1);   /* nobody signals slot 0 */
    comm->timeout_s = keep;
    if (st != EPX_ERR_TIMEOUT)
        FAIL("wait gave %s, expected EPX_ERR_TIMEOUT", epx_status_str(st));
    if (epx__win_signal(w, 1 - comm->rank, 1, 1) != EPX_OK ||
        epx__win_wait(w, 1, 1) != EPX_OK)
        FAIL("window unusable after the timeout");
    if (epx_comm_barrier(comm) != EPX_OK)
        FAIL("barrier");
    epx__win_destroy(w);
    return 0;
}

static int rank_main(epx_comm_t *comm, void *arg)
{
    (void)arg;
    if (getenv("VG_UCX_LEAK") && !strcmp(getenv("VG_UCX_LEAK"), "1")) {
        leaked = malloc(123);
        leaked = NULL;   /* definitely lost */
    }
    int rc = lifecycle(comm);
    if (!rc)
        rc = failed_create(comm);
    if (!rc)
        rc = timeout(comm);
    return rc;
}

int main(void)
{
    epx_comm_params_t p = EPX_COMM_PARAMS_INIT;
    p.timeout_s = 30.0;
    int bad = -1;
    epx_status_t st = epx_launch_local(2, &p, rank_main, NULL, &bad);
    if (st != EPX_OK) {
        fprintf(stderr, "vg_ucx: rank %d failed: %s (%s)\n", bad,
                epx_status_str(st), epx_last_error());
        return 1;
    }
    printf("vg_ucx: lifecycle, failed creation and timeout passed\n");
    return 0;
}
