/*
 * Elastic engines (EPX_MOE_ELASTIC) on device ranks: what a dispatch
 * reports about the top-k entries that name a lost expert (one the
 * layer's placement leaves out).  The data kernels need nothing of it:
 * proto_expert_id already routes such an entry to -1, so it is sent
 * nowhere and combine leaves it out, as on host ranks.  This kernel gives
 * the rest, from the ids and the layer's routing table on the engine's
 * stream, before the call's other kernels (so a placement switched on
 * the device by weight migration is the one the call routes by):
 *
 *   - the caller's lost mask (epx_dispatch_args_t.lost, device memory on
 *     device ranks, [T][K] uint8): proto_expert_lost of every entry;
 *   - this call's demand for each lost expert (the load statistics count
 *     it per logical expert, as the host executor's layout does): into
 *     device memory for the low-latency statistics kernels, and copied to
 *     host-mapped memory for throughput mode, where the host reads it
 *     with the layout's per-unit counts.
 *
 * One block: the counts are atomics on a zeroed array that the same
 * block then copies out, so no second kernel or memset is needed and the
 * launch is graph-capturable.  Integer counts: the order of the atomics
 * does not change them.
 */
#include <cuda_runtime.h>
#include <stdint.h>
#include "epx.h"
#include "proto/proto.h"
#include "cuda/kern_launch.h"

#define LOST_THREADS 512

__global__ void __launch_bounds__(LOST_THREADS)
epxk_lost_kernel(epxk_lost_t a)
{
    for (int e = threadIdx.x; e < a.E; e += blockDim.x)
        a.cnt[e] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < a.n; i += blockDim.x) {
        const int64_t e = proto_expert_raw(a.idx, a.idx64, 1, i, 0);
        const int l = proto_expert_lost(a.off, a.E, e);
        if (a.mask)
            a.mask[i] = (uint8_t)l;
        if (l)
            atomicAdd(&a.cnt[e], 1);
    }
    __syncthreads();
    if (!a.hcnt)
        return;
    for (int e = threadIdx.x; e < a.E; e += blockDim.x)
        a.hcnt[e] = a.cnt[e];
    /* before any later kernel of the stream publishes to the host (the
     * fused dispatch's counts word, which the host polls) */
    __threadfence_system();
}

extern "C" int epxk_lost_launch(const epxk_lost_t *a, void *stream)
{
    if (!a->cnt || !a->off || a->E <= 0 || a->n < 0)
        return (int)cudaErrorInvalidValue;
    epxk_lost_kernel<<<1, LOST_THREADS, 0, (cudaStream_t)stream>>>(*a);
    return (int)cudaGetLastError();
}

extern "C" int epxk_lost_preload(void)
{
    cudaFuncAttributes at;
    return (int)cudaFuncGetAttributes(&at, (const void *)epxk_lost_kernel);
}
