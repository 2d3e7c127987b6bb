/*
 * moe: several ranks driven by threads of one process, bootstrapped with
 * EPX_BOOTSTRAP_ALLGATHER over an in-process all-gather; full
 * dispatch/combine checked against the reference.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "common/epx_test.h"
#include "common/thread_ranks.h"
#include "moe_case.h"

static const moe_case_t four[] = {
    { .name = "thr4-em4-bf16", .experts = 9, .topk = 3, .hidden = 20,
      .max_tokens = 10, .dtype = EPX_DTYPE_BF16, .idx_dtype = EPX_DTYPE_INT32,
      .out_dtype = EPX_DTYPE_BF16, .layout = EPX_LAYOUT_EXPERT_MAJOR,
      .align = 4 },
    { .name = "thr4-tm-fp32", .experts = 8, .topk = 2, .hidden = 9,
      .max_tokens = 10, .dtype = EPX_DTYPE_FP32, .idx_dtype = EPX_DTYPE_INT64,
      .out_dtype = EPX_DTYPE_FP32, .layout = EPX_LAYOUT_TOKEN_MAJOR,
      .align = 1 },
    { .name = NULL },
};

static const moe_case_t eight[] = {
    { .name = "thr8-em1-holes", .experts = 12, .topk = 4, .hidden = 16,
      .max_tokens = 8, .dtype = EPX_DTYPE_BF16, .idx_dtype = EPX_DTYPE_INT64,
      .out_dtype = EPX_DTYPE_FP32, .layout = EPX_LAYOUT_EXPERT_MAJOR,
      .align = 1, .route = ROUTE_HOLES, .tokens = TOK_ZERO_ODD },
    { .name = NULL },
};

static void threads_4(void **state)
{
    (void)state;
    assert_int_equal(epxt_thread_ranks(4, 60, moe_cases_rank, (void *)four),
                     0);
}

static void threads_8(void **state)
{
    (void)state;
    assert_int_equal(epxt_thread_ranks(8, 60, moe_cases_rank, (void *)eight),
                     0);
}

static const moe_case_t wide[] = {
    { .name = "thr72-em4", .experts = 100, .topk = 4, .hidden = 16,
      .max_tokens = 6, .dtype = EPX_DTYPE_BF16, .idx_dtype = EPX_DTYPE_INT32,
      .out_dtype = EPX_DTYPE_FP32, .layout = EPX_LAYOUT_EXPERT_MAJOR,
      .align = 4 },
    { .name = NULL },
};

/* A whole NVL72-wide job in one process. */
static void threads_72(void **state)
{
    (void)state;
    assert_int_equal(epxt_thread_ranks(72, 60, moe_cases_rank, (void *)wide),
                     0);
}

static void thread_1(void **state)
{
    (void)state;
    assert_int_equal(epxt_thread_ranks(1, 60, moe_cases_rank, (void *)four),
                     0);
}

int main(void)
{
    epxt_init("test_threads");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(threads_4),
        cmocka_unit_test(threads_8),
        cmocka_unit_test(threads_72),
        cmocka_unit_test(thread_1),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
