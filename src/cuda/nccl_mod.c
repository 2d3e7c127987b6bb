/* The NCCL module's identity and ops (core/module.h, nccl_ex.h). */
#include "cuda/nccl_ex.h"

const char epx__module_name[] = "nccl";

static const epx_nccl_module_ops_t ops = {
    .create = epx__nccl_create,
    .destroy = epx__nccl_destroy,
    .adopted = epx__nccl_adopted,
    .counts = epx__nccl_counts,
    .dispatch = epx__nccl_dispatch,
    .combine = epx__nccl_combine,
    .p2p = epx__nccl_p2p,
    .dispatch_em = epx__nccl_dispatch_em,
    .abort = epx__nccl_abort,
};

const void *epx__module_ops(void);
const void *epx__module_ops(void) { return &ops; }
