/*
 * NVML probe: GPUs, their NVLinks (state, version, remote device and its
 * PCI address, speed), the GPU fabric (cluster UUID, clique, state, health)
 * and the platform (tray, slot), through libnvidia-ml loaded at run time.
 *
 * No nvml.h: the few types and constants used are declared below with the
 * values of NVIDIA's public nvml.h (NVML API version 12 and 13; the same
 * sizes, offsets and constants as NVIDIA's nvidia-ml-py 13 bindings give),
 * with static asserts where a layout matters.  Every symbol is looked up
 * on its own so an older driver that lacks one loses only what that symbol
 * reports.
 */
#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "topology/probe.h"

/* ---- from nvml.h */

typedef int nvml_ret_t;                          /* nvmlReturn_t */
typedef struct nvml_device *nvml_dev_t;          /* nvmlDevice_t */

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_FEATURE_ENABLED = 1,                    /* nvmlEnableState_t */
    NVML_NVLINK_DEVICE_TYPE_GPU = 0,             /* nvmlIntNvLinkDeviceType_t */
    NVML_NVLINK_DEVICE_TYPE_SWITCH = 2,
    NVML_NVLINK_DEVICE_TYPE_UNKNOWN = 0xff,
    NVML_FI_DEV_NVLINK_SPEED_MBPS_COMMON = 90,   /* field id */
    NVML_VALUE_TYPE_UNSIGNED_INT = 1,
    NVML_VALUE_TYPE_UNSIGNED_LONG_LONG = 3,
    NVML_DEVICE_NAME_V2_BUFFER_SIZE = 96,
};

/* nvmlDeviceArchitecture_t */
static const char *const nvml_arch[] = {
    [5] = "volta", [6] = "turing", [7] = "ampere", [8] = "ada",
    [9] = "hopper", [10] = "blackwell",
};

typedef struct nvml_pci {                        /* nvmlPciInfo_t */
    char bus_id_legacy[16];
    unsigned domain, bus, device, pci_device_id, pci_subsystem_id;
    char bus_id[32];
} nvml_pci_t;

typedef struct nvml_memory {                     /* nvmlMemory_t (v1) */
    unsigned long long total, free, used;
} nvml_memory_t;

typedef struct nvml_field {                      /* nvmlFieldValue_t */
    unsigned field_id, scope_id;
    long long timestamp, latency_us;
    unsigned value_type;
    nvml_ret_t ret;
    union { double d; unsigned ui; unsigned long ul; unsigned long long ull;
            long long sll; int si; unsigned short us; } value;
} nvml_field_t;

/* nvmlGpuFabricInfo_v2_t and _v3_t.  The first word is the struct version
 * NVML_STRUCT_VERSION(GpuFabricInfo, v) = sizeof(struct) | v << 24: it
 * tells NVML how many bytes it may write.  v2 is 36 bytes (the one-byte
 * state is padded to 4 before healthMask); v3 appends the one-byte
 * healthSummary, padded to 40.  A driver that predates v3 answers
 * NVML_ERROR_ARGUMENT_VERSION_MISMATCH to a v3 request, and the v2 request
 * follows; passing the v3 tag with a v2-sized struct would let the driver
 * write past it, hence two separate structs. */
typedef struct nvml_fabric_v2 {
    unsigned version;
    unsigned char cluster_uuid[16];              /* NVML_GPU_FABRIC_UUID_LEN */
    nvml_ret_t status;
    unsigned clique_id;
    unsigned char state;                         /* nvmlGpuFabricState_t */
    unsigned health_mask;
} nvml_fabric_v2_t;

typedef struct nvml_fabric_v3 {
    unsigned version;
    unsigned char cluster_uuid[16];
    nvml_ret_t status;
    unsigned clique_id;
    unsigned char state;
    unsigned health_mask;
    unsigned char health_summary;
} nvml_fabric_v3_t;

/* nvmlPlatformInfo_v2_t; v1 has the same layout (rackGuid,
 * chassisPhysicalSlotNumber, computeSlotIndex, nodeIndex renamed). */
typedef struct nvml_platform {
    unsigned version;
    unsigned char ib_guid[16];
    unsigned char chassis_serial[16];
    unsigned char slot_number, tray_index, host_id, peer_type, module_id;
} nvml_platform_t;

#define NVML_VERSION(type, v) ((unsigned)sizeof(type) | ((unsigned)(v) << 24))

