/*
 * The quantized formats (src/moe/quant.[ch]) against a reference written
 * from the format definitions alone (tests/ref/ref_quant.c): codes decode by formula
 * (2^(e - bias) * (1 + m / 2^M), subnormals m / 2^M * 2^(1 - bias)) and
 * encode by exhaustive search over every finite code for the nearest value,
 * a tie going to the code whose last bit is 0.  Scalar codecs: every code,
 * every bf16 bit pattern, the midpoints between codes and their fp32
 * neighbours, random fp32.  Block quantizers: random rows (seeded) and edge
 * rows; codes, scales, dequantized values and the error bounds stated in
 * src/moe/README.md.
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
#include "util/util.h"
#include "moe/quant.h"
#include "ref/ref_quant.h"

/* The reference codecs (doubles, by formula and search) are in
 * tests/ref/ref_quant.c, shared with the dispatch reference. */
#define bf16f ref_bf16f

/* Same value, or both NaN. */
static int same(double a, double b)
{
    return (isnan(a) && isnan(b)) || a == b;
}

#define MAX_REPORT 8
#define REPORT(bad, ...)                                                       \
    do {                                                                       \
        if ((bad)++ < MAX_REPORT)                                              \
            print_error(__VA_ARGS__);                                          \
    } while (0)

/* ---- scalar codecs */

static void e4m3_all_codes(void **state)
{
    (void)state;
    int bad = 0;
    for (unsigned c = 0; c < 256; c++) {
        float f = moe_quant_e4m3_to_f32((uint8_t)c);
        double want = ref_e4m3_dec(c);
        if (!same(f, want) || (f == 0 && !signbit(f) != !signbit(want)))
            REPORT(bad, "e4m3 0x%02x decodes to %a, want %a\n", c, f, want);
        unsigned back = moe_quant_f32_to_e4m3(f);
        unsigned wback = (c & 0x7f) == 0x7f ? 0x7f : c;
        if (back != wback)
            REPORT(bad, "e4m3 0x%02x re-encodes to 0x%02x, want 0x%02x\n", c,
                   back, wback);
    }
    /* Spot values from the format's definition. */
    assert_true(moe_quant_e4m3_to_f32(0x7e) == 448.0f);
    assert_true(moe_quant_e4m3_to_f32(0x08) == 0x1p-6f);
    assert_true(moe_quant_e4m3_to_f32(0x01) == 0x1p-9f);
    assert_true(moe_quant_e4m3_to_f32(0x38) == 1.0f);
    assert_int_equal(bad, 0);
}

/* One fp32 input through the encoder against the reference. */
static void e4m3_one(float f, int *bad)
{
    unsigned got = moe_quant_f32_to_e4m3(f), want = ref_e4m3_enc(f);
    if (got != want)
        REPORT(*bad, "e4m3(%a = 0x%08x) = 0x%02x, want 0x%02x\n", f,
               moe_quant_bits(f), got, want);
}
static void e2m1_one(float f, int *bad)
{
    unsigned got = moe_quant_f32_to_e2m1(f), want = ref_e2m1_enc(f);
    if (got != want)
        REPORT(*bad, "e2m1(%a = 0x%08x) = 0x%x, want 0x%x\n", f,
               moe_quant_bits(f), got, want);
}
static void ue8m0_one(float f, int *bad)
{
    unsigned got = moe_quant_f32_to_ue8m0(f), want = ref_ue8m0_enc(f);
    if (got != want)
        REPORT(*bad, "ue8m0(%a = 0x%08x) = 0x%02x, want 0x%02x\n", f,
               moe_quant_bits(f), got, want);
}

/* Midpoints between neighbouring codes (the ties) and the fp32 values
 * next to them, both signs. */
static void around_midpoints(double (*dec)(unsigned), unsigned maxcode,
                             void (*one)(float, int *), int *bad)
{
    for (unsigned c = 0; c < maxcode; c++) {
        float mid = (float)((dec(c) + dec(c + 1)) / 2);
        float v[3] = { mid, nextafterf(mid, 0.0f), nextafterf(mid, INFINITY) };
        for (int i = 0; i < 3; i++) {
            one(v[i], bad);
            one(-v[i], bad);
        }
    }
}

