/* The CUDA module's identity and ops (core/module.h, gpu_module.h). */
#include "epx/cuda.h"
#include "cuda/gpu_module.h"

const char epx__module_name[] = "cuda";

static const epx_cuda_module_ops_t ops = {
    .devices = epx_cuda_devices,
    .moe_create = gpu_moe_create,
    .moe_destroy = gpu_moe_destroy,
    .moe_num_sms = gpu_moe_num_sms,
    .moe_backend = gpu_moe_backend,
    .dispatch_send = gpu_dispatch_send,
    .dispatch_refuse = gpu_dispatch_refuse,
    .dispatch_recv = gpu_dispatch_recv,
    .dispatch_poll = gpu_dispatch_poll,
    .layout_release = gpu_layout_release,
    .dispatch_ecount = gpu_dispatch_ecount,
    .combine_send = gpu_combine_send,
    .combine_recv = gpu_combine_recv,
    .call_release = gpu_call_release,
    .moe_busy = gpu_moe_busy,
    .moe_set_placement = gpu_moe_set_placement,
    .moe_check = gpu_moe_check,
    .moe_layer_busy = gpu_moe_layer_busy,
    .mig_check = gpu_mig_check,
    .mig_reserve = gpu_mig_reserve,
    .mig_quiet = gpu_mig_quiet,
    .mig_send = gpu_mig_send,
    .mig_wait = gpu_mig_wait,
    .mig_land = gpu_mig_land,
    .moe_ll_stats = gpu_moe_ll_stats,
    .moe_cross_bytes = gpu_moe_cross_bytes,
};

const void *epx__module_ops(void);
const void *epx__module_ops(void) { return &ops; }
