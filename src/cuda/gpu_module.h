/* What the CUDA module (epx_cuda.so) gives libepx: gpu.h's calls and
 * epx_cuda_devices, which gpu_load.c forwards here once loaded; and what
 * the NCCL module (epx_nccl.so) gives the CUDA module: nccl_ex.h's calls,
 * forwarded by nccl_load.c. */
#ifndef EPX_CUDA_GPU_MODULE_H
#define EPX_CUDA_GPU_MODULE_H

#include "cuda/gpu.h"

typedef struct epx_cuda_module_ops {
    epx_status_t (*devices)(int *count);
    epx_status_t (*moe_create)(epx_comm_t *comm, const epx_moe_params_t *params,
                               gpu_moe_t **gpu);
    void (*moe_destroy)(gpu_moe_t *gpu);
    int (*moe_num_sms)(const gpu_moe_t *gpu);
    const char *(*moe_backend)(const gpu_moe_t *gpu);
    epx_status_t (*dispatch_refuse)(gpu_moe_t *gpu, void *stream,
                                    epx_status_t why);
    epx_status_t (*dispatch_send)(gpu_moe_t *gpu, const epx_dispatch_args_t *a,
                                  void *stream, int *lay, uint64_t *call);
    epx_status_t (*dispatch_recv)(gpu_moe_t *gpu, uint64_t call, void *stream,
                                  epx_recv_t *recv);
    epx_status_t (*dispatch_poll)(gpu_moe_t *gpu, uint64_t call,
                                  epx_recv_t *recv, uint8_t *ready,
                                  int *num_ready);
    void (*layout_release)(gpu_moe_t *gpu, int lay);
    const int32_t *(*dispatch_ecount)(const gpu_moe_t *gpu);
    epx_status_t (*combine_send)(gpu_moe_t *gpu, uint64_t call,
                                 const epx_combine_args_t *a, void *stream);
    epx_status_t (*combine_recv)(gpu_moe_t *gpu, uint64_t call,
                                 epx_tensor_t *out, void *stream);
    void (*call_release)(gpu_moe_t *gpu, uint64_t call);
    int (*moe_busy)(const gpu_moe_t *gpu);
    epx_status_t (*moe_set_placement)(gpu_moe_t *gpu, int layer,
                                      const int32_t *phy2log,
                                      const int32_t *pick, const int32_t *off,
                                      const int32_t *rep, int round_robin);
    epx_status_t (*moe_check)(gpu_moe_t *gpu, int64_t *dropped);
    int (*moe_layer_busy)(const gpu_moe_t *gpu, int layer);
    epx_status_t (*mig_check)(gpu_moe_t *gpu, const void *base, size_t bytes);
    epx_status_t (*mig_reserve)(gpu_moe_t *gpu, size_t bytes);
    epx_status_t (*mig_quiet)(gpu_moe_t *gpu);
    epx_status_t (*mig_send)(gpu_moe_t *gpu, const void *weights,
                             size_t bytes, const moe_mig_xfer_t *x, int n);
    epx_status_t (*mig_wait)(gpu_moe_t *gpu);
    epx_status_t (*mig_land)(gpu_moe_t *gpu, int layer, void *weights,
                             size_t bytes, const int32_t *land, int nland,
                             const int32_t *phy2log, const int32_t *pick,
                             const int32_t *off, const int32_t *rep,
                             int round_robin);
    epx_status_t (*moe_ll_stats)(gpu_moe_t *gpu, gpu_stats_fn each, void *ctx,
                                 int64_t *lost);
    epx_status_t (*moe_cross_bytes)(gpu_moe_t *gpu, int64_t *dispatch,
                                    int64_t *combine);
} epx_cuda_module_ops_t;

#endif /* EPX_CUDA_GPU_MODULE_H */