/* Random fp32 bit patterns with the exponent field in [lo, hi]. */
static void random_f32(const char *name, unsigned lo, unsigned hi,
                       void (*one)(float, int *), int *bad)
{
    epxt_rng_t r = { epxt_hash_str(epxt_seed(), name) };
    for (int i = 0; i < (1 << 18); i++) {
        uint32_t u = (uint32_t)epxt_next(&r);
        uint32_t e = lo + (uint32_t)epxt_below(&r, hi - lo + 1);
        one(moe_quant_float((u & 0x807fffffu) | (e << 23)), bad);
    }
}

static const float specials[] = { 0.0f, -0.0f, INFINITY, -INFINITY, NAN,
                                  -NAN, FLT_MAX, -FLT_MAX, FLT_MIN,
                                  0x1p-149f, -0x1p-149f, 1e30f, -1e30f };

static void e4m3_encode(void **state)
{
    (void)state;
    int bad = 0;
    for (uint32_t u = 0; u < 65536; u++)
        e4m3_one(bf16f((uint16_t)u), &bad);
    around_midpoints(ref_e4m3_dec, 0x7e, e4m3_one, &bad);
    /* 448..464 is above the largest code: saturates, as do Inf. */
    e4m3_one(464.0f, &bad);
    e4m3_one(nextafterf(464.0f, 0.0f), &bad);
    e4m3_one(1e6f, &bad);
    for (size_t i = 0; i < sizeof(specials) / sizeof(specials[0]); i++)
        e4m3_one(specials[i], &bad);
    random_f32("e4m3 near", 100, 140, e4m3_one, &bad);
    random_f32("e4m3 all", 0, 255, e4m3_one, &bad);
    assert_int_equal(moe_quant_f32_to_e4m3(INFINITY), 0x7e);
    assert_int_equal(moe_quant_f32_to_e4m3(-INFINITY), 0xfe);
    assert_int_equal(moe_quant_f32_to_e4m3(-NAN), 0x7f);
    assert_int_equal(moe_quant_f32_to_e4m3(0x1p-10f), 0x00);     /* tie: even */
    assert_int_equal(moe_quant_f32_to_e4m3(0x1.8p-9f), 0x02);    /* tie: even */
    assert_int_equal(bad, 0);
}

static void e2m1_all_codes(void **state)
{
    (void)state;
    int bad = 0;
    static const float want[8] = { 0, 0.5f, 1, 1.5f, 2, 3, 4, 6 };
    for (unsigned c = 0; c < 16; c++) {
        float f = moe_quant_e2m1_to_f32((uint8_t)c);
        double w = ref_e2m1_dec(c);
        if (f != w || !signbit(f) != !signbit(w) ||
            fabsf(f) != want[c & 7])
            REPORT(bad, "e2m1 0x%x decodes to %a, want %a\n", c, f, w);
        if (moe_quant_f32_to_e2m1(f) != c)
            REPORT(bad, "e2m1 0x%x re-encodes to 0x%x\n", c,
                   moe_quant_f32_to_e2m1(f));
    }
    assert_int_equal(bad, 0);
}

static void e2m1_encode(void **state)
{
    (void)state;
    int bad = 0;
    for (uint32_t u = 0; u < 65536; u++)
        e2m1_one(bf16f((uint16_t)u), &bad);
    around_midpoints(ref_e2m1_dec, 7, e2m1_one, &bad);
    for (size_t i = 0; i < sizeof(specials) / sizeof(specials[0]); i++)
        e2m1_one(specials[i], &bad);
    random_f32("e2m1 near", 120, 132, e2m1_one, &bad);
    random_f32("e2m1 all", 0, 255, e2m1_one, &bad);
    assert_int_equal(moe_quant_f32_to_e2m1(-INFINITY), 0xf);
    assert_int_equal(moe_quant_f32_to_e2m1(NAN), 0x7);
    assert_int_equal(moe_quant_f32_to_e2m1(1.25f), 0x2);   /* tie: even */
    assert_int_equal(moe_quant_f32_to_e2m1(5.0f), 0x6);    /* tie: even */
    assert_int_equal(bad, 0);
}

