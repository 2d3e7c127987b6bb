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

#include "proto/quant_codec.h"

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
