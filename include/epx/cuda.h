/*
 * epx on CUDA devices: what is truly CUDA-only.  Device ranks are engines
 * of include/epx.h created with epx_moe_params_t.device set to a CUDA
 * ordinal ("Device ranks" there); dispatch, combine, handles and
 * epx_moe_check are the host API's.  No CUDA types: streams are
 * cudaStream_t passed as void *.  Without CUDA in libepx every function
 * returns EPX_ERR_UNSUPPORTED (or 0 / "").
 */
#ifndef EPX_CUDA_H
#define EPX_CUDA_H

#include <epx.h>

#ifdef __cplusplus
extern "C" {
#endif
#if defined(__GNUC__) && !defined(EPX_NO_VISIBILITY)
#pragma GCC visibility push(default)
#endif

/* EPX_OK and the number of devices, or EPX_ERR_UNSUPPORTED (not built with
 * CUDA, no driver, no device) with the reason in epx_last_error(). */
epx_status_t epx_cuda_devices(int *count);

/* SMs (blocks) the data kernels of a device rank use; 0 for a host rank. */
int epx_cuda_moe_num_sms(const epx_moe_t *moe);
/* How a device rank exchanges: "windows:direct", "windows:posix-fd",
 * "windows:fabric", "windows:ipc", "nccl" or "nccl:adopted"; "" for a
 * host rank. */
const char *epx_cuda_moe_backend(const epx_moe_t *moe);

#if defined(__GNUC__) && !defined(EPX_NO_VISIBILITY)
#pragma GCC visibility pop
#endif
#ifdef __cplusplus
}
#endif
#endif /* EPX_CUDA_H */