_Static_assert(sizeof(nvml_pci_t) == 68, "nvmlPciInfo_t layout");
_Static_assert(sizeof(nvml_field_t) == 40, "nvmlFieldValue_t layout");
_Static_assert(offsetof(nvml_fabric_v2_t, health_mask) == 32 &&
               NVML_VERSION(nvml_fabric_v2_t, 2) == 0x02000024u,
               "nvmlGpuFabricInfo_v2 is 0x02000024 in nvml.h");
_Static_assert(NVML_VERSION(nvml_fabric_v3_t, 3) == 0x03000028u,
               "nvmlGpuFabricInfo_v3 is 0x03000028 in nvml.h");
_Static_assert(sizeof(nvml_platform_t) == 44, "nvmlPlatformInfo_v2_t layout");

/* Health mask fields: shift and (two- or four-bit) mask, from the
 * NVML_GPU_FABRIC_HEALTH_MASK_* macros of the newest headers (NVML 13; the
 * CUDA 12.4 header gave the degraded-bandwidth field a width of 0x11,
 * later ones 0x3).  Values: 0 not supported, then TRUE/FALSE or the named
 * states. */
static const struct {
    const char *name;
    unsigned shift, mask;
    const char *const val[9];
} health_fields[] = {
    { "degraded-bw", 0, 0x3, { "n/a", "yes", "no" } },
    { "route-recovery", 2, 0x3, { "n/a", "yes", "no" } },
    { "route-unhealthy", 4, 0x3, { "n/a", "yes", "no" } },
    { "access-timeout-recovery", 6, 0x3, { "n/a", "yes", "no" } },
    { "config", 8, 0xf, { "n/a", "ok", "incorrect-sysguid",
                          "incorrect-chassis-sn", "no-partition",
                          "insufficient-nvlinks", "incompatible-gpu-fw",
                          "invalid-location", "gpu-state-invalid" } },
    { "partition-assigned", 12, 0x3, { "n/a", "yes", "no" } },
    { "fabric-manager", 14, 0x3, { "n/a", "connected", "disconnected" } },
};

const char *epx__topo_fabric_state_str(int state)
{
    static const char *const s[] = { "not-supported", "not-started",
                                     "in-progress", "completed" };
    return state >= 0 && state <= 3 ? s[state] : "unknown";
}

void epx__topo_fabric_health_str(unsigned mask, int summary, char *buf,
                                 size_t len)
{
    static const char *const sum[] = { "n/a", "healthy", "unhealthy",
                                       "limited-capacity" };
    size_t at = 0;
    buf[0] = 0;
    for (size_t i = 0; i < sizeof(health_fields) / sizeof(health_fields[0]); i++) {
        unsigned v = (mask >> health_fields[i].shift) & health_fields[i].mask;
        const char *name = v < 9 ? health_fields[i].val[v] : NULL;
        int w = name ? snprintf(buf + at, len - at, "%s%s=%s", at ? " " : "",
                                health_fields[i].name, name)
                     : snprintf(buf + at, len - at, "%s%s=%u", at ? " " : "",
                                health_fields[i].name, v);
        if (w < 0 || (size_t)w >= len - at)
            return;
        at += (size_t)w;
    }
    if (summary >= 0)
        snprintf(buf + at, len - at, " summary=%s",
                 summary <= 3 ? sum[summary] : "unknown");
}

/* ---- the library */

typedef struct nvml {
    void *lib;
    nvml_ret_t (*init)(void);
    nvml_ret_t (*shutdown)(void);
    const char *(*error_string)(nvml_ret_t);
    nvml_ret_t (*count)(unsigned *);
    nvml_ret_t (*handle)(unsigned, nvml_dev_t *);
    nvml_ret_t (*pci)(nvml_dev_t, nvml_pci_t *);
    /* optional */
    nvml_ret_t (*name)(nvml_dev_t, char *, unsigned);
    nvml_ret_t (*memory)(nvml_dev_t, nvml_memory_t *);
    nvml_ret_t (*arch)(nvml_dev_t, unsigned *);
    nvml_ret_t (*link_state)(nvml_dev_t, unsigned, int *);
    nvml_ret_t (*link_version)(nvml_dev_t, unsigned, unsigned *);
    nvml_ret_t (*link_remote_type)(nvml_dev_t, unsigned, int *);
    nvml_ret_t (*link_remote_pci)(nvml_dev_t, unsigned, nvml_pci_t *);
    nvml_ret_t (*fields)(nvml_dev_t, int, nvml_field_t *);
    nvml_ret_t (*fabric)(nvml_dev_t, void *);
    nvml_ret_t (*platform)(nvml_dev_t, nvml_platform_t *);
} nvml_t;

