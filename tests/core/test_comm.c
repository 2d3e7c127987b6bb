/*
 * core: the communicator — rank/size, a barrier that really separates
 * rounds (1 to 72 ranks), and a barrier whose peer never comes failing
 * with EPX_ERR_TIMEOUT (params.timeout_s or EPX_TIMEOUT) instead of
 * hanging; the status agreement every set-up step ends with (one rank's
 * failure is every rank's, the lowest failed rank's status).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/epx_test.h"
#include "core/comm.h"

#define MAXR 72
#define ROUNDS 25

typedef struct rounds {
    int nranks;
    int at[MAXR];     /* round each rank has entered */
} rounds_t;

/* Each rank announces its round, then passes a barrier: afterwards every
 * rank must have announced at least that round. */
static int barrier_rounds(epx_comm_t *comm, void *arg)
{
    rounds_t *s = arg;
    int me = epx_comm_rank(comm);
    CHECK(epx_comm_size(comm) == s->nranks);
    for (int round = 1; round <= ROUNDS; round++) {
        __atomic_store_n(&s->at[me], round, __ATOMIC_SEQ_CST);
        CHECK_OK(epx_comm_barrier(comm));
        for (int r = 0; r < s->nranks; r++) {
            int at = __atomic_load_n(&s->at[r], __ATOMIC_SEQ_CST);
            CHECKF(at >= round, "after barrier %d rank %d is only at %d",
                   round, r, at);
            CHECKF(at <= round + 1, "rank %d is at %d, two barriers ahead of "
                   "round %d", r, at, round);
        }
    }
    return 0;
}

static void run_rounds(int nranks)
{
    rounds_t *s = epxt_shared_alloc(sizeof(*s));
    assert_non_null(s);
    s->nranks = nranks;
    assert_int_equal(epxt_launch(nranks, 0, barrier_rounds, s, NULL), EPX_OK);
    for (int r = 0; r < nranks; r++)
        assert_int_equal(s->at[r], ROUNDS);
    epxt_shared_free(s, sizeof(*s));
}

static void barrier_1(void **state) { (void)state; run_rounds(1); }
static void barrier_2(void **state) { (void)state; run_rounds(2); }
static void barrier_3(void **state) { (void)state; run_rounds(3); }
static void barrier_8(void **state) { (void)state; run_rounds(8); }
static void barrier_72(void **state) { (void)state; run_rounds(72); }

/* Rank 1 stays away (alive, not calling anything) for longer than the
 * timeout; rank 0's barrier must give up with EPX_ERR_TIMEOUT. */
#define SHORT_TIMEOUT 2.0
static int absent_peer(epx_comm_t *comm, void *arg)
{
    (void)arg;
    if (epx_comm_rank(comm) == 1) {
        usleep((useconds_t)(SHORT_TIMEOUT * 2.5 * 1e6));
        return 0;
    }
    double t0 = epxt_now();
    CHECK_ST(epx_comm_barrier(comm), EPX_ERR_TIMEOUT);
    double dt = epxt_now() - t0;
    CHECKF(dt >= SHORT_TIMEOUT * 0.5 && dt < SHORT_TIMEOUT * 3.5,
           "barrier gave up after %.2f s with a timeout of %.1f s", dt,
           SHORT_TIMEOUT);
    CHECK(strlen(epx_last_error()) > 0);
    return 0;
}

static void barrier_times_out(void **state)
{
    (void)state;
    assert_int_equal(epxt_launch(2, SHORT_TIMEOUT, absent_peer, NULL, NULL),
                     EPX_OK);
}

/* The same with the timeout taken from EPX_TIMEOUT (no params). */
static int absent_peer_rank(epx_comm_t *comm, void *arg)
{
    epxt_rank_enter(epx_comm_rank(comm));
    return absent_peer(comm, arg);
}

static void barrier_times_out_env(void **state)
{
    (void)state;
    char was[64] = "";
    const char *w = getenv("EPX_TIMEOUT");
    if (w)
        snprintf(was, sizeof(was), "%s", w);
    char v[32];
    snprintf(v, sizeof(v), "%g", SHORT_TIMEOUT);
    setenv("EPX_TIMEOUT", v, 1);
    fflush(NULL);
    epx_status_t st = epx_launch_local(2, NULL, absent_peer_rank, NULL, NULL);
    if (was[0])
        setenv("EPX_TIMEOUT", was, 1);
    else
        unsetenv("EPX_TIMEOUT");
    assert_int_equal(st, EPX_OK);
}