static void ue8m0_codes(void **state)
{
    (void)state;
    int bad = 0;
    for (unsigned c = 0; c < 256; c++) {
        float f = moe_quant_ue8m0_to_f32((uint8_t)c);
        if (!same(f, ref_ue8m0_dec(c)))
            REPORT(bad, "ue8m0 0x%02x decodes to %a\n", c, f);
        if (moe_quant_f32_to_ue8m0(f) != c)
            REPORT(bad, "ue8m0 0x%02x re-encodes to 0x%02x\n", c,
                   moe_quant_f32_to_ue8m0(f));
        /* Just above a power of two rounds up to the next one. */
        if (c < 254) {
            float up = nextafterf(f, INFINITY);
            if (moe_quant_f32_to_ue8m0(up) != c + 1)
                REPORT(bad, "ue8m0(%a) = 0x%02x, want 0x%02x\n", up,
                       moe_quant_f32_to_ue8m0(up), c + 1);
        }
    }
    for (uint32_t u = 0; u < 65536; u++)
        ue8m0_one(bf16f((uint16_t)u), &bad);
    for (size_t i = 0; i < sizeof(specials) / sizeof(specials[0]); i++)
        ue8m0_one(specials[i], &bad);
    random_f32("ue8m0", 0, 255, ue8m0_one, &bad);
    assert_int_equal(moe_quant_f32_to_ue8m0(0.0f), 0);
    assert_int_equal(moe_quant_f32_to_ue8m0(INFINITY), 254);
    assert_int_equal(moe_quant_f32_to_ue8m0(3.0f), 129);
    assert_int_equal(bad, 0);
}

/* ---- block quantizers */

static size_t minz(size_t a, size_t b) { return a < b ? a : b; }

/* fp8 e4m3: |x - q| <= 2^-4 |x| + 2^-10 s (README), with a 2^-20 relative
 * allowance for the fp32 roundings of x / s and q * s. */
static int fp8_within(double x, double deq, double s)
{
    return fabs(x - deq) <= (0x1p-4 + 0x1p-20) * fabs(x) +
                            0x1p-10 * s * (1 + 0x1p-20);
}

/* Element i of a block with scale s (exact power of two when exact_scale):
 * code, dequantized fp32 and bf16 values, bound. */
static void fp8_element(const char *what, size_t i, uint16_t xb, uint8_t c,
                        float s, int exact_scale, const float *deq,
                        const uint16_t *deqb, int *bad)
{
    double x = bf16f(xb);
    unsigned want = exact_scale ? ref_e4m3_enc(x / s)
                                : ref_e4m3_enc(bf16f(xb) / s);
    if (c != want)
        REPORT(*bad, "%s[%zu] x=%a s=%a: code 0x%02x, want 0x%02x\n", what, i,
               x, s, c, want);
    double rd = ref_e4m3_dec(c) * s;  /* exact in double */
    if (!same(deq[i], (float)rd))
        REPORT(*bad, "%s[%zu]: dequantized %a, want %a\n", what, i, deq[i],
               (float)rd);
    if (deqb[i] != epx__f32_to_bf16(deq[i]))
        REPORT(*bad, "%s[%zu]: bf16 dequantized 0x%04x, fp32 %a\n", what, i,
               deqb[i], deq[i]);
    if (isnan(x) ? !isnan(rd) : isinf(x) ? rd != copysign(448.0 * s, x)
                                         : !fp8_within(x, rd, s))
        REPORT(*bad, "%s[%zu] x=%a: dequantized %a, error %a > bound (s=%a)\n",
               what, i, x, rd, fabs(x - rd), s);
}

