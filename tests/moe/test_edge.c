/*
 * Dispatch/combine edge cases, each checked bit for bit against the
 * reference: empty ranks, hot experts, -1 holes, extreme top-k, odd hidden
 * sizes, uneven or sparse placement, one rank, per-rank token limits,
 * unweighted combine, heavy padding.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <cmocka.h>

#include "common/epx_test.h"
#include "moe_case.h"

typedef struct edge {
    int nranks;
    moe_case_t c;
} edge_t;

#define BF16 EPX_DTYPE_BF16
#define FP32 EPX_DTYPE_FP32
#define I32 EPX_DTYPE_INT32
#define I64 EPX_DTYPE_INT64
#define TMJ EPX_LAYOUT_TOKEN_MAJOR
#define EMJ EPX_LAYOUT_EXPERT_MAJOR

/* Fields left 0 get a small default (filled in by main). */
#define CASE(r, nm, ...) { r, { .name = nm, __VA_ARGS__ } }

static void fill_defaults(moe_case_t *c)
{
    if (!c->experts) c->experts = 6;
    if (!c->topk) c->topk = 2;
    if (!c->hidden) c->hidden = 16;
    if (!c->max_tokens) c->max_tokens = 8;
    if (!c->align) c->align = 1;
    if (c->idx_dtype != I64) c->idx_dtype = I32;
}

