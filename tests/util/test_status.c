/* util: status strings, the per-thread last error, version, dtype sizes. */
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "common/epx_test.h"

static const epx_status_t all_status[] = {
    EPX_OK, EPX_ERR_INVALID, EPX_ERR_NOMEM, EPX_ERR_SYSTEM, EPX_ERR_TIMEOUT,
    EPX_ERR_AUTH, EPX_ERR_MISMATCH, EPX_ERR_PEER, EPX_ERR_STATE,
    EPX_ERR_UNSUPPORTED, EPX_ERR_BOOTSTRAP, EPX_ERR_RANGE,
};
#define NSTATUS (sizeof(all_status) / sizeof(all_status[0]))

static void status_strings_distinct(void **state)
{
    (void)state;
    for (size_t i = 0; i < NSTATUS; i++) {
        const char *s = epx_status_str(all_status[i]);
        assert_non_null(s);
        /* "EPX_ERR_INVALID: ..." — the enum name leads the text */
        assert_true(strncmp(s, "EPX_", 4) == 0);
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(s, epx_status_str(all_status[j]));
    }
    assert_true(strncmp(epx_status_str(EPX_OK), "EPX_OK", 6) == 0);
    assert_true(strncmp(epx_status_str(EPX_ERR_TIMEOUT), "EPX_ERR_TIMEOUT",
                        15) == 0);
    /* An unknown value still gets a string, distinct from the real ones. */
    const char *u = epx_status_str((epx_status_t)-1000);
    assert_non_null(u);
    for (size_t i = 0; i < NSTATUS; i++)
        assert_string_not_equal(u, epx_status_str(all_status[i]));
}

/* A failing call: an all-gather bootstrap without the all-gather. */
static epx_status_t failing_call(int rank)
{
    epx_comm_params_t p = EPX_COMM_PARAMS_INIT;
    epx_comm_t *comm = (epx_comm_t *)&p;   /* must stay untouched */
    p.bootstrap = EPX_BOOTSTRAP_ALLGATHER;
    p.rank = rank;
    p.nranks = 2;
    epx_status_t st = epx_comm_create(&p, &comm);
    if (comm != (epx_comm_t *)&p)
        return EPX_OK;   /* an output set on failure: the caller fails */
    return st;
}

static void last_error_set_by_failure(void **state)
{
    (void)state;
    assert_int_equal(failing_call(0), EPX_ERR_INVALID);
    assert_true(strlen(epx_last_error()) > 0);

    /* NULL arguments are refused, not dereferenced. */
    assert_int_equal(epx_comm_create(NULL, NULL), EPX_ERR_INVALID);
    assert_true(strlen(epx_last_error()) > 0);
    epx_comm_params_t p = EPX_COMM_PARAMS_INIT;
    p.struct_size = 0;   /* not set up with the INIT macro */
    epx_comm_t *comm = NULL;
    assert_int_equal(epx_comm_create(&p, &comm), EPX_ERR_INVALID);
    assert_null(comm);
    assert_true(strlen(epx_last_error()) > 0);
}

static void *thread_fail(void *arg)
{
    char *msg = arg;
    epx_status_t st = failing_call(7);   /* rank out of range */
    snprintf(msg, 512, "%d|%s", (int)st, epx_last_error());
    return NULL;
}

static void last_error_per_thread(void **state)
{
    (void)state;
    assert_int_equal(failing_call(0), EPX_ERR_INVALID);
    char mine[512], theirs[512] = "";
    snprintf(mine, sizeof(mine), "%s", epx_last_error());
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, thread_fail, theirs), 0);
    pthread_join(th, NULL);
    /* The other thread's failure is its own ... */
    assert_true(strlen(theirs) > 3);
    assert_true(strncmp(theirs, "-1|", 3) == 0);
    /* ... and ours is unchanged by it. */
    assert_string_equal(epx_last_error(), mine);
}

static void version_matches_header(void **state)
{
    (void)state;
    int ma = -1, mi = -1, pa = -1;
    epx_version(&ma, &mi, &pa);
    assert_int_equal(ma, EPX_VERSION_MAJOR);
    assert_int_equal(mi, EPX_VERSION_MINOR);
    assert_int_equal(pa, EPX_VERSION_PATCH);
    char want[64];
    snprintf(want, sizeof(want), "%d.%d.%d", EPX_VERSION_MAJOR,
             EPX_VERSION_MINOR, EPX_VERSION_PATCH);
    assert_string_equal(epx_version_string(), want);
    epx_version(NULL, NULL, NULL);   /* NULL outputs are allowed */
}

static void dtype_sizes(void **state)
{
    (void)state;
    assert_int_equal(epx_dtype_size(EPX_DTYPE_BF16), 2);
    assert_int_equal(epx_dtype_size(EPX_DTYPE_FP32), 4);
    assert_int_equal(epx_dtype_size(EPX_DTYPE_INT32), 4);
    assert_int_equal(epx_dtype_size(EPX_DTYPE_INT64), 8);
    assert_int_equal(epx_dtype_size(EPX_DTYPE_FP8_E4M3), 1);
    assert_int_equal(epx_dtype_size(EPX_DTYPE_UE8M0), 1);
    assert_int_equal(epx_dtype_size(EPX_DTYPE_FP4_E2M1X2), 1);
    assert_int_equal(epx_dtype_size(EPX_DTYPE_FP64), 8);
    /* the enum's values are ABI: FP64 took the next free one */
    assert_int_equal(EPX_DTYPE_FP4_E2M1X2, 6);
    assert_int_equal(EPX_DTYPE_FP64, 7);
    assert_int_equal(epx_dtype_size((epx_dtype_t)8), 0);
    assert_int_equal(epx_dtype_size((epx_dtype_t)99), 0);
}

int main(void)
{
    epxt_init("test_status");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(status_strings_distinct),
        cmocka_unit_test(last_error_set_by_failure),
        cmocka_unit_test(last_error_per_thread),
        cmocka_unit_test(version_matches_header),
        cmocka_unit_test(dtype_sizes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
