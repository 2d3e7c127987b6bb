/* CUDA errors, device presence and the driver entry points. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include "cuda/cuda_int.h"
#include "util/util.h"

epx_status_t epx__cuda_err(cudaError_t e, const char *what)
{
    if (e == cudaSuccess)
        return EPX_OK;
    (void)cudaGetLastError();   /* clear a non-sticky error */
    return epx__error(EPX_ERR_SYSTEM, "%s: %s (%s)", what,
                      cudaGetErrorString(e), cudaGetErrorName(e));
}

epx_status_t epx__cuda_devices(int *count)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return epx__error(EPX_ERR_UNSUPPORTED, "no usable CUDA device: %s",
                          cudaGetErrorString(e));
    }
    if (n == 0)
        return epx__error(EPX_ERR_UNSUPPORTED, "no CUDA device");
    *count = n;
    return EPX_OK;
}

static epx_cudrv_t drv;
static epx_status_t drv_status = EPX_ERR_UNSUPPORTED;
static char drv_error[256];
static pthread_once_t drv_once = PTHREAD_ONCE_INIT;

/* The signature matching this header's typedefs: ask for the ABI of the
 * CUDA version the typedef names (cudaGetDriverEntryPointByVersion). */
static int drv_get(const char *name, void **fn, unsigned version)
{
    enum cudaDriverEntryPointQueryResult q;
    cudaError_t e = cudaGetDriverEntryPointByVersion(name, fn, version,
                                                     cudaEnableDefault, &q);
    if (e != cudaSuccess || q != cudaDriverEntryPointSuccess || !*fn) {
        (void)cudaGetLastError();
        snprintf(drv_error, sizeof(drv_error),
                 "CUDA driver entry point %s (ABI %u) not found: %s", name,
                 version, e != cudaSuccess ? cudaGetErrorString(e)
                                           : "not in this driver");
        return -1;
    }
    return 0;
}

static void drv_load(void)
{
    int n;
    if (epx__cuda_devices(&n) != EPX_OK) {
        snprintf(drv_error, sizeof(drv_error), "%s", epx_last_error());
        return;
    }
#define GET(field, sym, ver)                                                   \
    if (drv_get(#sym, (void **)&drv.field, ver))                               \
        return;
    GET(GetErrorString, cuGetErrorString, 6000)
    GET(DeviceGet, cuDeviceGet, 2000)
    GET(DeviceGetAttribute, cuDeviceGetAttribute, 2000)
    GET(MemCreate, cuMemCreate, 10020)
    GET(MemRelease, cuMemRelease, 10020)
    GET(MemAddressReserve, cuMemAddressReserve, 10020)
    GET(MemAddressFree, cuMemAddressFree, 10020)
    GET(MemMap, cuMemMap, 10020)
    GET(MemUnmap, cuMemUnmap, 10020)
    GET(MemSetAccess, cuMemSetAccess, 10020)
    GET(MemGetAllocationGranularity, cuMemGetAllocationGranularity, 10020)
    GET(MemExportToShareableHandle, cuMemExportToShareableHandle, 10020)
    GET(MemImportFromShareableHandle, cuMemImportFromShareableHandle, 10020)
#undef GET
    drv_status = EPX_OK;
}

epx_status_t epx__cudrv(const epx_cudrv_t **out)
{
    pthread_once(&drv_once, drv_load);
    if (drv_status != EPX_OK)
        return epx__error(drv_status, "%s", drv_error);
    *out = &drv;
    return EPX_OK;
}

epx_status_t epx__cu_err(CUresult r, epx_status_t st, const char *what)
{
    if (r == CUDA_SUCCESS)
        return EPX_OK;
    const char *s = NULL;
    if (drv.GetErrorString)
        drv.GetErrorString(r, &s);
    return epx__error(st, "%s: %s (CUresult %d)", what, s ? s : "?", (int)r);
}
