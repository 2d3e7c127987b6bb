/*
 * Quantized wire formats: scalar codecs (fp8 e4m3, fp4 e2m1, UE8M0) and
 * per-row block quantizers from bf16 with their dequantizers (host
 * executor).  Formats, rounding, saturation, NaN handling and error bounds
 * are described in README.md ("Quantized formats").
 *
 * Rows hold H elements; H need not be a multiple of the block: the last
 * block of a row is short (its scale covers only its own elements) and
 * nothing is padded.  Scales are one per block, ceil(H / block) of them.
 */
#ifndef EPX_MOE_QUANT_H
#define EPX_MOE_QUANT_H

#include <stddef.h>
#include <stdint.h>
#include "epx.h"

enum {
    MOE_QUANT_FP8_BLOCK = 128,  /* fp8 with fp32 or UE8M0 scales */
    MOE_QUANT_MX_BLOCK = 32,    /* MXFP8: fp8 with UE8M0 scales */
    MOE_QUANT_FP4_BLOCK = 16    /* NVFP4: e2m1 with e4m3 scales */
};

#define MOE_QUANT_E4M3_MAX 448.0f
#define MOE_QUANT_E2M1_MAX 6.0f
#define MOE_QUANT_E4M3_NAN 0x7f  /* canonical NaN the encoder produces */
#define MOE_QUANT_UE8M0_NAN 0xff

static inline uint32_t moe_quant_bits(float f)
{
    union { float f; uint32_t u; } v = { .f = f };
    return v.u;
}
static inline float moe_quant_float(uint32_t u)
{
    union { uint32_t u; float f; } v = { .u = u };
    return v.f;
}

/* ---- fp8 E4M3 (OCP E4M3FN): S.EEEE.MMM, bias 7, no infinities, NaN is
 * S.1111.111, largest finite 448, subnormals m * 2^-9. */

/* Round to nearest even; finite values beyond 448 and +-Inf saturate to
 * +-448; NaN gives 0x7f (sign dropped).  Branch-free, on signed 32-bit
 * lanes (|f|'s bits never reach the sign), so loops of it vectorise with
 * the instructions every x86-64 SIMD level has. */
static inline uint8_t moe_quant_f32_to_e4m3(float f)
{
    uint32_t u = moe_quant_bits(f);
    int32_t a = (int32_t)(u & 0x7fffffffu);
    int32_t sign = (int32_t)((u >> 24) & 0x80u);
    /* Normal (|f| >= 2^-6): drop 20 mantissa bits with RNE; a carry rolls
     * into the exponent, then rebias 127 -> 7. */
    int32_t nrm = ((a + 0x7ffff + ((a >> 20) & 1)) >> 20) - (120 << 3);
    /* Subnormal (|f| < 2^-6): m = RNE(|f| * 2^9), the code itself (m = 8
     * is the code of 2^-6).  |f| * 2^9 < 8 is exact, and adding 2^23 leaves
     * no fraction bits: the fp32 adder rounds it to the nearest integer,
     * ties to even (the default rounding mode), into the low mantissa
     * bits.  Outside that range the value is garbage and not selected. */
    int32_t sub = (int32_t)moe_quant_bits(moe_quant_float((uint32_t)a) * 512.0f +
                                          0x1p23f) - 0x4b000000;
    int32_t code = a >= 0x3c800000 ? nrm : sub;
    code = a >= 0x43e00000 ? 0x7e : code;     /* >= 448 and Inf */
    code |= sign;
    return (uint8_t)(a > 0x7f800000 ? MOE_QUANT_E4M3_NAN : code);
}

/* Exact.  Integer operations only (subnormals m 2^-9 built from m's
 * leading bit), so that loops of it vectorise. */
static inline float moe_quant_e4m3_to_f32(uint8_t c)
{
    uint32_t e = (c >> 3) & 15u, m = c & 7u;
    uint32_t sub = m >= 4u ? (120u << 23) | ((m & 3u) << 21)
                 : m >= 2u ? (119u << 23) | ((m & 1u) << 22)
                 : m ? 118u << 23 : 0u;
    uint32_t u = e ? ((e + 120u) << 23) | (m << 20) : sub;
    u = (c & 0x7f) == 0x7f ? 0x7fc00000u : u;
    return moe_quant_float(u | ((uint32_t)(c & 0x80) << 24));
}

/* ---- fp4 E2M1: S.EE.M, bias 1, magnitudes 0 0.5 1 1.5 2 3 4 6; no
 * infinity or NaN. */

/* Round to nearest even: each comparison is one midpoint, >= where the tie
 * goes up to the even code, > where it stays on the even code below;
 * compared as bit patterns (ordered like the non-negative floats they
 * are), so that NaN, above every midpoint, lands on 7.  Beyond 6 and +-Inf
 * saturate to +-6; NaN gives +6 (0x7): e2m1 has no NaN, the NVFP4
 * quantizer marks a NaN through its block scale instead. */
