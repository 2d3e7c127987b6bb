/*
 * Dispatch/combine matrix: 1, 2, 3 and 8 ranks x token-major and
 * expert-major (alignment 1, 4, 128) x bf16/fp32/fp64 x int32/int64
 * topk_idx, uniform routing, and Zipf routing (the first ranks hot) in
 * bf16, fp32 and fp64, each checked bit for bit against the reference, including cached
 * dispatches and several routings on one engine; two engines on one
 * communicator used in turns; combine in place (fp64, fp32).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <cmocka.h>

#include "common/epx_test.h"
#include "moe_case.h"

typedef struct matrix {
    int nranks;
    epx_layout_t layout;
    int align;
} matrix_t;

/* bf16/fp32 engine x int32/int64 ids, with both output dtypes covered,
 * uniform; then Zipf in each engine dtype; fp64 (out fp64) both ways. */
static const struct {
    epx_dtype_t dtype, idx, out;
    int route;
    const char *tag;
} combos[] = {
    { EPX_DTYPE_BF16, EPX_DTYPE_INT32, EPX_DTYPE_BF16, ROUTE_RANDOM,
      "bf16-i32-obf16" },
    { EPX_DTYPE_BF16, EPX_DTYPE_INT64, EPX_DTYPE_FP32, ROUTE_RANDOM,
      "bf16-i64-ofp32" },
    { EPX_DTYPE_FP32, EPX_DTYPE_INT32, EPX_DTYPE_FP32, ROUTE_RANDOM,
      "fp32-i32-ofp32" },
    { EPX_DTYPE_FP32, EPX_DTYPE_INT64, EPX_DTYPE_BF16, ROUTE_RANDOM,
      "fp32-i64-obf16" },
    { EPX_DTYPE_BF16, EPX_DTYPE_INT32, EPX_DTYPE_FP32, ROUTE_ZIPF,
      "bf16-i32-ofp32-zipf" },
    { EPX_DTYPE_FP32, EPX_DTYPE_INT64, EPX_DTYPE_FP32, ROUTE_ZIPF,
      "fp32-i64-ofp32-zipf" },
    /* FP64 engines: fp64 rows and double sums (ref_combine_f64) */
    { EPX_DTYPE_FP64, EPX_DTYPE_INT32, EPX_DTYPE_FP64, ROUTE_RANDOM,
      "fp64-i32-ofp64" },
    { EPX_DTYPE_FP64, EPX_DTYPE_INT64, EPX_DTYPE_FP64, ROUTE_ZIPF,
      "fp64-i64-ofp64-zipf" },
};
#define NCOMBO (sizeof(combos) / sizeof(combos[0]))

static void run_matrix(void **state)
{
    const matrix_t *mx = *state;
    static char names[NCOMBO][64];
    moe_case_t cases[NCOMBO + 1] = { { 0 } };
    for (size_t i = 0; i < NCOMBO; i++) {
        snprintf(names[i], sizeof(names[i]), "R%d-%s%d-%s", mx->nranks,
                 mx->layout == EPX_LAYOUT_TOKEN_MAJOR ? "tm" : "em", mx->align,
                 combos[i].tag);
        cases[i] = (moe_case_t){
            .name = names[i],
            /* not a multiple of the rank count past one rank */
            .experts = 2 * mx->nranks + 3,
            .topk = 4,
            .hidden = 24,
            .max_tokens = 24,
            .dtype = combos[i].dtype,
            .idx_dtype = combos[i].idx,
            .out_dtype = combos[i].out,
            .layout = mx->layout,
            .align = mx->align,
            .tokens = TOK_RANDOM,
            .route = combos[i].route,
        };
    }
    assert_int_equal(epxt_launch(mx->nranks, 0, moe_cases_rank, cases, NULL),
                     EPX_OK);
}

