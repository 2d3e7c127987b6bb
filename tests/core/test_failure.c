/*
 * core: a rank that dies in the middle of dispatch/combine.  Four ranks
 * started by hand (nothing stops the survivors) loop over dispatch and
 * combine; rank 1 kills itself (SIGKILL) right after a dispatch_send, in
 * the middle of the exchange.  Every survivor must get an EPX_ERR_* status
 * within EPX_TIMEOUT (3 s here, plus scheduling slack) of the death, never
 * hang, and then destroy its engine and communicator and exit.  Over shm,
 * over UCX (its own choice of transports, and tcp), and over a mix of both
 * (two emulated hosts).
 *
 * Over shm with a long timeout (death_shm_fast, 60 s): the survivors
 * watch their same-host peers (pidfds) and must get EPX_ERR_PEER naming
 * the dead rank within FAST_S, and again from their next call.
 *
 * Over UCX_TLS=tcp,self with a long timeout (the *_ucx_fast cases, 60 s):
 * the survivors watch their UCX peers (src/transport/ucx/ucx_live.c) and
 * must get EPX_ERR_PEER naming the rank within UCX_S (plus slack) when
 * it is killed in a dispatch or before a barrier (its connections reset),
 * and when it is stopped with SIGSTOP (connections open, heartbeats
 * stop); destroying the communicator afterwards takes no second wait
 * (DESTROY_S).  busy_ucx: a rank that makes no call for longer than the
 * heartbeat's limit is not dead.
 *
 * Over UCX_TLS=tcp (no RMA lanes) puts travel as active messages that the
 * target never acknowledges (src/transport/ucx/ucx_am.c): UCX 1.13's
 * software put answered each put and aborted a survivor whose answer to
 * the dead rank failed.  The test is strict everywhere.
 */
#include "config.h"

#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/epx_test.h"
#include "common/proc_ranks.h"

#define R 4
#define VICTIM 1
#define TIMEOUT_S 3.0
#define SLACK_S 6.0      /* 2 cores shared by every rank and test */
#define H 64
#define T 16
#define K 2

#define FAST_S 1.0       /* death_shm_fast: detection bound (+ FAST_SLACK_S) */
#define FAST_SLACK_S 1.0
#define UCX_S 5.0        /* over UCX: detection bound (+ UCX_SLACK_S) */
#define UCX_SLACK_S 5.0
#define DESTROY_S 5.0    /* survivors' engine and communicator destruction */

enum { IN_DISPATCH = 0, IN_BARRIER = 1 };

typedef struct shared {
    double timeout_s;            /* EPX_TIMEOUT of the ranks */
    int sig;                     /* what the victim gets: SIGKILL, SIGSTOP */
    int where;                   /* IN_DISPATCH, IN_BARRIER */
    int victim_pid;
    double destroy_s[R];         /* survivors' destruction time */
    int next_peer;               /* the call after the failure: PEER? */
    int noticed;                 /* survivors done noticing */
    char why[R][160];            /* each survivor's epx_last_error() */
    double died_at;              /* epxt_now() of the victim (monotonic) */
    double failed_at[R];
    int status[R];
    int rounds[R];
} shared_t;

static int one_round(epx_moe_t *moe, int me, int round, int kill_now,
                     shared_t *sh, epx_status_t *st)
{
    uint16_t x[T * H];
    int32_t idx[T * K];
    float w[T * K];
    for (int i = 0; i < T * H; i++)
        x[i] = (uint16_t)(0x3f80 + (epxt_hash(epxt_seed(), (uint64_t)me, (uint64_t)round,
                                             (uint64_t)i, 0) & 0x7f));
    for (int i = 0; i < T * K; i++) {
        idx[i] = (int32_t)((i + round + me) % (2 * R));
        if (i % K == 1 && idx[i] == idx[i - 1])
            idx[i] = (idx[i] + 1) % (2 * R);
        w[i] = 0.5f;
    }
    epx_dispatch_args_t a = EPX_DISPATCH_ARGS_INIT;
    a.x = (epx_tensor_t){ x, EPX_DTYPE_BF16, T, H };
    a.topk_idx = (epx_tensor_t){ idx, EPX_DTYPE_INT32, T, K };
    a.topk_weights = (epx_tensor_t){ w, EPX_DTYPE_FP32, T, K };
    epx_handle_t *h = NULL;
    if ((*st = epx_dispatch_send(moe, &a, &h)) != EPX_OK)
        return 1;
    if (kill_now) {
        sh->victim_pid = (int)getpid();
        sh->died_at = epxt_now();
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        raise(sh->sig);
    }
    epx_recv_t rv = { .struct_size = sizeof(rv) };
    if ((*st = epx_dispatch_recv(moe, h, &rv)) != EPX_OK)
        return 1;
    epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
    ca.y = rv.x;
    if ((*st = epx_combine_send(moe, h, &ca)) != EPX_OK)
        return 1;
    float out[T * H];
    epx_tensor_t ot = { out, EPX_DTYPE_FP32, T, H };
    if ((*st = epx_combine_recv(moe, h, &ot)) != EPX_OK)
        return 1;
    return 0;
}