static const char *errstr(const nvml_t *a, nvml_ret_t r)
{
    const char *s = a->error_string ? a->error_string(r) : NULL;
    return s ? s : "error";
}

static epx_status_t load(nvml_t *a, const char *lib)
{
    memset(a, 0, sizeof(*a));
    if (!(a->lib = dlopen(lib, RTLD_NOW | RTLD_LOCAL)))
        return epx__error(EPX_ERR_UNSUPPORTED, "topo: nvml: cannot load %s (%s)",
                          lib, dlerror());
    const char *missing = NULL;
    static const char *const need[] = {
        "nvmlInit_v2", "nvmlShutdown", "nvmlDeviceGetCount_v2",
        "nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetPciInfo_v3",
    };
    void *fn[] = { &a->init, &a->shutdown, &a->count, &a->handle, &a->pci };
    for (int i = 0; i < 5; i++)
        if (!epx__topo_dlsym(a->lib, fn[i], need[i]))
            missing = need[i];
    (void)epx__topo_dlsym(a->lib, &a->error_string, "nvmlErrorString");
    (void)epx__topo_dlsym(a->lib, &a->name, "nvmlDeviceGetName");
    (void)epx__topo_dlsym(a->lib, &a->memory, "nvmlDeviceGetMemoryInfo");
    (void)epx__topo_dlsym(a->lib, &a->arch, "nvmlDeviceGetArchitecture");
    (void)epx__topo_dlsym(a->lib, &a->link_state, "nvmlDeviceGetNvLinkState");
    (void)epx__topo_dlsym(a->lib, &a->link_version, "nvmlDeviceGetNvLinkVersion");
    (void)epx__topo_dlsym(a->lib, &a->link_remote_type, "nvmlDeviceGetNvLinkRemoteDeviceType");
    (void)epx__topo_dlsym(a->lib, &a->link_remote_pci, "nvmlDeviceGetNvLinkRemotePciInfo_v2");
    (void)epx__topo_dlsym(a->lib, &a->fields, "nvmlDeviceGetFieldValues");
    (void)epx__topo_dlsym(a->lib, &a->fabric, "nvmlDeviceGetGpuFabricInfoV");
    (void)epx__topo_dlsym(a->lib, &a->platform, "nvmlDeviceGetPlatformInfo");
    if (missing) {
        dlclose(a->lib);
        a->lib = NULL;
        return epx__error(EPX_ERR_UNSUPPORTED, "topo: nvml: %s has no %s",
                          lib, missing);
    }
    return EPX_OK;
}

static void read_links(const nvml_t *a, nvml_dev_t d, topo_nvml_gpu_t *g)
{
    if (!a->link_state)
        return;
    for (unsigned l = 0; l < EPX_NVML_MAX_LINKS; l++) {
        topo_nvml_link_t *k = &g->link[l];
        int state = 0;
        k->remote_type = -1;
        if (a->link_state(d, l, &state) != NVML_SUCCESS)
            continue;                    /* no such link on this GPU */
        g->nlinks = (int)l + 1;
        k->active = state == NVML_FEATURE_ENABLED;
        if (!k->active)
            continue;
        if (a->link_version)
            a->link_version(d, l, &k->version);
        int type = NVML_NVLINK_DEVICE_TYPE_UNKNOWN;
        if (a->link_remote_type && a->link_remote_type(d, l, &type) == NVML_SUCCESS &&
            type != NVML_NVLINK_DEVICE_TYPE_UNKNOWN)
            k->remote_type = type;
        nvml_pci_t rp;
        memset(&rp, 0, sizeof(rp));
        if (a->link_remote_pci && a->link_remote_pci(d, l, &rp) == NVML_SUCCESS &&
            epx__topo_pci_norm(rp.bus_id, k->remote_pci) != 0)
            k->remote_pci[0] = 0;
    }
    if (a->fields) {
        nvml_field_t f;
        memset(&f, 0, sizeof(f));
        f.field_id = NVML_FI_DEV_NVLINK_SPEED_MBPS_COMMON;
        if (a->fields(d, 1, &f) == NVML_SUCCESS && f.ret == NVML_SUCCESS)
            g->link_gbs = (f.value_type == NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                               ? (double)f.value.ull : (double)f.value.ui) / 1000;
    }
}