/* Two engines alive on one communicator, used in turns. */
static const moe_case_t pair[2] = {
    { .name = "pair-a", .experts = 7, .topk = 3, .hidden = 10,
      .max_tokens = 9, .dtype = EPX_DTYPE_BF16, .idx_dtype = EPX_DTYPE_INT32,
      .out_dtype = EPX_DTYPE_BF16, .layout = EPX_LAYOUT_EXPERT_MAJOR,
      .align = 4 },
    { .name = "pair-b", .experts = 5, .topk = 2, .hidden = 6,
      .max_tokens = 5, .dtype = EPX_DTYPE_FP32, .idx_dtype = EPX_DTYPE_INT64,
      .out_dtype = EPX_DTYPE_FP32, .layout = EPX_LAYOUT_TOKEN_MAJOR,
      .align = 1 },
};

static int two_engines_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    moe_run_t a, b;
    epx_handle_t *ha = NULL, *hb = NULL;
    CHECK_CALL(moe_run_open(&a, comm, &pair[0]));
    CHECK_CALL(moe_run_open(&b, comm, &pair[1]));
    CHECK_CALL(moe_run_round(&a, 0, 0, &ha));
    CHECK_CALL(moe_run_round(&b, 0, 0, &hb));
    CHECK_CALL(moe_run_round(&a, 0, 1, &ha));   /* cached */
    CHECK_CALL(moe_run_round(&b, 0, 1, &hb));
    epx_handle_release(ha);
    moe_run_close(&a);
    CHECK_CALL(moe_run_round(&b, 0, 2, &hb));   /* b outlives a */
    epx_handle_release(hb);
    moe_run_close(&b);
    return 0;
}

static void two_engines(void **state)
{
    (void)state;
    assert_int_equal(epxt_launch(3, 0, two_engines_rank, NULL, NULL), EPX_OK);
}

/* One dispatch in flight per engine (epx.h): a second dispatch issued
 * after the first one's recv abandons the first.  Its combine must be
 * refused with EPX_ERR_STATE (never combine stale or overwritten rows),
 * the second dispatch must combine correctly, and the engine must go on
 * working afterwards. */
static int overlap_rank(epx_comm_t *comm, void *arg)
{
    const moe_case_t *c = arg;
    moe_run_t m;
    CHECK_CALL(moe_run_open(&m, comm, c));
    for (int round = 0; round < 2; round++) {
        moe_round_t a, b;
        epx_handle_t *ha = NULL, *hb = NULL;
        CHECK_CALL(moe_round_dispatch(&m, &a, 4 * round, 4 * round, &ha));
        CHECK_CALL(moe_round_dispatch(&m, &b, 4 * round + 1, 4 * round + 1,
                                      &hb));
        epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
        ca.y = a.rv.x;   /* any well-formed y: the call must be refused */
        CHECK_ST(epx_combine_send(m.moe, ha, &ca), EPX_ERR_STATE);
        CHECK(epx_last_error()[0] != '\0');
        CHECK_CALL(moe_round_combine(&b, hb));
        moe_round_free(&a);
        moe_round_free(&b);
        epx_handle_release(ha);
        epx_handle_release(hb);
    }
    epx_handle_t *hc = NULL;
    CHECK_CALL(moe_run_round(&m, 0, 9, &hc));
    epx_handle_release(hc);
    moe_run_close(&m);
    return 0;
}

static void overlapped(void **state)
{
    assert_int_equal(epxt_launch(3, 0, overlap_rank, *state, NULL), EPX_OK);
}

static moe_case_t overlap_cases[2] = {
    { .name = "overlap-em", .experts = 7, .topk = 3, .hidden = 10,
      .max_tokens = 9, .dtype = EPX_DTYPE_BF16, .idx_dtype = EPX_DTYPE_INT32,
      .out_dtype = EPX_DTYPE_FP32, .layout = EPX_LAYOUT_EXPERT_MAJOR,
      .align = 4 },
    { .name = "overlap-tm", .experts = 7, .topk = 3, .hidden = 10,
      .max_tokens = 9, .dtype = EPX_DTYPE_FP32, .idx_dtype = EPX_DTYPE_INT64,
      .out_dtype = EPX_DTYPE_FP32, .layout = EPX_LAYOUT_TOKEN_MAJOR,
      .align = 1 },
};

