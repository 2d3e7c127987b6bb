/*
 * Inputs and the synthetic expert.  x of (rank, token) is a pure function
 * of (seed, rank, token) (or of the trace's x.npy), so any rank can
 * regenerate the row it received and check it bit for bit.  Expert e of E
 * computes y = x * (1 + e/E): cheap, and every expert gives a different
 * answer, so a row sent to the wrong expert shows up in the output.
 */
#include <stdlib.h>
#include <string.h>
#include "bench.h"
#include "util/util.h"
#include "rowops.h"

enum { STREAM_X = 3 };

static void store(const bench_workload_t *wl, void *row, int64_t h,
                  uint16_t bf)
{
    if (wl->dtype == EPX_DTYPE_BF16)
        ((uint16_t *)row)[h] = bf;
    else
        ((float *)row)[h] = epx__bf16_to_f32(bf);
}

void bench_x_row(const bench_workload_t *wl, int rank, int64_t token,
                 void *row)
{
    const int H = wl->hidden;
    const bench_npy_t *tx = &wl->trace_x[rank];
    if (tx->map) {
        for (int h = 0; h < H; h++)
            store(wl, row, h, epx__f32_to_bf16(bench_npy_f32(tx, token, h)));
        return;
    }
    /* Values in [-1, 1): 24 random bits scaled, truncated toward zero to
     * bf16 (so +1 is never reached). */
    uint64_t st = bench_mix(wl->seed, (uint64_t)STREAM_X << 32 |
                            (uint32_t)rank, (uint64_t)token);
    for (int h = 0; h < H; h += 2) {
        uint64_t r = bench_rng_next(&st);
        for (int j = 0; j < 2 && h + j < H; j++) {
            uint32_t u = (uint32_t)(r >> (40 - 24 * j)) & 0xffffffu;
            union { float f; uint32_t u; } v;
            v.f = (float)u * 0x1p-23f - 1.0f;
            store(wl, row, h + j, (uint16_t)(v.u >> 16));
        }
    }
}

float bench_expert_scale(const bench_workload_t *wl, int expert)
{
    return 1.0f + (float)expert / (float)wl->experts;
}

/* The logical expert of local expert (or, with replicas, local slot) j:
 * with replicas first_local_expert + j is a slot, not an expert. */
static int local_expert(const epx_recv_t *recv, int j)
{
    return recv->local_experts ? recv->local_experts[j]
                               : recv->first_local_expert + j;
}

void bench_expert_compute(const bench_ctx_t *ctx, const epx_recv_t *recv,
                          epx_layout_t layout, void *y, float *acc)
{
    const bench_workload_t *wl = ctx->wl;
    const int H = wl->hidden, K = wl->topk;
    const size_t rowb = (size_t)H * wl->dsize;
    const char *x = recv->x.data;
    char *yb = y;
    /* Quantized wire: the expert reads the row dequantized to bf16. */
    bench_wire_t w;
    bench_wire_shape(recv->x_scales.data ? wl->wire : EPX_WIRE_NATIVE, H,
                     wl->dsize, &w);   /* the MPI baseline moves x as is */
    uint16_t *deq = NULL;
    float *tmp = NULL;
    if (w.block) {
        deq = malloc((size_t)H * 2);
        tmp = malloc((size_t)H * sizeof(float));
        if (!deq || !tmp) {
            free(deq);
            free(tmp);
            return;   /* reported by verification of the outputs */
        }
    }
#define XROW(i)                                                                \
    (w.block ? (bench_wire_dequant(&w, recv, (i), H, tmp),                     \
                bench_row_store(deq, tmp, EPX_DTYPE_BF16, H), (const void *)deq) \
             : (const void *)(x + (size_t)(i) * rowb))

    if (layout == EPX_LAYOUT_TOKEN_MAJOR) {
        for (int64_t i = 0; i < recv->num_rows; i++) {
            const void *xr = XROW(i);
            memset(acc, 0, (size_t)H * sizeof(float));
            for (int k = 0; k < K; k++) {
                int32_t j = recv->topk_idx[i * K + k];
                if (j < 0)
                    continue;
                bench_row_axpy(acc, xr, wl->dtype, H,
                               recv->topk_weights[i * K + k],
                               bench_expert_scale(wl, local_expert(recv, j)));
            }
            bench_row_store(yb + (size_t)i * rowb, acc, wl->dtype, H);
        }
        free(deq);
        free(tmp);
        return;
    }

    /* expert-major: padding rows are zero (row by row: y may be x).  Not
     * in low latency: combine reads only the rows the counts make valid,
     * and zeroing every range's padding would write the whole window
     * (local experts x ranks x capacity rows) per call. */
    for (int64_t i = 0; recv->capacity == 0 && i < recv->num_rows; i++)
        if (recv->src_rank[i] < 0)
            memset(yb + (size_t)i * rowb, 0, rowb);
    for (int j = 0; j < recv->num_local_experts; j++) {
        float s = bench_expert_scale(wl, local_expert(recv, j));
        if (recv->expert_offsets[j] < 0 || recv->expert_counts[j] < 0 ||
            recv->expert_offsets[j] + recv->expert_counts[j] > recv->num_rows)
            continue;   /* reported by verification */
        /* low latency: the segment holds every source's range, with
         * padding rows (src_rank -1) after each source's rows */
        int64_t end = recv->capacity > 0
            ? recv->expert_offsets[j] + (int64_t)ctx->nranks * recv->capacity
            : recv->expert_offsets[j] + recv->expert_counts[j];
        for (int64_t i = recv->expert_offsets[j]; i < end; i++) {
            if (recv->src_rank[i] < 0)
                continue;
            /* one rounding of x * s, as in the token-major case */
            memset(acc, 0, (size_t)H * sizeof(float));
            bench_row_axpy(acc, XROW(i), wl->dtype, H, 1.0f, s);
            bench_row_store(yb + (size_t)i * rowb, acc, wl->dtype, H);
        }
    }
    free(deq);
    free(tmp);
#undef XROW
}