static inline uint8_t moe_quant_f32_to_e2m1(float f)
{
    uint32_t u = moe_quant_bits(f);
    uint32_t a = u & 0x7fffffffu;
    uint32_t code = (a > 0x3e800000u) + (a >= 0x3f400000u) +  /* 0.25 0.75 */
                    (a > 0x3fa00000u) + (a >= 0x3fe00000u) +  /* 1.25 1.75 */
                    (a > 0x40200000u) + (a >= 0x40600000u) +  /* 2.5 3.5 */
                    (a > 0x40a00000u);                        /* 5 */
    uint32_t sign = a > 0x7f800000u ? 0u : (u >> 28) & 0x8u;
    return (uint8_t)(code | sign);
}

/* Exact (the low 4 bits of c). */
static inline float moe_quant_e2m1_to_f32(uint8_t c)
{
    uint32_t e = (c >> 1) & 3u, m = c & 1u;
    float v = e ? moe_quant_float(((e + 126u) << 23) | (m << 22))
                : (float)m * 0.5f;
    return c & 8u ? -v : v;
}

/* ---- UE8M0: an unsigned power of two 2^(c - 127), c = 0..254; 0xff is
 * NaN; there is no zero. */

/* The smallest power of two >= |s| (rounding up, so that x / scale never
 * exceeds the range the scale was chosen for).  The sign is ignored
 * (scales are magnitudes); 0 and anything <= 2^-127 give 0 (2^-127);
 * above 2^127 and Inf saturate to 254 (2^127); NaN gives 0xff. */
static inline uint8_t moe_quant_f32_to_ue8m0(float s)
{
    uint32_t a = moe_quant_bits(s) & 0x7fffffffu;
    uint32_t e = a >> 23, m = a & 0x7fffffu;
    uint32_t code = e ? e + (m != 0) : (m > 0x400000u);
    code = a > 0x7f000000u ? 254u : code;
    return (uint8_t)(a > 0x7f800000u ? MOE_QUANT_UE8M0_NAN : code);
}

/* Exact (2^-127 is an fp32 subnormal). */
static inline float moe_quant_ue8m0_to_f32(uint8_t c)
{
    uint32_t u = c ? (uint32_t)c << 23 : 0x00400000u;
    return moe_quant_float(c == 0xff ? 0x7fc00000u : u);
}

/* ---- block quantizers from bf16 rows and their dequantizers.  Dequantizers
 * write fp32 or bf16 (out_dtype EPX_DTYPE_FP32 or EPX_DTYPE_BF16). */

static inline size_t moe_quant_nblocks(size_t h, size_t block)
{
    return (h + block - 1) / block;
}

/* fp8 e4m3, one fp32 scale per 128: scale = max(amax / 448, 2^-126), 1 for a
 * block without finite non-zero values; q = e4m3(x / scale).
 * q: h bytes; scale: nblocks(h, 128) floats. */
void moe_quant_fp8(const uint16_t *x, size_t h, uint8_t *q, float *scale);
void moe_dequant_fp8(const uint8_t *q, const float *scale, size_t h,
                     void *out, epx_dtype_t out_dtype);

/* fp8 e4m3, one UE8M0 scale per `block` elements (128, or 32 for MXFP8):
 * the smallest power of two with amax / scale <= 448 (1 for a block without
 * finite non-zero values); q = e4m3(x / scale), the scaling exact.
 * q: h bytes; scale: nblocks(h, block) bytes. */
void moe_quant_fp8_ue8m0(const uint16_t *x, size_t h, size_t block,
                         uint8_t *q, uint8_t *scale);
void moe_dequant_fp8_ue8m0(const uint8_t *q, const uint8_t *scale, size_t h,
                           size_t block, void *out, epx_dtype_t out_dtype);

/* NVFP4 tensor scale over n bf16 values (all rows quantized together):
 * max(amax / (448 * 6), 2^-126), 1 without finite non-zero values. */
float moe_quant_nvfp4_global(const uint16_t *x, size_t n);
/* NVFP4 row: per 16 elements an e4m3 scale sb = e4m3(amax_block / (6 g));
 * values e2m1(x / (sb * g)), two per byte, element 2i in the low nibble of
 * byte i (an odd h leaves the last high nibble 0).  A block holding a NaN
 * gets the NaN scale (0x7f) and zero codes.
 * q: (h + 1) / 2 bytes; scale: nblocks(h, 16) bytes. */
void moe_quant_nvfp4(const uint16_t *x, size_t h, float global, uint8_t *q,
                     uint8_t *scale);
/* out[i] = (e2m1(q_i) * e4m3(sb)) * g: the first product is exact. */
void moe_dequant_nvfp4(const uint8_t *q, const uint8_t *scale, float global,
                       size_t h, void *out, epx_dtype_t out_dtype);

#endif /* EPX_MOE_QUANT_H */
