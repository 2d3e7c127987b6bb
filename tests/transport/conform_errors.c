/*
 * Conformance, error paths: puts beyond the window (EPX_ERR_RANGE, nothing
 * written), bad peer and slot indices (EPX_ERR_INVALID), and a wait that
 * nobody answers (EPX_ERR_TIMEOUT within a bounded time, the window
 * usable afterwards, other slots and windows not confused with it); a
 * window left alive when its communicator is destroyed (a caller's bug:
 * the process must go on, not abort in the backend).
 */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "util/util.h"
#include "conform.h"

#define ER_SIZE 100

int conf_err_put_range(epx_comm_t *comm, void *arg)
{
    (void)arg;
    const int R = comm->nranks, me = comm->rank;
    const int to = (me + 1) % R, from = (me + R - 1) % R;
    epx_win_t *w = NULL;
    CHECK_OK(epx__win_create(comm, ER_SIZE, 1, &w));
    CHECK_CALL(conf_check_peers(comm, w));
    const uint64_t gk = conf_key(TAG_GUARD, me, me, 99);
    conf_fill(w->local, ER_SIZE, gk, 0);
    CHECK_OK(epx_comm_barrier(comm));
    unsigned char b[16];
    conf_fill(b, sizeof(b), conf_key(TAG_ERR, me, to, 1), 0);
    static const struct { size_t off, len; } bad[] = {
        { ER_SIZE, 1 }, { ER_SIZE - 7, 8 }, { 0, ER_SIZE + 1 },
        { ER_SIZE + 1, 0 }, { SIZE_MAX - 3, 8 }, { 1, SIZE_MAX },
        { SIZE_MAX, 0 },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        epx__error_clear();
        CHECK_ST(epx__win_put(w, to, bad[i].off, b, bad[i].len), EPX_ERR_RANGE);
        CHECKF(strlen(epx_last_error()) > 0, "put of %zu at %zu refused "
               "without a message", bad[i].len, bad[i].off);
    }
    CHECK_ST(epx__win_put_signal(w, to, ER_SIZE - 4, b, 8, 0, 1),
             EPX_ERR_RANGE);
    CHECK_OK(epx__win_put(w, to, ER_SIZE, b, 0));   /* empty, at the end */
    CHECK_OK(epx__win_put(w, to, 0, b, 8));
    CHECK_OK(epx__win_signal(w, to, 0, 1));
    CHECK_OK(epx__win_wait(w, 0, 1));
    CHECK_CALL(conf_expect(w->local, 8, conf_key(TAG_ERR, from, me, 1), 0,
                           "the put after refused ones", from));
    CHECK_CALL(conf_expect((char *)w->local + 8, ER_SIZE - 8, gk, 8,
                           "bytes no accepted put covers (refused puts "
                           "wrote?)", me));
    CHECK_OK(epx_comm_barrier(comm));
    epx__win_destroy(w);

    /* A window of 0 bytes: signals only. */
    CHECK_OK(epx__win_create(comm, 0, 1, &w));
    CHECK_CALL(conf_check_peers(comm, w));
    CHECK_OK(epx__win_put(w, to, 0, b, 0));
    CHECK_ST(epx__win_put(w, to, 0, b, 1), EPX_ERR_RANGE);
    CHECK_OK(epx__win_signal(w, to, 0, 3));
    CHECK_OK(epx__win_wait(w, 0, 3));
    CHECK_OK(epx_comm_barrier(comm));
    epx__win_destroy(w);
    return 0;
}

int conf_err_bad_peer(epx_comm_t *comm, void *arg)
{
    (void)arg;
    const int R = comm->nranks, me = comm->rank;
    const int to = (me + 1) % R, from = (me + R - 1) % R;
    epx_win_t *w = NULL;
    CHECK_OK(epx__win_create(comm, 64, 1, &w));
    CHECK_CALL(conf_check_peers(comm, w));
    uint64_t v = conf_key(TAG_ERR, me, to, 2);
    const int bad[] = { -1, R, R + 7, INT_MIN, INT_MAX };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK_ST(epx__win_put(w, bad[i], 0, &v, sizeof(v)), EPX_ERR_INVALID);
        CHECK(strlen(epx_last_error()) > 0);
        CHECK_ST(epx__win_signal(w, bad[i], 0, 1), EPX_ERR_INVALID);
        CHECK_ST(epx__win_put_signal(w, bad[i], 0, &v, sizeof(v), 0, 1),
                 EPX_ERR_INVALID);
        CHECK_ST(epx__win_flush(w, bad[i]), EPX_ERR_INVALID);
    }
    /* Still usable, and nothing above signalled anyone: exactly one
     * signal per rank, so a count of 2 would be someone's refused one. */
    CHECK_OK(epx__win_put_signal(w, to, 0, &v, sizeof(v), 0, 1));
    CHECK_OK(epx__win_wait(w, 0, 1));
    CHECK(*(const uint64_t *)w->local == conf_key(TAG_ERR, from, me, 2));
    CHECK_OK(epx_comm_barrier(comm));
    epx__win_destroy(w);
    return 0;
}

