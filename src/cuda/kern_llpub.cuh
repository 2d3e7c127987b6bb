/*
 * Low-latency readiness (src/cuda/README.md "Readiness in low latency"):
 * what the receive kernels publish to host-mapped memory for
 * epx_dispatch_poll, one copy for the classic ll recv kernel and the
 * fused receive phase (kern_ll.cu).
 */
#ifndef EPX_CUDA_KERN_LLPUB_CUH
#define EPX_CUDA_KERN_LLPUB_CUH

#include "proto/proto.h"
#include "cuda/kern_launch.h"
#include "cuda/kern_sync.cuh"

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

#endif /* EPX_CUDA_KERN_LLPUB_CUH */
