/* Built without CUDA: the GPU executor's API answers EPX_ERR_UNSUPPORTED. */
#include "epx/cuda.h"
#include "util/util.h"

#define NOCUDA(what)                                                           \
    epx__error(EPX_ERR_UNSUPPORTED, "%s: libepx was built without CUDA "       \
               "(configure found no nvcc, or --without-cuda)", what)

epx_status_t epx_cuda_devices(int *count)
{
    (void)count;
    return NOCUDA("epx_cuda_devices");
}

epx_status_t epx_cuda_moe_create(epx_comm_t *comm,
                                 const epx_moe_params_t *params,
                                 const epx_cuda_params_t *cparams,
                                 epx_cuda_moe_t **moe)
{
    (void)comm, (void)params, (void)cparams, (void)moe;
    return NOCUDA("epx_cuda_moe_create");
}

void epx_cuda_moe_destroy(epx_cuda_moe_t *moe)
{
    (void)moe;
}

int epx_cuda_moe_num_sms(const epx_cuda_moe_t *moe)
{
    (void)moe;
    return 0;
}

const char *epx_cuda_moe_backend(const epx_cuda_moe_t *moe)
{
    (void)moe;
    return "";
}

epx_status_t epx_cuda_dispatch_send(epx_cuda_moe_t *moe,
                                    const epx_dispatch_args_t *args,
                                    void *stream)
{
    (void)moe, (void)args, (void)stream;
    return NOCUDA("epx_cuda_dispatch_send");
}

epx_status_t epx_cuda_dispatch_recv(epx_cuda_moe_t *moe, void *stream,
                                    epx_recv_t *recv)
{
    (void)moe, (void)stream, (void)recv;
    return NOCUDA("epx_cuda_dispatch_recv");
}

epx_status_t epx_cuda_combine_send(epx_cuda_moe_t *moe,
                                   const epx_combine_args_t *args,
                                   void *stream)
{
    (void)moe, (void)args, (void)stream;
    return NOCUDA("epx_cuda_combine_send");
}

epx_status_t epx_cuda_combine_recv(epx_cuda_moe_t *moe, epx_tensor_t *out,
                                   void *stream)
{
    (void)moe, (void)out, (void)stream;
    return NOCUDA("epx_cuda_combine_recv");
}

epx_status_t epx_cuda_moe_check(epx_cuda_moe_t *moe, int64_t *dropped)
{
    (void)moe, (void)dropped;
    return NOCUDA("epx_cuda_moe_check");
}

epx_status_t epx_cuda_moe_ll_check(epx_cuda_moe_t *moe, int64_t *dropped)
{
    (void)moe, (void)dropped;
    return NOCUDA("epx_cuda_moe_ll_check");
}