static void check_fp8(const char *what, const uint16_t *x, size_t h, int *bad)
{
    size_t nb = moe_quant_nblocks(h, MOE_QUANT_FP8_BLOCK);
    uint8_t *q = malloc(h);
    float *s = malloc(nb * sizeof(float)), *deq = malloc(h * sizeof(float));
    uint16_t *deqb = malloc(h * 2);
    moe_quant_fp8(x, h, q, s);
    moe_dequant_fp8(q, s, h, deq, EPX_DTYPE_FP32);
    moe_dequant_fp8(q, s, h, deqb, EPX_DTYPE_BF16);
    for (size_t k = 0; k < nb; k++) {
        size_t b0 = k * MOE_QUANT_FP8_BLOCK;
        size_t n = minz(MOE_QUANT_FP8_BLOCK, h - b0);
        int nan;
        float amax = ref_amax(x + b0, n, &nan);
        float want = amax > 0 ? fmaxf(amax / 448.0f, FLT_MIN) : 1.0f;
        if (s[k] != want)
            REPORT(*bad, "%s: h=%zu block %zu scale %a, want %a\n", what, h, k,
                   s[k], want);
        for (size_t i = b0; i < b0 + n; i++)
            fp8_element(what, i, x[i], q[i], s[k], 0, deq, deqb, bad);
    }
    free(q);
    free(s);
    free(deq);
    free(deqb);
}

static void check_fp8_ue8m0(const char *what, const uint16_t *x, size_t h,
                            size_t block, int *bad)
{
    size_t nb = moe_quant_nblocks(h, block);
    uint8_t *q = malloc(h), *s = malloc(nb);
    float *deq = malloc(h * sizeof(float));
    uint16_t *deqb = malloc(h * 2);
    moe_quant_fp8_ue8m0(x, h, block, q, s);
    moe_dequant_fp8_ue8m0(q, s, h, block, deq, EPX_DTYPE_FP32);
    moe_dequant_fp8_ue8m0(q, s, h, block, deqb, EPX_DTYPE_BF16);
    for (size_t k = 0; k < nb; k++) {
        size_t b0 = k * block, n = minz(block, h - b0);
        int nan;
        double amax = ref_amax(x + b0, n, &nan);
        double sc = ref_ue8m0_dec(s[k]);
        /* The smallest power of two that keeps amax / s within 448. */
        int ok = amax == 0 ? s[k] == 127
                           : s[k] != 0xff && amax / sc <= 448.0 &&
                                 (s[k] == 0 || amax / (sc / 2) > 448.0);
        if (!ok)
            REPORT(*bad, "%s: h=%zu block %zu (%zu) amax %a: scale 0x%02x\n",
                   what, h, k, block, amax, s[k]);
        for (size_t i = b0; i < b0 + n; i++)
            fp8_element(what, i, x[i], q[i], (float)sc, 1, deq, deqb, bad);
    }
    free(q);
    free(s);
    free(deq);
    free(deqb);
}

/* NVFP4 with tensor scale g: for the effective block scale S = sb * g,
 * |x - q| <= max(S / 4, |x| / 4) + 6 g 2^-10 (README), with a 2^-20
 * relative allowance for the fp32 roundings. */
static int fp4_within(double x, double deq, double S, double g)
{
    double b = fmax(S / 4, fabs(x) / 4) + 6 * g * 0x1p-10;
    return fabs(x - deq) <= b * (1 + 0x1p-20);
}

