/*
 * Row arithmetic shared by the expert compute and the MPI baseline's
 * reduction.  Rows are processed in fixed blocks so the compiler vectorises
 * the inner loops even at -O2 (the baseline's reduction is timed: it must
 * not be handicapped by scalar code).
 */
#ifndef EPX_BENCH_ROWOPS_H
#define EPX_BENCH_ROWOPS_H

#include <stdint.h>
#include <string.h>
#include "epx.h"
#include "util/util.h"

#define BENCH_BLK 16

/* Branch-free bf16 rounding, same result as epx__f32_to_bf16. */
static inline uint16_t bench_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t q = (u >> 16) | 0x40u;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? q : r);
}

/* acc[h] += w * (x[h] * s), x in dtype. */
static inline void bench_row_axpy(float *restrict acc, const void *x,
                                  epx_dtype_t dt, int H, float w, float s)
{
    int h = 0;
    if (dt == EPX_DTYPE_BF16) {
        const uint16_t *restrict xb = x;
        for (; h + BENCH_BLK <= H; h += BENCH_BLK)
            for (int j = 0; j < BENCH_BLK; j++)
                acc[h + j] += w * (epx__bf16_to_f32(xb[h + j]) * s);
        for (; h < H; h++)
            acc[h] += w * (epx__bf16_to_f32(xb[h]) * s);
    } else {
        const float *restrict xf = x;
        for (; h + BENCH_BLK <= H; h += BENCH_BLK)
            for (int j = 0; j < BENCH_BLK; j++)
                acc[h + j] += w * (xf[h + j] * s);
        for (; h < H; h++)
            acc[h] += w * (xf[h] * s);
    }
}

/* acc[h] += x[h], x in dtype. */
static inline void bench_row_add(float *restrict acc, const void *x,
                                 epx_dtype_t dt, int H)
{
    int h = 0;
    if (dt == EPX_DTYPE_BF16) {
        const uint16_t *restrict xb = x;
        for (; h + BENCH_BLK <= H; h += BENCH_BLK)
            for (int j = 0; j < BENCH_BLK; j++)
                acc[h + j] += epx__bf16_to_f32(xb[h + j]);
        for (; h < H; h++)
            acc[h] += epx__bf16_to_f32(xb[h]);
    } else {
        const float *restrict xf = x;
        for (; h + BENCH_BLK <= H; h += BENCH_BLK)
            for (int j = 0; j < BENCH_BLK; j++)
                acc[h + j] += xf[h + j];
        for (; h < H; h++)
            acc[h] += xf[h];
    }
}

/* row = acc rounded once to dtype. */
static inline void bench_row_store(void *restrict row,
                                   const float *restrict acc, epx_dtype_t dt,
                                   int H)
{
    if (dt == EPX_DTYPE_BF16) {
        uint16_t *restrict rb = row;
        int h = 0;
        for (; h + BENCH_BLK <= H; h += BENCH_BLK)
            for (int j = 0; j < BENCH_BLK; j++)
                rb[h + j] = bench_to_bf16(acc[h + j]);
        for (; h < H; h++)
            rb[h] = bench_to_bf16(acc[h]);
    } else {
        memcpy(row, acc, (size_t)H * sizeof(float));
    }
}

#endif /* EPX_BENCH_ROWOPS_H */
