/*
 * The GPU executor's fused quantization (src/proto/quant_codec.h and the
 * "quantized pack" of src/proto/proto.h) run on the host: every bf16 value
 * through the shared codecs, chunk encoders and block scales against the
 * independent reference (tests/ref/ref_quant), then whole rows quantized
 * the way a packing warp does it (chunks of 16 per lane, the lanes of a
 * block reducing its maximum with xor shuffles, the block's first lane
 * storing the scale, NVFP4's row maximum over the warp) compared byte for
 * byte with the reference's rows and with the host executor's
 * (moe_wire_pack_row), in the window regions the geometry gives.  Runs
 * without a GPU.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/epx_test.h"
#include "ref/ref_quant.h"
#include "proto/proto.h"
#include "moe/wire.h"

enum { NB = 1 << 16, WARPSZ = 32 };

/* Every bf16 value through the scalar encoders. */
static void test_codecs_all_bf16(void **state)
{
    (void)state;
    for (uint32_t u = 0; u < NB; u++) {
        float f = moe_quant_bf16((uint16_t)u);
        double d = ref_bf16f((uint16_t)u);
        assert_int_equal(moe_quant_f32_to_e4m3(f), ref_e4m3_enc(d));
        assert_int_equal(moe_quant_f32_to_e2m1(f), ref_e2m1_enc(d));
        assert_int_equal(moe_quant_f32_to_ue8m0(f), ref_ue8m0_enc(d));
    }
    for (unsigned c = 0; c < 256; c++) {
        float v = moe_quant_e4m3_to_f32((uint8_t)c);
        if ((c & 0x7f) == 0x7f)
            assert_true(isnan(v));
        else
            assert_true((double)v == ref_e4m3_dec(c));
        v = moe_quant_ue8m0_to_f32((uint8_t)c);
        if (c == 0xff)
            assert_true(isnan(v));
        else
            assert_true((double)v == ref_ue8m0_dec(c));
    }
    for (unsigned c = 0; c < 16; c++)
        assert_true((double)moe_quant_e2m1_to_f32((uint8_t)c) ==
                    ref_e2m1_dec(c));
}

/* Every bf16 value through the chunk encoders, 16 at a time, with scales
 * of every kind (fp32 from random maxima, UE8M0 powers of two, NVFP4
 * products). */
static void test_chunks_all_bf16(void **state)
{
    (void)state;
    epxt_rng_t rng = { epxt_seed() };
    float scales[8] = { 1.0f, MOE_QUANT_SCALE_MIN, 1.0f / 448.0f, 3.0f };
    for (int i = 4; i < 8; i++)   /* amax / 448 of random finite maxima */
        scales[i] = moe_quant_fp8_scale(
            moe_quant_bf16((uint16_t)(epxt_below(&rng, 0x7f80))));
    for (uint32_t u0 = 0; u0 < NB; u0 += MOE_QUANT_CHUNK) {
        uint16_t x[MOE_QUANT_CHUNK];
        uint8_t q[MOE_QUANT_CHUNK];
        for (int i = 0; i < MOE_QUANT_CHUNK; i++)
            x[i] = (uint16_t)(u0 + (uint32_t)i);
        for (int k = 0; k < 8; k++) {
            float s = scales[k];
            moe_quant_chunk_fp8_div(x, MOE_QUANT_CHUNK, s, q);
            for (int i = 0; i < MOE_QUANT_CHUNK; i++)
                assert_int_equal(q[i], ref_e4m3_enc(ref_bf16f(x[i]) / s));
            moe_quant_chunk_e2m1(x, MOE_QUANT_CHUNK, s, 0, q);
            for (int i = 0; i < MOE_QUANT_CHUNK; i++) {
                unsigned c = ref_e2m1_enc(ref_bf16f(x[i]) / s);
                assert_int_equal((q[i / 2] >> (4 * (i & 1))) & 15, c);
            }
        }
        /* UE8M0 codes across the range, x * 2^-e exact */
        unsigned c8 = (unsigned)epxt_below(&rng, 255);
        moe_quant_chunk_fp8_mul(x, MOE_QUANT_CHUNK, moe_quant_ue8m0_inv((uint8_t)c8),
                                q);
        for (int i = 0; i < MOE_QUANT_CHUNK; i++)
            assert_int_equal(q[i], ref_e4m3_enc(ref_bf16f(x[i]) /
                                                ref_ue8m0_dec(c8)));
    }
}

