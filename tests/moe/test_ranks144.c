/*
 * 144 ranks on this host, the rank count of two NVL72 racks: create the
 * communicator, dispatch and combine one case checked against the
 * reference, destroy; once over shm and once over UCX alone
 * (EPX_TRANSPORTS=ucx, UCX's own choice of transports: its shared-memory
 * lanes between processes of one host).  At 144 ranks the UCX teardown
 * once crashed inside UCX (src/transport/ucx/README.md); every rank must
 * exit 0.  Each case prints its time.  EPX_TEST_QUICK=1 skips it.
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <cmocka.h>

#include "common/epx_test.h"
#include "moe_case.h"

static const moe_case_t cases[] = {
    { .name = "r144-tm-e288", .experts = 288, .topk = 4, .hidden = 16,
      .max_tokens = 4, .dtype = EPX_DTYPE_BF16, .idx_dtype = EPX_DTYPE_INT32,
      .out_dtype = EPX_DTYPE_FP32, .layout = EPX_LAYOUT_TOKEN_MAJOR,
      .align = 1 },
    { .name = NULL },
};

static void launch144(const char *transports)
{
    setenv("EPX_TRANSPORTS", transports, 1);
    double t0 = epxt_now();
    epx_status_t st = epxt_launch(144, 0, moe_cases_rank, (void *)cases, NULL);
    printf("144 ranks over %s: %s in %.1f s\n", transports,
           epx_status_str(st), epxt_now() - t0);
    unsetenv("EPX_TRANSPORTS");
    assert_int_equal(st, EPX_OK);
}

static void ranks144_shm(void **state) { (void)state; launch144("shm"); }
#ifdef EPX_HAVE_UCX
static void ranks144_ucx(void **state) { (void)state; launch144("ucx"); }
#endif

int main(void)
{
    const char *q = getenv("EPX_TEST_QUICK");
    if (q && *q && *q != '0') {
        printf("# EPX_TEST_QUICK set: 144-rank runs skipped\n");
        return 77;   /* automake: SKIP */
    }
    epxt_init("test_ranks144");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(ranks144_shm),
#ifdef EPX_HAVE_UCX
        cmocka_unit_test(ranks144_ucx),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
