/*
 * Block quantizers from bf16 rows and their dequantizers (see quant.h and
 * README.md, "Quantized formats").  Plain loops over one block at a time so
 * the compiler can vectorise the amax and the element conversions.
 */
#include <string.h>
#include "moe/quant.h"
#include "util/util.h"

/* Largest finite magnitude of n bf16 values, as its bit pattern (the order
 * of non-negative floats is that of their bits); NaN and Inf are skipped.
 * *nan is set when a NaN was seen.  Signed 16-bit maxima: one SIMD
 * instruction even on baseline x86-64. */
static inline __attribute__((always_inline)) uint16_t amax_bits(const uint16_t *x, size_t n, int *nan)
{
    int16_t m = 0, all = 0;
    for (size_t i = 0; i < n; i++) {
        int16_t a = (int16_t)(x[i] & 0x7fffu);
        all = a > all ? a : all;
        a = a < 0x7f80 ? a : 0;
        m = a > m ? a : m;
    }
    *nan = all > 0x7f80;
    return (uint16_t)m;
}

/* Dequantized fp32 values of one block to out[0..n) in out_dtype. */
static inline void store_block(void *out, epx_dtype_t dt, size_t b0,
                               const float *v, size_t n)
{
    if (dt == EPX_DTYPE_BF16) {
        uint16_t *o = (uint16_t *)out + b0;
        for (size_t i = 0; i < n; i++)
            o[i] = epx__f32_to_bf16(v[i]);
    } else {
        memcpy((float *)out + b0, v, n * sizeof(float));
    }
}

static inline size_t min_sz(size_t a, size_t b)
{
    return a < b ? a : b;
}

/* ---- e4m3 codes of a block with AVX2 intrinsics: moe_quant_f32_to_e4m3's
 * integer recipe, step for step (same comparisons, the subnormal path's
 * multiply and add unfused), so the codes are the same bits; 32 elements
 * a step, packed to bytes in registers.  GCC's own vectorisation of the
 * scalar loops spills and blends through the stack (about 3x slower).
 * Only for blocks of whole 32-element groups; others take the scalar
 * loops. */
#if defined(__x86_64__) && defined(__GNUC__) && defined(EPX_CLONES_X86)
#define QUANT_AVX2 1
#include <immintrin.h>

__attribute__((target("avx2"))) static inline __m256i
e4m3_8(__m256 v)
{
    const __m256i u = _mm256_castps_si256(v);
    const __m256i a = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
    const __m256i sign = _mm256_and_si256(_mm256_srli_epi32(u, 24),
                                          _mm256_set1_epi32(0x80));
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(a, 20),
                                   _mm256_set1_epi32(1));
    __m256i nrm = _mm256_add_epi32(a, _mm256_set1_epi32(0x7ffff));
    nrm = _mm256_srai_epi32(_mm256_add_epi32(nrm, odd), 20);
    nrm = _mm256_sub_epi32(nrm, _mm256_set1_epi32(120 << 3));
    __m256 f = _mm256_mul_ps(_mm256_castsi256_ps(a), _mm256_set1_ps(512.0f));
    f = _mm256_add_ps(f, _mm256_set1_ps(0x1p23f));
    __m256i sub = _mm256_sub_epi32(_mm256_castps_si256(f),
                                   _mm256_set1_epi32(0x4b000000));
    __m256i code = _mm256_blendv_epi8(
        sub, nrm, _mm256_cmpgt_epi32(a, _mm256_set1_epi32(0x3c7fffff)));
    code = _mm256_blendv_epi8(
        code, _mm256_set1_epi32(0x7e),
        _mm256_cmpgt_epi32(a, _mm256_set1_epi32(0x43dfffff)));
    code = _mm256_or_si256(code, sign);
    return _mm256_blendv_epi8(
        code, _mm256_set1_epi32(MOE_QUANT_E4M3_NAN),
        _mm256_cmpgt_epi32(a, _mm256_set1_epi32(0x7f800000)));
}

/* 8 bf16 to fp32, then x / s (div) or x * s (the exact power-of-two
 * inverse): the scalar loops' operation. */