static void read_fabric(const nvml_t *a, nvml_dev_t d, topo_nvml_gpu_t *g)
{
    g->fabric_state = -1;
    g->health_summary = -1;
    if (!a->fabric)
        return;
    nvml_fabric_v3_t v3;
    memset(&v3, 0, sizeof(v3));
    v3.version = NVML_VERSION(nvml_fabric_v3_t, 3);
    nvml_ret_t r = a->fabric(d, &v3);
    if (r == NVML_SUCCESS) {
        g->fabric_version = 3;
        g->health_summary = v3.health_summary;
    } else if (r == NVML_ERROR_ARGUMENT_VERSION_MISMATCH) {
        nvml_fabric_v2_t v2;
        memset(&v2, 0, sizeof(v2));
        v2.version = NVML_VERSION(nvml_fabric_v2_t, 2);
        if ((r = a->fabric(d, &v2)) == NVML_SUCCESS) {
            g->fabric_version = 2;
            memcpy(v3.cluster_uuid, v2.cluster_uuid, sizeof(v3.cluster_uuid));
            v3.status = v2.status;
            v3.clique_id = v2.clique_id;
            v3.state = v2.state;
            v3.health_mask = v2.health_mask;
        }
    }
    if (r != NVML_SUCCESS) {
        if (r != NVML_ERROR_NOT_SUPPORTED)
            EPX_LOG(EPX_LOG_INFO, "topo", -1, "nvml: %s: fabric info: %s",
                    g->pci, errstr(a, r));
        g->fabric_state = TOPO_FABRIC_NOT_SUPPORTED;
        return;
    }
    memcpy(g->cluster_uuid, v3.cluster_uuid, sizeof(g->cluster_uuid));
    g->fabric_status = v3.status;
    g->clique = v3.clique_id;
    g->fabric_state = v3.state;
    g->health_mask = v3.health_mask;
}

static void read_platform(const nvml_t *a, nvml_dev_t d, topo_nvml_gpu_t *g)
{
    if (!a->platform)
        return;
    nvml_platform_t p;
    nvml_ret_t r = NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    for (unsigned v = 2; v >= 1 && r == NVML_ERROR_ARGUMENT_VERSION_MISMATCH; v--) {
        memset(&p, 0, sizeof(p));
        p.version = NVML_VERSION(nvml_platform_t, v);
        r = a->platform(d, &p);
    }
    if (r != NVML_SUCCESS)
        return;
    g->has_platform = 1;
    g->slot = p.slot_number;
    g->tray = p.tray_index;
    g->host_id = p.host_id;
    g->module_id = p.module_id;
    for (int i = 0; i < 16; i++)
        snprintf(g->chassis + 2 * i, 3, "%02x", p.chassis_serial[i]);
}

