/*
 * Throughput dispatch over NCCL: the count block each rank sends and the
 * check of those it received (src/cuda/README.md, "Cached dispatch" and
 * "Refusals").  Every call, cached, uncached or refused, sends the same
 * block, header and counts, in one grouped exchange (nccl.c), so ranks
 * that disagree on the call still pair sends and receives of one size;
 * the verdict (proto.h proto_cached_agree_all) then says whether the
 * rows move, the same on every rank.
 */
#include <cuda_runtime.h>
#include <stdint.h>
#include "epx.h"
#include "proto/proto.h"
#include "cuda/kern_launch.h"
#include "cuda/kern_sync.cuh"

/* One block, after the layout (or the cached check): this rank's block
 * into the staging's count region (a region the NCCL backend's staging
 * does not otherwise use), by call parity: the header (proto_cnt_header;
 * the host's layer and placement words 0), then the counts of the call's
 * layout (none for a refused call). */
__global__ void epxk_nccl_head_kernel(proto_geom_t g, epxk_call_t c)
{
    int32_t *blk = (int32_t *)(c.stage + g.off_cnt) +
                   proto_cnt_index(&g, c.parity, g.rank) - PROTO_CNT_HDR;
    if (threadIdx.x == 0) {
        proto_cnt_header(blk, (int32_t)c.seq, c.cached, c.refused, c.lay_seq,
                         c.info[EPXK_INFO_ROUTE] != 0);
        blk[PROTO_CNT_LAYER] = 0;
        blk[PROTO_CNT_PLACE] = 0;
    }
    for (int u = threadIdx.x; u < g.R + g.E; u += blockDim.x)
        blk[PROTO_CNT_HDR + u] = c.refused ? 0 : c.mycnt[u];
}

/* One block, after the exchange: this rank's verdict over every source's
 * header into info's agreement (the windows backend's offsets kernel
 * does the same as the rows arrive). */
__global__ void epxk_nccl_agree_kernel(proto_geom_t g, epxk_call_t c)
{
    if (threadIdx.x != 0)
        return;
    const int32_t *blk = (const int32_t *)(c.peers[g.rank] + g.off_cnt) +
                         proto_cnt_index(&g, c.parity, 0) - PROTO_CNT_HDR;
    const int a = proto_cached_agree_all(&g, blk, (int32_t)c.seq, c.cached,
                                         c.lay_seq);
    if (a < c.info[EPXK_INFO_AGREE])
        c.info[EPXK_INFO_AGREE] = a;
}

extern "C" int epxk_nccl_launch(int which, const proto_geom_t *g,
                                const epxk_call_t *c, int blocks, void *stream)
{
    (void)blocks;
    cudaStream_t st = (cudaStream_t)stream;
    switch (which) {
    case EPXK_NCCL_HEAD:
        epxk_nccl_head_kernel<<<1, 128, 0, st>>>(*g, *c);
        break;
    case EPXK_NCCL_AGREE:
        epxk_nccl_agree_kernel<<<1, 32, 0, st>>>(*g, *c);
        break;
    default:
        return (int)cudaErrorInvalidValue;
    }
    return (int)cudaGetLastError();
}

extern "C" int epxk_nccl_preload(void)
{
    const void *k[] = { (const void *)epxk_nccl_head_kernel,
                        (const void *)epxk_nccl_agree_kernel };
    return epxk_load_kernels(k, sizeof(k) / sizeof(k[0]));
}
