/*
 * libepx's side of the GPU executor: the CUDA module (epx_cuda.so, which
 * needs libcudart) is loaded by the first device rank or
 * epx_cuda_devices; a build or machine without it answers
 * EPX_ERR_UNSUPPORTED saying what is missing.  Every other call has an
 * engine from gpu_moe_create, so the module is there.
 */
#include <stdio.h>
#include "epx/cuda.h"
#include "cuda/gpu_module.h"
#include "core/module.h"
#include "util/util.h"

static const epx_cuda_module_ops_t *mod;

static epx_status_t cuda_load(const char *what)
{
    const void *ops;
    if (epx__module_load("cuda", &ops) != EPX_OK) {
        char why[1024];  /* the message is rewritten in its own buffer */
        snprintf(why, sizeof(why), "%s", epx_last_error());
        return epx__error(EPX_ERR_UNSUPPORTED, "%s: no GPU executor: %s",
                          what, why);
    }
    mod = ops;
    return EPX_OK;
}

epx_status_t epx_cuda_devices(int *count)
{
    epx_status_t st = cuda_load("epx_cuda_devices");
    return st == EPX_OK ? mod->devices(count) : st;
}

epx_status_t gpu_moe_create(epx_comm_t *comm, const epx_moe_params_t *params,
                            gpu_moe_t **gpu)
{
    epx_status_t st = cuda_load("moe: a device rank (epx_moe_params_t.device)");
    return st == EPX_OK ? mod->moe_create(comm, params, gpu) : st;
}

/* NULL (a host rank's engine) is fine here, as it was for the module. */
void gpu_moe_destroy(gpu_moe_t *gpu)
{
    if (gpu)
        mod->moe_destroy(gpu);
}

int gpu_moe_num_sms(const gpu_moe_t *gpu)
{
    return gpu ? mod->moe_num_sms(gpu) : 0;
}

const char *gpu_moe_backend(const gpu_moe_t *gpu)
{
    return gpu ? mod->moe_backend(gpu) : "";
}

epx_status_t gpu_dispatch_send(gpu_moe_t *gpu, const epx_dispatch_args_t *a,
                               void *stream, int *lay, uint64_t *call)
{
    return mod->dispatch_send(gpu, a, stream, lay, call);
}

epx_status_t gpu_dispatch_refuse(gpu_moe_t *gpu, void *stream,
                                 epx_status_t why)
{
    return mod->dispatch_refuse(gpu, stream, why);
}

epx_status_t gpu_dispatch_poll(gpu_moe_t *gpu, uint64_t call, epx_recv_t *recv,
                               uint8_t *ready, int *num_ready)
{
    return mod->dispatch_poll(gpu, call, recv, ready, num_ready);
}

void gpu_layout_release(gpu_moe_t *gpu, int lay)
{
    mod->layout_release(gpu, lay);
}

epx_status_t gpu_dispatch_recv(gpu_moe_t *gpu, uint64_t call, void *stream,
                               epx_recv_t *recv)
{
    return mod->dispatch_recv(gpu, call, stream, recv);
}

const int32_t *gpu_dispatch_ecount(const gpu_moe_t *gpu)
{
    return mod->dispatch_ecount(gpu);
}

epx_status_t gpu_combine_send(gpu_moe_t *gpu, uint64_t call,
                              const epx_combine_args_t *a, void *stream)
{
    return mod->combine_send(gpu, call, a, stream);
}

epx_status_t gpu_combine_recv(gpu_moe_t *gpu, uint64_t call, epx_tensor_t *out,
                              void *stream)
{
    return mod->combine_recv(gpu, call, out, stream);
}

int gpu_moe_busy(const gpu_moe_t *gpu) { return mod->moe_busy(gpu); }

epx_status_t gpu_moe_set_placement(gpu_moe_t *gpu, int layer,
                                   const int32_t *phy2log, const int32_t *pick,
                                   const int32_t *off, const int32_t *rep,
                                   int round_robin)
{
    return mod->moe_set_placement(gpu, layer, phy2log, pick, off, rep,
                                  round_robin);
}

void gpu_call_release(gpu_moe_t *gpu, uint64_t call)
{
    mod->call_release(gpu, call);
}

epx_status_t gpu_moe_check(gpu_moe_t *gpu, int64_t *dropped)
{
    return mod->moe_check(gpu, dropped);
}

int gpu_moe_layer_busy(const gpu_moe_t *gpu, int layer)
{
    return mod->moe_layer_busy(gpu, layer);
}

epx_status_t gpu_mig_check(gpu_moe_t *gpu, const void *base, size_t bytes)
{
    return mod->mig_check(gpu, base, bytes);
}

epx_status_t gpu_mig_reserve(gpu_moe_t *gpu, size_t bytes)
{
    return mod->mig_reserve(gpu, bytes);
}

epx_status_t gpu_mig_quiet(gpu_moe_t *gpu) { return mod->mig_quiet(gpu); }

epx_status_t gpu_mig_send(gpu_moe_t *gpu, const void *weights, size_t bytes,
                          const moe_mig_xfer_t *x, int n)
{
    return mod->mig_send(gpu, weights, bytes, x, n);
}

epx_status_t gpu_mig_wait(gpu_moe_t *gpu) { return mod->mig_wait(gpu); }

epx_status_t gpu_mig_land(gpu_moe_t *gpu, int layer, void *weights,
                          size_t bytes, const int32_t *land, int nland,
                          const int32_t *phy2log, const int32_t *pick,
                          const int32_t *off, const int32_t *rep,
                          int round_robin)
{
    return mod->mig_land(gpu, layer, weights, bytes, land, nland, phy2log,
                         pick, off, rep, round_robin);
}

epx_status_t gpu_moe_ll_stats(gpu_moe_t *gpu, gpu_stats_fn each, void *ctx,
                              int64_t *lost)
{
    return mod->moe_ll_stats(gpu, each, ctx, lost);
}

epx_status_t gpu_moe_cross_bytes(gpu_moe_t *gpu, int64_t *dispatch,
                                 int64_t *combine)
{
    return mod->moe_cross_bytes(gpu, dispatch, combine);
}
