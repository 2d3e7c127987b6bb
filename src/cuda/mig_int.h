/*
 * What the weight migration (migrate.c) and the engine (engine.c) give
 * each other inside the CUDA module.  The engine keeps a migration state
 * per engine (created by the first gpu_mig_reserve) and frees it at
 * destroy; the migration borrows the engine's comm, device, backend,
 * stream and routing tables.
 */
#ifndef EPX_CUDA_MIG_INT_H
#define EPX_CUDA_MIG_INT_H

#include "cuda/cuda_int.h"
#include "cuda/gpu.h"
#include "cuda/nccl_ex.h"

typedef struct gpu_mig gpu_mig_t;

/* engine.c: the engine as the migration sees it (filled whenever m is
 * not NULL), and its usability check (EPX_ERR_STATE once broken) with
 * cudaSetDevice. */
typedef struct gpu_eng {
    epx_comm_t *comm;
    int device;
    int windows;               /* windows backend, else NCCL */
    epx_nccl_t *nccl;
    cudaStream_t st;           /* the engine's stream */
    gpu_mig_t **mig;           /* the engine's migration state */
} gpu_eng_t;
epx_status_t gpu_moe_eng(gpu_moe_t *m, const char *what, gpu_eng_t *e);
/* A failure that leaves the ranks out of step: the engine is unusable. */
epx_status_t gpu_moe_fail(gpu_moe_t *m, epx_status_t st);
/* gpu_moe_set_placement's upload ordered on `on`, without its checks or
 * waits: the caller knows no call of the layer is in flight and that no
 * earlier upload of the layer is still reading its pinned copy. */
epx_status_t gpu_moe_route_async(gpu_moe_t *m, int layer,
                                 const int32_t *phy2log, const int32_t *pick,
                                 const int32_t *off, const int32_t *rep,
                                 int round_robin, cudaStream_t on);

/* migrate.c, from gpu_moe_destroy: wait for the migration stream (before
 * the engine's closing barrier: no transfer into a peer's staging is
 * left), then free (after it).  NULL is fine. */
void gpu_mig_sync(gpu_mig_t *g);
void gpu_mig_destroy(gpu_mig_t *g);

#endif /* EPX_CUDA_MIG_INT_H */
