/*
 * Wire formats of dispatch: the one place that knows, for an epx_wire_t
 * and a hidden size H, how a token row travels and arrives.  A row is
 * three parts, each landing in its own receive region so that epx_recv_t
 * x, x_scales and x_global_scale are plain contiguous tensors:
 *
 *   data    data_bytes    x in the engine dtype (NATIVE), e4m3 codes, or
 *                         packed e2m1 codes (x_cols columns of x_dtype)
 *   scales  scale_bytes   nblocks scales of scale_dtype (none for NATIVE)
 *   global  global_bytes  one fp32 per row (NVFP4 only)
 *
 * Formats, rounding and error bounds: README.md ("Quantized formats",
 * "Wire formats").
 */
#ifndef EPX_MOE_WIRE_H
#define EPX_MOE_WIRE_H

#include <stddef.h>
#include <stdint.h>
#include "epx.h"

typedef struct moe_wire {
    epx_wire_t wire;
    int H;
    epx_dtype_t x_dtype;       /* of the received x */
    int64_t x_cols;            /* H, or ceil(H / 2) for FP4_E2M1X2 */
    epx_dtype_t scale_dtype;   /* FP32, UE8M0 or FP8_E4M3 (NATIVE: FP32) */
    int block;                 /* elements per scale, 0 for NATIVE */
    int64_t nblocks;           /* scales per row, ceil(H / block) or 0 */
    size_t data_bytes, scale_bytes, global_bytes;
} moe_wire_t;

/* The format of `wire` for rows of H elements whose engine dtype is
 * `dtype`.  EPX_ERR_INVALID (with the reason) for an unknown wire or a
 * quantized one with an engine dtype other than BF16. */
epx_status_t moe_wire_init(moe_wire_t *f, epx_wire_t wire, epx_dtype_t dtype,
                           int H);

/* Bytes of a whole row on the wire: data + scales + global. */
static inline size_t moe_wire_row_bytes(const moe_wire_t *f)
{
    return f->data_bytes + f->scale_bytes + f->global_bytes;
}

static inline int moe_wire_quantized(const moe_wire_t *f)
{
    return f->wire != EPX_WIRE_NATIVE;
}

/* One row x (engine dtype; bf16 for the quantized formats) into its wire
 * parts: data_bytes at q, scale_bytes at scale (4-byte aligned for FP32
 * scales), and for NVFP4 the row's fp32 scale at *global (its amax maps to
 * 6 * 448; given > 0: the caller's tensor scale instead).  NATIVE copies
 * x to q.  scale and global are not touched when
 * the format has none (they may be NULL then). */
void moe_wire_pack_row(const moe_wire_t *f, const void *x, void *q,
                       void *scale, float *global, float given);

/* Name for messages and logs: "native", "fp8", "fp8-ue8m0", "mxfp8",
 * "nvfp4" ("?" for an unknown value). */
const char *moe_wire_name(epx_wire_t wire);

#endif /* EPX_MOE_WIRE_H */
