/*
 * Low-latency readiness (src/cuda/README.md "Readiness in low latency"):
 * what the receive kernels publish to host-mapped memory for
 * epx_dispatch_poll, one copy for the classic ll recv kernel and the
 * fused receive phase (kern_ll.cu), and the low-latency statistics ring
 * both layouts append to.
 */
#ifndef EPX_CUDA_KERN_LLPUB_CUH
#define EPX_CUDA_KERN_LLPUB_CUH

#include "proto/proto.h"
#include "cuda/kern_launch.h"
#include "cuda/kern_sync.cuh"

/* Record the first error of the calls since the host last looked. */
__device__ static void epxk_ll_error(const epxk_call_t &c, int64_t st)
{
    atomicCAS((unsigned long long *)&c.ll_state[EPXK_LL_ERR], 0ull,
              (unsigned long long)st);
}

/* Thread 0 of a block: the call failed (source bad_src's status word stw,
 * proto_ll_src_fail), published as its status then (release) the call's
 * id in the failure word. */
__device__ static __forceinline__ void epxk_llpub_fail(const epxk_call_t &c,
                                                       int32_t stw,
                                                       int bad_src, int rank)
{
    c.ll_pub[EPXK_LLPUB_FAILST] = proto_ll_src_fail(stw, bad_src, rank);
    epxk_st_release_u64((uint64_t *)&c.ll_pub[EPXK_LLPUB_FAIL], c.ll_id);
}

/* Thread 0 of the block that wrote local unit j's rows, count and marks
 * (after a system fence): the unit ready (release of the call's id), or
 * the call's failure where a source's status is bad (bad_src < R), so no
 * unit of a failed call is ever ready. */
__device__ static __forceinline__ void epxk_llpub_unit(const epxk_call_t &c,
                                                       const int32_t *stw,
                                                       int bad_src, int R,
                                                       int rank, int L, int j)
{
    if (!c.ll_pub)
        return;
    if (bad_src < R)
        epxk_llpub_fail(c, stw[bad_src], bad_src, rank);
    else
        epxk_st_release_u64((uint64_t *)&c.ll_pub[EPXK_LLPUB_COUNTS + L + j],
                            c.ll_id);
}

/* One block, after the low-latency layout of a call that is sent: its
 * layer and its counts (cnt, the layout's [R + E]: per destination, then
 * per unit) per logical expert and per unit, all its choices, dropped
 * ones too (the host executor's), appended to the statistics ring; then
 * the counter advances.  Calls of one engine run in stream order, so one
 * writer at a time. */
__device__ static void epxk_ll_stats_put(const proto_geom_t &g,
                                         const epxk_call_t &c,
                                         const int32_t *cnt)
{
    const int Elog = c.route.E ? c.route.E : g.E;
    const int64_t n = *c.ll_nstat;
    int32_t *ent = c.ll_ring + (n % EPXK_LL_STATS_RING) *
                                   (int64_t)(1 + Elog + g.E);
    if (threadIdx.x == 0)
        ent[0] = c.layer;
    for (int u = threadIdx.x; u < g.E; u += blockDim.x)
        ent[1 + Elog + u] = cnt[g.R + u];
    for (int e = threadIdx.x; e < Elog; e += blockDim.x) {
        int32_t v = 0;
        if (!c.route.E)
            v = cnt[g.R + e];
        else
            for (int i = c.route.off[e]; i < c.route.off[e + 1]; i++)
                v += cnt[g.R + c.route.rep[i]];
        if (c.lostcnt)   /* elastic: the demand for a lost expert */
            v += c.lostcnt[e];
        ent[1 + e] = v;
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0)
        *c.ll_nstat = n + 1;
}

/* The end of a low-latency receive (classic kernel and fused phase),
 * every block: wait_src(s) waits for source s's last word of the call
 * (skipped once the call timed out); then block 0 fails the call for the
 * first source whose status word says it failed (bad_src: the block's
 * shared word), published for epx_dispatch_poll. */
template <typename W>
__device__ static void epxk_ll_recv_end(const proto_geom_t &g,
                                        const epxk_call_t &c,
                                        const int32_t *stw, int &bad_src,
                                        W wait_src)
{
    for (int s = threadIdx.x; s < g.R; s += blockDim.x)
        if (*(volatile int64_t *)&c.info[EPXK_INFO_ERROR] == 0)
            wait_src(s);
    __syncthreads();
    if (c.info[EPXK_INFO_ERROR]) {
        if (threadIdx.x == 0)
            epxk_ll_error(c, EPX_ERR_TIMEOUT);
        return;
    }
    if (blockIdx.x != 0)
        return;
    if (threadIdx.x == 0)
        bad_src = g.R;
    __syncthreads();
    for (int s = threadIdx.x; s < g.R; s += blockDim.x) {
        int32_t f = proto_ll_src_fail(stw[s], s, g.rank);
        if (f) {
            epxk_ll_error(c, f);
            atomicMin(&bad_src, s);
        }
    }
    __syncthreads();
    if (threadIdx.x == 0 && c.ll_pub && bad_src < g.R)
        epxk_llpub_fail(c, stw[bad_src], bad_src, g.rank);
}

#endif /* EPX_CUDA_KERN_LLPUB_CUH */