/* Outputs in place over the received rows (the sources read them from
 * the peers' windows): FP64 and FP32 engines, both layouts, weighted and
 * not. */
static moe_case_t in_place_cases[] = {
    { .name = "inplace-fp64-em", .experts = 11, .topk = 4, .hidden = 20,
      .max_tokens = 9, .dtype = EPX_DTYPE_FP64, .idx_dtype = EPX_DTYPE_INT32,
      .out_dtype = EPX_DTYPE_FP64, .layout = EPX_LAYOUT_EXPERT_MAJOR,
      .align = 4, .route = ROUTE_HOLES, .in_place = 1 },
    { .name = "inplace-fp64-em-unw", .experts = 7, .topk = 3, .hidden = 9,
      .max_tokens = 9, .dtype = EPX_DTYPE_FP64, .idx_dtype = EPX_DTYPE_INT64,
      .out_dtype = EPX_DTYPE_FP64, .layout = EPX_LAYOUT_EXPERT_MAJOR,
      .align = 1, .combine_flags = EPX_COMBINE_UNWEIGHTED, .in_place = 1 },
    { .name = "inplace-fp64-tm", .experts = 11, .topk = 4, .hidden = 20,
      .max_tokens = 9, .dtype = EPX_DTYPE_FP64, .idx_dtype = EPX_DTYPE_INT32,
      .out_dtype = EPX_DTYPE_FP64, .layout = EPX_LAYOUT_TOKEN_MAJOR,
      .align = 1, .route = ROUTE_ZIPF, .in_place = 1 },
    { .name = "inplace-fp32-em", .experts = 11, .topk = 4, .hidden = 20,
      .max_tokens = 9, .dtype = EPX_DTYPE_FP32, .idx_dtype = EPX_DTYPE_INT32,
      .out_dtype = EPX_DTYPE_BF16, .layout = EPX_LAYOUT_EXPERT_MAJOR,
      .align = 4, .in_place = 1 },
    { 0 }
};

static void in_place(void **state)
{
    (void)state;
    assert_int_equal(epxt_launch(3, 0, moe_cases_rank, in_place_cases, NULL),
                     EPX_OK);
}

#define TM(r) { r, EPX_LAYOUT_TOKEN_MAJOR, 1 }
#define EM(r, a) { r, EPX_LAYOUT_EXPERT_MAJOR, a }
static matrix_t mx[] = {
    TM(1), EM(1, 1), EM(1, 4),
    TM(2), EM(2, 1), EM(2, 4),
    TM(3), EM(3, 1), EM(3, 4), EM(3, 128),
    TM(8), EM(8, 1), EM(8, 4), EM(8, 128),
};

#define NMX (sizeof(mx) / sizeof(mx[0]))

int main(void)
{
    epxt_init("test_dispatch");
    /* One test per cell, named for it (EPX_TEST_FILTER=R8-* runs a row). */
    static char names[NMX][32];
    struct CMUnitTest tests[NMX + 4];
    for (size_t i = 0; i < NMX; i++) {
        snprintf(names[i], sizeof(names[i]), "R%d-%s%d", mx[i].nranks,
                 mx[i].layout == EPX_LAYOUT_TOKEN_MAJOR ? "tm" : "em",
                 mx[i].align);
        tests[i] = (struct CMUnitTest){ names[i], run_matrix, NULL, NULL,
                                        &mx[i] };
    }
    tests[NMX] = (struct CMUnitTest){ "two_engines", two_engines, NULL, NULL,
                                      NULL };
    tests[NMX + 1] = (struct CMUnitTest){ "overlap_em", overlapped, NULL, NULL,
                                          &overlap_cases[0] };
    tests[NMX + 2] = (struct CMUnitTest){ "overlap_tm", overlapped, NULL, NULL,
                                          &overlap_cases[1] };
    tests[NMX + 3] = (struct CMUnitTest){ "in_place", in_place, NULL, NULL,
                                          NULL };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