epx_status_t epx__topo_nvml_query(const char *lib, topo_nvml_gpu_t **gpus,
                                  int *n)
{
    nvml_t a;
    *gpus = NULL;
    *n = 0;
    epx_status_t st = load(&a, lib);
    if (st != EPX_OK)
        return st;
    nvml_ret_t r = a.init();
    unsigned count = 0;
    if (r != NVML_SUCCESS) {
        st = epx__error(EPX_ERR_UNSUPPORTED, "topo: nvml: nvmlInit: %s",
                        errstr(&a, r));
        goto unload;
    }
    if ((r = a.count(&count)) != NVML_SUCCESS || count == 0) {
        st = epx__error(EPX_ERR_UNSUPPORTED, "topo: nvml: no GPU (%s)",
                        r == NVML_SUCCESS ? "count is 0" : errstr(&a, r));
        goto shut;
    }
    topo_nvml_gpu_t *g = calloc(count, sizeof(*g));
    if (!g) {
        st = epx__error(EPX_ERR_NOMEM, "topo: out of memory");
        goto shut;
    }
    int k = 0;
    for (unsigned i = 0; i < count; i++) {
        nvml_dev_t d;
        nvml_pci_t pci;
        memset(&pci, 0, sizeof(pci));
        if ((r = a.handle(i, &d)) != NVML_SUCCESS ||
            (r = a.pci(d, &pci)) != NVML_SUCCESS) {
            EPX_LOG(EPX_LOG_INFO, "topo", -1, "nvml: GPU %u skipped: %s", i,
                    errstr(&a, r));
            continue;
        }
        topo_nvml_gpu_t *x = &g[k];
        x->index = (int)i;
        x->slot = x->tray = x->host_id = x->module_id = -1;
        if (epx__topo_pci_norm(pci.bus_id, x->pci) != 0) {
            EPX_LOG(EPX_LOG_INFO, "topo", -1, "nvml: GPU %u: bus id '%s' unreadable",
                    i, pci.bus_id);
            continue;
        }
        if (a.name && a.name(d, x->name, sizeof(x->name)) != NVML_SUCCESS)
            x->name[0] = 0;
        nvml_memory_t mem;
        if (a.memory && a.memory(d, &mem) == NVML_SUCCESS)
            x->memory = mem.total;
        unsigned arch;
        if (a.arch && a.arch(d, &arch) == NVML_SUCCESS &&
            arch < sizeof(nvml_arch) / sizeof(nvml_arch[0]))
            x->arch = nvml_arch[arch];
        read_links(&a, d, x);
        read_fabric(&a, d, x);
        read_platform(&a, d, x);
        k++;
    }
    if (k == 0) {
        free(g);
        st = epx__error(EPX_ERR_UNSUPPORTED, "topo: nvml: no GPU could be read");
        goto shut;
    }
    *gpus = g;
    *n = k;
shut:
    a.shutdown();
unload:
    dlclose(a.lib);
    return st;
}

/* ---- into the map */

/* Union-find over the records, for NVLink domains without a fabric. */
static int root_of(int *up, int i)
{
    while (up[i] != i)
        i = up[i] = up[up[i]];
    return i;
}

static void join(int *up, int a, int b)
{
    a = root_of(up, a);
    b = root_of(up, b);
    if (a != b)
        up[a > b ? a : b] = a < b ? a : b;
}

static int active_links(const topo_nvml_gpu_t *g)
{
    int n = 0;
    for (int l = 0; l < g->nlinks; l++)
        n += g->link[l].active;
    return n;
}

static int uuid_set(const unsigned char *u)
{
    for (int i = 0; i < 16; i++)
        if (u[i])
            return 1;
    return 0;
}

static double per_link_gbs(const epx_topo_obj_t *o, const topo_nvml_gpu_t *g)
{
    double bw = epx__topo_nvlink_link_gbs(o->arch);
    return bw > 0 ? bw : g->link_gbs;
}

/* GPUs of the records as map objects, matched by bus id or added. */
static epx_status_t apply_gpus(epx_topo_t *t, int host,
                               const topo_nvml_gpu_t *g, int n, int *obj)
{
    for (int k = 0; k < n; k++) {
        int i = epx__topo_find_pci(t, host, EPX_TOPO_GPU, g[k].pci);
        if (i < 0) {
            char name[32];
            snprintf(name, sizeof(name), "gpu%d", epx__topo_count(t, host, EPX_TOPO_GPU));
            if ((i = epx__topo_add(t, EPX_TOPO_GPU, host, name)) < 0 ||
                !(epx__topo_objw(t, i)->pci = epx__topo_str(t, g[k].pci)))
                return epx__error(EPX_ERR_NOMEM, "topo: out of memory");
        }
        obj[k] = i;
        epx_topo_obj_t *o = epx__topo_objw(t, i);
        o->os_index = g[k].index;           /* NVML's (nvidia-smi's) index */
        if (g[k].name[0] && !(o->model = epx__topo_str(t, g[k].name)))
            return epx__error(EPX_ERR_NOMEM, "topo: out of memory");
        if (g[k].memory)
            o->memory_bytes = g[k].memory;
        const char *arch = g[k].arch ? g[k].arch : epx__topo_arch_from_name(g[k].name);
        if (arch && !(o->arch = epx__topo_str(t, arch)))
            return epx__error(EPX_ERR_NOMEM, "topo: out of memory");
        o->nvlinks = active_links(&g[k]);
        o->nvlink_gbs = o->nvlinks * per_link_gbs(o, &g[k]);
        /* The map's tray is the compute tray of the rack (NVML's trayIndex,
         * from 0), its slot the GPU's place in the tray: NVML's moduleId
         * counts from 1.  NVML's slotNumber is the chassis slot, switch
         * trays included: logged only. */
        if (g[k].has_platform) {
            o->tray = g[k].tray;
            o->slot = g[k].module_id >= 1 ? g[k].module_id - 1 : -1;
            if (g[k].chassis[0] && !(o->chassis = epx__topo_str(t, g[k].chassis)))
                return epx__error(EPX_ERR_NOMEM, "topo: out of memory");
        }
    }
    return EPX_OK;
}

