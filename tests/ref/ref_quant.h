/*
 * Reference quantized formats, written from their definitions alone
 * (src/moe/README.md, "Quantized formats"): codes decode by formula and
 * encode by exhaustive search over every finite code for the nearest value,
 * a tie going to the code whose last bit is 0; block quantizers of one bf16
 * row by the recipes' formulas.  Shares nothing with src/ (used by
 * tests/moe/test_quant.c against src/moe/quant.c, and by the dispatch
 * reference).
 */
#ifndef EPX_TEST_REF_QUANT_H
#define EPX_TEST_REF_QUANT_H

#include <stddef.h>
#include <stdint.h>
#include "epx.h"

double ref_e4m3_dec(unsigned c);
double ref_e2m1_dec(unsigned c);
double ref_ue8m0_dec(unsigned c);
/* Nearest of the non-negative finite codes 0..maxcode (their values grow
 * with the code) to |x|, a tie to the even code; beyond the largest the
 * largest (saturation), Inf too; the sign bit copied.  NaN: nan_code. */
unsigned ref_nearest(double x, double (*dec)(unsigned), unsigned maxcode,
                     unsigned signbit_, unsigned nan_code);
unsigned ref_e4m3_enc(double x);    /* NaN: 0x7f */
unsigned ref_e2m1_enc(double x);    /* NaN: +6 (0x7) */
unsigned ref_ue8m0_enc(double s);   /* smallest power of two >= |s| */

float ref_bf16f(uint16_t u);
/* Largest finite |x| of n bf16 values; *nan when one is NaN. */
float ref_amax(const uint16_t *x, size_t n, int *nan);

/* A wire format's shape for rows of h elements: block (0 native), scales
 * per row, bytes of a row's data, of its scales, of its row scale. */
typedef struct ref_wire {
    int block;
    size_t nblocks, data_bytes, scale_bytes, global_bytes;
    epx_dtype_t x_dtype, scale_dtype;
    int64_t x_cols;
} ref_wire_t;
/* 0, or -1 for NATIVE or an unknown format. */
int ref_wire_shape(epx_wire_t wire, int h, ref_wire_t *w);

/* NVIDIA's NVFP4 tensor scale over n bf16 values: max(amax / (6 * 448),
 * 2^-126), 1 when none is finite and non-zero (a caller's
 * x_global_scale, as the tests pass it). */
float ref_nvfp4_tensor_scale(const uint16_t *x, size_t n);

/* One bf16 row quantized as the format defines: data (data_bytes),
 * scales (nblocks of the scale dtype), and the NVFP4 row scale (the row's
 * amax maps to 6 * 448).  *global is left alone for the other formats. */
void ref_quant_row(epx_wire_t wire, const uint16_t *x, int h, uint8_t *q,
                   void *scales, float *global);
/* The same with the caller's NVFP4 tensor scale when given > 0 (*global
 * then reads it back); given 0 is ref_quant_row. */
void ref_quant_row_given(epx_wire_t wire, const uint16_t *x, int h,
                         uint8_t *q, void *scales, float *global,
                         float given);

#endif /* EPX_TEST_REF_QUANT_H */
