/*
 * The reference checked on small examples worked out by hand from the
 * contract, so that the library is compared with something known right.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "common/epx_test.h"
#include "ref.h"
#include "ref_quant.h"

static void placement(void **state)
{
    (void)state;
    /* 10 experts on 3 ranks: [0,3) [3,6) [6,10) */
    assert_int_equal(ref_first_expert(3, 10, 0), 0);
    assert_int_equal(ref_first_expert(3, 10, 1), 3);
    assert_int_equal(ref_first_expert(3, 10, 2), 6);
    assert_int_equal(ref_num_experts(3, 10, 2), 4);
    assert_int_equal(ref_expert_owner(3, 10, 5), 1);
    assert_int_equal(ref_expert_owner(3, 10, 6), 2);
    assert_int_equal(ref_expert_owner(3, 10, 9), 2);
    assert_int_equal(ref_expert_owner(3, 10, 10), -1);
    /* 2 experts on 3 ranks: rank 0 holds none, then [0,1) and [1,2) */
    assert_int_equal(ref_num_experts(3, 2, 0), 0);
    assert_int_equal(ref_first_expert(3, 2, 1), 0);
    assert_int_equal(ref_num_experts(3, 2, 1), 1);
    assert_int_equal(ref_expert_owner(3, 2, 0), 1);
    assert_int_equal(ref_expert_owner(3, 2, 1), 2);
}

static float bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

static void bf16_rounding(void **state)
{
    (void)state;
    assert_int_equal(ref_bf16(1.0f), 0x3f80);
    assert_int_equal(ref_bf16(-1.5f), 0xbfc0);
    assert_int_equal(ref_bf16(bits(0x3f808000u)), 0x3f80); /* tie to even */
    assert_int_equal(ref_bf16(bits(0x3f818000u)), 0x3f82); /* tie to even */
    assert_int_equal(ref_bf16(bits(0x3f808001u)), 0x3f81); /* above tie */
    assert_int_equal(ref_bf16(bits(0x3f807fffu)), 0x3f80); /* below tie */
    assert_int_equal(ref_bf16(bits(0x7f7fffffu)), 0x7f80); /* to +inf */
    uint16_t nan = ref_bf16(bits(0x7fc00001u));
    assert_true((nan & 0x7f80) == 0x7f80 && (nan & 0x7f));
    assert_true(ref_bf16_value(0x3f81) == 1.0078125f);
}

/* Two ranks, experts {0,1} on rank 0 and {2,3} on rank 1, K = 2, H = 1.
 *   rank 0: token 0 -> experts 1, 2 (w .5, .25), x 10
 *           token 1 -> expert 3, -1  (w 1, junk), x 11
 *   rank 1: token 0 -> experts 0, 1 (w .75, .125), x 20 */
static const float x0[] = { 10, 11 }, x1[] = { 20 };
static const int64_t i0[] = { 1, 2, 3, -1 }, i1[] = { 0, 1 };
static const float w0[] = { .5f, .25f, 1, 99 }, w1[] = { .75f, .125f };

static ref_tokens_t toks[2] = { { 2, x0, i0, w0, 0 }, { 1, x1, i1, w1, 0 } };

static void dispatch_token_major(void **state)
{
    (void)state;
    ref_cfg_t c = { 2, 4, 2, 1, EPX_DTYPE_FP32, EPX_LAYOUT_TOKEN_MAJOR, 1, EPX_WIRE_NATIVE };
    ref_recv_t r;
    assert_int_equal(ref_dispatch(&c, toks, 0, &r), 0);
    /* rank 0 gets (0,0) and (1,0), each once */
    assert_int_equal(r.num_rows, 2);
    assert_int_equal(r.src_rank[0], 0);
    assert_int_equal(r.src_token[0], 0);
    assert_int_equal(r.topk_idx[0], 1);
    assert_int_equal(r.topk_idx[1], -1);
    assert_true(r.weights[0] == .5f && r.weights[1] == 0.0f);
    assert_int_equal(r.src_rank[1], 1);
    assert_int_equal(r.topk_idx[2], 0);
    assert_int_equal(r.topk_idx[3], 1);
    assert_int_equal(r.counts[0], 1);
    assert_int_equal(r.counts[1], 2);
    assert_null(r.offsets);
    assert_true(((float *)r.x)[0] == 10 && ((float *)r.x)[1] == 20);
    ref_recv_free(&r);

    assert_int_equal(ref_dispatch(&c, toks, 1, &r), 0);
    /* rank 1 gets rank 0's two tokens */
    assert_int_equal(r.num_rows, 2);
    assert_int_equal(r.first_local, 2);
    assert_int_equal(r.src_token[0], 0);
    assert_int_equal(r.topk_idx[0], -1);
    assert_int_equal(r.topk_idx[1], 0);
    assert_int_equal(r.src_token[1], 1);
    assert_int_equal(r.topk_idx[2], 1);
    assert_int_equal(r.topk_idx[3], -1);
    assert_true(r.weights[3] == 0.0f);   /* -1 slot: 0, not the junk */
    assert_int_equal(r.counts[0], 1);
    assert_int_equal(r.counts[1], 1);
    ref_recv_free(&r);
}

