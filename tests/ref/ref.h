/*
 * Reference model of MoE dispatch and combine: one process, plain loops,
 * written from the contract in include/epx.h and DESIGN.md alone.  It
 * shares nothing with src/ but the types of epx.h, so a misreading of the
 * contract in the library shows up as a difference rather than being
 * copied.
 */
#ifndef EPX_TEST_REF_H
#define EPX_TEST_REF_H

#include <stdint.h>
#include "epx.h"

typedef struct ref_cfg {
    int nranks, num_experts, topk, hidden;
    epx_dtype_t dtype;           /* BF16, FP32 or FP64: x and y on the
                                    wire (FP64: combine by ref_combine_f64) */
    epx_layout_t layout;
    int align;                   /* expert-major segment alignment, >= 1 */
    epx_wire_t wire;             /* how x arrives (quantized: dtype BF16,
                                    by the reference quantizer, ref_quant.h) */
} ref_cfg_t;

/* One source rank's dispatch input. */
typedef struct ref_tokens {
    int64_t T;
    const void *x;               /* [T, H] in cfg dtype */
    const int64_t *idx;          /* [T, K] global expert ids, -1 = none */
    const float *w;              /* [T, K] */
    float gscale;                /* NVFP4 wire: the source's tensor scale
                                    (x_global_scale), 0: each row's own */
} ref_tokens_t;

/* What one rank must receive; fields mirror epx_recv_t. */
typedef struct ref_recv {
    int64_t num_rows;
    int num_local, first_local;
    int64_t *counts;             /* [num_local] */
    int64_t *offsets;            /* [num_local] expert-major; NULL otherwise */
    int32_t *src_rank;           /* [num_rows], -1 on padding rows */
    int32_t *src_token;          /* [num_rows], -1 on padding rows */
    int32_t *topk_idx;           /* token-major [num_rows*K]; else NULL */
    float *weights;              /* token-major [num_rows*K], else [num_rows] */
    int32_t *row_expert;         /* expert-major: local expert, -1 padding */
    unsigned char *x;            /* [num_rows] rows of x as received: H
                                    elements, or the quantized row's data
                                    bytes; padding rows 0 */
    unsigned char *scales;       /* quantized: [num_rows] rows of scales */
    float *gscale;               /* NVFP4: [num_rows] row scales */
    size_t x_row, scale_row;     /* bytes of a row of x and of scales */
} ref_recv_t;

/* Contiguous placement: rank r holds [floor(r*E/R), floor((r+1)*E/R)). */
int ref_first_expert(int nranks, int num_experts, int rank);
int ref_num_experts(int nranks, int num_experts, int rank);
int ref_expert_owner(int nranks, int num_experts, int expert);

/* What `rank` receives when every rank r dispatches src[r].  0, or -1 when
 * out of memory. */
int ref_dispatch(const ref_cfg_t *cfg, const ref_tokens_t *src, int rank,
                 ref_recv_t *out);
void ref_recv_free(ref_recv_t *r);

/* Low-latency mode (expert-major output of fixed ranges): local expert j
 * receives source s's rows in rows [(j*R + s)*cap, (j*R + s + 1)*cap);
 * row i of that range is the i-th token of s, in token order, that chose
 * expert j, when i < cap; the rows after it are padding (src -1) and the
 * tokens beyond cap are dropped (*dropped counts them, over every source).
 * num_rows = num_local * R * cap, offsets[j] = j*R*cap. */
int ref_dispatch_ll(const ref_cfg_t *cfg, const ref_tokens_t *src, int rank,
                    int cap, ref_recv_t *out, int64_t *dropped);
/* The routing combine sees after low-latency drops: idx[T, K] of `mine`
 * with every choice that fell beyond cap at its expert set to -1.  Returns
 * the number of such choices. */
int64_t ref_ll_kept(const ref_cfg_t *cfg, const ref_tokens_t *mine, int cap,
                    int64_t *idx);

/* The expert output the test hands to combine, as floats exactly
 * representable in cfg dtype: expert-major, `who` is the global expert of
 * the (src_rank, token) row; token-major, `who` is the destination rank and
 * the row is that rank's whole (already weighted) contribution. */
typedef void (*ref_y_fn)(void *ctx, int src_rank, int64_t token, int who,
                         float *row);

/* out[T, H] (out_dtype BF16 or FP32) that combine must return on `rank`,
 * whose dispatch input was `mine`.  unweighted: EPX_COMBINE_UNWEIGHTED
 * (expert-major).  0, or -1 when out of memory. */
int ref_combine(const ref_cfg_t *cfg, int rank, const ref_tokens_t *mine,
                int unweighted, ref_y_fn y, void *ctx, epx_dtype_t out_dtype,
                void *out);

/* The same for an FP64 engine: y rows in double, every product and sum in
 * double (w widened from fp32), partials unrounded, out[T, H] FP64. */
typedef void (*ref_y64_fn)(void *ctx, int src_rank, int64_t token, int who,
                           double *row);
int ref_combine_f64(const ref_cfg_t *cfg, int rank, const ref_tokens_t *mine,
                    int unweighted, ref_y64_fn y, void *ctx, double *out);

/* bf16 <-> fp32, round to nearest even (finite values). */
uint16_t ref_bf16(float f);
float ref_bf16_value(uint16_t b);
/* f rounded to dtype (BF16: to bf16 and back; FP32, FP64: unchanged). */
float ref_round(epx_dtype_t dtype, float f);
/* Element i of a BF16, FP32 or FP64 array, as float (FP64 rounds) or as
 * double (exact); and the reverse (rounds; FP64 stores the float). */
float ref_load(epx_dtype_t dtype, const void *p, int64_t i);
double ref_load64(epx_dtype_t dtype, const void *p, int64_t i);
void ref_store(epx_dtype_t dtype, void *p, int64_t i, float f);

#endif /* EPX_TEST_REF_H */