static int nothing_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    return epx_comm_barrier(comm) == EPX_OK ? 0 : 1;
}

static int one_rank_allgather(void *ctx, const void *send, void *recv,
                              size_t bytes)
{
    (void)ctx;
    memcpy(recv, send, bytes);
    return 0;
}

/* EPX_TIMEOUT must be a positive finite number; a huge one means "wait
 * long", not an immediate timeout from an overflowed deadline. */
static void timeout_values(void **state)
{
    (void)state;
    const char *bad[] = { "nan", "-1", "0", "inf", "soon" };
    epx_comm_params_t p = EPX_COMM_PARAMS_INIT;
    p.bootstrap = EPX_BOOTSTRAP_ALLGATHER;
    p.rank = 0;
    p.nranks = 1;
    p.allgather = one_rank_allgather;
    epx_comm_t *c = NULL;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        setenv("EPX_TIMEOUT", bad[i], 1);
        assert_int_equal(epx_comm_create(&p, &c), EPX_ERR_INVALID);
        assert_null(c);
        assert_non_null(strstr(epx_last_error(), "EPX_TIMEOUT"));
    }
    setenv("EPX_TIMEOUT", "1e12", 1);
    assert_int_equal(epx_comm_create(&p, &c), EPX_OK);
    assert_int_equal(epx_comm_barrier(c), EPX_OK);
    epx_comm_destroy(c);
    unsetenv("EPX_TIMEOUT");
    assert_int_equal(epxt_launch(2, 1e12, nothing_rank, NULL, NULL), EPX_OK);
}

/* Rounds of statuses; in round i rank r reports fails[i](r). */
static epx_status_t agree_status(int round, int r, int R)
{
    switch (round) {
    case 0: return EPX_OK;                                  /* none */
    case 1: return r == R - 1 ? EPX_ERR_NOMEM : EPX_OK;     /* the last */
    case 2: return r == 0 ? EPX_ERR_SYSTEM : EPX_OK;        /* the first */
    default:                                  /* several: the lowest wins */
        return r % 3 == 2 ? EPX_ERR_INVALID
             : r % 3 == 1 && r > 1 ? EPX_ERR_RANGE : EPX_OK;
    }
}

static int agree_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    const int R = comm->nranks;
    for (int round = 0; round < 4; round++) {
        int want_bad = -1, bad = 12345;
        for (int r = 0; r < R && want_bad < 0; r++)
            if (agree_status(round, r, R) != EPX_OK)
                want_bad = r;
        epx_status_t want = want_bad < 0 ? EPX_OK
                                         : agree_status(round, want_bad, R);
        epx_status_t st = epx__comm_agree(comm, agree_status(round,
                                                             comm->rank, R),
                                          &bad);
        CHECKF(st == want && bad == want_bad, "rank %d round %d: %s from "
               "rank %d, want %s from rank %d", comm->rank, round,
               epx_status_str(st), bad, epx_status_str(want), want_bad);
    }
    CHECK(epx__comm_agree(comm, EPX_OK, NULL) == EPX_OK);
    /* agree_peer: one's own failure as is, a peer's as EPX_ERR_PEER */
    const int last = comm->rank == R - 1;
    epx_status_t st = epx__comm_agree_peer(comm, last ? EPX_ERR_NOMEM : EPX_OK,
                                           "test");
    char want[64];
    snprintf(want, sizeof(want), "test: rank %d failed", R - 1);
    CHECKF(last ? st == EPX_ERR_NOMEM
                : st == EPX_ERR_PEER && strstr(epx_last_error(), want),
           "rank %d: agree_peer -> %s (%s)", comm->rank, epx_status_str(st),
           epx_last_error());
    CHECK(epx__comm_agree_peer(comm, EPX_OK, "test") == EPX_OK);
    return 0;
}

static void agree_all(void **state)
{
    (void)state;
    const int sizes[] = { 1, 2, 3, 8 };
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
        assert_int_equal(epxt_launch(sizes[i], 0, agree_rank, NULL, NULL),
                         EPX_OK);
}

int main(void)
{
    epxt_init("test_comm");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(barrier_72),
        cmocka_unit_test(barrier_1),
        cmocka_unit_test(barrier_2),
        cmocka_unit_test(barrier_3),
        cmocka_unit_test(barrier_8),
        cmocka_unit_test(barrier_times_out),
        cmocka_unit_test(barrier_times_out_env),
        cmocka_unit_test(timeout_values),
        cmocka_unit_test(agree_all),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
