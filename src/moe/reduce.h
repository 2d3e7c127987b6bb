/*
 * The combine reduction of the host executor, one definition for every
 * path (flat push and pull, low latency, hierarchical): fp32 terms added
 * in a fixed order, `first` starting a sum as 0 + term, one rounding to
 * the destination dtype; double terms and no final rounding for FP64
 * engines.  The GPU executor's kernels do the same
 * operations (src/proto/proto.h), checked bit for bit by
 * tests/cuda/test_kern_host.
 */
#ifndef EPX_MOE_REDUCE_H
#define EPX_MOE_REDUCE_H

#include <string.h>
#include "util/util.h"
#include "epx.h"

/* acc (+)= w * src over n elements, in fp32: `first` starts the sum
 * (acc = 0 + term, so acc needs no clearing pass); w NULL: weight 1. */
#define ACCUM(EXPR)                                                            \
    do {                                                                       \
        if (first)                                                             \
            for (int i = 0; i < n; i++)                                        \
                acc[i] = 0.0f + (EXPR);                                        \
        else                                                                   \
            for (int i = 0; i < n; i++)                                        \
                acc[i] += (EXPR);                                              \
    } while (0)

static inline void moe_accum(float *restrict acc, const void *src, epx_dtype_t dt,
                         const float *w, int first, int n)
{
    if (dt == EPX_DTYPE_BF16) {
        const uint16_t *s = src;
        if (w) {
            float wv = *w;
            ACCUM(wv * epx__bf16_to_f32(s[i]));
        } else {
            ACCUM(epx__bf16_to_f32(s[i]));
        }
    } else {
        const float *s = src;
        if (w) {
            float wv = *w;
            ACCUM(wv * s[i]);
        } else {
            ACCUM(s[i]);
        }
    }
}

/* acc (+)= round_to_wire(part): a partial as it would travel. */
static inline void moe_accum_wire(float *restrict acc, const float *restrict part,
                              epx_dtype_t dt, int first, int n)
{
    if (dt == EPX_DTYPE_BF16)
        ACCUM(epx__bf16_to_f32(epx__f32_to_bf16(part[i])));
    else
        ACCUM(part[i]);
}

static inline void moe_store(void *dst, const float *restrict acc,
                             epx_dtype_t dt, int H)
{
    if (dt == EPX_DTYPE_BF16) {
        uint16_t *d = dst;
        for (int i = 0; i < H; i++)
            d[i] = epx__f32_to_bf16(acc[i]);
    } else {
        memcpy(dst, acc, sizeof(float) * (size_t)H);
    }
}

/* FP64 engines: the same sums in double.  w (fp32) widens exactly, and
 * partials travel in double, so nothing rounds but the double operations
 * themselves; the output is FP64 (moe_check_out). */
static inline void moe_accum_f64(double *restrict acc, const double *src,
                                 const float *w, int first, int n)
{
    const double *s = src;
    if (w) {
        double wv = (double)*w;
        ACCUM(wv * s[i]);
    } else {
        ACCUM(s[i]);
    }
}

/* Columns per pass: the fp32 accumulators stay in L1 while the rows
 * stream through once. */
#define COMB_CHUNK 2048

#endif /* EPX_MOE_REDUCE_H */