static void dispatch_expert_major(void **state)
{
    (void)state;
    ref_cfg_t c = { 2, 4, 2, 1, EPX_DTYPE_FP32, EPX_LAYOUT_EXPERT_MAJOR, 4, EPX_WIRE_NATIVE };
    ref_recv_t r;
    assert_int_equal(ref_dispatch(&c, toks, 0, &r), 0);
    /* expert 0: (1,0); expert 1: (0,0), (1,0); segments at 0 and 4 */
    assert_int_equal(r.counts[0], 1);
    assert_int_equal(r.counts[1], 2);
    assert_int_equal(r.offsets[0], 0);
    assert_int_equal(r.offsets[1], 4);
    assert_int_equal(r.num_rows, 8);
    assert_int_equal(r.src_rank[0], 1);
    assert_true(r.weights[0] == .75f);
    for (int i = 1; i < 4; i++)
        assert_int_equal(r.src_rank[i], -1);
    assert_int_equal(r.src_rank[4], 0);
    assert_true(r.weights[4] == .5f);
    assert_int_equal(r.src_rank[5], 1);
    assert_true(r.weights[5] == .125f);
    assert_int_equal(r.src_token[6], -1);
    assert_int_equal(r.src_token[7], -1);
    assert_true(((float *)r.x)[5] == 20);
    ref_recv_free(&r);
}

/* y of (token, expert) = expert + 1; of (token, rank) = 100 * (rank + 1) */
static void y_plain(void *ctx, int src, int64_t t, int who, float *row)
{
    (void)ctx;
    (void)src;
    (void)t;
    row[0] = (float)(who + 1);
}

static void y_rank(void *ctx, int src, int64_t t, int who, float *row)
{
    (void)ctx;
    (void)src;
    row[0] = 100.0f * (float)(who + 1) + (float)t;
}

static void combine_sums(void **state)
{
    (void)state;
    ref_cfg_t c = { 2, 4, 2, 1, EPX_DTYPE_FP32, EPX_LAYOUT_EXPERT_MAJOR, 4, EPX_WIRE_NATIVE };
    float out[2];
    assert_int_equal(ref_combine(&c, 0, &toks[0], 0, y_plain, NULL,
                                 EPX_DTYPE_FP32, out), 0);
    assert_true(out[0] == .5f * 2 + .25f * 3);   /* 1.75 */
    assert_true(out[1] == 4.0f);                 /* the junk weight unused */
    assert_int_equal(ref_combine(&c, 0, &toks[0], 1, y_plain, NULL,
                                 EPX_DTYPE_FP32, out), 0);
    assert_true(out[0] == 2.0f + 3.0f);
    c.layout = EPX_LAYOUT_TOKEN_MAJOR;
    assert_int_equal(ref_combine(&c, 0, &toks[0], 0, y_rank, NULL,
                                 EPX_DTYPE_FP32, out), 0);
    assert_true(out[0] == 100.0f + 200.0f);      /* both ranks' rows */
    assert_true(out[1] == 201.0f);               /* rank 1's row only */
}

/* Engine bf16: each rank's partial is rounded to bf16 before the fp32
 * sum.  Token: experts 0 and 1 (both on rank 0) with y 1 and 2^-9, and
 * expert 2 (rank 1) with y 2^-9, all weights 1.  Rank 0's partial
 * 1 + 2^-9 rounds to 1 on the wire; rank 1's 2^-9 is exact; out (fp32)
 * = 1 + 2^-9, where an unrounded sum would give 1 + 2^-8. */
static const int64_t i_round[] = { 0, 1, 2 };
static const float w_round[] = { 1, 1, 1 };
static void y_small(void *ctx, int src, int64_t t, int who, float *row)
{
    (void)ctx;
    (void)src;
    (void)t;
    row[0] = who == 0 ? 1.0f : 1.0f / 512;
}

static void combine_rounds_partials(void **state)
{
    (void)state;
    ref_cfg_t c = { 2, 4, 3, 1, EPX_DTYPE_BF16, EPX_LAYOUT_EXPERT_MAJOR, 1, EPX_WIRE_NATIVE };
    uint16_t x[1] = { 0 };
    ref_tokens_t t = { 1, x, i_round, w_round, 0 };
    float out;
    assert_int_equal(ref_combine(&c, 0, &t, 0, y_small, NULL, EPX_DTYPE_FP32,
                                 &out), 0);
    assert_true(out == 1.0f + 1.0f / 512);
    c.dtype = EPX_DTYPE_FP32;   /* no wire rounding */
    assert_int_equal(ref_combine(&c, 0, &t, 0, y_small, NULL, EPX_DTYPE_FP32,
                                 &out), 0);
    assert_true(out == 1.0f + 1.0f / 256);
    uint16_t ob;   /* bf16 out: 1 + 2^-8 is a tie, to even: 1 */
    assert_int_equal(ref_combine(&c, 0, &t, 0, y_small, NULL, EPX_DTYPE_BF16,
                                 &ob), 0);
    assert_int_equal(ob, 0x3f80);
}

