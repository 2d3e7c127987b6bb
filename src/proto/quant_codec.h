/*
 * The scalar codecs of the quantized wire formats (fp8 e4m3, fp4 e2m1,
 * UE8M0), the scale of a block from its maximum, and the encoding of a
 * chunk of a row: plain C compiled by the C compiler (src/moe/quant.c, the
 * host executor) and by nvcc (src/cuda/kernels.cu, the GPU executor's
 * fused pack), so that both produce the same bits.  Formats, rounding,
 * saturation and NaN handling: README.md ("Quantized formats").
 *
 * The arithmetic is IEEE single precision with round to nearest even and
 * subnormals kept: nvcc compiles it without --use_fast_math, with
 * -ftz=false -prec-div=true (its defaults) and --fmad=false (no fused
 * multiply-add, which would round once where the host rounds twice).
 */
#ifndef EPX_PROTO_QUANT_CODEC_H
#define EPX_PROTO_QUANT_CODEC_H

#include <stdint.h>

#if defined(__CUDACC__)
#define MOE_QUANT_HD static __host__ __device__ __forceinline__
#else
#define MOE_QUANT_HD static inline
#endif

enum {
    MOE_QUANT_FP8_BLOCK = 128,  /* fp8 with fp32 or UE8M0 scales */
    MOE_QUANT_MX_BLOCK = 32,    /* MXFP8: fp8 with UE8M0 scales */
    MOE_QUANT_FP4_BLOCK = 16    /* NVFP4: e2m1 with e4m3 scales */
};

#define MOE_QUANT_E4M3_MAX 448.0f
#define MOE_QUANT_E2M1_MAX 6.0f
#define MOE_QUANT_E4M3_NAN 0x7f  /* canonical NaN the encoder produces */
#define MOE_QUANT_UE8M0_NAN 0xff

MOE_QUANT_HD uint32_t moe_quant_bits(float f)
{
#if defined(__CUDA_ARCH__)
    return __float_as_uint(f);
#else
    union { float f; uint32_t u; } v;
    v.f = f;
    return v.u;
#endif
}
MOE_QUANT_HD float moe_quant_float(uint32_t u)
{
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    union { uint32_t u; float f; } v;
    v.u = u;
    return v.f;
#endif
}

/* ---- fp8 E4M3 (OCP E4M3FN): S.EEEE.MMM, bias 7, no infinities, NaN is
 * S.1111.111, largest finite 448, subnormals m * 2^-9. */

/* Round to nearest even; finite values beyond 448 and +-Inf saturate to
 * +-448; NaN gives 0x7f (sign dropped).  Branch-free, on signed 32-bit
 * lanes (|f|'s bits never reach the sign), so loops of it vectorise with
 * the instructions every x86-64 SIMD level has. */