static void check_nvfp4(const char *what, const uint16_t *x, size_t h,
                        float g, int *bad)
{
    size_t nb = moe_quant_nblocks(h, MOE_QUANT_FP4_BLOCK);
    uint8_t *q = malloc((h + 1) / 2), *s = malloc(nb);
    float *deq = malloc(h * sizeof(float));
    uint16_t *deqb = malloc(h * 2);
    moe_quant_nvfp4(x, h, g, q, s);
    moe_dequant_nvfp4(q, s, g, h, deq, EPX_DTYPE_FP32);
    moe_dequant_nvfp4(q, s, g, h, deqb, EPX_DTYPE_BF16);
    if ((h & 1) && (q[h / 2] >> 4) != 0)
        REPORT(*bad, "%s: h=%zu last high nibble 0x%x, want 0\n", what, h,
               q[h / 2] >> 4);
    for (size_t k = 0; k < nb; k++) {
        size_t b0 = k * MOE_QUANT_FP4_BLOCK;
        size_t n = minz(MOE_QUANT_FP4_BLOCK, h - b0);
        int nan;
        float amax = ref_amax(x + b0, n, &nan);
        unsigned want = nan ? 0x7f : ref_e4m3_enc(amax / (6.0f * g));
        if (s[k] != want)
            REPORT(*bad, "%s: h=%zu block %zu amax %a g %a: scale 0x%02x, "
                   "want 0x%02x\n", what, h, k, amax, g, s[k], want);
        double sb = ref_e4m3_dec(s[k]);
        float S = (float)sb * g;
        for (size_t i = b0; i < b0 + n; i++) {
            double xv = bf16f(x[i]);
            unsigned c = (q[i / 2] >> (4 * (i & 1))) & 15;  /* low first */
            unsigned wc = nan || S == 0 ? 0 : ref_e2m1_enc(bf16f(x[i]) / S);
            if (c != wc)
                REPORT(*bad, "%s[%zu] x=%a S=%a: code 0x%x, want 0x%x\n", what,
                       i, xv, S, c, wc);
            double rd = ref_e2m1_dec(c) * sb * g;  /* exact in double */
            if (!same(deq[i], (float)rd))
                REPORT(*bad, "%s[%zu]: dequantized %a, want %a\n", what, i,
                       deq[i], (float)rd);
            if (deqb[i] != epx__f32_to_bf16(deq[i]))
                REPORT(*bad, "%s[%zu]: bf16 dequantized 0x%04x, fp32 %a\n",
                       what, i, deqb[i], deq[i]);
            int ok = nan ? isnan(rd)
                   : isinf(xv) ? rd == copysign(6.0 * sb * g, xv)
                               : fp4_within(xv, rd, S, g);
            if (!ok)
                REPORT(*bad, "%s[%zu] x=%a: dequantized %a, error %a > bound "
                       "(S=%a g=%a)\n", what, i, xv, rd, fabs(xv - rd), S, g);
        }
    }
    free(q);
    free(s);
    free(deq);
    free(deqb);
}

static void check_all(const char *what, const uint16_t *x, size_t h, int *bad)
{
    int nan;
    check_fp8(what, x, h, bad);
    check_fp8_ue8m0(what, x, h, MOE_QUANT_FP8_BLOCK, bad);
    check_fp8_ue8m0(what, x, h, MOE_QUANT_MX_BLOCK, bad);
    float amax = ref_amax(x, h, &nan);
    float g = moe_quant_nvfp4_global(x, h);
    float wg = amax > 0 ? fmaxf(amax / 2688.0f, FLT_MIN) : 1.0f;
    if (g != wg)
        REPORT(*bad, "%s: h=%zu nvfp4 global %a, want %a\n", what, h, g, wg);
    check_nvfp4(what, x, h, g, bad);
}

/* A random bf16 row: per 16 elements a random magnitude (exponent field
 * `base` +- spread), values spread up to 2^12 below it, random signs;
 * sometimes whole blocks of bf16 subnormals. */
static void random_row(epxt_rng_t *r, uint16_t *x, size_t h, int base,
                       int spread)
{
    for (size_t b0 = 0; b0 < h; b0 += 16) {
        int top = base - spread + (int)epxt_below(r, 2 * spread + 1);
        int tiny = epxt_below(r, 32) == 0;
        for (size_t i = b0; i < minz(b0 + 16, h); i++) {
            uint64_t v = epxt_next(r);
            int e = top - (int)(v % 13);
            e = e < 1 ? 1 : e > 254 ? 254 : e;
            uint16_t m = (uint16_t)((v >> 8) & 0x7f);
            x[i] = (uint16_t)(((v >> 16) & 1) << 15 | (tiny ? 0 : e << 7) | m);
        }
    }
}

static const size_t hs[] = { 1, 7, 15, 16, 17, 31, 32, 33, 127, 128, 129,
                             255, 1000, 7168, 7169 };

static void blocks_random(void **state)
{
    (void)state;
    epxt_rng_t r = { epxt_hash_str(epxt_seed(), "blocks") };
    int bad = 0;
    uint16_t *x = malloc(7169 * 2);
    for (size_t t = 0; t < sizeof(hs) / sizeof(hs[0]); t++) {
        for (int rep = 0; rep < 8; rep++) {
            /* Activations (around 1), wide rows (2^+-20 between blocks),
             * tiny and huge magnitudes. */
            static const int base[4] = { 127, 127, 127 - 110, 127 + 100 };
            static const int spread[4] = { 4, 20, 8, 8 };
            random_row(&r, x, hs[t], base[rep % 4], spread[rep % 4]);
            char what[64];
            snprintf(what, sizeof(what), "random h=%zu rep %d", hs[t], rep);
            check_all(what, x, hs[t], &bad);
        }
    }
    free(x);
    assert_int_equal(bad, 0);
}

