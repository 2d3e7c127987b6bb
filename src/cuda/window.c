/*
 * Windows of device memory shared with the peers.
 *
 * Each rank allocates its window, exports it, and every rank maps every
 * peer's window into its own address space:
 *   - a peer in the same process: its pointer as is (peer access enabled
 *     when it sits on another device);
 *   - fabric (cuMem with CU_MEM_HANDLE_TYPE_FABRIC): the 64-byte handle
 *     travels in the all-gather; works across nodes of one NVLink domain
 *     and needs an IMEX channel (/dev/nvidia-caps-imex-channels);
 *   - posix-fd (cuMem with CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR): the
 *     descriptor travels over a Unix socket (fdpass.c), same host only;
 *   - ipc (cudaMalloc + cudaIpcGetMemHandle), same host, when the device
 *     has no virtual memory management.
 * EPX_CUDA_WINDOW=auto probes: direct when every rank is in this process,
 * else fabric where the device supports it (falling back to posix-fd,
 * with a warning, when only same-host peers exist and the fabric export
 * fails), else posix-fd, else ipc.  Every rank learns each exporter's kind
 * from the all-gather, so mixed kinds import correctly.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "cuda/cuda_int.h"
#include "cuda/fdpass.h"
#include "core/comm.h"
#include "util/util.h"

typedef struct cuwin_info {
    char host[64];            /* hostname + boot id: same host */
    int64_t pid;
    int32_t device;           /* ordinal in its process */
    int32_t kind;             /* epx_cuwin_kind_t */
    char pci[32];             /* device PCI bus id: same GPU */
    uint64_t addr;            /* base in the owner's process */
    uint64_t size;            /* mapped size (granularity-rounded) */
    unsigned char handle[64]; /* fabric handle or cudaIpcMemHandle_t */
    int32_t status;           /* this rank's allocation status */
    int32_t pad;
} cuwin_info_t;

struct epx_cuwin {
    epx_comm_t *comm;
    int device;
    epx_cuwin_kind_t kind;
    size_t size;
    char *local;
    CUmemGenericAllocationHandle mem;   /* cuMem kinds */
    char **peer;              /* [R] mapped bases (peer[rank] = local) */
    unsigned char *how;       /* [R] 0 none, 1 same process, 2 ipc, 3 cuMem */
    CUmemGenericAllocationHandle *peer_mem; /* [R] imported (cuMem) */
    size_t *peer_size;        /* [R] */
    int device_ranks;
};

enum { HOW_NONE = 0, HOW_SAME = 1, HOW_IPC = 2, HOW_CUMEM = 3 };

const char *epx__cuwin_kind_str(epx_cuwin_kind_t k)
{
    switch (k) {
    case EPX_CUWIN_DIRECT: return "direct";
    case EPX_CUWIN_IPC: return "ipc";
    case EPX_CUWIN_POSIX_FD: return "posix-fd";
    case EPX_CUWIN_FABRIC: return "fabric";
    }
    return "?";
}

static void host_id(char *buf, size_t n)
{
    char h[40] = "", boot[40] = "";
    gethostname(h, sizeof(h) - 1);
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (f) {
        if (!fgets(boot, sizeof(boot), f))
            boot[0] = 0;
        fclose(f);
        boot[strcspn(boot, "\n")] = 0;
    }
    snprintf(buf, n, "%.30s/%.30s", h, boot);
}

static epx_status_t cumem_prop(const epx_cudrv_t *d, int dev,
                               CUmemAllocationHandleType types,
                               CUmemAllocationProp *prop, size_t *gran)
{
    memset(prop, 0, sizeof(*prop));
    prop->type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop->requestedHandleTypes = types;
    prop->location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop->location.id = dev;
    return epx__cu_err(d->MemGetAllocationGranularity(
                           gran, prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED),
                       EPX_ERR_SYSTEM, "cuMemGetAllocationGranularity");
}

/* Reserve, map and open read-write for `dev`. */
static epx_status_t cumem_map(const epx_cudrv_t *d, int dev,
                              CUmemGenericAllocationHandle h, size_t size,
                              char **out)
{
    CUdeviceptr p = 0;
    epx_status_t st = epx__cu_err(d->MemAddressReserve(&p, size, 0, 0, 0),
                                  EPX_ERR_NOMEM, "cuMemAddressReserve");
    if (st != EPX_OK)
        return st;
    st = epx__cu_err(d->MemMap(p, size, 0, h, 0), EPX_ERR_NOMEM, "cuMemMap");
    if (st != EPX_OK)
        goto free_va;
    CUmemAccessDesc a;
    memset(&a, 0, sizeof(a));
    a.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    a.location.id = dev;
    a.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    st = epx__cu_err(d->MemSetAccess(p, size, &a, 1), EPX_ERR_SYSTEM,
                     "cuMemSetAccess");
    if (st != EPX_OK)
        goto unmap;
    *out = (char *)(uintptr_t)p;
    return EPX_OK;
unmap:
    d->MemUnmap(p, size);
free_va:
    d->MemAddressFree(p, size);
    return st;
}

