/*
 * The combine's final reduction and its rounded 16-byte store, one copy
 * for the classic kernels and the fused ones: each token's partials
 * summed in ascending rank order in fp32 and rounded once, proto.h's
 * order and rounding.  FP64 engines: the same sum in double, and an
 * expert-major entry's partial in double, by warp (proto.h, "FP64 on
 * device").
 */
#ifndef EPX_CUDA_KERN_REDUCE_CUH
#define EPX_CUDA_KERN_REDUCE_CUH

#include "proto/proto.h"
#include "cuda/kern_launch.h"

/* acc (fp32, V = 16 / esize of them) rounded to out's dtype at o: one
 * 16-byte store (or 8, fp32 engine into bf16 out), two for bf16 into
 * fp32 out. */
__device__ static __forceinline__ void epxk_store16(char *o, int out_esize,
                                                    int V, const float *acc)
{
    if (out_esize == 2) {
        union { uint4 u; uint2 d; uint16_t h[8]; } q;
        for (int e = 0; e < 8; e++)
            q.h[e] = e < V ? proto_f32_to_bf16(acc[e]) : (uint16_t)0;
        if (V == 8)
            *(uint4 *)o = q.u;
        else
            *(uint2 *)o = q.d;
    } else {
        union { uint4 u[2]; float f[8]; } q;
        for (int e = 0; e < 8; e++)
            q.f[e] = acc[e];
        ((uint4 *)o)[0] = q.u[0];
        if (V == 8)
            ((uint4 *)o)[1] = q.u[1];
    }
}

/* FP64 engines: an entry's partial (proto_partial_elem_f64: rows in
 * top-k order, weights widened, summed in double, not rounded) into dst
 * by a warp; 16 bytes (2 doubles) of each row per lane and step where y's
 * rows and dst are 16-byte aligned, four rows' loads in flight. */
__device__ static void epxk_partial_f64(const proto_geom_t &g, const char *y,
                                        const int32_t *rows, const float *wt,
                                        char *dst, int lane)
{
    if (((uintptr_t)y | (uintptr_t)dst | (uintptr_t)g.row_bytes) & 15) {
        for (int64_t h = lane; h < g.H; h += 32)
            ((double *)dst)[h] = proto_partial_elem_f64(&g, y, rows, wt, h);
        return;
    }
    int n = 0;   /* rows end at the first -1 */
    while (n < g.K && rows[n] >= 0)
        n++;
    for (int64_t v = lane; v < g.row_bytes / 16; v += 32) {
        double acc[2] = { 0.0, 0.0 };
        for (int k0 = 0; k0 < n; k0 += 4) {
            union { uint4 u; proto_v16_t p; } t[4];
#pragma unroll
            for (int j = 0; j < 4; j++)
                if (k0 + j < n)
                    t[j].u = *(const uint4 *)(y + (int64_t)rows[k0 + j] *
                                                  g.row_bytes + v * 16);
#pragma unroll
            for (int j = 0; j < 4; j++)
                if (k0 + j < n)
                    proto_partial_acc16_f64(&t[j].p, wt != NULL,
                                            wt ? wt[rows[k0 + j]] : 0.0f, acc);
        }
        union { uint4 u; proto_v16_t p; } o;
        proto_pack16_f64(acc, &o.p);
        *(uint4 *)(dst + v * 16) = o.u;
    }
}

/* FP64 engines: out[t][h] (FP64) for every token, the ascending-rank sum
 * of the partials in double (proto_combine_elem_f64), by the whole grid;
 * a thread per 16 bytes of a row where partial and out rows are 16-byte
 * aligned, else per element. */
__device__ static void epxk_reduce_out_f64(const proto_geom_t &g,
                                           const epxk_call_t &c,
                                           const char *comb)
{
    const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t nth = (int64_t)gridDim.x * blockDim.x;
    double *out = (double *)c.out;
    if (g.row_bytes % 16 || ((uintptr_t)out & 15)) {
        for (int64_t i = tid; i < c.T * g.H; i += nth)
            out[i] = proto_combine_elem_f64(&g, comb, c.sendoff, c.dest,
                                            c.pos, i / g.H, i % g.H);
        return;
    }
    const int64_t nv = g.H / 2;             /* vectors per row */
    for (int64_t i = tid; i < c.T * nv; i += nth) {
        const int64_t t = i / nv, v = i % nv;
        double acc[2] = { 0.0, 0.0 };
        for (int j = 0; j < g.maxdest; j++) {
            if (c.dest[t * g.maxdest + j] < 0)
                break;
            int64_t slot = proto_ret_slot(&g, c.sendoff, c.dest, c.pos, t, j);
            union { uint4 u; proto_v16_t p; } p;
            p.u = *(const uint4 *)(comb + slot * g.row_bytes + v * 16);
            proto_sum_acc16_f64(&p.p, acc);
        }
        union { uint4 u; proto_v16_t p; } o;
        proto_pack16_f64(acc, &o.p);
        *(uint4 *)(out + t * g.H + v * 2) = o.u;
    }
}

/* out[t][h] for every token: the ascending-rank fp32 sum of the partials
 * in comb (proto.h proto_combine_elem's order and rounding), by the whole
 * grid.  Where partial rows and out rows are 16-byte aligned, a thread
 * takes 16 bytes of each partial (8 bf16 or 4 fp32 in one load) and
 * stores its elements in one or two 16-byte (or one 8-byte) stores;
 * else an element per thread.  FP64 engines: epxk_reduce_out_f64. */
__device__ static void epxk_reduce_out(const proto_geom_t &g, const epxk_call_t &c,
                                       const char *comb)
{
    if (g.esize == 8) {
        epxk_reduce_out_f64(g, c, comb);
        return;
    }
    const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t nth = (int64_t)gridDim.x * blockDim.x;
    const int V = 16 / g.esize;             /* elements per 16 bytes */
    const bool vec = g.row_bytes % 16 == 0 &&
                     ((int64_t)g.H * c.out_esize) % 16 == 0 &&
                     ((uintptr_t)c.out & 15) == 0;
    if (!vec) {
        for (int64_t i = tid; i < c.T * g.H; i += nth) {
            int64_t t = i / g.H, h = i % g.H;
            proto_store((char *)c.out + t * g.H * c.out_esize, c.out_esize, h,
                       proto_combine_elem(&g, comb, c.sendoff, c.dest, c.pos,
                                         t, h));
        }
        return;
    }
    const int64_t nv = g.H / V;             /* vectors per row */
    for (int64_t i = tid; i < c.T * nv; i += nth) {
        const int64_t t = i / nv, v = i % nv;
        float acc[8];
        for (int e = 0; e < 8; e++)
            acc[e] = 0.0f;
        for (int j = 0; j < g.maxdest; j++) {
            if (c.dest[t * g.maxdest + j] < 0)
                break;
            int64_t slot = proto_ret_slot(&g, c.sendoff, c.dest, c.pos, t, j);
            union { uint4 u; uint16_t h[8]; float f[4]; } p;
            p.u = *(const uint4 *)(comb + slot * g.row_bytes + v * 16);
            if (V == 8)
                for (int e = 0; e < 8; e++)
                    acc[e] = acc[e] + proto_bf16_to_f32(p.h[e]);
            else
                for (int e = 0; e < 4; e++)
                    acc[e] = acc[e] + p.f[e];
        }
        epxk_store16((char *)c.out + (t * g.H + v * V) * c.out_esize,
                     c.out_esize, V, acc);
    }
}

#endif /* EPX_CUDA_KERN_REDUCE_CUH */
