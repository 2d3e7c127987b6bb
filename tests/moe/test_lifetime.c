/*
 * Objects destroyed in the wrong order: handles released after their
 * engine (one finished, one mid-dispatch), and a communicator destroyed
 * while an engine still uses it (the engine's calls then fail with
 * EPX_ERR_STATE and its destruction frees the communicator).  Neither may
 * touch freed memory: tests/moe/test-lifetime.sh runs this program under
 * valgrind, which turns any such read or write into a failure.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/epx_test.h"
#include "common/proc_ranks.h"
#include "moe/moe_case.h"

static const moe_case_t life_case = {
    .name = "lifetime", .experts = 6, .topk = 2, .hidden = 16,
    .max_tokens = 5, .dtype = EPX_DTYPE_BF16, .idx_dtype = EPX_DTYPE_INT32,
    .out_dtype = EPX_DTYPE_FP32, .layout = EPX_LAYOUT_EXPERT_MAJOR,
    .align = 4,
};

static int handles_outlive_engine(epx_comm_t *comm)
{
    moe_run_t m;
    CHECK_CALL(moe_run_open(&m, comm, &life_case));
    epx_handle_t *done = NULL, *mid = NULL;
    CHECK_CALL(moe_run_round(&m, 0, 0, &done));
    moe_round_t r;
    int rc = moe_round_dispatch(&m, &r, 1, 1, &mid);   /* not combined */
    moe_round_free(&r);
    CHECK(rc == 0 && mid && mid != done);
    int64_t t = epx_handle_num_tokens(done);
    CHECK_OK(epx_comm_barrier(comm));
    moe_run_close(&m);                  /* the engine goes first */
    CHECK(epx_handle_num_tokens(done) == t);
    epx_handle_release(mid);
    epx_handle_release(done);
    return 0;
}

static int comm_before_engine(epx_comm_t *comm)
{
    moe_run_t m;
    CHECK_CALL(moe_run_open(&m, comm, &life_case));
    epx_handle_t *h = NULL;
    CHECK_CALL(moe_run_round(&m, 2, 2, &h));
    CHECK_OK(epx_comm_barrier(comm));
    epx_comm_destroy(comm);             /* the engine still uses it */
    CHECKF(strstr(epx_last_error(), "destroy the engines first"), "%s",
           epx_last_error());
    epx_comm_destroy(comm);             /* twice: still deferred, no harm */
    moe_input_t in;
    CHECK_CALL(moe_input_make(&m, m.rank, 2, 3, &in));
    epx_dispatch_args_t a = moe_input_args(&m, &in);
    epx_handle_t *h2 = NULL;
    epx_status_t st = epx_dispatch_send(m.moe, &a, &h2);
    moe_input_free(&in);
    CHECKF(st == EPX_ERR_STATE, "dispatch on a destroyed communicator: %s",
           epx_status_str(st));
    CHECK(h2 == NULL);
    CHECK(strstr(epx_last_error(), "communicator was destroyed"));
    epx_handle_release(h);
    moe_run_close(&m);                  /* frees the communicator too */
    return 0;
}

static int life_rank(int rank, void *arg)
{
    (void)arg;
    epxt_rank_enter(rank);
    epx_comm_t *comm = NULL;
    CHECK_OK(epxt_env_comm(&comm));
    CHECK_CALL(handles_outlive_engine(comm));
    CHECK_CALL(comm_before_engine(comm));
    return 0;
}

static void wrong_order(void **state)
{
    (void)state;
    enum { R = 2 };
    int rc[R];
    assert_int_equal(epxt_proc_ranks(R, life_rank, NULL, 120, rc), 0);
}

int main(void)
{
    epxt_init("test_lifetime");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(wrong_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