static int dying_rank(int me, void *arg)
{
    shared_t *sh = arg;
    char t[16];
    snprintf(t, sizeof(t), "%g", sh->timeout_s);
    setenv("EPX_TIMEOUT", t, 1);
    epx_comm_t *comm;
    CHECK_OK(epxt_env_comm(&comm));
    epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
    p.hidden = H;
    p.num_experts = 2 * R;
    p.topk = K;
    p.max_tokens_per_rank = T;
    epx_moe_t *moe;
    CHECK_OK(epx_moe_create(comm, &p, &moe));
    epx_status_t st = EPX_OK;
    for (int round = 0; round < 1000; round++) {
        sh->rounds[me] = round;
        int victim_now = me == VICTIM && round == 3;
        if (sh->where == IN_BARRIER) {
            if (victim_now) {
                sh->victim_pid = (int)getpid();
                sh->died_at = epxt_now();
                __atomic_thread_fence(__ATOMIC_SEQ_CST);
                raise(sh->sig);
            }
            if ((st = epx_comm_barrier(comm)) != EPX_OK)
                break;
        } else if (one_round(moe, me, round, victim_now, sh, &st)) {
            break;
        }
    }
    sh->failed_at[me] = epxt_now();
    sh->status[me] = st;
    snprintf(sh->why[me], sizeof(sh->why[me]), "%s", epx_last_error());
    if (st == EPX_ERR_PEER) {   /* and the next call says so at once */
        epx_status_t again = EPX_OK;
        one_round(moe, me, 1000, 0, sh, &again);
        __atomic_fetch_add(&sh->next_peer, again == EPX_ERR_PEER, __ATOMIC_SEQ_CST);
    }
    /* Stay until every survivor has noticed: one leaving early would be
     * (rightly) reported dead by a slower survivor, not the victim. */
    __atomic_fetch_add(&sh->noticed, 1, __ATOMIC_SEQ_CST);
    for (double t0 = epxt_now(); epxt_now() - t0 < 20 &&
         __atomic_load_n(&sh->noticed, __ATOMIC_SEQ_CST) < R - 1;)
        usleep(1000);
    if (sh->sig == SIGSTOP && sh->victim_pid > 0)   /* done with it */
        kill((pid_t)sh->victim_pid, SIGKILL);
    CHECKF(st < 0, "rank %d: 1000 rounds without noticing the death", me);
    fprintf(stderr, "rank %d: %s after round %d (%s)\n", me,
            epx_status_str(st), sh->rounds[me], epx_last_error());
    double t0 = epxt_now();
    epx_moe_destroy(moe);
    epx_comm_destroy(comm);
    sh->destroy_s[me] = epxt_now() - t0;
    return 0;
}

/* fast: 0, or the bound (s) within which every survivor must get
 * EPX_ERR_PEER naming the victim, from then on (plus `slack`). */
static void run_death_how(const char *tls, const char *file,
                          const char *ucx_tls, double timeout_s, double fast,
                          double slack, int sig, int where)
{
    shared_t *sh = epxt_shared_alloc(sizeof(*sh));
    assert_non_null(sh);
    sh->timeout_s = timeout_s;
    sh->sig = sig;
    sh->where = where;
    if (tls)
        setenv("EPX_TRANSPORTS", tls, 1);
    if (file)
        setenv("EPX_TOPO_FILE", file, 1);
    if (ucx_tls)
        setenv("UCX_TLS", ucx_tls, 1);
    int rc[R];
    double t0 = epxt_now();
    epxt_proc_ranks(R, dying_rank, sh, 60, rc);
    unsetenv("EPX_TRANSPORTS");
    unsetenv("EPX_TOPO_FILE");
    unsetenv("UCX_TLS");
    assert_int_equal(rc[VICTIM], 128 + SIGKILL);
    assert_true(sh->died_at > t0);
    for (int r = 0; r < R; r++) {
        if (r == VICTIM)
            continue;
        assert_int_equal(rc[r], 0);
        assert_true(sh->status[r] < 0);
        double late = sh->failed_at[r] - sh->died_at;
        printf("rank %d: %s %.2f s after the death, destroyed in %.2f s "
               "(%s)\n", r, epx_status_str((epx_status_t)sh->status[r]),
               late, sh->destroy_s[r], sh->why[r]);
        if (fast > 0) {
            char want[32];
            snprintf(want, sizeof(want), "rank %d ", VICTIM);
            assert_int_equal(sh->status[r], EPX_ERR_PEER);
            assert_non_null(strstr(sh->why[r], want));
            assert_true(late <= fast + slack);
            assert_true(sh->destroy_s[r] <= DESTROY_S);
        } else {
            assert_true(late <= TIMEOUT_S + SLACK_S);
        }
    }
    if (fast > 0)
        assert_int_equal(sh->next_peer, R - 1);
    epxt_shared_free(sh, sizeof(*sh));
}