/* NVLink links: to a local GPU (once per pair) or a local NVSwitch, one
 * link per remote device with the number of NVLinks to it. */
static epx_status_t apply_links(epx_topo_t *t, int host,
                                const topo_nvml_gpu_t *g, int n, const int *obj)
{
    for (int k = 0; k < n; k++) {
        const topo_nvml_link_t *L = g[k].link;
        double per = per_link_gbs(&t->objs[obj[k]], &g[k]);
        for (int l = 0; l < g[k].nlinks; l++) {
            if (!L[l].active || !L[l].remote_pci[0])
                continue;
            int seen = 0, count = 0;
            for (int m = 0; m < g[k].nlinks; m++)
                if (L[m].active && !strcmp(L[m].remote_pci, L[l].remote_pci)) {
                    seen |= m < l;
                    count++;
                }
            if (seen)
                continue;
            int peer = -1;
            if (L[l].remote_type == 0) {
                peer = epx__topo_find_pci(t, host, EPX_TOPO_GPU, L[l].remote_pci);
                if (peer >= 0 && peer < obj[k])
                    continue;                  /* the peer's record adds it */
            } else if (L[l].remote_type == 2) {
                peer = epx__topo_find_pci(t, host, EPX_TOPO_NVSWITCH, L[l].remote_pci);
            }
            if (peer < 0 || peer == obj[k])
                continue;          /* a switch of another tray, an IBM NPU */
            epx_status_t st = epx__topo_link(t, obj[k], peer, EPX_LINK_NVLINK,
                                             count, count * per, 0);
            if (st != EPX_OK)
                return st;
        }
    }
    return EPX_OK;
}

/* Switch link key: the switch's bus id; links whose switch NVML could not
 * name share one key (one NVSwitch fabric per host). */
static const char *switch_key(const topo_nvml_link_t *x)
{
    return x->remote_pci[0] ? x->remote_pci : "?";
}

/* Which records share NVLinks: directly, or through a common switch. */
static void join_linked(const topo_nvml_gpu_t *g, int n, int *up)
{
    for (int a = 0; a < n; a++)
        for (int l = 0; l < g[a].nlinks; l++) {
            const topo_nvml_link_t *x = &g[a].link[l];
            if (!x->active)
                continue;
            for (int b = 0; b < n; b++) {
                if (x->remote_type == 0 && !strcmp(x->remote_pci, g[b].pci))
                    join(up, a, b);
                for (int m = 0; x->remote_type == 2 && m < g[b].nlinks; m++)
                    if (g[b].link[m].active && g[b].link[m].remote_type == 2 &&
                        !strcmp(switch_key(&g[b].link[m]), switch_key(x)))
                        join(up, a, b);
            }
        }
}

enum { DOM_NONE, DOM_FABRIC, DOM_PENDING, DOM_LOCAL };

static int domain_source(const topo_nvml_gpu_t *x)
{
    int state = x->fabric_state, ok = x->fabric_status == NVML_SUCCESS;
    if (state == TOPO_FABRIC_COMPLETED && ok && uuid_set(x->cluster_uuid))
        return DOM_FABRIC;
    if (state == TOPO_FABRIC_NOT_STARTED || state == TOPO_FABRIC_IN_PROGRESS ||
        (state == TOPO_FABRIC_COMPLETED && !ok))
        return DOM_PENDING;
    /* no fabric, or one that names no cluster: local NVLinks */
    return active_links(x) > 0 ? DOM_LOCAL : DOM_NONE;
}

/* The NVLink domain of each GPU: the fabric's cluster when its registration
 * completed; none while it is pending or failed (NVLink peers are not
 * reachable then); without a fabric, two or more GPUs joined by local
 * NVLinks, directly or through common switches, named after the host and
 * the first NVML index of the group. */