static edge_t edges[] = {
    /* Nothing to send on some ranks, on every rank. */
    CASE(3, "zero-some-tm", .tokens = TOK_ZERO_ODD),
    CASE(3, "zero-some-em", .tokens = TOK_ZERO_ODD, .layout = EMJ, .align = 4),
    CASE(3, "zero-all-tm", .tokens = TOK_ZERO_ALL),
    CASE(3, "zero-all-em", .tokens = TOK_ZERO_ALL, .layout = EMJ, .align = 4),
    /* Empty tensors with no storage (data NULL), as frameworks pass them. */
    CASE(3, "zero-some-null", .tokens = TOK_ZERO_ODD, .null_empty = 1,
         .layout = EMJ, .align = 4),
    CASE(3, "zero-all-null", .tokens = TOK_ZERO_ALL, .null_empty = 1),
    CASE(8, "sparse-null", .experts = 3, .null_empty = 1, .layout = EMJ,
         .align = 2),
    /* Every token to one expert. */
    CASE(3, "hot-tm", .topk = 4, .route = ROUTE_HOT, .tokens = TOK_FULL),
    CASE(3, "hot-em", .topk = 4, .route = ROUTE_HOT, .tokens = TOK_FULL,
         .layout = EMJ, .align = 4, .dtype = FP32, .out_dtype = FP32),
    /* -1 entries, whole rows of -1. */
    CASE(3, "holes-tm", .topk = 4, .route = ROUTE_HOLES, .max_tokens = 16),
    CASE(3, "holes-em", .topk = 4, .route = ROUTE_HOLES, .max_tokens = 16,
         .layout = EMJ, .align = 4, .idx_dtype = I64),
    CASE(8, "holes-em-r8", .experts = 16, .topk = 6, .route = ROUTE_HOLES,
         .layout = EMJ, .align = 1, .dtype = FP32, .out_dtype = FP32),
    /* K = 1 and large K. */
    CASE(3, "k1-tm", .topk = 1),
    CASE(3, "k1-em", .topk = 1, .layout = EMJ, .align = 4, .dtype = FP32,
         .out_dtype = BF16),
    CASE(2, "k16-tm", .experts = 32, .topk = 16, .idx_dtype = I64),
    CASE(2, "k16-em", .experts = 32, .topk = 16, .layout = EMJ, .align = 4),
    CASE(3, "k32-em", .experts = 40, .topk = EPX_MAX_TOPK, .layout = EMJ,
         .align = 1, .max_tokens = 4),
    /* Hidden sizes that are not a multiple of 8. */
    CASE(3, "h7-tm", .hidden = 7),
    CASE(3, "h7-em", .hidden = 7, .layout = EMJ, .align = 4, .dtype = FP32,
         .out_dtype = FP32),
    CASE(3, "h1-tm", .hidden = 1, .dtype = FP32, .out_dtype = BF16),
    CASE(3, "h1-em", .hidden = 1, .layout = EMJ, .align = 4),
    /* Expert counts that do not divide by the ranks; fewer experts than
     * ranks (some ranks hold none). */
    CASE(3, "e10-r3-tm", .experts = 10, .topk = 3),
    CASE(3, "e10-r3-em", .experts = 10, .topk = 3, .layout = EMJ, .align = 4),
    CASE(3, "e2-r3-tm", .experts = 2, .topk = 2),
    CASE(3, "e2-r3-em", .experts = 2, .topk = 2, .layout = EMJ, .align = 4),
    CASE(3, "e1-r3-em", .experts = 1, .topk = 1, .layout = EMJ, .align = 2),
    CASE(3, "e1-r3-tm", .experts = 1, .topk = 1, .route = ROUTE_HOLES),
    CASE(8, "e3-r8-tm", .experts = 3, .topk = 2, .idx_dtype = I64),
    CASE(8, "e5-r8-em", .experts = 5, .topk = 4, .layout = EMJ, .align = 128,
         .dtype = FP32, .out_dtype = FP32),
    /* One rank. */
    CASE(1, "r1-tm", .experts = 5, .topk = 3),
    CASE(1, "r1-em", .experts = 5, .topk = 3, .layout = EMJ, .align = 4,
         .idx_dtype = I64, .dtype = FP32, .out_dtype = BF16),
    CASE(1, "r1-zero", .tokens = TOK_ZERO_ALL, .layout = EMJ, .align = 4),
    /* Exactly max_tokens_per_rank, and limits that differ per rank (only
     * the shapes must agree). */
    CASE(3, "full-tm", .tokens = TOK_FULL, .max_tokens = 32),
    CASE(3, "max-per-rank-tm", .tokens = TOK_FULL, .max_tokens = 2,
         .max_tokens_step = 5),
    CASE(3, "max-per-rank-em", .tokens = TOK_FULL, .max_tokens = 2,
         .max_tokens_step = 5, .layout = EMJ, .align = 4),
    /* Outputs already weighted by the caller. */
    CASE(3, "unweighted-bf16", .topk = 4, .layout = EMJ, .align = 4,
         .combine_flags = EPX_COMBINE_UNWEIGHTED),
    CASE(3, "unweighted-fp32", .topk = 4, .layout = EMJ, .align = 1,
         .dtype = FP32, .out_dtype = FP32,
         .combine_flags = EPX_COMBINE_UNWEIGHTED),
    /* Padding far above the counts. */
    CASE(3, "align128-em", .experts = 9, .topk = 3, .layout = EMJ,
         .align = 128, .route = ROUTE_HOLES),
    /* Larger rows and batches. */
    CASE(8, "large-tm", .experts = 64, .topk = 8, .hidden = 1031,
         .max_tokens = 64),
    CASE(8, "large-em", .experts = 64, .topk = 8, .hidden = 1031,
         .max_tokens = 64, .layout = EMJ, .align = 128, .dtype = FP32,
         .out_dtype = BF16, .tokens = TOK_FULL),
    /* Ranks reaching each call at different times. */
    CASE(8, "jitter-tm", .experts = 16, .topk = 4, .jitter_us = 3000),
    CASE(8, "jitter-em", .experts = 12, .topk = 3, .jitter_us = 3000,
         .layout = EMJ, .align = 4, .route = ROUTE_HOLES),
    /* The engine dtype and the output dtype differ. */
    CASE(2, "bf16-to-fp32-em", .topk = 3, .layout = EMJ, .align = 4,
         .out_dtype = FP32),
    CASE(2, "fp32-to-bf16-tm", .topk = 3, .dtype = FP32, .out_dtype = BF16),
};
#define NEDGE (sizeof(edges) / sizeof(edges[0]))

static void run_edge(void **state)
{
    const edge_t *e = *state;
    moe_case_t cases[2] = { e->c, { 0 } };
    assert_int_equal(epxt_launch(e->nranks, 0, moe_cases_rank, cases, NULL),
                     EPX_OK);
}

int main(void)
{
    epxt_init("test_edge");
    struct CMUnitTest tests[NEDGE];
    for (size_t i = 0; i < NEDGE; i++) {
        fill_defaults(&edges[i].c);
        tests[i] = (struct CMUnitTest){ edges[i].c.name, run_edge, NULL, NULL,
                                        &edges[i] };
    }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
