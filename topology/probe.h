/*
 * What the probes (topology/probe_*.c) share: PCI bus ids, lookups by bus
 * id, architecture names, and the results of the NVML and CUDA queries as
 * plain data.  Each library probe is split in two: a query that talks to
 * the library and fills these records, and an apply step that turns the
 * records into map objects and links, so the translation can be read and
 * tested apart from the library.
 */
#ifndef EPX_TOPO_PROBE_H
#define EPX_TOPO_PROBE_H

#include <stddef.h>
#include <stdint.h>

#include "topology/model.h"

/* "dddd:bb:dd.f" in lower case (hwloc's form) from hwloc's, NVML's
 * ("00000000:1B:00.0") or a bare "bb:dd.f"; 0, or -1 when unparsable or
 * the domain exceeds 16 bits (as hwloc's default build does). */
/* dlsym into a function pointer (POSIX: the same representation as
 * void *); the symbol, or NULL. */
void *epx__topo_dlsym(void *lib, void *fn, const char *name);
/* A probe's library or device is missing (EPX_ERR_UNSUPPORTED): log why
 * at info level and carry on (EPX_OK); any other status is returned. */
epx_status_t epx__topo_absent(epx_status_t st);
int epx__topo_pci_norm(const char *in, char out[16]);
/* Object of `kind` on `host` whose bus id is `pci` (normalized), or -1. */
int epx__topo_find_pci(const epx_topo_t *t, int host, epx_topo_kind_t kind,
                       const char *pci);
/* Objects of `kind` on `host`. */
int epx__topo_count(const epx_topo_t *t, int host, epx_topo_kind_t kind);
/* "hopper", "blackwell", ... from a product name ("NVIDIA H100 80GB
 * HBM3"), or NULL. */
const char *epx__topo_arch_from_name(const char *model);
/* Nominal NVLink bandwidth of one link, GB/s per direction, by
 * architecture (NVLink 3/4: 25, NVLink 5: 50); 0 when unknown. */
double epx__topo_nvlink_link_gbs(const char *arch);

/* ------------------------------------------------------------------ NVML */

#define EPX_NVML_MAX_LINKS 36          /* NVML_NVLINK_MAX_LINKS (NVML 13) */

typedef struct topo_nvml_link {
    int active;
    unsigned version;                  /* nvmlDeviceGetNvLinkVersion, 0 unknown */
    int remote_type;                   /* 0 GPU, 1 IBM NPU, 2 switch, -1 unknown */
    char remote_pci[16];               /* normalized, "" unknown */
} topo_nvml_link_t;

typedef struct topo_nvml_gpu {
    int index;                         /* NVML device index */
    char pci[16];                      /* normalized bus id */
    char name[96];                     /* "" unknown */
    uint64_t memory;                   /* bytes, 0 unknown */
    const char *arch;                  /* static name, NULL unknown */
    double link_gbs;                   /* NVML's common link speed, 0 unknown */
    int nlinks;                        /* entries of link[] that were read */
    topo_nvml_link_t link[EPX_NVML_MAX_LINKS];
    /* GPU fabric (nvmlDeviceGetGpuFabricInfoV) */
    int fabric_version;                /* struct version read: 2, 3; 0 none */
    int fabric_state;                  /* NVML_GPU_FABRIC_STATE_*, -1 */
    int fabric_status;                 /* nvmlReturn_t of the registration */
    unsigned char cluster_uuid[16];
    unsigned clique;
    unsigned health_mask;
    int health_summary;                /* v3 only; -1 unknown */
    /* platform (nvmlDeviceGetPlatformInfo): slot is the chassis slot */
    int has_platform;
    int slot, tray, host_id, module_id;
    char chassis[33];                  /* chassis serial, hex */
} topo_nvml_gpu_t;

/* NVML fabric states (NVML_GPU_FABRIC_STATE_*). */
enum { TOPO_FABRIC_NOT_SUPPORTED = 0, TOPO_FABRIC_NOT_STARTED = 1,
       TOPO_FABRIC_IN_PROGRESS = 2, TOPO_FABRIC_COMPLETED = 3 };

/* Read every GPU through the NVML library at `lib` (dlopen name or path).
 * EPX_ERR_UNSUPPORTED with a message when the library, a symbol it needs
 * or a GPU is missing; *gpus is malloc'ed. */
epx_status_t epx__topo_nvml_query(const char *lib, topo_nvml_gpu_t **gpus,
                                  int *n);
/* Add what the records say to host `host`: GPUs (matched by bus id, added
 * when new), NVLink links to GPUs and NVSwitches, tray/slot, and each GPU's
 * NVLink domain: the fabric's cluster UUID when registration completed,
 * else the GPUs joined by local NVLinks (through NVSwitches or directly). */
epx_status_t epx__topo_nvml_apply(epx_topo_t *t, int host,
                                  const topo_nvml_gpu_t *g, int n);
/* "not-supported", "not-started", "in-progress", "completed". */
const char *epx__topo_fabric_state_str(int state);
/* The health mask in words: "degraded-bw=no route-recovery=n/a ...". */
void epx__topo_fabric_health_str(unsigned mask, int summary, char *buf,
                                 size_t len);

/* ------------------------------------------------------------------ CUDA */

typedef struct topo_cuda_dev {
    char pci[16];                      /* normalized bus id */
    char name[96];
    uint64_t memory;                   /* bytes */
    int cc_major, cc_minor;            /* compute capability, -1 unknown */
    int fabric_handle;                 /* CU_MEM_HANDLE_TYPE_FABRIC: 1, 0, -1 */
} topo_cuda_dev_t;

typedef struct topo_cuda_info {
    int ndev;
    topo_cuda_dev_t *dev;
    unsigned char *peer;               /* [i * ndev + j]: i can map j's memory */
} topo_cuda_info_t;

/* Read every device through the CUDA driver at `lib`.  EPX_ERR_UNSUPPORTED
 * with a message when the driver, cuInit or a device is missing. */
epx_status_t epx__topo_cuda_query(const char *lib, topo_cuda_info_t *info);
void epx__topo_cuda_info_free(topo_cuda_info_t *info);
/* Fill what the map does not know yet (GPUs missing, model, memory,
 * architecture); peer access and fabric-handle support have no field in
 * the map: they are logged, and kept in `info` for the caller. */
epx_status_t epx__topo_cuda_apply(epx_topo_t *t, int host,
                                  const topo_cuda_info_t *info);

#endif /* EPX_TOPO_PROBE_H */
