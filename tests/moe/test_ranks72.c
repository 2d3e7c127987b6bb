/*
 * moe at 72 ranks as one NVL72 domain (EPX_TOPO_FILE=gb200-nvl72) on this
 * host: dense and sparse placements, both layouts, uniform, Zipf (256
 * experts top-8, as DeepSeek-V3), holed and one-hot routings, checked
 * against the reference.  The longest
 * test of the suite; EPX_TEST_QUICK=1 skips it.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <cmocka.h>

#include "common/epx_test.h"
#include "moe_case.h"

static const moe_case_t dense[] = {
    /* two experts per rank, token-major */
    { .name = "r72-tm-e144", .experts = 144, .topk = 4, .hidden = 16,
      .max_tokens = 6, .dtype = EPX_DTYPE_BF16, .idx_dtype = EPX_DTYPE_INT32,
      .out_dtype = EPX_DTYPE_BF16, .layout = EPX_LAYOUT_TOKEN_MAJOR,
      .align = 1 },
    /* 100 experts: 1 or 2 per rank; expert-major */
    { .name = "r72-em4-e100", .experts = 100, .topk = 6, .hidden = 8,
      .max_tokens = 4, .dtype = EPX_DTYPE_FP32, .idx_dtype = EPX_DTYPE_INT64,
      .out_dtype = EPX_DTYPE_FP32, .layout = EPX_LAYOUT_EXPERT_MAJOR,
      .align = 4 },
    /* DeepSeek-V3's routing shape, the first ranks hot */
    { .name = "r72-em1-e256-zipf", .experts = 256, .topk = 8, .hidden = 12,
      .max_tokens = 5, .dtype = EPX_DTYPE_BF16, .idx_dtype = EPX_DTYPE_INT32,
      .out_dtype = EPX_DTYPE_FP32, .layout = EPX_LAYOUT_EXPERT_MAJOR,
      .align = 1, .route = ROUTE_ZIPF },
    { .name = "r72-tm-e256-zipf", .experts = 256, .topk = 8, .hidden = 12,
      .max_tokens = 5, .dtype = EPX_DTYPE_FP32, .idx_dtype = EPX_DTYPE_INT64,
      .out_dtype = EPX_DTYPE_BF16, .layout = EPX_LAYOUT_TOKEN_MAJOR,
      .align = 1, .route = ROUTE_ZIPF, .tokens = TOK_ZERO_ODD },
    { .name = NULL },
};

static const moe_case_t sparse[] = {
    /* 10 experts on 72 ranks: most ranks hold none */
    { .name = "r72-tm-e10-holes", .experts = 10, .topk = 3, .hidden = 8,
      .max_tokens = 4, .dtype = EPX_DTYPE_BF16, .idx_dtype = EPX_DTYPE_INT64,
      .out_dtype = EPX_DTYPE_FP32, .layout = EPX_LAYOUT_TOKEN_MAJOR,
      .align = 1, .route = ROUTE_HOLES, .tokens = TOK_ZERO_ODD },
    /* every token of every rank to one expert */
    { .name = "r72-em128-hot", .experts = 72, .topk = 2, .hidden = 8,
      .max_tokens = 3, .dtype = EPX_DTYPE_BF16, .idx_dtype = EPX_DTYPE_INT32,
      .out_dtype = EPX_DTYPE_BF16, .layout = EPX_LAYOUT_EXPERT_MAJOR,
      .align = 128, .route = ROUTE_HOT, .tokens = TOK_FULL },
    { .name = NULL },
};

static void launch72(const moe_case_t *cases)
{
    setenv("EPX_TOPO_FILE", "gb200-nvl72", 1);
    epx_status_t st = epxt_launch(72, 0, moe_cases_rank, (void *)cases, NULL);
    unsetenv("EPX_TOPO_FILE");
    assert_int_equal(st, EPX_OK);
}

static void ranks72_dense(void **state) { (void)state; launch72(dense); }
static void ranks72_sparse(void **state) { (void)state; launch72(sparse); }

int main(void)
{
    const char *q = getenv("EPX_TEST_QUICK");
    if (q && *q && *q != '0') {
        printf("# EPX_TEST_QUICK set: 72-rank dispatch/combine skipped\n");
        return 77;   /* automake: SKIP */
    }
    epxt_init("test_ranks72");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(ranks72_dense),
        cmocka_unit_test(ranks72_sparse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
