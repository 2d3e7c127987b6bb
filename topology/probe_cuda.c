/*
 * CUDA driver probe: each device's PCI address, name, memory and compute
 * capability, whether it can export memory as a fabric handle (what
 * multi-node NVLink needs), and which local devices can map each other's
 * memory (cuDeviceCanAccessPeer), through libcuda loaded at run time.
 *
 * No cuda.h: the few declarations used are below, with the values of
 * NVIDIA's public cuda.h (CUDA 12/13).  After a successful cuInit the
 * library stays loaded: the driver does not support being unloaded.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "topology/probe.h"

/* ---- from cuda.h */

typedef int cu_result_t;                         /* CUresult */
typedef int cu_device_t;                         /* CUdevice */

enum {
    CUDA_SUCCESS = 0,
    CU_DEVICE_ATTRIBUTE_PCI_BUS_ID = 33,
    CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID = 34,
    CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID = 50,
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75,
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76,
    CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_FABRIC_SUPPORTED = 128,
};

typedef struct cuda {
    void *lib;
    cu_result_t (*init)(unsigned);
    cu_result_t (*count)(int *);
    cu_result_t (*get)(cu_device_t *, int);
    cu_result_t (*attr)(int *, int, cu_device_t);
    cu_result_t (*name)(char *, int, cu_device_t);
    cu_result_t (*mem)(size_t *, cu_device_t);
    cu_result_t (*peer)(int *, cu_device_t, cu_device_t);
    cu_result_t (*error_string)(cu_result_t, const char **);
} cuda_t;

static const char *errstr(const cuda_t *a, cu_result_t r)
{
    const char *s = NULL;
    if (!a->error_string || a->error_string(r, &s) != CUDA_SUCCESS || !s)
        s = "error";
    return s;
}

static epx_status_t load(cuda_t *a, const char *lib)
{
    memset(a, 0, sizeof(*a));
    if (!(a->lib = dlopen(lib, RTLD_NOW | RTLD_LOCAL)))
        return epx__error(EPX_ERR_UNSUPPORTED, "topo: cuda: cannot load %s (%s)",
                          lib, dlerror());
    const char *missing = NULL;
    static const char *const need[] = {
        "cuInit", "cuDeviceGetCount", "cuDeviceGet", "cuDeviceGetAttribute",
    };
    void *fn[] = { &a->init, &a->count, &a->get, &a->attr };
    for (int i = 0; i < 4; i++)
        if (!epx__topo_dlsym(a->lib, fn[i], need[i]))
            missing = need[i];
    (void)epx__topo_dlsym(a->lib, &a->name, "cuDeviceGetName");
    (void)epx__topo_dlsym(a->lib, &a->mem, "cuDeviceTotalMem_v2");
    (void)epx__topo_dlsym(a->lib, &a->peer, "cuDeviceCanAccessPeer");
    (void)epx__topo_dlsym(a->lib, &a->error_string, "cuGetErrorString");
    if (missing) {
        dlclose(a->lib);
        return epx__error(EPX_ERR_UNSUPPORTED, "topo: cuda: %s has no %s", lib,
                          missing);
    }
    return EPX_OK;
}

static int attr(const cuda_t *a, int which, cu_device_t d, int dflt)
{
    int v;
    return a->attr(&v, which, d) == CUDA_SUCCESS ? v : dflt;
}

void epx__topo_cuda_info_free(topo_cuda_info_t *info)
{
    if (!info)
        return;
    free(info->dev);
    free(info->peer);
    memset(info, 0, sizeof(*info));
}

epx_status_t epx__topo_cuda_query(const char *lib, topo_cuda_info_t *info)
{
    cuda_t a;
    memset(info, 0, sizeof(*info));
    epx_status_t st = load(&a, lib);
    if (st != EPX_OK)
        return st;
    cu_result_t r = a.init(0);
    int n = 0;
    if (r != CUDA_SUCCESS) {
        st = epx__error(EPX_ERR_UNSUPPORTED, "topo: cuda: cuInit: %s (%d)",
                        errstr(&a, r), r);
        dlclose(a.lib);
        return st;
    }
    if ((r = a.count(&n)) != CUDA_SUCCESS || n <= 0)
        return epx__error(EPX_ERR_UNSUPPORTED, "topo: cuda: no device (%s)",
                          r == CUDA_SUCCESS ? "count is 0" : errstr(&a, r));
    info->dev = calloc((size_t)n, sizeof(*info->dev));
    info->peer = calloc((size_t)n * (size_t)n, 1);
    cu_device_t *dev = calloc((size_t)n, sizeof(*dev));
    if (!info->dev || !info->peer || !dev) {
        free(dev);
        epx__topo_cuda_info_free(info);
        return epx__error(EPX_ERR_NOMEM, "topo: out of memory");
    }
    for (int i = 0; i < n; i++) {
        topo_cuda_dev_t *x = &info->dev[info->ndev];
        if ((r = a.get(&dev[info->ndev], i)) != CUDA_SUCCESS) {
            EPX_LOG(EPX_LOG_INFO, "topo", -1, "cuda: device %d skipped: %s", i,
                    errstr(&a, r));
            continue;
        }
        cu_device_t d = dev[info->ndev];
        char pci[32];
        snprintf(pci, sizeof(pci), "%x:%x:%x.0",
                 attr(&a, CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID, d, 0),
                 attr(&a, CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, d, 0),
                 attr(&a, CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID, d, 0));
        if (epx__topo_pci_norm(pci, x->pci) != 0)
            continue;
        if (!a.name || a.name(x->name, (int)sizeof(x->name), d) != CUDA_SUCCESS)
            x->name[0] = 0;
        size_t mem = 0;
        if (a.mem && a.mem(&mem, d) == CUDA_SUCCESS)
            x->memory = mem;
        x->cc_major = attr(&a, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, d, -1);
        x->cc_minor = attr(&a, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, d, -1);
        x->fabric_handle =
            attr(&a, CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_FABRIC_SUPPORTED, d, -1);
        info->ndev++;
    }
    for (int i = 0; a.peer && i < info->ndev; i++)
        for (int j = 0; j < info->ndev; j++) {
            int can = 0;
            if (i != j && a.peer(&can, dev[i], dev[j]) == CUDA_SUCCESS)
                info->peer[i * info->ndev + j] = can != 0;
        }
    free(dev);
    return EPX_OK;
}

