/*
 * Hierarchical two-hop on device ranks (EPX_MOE_HIERARCHICAL, windows and
 * NCCL backends): what hier.c gives the engine (set up from engine.c, the
 * call's steps from ht.c).  The domains, regions and positions are
 * proto/hier.h's (over NCCL the messages proto/hier_nccl.h's), the
 * kernels kern_hier.cu's.
 */
#ifndef EPX_CUDA_HIER_INT_H
#define EPX_CUDA_HIER_INT_H

#include <cuda_runtime.h>
#include "epx.h"
#include "cuda/kern_launch.h"
#include "cuda/nccl_ex.h"

typedef struct gpu_hier gpu_hier_t;

/* Collective (the communicator's topology): the domains, which must be
 * contiguous blocks of one size (EPX_ERR_UNSUPPORTED on every rank
 * otherwise), and the regions after the geometry's end. */
epx_status_t gpu_hier_create(epx_comm_t *comm, const proto_geom_t *g,
                             gpu_hier_t **out);
/* The window's size with the hierarchical regions. */
size_t gpu_hier_total(const gpu_hier_t *h);
/* On the engine's device and stream, before the window's collectives:
 * the record counters (zero), the kernels loaded. */
epx_status_t gpu_hier_setup(gpu_hier_t *h, cudaStream_t st);
void gpu_hier_destroy(gpu_hier_t *h);
/* Bytes put across domains since creation (epx_moe_cross_domain_bytes),
 * the kernels' counters after the work queued on st: synchronises. */
epx_status_t gpu_hier_cross_bytes(const gpu_hier_t *h, cudaStream_t st,
                                  int64_t *dispatch, int64_t *combine);
/* The NCCL backend (proto/hier_nccl.h): its stagings, on the engine's
 * device and stream, after the communicator is made. */
epx_status_t gpu_hier_nccl(gpu_hier_t *h, epx_nccl_t *nc,
                           const proto_geom_t *g, cudaStream_t st);
/* Windows: in place of pack (after offsets, before recv).  NCCL: after
 * the count matrix's exchange, on every rank and every call (a refused
 * one's too): the records, the count blocks' exchange and read-back. */
epx_status_t gpu_hier_dispatch(const gpu_hier_t *h, const proto_geom_t *g,
                               const epxk_call_t *c, int blocks,
                               cudaStream_t st);
/* NCCL, after the read-back of an agreed call (cnt: its count matrix,
 * [R][cnt_ints], on the host; local: this rank's receive buffer): hop 1,
 * hop 2 and the member's scatter, before the recv kernel. */
epx_status_t gpu_hier_nccl_recv(gpu_hier_t *h, const proto_geom_t *g,
                                const epxk_call_t *c, char *local,
                                const int32_t *cnt, int blocks,
                                cudaStream_t st);
/* combine_send's put and chain (NCCL: the partials' and the chain's
 * exchanges too; local as above); combine_recv's out (NCCL: the finished
 * sums landed first). */
epx_status_t gpu_hier_combine_send(gpu_hier_t *h, const proto_geom_t *g,
                                   const epxk_call_t *c, char *local,
                                   int blocks, cudaStream_t st);
epx_status_t gpu_hier_combine_recv(gpu_hier_t *h, const proto_geom_t *g,
                                   const epxk_call_t *c, int blocks,
                                   cudaStream_t st);

#endif /* EPX_CUDA_HIER_INT_H */