/* Every finite bf16 maximum through the block scales. */
static void test_scales_all_bf16(void **state)
{
    (void)state;
    for (uint32_t u = 0; u < 0x7f80; u++) {
        float amax = moe_quant_bf16((uint16_t)u);
        float want = amax > 0 ? fmaxf(amax / 448.0f, FLT_MIN) : 1.0f;
        assert_true(moe_quant_fp8_scale(amax) == want);
        unsigned c = 127;
        if (amax > 0)
            for (c = 0; c < 254 && amax / ref_ue8m0_dec(c) > 448.0; c++)
                ;
        assert_int_equal(moe_quant_ue8m0_scale(amax), c);
        float g = amax > 0 ? fmaxf(amax / 2688.0f, FLT_MIN) : 1.0f;
        assert_true(moe_quant_nvfp4_gscale(amax) == g);
        assert_int_equal(moe_quant_nvfp4_bscale(amax, g),
                         ref_e4m3_enc(amax / (6.0f * g)));
    }
}

/* A row with the values that matter: normal, tiny (subnormal bf16),
 * huge, zeros, whole zero blocks, and (special) NaN and +-Inf. */
static void make_row(epxt_rng_t *rng, uint16_t *x, int H, int special)
{
    int zero_from = (int)epxt_below(rng, (uint64_t)H + 1);
    int zero_len = (int)epxt_below(rng, 40);
    for (int i = 0; i < H; i++) {
        uint64_t r = epxt_next(rng);
        uint16_t sign = (uint16_t)(r & 0x8000u);
        uint16_t v;
        switch ((r >> 16) % 16) {
        case 0: v = (uint16_t)((r >> 24) % 0x80); break;         /* subnormal */
        case 1: v = (uint16_t)(0x7f00 + (r >> 24) % 0x7f); break; /* huge */
        case 2: v = 0; break;
        case 3: v = special ? (uint16_t)((r >> 24) & 1 ? 0x7f80 : 0x7fc1)
                            : (uint16_t)0x3f80;
            break;
        default: v = (uint16_t)(0x3000 + (r >> 24) % 0x1800); break;
        }
        x[i] = (uint16_t)(v | sign);
        if (i >= zero_from && i < zero_from + zero_len)
            x[i] = 0;
    }
}

/* One row quantized as a packing warp does (kernels.cu warp_quant_row):
 * into the geometry's regions of row `row` of window w. */