static void blocks_edges(void **state)
{
    (void)state;
    epxt_rng_t r = { epxt_hash_str(epxt_seed(), "edges") };
    int bad = 0;
    uint16_t *x = malloc(7169 * 2);
    for (size_t t = 0; t < sizeof(hs) / sizeof(hs[0]); t++) {
        size_t h = hs[t];
        char what[64];
        memset(x, 0, h * 2);
        snprintf(what, sizeof(what), "zero h=%zu", h);
        check_all(what, x, h, &bad);
        for (size_t i = 0; i < h; i++)
            x[i] = 0x8000;  /* -0 */
        snprintf(what, sizeof(what), "-0 h=%zu", h);
        check_all(what, x, h, &bad);
        /* One huge value (bf16's largest) among ordinary ones. */
        random_row(&r, x, h, 127, 2);
        x[h / 2] = 0x7f7f;
        snprintf(what, sizeof(what), "huge h=%zu", h);
        check_all(what, x, h, &bad);
        /* NaN and Inf inside blocks, bf16 subnormals. */
        random_row(&r, x, h, 127, 2);
        x[h - 1] = 0x7fc1;
        x[h / 3] = 0xff80;
        x[(2 * h) / 3] = 0x0001;
        snprintf(what, sizeof(what), "nan/inf h=%zu", h);
        check_all(what, x, h, &bad);
        /* Only bf16 subnormals: the smallest scales. */
        for (size_t i = 0; i < h; i++)
            x[i] = (uint16_t)(epxt_next(&r) & 0x807f);
        snprintf(what, sizeof(what), "subnormal h=%zu", h);
        check_all(what, x, h, &bad);
    }
    free(x);
    assert_int_equal(bad, 0);
}

/* Every bf16 bit pattern as a row of one and as the amax of a row of 16
 * (the scale recipes at every possible amax, NaN and Inf included). */
static void blocks_every_bf16(void **state)
{
    (void)state;
    int bad = 0;
    uint16_t x[16];
    for (uint32_t u = 0; u < 65536; u++) {
        char what[32];
        snprintf(what, sizeof(what), "bf16 0x%04x", u);
        x[0] = (uint16_t)u;
        check_all(what, x, 1, &bad);
        for (int i = 0; i < 16; i++)
            x[i] = (uint16_t)(i == 5 ? u : (u & 0x8000) | ((u & 0x7fff) >> (i % 4)));
        check_all(what, x, 16, &bad);
    }
    assert_int_equal(bad, 0);
}

/* NVFP4 over several rows with one tensor scale: rows far below the
 * tensor's amax get small (e4m3 subnormal) or zero block scales. */
static void nvfp4_tensor(void **state)
{
    (void)state;
    epxt_rng_t r = { epxt_hash_str(epxt_seed(), "nvfp4 tensor") };
    enum { T = 6, H = 7168 };
    int bad = 0;
    uint16_t *x = malloc((size_t)T * H * 2);
    for (int t = 0; t < T; t++)
        random_row(&r, x + (size_t)t * H, H, 127 - 4 * t, 3);
    float g = moe_quant_nvfp4_global(x, (size_t)T * H);
    for (int t = 0; t < T; t++) {
        char what[64];
        snprintf(what, sizeof(what), "tensor row %d", t);
        check_nvfp4(what, x + (size_t)t * H, H, g, &bad);
    }
    free(x);
    assert_int_equal(bad, 0);
}

int main(void)
{
    epxt_init("test_quant");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(e4m3_all_codes),
        cmocka_unit_test(e4m3_encode),
        cmocka_unit_test(e2m1_all_codes),
        cmocka_unit_test(e2m1_encode),
        cmocka_unit_test(ue8m0_codes),
        cmocka_unit_test(blocks_random),
        cmocka_unit_test(blocks_edges),
        cmocka_unit_test(blocks_every_bf16),
        cmocka_unit_test(nvfp4_tensor),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