/* FP64 engine: the same token in double.  Rank 0's partial 1 + 2^-30 and
 * rank 1's 2^-30 travel unrounded: out = 1 + 2^-29 (fp32 anywhere would
 * give 1).  A weight widens exactly: w = fp32(1/3) and y = 3 give
 * 3 * fp32(1/3) = 1 + 2^-25, not 1. */
static void y_small64(void *ctx, int src, int64_t t, int who, double *row)
{
    (void)ctx;
    (void)src;
    (void)t;
    row[0] = who == 0 ? 1.0 : 0x1p-30;
}

static void y_three(void *ctx, int src, int64_t t, int who, double *row)
{
    (void)ctx;
    (void)src;
    (void)t;
    row[0] = who == 0 ? 3.0 : 0.0;
}

static void combine_f64(void **state)
{
    (void)state;
    ref_cfg_t c = { 2, 4, 3, 1, EPX_DTYPE_FP64, EPX_LAYOUT_EXPERT_MAJOR, 1,
                    EPX_WIRE_NATIVE };
    double x[1] = { 0 };
    ref_tokens_t t = { 1, x, i_round, w_round, 0 };
    double out = 0;
    assert_int_equal(ref_combine_f64(&c, 0, &t, 0, y_small64, NULL, &out), 0);
    assert_true(out == 1.0 + 0x1p-29);
    const float w3[] = { 1.0f / 3.0f, 5.0f, 7.0f };
    ref_tokens_t t3 = { 1, x, i_round, w3, 0 };
    assert_int_equal(ref_combine_f64(&c, 0, &t3, 0, y_three, NULL, &out), 0);
    assert_true(out == 1.0 + 0x1p-25);
    assert_int_equal(ref_combine_f64(&c, 0, &t3, 1, y_three, NULL, &out), 0);
    assert_true(out == 3.0);   /* unweighted */
    /* token-major: each rank's row is its partial */
    c.layout = EPX_LAYOUT_TOKEN_MAJOR;
    assert_int_equal(ref_combine_f64(&c, 0, &t, 0, y_small64, NULL, &out), 0);
    assert_true(out == 1.0 + 0x1p-30);   /* rank 0's row, then rank 1's */
}

/* The reference quantizer on rows worked out by hand. */
static void quant_rows(void **state)
{
    (void)state;
    /* UE8M0 /128: amax 3; 3 / 2^-7 = 384 <= 448 < 3 / 2^-8, so the scale
     * is 2^-7 (code 120); 1 * 2^7 = 2^7 is e4m3 0x70 (exponent 14), -3 *
     * 2^7 = -1.5 * 2^8 is 0xfc (exponent 15, mantissa 4). */
    uint16_t x[2] = { 0x3f80, 0xc040 };   /* 1.0, -3.0 */
    uint8_t q[2], s[4];
    float g = -1;
    ref_quant_row(EPX_WIRE_FP8_UE8M0, x, 2, q, s, &g);
    assert_int_equal(s[0], 120);
    assert_int_equal(q[0], 0x70);
    assert_int_equal(q[1], 0xfc);
    assert_true(g == -1);                 /* no row scale */
    /* fp32 scales: s = 3 / 448; 1 / s = 149.33 -> 144 (0x71: 1.125 * 2^7),
     * -3 / s = -448 -> 0xfe. */
    float fs[1];
    ref_quant_row(EPX_WIRE_FP8, x, 2, q, fs, &g);
    assert_true(fs[0] == 3.0f / 448.0f);
    assert_int_equal(q[0], 0x71);
    assert_int_equal(q[1], 0xfe);
    /* NVFP4, a zero row: row scale 1, block scale 0, codes 0. */
    uint16_t z[3] = { 0, 0x8000, 0 };
    ref_quant_row(EPX_WIRE_NVFP4, z, 3, q, s, &g);
    assert_true(g == 1.0f);
    assert_int_equal(s[0], 0);
    assert_int_equal(q[0], 0);
    assert_int_equal(q[1], 0);
    ref_wire_t w;
    assert_int_equal(ref_wire_shape(EPX_WIRE_NVFP4, 3, &w), 0);
    assert_true(w.data_bytes == 2 && w.nblocks == 1 && w.global_bytes == 4);
    assert_int_equal(ref_wire_shape(EPX_WIRE_NATIVE, 3, &w), -1);
}

int main(void)
{
    epxt_init("test_ref");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(placement),
        cmocka_unit_test(quant_rows),
        cmocka_unit_test(bf16_rounding),
        cmocka_unit_test(dispatch_token_major),
        cmocka_unit_test(dispatch_expert_major),
        cmocka_unit_test(combine_sums),
        cmocka_unit_test(combine_rounds_partials),
        cmocka_unit_test(combine_f64),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