static void warp_quant_row_host(const proto_geom_t *g, char *w, int64_t row,
                                const uint16_t *x, float given)
{
    char *q = w + g->off_rows + row * g->xrow_bytes;
    char *sc = w + g->off_scales + row * g->scale_bytes;
    float *gs = (float *)(w + g->off_gscale) + row;
    const int64_t chunks = proto_q_chunks(g);
    const int G = proto_q_group(g), cb = proto_q_chunk_bytes(g);
    uint16_t v[WARPSZ][MOE_QUANT_CHUNK];
    float global = 0.0f;
    assert_true(G >= 1 && WARPSZ % G == 0);
    if (g->wire == EPX_WIRE_NVFP4) {
        uint32_t lm[WARPSZ] = { 0 }, m = 0;
        for (int lane = 0; lane < WARPSZ; lane++)
            for (int64_t c = lane; given <= 0.0f && c < chunks; c += WARPSZ) {
                int nan;
                proto_q_load_chunk(g, x, c, v[lane]);
                uint32_t a = moe_quant_chunk_amax(v[lane], MOE_QUANT_CHUNK,
                                                  &nan);
                lm[lane] = a > lm[lane] ? a : lm[lane];
            }
        for (int lane = 0; lane < WARPSZ; lane++)   /* __reduce_max_sync */
            m = lm[lane] > m ? lm[lane] : m;
        global = proto_q_row_global(given, m);
        *gs = global;
    }
    for (int64_t c0 = 0; c0 < chunks; c0 += WARPSZ) {
        int n[WARPSZ], nan[WARPSZ];
        uint32_t m[WARPSZ];
        for (int lane = 0; lane < WARPSZ; lane++) {
            int64_t c = c0 + lane;
            n[lane] = nan[lane] = 0;
            m[lane] = 0;
            if (c < chunks) {
                n[lane] = proto_q_load_chunk(g, x, c, v[lane]);
                m[lane] = moe_quant_chunk_amax(v[lane], MOE_QUANT_CHUNK,
                                               &nan[lane]);
            }
        }
        for (int off = 1; off < G; off <<= 1) {     /* __shfl_xor_sync */
            uint32_t m2[WARPSZ];
            int nan2[WARPSZ];
            for (int lane = 0; lane < WARPSZ; lane++) {
                m2[lane] = m[lane ^ off];
                nan2[lane] = nan[lane ^ off];
            }
            for (int lane = 0; lane < WARPSZ; lane++) {
                m[lane] = m2[lane] > m[lane] ? m2[lane] : m[lane];
                nan[lane] |= nan2[lane];
            }
        }
        for (int lane = 0; lane < WARPSZ; lane++) {
            int64_t c = c0 + lane;
            if (n[lane] == 0)
                continue;
            uint8_t o[MOE_QUANT_CHUNK];
            uint32_t s = proto_q_encode(g, v[lane], MOE_QUANT_CHUNK, m[lane],
                                       nan[lane], global, o);
            memcpy(q + c * cb, o, (size_t)proto_q_chunk_stored(g, n[lane]));
            if (c % G == 0)
                proto_q_store_scale(g, sc, c / G, s);
        }
    }
}

/* given: the caller's NVFP4 tensor scale (0: each row's own; > 0 is
 * multiplied by each row's own scale, so < 1 saturates blocks). */
