/* Built without CUDA: device ranks answer EPX_ERR_UNSUPPORTED. */
#include "epx/cuda.h"
#include "cuda/gpu.h"
#include "util/util.h"

#define NOCUDA(what)                                                           \
    epx__error(EPX_ERR_UNSUPPORTED, "%s: libepx was built without CUDA "       \
               "(configure found no nvcc, or --without-cuda)", what)

epx_status_t epx_cuda_devices(int *count)
{
    (void)count;
    return NOCUDA("epx_cuda_devices");
}

epx_status_t gpu_moe_create(epx_comm_t *comm, const epx_moe_params_t *params,
                            gpu_moe_t **gpu)
{
    (void)comm, (void)params, (void)gpu;
    return NOCUDA("moe: a device rank (epx_moe_params_t.device)");
}

/* Unreachable without an engine from gpu_moe_create. */
void gpu_moe_destroy(gpu_moe_t *gpu) { (void)gpu; }
int gpu_moe_num_sms(const gpu_moe_t *gpu) { (void)gpu; return 0; }
const char *gpu_moe_backend(const gpu_moe_t *gpu) { (void)gpu; return ""; }

epx_status_t gpu_dispatch_send(gpu_moe_t *gpu, const epx_dispatch_args_t *a,
                               void *stream, uint64_t *call)
{
    (void)gpu, (void)a, (void)stream, (void)call;
    return NOCUDA("dispatch_send");
}

epx_status_t gpu_dispatch_recv(gpu_moe_t *gpu, uint64_t call, void *stream,
                               epx_recv_t *recv)
{
    (void)gpu, (void)call, (void)stream, (void)recv;
    return NOCUDA("dispatch_recv");
}

const int32_t *gpu_dispatch_ecount(const gpu_moe_t *gpu)
{
    (void)gpu;
    return NULL;
}

epx_status_t gpu_combine_send(gpu_moe_t *gpu, uint64_t call,
                              const epx_combine_args_t *a, void *stream)
{
    (void)gpu, (void)call, (void)a, (void)stream;
    return NOCUDA("combine_send");
}

epx_status_t gpu_combine_recv(gpu_moe_t *gpu, uint64_t call, epx_tensor_t *out,
                              void *stream)
{
    (void)gpu, (void)call, (void)out, (void)stream;
    return NOCUDA("combine_recv");
}

int gpu_moe_busy(const gpu_moe_t *gpu)
{
    (void)gpu;
    return 0;
}

epx_status_t gpu_moe_set_placement(gpu_moe_t *gpu, int layer,
                                   const int32_t *phy2log, const int32_t *pick,
                                   const int32_t *off, const int32_t *rep,
                                   int round_robin)
{
    (void)gpu, (void)layer, (void)phy2log, (void)pick, (void)off, (void)rep;
    (void)round_robin;
    return NOCUDA("set_placement");
}

void gpu_call_release(gpu_moe_t *gpu, uint64_t call)
{
    (void)gpu, (void)call;
}

epx_status_t gpu_moe_check(gpu_moe_t *gpu, int64_t *dropped)
{
    (void)gpu, (void)dropped;
    return NOCUDA("moe check");
}