static void cumem_unmap(const epx_cudrv_t *d, char *p, size_t size)
{
    d->MemUnmap((CUdeviceptr)(uintptr_t)p, size);
    d->MemAddressFree((CUdeviceptr)(uintptr_t)p, size);
}

/* Allocate this rank's window as `kind`; fills info's addr/size/handle. */
static epx_status_t cuwin_alloc(epx_cuwin_t *w, const epx_cudrv_t *d,
                                epx_cuwin_kind_t kind, cuwin_info_t *in)
{
    if (kind == EPX_CUWIN_DIRECT || kind == EPX_CUWIN_IPC) {
        w->size = w->size ? w->size : 1;
        EPX_CUDA_TRY(cudaMalloc((void **)&w->local, w->size));
        if (kind == EPX_CUWIN_IPC) {
            cudaIpcMemHandle_t h;
            epx_status_t st = epx__cuda_err(
                cudaIpcGetMemHandle(&h, w->local), "cudaIpcGetMemHandle");
            if (st != EPX_OK) {
                cudaFree(w->local);
                w->local = NULL;
                return st;
            }
            memcpy(in->handle, &h, sizeof(h));
        }
    } else {
        CUmemAllocationHandleType t = kind == EPX_CUWIN_FABRIC
                                          ? CU_MEM_HANDLE_TYPE_FABRIC
                                          : CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
        CUmemAllocationProp prop;
        size_t gran = 0;
        epx_status_t st = cumem_prop(d, w->device, t, &prop, &gran);
        if (st != EPX_OK)
            return st;
        w->size = ((w->size ? w->size : 1) + gran - 1) / gran * gran;
        CUresult r = d->MemCreate(&w->mem, w->size, &prop, 0);
        if (r != CUDA_SUCCESS)
            return kind == EPX_CUWIN_FABRIC
                ? epx__cu_err(r, EPX_ERR_UNSUPPORTED,
                              "cuMemCreate with a fabric handle (needs an IMEX "
                              "channel: /dev/nvidia-caps-imex-channels/channel* "
                              "accessible, and the IMEX service running)")
                : epx__cu_err(r, EPX_ERR_NOMEM, "cuMemCreate");
        if (kind == EPX_CUWIN_FABRIC) {
            CUmemFabricHandle fh;
            r = d->MemExportToShareableHandle(&fh, w->mem,
                                              CU_MEM_HANDLE_TYPE_FABRIC, 0);
            if (r != CUDA_SUCCESS) {
                d->MemRelease(w->mem);
                return epx__cu_err(r, EPX_ERR_UNSUPPORTED,
                                   "cuMemExportToShareableHandle(FABRIC) "
                                   "failed: is an IMEX channel "
                                   "(/dev/nvidia-caps-imex-channels) "
                                   "available to this user?");
            }
            memcpy(in->handle, &fh, sizeof(fh));
        }
        st = cumem_map(d, w->device, w->mem, w->size, &w->local);
        if (st != EPX_OK) {
            d->MemRelease(w->mem);
            return st;
        }
    }
    in->addr = (uint64_t)(uintptr_t)w->local;
    in->size = w->size;
    /* Zeroed before the handle is published: peers store into the window
     * as soon as they have it, and a plain cudaMemset (legacy stream,
     * asynchronous, not ordered with the engine's non-blocking stream)
     * could land after their first stores. */
    cudaStream_t zs;
    EPX_CUDA_TRY(cudaStreamCreateWithFlags(&zs, cudaStreamNonBlocking));
    cudaError_t e = cudaMemsetAsync(w->local, 0, w->size, zs);
    if (e == cudaSuccess)
        e = cudaStreamSynchronize(zs);
    cudaStreamDestroy(zs);
    return epx__cuda_err(e, "cudaMemsetAsync");
}

