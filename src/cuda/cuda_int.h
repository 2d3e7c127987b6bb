/*
 * GPU layer internals: CUDA errors as epx errors, the driver API resolved
 * at run time, and windows of device memory shared with the peers.
 */
#ifndef EPX_CUDA_INT_H
#define EPX_CUDA_INT_H

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>
#include "epx.h"

/* EPX_OK, or the CUDA runtime error as EPX_ERR_SYSTEM naming `what`. */
epx_status_t epx__cuda_err(cudaError_t e, const char *what);
#define EPX_CUDA_TRY(call)                                                     \
    do {                                                                       \
        epx_status_t st_ = epx__cuda_err((call), #call);                       \
        if (st_ != EPX_OK)                                                     \
            return st_;                                                        \
    } while (0)

/* Is there a usable device?  EPX_OK with the count, or
 * EPX_ERR_UNSUPPORTED naming why not (no driver, no device). */
epx_status_t epx__cuda_devices(int *count);

/* Driver entry points, resolved through the runtime
 * (cudaGetDriverEntryPointByVersion), so libepx does not link libcuda and
 * loads on a machine without a driver. */
typedef struct epx_cudrv {
    PFN_cuGetErrorString_v6000 GetErrorString;
    PFN_cuDeviceGet_v2000 DeviceGet;
    PFN_cuDeviceGetAttribute_v2000 DeviceGetAttribute;
    PFN_cuMemCreate_v10020 MemCreate;
    PFN_cuMemRelease_v10020 MemRelease;
    PFN_cuMemAddressReserve_v10020 MemAddressReserve;
    PFN_cuMemAddressFree_v10020 MemAddressFree;
    PFN_cuMemMap_v10020 MemMap;
    PFN_cuMemUnmap_v10020 MemUnmap;
    PFN_cuMemSetAccess_v10020 MemSetAccess;
    PFN_cuMemGetAllocationGranularity_v10020 MemGetAllocationGranularity;
    PFN_cuMemExportToShareableHandle_v10020 MemExportToShareableHandle;
    PFN_cuMemImportFromShareableHandle_v10020 MemImportFromShareableHandle;
} epx_cudrv_t;

epx_status_t epx__cudrv(const epx_cudrv_t **drv);
/* EPX_OK, or the driver error as `st` naming `what`. */
epx_status_t epx__cu_err(CUresult r, epx_status_t st, const char *what);

/* ---- windows */

typedef enum epx_cuwin_kind {
    EPX_CUWIN_DIRECT = 0,   /* cudaMalloc; every peer in this process */
    EPX_CUWIN_IPC = 1,      /* cudaMalloc + cudaIpcGetMemHandle */
    EPX_CUWIN_POSIX_FD = 2, /* cuMem, POSIX descriptor over a Unix socket */
    EPX_CUWIN_FABRIC = 3    /* cuMem fabric handle (multi-node NVLink, IMEX) */
} epx_cuwin_kind_t;

typedef struct epx_cuwin epx_cuwin_t;

/* Collective: `bytes` of zeroed device memory on `device` per rank, and
 * every peer's window mapped here.  The kind is chosen by probing (or
 * EPX_CUDA_WINDOW); peers in this process are used directly. */
epx_status_t epx__cuwin_create(epx_comm_t *comm, int device, size_t bytes,
                               epx_cuwin_t **win);
void epx__cuwin_destroy(epx_cuwin_t *win);
/* [nranks] bases, valid in this process (host array). */
char *const *epx__cuwin_peers(const epx_cuwin_t *win);
epx_cuwin_kind_t epx__cuwin_kind(const epx_cuwin_t *win);
const char *epx__cuwin_kind_str(epx_cuwin_kind_t kind);
/* Ranks sharing this rank's device (this one included). */
int epx__cuwin_device_ranks(const epx_cuwin_t *win);

#endif /* EPX_CUDA_INT_H */