static void check_rows(epx_wire_t wire, int H, int special, float given)
{
    epxt_rng_t rng = { epxt_hash(epxt_seed(), (uint64_t)wire, (uint64_t)H,
                                 (uint64_t)special, 0) };
    enum { ROWS = 3 };
    proto_geom_t g;
    memset(&g, 0, sizeof(g));
    g.R = 2;
    g.rank = 0;
    g.E = 4;
    g.K = 2;
    g.H = H;
    g.esize = 2;
    g.wire = wire;
    g.maxT = ROWS;
    g.align = 1;
    g.Lmax = 2;
    proto_geom_layout(&g);
    moe_wire_t f;
    assert_int_equal(moe_wire_init(&f, wire, EPX_DTYPE_BF16, H), EPX_OK);
    assert_int_equal(g.xrow_bytes, (int64_t)f.data_bytes);
    assert_int_equal(g.scale_bytes, (int64_t)f.scale_bytes);
    assert_int_equal(g.gscale_bytes, (int64_t)f.global_bytes);
    assert_int_equal(g.qblock, f.block);
    assert_true(g.off_scales >= g.off_rows + g.xrows * g.xrow_bytes);
    assert_true(g.off_gscale >= g.off_scales + g.xrows * g.scale_bytes);
    assert_true(g.off_comb >= g.off_gscale + g.xrows * g.gscale_bytes);

    char *w = calloc(1, (size_t)g.total);
    uint16_t *x = malloc(sizeof(uint16_t) * (size_t)H);
    uint8_t *rq = calloc(1, f.data_bytes + 1), *hq = calloc(1, f.data_bytes + 1);
    char *rs = calloc(1, f.scale_bytes + 1), *hs = calloc(1, f.scale_bytes + 1);
    assert_non_null(w);
    assert_true(x && rq && hq && rs && hs);
    for (int64_t row = 0; row < ROWS; row++) {
        make_row(&rng, x, H, special);
        if (row == 1)
            memset(x, 0, sizeof(uint16_t) * (size_t)H);  /* all zero */
        float gv = 0.0f;
        if (given > 0.0f && wire == EPX_WIRE_NVFP4) {
            gv = ref_nvfp4_tensor_scale(x, (size_t)H) * given;
            if (!(gv > 0.0f))
                gv = given;   /* an all-zero row: any positive scale */
        }
        warp_quant_row_host(&g, w, row, x, gv);
        float rg = 0, hg = 0;
        ref_quant_row_given(wire, x, H, rq, rs, &rg, gv);
        moe_wire_pack_row(&f, x, hq, hs, &hg, gv);
        const char *q = w + g.off_rows + row * g.xrow_bytes;
        const char *sc = w + g.off_scales + row * g.scale_bytes;
        assert_memory_equal(q, rq, f.data_bytes);
        assert_memory_equal(q, hq, f.data_bytes);
        assert_memory_equal(sc, rs, f.scale_bytes);
        assert_memory_equal(sc, hs, f.scale_bytes);
        if (wire == EPX_WIRE_NVFP4) {
            float gs = ((float *)(w + g.off_gscale))[row];
            assert_memory_equal(&gs, &rg, sizeof(float));
            assert_memory_equal(&gs, &hg, sizeof(float));
        }
    }
    free(w);
    free(x);
    free(rq);
    free(hq);
    free(rs);
    free(hs);
}

static void test_rows(void **state)
{
    (void)state;
    static const int Hs[] = { 1, 2, 7, 15, 16, 17, 31, 32, 33, 127, 128, 129,
                              200, 511, 512, 513, 1040, 7168 };
    static const epx_wire_t wires[] = { EPX_WIRE_FP8, EPX_WIRE_FP8_UE8M0,
                                        EPX_WIRE_MXFP8, EPX_WIRE_NVFP4 };
    for (size_t w = 0; w < sizeof(wires) / sizeof(wires[0]); w++)
        for (size_t h = 0; h < sizeof(Hs) / sizeof(Hs[0]); h++)
            for (int special = 0; special < 2; special++) {
                check_rows(wires[w], Hs[h], special, 0.0f);
                /* the caller's tensor scale: at, and 64x under, the own */
                if (wires[w] == EPX_WIRE_NVFP4) {
                    check_rows(wires[w], Hs[h], special, 1.0f);
                    check_rows(wires[w], Hs[h], special, 1.0f / 64.0f);
                }
            }
}

/* Native wire: the rows region is the engine dtype's rows, no scales. */
static void test_native_geom(void **state)
{
    (void)state;
    proto_geom_t g;
    memset(&g, 0, sizeof(g));
    g.R = 3;
    g.E = 6;
    g.K = 2;
    g.H = 100;
    g.esize = 4;
    g.wire = EPX_WIRE_NATIVE;
    g.maxT = 5;
    g.align = 1;
    g.Lmax = 2;
    proto_geom_layout(&g);
    assert_int_equal(g.xrow_bytes, g.row_bytes);
    assert_int_equal(g.scale_bytes, 0);
    assert_int_equal(g.gscale_bytes, 0);
    assert_int_equal(g.qblock, 0);
    assert_int_equal(g.off_scales, g.off_gscale);
    assert_int_equal(g.off_gscale, g.off_comb);
}

int main(int argc, char **argv)
{
    (void)argc;
    epxt_init(argv[0]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_codecs_all_bf16),
        cmocka_unit_test(test_chunks_all_bf16),
        cmocka_unit_test(test_scales_all_bf16),
        cmocka_unit_test(test_rows),
        cmocka_unit_test(test_native_geom),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