static void cuwin_free_local(epx_cuwin_t *w, const epx_cudrv_t *d)
{
    if (!w->local)
        return;
    if (w->kind == EPX_CUWIN_DIRECT || w->kind == EPX_CUWIN_IPC) {
        cudaFree(w->local);
    } else {
        cumem_unmap(d, w->local, w->size);
        d->MemRelease(w->mem);
    }
    w->local = NULL;
}

static epx_status_t kind_from_setting(const char *s, int *kind)
{
    static const char *names[] = { "direct", "ipc", "posix-fd", "fabric" };
    if (strcmp(s, "auto") == 0) {
        *kind = -1;
        return EPX_OK;
    }
    for (int k = 0; k < 4; k++)
        if (strcmp(s, names[k]) == 0) {
            *kind = k;
            return EPX_OK;
        }
    return epx__error(EPX_ERR_INVALID, "EPX_CUDA_WINDOW=%s: expected auto, "
                      "direct, fabric, posix-fd or ipc", s);
}

epx_status_t epx__cuwin_create(epx_comm_t *comm, int device, size_t bytes,
                               epx_cuwin_t **out)
{
    const int R = comm->nranks, me = comm->rank;
    const epx_cudrv_t *d = NULL;
    epx_status_t st = epx__cudrv(&d);
    epx_cuwin_t *w = calloc(1, sizeof(*w));
    cuwin_info_t *all = calloc((size_t)R, sizeof(*all));
    int *fds = malloc(sizeof(int) * (size_t)R);
    unsigned char *to = calloc((size_t)R, 2);
    if (w)
        w->peer = calloc((size_t)R, sizeof(char *)),
        w->how = calloc((size_t)R, 1),
        w->peer_mem = calloc((size_t)R, sizeof(*w->peer_mem)),
        w->peer_size = calloc((size_t)R, sizeof(size_t));
    if (st == EPX_OK && (!w || !fds || !to || !w->peer || !w->how ||
                         !w->peer_mem || !w->peer_size))
        st = epx__error(EPX_ERR_NOMEM, "cuda window: out of memory");
    if (!all) {   /* cannot take part in round 1: the peers time out */
        st = epx__error(EPX_ERR_NOMEM, "cuda window: out of memory");
        goto fail_early;
    }
    unsigned char *from = to ? to + R : NULL;

    /* Round 1: where every rank is, and what its device can export; a
     * rank that failed above takes part with its status. */
    cuwin_info_t mine;
    memset(&mine, 0, sizeof(mine));
    host_id(mine.host, sizeof(mine.host));
    mine.pid = getpid();
    mine.device = device;
    if (cudaDeviceGetPCIBusId(mine.pci, sizeof(mine.pci), device) !=
        cudaSuccess)
        snprintf(mine.pci, sizeof(mine.pci), "?%d", device);
    int want = -1;
    if (st == EPX_OK)
        st = kind_from_setting(epx__cfg_str("EPX_CUDA_WINDOW"), &want);
    mine.status = st;
    epx_status_t gst = epx__comm_allgather(comm, &mine, all, sizeof(mine));
    if (gst != EPX_OK && st == EPX_OK)
        st = gst;
    if (st != EPX_OK)
        goto fail_early;
    w->comm = comm;
    w->device = device;
    w->size = bytes;
    int same_proc = 1, remote = 0;
    for (int r = 0; r < R; r++) {
        if (all[r].status != EPX_OK && st == EPX_OK)
            st = epx__error(EPX_ERR_PEER, "cuda window: rank %d refused", r);
        int same_host = strcmp(all[r].host, mine.host) == 0;
        remote |= !same_host;
        same_proc &= same_host && all[r].pid == mine.pid;
        w->device_ranks += same_host && strcmp(all[r].pci, mine.pci) == 0;
    }
    if (st != EPX_OK)
        goto fail_early;

    /* Choose and allocate. */
    CUdevice cud;
    int vmm = 0, fabric = 0, posix = 0;
    if (d->DeviceGet(&cud, device) == CUDA_SUCCESS) {
        d->DeviceGetAttribute(
            &vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, cud);
        d->DeviceGetAttribute(
            &fabric, CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_FABRIC_SUPPORTED, cud);
        d->DeviceGetAttribute(
            &posix,
            CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED,
            cud);
    }
    cuwin_info_t self = mine;
    if (want == EPX_CUWIN_DIRECT && !same_proc)
        st = epx__error(EPX_ERR_UNSUPPORTED, "EPX_CUDA_WINDOW=direct but "
                        "not every rank is in this process");
    else if (want == EPX_CUWIN_FABRIC && !fabric)
        st = epx__error(EPX_ERR_UNSUPPORTED, "EPX_CUDA_WINDOW=fabric but "
                        "device %d has no fabric handle support "
                        "(CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_FABRIC_SUPPORTED)",
                        device);
    else if (want == EPX_CUWIN_POSIX_FD && !(vmm && posix))
        st = epx__error(EPX_ERR_UNSUPPORTED, "EPX_CUDA_WINDOW=posix-fd but "
                        "device %d cannot export POSIX descriptors", device);
    else if (want >= 0) {
        w->kind = (epx_cuwin_kind_t)want;
        st = cuwin_alloc(w, d, w->kind, &self);
    } else if (same_proc) {
        w->kind = EPX_CUWIN_DIRECT;
        st = cuwin_alloc(w, d, w->kind, &self);
    } else {
        st = EPX_ERR_UNSUPPORTED;
        if (vmm && fabric) {
            w->kind = EPX_CUWIN_FABRIC;
            st = cuwin_alloc(w, d, w->kind, &self);
            if (st != EPX_OK && !remote)
                EPX_LOG(EPX_LOG_WARN, "cuda", me, "fabric window refused (%s); "
                        "using POSIX descriptors (same host only)",
                        epx_last_error());
        }
        if (st != EPX_OK && !remote) {
            w->kind = vmm && posix ? EPX_CUWIN_POSIX_FD : EPX_CUWIN_IPC;
            st = cuwin_alloc(w, d, w->kind, &self);
        } else if (st != EPX_OK && !fabric) {
            st = epx__error(EPX_ERR_UNSUPPORTED, "cuda window: peers on other "
                            "hosts need fabric handles (multi-node NVLink "
                            "with IMEX); device %d has none", device);
        }
    }
    self.kind = w->kind;
    self.status = st;

    /* Round 2: handles. */
    gst = epx__comm_allgather(comm, &self, all, sizeof(self));
    if (gst != EPX_OK) {
        st = gst;
        goto fail;
    }
    for (int r = 0; r < R && st == EPX_OK; r++)
        if (all[r].status != EPX_OK)
            st = epx__error(EPX_ERR_PEER, "cuda window: rank %d could not "
                            "allocate its window", r);
    if (st != EPX_OK)
        goto fail;

    /* Descriptors for posix-fd exporters on this host, other processes. */
    int any_fd = 0;
    for (int r = 0; r < R; r++) {
        int other = strcmp(all[r].host, mine.host) == 0 &&
                    all[r].pid != mine.pid;
        to[r] = other && w->kind == EPX_CUWIN_POSIX_FD;
        from[r] = other && all[r].kind == EPX_CUWIN_POSIX_FD;
        any_fd |= all[r].kind == EPX_CUWIN_POSIX_FD;
    }
    int my_fd = -1;
    if (w->kind == EPX_CUWIN_POSIX_FD) {
        CUresult r = d->MemExportToShareableHandle(
            &my_fd, w->mem, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
        st = epx__cu_err(r, EPX_ERR_SYSTEM,
                         "cuMemExportToShareableHandle(POSIX_FILE_DESCRIPTOR)");
    }
    for (int r = 0; r < R; r++)
        fds[r] = -1;
    if (any_fd) {
        /* Collective: every rank takes part even after a local failure. */
        char tag[24];
        snprintf(tag, sizeof(tag), "cuwin%u", comm->next_win);
        if (st != EPX_OK)
            memset(to, 0, (size_t)R);
        epx_status_t fst = epx__fd_exchange(comm, tag, my_fd, to, from, fds);
        if (st == EPX_OK)
            st = fst;
    }
    if (my_fd >= 0)
        close(my_fd);
    comm->next_win++;

    /* Map every peer. */
    for (int r = 0; r < R && st == EPX_OK; r++) {
        if (r == me) {
            w->peer[r] = w->local;
            w->how[r] = HOW_SAME;
            continue;
        }
        const cuwin_info_t *p = &all[r];
        if (strcmp(p->host, mine.host) == 0 && p->pid == mine.pid) {
            if (p->device != device) {
                cudaError_t e = cudaDeviceEnablePeerAccess(p->device, 0);
                if (e == cudaErrorPeerAccessAlreadyEnabled)
                    (void)cudaGetLastError();
                else
                    st = epx__cuda_err(e, "cudaDeviceEnablePeerAccess");
                if (st == EPX_OK && p->kind >= EPX_CUWIN_POSIX_FD)
                    st = epx__error(EPX_ERR_UNSUPPORTED, "cuda window: rank %d "
                                    "in this process on another device uses "
                                    "a cuMem window; set EPX_CUDA_WINDOW", r);
            }
            w->peer[r] = (char *)(uintptr_t)p->addr;
            w->how[r] = HOW_SAME;
        } else if (p->kind == EPX_CUWIN_IPC) {
            cudaIpcMemHandle_t h;
            memcpy(&h, p->handle, sizeof(h));
            st = epx__cuda_err(cudaIpcOpenMemHandle((void **)&w->peer[r], h,
                                                    cudaIpcMemLazyEnablePeerAccess),
                               "cudaIpcOpenMemHandle");
            w->how[r] = st == EPX_OK ? HOW_IPC : HOW_NONE;
        } else if (p->kind == EPX_CUWIN_POSIX_FD || p->kind == EPX_CUWIN_FABRIC) {
            CUmemFabricHandle fh;
            void *os;
            CUmemAllocationHandleType t;
            if (p->kind == EPX_CUWIN_FABRIC) {
                memcpy(&fh, p->handle, sizeof(fh));
                os = &fh;
                t = CU_MEM_HANDLE_TYPE_FABRIC;
            } else {
                os = (void *)(uintptr_t)fds[r];
                t = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
            }
            CUresult cr = d->MemImportFromShareableHandle(&w->peer_mem[r], os, t);
            if (cr != CUDA_SUCCESS) {
                st = epx__cu_err(cr, EPX_ERR_SYSTEM,
                                 p->kind == EPX_CUWIN_FABRIC
                                     ? "cuMemImportFromShareableHandle(FABRIC): "
                                       "exporter and importer need the same "
                                       "IMEX channel"
                                     : "cuMemImportFromShareableHandle(POSIX_FD)");
                break;
            }
            st = cumem_map(d, device, w->peer_mem[r], p->size, &w->peer[r]);
            if (st != EPX_OK) {
                d->MemRelease(w->peer_mem[r]);
                break;
            }
            w->peer_size[r] = p->size;
            w->how[r] = HOW_CUMEM;
        } else {
            st = epx__error(EPX_ERR_UNSUPPORTED, "cuda window: rank %d is in "
                            "another process with a direct window", r);
        }
    }
    for (int r = 0; r < R; r++)
        if (fds[r] >= 0)
            close(fds[r]);

    /* Agree: nobody writes into a window before every rank mapped all. */
    int32_t ok = st, *oks = (int32_t *)all;
    gst = epx__comm_allgather(comm, &ok, oks, sizeof(ok));
    if (gst != EPX_OK && st == EPX_OK)
        st = gst;
    for (int r = 0; r < R && st == EPX_OK; r++)
        if (oks[r] != EPX_OK)
            st = epx__error(EPX_ERR_PEER, "cuda window: rank %d could not map "
                            "the windows", r);
    if (st != EPX_OK)
        goto fail;
    EPX_LOG(EPX_LOG_INFO, "cuda", me, "window %zu bytes on device %d: %s "
            "(%d ranks on this device)", w->size, device,
            epx__cuwin_kind_str(w->kind), w->device_ranks);
    free(all);
    free(fds);
    free(to);
    *out = w;
    return EPX_OK;

fail:
    epx__cuwin_destroy(w);
    free(all);
    free(fds);
    free(to);
    return st;
fail_early:
    if (w) {
        free(w->peer);
        free(w->how);
        free(w->peer_mem);
        free(w->peer_size);
    }
    free(w);
    free(all);
    free(fds);
    free(to);
    return st;
}

void epx__cuwin_destroy(epx_cuwin_t *w)
{
    if (!w)
        return;
    const epx_cudrv_t *d = NULL;
    if (epx__cudrv(&d) == EPX_OK) {
        for (int r = 0; r < w->comm->nranks; r++) {
            if (w->how[r] == HOW_IPC)
                cudaIpcCloseMemHandle(w->peer[r]);
            else if (w->how[r] == HOW_CUMEM) {
                cumem_unmap(d, w->peer[r], w->peer_size[r]);
                d->MemRelease(w->peer_mem[r]);
            }
        }
        cuwin_free_local(w, d);
    }
    free(w->peer);
    free(w->how);
    free(w->peer_mem);
    free(w->peer_size);
    free(w);
}

char *const *epx__cuwin_peers(const epx_cuwin_t *w)
{
    return w->peer;
}

epx_cuwin_kind_t epx__cuwin_kind(const epx_cuwin_t *w)
{
    return w->kind;
}

int epx__cuwin_device_ranks(const epx_cuwin_t *w)
{
    return w->device_ranks;
}