static void run_death_with(const char *tls, const char *file,
                           const char *ucx_tls, double timeout_s, int fast)
{
    run_death_how(tls, file, ucx_tls, timeout_s, fast ? FAST_S : 0,
                  FAST_SLACK_S, SIGKILL, IN_DISPATCH);
}

static void run_death(const char *tls, const char *file, const char *ucx_tls)
{
    run_death_with(tls, file, ucx_tls, TIMEOUT_S, 0);
}

static void death_shm_fast(void **s)
{
    (void)s;
    run_death_with("shm", NULL, NULL, 60.0, 1);
}

static void death_shm(void **s) { (void)s; run_death("shm", NULL, NULL); }
#ifdef EPX_HAVE_UCX
static void death_ucx(void **s) { (void)s; run_death("ucx", NULL, NULL); }
static void death_ucx_tcp(void **s) { (void)s; run_death("ucx", NULL, "tcp"); }
static void death_mixed(void **s)
{
    (void)s;
    run_death(NULL, EPX_TEST_SRCDIR "/tests/core/data/two-hosts.json", "tcp");
}
static void kill_ucx_fast(void **s)
{
    (void)s;
    run_death_how("ucx", NULL, "tcp,self", 60.0, UCX_S, UCX_SLACK_S, SIGKILL,
                  IN_DISPATCH);
}
static void kill_barrier_ucx_fast(void **s)
{
    (void)s;
    run_death_how("ucx", NULL, "tcp,self", 60.0, UCX_S, UCX_SLACK_S, SIGKILL,
                  IN_BARRIER);
}
static void stop_ucx_fast(void **s)
{
    (void)s;
    run_death_how("ucx", NULL, "tcp,self", 60.0, UCX_S, UCX_SLACK_S, SIGSTOP,
                  IN_DISPATCH);
}
static void stop_barrier_ucx_fast(void **s)
{
    (void)s;
    run_death_how("ucx", NULL, "tcp,self", 60.0, UCX_S, UCX_SLACK_S, SIGSTOP,
                  IN_BARRIER);
}
/* Two emulated hosts (shm inside, UCX across): the victim's host peer
 * sees it by its pidfd, the other host's ranks over UCX. */
static void kill_mixed_fast(void **s)
{
    (void)s;
    run_death_how(NULL, EPX_TEST_SRCDIR "/tests/core/data/two-hosts.json",
                  "tcp,self", 60.0, UCX_S, UCX_SLACK_S, SIGKILL, IN_DISPATCH);
}

/* A rank busy elsewhere (no call) for longer than the heartbeat's limit
 * is alive: its heartbeats come from their own thread. */
#define BUSY_S 4.5
static int busy_rank(int me, void *arg)
{
    (void)arg;
    setenv("EPX_TIMEOUT", "60", 1);
    epx_comm_t *comm;
    CHECK_OK(epxt_env_comm(&comm));
    for (int i = 0; i < 3; i++) {
        CHECK_OK(epx_comm_barrier(comm));
        if (me == i % 3)
            usleep((useconds_t)(BUSY_S * 1e6));
    }
    CHECK_OK(epx_comm_barrier(comm));
    if (me == 0)   /* the others wait in the destruction barrier */
        usleep((useconds_t)(BUSY_S * 1e6));
    epx_comm_destroy(comm);
    return 0;
}

static void busy_ucx(void **s)
{
    (void)s;
    setenv("EPX_TRANSPORTS", "ucx", 1);
    setenv("UCX_TLS", "tcp,self", 1);
    int rc[3];
    int bad = epxt_proc_ranks(3, busy_rank, NULL, 60, rc);
    unsetenv("EPX_TRANSPORTS");
    unsetenv("UCX_TLS");
    for (int r = 0; r < 3; r++)
        assert_int_equal(rc[r], 0);
    assert_int_equal(bad, 0);
}
#endif

int main(void)
{
    epxt_init("test_failure");
    /* A hung UCX peer is the one caught by its silence: short here. */
    setenv("EPX_PEER_SILENCE", "3", 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(death_shm),
        cmocka_unit_test(death_shm_fast),
#ifdef EPX_HAVE_UCX
        cmocka_unit_test(death_ucx),
        cmocka_unit_test(death_ucx_tcp),
        cmocka_unit_test(death_mixed),
        cmocka_unit_test(kill_ucx_fast),
        cmocka_unit_test(kill_barrier_ucx_fast),
        cmocka_unit_test(stop_ucx_fast),
        cmocka_unit_test(stop_barrier_ucx_fast),
        cmocka_unit_test(kill_mixed_fast),
        cmocka_unit_test(busy_ucx),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