MOE_QUANT_HD uint8_t moe_quant_f32_to_e4m3(float f)
{
    uint32_t u = moe_quant_bits(f);
    int32_t a = (int32_t)(u & 0x7fffffffu);
    int32_t sign = (int32_t)((u >> 24) & 0x80u);
    /* Normal (|f| >= 2^-6): drop 20 mantissa bits with RNE; a carry rolls
     * into the exponent, then rebias 127 -> 7.  Unsigned: for NaN bits
     * the sum passes 2^31 (the result is not selected then, but a signed
     * overflow would be undefined). */
    int32_t nrm = (int32_t)(((uint32_t)a + 0x7ffffu + (((uint32_t)a >> 20) & 1u))
                            >> 20) - (120 << 3);
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
MOE_QUANT_HD float moe_quant_e4m3_to_f32(uint8_t c)
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
MOE_QUANT_HD uint8_t moe_quant_f32_to_e2m1(float f)
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
MOE_QUANT_HD float moe_quant_e2m1_to_f32(uint8_t c)
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
MOE_QUANT_HD uint8_t moe_quant_f32_to_ue8m0(float s)
{
    uint32_t a = moe_quant_bits(s) & 0x7fffffffu;
    uint32_t e = a >> 23, m = a & 0x7fffffu;
    uint32_t code = e ? e + (m != 0) : (m > 0x400000u);
    code = a > 0x7f000000u ? 254u : code;
    return (uint8_t)(a > 0x7f800000u ? MOE_QUANT_UE8M0_NAN : code);
}

/* Exact (2^-127 is an fp32 subnormal). */
MOE_QUANT_HD float moe_quant_ue8m0_to_f32(uint8_t c)
{
    uint32_t u = c ? (uint32_t)c << 23 : 0x00400000u;
    return moe_quant_float(c == 0xff ? 0x7fc00000u : u);
}

/* ---- one bf16 element, and a block's scale from its largest finite
 * magnitude amax (>= 0; 0 when the block holds no finite non-zero value) */

MOE_QUANT_HD float moe_quant_bf16(uint16_t h)
{
    return moe_quant_float((uint32_t)h << 16);
}

/* Smallest normal fp32, 2^-126: scales are kept normal so that x / s and
 * q * s stay relative-error operations for the tiniest blocks. */
#define MOE_QUANT_SCALE_MIN 1.17549435082228750797e-38f

/* fp8 with an fp32 scale: max(amax / 448, 2^-126), 1 for amax 0. */
MOE_QUANT_HD float moe_quant_fp8_scale(float amax)
{
    float s = amax > 0.0f ? amax / MOE_QUANT_E4M3_MAX : 1.0f;
    return s < MOE_QUANT_SCALE_MIN ? MOE_QUANT_SCALE_MIN : s;
}

/* fp8 with a UE8M0 scale: the smallest power of two with amax / scale <=
 * 448 (127, i.e. 1, for amax 0).  amax / 448 is rounded before the
 * round-up, but a bf16 amax (8 significant bits) divided by 7 * 64 is
 * either a power of two or at least 2^-8 away from one: the rounding
 * cannot hide an excess. */
MOE_QUANT_HD uint8_t moe_quant_ue8m0_scale(float amax)
{
    return amax > 0.0f ? moe_quant_f32_to_ue8m0(amax / MOE_QUANT_E4M3_MAX)
                       : (uint8_t)127;
}

/* The reciprocal of a UE8M0 scale (a power of two: x * inv is exact). */
MOE_QUANT_HD float moe_quant_ue8m0_inv(uint8_t c)
{
    return 1.0f / moe_quant_ue8m0_to_f32(c);
}

/* NVFP4 row (tensor) scale: max(amax / (448 * 6), 2^-126), 1 for 0. */
MOE_QUANT_HD float moe_quant_nvfp4_gscale(float amax)
{
    float g = amax > 0.0f
        ? amax / (MOE_QUANT_E4M3_MAX * MOE_QUANT_E2M1_MAX) : 1.0f;
    return g < MOE_QUANT_SCALE_MIN ? MOE_QUANT_SCALE_MIN : g;
}

/* NVFP4 block scale code e4m3(amax / (6 g)). */
MOE_QUANT_HD uint8_t moe_quant_nvfp4_bscale(float amax, float global)
{
    return moe_quant_f32_to_e4m3(amax / (MOE_QUANT_E2M1_MAX * global));
}

/* The divisor of an NVFP4 block, e4m3(sb) * g; a block is encoded as
 * zeros when it is not > 0 (a block far below the row's maximum) or the
 * block holds a NaN (which travels in its scale, 0x7f). */
MOE_QUANT_HD float moe_quant_nvfp4_div(uint8_t sb, float global)
{
    return moe_quant_e4m3_to_f32(sb) * global;
}

/* ---- a chunk of n <= MOE_QUANT_CHUNK elements of a row, starting at an
 * element that is a multiple of MOE_QUANT_CHUNK (16 divides every block
 * size, 16, 32 and 128, so a chunk lies in one block; an NVFP4 block is
 * one chunk).  A GPU lane handles a chunk: 32 bytes of bf16 in, 16 bytes
 * of fp8 or 8 of e2m1 out. */

enum { MOE_QUANT_CHUNK = 16 };

/* Largest finite magnitude's bits (NaN and Inf skipped; bit patterns of
 * non-negative floats order as their values), and *nan when a NaN is
 * among them. */
MOE_QUANT_HD uint32_t moe_quant_chunk_amax(const uint16_t *x, int n, int *nan)
{
    uint32_t m = 0, all = 0;
    for (int i = 0; i < n; i++) {
        uint32_t a = x[i] & 0x7fffu;
        all = a > all ? a : all;
        a = a < 0x7f80u ? a : 0u;
        m = a > m ? a : m;
    }
    *nan = all > 0x7f80u;
    return m;
}

/* fp8 codes of x / s (fp32 scale). */
MOE_QUANT_HD void moe_quant_chunk_fp8_div(const uint16_t *x, int n, float s,
                                          uint8_t *q)
{
    for (int i = 0; i < n; i++)
        q[i] = moe_quant_f32_to_e4m3(moe_quant_bf16(x[i]) / s);
}

/* fp8 codes of x * inv (UE8M0 scale). */
MOE_QUANT_HD void moe_quant_chunk_fp8_mul(const uint16_t *x, int n, float inv,
                                          uint8_t *q)
{
    for (int i = 0; i < n; i++)
        q[i] = moe_quant_f32_to_e4m3(moe_quant_bf16(x[i]) * inv);
}

/* e2m1 codes of x / s, two per byte, element 2i in the low nibble of byte
 * i (odd n: the last high nibble 0); zeros when `zero`.  (n + 1) / 2
 * bytes. */
MOE_QUANT_HD void moe_quant_chunk_e2m1(const uint16_t *x, int n, float s,
                                       int zero, uint8_t *q)
{
    for (int i = 0; i < n; i += 2) {
        uint32_t lo = moe_quant_f32_to_e2m1(moe_quant_bf16(x[i]) / s);
        uint32_t hi = i + 1 < n
            ? moe_quant_f32_to_e2m1(moe_quant_bf16(x[i + 1]) / s) : 0u;
        q[i / 2] = zero ? (uint8_t)0 : (uint8_t)(lo | hi << 4);
    }
}

#endif /* EPX_PROTO_QUANT_CODEC_H */