static epx_status_t apply_domains(epx_topo_t *t, int host,
                                  const topo_nvml_gpu_t *g, int n, const int *obj)
{
    int *up = malloc(sizeof(int) * 2 * (size_t)n);
    if (!up)
        return epx__error(EPX_ERR_NOMEM, "topo: out of memory");
    int *size = up + n;
    for (int k = 0; k < n; k++) {
        up[k] = k;
        size[k] = 0;
    }
    join_linked(g, n, up);
    for (int k = 0; k < n; k++)
        size[root_of(up, k)] += domain_source(&g[k]) == DOM_LOCAL;
    epx_status_t st = EPX_OK;
    const char *hostname = t->objs[host].name ? t->objs[host].name : "";
    for (int k = 0; k < n && st == EPX_OK; k++) {
        char id[320];
        const topo_nvml_gpu_t *x = &g[k];
        const unsigned char *u = x->cluster_uuid;
        int r = root_of(up, k);
        switch (domain_source(x)) {
        case DOM_FABRIC:
            snprintf(id, sizeof(id),
                     "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
                     "%02x%02x%02x%02x%02x%02x", u[0], u[1], u[2], u[3], u[4],
                     u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13],
                     u[14], u[15]);
            st = epx__topo_gpu_domain(t, obj[k], id, (int)x->clique);
            break;
        case DOM_PENDING:
            EPX_LOG(EPX_LOG_WARN, "topo", -1,
                    "nvml: %s: GPU fabric registration %s (status %d): "
                    "no NVLink domain", x->pci,
                    epx__topo_fabric_state_str(x->fabric_state), x->fabric_status);
            break;
        case DOM_LOCAL:
            if (size[r] < 2)
                break;         /* NVLinks to nothing this host knows */
            snprintf(id, sizeof(id), "%s/nvlink%d", hostname, g[r].index);
            st = epx__topo_gpu_domain(t, obj[k], id, 0);
            break;
        }
    }
    free(up);
    return st;
}

static void log_gpu(const epx_topo_t *t, const topo_nvml_gpu_t *x, int obj)
{
    char health[256] = "";
    unsigned version = 0;
    for (int l = 0; l < x->nlinks; l++)
        if (x->link[l].active && x->link[l].version > version)
            version = x->link[l].version;
    if (x->fabric_version)
        epx__topo_fabric_health_str(x->health_mask, x->health_summary, health,
                                    sizeof(health));
    const epx_topo_obj_t *o = &t->objs[obj];
    EPX_LOG(EPX_LOG_INFO, "topo", -1,
            "nvml: %s %s (%s): %s, %d/%d NVLinks active (version %u, "
            "%.1f GB/s), fabric v%d %s clique %u %s, tray %d chassis slot %d "
            "host %d module %d chassis %s", o->name, x->pci, x->name,
            o->arch ? o->arch : "?", active_links(x), x->nlinks, version,
            o->nvlink_gbs, x->fabric_version,
            epx__topo_fabric_state_str(x->fabric_state), x->clique, health,
            x->tray, x->slot, x->host_id, x->module_id,
            x->has_platform ? x->chassis : "-");
}

epx_status_t epx__topo_nvml_apply(epx_topo_t *t, int host,
                                  const topo_nvml_gpu_t *g, int n)
{
    if (!t || host < 0 || host >= t->nobjs || t->objs[host].kind != EPX_TOPO_HOST)
        return epx__error(EPX_ERR_INVALID, "topo: nvml: %d is not a host", host);
    if (n <= 0)
        return EPX_OK;
    int *obj = calloc((size_t)n, sizeof(int));   /* (gcc cannot see apply_gpus fill it) */
    if (!obj)
        return epx__error(EPX_ERR_NOMEM, "topo: out of memory");
    epx_status_t st = apply_gpus(t, host, g, n, obj);
    if (st == EPX_OK)
        st = apply_links(t, host, g, n, obj);
    if (st == EPX_OK)
        st = apply_domains(t, host, g, n, obj);
    for (int k = 0; st == EPX_OK && k < n; k++)
        log_gpu(t, &g[k], obj[k]);
    free(obj);
    return st;
}

epx_status_t epx__topo_probe_nvml(epx_topo_t *t, int host)
{
    topo_nvml_gpu_t *g;
    int n;
    epx_status_t st = epx__topo_nvml_query("libnvidia-ml.so.1", &g, &n);
    if (st != EPX_OK)
        return epx__topo_absent(st);
    st = epx__topo_nvml_apply(t, host, g, n);
    free(g);
    return st;
}