__attribute__((target("avx2"))) static inline __m256
load8(const uint16_t *x, __m256 s, int div)
{
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)x));
    __m256 f = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
    return div ? _mm256_div_ps(f, s) : _mm256_mul_ps(f, s);
}

/* n a multiple of 32. */
__attribute__((target("avx2"))) static void
e4m3_block_avx2(const uint16_t *x, size_t n, float s, int div, uint8_t *q)
{
    const __m256 sv = _mm256_set1_ps(s);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (size_t i = 0; i < n; i += 32) {
        __m256i c0 = e4m3_8(load8(x + i, sv, div));
        __m256i c1 = e4m3_8(load8(x + i + 8, sv, div));
        __m256i c2 = e4m3_8(load8(x + i + 16, sv, div));
        __m256i c3 = e4m3_8(load8(x + i + 24, sv, div));
        /* codes are 0..255: the saturating packs keep them; the packs work
         * per 128-bit lane, the permutation restores element order */
        __m256i b = _mm256_packus_epi16(_mm256_packus_epi32(c0, c1),
                                        _mm256_packus_epi32(c2, c3));
        b = _mm256_permutevar8x32_epi32(b, order);
        _mm256_storeu_si256((__m256i *)(q + i), b);
    }
}

static int have_avx2(void)
{
    static int v = -1;
    if (v < 0)
        v = __builtin_cpu_supports("avx2") ? 1 : 0;
    return v;
}
#endif

/* ---- fp8, fp32 scales */

/* One block's values v = x / s and codes, in two plain loops over a
 * scratch array: each vectorises on its own (the fused loop does not), and
 * with n a constant (full blocks) without a remainder loop. */
static inline __attribute__((always_inline)) void fp8_block(const uint16_t *restrict x, size_t n, float s,
                             uint8_t *restrict q)
{
    float v[MOE_QUANT_FP8_BLOCK];
    for (size_t i = 0; i < n; i++)
        v[i] = epx__bf16_to_f32(x[i]) / s;
    for (size_t i = 0; i < n; i++)
        q[i] = moe_quant_f32_to_e4m3(v[i]);
}

EPX_CLONES
void moe_quant_fp8(const uint16_t *x, size_t h, uint8_t *q, float *scale)
{
    for (size_t b0 = 0, k = 0; b0 < h; b0 += MOE_QUANT_FP8_BLOCK, k++) {
        size_t n = min_sz(MOE_QUANT_FP8_BLOCK, h - b0);
        int nan;
        float amax = epx__bf16_to_f32(amax_bits(x + b0, n, &nan));
        float s = moe_quant_fp8_scale(amax);
        scale[k] = s;
#ifdef QUANT_AVX2
        if (n % 32 == 0 && have_avx2())
            e4m3_block_avx2(x + b0, n, s, 1, q + b0);
        else
#endif
        if (n == MOE_QUANT_FP8_BLOCK)
            fp8_block(x + b0, MOE_QUANT_FP8_BLOCK, s, q + b0);
        else
            fp8_block(x + b0, n, s, q + b0);
    }
}

void moe_dequant_fp8(const uint8_t *q, const float *scale, size_t h,
                     void *out, epx_dtype_t out_dtype)
{
    for (size_t b0 = 0, k = 0; b0 < h; b0 += MOE_QUANT_FP8_BLOCK, k++) {
        size_t n = min_sz(MOE_QUANT_FP8_BLOCK, h - b0);
        float s = scale[k], v[MOE_QUANT_FP8_BLOCK];
        for (size_t i = 0; i < n; i++)
            v[i] = moe_quant_e4m3_to_f32(q[b0 + i]) * s;
        store_block(out, out_dtype, b0, v, n);
    }
}

/* ---- fp8, UE8M0 scales (128: DeepSeek-style; 32: MXFP8) */

