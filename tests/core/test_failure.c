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

typedef struct shared {
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
        sh->died_at = epxt_now();
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        raise(SIGKILL);
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
    snprintf(t, sizeof(t), "%g", TIMEOUT_S);
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
        if (one_round(moe, me, round, me == VICTIM && round == 3, sh, &st))
            break;
    }
    sh->failed_at[me] = epxt_now();
    sh->status[me] = st;
    CHECKF(st < 0, "rank %d: 1000 rounds without noticing the death", me);
    fprintf(stderr, "rank %d: %s after round %d (%s)\n", me,
            epx_status_str(st), sh->rounds[me], epx_last_error());
    epx_moe_destroy(moe);
    epx_comm_destroy(comm);
    return 0;
}

static void run_death(const char *tls, const char *file, const char *ucx_tls)
{
    shared_t *sh = epxt_shared_alloc(sizeof(*sh));
    assert_non_null(sh);
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
        printf("rank %d: %s %.2f s after the death\n", r,
               epx_status_str((epx_status_t)sh->status[r]), late);
        assert_true(late <= TIMEOUT_S + SLACK_S);
    }
    epxt_shared_free(sh, sizeof(*sh));
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
#endif

int main(void)
{
    epxt_init("test_failure");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(death_shm),
#ifdef EPX_HAVE_UCX
        cmocka_unit_test(death_ucx),
        cmocka_unit_test(death_ucx_tcp),
        cmocka_unit_test(death_mixed),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