/* Architecture from the compute capability. */
static const char *cc_arch(int major, int minor)
{
    switch (major) {
    case 7: return minor >= 5 ? "turing" : "volta";
    case 8: return minor == 9 ? "ada" : "ampere";
    case 9: return "hopper";
    case 10: case 11: case 12: return "blackwell";
    default: return NULL;
    }
}

epx_status_t epx__topo_cuda_apply(epx_topo_t *t, int host,
                                  const topo_cuda_info_t *info)
{
    if (!t || host < 0 || host >= t->nobjs || t->objs[host].kind != EPX_TOPO_HOST)
        return epx__error(EPX_ERR_INVALID, "topo: cuda: %d is not a host", host);
    int *obj = calloc((size_t)(info->ndev > 0 ? info->ndev : 1), sizeof(int));
    if (!obj)
        return epx__error(EPX_ERR_NOMEM, "topo: out of memory");
    epx_status_t st = EPX_OK;
    for (int k = 0; k < info->ndev && st == EPX_OK; k++) {
        const topo_cuda_dev_t *x = &info->dev[k];
        int i = epx__topo_find_pci(t, host, EPX_TOPO_GPU, x->pci);
        if (i < 0) {
            char name[32];
            snprintf(name, sizeof(name), "gpu%d", epx__topo_count(t, host, EPX_TOPO_GPU));
            if ((i = epx__topo_add(t, EPX_TOPO_GPU, host, name)) < 0 ||
                !(epx__topo_objw(t, i)->pci = epx__topo_str(t, x->pci))) {
                st = epx__error(EPX_ERR_NOMEM, "topo: out of memory");
                break;
            }
        }
        obj[k] = i;
        epx_topo_obj_t *o = epx__topo_objw(t, i);
        const char *arch = cc_arch(x->cc_major, x->cc_minor);
        if ((!o->model && x->name[0] && !(o->model = epx__topo_str(t, x->name))) ||
            (!o->arch && arch && !(o->arch = epx__topo_str(t, arch))))
            st = epx__error(EPX_ERR_NOMEM, "topo: out of memory");
        if (!o->memory_bytes)
            o->memory_bytes = x->memory;
    }
    /* Peer access and fabric handles have no field in the map: logged. */
    for (int k = 0; k < info->ndev && st == EPX_OK; k++) {
        char peers[512] = "";
        size_t at = 0;
        for (int j = 0; j < info->ndev; j++)
            if (info->peer[k * info->ndev + j] && at < sizeof(peers)) {
                int w = snprintf(peers + at, sizeof(peers) - at, " %s",
                                 t->objs[obj[j]].name);
                at += w > 0 ? (size_t)w : 0;
            }
        const topo_cuda_dev_t *x = &info->dev[k];
        EPX_LOG(EPX_LOG_INFO, "topo", -1,
                "cuda: %s %s (%s), compute %d.%d, fabric handles %s, peers:%s",
                t->objs[obj[k]].name, x->pci, x->name, x->cc_major, x->cc_minor,
                x->fabric_handle > 0 ? "yes" : x->fabric_handle == 0 ? "no" : "?",
                peers[0] ? peers : " none");
    }
    free(obj);
    return st;
}

epx_status_t epx__topo_probe_cuda(epx_topo_t *t, int host)
{
    topo_cuda_info_t info;
    epx_status_t st = epx__topo_cuda_query("libcuda.so.1", &info);
    if (st != EPX_OK)
        return epx__topo_absent(st);
    st = epx__topo_cuda_apply(t, host, &info);
    epx__topo_cuda_info_free(&info);
    return st;
}