/* v = x * inv (a power of two), then the codes: as fp8_block. */
static inline __attribute__((always_inline)) void ue8m0_block(const uint16_t *restrict x, size_t n,
                               float inv, uint8_t *restrict q)
{
    float v[MOE_QUANT_FP8_BLOCK];
    for (size_t i = 0; i < n; i++)
        v[i] = epx__bf16_to_f32(x[i]) * inv;
    for (size_t i = 0; i < n; i++)
        q[i] = moe_quant_f32_to_e4m3(v[i]);
}

EPX_CLONES
void moe_quant_fp8_ue8m0(const uint16_t *x, size_t h, size_t block,
                         uint8_t *q, uint8_t *scale)
{
    for (size_t b0 = 0, k = 0; b0 < h; b0 += block, k++) {
        size_t n = min_sz(block, h - b0);
        int nan;
        float amax = epx__bf16_to_f32(amax_bits(x + b0, n, &nan));
        uint8_t c = moe_quant_ue8m0_scale(amax);
        scale[k] = c;
        float inv = moe_quant_ue8m0_inv(c);   /* a power of two */
#ifdef QUANT_AVX2
        if (n % 32 == 0 && have_avx2()) {
            e4m3_block_avx2(x + b0, n, inv, 0, q + b0);
            continue;
        }
#endif
        /* Pieces of at most 128 (any block size); the usual sizes with a
         * constant trip count. */
        for (size_t p = 0; p < n; p += MOE_QUANT_FP8_BLOCK) {
            size_t m = min_sz(MOE_QUANT_FP8_BLOCK, n - p);
            if (m == MOE_QUANT_FP8_BLOCK)
                ue8m0_block(x + b0 + p, MOE_QUANT_FP8_BLOCK, inv, q + b0 + p);
            else if (m == MOE_QUANT_MX_BLOCK)
                ue8m0_block(x + b0 + p, MOE_QUANT_MX_BLOCK, inv, q + b0 + p);
            else
                ue8m0_block(x + b0 + p, m, inv, q + b0 + p);
        }
    }
}

void moe_dequant_fp8_ue8m0(const uint8_t *q, const uint8_t *scale, size_t h,
                           size_t block, void *out, epx_dtype_t out_dtype)
{
    for (size_t b0 = 0, k = 0; b0 < h; b0 += block, k++) {
        size_t n = min_sz(block, h - b0);
        float s = moe_quant_ue8m0_to_f32(scale[k]), v[256];
        for (size_t b1 = 0; b1 < n; b1 += 256) {  /* any block size */
            size_t m = min_sz(256, n - b1);
            for (size_t i = 0; i < m; i++)
                v[i] = moe_quant_e4m3_to_f32(q[b0 + b1 + i]) * s;
            store_block(out, out_dtype, b0 + b1, v, m);
        }
    }
}

/* ---- NVFP4 */

EPX_CLONES
float moe_quant_nvfp4_global(const uint16_t *x, size_t n)
{
    int nan;
    float amax = epx__bf16_to_f32(amax_bits(x, n, &nan));
    return moe_quant_nvfp4_gscale(amax);
}

/* One block, any length (the row's short last block, and the reference
 * for the grouped path below). */
static inline __attribute__((always_inline)) void
nvfp4_block(const uint16_t *xb, size_t n, float global, uint8_t *qb,
            uint8_t *scale)
{
    int nan;
    float amax = epx__bf16_to_f32(amax_bits(xb, n, &nan));
    uint8_t sb = moe_quant_nvfp4_bscale(amax, global);
    float s = moe_quant_nvfp4_div(sb, global);
    *scale = nan ? MOE_QUANT_E4M3_NAN : sb;
    /* A zero scale (a block far below the tensor's amax) or a NaN block
     * encodes zeros; the NaN travels in the scale. */
    if (nan || !(s > 0.0f)) {
        memset(qb, 0, (n + 1) / 2);
        return;
    }
    for (size_t i = 0; i < n / 2; i++) {
        uint32_t lo = moe_quant_f32_to_e2m1(epx__bf16_to_f32(xb[2 * i]) / s);
        uint32_t hi = moe_quant_f32_to_e2m1(epx__bf16_to_f32(xb[2 * i + 1]) / s);
        qb[i] = (uint8_t)(lo | (hi << 4));
    }
    if (n & 1)
        qb[n / 2] = moe_quant_f32_to_e2m1(epx__bf16_to_f32(xb[n - 1]) / s);
}