#define BS_SLOTS 3

int conf_err_bad_slot(epx_comm_t *comm, void *arg)
{
    (void)arg;
    const int R = comm->nranks, me = comm->rank;
    const int to = (me + 1) % R;
    epx_win_t *w = NULL;
    CHECK_OK(epx__win_create(comm, 64, BS_SLOTS, &w));
    CHECK_CALL(conf_check_peers(comm, w));
    const int bad[] = { -1, BS_SLOTS, BS_SLOTS + 100, INT_MIN, INT_MAX };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK_ST(epx__win_signal(w, to, bad[i], 1), EPX_ERR_INVALID);
        CHECK(strlen(epx_last_error()) > 0);
        CHECK_ST(epx__win_wait(w, bad[i], 1), EPX_ERR_INVALID);
        CHECK_ST(epx__win_wait(w, bad[i], 0), EPX_ERR_INVALID);
    }
    for (int s = 0; s < BS_SLOTS; s++)   /* the last slot is a slot */
        CHECK_OK(epx__win_signal(w, to, s, (uint64_t)s + 1));
    for (int s = 0; s < BS_SLOTS; s++)
        CHECK_OK(epx__win_wait(w, s, (uint64_t)s + 1));
    CHECK_OK(epx_comm_barrier(comm));
    epx__win_destroy(w);
    return 0;
}

/* Rank 0 waits on a slot nobody signals (the comm's timeout is short)
 * while rank 1 signals the same slot of another window and another slot
 * of this one; rank 1 then waits for rank 0's "done", retrying its own
 * timeouts (rank 0 signals only after its waits gave up). */
int conf_err_wait_timeout(epx_comm_t *comm, void *arg)
{
    const double timeout = *(const double *)arg;
    const int me = comm->rank;
    epx_win_t *w = NULL, *w2 = NULL;
    CHECK_OK(epx__win_create(comm, 64, 3, &w));
    CHECK_CALL(conf_check_peers(comm, w));
    CHECK_OK(epx__win_create(comm, 64, 1, &w2));
    CHECK_CALL(conf_check_peers(comm, w2));
    if (me == 0) {
        CHECK_OK(epx__win_wait(w, 0, 0));   /* already true: at once */
        for (int i = 0; i < 2; i++) {       /* the same twice */
            epx__error_clear();
            double t0 = epxt_now();
            CHECK_ST(epx__win_wait(w, 0, 1), EPX_ERR_TIMEOUT);
            double dt = epxt_now() - t0;
            CHECKF(dt >= timeout * 0.95 && dt < timeout + 3.0,
                   "wait %d gave up after %.2f s with a timeout of %.1f s", i,
                   dt, timeout);
            CHECK(strlen(epx_last_error()) > 0);
        }
        CHECK_OK(epx__win_wait(w, 1, 1));    /* rank 1's, on slot 1 */
        CHECK_OK(epx__win_wait(w2, 0, 5));   /* rank 1's, other window */
        CHECK_OK(epx__win_signal(w, 1, 2, 1));
    } else if (me == 1) {
        CHECK_OK(epx__win_signal(w2, 0, 0, 5));
        CHECK_OK(epx__win_signal(w, 0, 1, 1));
        epx_status_t st = EPX_ERR_TIMEOUT;
        for (int i = 0; i < 10 && st == EPX_ERR_TIMEOUT; i++)
            st = epx__win_wait(w, 2, 1);
        CHECK_ST(st, EPX_OK);
    }
    CHECK_OK(epx_comm_barrier(comm));
    epx__win_destroy(w2);
    epx__win_destroy(w);
    return 0;
}

/* Every rank puts into its right neighbour and signals, then returns
 * with the window alive: the launcher destroys the communicator under it.
 * The rank must still exit 0 (UCX: the registration stays to the process
 * exit instead of failing UCX's cleanup). */
int conf_err_win_left(epx_comm_t *comm, void *arg)
{
    (void)arg;
    const int R = comm->nranks, me = comm->rank, to = (me + 1) % R;
    epx_win_t *w = NULL;
    CHECK_OK(epx__win_create(comm, 4096, 1, &w));
    CHECK_CALL(conf_check_peers(comm, w));
    unsigned char b[256];
    conf_fill(b, sizeof(b), conf_key(TAG_ERR, me, to, 7), 0);
    CHECK_OK(epx__win_put_signal(w, to, 128, b, sizeof(b), 0, 1));
    CHECK_OK(epx__win_wait(w, 0, 1));
    CHECK_OK(epx_comm_barrier(comm));
    return 0;   /* w is not destroyed, on purpose */
}
