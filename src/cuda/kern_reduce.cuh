/*
 * The combine's final reduction and its rounded 16-byte store, one copy
 * for the classic kernels and the fused ones: each token's partials
 * summed in ascending rank order in fp32 and rounded once, proto.h's
 * order and rounding.
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

/* out[t][h] for every token: the ascending-rank fp32 sum of the partials
 * in comb (proto.h proto_combine_elem's order and rounding), by the whole
 * grid.  Where partial rows and out rows are 16-byte aligned, a thread
 * takes 16 bytes of each partial (8 bf16 or 4 fp32 in one load) and
 * stores its elements in one or two 16-byte (or one 8-byte) stores;
 * else an element per thread. */
__device__ static void epxk_reduce_out(const proto_geom_t &g, const epxk_call_t &c,
                                       const char *comb)
{
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