/* NVFP4_GROUP full blocks at once, the same arithmetic as nvfp4_block in
 * passes that each vectorise: block maxima, block scales, values, codes
 * (zeroed where the block is NaN or its scale 0), nibble packing. */
enum { NVFP4_GROUP = 16, NVFP4_GN = NVFP4_GROUP * MOE_QUANT_FP4_BLOCK };

static inline __attribute__((always_inline)) void
nvfp4_group(const uint16_t *restrict x, float global, uint8_t *restrict q,
            uint8_t *restrict scale)
{
    enum { B = MOE_QUANT_FP4_BLOCK };
    int16_t mx[NVFP4_GROUP], all[NVFP4_GROUP];
    float s[NVFP4_GROUP], v[NVFP4_GN];
    uint8_t keep[NVFP4_GROUP], c[NVFP4_GN];
    for (int k = 0; k < NVFP4_GROUP; k++) {
        int16_t m = 0, al = 0;
        for (int i = 0; i < B; i++) {
            int16_t a = (int16_t)(x[k * B + i] & 0x7fffu);
            al = a > al ? a : al;
            a = a < 0x7f80 ? a : 0;
            m = a > m ? a : m;
        }
        mx[k] = m;
        all[k] = al;
    }
    for (int k = 0; k < NVFP4_GROUP; k++) {
        uint8_t sb = moe_quant_nvfp4_bscale(epx__bf16_to_f32((uint16_t)mx[k]),
                                            global);
        s[k] = moe_quant_nvfp4_div(sb, global);
        int nan = all[k] > 0x7f80;
        keep[k] = nan || !(s[k] > 0.0f) ? 0 : 0xff;
        scale[k] = nan ? MOE_QUANT_E4M3_NAN : sb;
    }
    for (int k = 0; k < NVFP4_GROUP; k++)
        for (int i = 0; i < B; i++)
            v[k * B + i] = epx__bf16_to_f32(x[k * B + i]) / s[k];
    for (int i = 0; i < NVFP4_GN; i++)
        c[i] = moe_quant_f32_to_e2m1(v[i]);
    for (int k = 0; k < NVFP4_GROUP; k++)
        for (int i = 0; i < B; i++)
            c[k * B + i] &= keep[k];
    for (int i = 0; i < NVFP4_GN / 2; i++)
        q[i] = (uint8_t)(c[2 * i] | (c[2 * i + 1] << 4));
}

EPX_CLONES
void moe_quant_nvfp4(const uint16_t *x, size_t h, float global, uint8_t *q,
                     uint8_t *scale)
{
    size_t b0 = 0, k = 0;
    for (; b0 + NVFP4_GN <= h; b0 += NVFP4_GN, k += NVFP4_GROUP)
        nvfp4_group(x + b0, global, q + b0 / 2, scale + k);
    for (; b0 < h; b0 += MOE_QUANT_FP4_BLOCK, k++)
        nvfp4_block(x + b0, min_sz(MOE_QUANT_FP4_BLOCK, h - b0), global,
                    q + b0 / 2, scale + k);
}

void moe_dequant_nvfp4(const uint8_t *q, const uint8_t *scale, float global,
                       size_t h, void *out, epx_dtype_t out_dtype)
{
    for (size_t b0 = 0, k = 0; b0 < h; b0 += MOE_QUANT_FP4_BLOCK, k++) {
        size_t n = min_sz(MOE_QUANT_FP4_BLOCK, h - b0);
        float sb = moe_quant_e4m3_to_f32(scale[k]), v[MOE_QUANT_FP4_BLOCK];
        const uint8_t *qb = q + b0 / 2;
        for (size_t i = 0; i < n; i++) {
            uint8_t c = (uint8_t)(qb[i / 2] >> (4 * (i & 1)));
            v[i] = (moe_quant_e2m1_to_f32(c) * sb) * global;
        }
        store_block(out, out_dtype, b0, v, n);
    }
}
