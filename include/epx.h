/*
 * epx — expert-parallel exchange: the public C API (v0).
 *
 * One header, C99, no CUDA or MPI types.  Optional integrations live beside
 * it (epx/mpi.h).  Conventions:
 *   - every call returns epx_status_t (EPX_OK = 0, errors < 0); outputs are
 *     set only on success; epx_last_error() gives the detail of the last
 *     failure on the calling thread;
 *   - parameter structs carry struct_size/version (use the *_INIT macros) so
 *     fields can be added without breaking callers compiled against an older
 *     header;
 *   - destroy/release accept NULL.
 *
 * Thread safety: a communicator and the engines created on it are driven by
 * one thread at a time (the rank's thread).  Different communicators may be
 * driven concurrently by different threads of one process: a process may
 * drive several ranks, and nothing here assumes one rank per process.
 * epx_status_str, epx_version* and epx_last_error are always thread-safe.
 */
#ifndef EPX_H
#define EPX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* libepx is built with hidden visibility: what this header declares is
 * its exported API, and nothing else is (src/libepx.map). */
#if defined(__GNUC__) && !defined(EPX_NO_VISIBILITY)
#pragma GCC visibility push(default)
#endif

/* ---------------------------------------------------------------- status */

typedef enum epx_status {
    EPX_OK = 0,
    EPX_ERR_INVALID = -1,     /* bad argument (null, misaligned, out of range) */
    EPX_ERR_NOMEM = -2,       /* allocation or mapping failed */
    EPX_ERR_SYSTEM = -3,      /* a system call failed (errno in the message) */
    EPX_ERR_TIMEOUT = -4,     /* a peer did not answer within EPX_TIMEOUT */
    EPX_ERR_AUTH = -5,        /* bootstrap: wrong or missing job key */
    EPX_ERR_MISMATCH = -6,    /* ranks disagree (hidden size, expert count...) */
    EPX_ERR_PEER = -7,        /* another rank failed this collective call */
    EPX_ERR_STATE = -8,       /* call out of order (e.g. combine before dispatch) */
    EPX_ERR_UNSUPPORTED = -9, /* not built in, or not available here */
    EPX_ERR_BOOTSTRAP = -10,  /* ranks could not find each other */
    EPX_ERR_RANGE = -11       /* a value exceeds a configured limit */
} epx_status_t;

/* Short fixed name of a status ("EPX_ERR_INVALID: invalid argument"). */
const char *epx_status_str(epx_status_t status);
/* Detailed message of the last error on this thread ("" if none). */
const char *epx_last_error(void);

#define EPX_VERSION_MAJOR 0
#define EPX_VERSION_MINOR 1
#define EPX_VERSION_PATCH 0
/* Version of the library actually loaded (may differ from the header). */
void epx_version(int *major, int *minor, int *patch);
const char *epx_version_string(void);

/* --------------------------------------------------------------- config */

/* The EPX_* environment settings, from the one table in the library. */
typedef struct epx_setting {
    const char *name;    /* "EPX_TIMEOUT" */
    const char *deflt;   /* default value as text */
    const char *help;    /* one line */
} epx_setting_t;
/* Number of settings; *table points to a static array of that many. */
int epx_settings(const epx_setting_t **table);
/* Checks every EPX_* setting of the environment as the library will read
 * it: numbers whole and in range, words among those the table lists,
 * EPX_TRANSPORTS parsed, EPX_TOPO_FILE loaded.  EPX_ERR_INVALID (or the
 * loader's status) with epx_last_error() naming the variable and what it
 * accepts.  Every communicator creation calls it first; a launcher may call
 * it before it starts any rank. */
epx_status_t epx_settings_check(void);

/* ---------------------------------------------------------- communicator */

typedef struct epx_comm epx_comm_t;

/* An all-gather supplied by the caller (torch.distributed, a KV store...):
 * gather `bytes` from every rank into recv[nranks * bytes], rank order.
 * Return 0 on success. */
typedef int (*epx_allgather_fn)(void *ctx, const void *send, void *recv,
                                size_t bytes);

typedef enum epx_bootstrap {
    /* EPX_RANK, EPX_NRANKS, EPX_ROOT=host:port and EPX_JOB_KEY from the
     * environment; rank 0 listens on EPX_ROOT, the others connect. */
    EPX_BOOTSTRAP_ENV = 0,
    /* rank, nranks and allgather given in the params. */
    EPX_BOOTSTRAP_ALLGATHER = 1
} epx_bootstrap_t;

#define EPX_COMM_PARAMS_VERSION 1
typedef struct epx_comm_params {
    size_t struct_size;        /* sizeof(epx_comm_params_t) */
    unsigned version;          /* EPX_COMM_PARAMS_VERSION */
    epx_bootstrap_t bootstrap;
    /* EPX_BOOTSTRAP_ALLGATHER: */
    int rank;
    int nranks;
    epx_allgather_fn allgather;
    void *allgather_ctx;
    /* EPX_BOOTSTRAP_ENV: overrides EPX_JOB_KEY / EPX_ROOT when non-NULL. */
    const char *job_key;
    const char *root;
    /* Seconds a wait may last before EPX_ERR_TIMEOUT; <= 0: EPX_TIMEOUT. */
    double timeout_s;
} epx_comm_params_t;

#define EPX_COMM_PARAMS_INIT                                                  \
    { sizeof(epx_comm_params_t), EPX_COMM_PARAMS_VERSION,                     \
      EPX_BOOTSTRAP_ENV, -1, 0, NULL, NULL, NULL, NULL, 0.0 }

/* Collective over all ranks.  Ranks on this host exchange through shared
 * memory.
 * Failure detection: every rank watches its peers, and a peer seen dead
 * ends every pending and later call of the survivors with EPX_ERR_PEER
 * naming it (the first one seen; a dead rank never comes back) instead
 * of the timeout.  Peers mapped over shared memory are watched by their
 * processes (seen within about 50 ms); peers reached over UCX by a thread
 * of the communicator: a broken connection (a killed process, within
 * about a second) or no heartbeat for EPX_PEER_SILENCE seconds, 5 by
 * default (a stopped or hung process, a host cut off; heartbeats go every
 * 0.5 s from that thread, so a rank busy between calls is alive).  A communicator with UCX peers has that one
 * thread and a second UCX worker. */
epx_status_t epx_comm_create(const epx_comm_params_t *params,
                             epx_comm_t **comm);
/* Collective when some pair uses UCX (two barriers let every rank's last
 * operations finish while all still progress); local otherwise.  After a
 * peer failure it returns without waiting for the dead rank, leaving UCX's
 * worker to the process exit.  It tells the peers this rank leaves on
 * purpose: a rank that exits without calling it is taken for dead by any
 * peer still waiting (EPX_ERR_PEER), so call it before exiting. */
void epx_comm_destroy(epx_comm_t *comm);
int epx_comm_rank(const epx_comm_t *comm);
int epx_comm_size(const epx_comm_t *comm);
epx_status_t epx_comm_barrier(epx_comm_t *comm);

/* Elastic: collective over the ranks of `comm` still alive, after a peer
 * was lost (any call returned EPX_ERR_PEER) or, with none lost, a copy.
 * The survivors agree on the live set (every rank seen dead by any of
 * them, or that destroyed `comm`, is out) and build a new communicator of
 * the live ranks in *out, ranked densely in their old order; live
 * (optional, [size of comm]) gets 1 for each rank kept, 0 for the others.
 * Needs nothing from comm's bootstrap (its root may be the rank lost): the
 * agreement and the new communicator's bootstrap go through comm's
 * barrier window.  After a loss comm's calls fail (EPX_ERR_PEER; without
 * one it keeps working); destroy it, and its engines, whenever convenient:
 * its memory goes with the last communicator shrunk from it.  A rank lost
 * while the survivors agree is left out like the first; one lost after
 * the agreement, while the new communicator forms, fails the shrink
 * (EPX_ERR_PEER), and if it goes in the last all-gather some survivors
 * may have their communicator and others the error, whose next calls
 * then fail: shrink again from comm.  Ranks a survivor took for dead (a
 * stopped process) are out even if they come back; such a rank's own
 * shrink fails (EPX_ERR_PEER or EPX_ERR_TIMEOUT).  Peers of this host are
 * seen dead through pidfds (Linux 5.3, the same pid namespace): without
 * one a dead peer is seen only at the timeout, and the shrink fails. */
epx_status_t epx_comm_shrink(epx_comm_t *comm, uint8_t *live,
                             epx_comm_t **out);

/* Built-in local launcher: fork `nranks` processes on this host; each
 * creates a communicator (params may be NULL; its bootstrap fields are
 * ignored), calls fn(comm, arg), destroys the communicator and exits with
 * fn's return value.  The caller waits for all of them.  If a rank fails or
 * dies the others are stopped.  Returns EPX_OK if every rank returned 0;
 * otherwise EPX_ERR_PEER, with the first failing rank in *failed_rank (may
 * be NULL) and its exit code / signal in the last-error message.  Call it
 * from a single-threaded process (fork). */
typedef int (*epx_rank_fn)(epx_comm_t *comm, void *arg);
epx_status_t epx_launch_local(int nranks, const epx_comm_params_t *params,
                              epx_rank_fn fn, void *arg, int *failed_rank);

/* -------------------------------------------------------------- topology */

/* What the machine is: hosts, CPUs (package / NUMA node), GPUs, NVSwitches,
 * NICs and the links between them, the NVLink domains and cliques, and
 * where each rank sits.  A map is read-only once built; every query is
 * thread-safe.  Bandwidths are GB/s (1e9 bytes/s) per direction. */

typedef struct epx_topo epx_topo_t;

/* Path classes, nearest first (the order is part of the API). */
typedef enum epx_link_class {
    EPX_LINK_SELF = 0,   /* the same object */
    EPX_LINK_NVLINK = 1, /* NVLink, direct or through NVSwitches */
    EPX_LINK_C2C = 2,    /* chip-to-chip (NVLink-C2C, GPU <-> Grace) */
    EPX_LINK_PIX = 3,    /* PCIe, at most one switch */
    EPX_LINK_PXB = 4,    /* PCIe, several switches, no host bridge */
    EPX_LINK_PHB = 5,    /* PCIe through a host bridge */
    EPX_LINK_NODE = 6,   /* PCIe across host bridges of one NUMA node */
    EPX_LINK_SYS = 7,    /* across NUMA nodes (SMP interconnect) */
    EPX_LINK_NET = 8     /* through the network */
} epx_link_class_t;

/* "X", "NV", "C2C", "PIX", "PXB", "PHB", "NODE", "SYS", "NET". */
const char *epx_link_class_str(epx_link_class_t cls);

typedef enum epx_topo_kind {
    EPX_TOPO_HOST = 0,
    EPX_TOPO_CPU = 1,        /* a package / NUMA node with its memory */
    EPX_TOPO_GPU = 2,
    EPX_TOPO_NVSWITCH = 3,
    EPX_TOPO_NIC = 4
} epx_topo_kind_t;

typedef struct epx_topo_obj {
    epx_topo_kind_t kind;
    int index;               /* position in the map */
    int host;                /* index of its host (a host: itself) */
    int cpu;                 /* index of its CPU / NUMA node (a CPU: itself
                                or -1), -1 unknown */
    const char *name;        /* unique in its host: "gpu3", "mlx5_0" */
    const char *pci;         /* PCI bus id "0000:1b:00.0", or NULL */
    const char *model;       /* "H100 SXM5", "ConnectX-7", or NULL */
    uint64_t memory_bytes;   /* GPU or NUMA memory, 0 unknown */
    int os_index;            /* NUMA node / device index on its host, -1 */
    /* GPU */
    const char *arch;        /* "hopper", "blackwell", or NULL */
    int tray, slot;          /* compute tray in the rack / slot in the tray,
                                -1 unknown */
    int domain;              /* NVLink domain (epx_topo_domain), -1 none */
    int clique;              /* clique within the domain, numbered 0.. in
                                order of appearance; -1 none */
    int nvlinks;             /* active NVLink links */
    double nvlink_gbs;       /* NVLink bandwidth of the GPU, all links */
    /* NIC */
    double nic_gbs;          /* line rate (400 Gb/s = 50 GB/s) */
    /* GPU */
    const char *chassis;     /* chassis (rack) serial from the platform
                                info, or NULL */
} epx_topo_obj_t;

typedef struct epx_topo_link {
    int a, b;                /* object indices, a < b */
    epx_link_class_t cls;
    int count;               /* parallel links (e.g. NVLink links) */
    double bw_gbs;           /* all `count` links together */
    double lat_us;           /* one-way latency, 0 unknown */
} epx_topo_link_t;

typedef struct epx_topo_path {
    epx_link_class_t cls;
    double bw_gbs;           /* bottleneck bandwidth of the path */
    double lat_us;
} epx_topo_path_t;

typedef enum epx_domain_kind {
    EPX_DOMAIN_HOST = 0,     /* CPU ranks of one host: shared memory */
    EPX_DOMAIN_NVLINK = 1    /* GPUs reachable by NVLink loads/stores */
} epx_domain_kind_t;

typedef struct epx_topo_domain {
    int index;
    epx_domain_kind_t kind;
    const char *id;          /* NVML clusterUuid, description id, hostname */
    int num_members;
    const int *members;      /* object indices: GPUs (NVLINK) or the host */
    int num_cliques;
    double nvlink_gbs;       /* per-GPU NVLink bandwidth (NVLINK), else 0 */
} epx_topo_domain_t;

/* A system description (topology/systems/<name>.json, or a path); the
 * error message names the file, the JSON path and the reason. */
epx_status_t epx_topo_load(const char *name_or_path, epx_topo_t **topo);
/* The directories epx_topo_load searches for a system name, in order:
 * $EPX_SYSTEMS_DIR, then this library's build tree or installed (or
 * moved) data directory.  Fills up to `max`; returns how many there are. */
int epx_topo_systems_dirs(const char **dirs, int max);
/* Probe this host (hwloc, NVML, CUDA driver; each optional). */
epx_status_t epx_topo_probe(epx_topo_t **topo);
/* Write a map as a system description that loads back to the same map. */
epx_status_t epx_topo_export(const epx_topo_t *topo, const char *path);
void epx_topo_destroy(epx_topo_t *topo);

/* The communicator's map (collective on first call, then cached; owned by
 * the comm): EPX_TOPO_FILE's description if set, else every rank's probe
 * merged.  Every rank gets the same map. */
epx_status_t epx_comm_topology(epx_comm_t *comm, const epx_topo_t **topo);

int epx_topo_num_objs(const epx_topo_t *topo);
const epx_topo_obj_t *epx_topo_obj(const epx_topo_t *topo, int index);
int epx_topo_num_links(const epx_topo_t *topo);
const epx_topo_link_t *epx_topo_link(const epx_topo_t *topo, int index);
int epx_topo_num_domains(const epx_topo_t *topo);
const epx_topo_domain_t *epx_topo_domain(const epx_topo_t *topo, int index);
/* Best path between two objects (class, bottleneck bandwidth, latency). */
epx_status_t epx_topo_path_between(const epx_topo_t *topo, int a, int b,
                                   epx_topo_path_t *path);
const char *epx_topo_name(const epx_topo_t *topo);   /* system name */

/* Ranks of the map: set by epx_comm_topology, or by epx_topo_place for a
 * description on its own.  Placement rule: with GPUs, rank r drives the
 * r-th GPU in map order (hosts in order, GPUs in order within a host);
 * without GPUs, ranks fill hosts in blocks of ceil(R / hosts). */
epx_status_t epx_topo_place(epx_topo_t *topo, int nranks);
int epx_topo_num_ranks(const epx_topo_t *topo);
int epx_topo_rank_host(const epx_topo_t *topo, int rank);   /* object */
int epx_topo_rank_gpu(const epx_topo_t *topo, int rank);    /* object, -1 */
int epx_topo_rank_domain(const epx_topo_t *topo, int rank); /* domain */
/* Path between two ranks: between their GPUs, or their hosts for CPU
 * ranks (two CPU ranks of one host: SELF, shared memory). */
epx_status_t epx_topo_rank_path(const epx_topo_t *topo, int a, int b,
                                epx_topo_path_t *path);

/* ------------------------------------------------------------------ MoE */

typedef enum epx_dtype {
    EPX_DTYPE_BF16 = 0,
    EPX_DTYPE_FP32 = 1,
    EPX_DTYPE_INT32 = 2,
    EPX_DTYPE_INT64 = 3,
    EPX_DTYPE_FP8_E4M3 = 4,    /* OCP e4m3fn, 1 byte */
    EPX_DTYPE_UE8M0 = 5,       /* scale 2^(c - 127), 1 byte; 0xff is NaN */
    EPX_DTYPE_FP4_E2M1X2 = 6,  /* two e2m1 codes per byte, element 2i in the
                                  low nibble; a row of H elements has
                                  ceil(H / 2) columns */
    EPX_DTYPE_FP64 = 7         /* IEEE binary64: engines on the native
                                  wire (reference and gradient checks),
                                  see epx_moe_params_t.dtype */
} epx_dtype_t;

/* Bytes per element of a dtype (0 for an unknown one). */
size_t epx_dtype_size(epx_dtype_t dtype);

/* A 2-D row-major tensor view: rows x cols, contiguous rows of cols
 * elements.  `data` must be aligned to the element size; it may be NULL
 * when the tensor is empty (rows or cols 0). */
typedef struct epx_tensor {
    void *data;
    epx_dtype_t dtype;
    int64_t rows;
    int64_t cols;
} epx_tensor_t;

typedef enum epx_layout {
    /* One row per (source token, this rank): x once, plus the token's
     * local expert ids (-1 elsewhere) and weights. */
    EPX_LAYOUT_TOKEN_MAJOR = 0,
    /* One row per (token, local expert), grouped by local expert; each
     * expert's segment starts at a multiple of `expert_alignment` rows. */
    EPX_LAYOUT_EXPERT_MAJOR = 1
} epx_layout_t;

typedef struct epx_moe epx_moe_t;

typedef enum epx_mode {
    /* Count exchange, then tokens at precomputed offsets in a compact
     * receive region: memory follows the tokens received (prefill). */
    EPX_MODE_THROUGHPUT = 0,
    /* One phase, no count exchange: each (local expert, source rank) owns
     * a fixed range of ll_capacity rows; output [local experts, capacity,
     * H] plus counts per expert (decode). */
    EPX_MODE_LOW_LATENCY = 1
} epx_mode_t;

/* How dispatch carries x.  The quantized formats take bf16 x (engine dtype
 * BF16, else EPX_ERR_INVALID), quantize each token once per dispatch, and
 * deliver the quantized rows and their scales (epx_recv_t.x, x_scales,
 * x_global_scale); combine stays in the engine dtype.  Blocks are runs of
 * consecutive elements from the row's start, the last one short when the
 * block size does not divide H.  Rounding, scale recipes and error bounds:
 * src/moe/README.md. */
typedef enum epx_wire {
    EPX_WIRE_NATIVE = 0,       /* x as given, in the engine dtype */
    EPX_WIRE_FP8 = 1,          /* e4m3, one FP32 scale per 128 elements */
    EPX_WIRE_FP8_UE8M0 = 2,    /* e4m3, one UE8M0 scale per 128 elements */
    EPX_WIRE_MXFP8 = 3,        /* e4m3, one UE8M0 scale per 32 elements */
    EPX_WIRE_NVFP4 = 4         /* e2m1, one FP8_E4M3 scale per 16 elements
                                  and one FP32 scale per token, chosen so
                                  that the token's amax maps to 6 * 448,
                                  or the caller's tensor scale
                                  (epx_dispatch_args_t.x_global_scale) */
} epx_wire_t;

#define EPX_MOE_LL_DROP 0x1u       /* low latency: rows beyond capacity are
                                      dropped and counted (recv.num_dropped)
                                      instead of failing with EPX_ERR_RANGE */
#define EPX_MOE_HIERARCHICAL 0x2u  /* throughput: cross between domains once
                                      per destination domain, then forward
                                      inside the domain; the domains
                                      (epx_comm_topology) must be equal
                                      contiguous rank blocks; combine_send
                                      then waits for its domain's partials
                                      (device ranks: windows backend) */
#define EPX_MOE_ELASTIC 0x4u       /* elastic expert parallelism (needs
                                      num_slots): a placement may leave
                                      logical experts out (lost: their every
                                      replica was on ranks that are gone) and
                                      num_slots may be below num_experts; a
                                      top-k entry naming a lost expert is not
                                      sent (as if -1), combine leaves it out,
                                      and dispatch reports it
                                      (epx_dispatch_args_t.lost).  Host and
                                      device ranks, both modes (device
                                      ranks: see "Device ranks") */

/* Where a rank's tensors live (epx_moe_params_t.device): host memory, or
 * the CUDA device of that ordinal (0, 1, ...). */
#define EPX_DEVICE_HOST (-1)

/* How GPU ranks exchange (device ranks only). */
typedef enum epx_gpu_backend {
    /* Kernels store into the peers' windows of device memory (direct
     * pointers, CUDA IPC, cuMem POSIX descriptors or fabric handles,
     * probed; EPX_CUDA_WINDOW). */
    EPX_GPU_BACKEND_WINDOWS = 0,
    /* The same exchange with NCCL grouped send/recv: the baseline, and the
     * fallback where windows cannot be shared. */
    EPX_GPU_BACKEND_NCCL = 1
} epx_gpu_backend_t;

#define EPX_MOE_PARAMS_VERSION 4
typedef struct epx_moe_params {
    size_t struct_size;        /* sizeof(epx_moe_params_t) */
    unsigned version;          /* EPX_MOE_PARAMS_VERSION */
    int hidden;                /* H: elements per token */
    int num_experts;           /* E: logical experts over the comm */
    int topk;                  /* K: experts per token, 1..min(EPX_MAX_TOPK, E) */
    int max_tokens_per_rank;   /* upper bound on T of any dispatch (>= 0) */
    epx_dtype_t dtype;         /* BF16 or FP32: x on the wire; or FP64
                                  (EPX_WIRE_NATIVE; host and device ranks,
                                  every mode and layout, hierarchical too
                                  on host ranks): rows carried as given,
                                  combine in double (epx_combine_send).
                                  FP64 with a quantized wire:
                                  EPX_ERR_INVALID */
    epx_layout_t layout;
    int expert_alignment;      /* expert-major segment alignment (rows), >= 1 */
    /* version 2 */
    int num_layers;            /* layers sharing the engine, for the load
                                  statistics (0: 1) */
    double stats_decay;        /* weight the decayed load keeps per dispatch,
                                  in (0, 1) (0: 0.9) */
    int num_slots;             /* physical expert slots (replicas), a multiple
                                  of the ranks and >= num_experts (with
                                  EPX_MOE_ELASTIC any multiple >= R); slot s
                                  lives on rank s / (num_slots / R); each
                                  layer then needs epx_moe_set_placement.
                                  0: no replicas, the contiguous placement */
    /* version 3 */
    epx_mode_t mode;
    epx_wire_t wire;
    int ll_capacity;           /* low latency: rows per (local expert, source
                                  rank), < 2^24; 0: the largest
                                  max_tokens_per_rank (nothing can
                                  overflow).  Low latency needs
                                  EPX_LAYOUT_EXPERT_MAJOR (alignment unused) */
    int ll_buffers;            /* low latency: calls that may be outstanding
                                  (dispatched, not yet combined), 2..64;
                                  0: 2 */
    unsigned flags;            /* EPX_MOE_* */
    /* version 4 */
    int device;                /* EPX_DEVICE_HOST (the default), or the CUDA
                                  ordinal of the device holding this rank's
                                  tensors (libepx built with CUDA; see
                                  "Device ranks" below) */
    int num_sms;               /* device ranks: blocks (one per SM) of the
                                  data kernels; 0: the device's SMs divided
                                  by the ranks sharing it, so that every
                                  rank's kernels are resident together */
    epx_gpu_backend_t gpu_backend;   /* device ranks */
    void *nccl_comm;           /* EPX_GPU_BACKEND_NCCL: an ncclComm_t over
                                  the same ranks in the same order to adopt
                                  (the caller keeps it); NULL: epx makes one */
} epx_moe_params_t;

#define EPX_MAX_TOPK 32

#define EPX_MOE_PARAMS_INIT                                                   \
    { sizeof(epx_moe_params_t), EPX_MOE_PARAMS_VERSION, 0, 0, 0, 0,           \
      EPX_DTYPE_BF16, EPX_LAYOUT_TOKEN_MAJOR, 1, 1, 0.9, 0,                  \
      EPX_MODE_THROUGHPUT, EPX_WIRE_NATIVE, 0, 0, 0u, EPX_DEVICE_HOST, 0,   \
      EPX_GPU_BACKEND_WINDOWS, NULL }

/* Placement (no balancer): rank r holds the contiguous experts
 * [floor(r*E/R), floor((r+1)*E/R)).  When E is not a multiple of R the
 * counts differ by at most one; when E < R some ranks hold none.
 * With num_slots, "local experts" below are this rank's slots, and
 * epx_moe_expert_rank takes a slot. */
int epx_moe_expert_rank(const epx_moe_t *moe, int expert);
int epx_moe_num_local_experts(const epx_moe_t *moe);
int epx_moe_first_local_expert(const epx_moe_t *moe);

/* Device ranks (device >= 0; libepx built with CUDA, else
 * EPX_ERR_UNSUPPORTED naming what is missing).  The same calls, handles
 * and recv descriptions as on host ranks, with these differences:
 *   - tensors (x, topk_idx, topk_weights, y, out) and the recv's per-row
 *     arrays are device memory; expert_counts and expert_offsets are host
 *     memory in throughput mode and DEVICE memory in low latency;
 *   - work is ordered on the stream given in the args (the engine runs on
 *     a stream of its own after an event on it, and the recv calls make
 *     the caller's stream wait for the engine), so the caller's kernels
 *     queued between send and recv overlap with the exchange; inputs must
 *     stay unchanged until the matching recv returned;
 *   - host synchronisation: at most once per throughput dispatch (the
 *     received row count), in epx_dispatch_recv (windows) or
 *     epx_dispatch_send (NCCL); never in combine or in low latency, whose
 *     calls can be captured into a CUDA graph; errors found on the device
 *     come back from epx_moe_check; with EPX_CUDA_KERNELS=fused (windows
 *     backend, uncached) epx_dispatch_recv instead polls host-mapped
 *     counts the kernel publishes before the rows move (bounded by
 *     EPX_TIMEOUT), and the rows reach the caller's stream by stream order;
 *   - every rank of the engine uses the same kind of device (all host or
 *     all device ranks), else EPX_ERR_MISMATCH;
 *   - weight migration: epx_moe_register_weights takes DEVICE memory of
 *     the rank's device (else EPX_ERR_INVALID), while no call is in
 *     flight; the weights move GPU to GPU (below, "weight migration");
 *   - load statistics in low latency are recorded by the kernels (calls
 *     replayed from a CUDA graph too) and read at the next epx_moe_stats
 *     or epx_moe_check, which synchronise with the engine's stream (not
 *     while capturing); read them at least once every 1000 calls, else
 *     the oldest unread calls are left out (a warning says how many).  A
 *     call counts on a rank whose own routing was good, even where a
 *     peer's failed it (the host executor refuses it on every rank);
 *   - EPX_DISPATCH_CACHED (throughput mode, both backends): the host
 *     executor's checks in the call (a handle of an earlier dispatch, the
 *     same token count, layer and placement: EPX_ERR_INVALID, refused on
 *     every rank as invalid input below); the ids themselves, and the
 *     ranks' agreement, are checked
 *     on the device, so those failures come from epx_dispatch_recv (and
 *     epx_dispatch_poll) instead of epx_dispatch_send: EPX_ERR_INVALID on
 *     a rank whose ids differ from its handle's, EPX_ERR_PEER on the
 *     others, EPX_ERR_MISMATCH when some ranks passed the flag and others
 *     did not or they reuse handles of different dispatches; nothing was
 *     sent, the call is over (its combine is refused with EPX_ERR_STATE),
 *     the handle keeps its routing and the engine stays usable;
 *   - EPX_CUDA_KERNELS=fused (the same on every rank; classic is the
 *     default; not yet run on a GPU): low latency, windows backend, runs
 *     one kernel per operation, whose receive phase is queued by
 *     epx_dispatch_recv (and the combine's reduce by epx_combine_recv),
 *     so nothing holds SMs between send and recv and the caller's work
 *     queued between them overlaps the transfer; the outputs are the
 *     classic kernels' bit for bit; the drops of a call are counted by
 *     its receive phase, so a call released before its recv counts none;
 *   - epx_dispatch_poll: see its comment below;
 *   - invalid input on one rank: that rank's epx_dispatch_send refuses
 *     it and the others' calls fail (the peers' arguments are learnt on
 *     the device): throughput mode (both backends, cached calls too), in
 *     their epx_dispatch_recv (EPX_ERR_PEER), with nothing sent; low
 *     latency (whose recv never waits), in their epx_dispatch_poll and
 *     epx_moe_check (EPX_ERR_PEER, or EPX_ERR_RANGE for too many tokens,
 *     as on host ranks), without waiting for the timeout: a peer that
 *     combines such a call anyway gets unspecified outputs;
 *   - EPX_MOE_ELASTIC (both modes, both backends; not yet run on a GPU):
 *     the host executor's routing (an entry naming a lost expert is sent
 *     nowhere, combine leaves it out, the statistics count its demand per
 *     logical expert); the lost mask (epx_dispatch_args_t.lost) is device
 *     memory, written by a kernel on the engine's stream (no host
 *     synchronisation, graph-capturable), which the caller's stream is
 *     ordered after by epx_dispatch_recv (as the recv's arrays).  After
 *     epx_comm_shrink the new engine on the survivors' communicator opens
 *     windows (or an NCCL communicator) among them only; destroying the
 *     old engine waits for its kernels until EPX_TIMEOUT and, over NCCL,
 *     aborts the communicator epx made (ncclCommAbort; an adopted
 *     nccl_comm is the caller's to abort first); the recovery after a
 *     real loss on device ranks is untested;
 *   - EPX_CUDA_KERNELS=fused (throughput mode, windows backend; not yet
 *     run on a GPU): with y in place (epx_recv_t.x) combine moves no
 *     data, the token's owners read the outputs from this rank's window
 *     during their epx_combine_recv (the same bits); so the receive
 *     buffer must stay as combine_send found it until the next
 *     dispatch, even after this rank's own epx_combine_recv;
 *   - EPX_DTYPE_FP64 engines (native wire, every mode, layout and
 *     backend the device runs; not yet run on a GPU): the host executor's
 *     double arithmetic bit for bit (rows as given, partials and sums in
 *     double, out FP64); EPX_CUDA_KERNELS=fused combines them with the
 *     classic kernels in throughput mode;
 *   - low latency over the NCCL backend (not yet run on a GPU): the
 *     windows backend's outputs, poll and refusals, with one grouped
 *     send/recv per dispatch and per combine of sizes the placement gives
 *     (full ll_capacity per local expert), so nothing is read back and the
 *     calls capture into a CUDA graph; every rank must make its calls
 *     (dispatch, combine, a release before the combine) in the same order,
 *     and NCCL's waits have no timeout: a rank that stops sending (a call
 *     refused before it is queued, EPX_ERR_STATE) leaves its peers waiting;
 *   - EPX_MOE_HIERARCHICAL (both backends; not yet run on a GPU): the
 *     same two hops and bits as on host ranks (FP64 engines too: partials
 *     and accumulators in double); epx_moe_cross_domain_bytes counts the
 *     same bytes (the call synchronises with the engine's stream).  Over
 *     NCCL every rank must combine each dispatched call, in the same
 *     order (src/cuda/README.md, "Hierarchical two-hop over NCCL"). */

/* Collective.  Every rank must pass the same hidden, num_experts, topk,
 * dtype, layout and alignment (and mode, ll_capacity, ll_buffers, flags),
 * else every rank gets EPX_ERR_MISMATCH. */
epx_status_t epx_moe_create(epx_comm_t *comm, const epx_moe_params_t *params,
                            epx_moe_t **moe);
void epx_moe_destroy(epx_moe_t *moe);

/* Routing record of one dispatch; combine brings results back through it,
 * and a cached dispatch with the same routing reuses it. */
typedef struct epx_handle epx_handle_t;

#define EPX_DISPATCH_CACHED 0x1u  /* reuse *handle's routing (all ranks) */

#define EPX_DISPATCH_ARGS_VERSION 5
typedef struct epx_dispatch_args {
    size_t struct_size;
    unsigned version;
    epx_tensor_t x;            /* [T, H], dtype = engine dtype */
    epx_tensor_t topk_idx;     /* [T, K], INT32 or INT64, -1 = none */
    epx_tensor_t topk_weights; /* [T, K], FP32 */
    unsigned flags;            /* EPX_DISPATCH_* */
    /* version 2 */
    int layer;                 /* layer of this dispatch, for the load
                                  statistics: 0 .. num_layers - 1 */
    /* version 3 */
    float x_global_scale;      /* EPX_WIRE_NVFP4: the caller's FP32 tensor
                                  scale, used for every token of this
                                  dispatch (finite, > 0; NVIDIA's recipe:
                                  the tensor's amax / (6 * 448)); block
                                  scales and codes saturate where a block
                                  exceeds 6 * 448 * it.  0: each token's own
                                  (the default).  Other wire formats: 0,
                                  else EPX_ERR_INVALID.  Host and device
                                  ranks give the same bits. */
    /* version 4 */
    void *stream;              /* device ranks: the cudaStream_t the call is
                                  ordered on (NULL: the legacy stream);
                                  epx_dispatch_recv and epx_dispatch_poll use
                                  it too.  Ignored on host ranks. */
    /* version 5 */
    uint8_t *lost;             /* optional output [T, K]: on success 1
                                  where topk_idx names an expert the
                                  layer's placement left out (lost,
                                  EPX_MOE_ELASTIC; the entry was not sent
                                  and combine leaves it out), else 0.
                                  NULL: not reported.  Host ranks: host
                                  memory, written when epx_dispatch_send
                                  returns.  Device ranks: DEVICE memory
                                  like the other tensors, written on the
                                  engine's stream and ready in the
                                  caller's stream order once
                                  epx_dispatch_recv returned (see "Device
                                  ranks"). */
} epx_dispatch_args_t;

#define EPX_DISPATCH_ARGS_INIT                                                \
    { sizeof(epx_dispatch_args_t), EPX_DISPATCH_ARGS_VERSION,                 \
      { NULL, EPX_DTYPE_BF16, 0, 0 }, { NULL, EPX_DTYPE_INT32, 0, 0 },        \
      { NULL, EPX_DTYPE_FP32, 0, 0 }, 0u, 0, 0.0f, NULL, NULL }

/* What this rank received.  Pointers stay valid until this rank's
 * epx_combine_send, or its next epx_dispatch_send on the same engine, or
 * the handle's release, whichever comes first.  Low latency: until this
 * call's epx_combine_send or the handle's release (later dispatches use
 * other buffers).
 * Low-latency layout (expert-major only): num_rows = num_local_experts *
 * nranks * capacity; local expert j's segment starts at expert_offsets[j]
 * = j * nranks * capacity, and source rank s's rows for it are
 * j*nranks*capacity + s*capacity + i, i < the rows s sent there, in s's
 * token order; the rest of each range is padding (src_rank and src_token
 * -1, weight 0).  expert_counts[j] sums the rows over sources (they are
 * not a contiguous prefix). */
typedef struct epx_recv {
    size_t struct_size;        /* set to sizeof(epx_recv_t) before the call
                                  (0: this header's size); the library
                                  writes no more than that */
    int64_t num_rows;          /* rows of x (expert-major: incl. padding) */
    epx_tensor_t x;            /* [num_rows, H] received tokens */
    int num_local_experts;
    int first_local_expert;    /* global id of local expert 0 */
    const int64_t *expert_counts;   /* [num_local_experts] tokens per expert */
    const int64_t *expert_offsets;  /* [num_local_experts] first row (expert-
                                       major); NULL in token-major */
    /* Per row (padding rows in expert-major: src_rank = -1). */
    const int32_t *src_rank;   /* [num_rows] */
    const int32_t *src_token;  /* [num_rows] token index on src_rank */
    /* Token-major: [num_rows, K]; slot k is the source's k-th top-k
     * choice: its local expert id (global - first_local_expert) and weight
     * if that expert lives here, else -1 and 0.
     * Expert-major: topk_idx NULL, topk_weights [num_rows]. */
    const int32_t *topk_idx;
    const float *topk_weights;
    /* [num_local_experts] the logical expert of each local expert (with
     * num_slots: of each local slot; else first_local_expert + j). */
    const int32_t *local_experts;
    /* Quantized wire (else data NULL): x is FP8_E4M3 [num_rows, H] or
     * FP4_E2M1X2 [num_rows, ceil(H/2)]; x_scales [num_rows, blocks] is FP32,
     * UE8M0 or FP8_E4M3 (blocks = ceil(H / block)); NVFP4 also has one FP32
     * scale per row: value = code * block scale * x_global_scale[row].
     * Padding rows (expert-major) hold unspecified bytes. */
    epx_tensor_t x_scales;
    const float *x_global_scale;
    /* Low latency: rows per (local expert, source) range (ll_capacity, or
     * its default), and rows routed to this rank that were dropped because
     * their range was full (EPX_MOE_LL_DROP); 0 and 0 in throughput mode. */
    int capacity;
    int64_t num_dropped;
} epx_recv_t;

/* Split dispatch.  epx_dispatch_send routes, exchanges counts (collective)
 * and writes this rank's tokens into their destinations; it returns a new
 * handle in *handle (or reuses *handle with EPX_DISPATCH_CACHED, which
 * every rank must pass together, with the same routing as that handle's
 * dispatch; new x and weights are fine).
 * epx_dispatch_recv waits for every source and describes what arrived.
 * Invalid input on any rank: nothing is sent, every rank returns an error
 * from epx_dispatch_send (EPX_ERR_PEER on the others) and the engine stays
 * usable.
 * Errors that cannot be agreed with the peers leave the engine unusable
 * (every later call returns EPX_ERR_STATE; destroy it): a timeout, and a
 * call out of order (EPX_ERR_STATE itself, e.g. a dispatch_send while the
 * previous dispatch or combine is unfinished).
 * One dispatch is in flight per engine: the next epx_dispatch_send comes
 * after this one's epx_combine_recv; one issued before that (after
 * epx_dispatch_recv) abandons the earlier dispatch, whose handle can then
 * only be released.  Overlapping micro-batches use one engine each.
 * Low latency: up to ll_buffers calls may be outstanding; call n + 1's
 * dispatch may be sent while the caller still reads call n's output, and
 * calls are combined in the order they were dispatched.  Call n uses
 * buffer n % ll_buffers (failed calls count) and may be sent once call
 * n - ll_buffers is combined (epx_combine_recv) or released on this rank,
 * else EPX_ERR_STATE with nothing sent.  No count exchange: a rank's bad
 * input or overflow reaches the others in their epx_dispatch_recv or
 * epx_dispatch_poll (EPX_ERR_PEER, or EPX_ERR_RANGE for more rows than
 * ll_capacity without EPX_MOE_LL_DROP), never partially: the call fails
 * on every rank, each releases its handle, and the engine stays usable.
 * Releasing a handle before its combine abandons the call without
 * waiting; a rank that combines it anyway gets EPX_ERR_PEER from
 * epx_combine_recv.  EPX_DISPATCH_CACHED is refused (EPX_ERR_INVALID):
 * there is no count exchange to save. */
epx_status_t epx_dispatch_send(epx_moe_t *moe, const epx_dispatch_args_t *args,
                               epx_handle_t **handle);
epx_status_t epx_dispatch_recv(epx_moe_t *moe, epx_handle_t *handle,
                               epx_recv_t *recv);

/* Overlap: after epx_dispatch_send, without waiting for every source,
 * fill *recv as epx_dispatch_recv would and set ready[j] (j < the number
 * of local experts) to 1 when every row of local expert j has arrived
 * (those rows may be read), else 0; *num_ready counts the ones.  Expert
 * compute can start on ready experts while the rest arrive; the call
 * does not wait for any.
 * epx_dispatch_recv must still be called before epx_combine_send.
 * Throughput mode (src/moe/ht_poll.c): epx_dispatch_send has exchanged
 * the counts, so num_rows, expert_counts and expert_offsets are final for
 * every expert, ready or not; only the rows of an expert not ready may
 * still be arriving.  Expert j is ready when every source with rows for
 * it has written this call's completion word (at once if none has rows
 * for it; every expert after epx_dispatch_recv).  Low latency: expert j
 * is ready when every source's count word for it has arrived (rows come
 * before it); counts of experts not ready read 0.
 * Device ranks, throughput mode (src/cuda/README.md, "Readiness"): poll
 * never waits and never synchronises a stream; it reads what the
 * engine's receive kernel stores in host-mapped memory.  Until that
 * kernel runs (the counts exchanged and this rank's own rows sent, on
 * the engine's stream), no expert is ready and num_rows, expert_counts
 * and expert_offsets read 0; from then on they are final, as on host
 * ranks.  Expert j is ready once that kernel has seen the data flag of
 * every source with rows for it (at once if none has; NCCL: every expert
 * once the grouped receive is done); its rows, their metadata and
 * (expert-major) its padding marks are then in device memory, and work
 * the caller queues after the poll that reported it, on any stream,
 * reads them.  The caller's stream is not ordered after the engine's
 * until epx_dispatch_recv: queue no read of an expert's rows before a
 * poll reported it ready.
 * Device ranks, low latency (both backends; src/cuda/README.md,
 * "Readiness in low latency"; over NCCL every expert once the grouped
 * receive is done): the same without waiting or
 * synchronising; expert j is ready once the engine's receive kernel has
 * seen every source's count word for it (and written its rows'
 * metadata), and its count is then final; recv->expert_counts is HOST
 * memory here (the ready experts' counts, 0 for the others), unlike
 * epx_dispatch_recv's device array.  A source's failure (a bad argument,
 * an overflow) makes poll return EPX_ERR_PEER (or EPX_ERR_RANGE) and no
 * expert of the call is ever reported ready; the call is then failed
 * (recv returns the error, combine EPX_ERR_STATE: release it).  With
 * EPX_CUDA_KERNELS=fused the call's first poll queues its receive phase
 * at once (epx_dispatch_recv then queues none).  A poll of a call being
 * captured into a graph reports nothing ready. */
epx_status_t epx_dispatch_poll(epx_moe_t *moe, epx_handle_t *handle,
                               epx_recv_t *recv, uint8_t *ready,
                               int *num_ready);

#define EPX_COMBINE_UNWEIGHTED 0x1u /* expert-major: y already weighted */

#define EPX_COMBINE_ARGS_VERSION 2
typedef struct epx_combine_args {
    size_t struct_size;
    unsigned version;
    /* Expert outputs in the layout dispatch produced: [num_rows, H],
     * dtype = engine dtype.  Token-major: the row is this rank's whole
     * contribution for the token (the caller sums its local experts with
     * the weights dispatch gave).  Expert-major: one row per (token, local
     * expert); combine applies the weights unless UNWEIGHTED.
     * In place: y.data may be the received x buffer (epx_recv_t.x.data),
     * overwritten by the expert outputs.  Where every peer is mapped (shm)
     * the sources then read the outputs straight from this rank's memory,
     * saving one copy; the result is bitwise the same.  Not with a
     * quantized wire (x is narrower than y): y there is EPX_ERR_INVALID. */
    epx_tensor_t y;
    unsigned flags;            /* EPX_COMBINE_* */
    /* version 2 */
    void *stream;              /* device ranks: the cudaStream_t of this
                                  combine and its epx_combine_recv (NULL:
                                  the legacy stream); ignored on host ranks */
} epx_combine_args_t;

#define EPX_COMBINE_ARGS_INIT                                                 \
    { sizeof(epx_combine_args_t), EPX_COMBINE_ARGS_VERSION,                   \
      { NULL, EPX_DTYPE_BF16, 0, 0 }, 0u, NULL }

/* Split combine.  A bad y or out is this rank's own error: nothing is sent
 * or consumed and the call may be retried (peers wait meanwhile).
 * out[t] = sum over destination ranks r in ascending order
 * of partial_r(t), partial_r = sum over t's experts on r in top-k order of
 * w * y (fp32), rounded to the engine dtype for the wire; the final sum is
 * fp32 and rounded once to out's dtype (BF16 or FP32).  An FP64 engine
 * does the same in double (w widened exactly): its partials travel in
 * double, and out is FP64 (the double sum as it is).  Bitwise
 * reproducible.  Only the entries dispatched count: -1, lost experts
 * (EPX_MOE_ELASTIC) and rows dropped (EPX_MOE_LL_DROP) contribute nothing;
 * tokens with no expert get zeros. */
epx_status_t epx_combine_send(epx_moe_t *moe, epx_handle_t *handle,
                              const epx_combine_args_t *args);
epx_status_t epx_combine_recv(epx_moe_t *moe, epx_handle_t *handle,
                              epx_tensor_t *out);

/* Errors found after the call that caused them returned, and in *dropped
 * (may be NULL) the rows dropped on this rank since the last check (low
 * latency with EPX_MOE_LL_DROP; 0 otherwise), on both kinds of rank.
 * Host ranks find every error in the call itself: EPX_OK.  Device ranks:
 * synchronises with the engine's stream (never while capturing a graph)
 * and returns the first device-side error of the calls since the last
 * check — EPX_ERR_INVALID (ids outside [-1, E), or an expert a token
 * names twice), EPX_ERR_RANGE (low latency: more rows than ll_capacity
 * without EPX_MOE_LL_DROP), EPX_ERR_PEER, EPX_ERR_TIMEOUT (the engine is
 * then unusable). */
epx_status_t epx_moe_check(epx_moe_t *moe, int64_t *dropped);

/* Local (not collective).  Releasing the handle of a call in flight
 * waits for that phase's peers first, so the engine stays in step.
 * Release every handle before destroying its engine. */
void epx_handle_release(epx_handle_t *handle);

/* Replica routing: which replica of a logical expert a token goes to. */
typedef enum epx_replica_policy {
    /* A replica on the source rank, else one in the source's domain
     * (epx_comm_topology), else one of all; among several candidates the
     * source takes candidate (source rank mod count): a fixed table, so a
     * source always uses the same replica and sources spread evenly. */
    EPX_REPLICA_LOCAL_FIRST = 0,
    /* Replica (token index mod replica count), replicas in slot order. */
    EPX_REPLICA_ROUND_ROBIN = 1
} epx_replica_policy_t;

/* Physical placement of one layer (engines with num_slots): slot s holds
 * logical expert phy2log[s] (every expert at least once; with
 * EPX_MOE_ELASTIC experts may be left out: they are lost in that layer),
 * e.g. from epx_balance_plan.  Local, but every rank must pass the same
 * placement before its next dispatch of the layer: dispatch checks that
 * they agree (EPX_ERR_MISMATCH).  Not while a dispatch of the engine is
 * in flight. */
epx_status_t epx_moe_set_placement(epx_moe_t *moe, int layer,
                                   const int32_t *phy2log,
                                   epx_replica_policy_t policy);
/* 1 when logical `expert` has no slot in the layer's placement (lost,
 * EPX_MOE_ELASTIC), 0 when it has one (always for an engine without
 * num_slots), -1 for a NULL engine, a layer or expert out of range, or a
 * layer without a placement yet.  Local. */
int epx_moe_expert_lost(const epx_moe_t *moe, int layer, int expert);

/* Load statistics: tokens routed to each logical expert and to each
 * physical slot (replica), per layer, recorded by every successful
 * dispatch (cached ones too) from the counts its routing layout computes
 * anyway (no extra pass over the tokens).  Without num_slots the physical
 * units are the experts themselves. */
typedef struct epx_moe_stats {
    size_t struct_size;        /* set to sizeof(epx_moe_stats_t) */
    int num_layers, num_experts;
    int64_t dispatches;        /* recorded since the last reset (this rank;
                                  global: summed over ranks) */
    const int64_t *window;     /* [layers][experts] tokens since the reset,
                                  or in the moving window (window_size) */
    const double *decayed;     /* [layers][experts] load per dispatch,
                                  decayed by stats_decay at each dispatch
                                  of the layer */
    int num_slots;             /* physical units: slots, or the experts */
    const int64_t *physical;   /* [layers][num_slots] tokens each slot
                                  received since the reset */
    /* Bytes this rank's dispatches and combines put into windows (its own
     * included) since the reset: rows, scales, per-row metadata and the
     * count exchange, as the transport was handed them (global: summed). */
    int64_t dispatch_bytes, combine_bytes;
    int window_size;           /* window: tokens over the layer's last
                                  window_size dispatches; 0: since the reset
                                  (epx_moe_stats_config) */
} epx_moe_stats_t;

/* global 0: this rank's own tokens, local.  global 1: summed over every
 * rank (collective: every rank calls it).  The arrays belong to the engine
 * and stay valid until its next epx_moe_stats call or its destruction.
 * Device ranks in low latency: first reads the calls the device recorded
 * since the last read (synchronising with the engine's stream; see
 * "Device ranks"). */
epx_status_t epx_moe_stats(epx_moe_t *moe, int global, epx_moe_stats_t *stats);
/* Local: clear this rank's window and decayed load. */
epx_status_t epx_moe_stats_reset(epx_moe_t *moe);
/* Local: the moving window and the decay of the load statistics (the
 * load prediction epx_moe_rebalance_plan uses).  window > 0: `window`
 * holds the tokens of each layer's last `window` dispatches (a ring of
 * window x num_experts counts per layer); 0: since the reset; < 0: kept.
 * decay in [0, 1) replaces stats_decay; < 0: kept.  Clears the statistics
 * (epx_moe_stats_reset).  Each rank may choose its own; the global sums
 * mean what they say only when every rank chose the same. */
epx_status_t epx_moe_stats_config(epx_moe_t *moe, int window, double decay);
/* The statistics as one JSON object ({"layers", "experts", "slots",
 * "dispatches", "window": [[..]..], "decayed": [[..]..], "physical":
 * [[..]..]}); *json is malloc'd (free()). */
epx_status_t epx_moe_stats_json(const epx_moe_stats_t *stats, char **json);

/* Hierarchical engines (EPX_MOE_HIERARCHICAL): bytes this rank put into
 * ranks of other domains since the engine was created — token rows in
 * dispatch (in the wire format, one per token and remote destination
 * domain), fp32 accumulators (fp64 for an FP64 engine) in combine;
 * routing metadata not counted.  Local.  Device ranks count the same
 * bytes on the device, and the call waits for the work queued on the
 * engine's stream (it synchronises; never while capturing a graph).
 * Other engines: EPX_ERR_UNSUPPORTED. */
epx_status_t epx_moe_cross_domain_bytes(const epx_moe_t *moe,
                                        int64_t *dispatch_bytes,
                                        int64_t *combine_bytes);

/* Number of tokens of the source rank's dispatch recorded in a handle. */
int64_t epx_handle_num_tokens(const epx_handle_t *handle);

/* -------------------------------------------------------------- balance */

/* Placement planner: given the load of every logical expert of every
 * layer, choose how many replicas each expert gets and which physical
 * slot holds each replica.  Slot s lives on rank s / (num_slots /
 * num_ranks); rank r lies in domain r / (num_ranks / num_domains).  Pure
 * computation, no communicator; thread-safe. */

typedef enum epx_balance_policy {
    /* DeepSeek EPLB: hierarchical when num_domains divides num_groups
     * (groups packed onto domains, replicas within a domain), else global.
     * Reproduces EPLB's published placements; ties broken as
     * src/balance/README.md says. */
    EPX_BALANCE_DEEPSEEK = 0,
    /* Same structure; replica counts and packing improved by local search
     * (exact search on small domains); replicas of one expert on distinct
     * ranks unless sharing a rank is strictly better; with current_phy2log
     * replicas that stay on their rank keep their slots.  Its maximum rank
     * load is never above DEEPSEEK's, in any layer. */
    EPX_BALANCE_EPX = 1
} epx_balance_policy_t;

/* What a plan moves (epx_balance_params_t.report). */
typedef struct epx_balance_report {
    int64_t moves;             /* slots whose expert differs from
                                  current_phy2log (all of them without it) */
    int64_t bytes;             /* moves x bytes_per_slot */
    double max_before;         /* sum over layers of the max rank load of
                                  current_phy2log (0 without it) */
    double max_after;          /* the same for the plan */
} epx_balance_report_t;

#define EPX_BALANCE_PARAMS_VERSION 4
typedef struct epx_balance_params {
    size_t struct_size;        /* sizeof(epx_balance_params_t) */
    unsigned version;          /* EPX_BALANCE_PARAMS_VERSION */
    int num_layers;            /* >= 1 */
    int num_experts;           /* logical experts E, >= 1 */
    int num_slots;             /* physical slots S >= E (with `lost`: >=
                                  the available experts of every layer),
                                  a multiple of ranks */
    int num_groups;            /* expert groups, divides E (1: none) */
    int num_domains;           /* divides num_ranks (1: one domain) */
    int num_ranks;             /* >= 1 */
    epx_balance_policy_t policy;
    /* EPX policy, optional: the placement in use, [layers][slots]; slots
     * whose expert stays on their rank are kept.  Ignored by DEEPSEEK. */
    const int32_t *current_phy2log;
    /* version 2.  Budgeted re-planning (EPX policy, needs
     * current_phy2log, every expert in it): when max_moves or max_bytes
     * is >= 0, the plan is the current placement improved step by step
     * (a slot changes expert, or two slots swap), at most max_moves slots
     * changed over all layers and at most max_bytes bytes of weights
     * moved; its max rank load is never above the current one, in any
     * layer.  -1: no limit. */
    int64_t max_moves;
    int64_t max_bytes;
    int64_t bytes_per_slot;    /* one expert's weights, for max_bytes and
                                  report->bytes */
    epx_balance_report_t *report; /* optional, filled on success */
    /* version 3.  Optional, [layers][experts]: nonzero = the expert is
     * lost (no replica's weights survive anywhere, e.g. after
     * epx_balance_shrink).  Plans then give a lost expert no slot
     * (logcnt 0, log2phy all -1) and spread the slots over the available
     * experts only: each layer is planned as the same problem restricted
     * to its available experts (num_experts = their number, loads and
     * current_phy2log renumbered in expert order; num_groups kept when
     * every group keeps equally many experts, else 1, which plans that
     * layer globally), and mapped back.  current_phy2log must place no
     * lost expert, and with max_moves / max_bytes every available one;
     * re-planning never places a lost expert.  Metrics: see
     * epx_balance_metrics.  NULL: every expert is available. */
    const uint8_t *lost;
    /* version 4.  Threads that plan layers at once, the caller's among
     * them (0 or 1: the caller's alone); the plan is the same for any
     * number.  Layers are independent when planned from scratch (with or
     * without lost experts); budgeted re-planning shares one budget over
     * the layers and uses them only for each layer's first search. */
    int num_threads;
} epx_balance_params_t;

#define EPX_BALANCE_PARAMS_INIT                                               \
    { sizeof(epx_balance_params_t), EPX_BALANCE_PARAMS_VERSION, 0, 0, 0, 1,   \
      1, 0, EPX_BALANCE_EPX, NULL, -1, -1, 0, NULL, NULL, 0 }

/* Plan a placement.  load: [layers][experts], finite and >= 0.
 * phy2log: [layers][slots], the logical expert of each slot.
 * log2phy: [layers][experts][max_replicas], the slots of each expert in
 * replica order, -1 padded; may be NULL (max_replicas then ignored);
 * num_slots - num_experts + 1 is always enough, fewer gives EPX_ERR_RANGE
 * if some expert needs more.  logcnt: [layers][experts] replica counts;
 * may be NULL. */
epx_status_t epx_balance_plan(const epx_balance_params_t *params,
                              const double *load, int32_t *phy2log,
                              int32_t *log2phy, int max_replicas,
                              int32_t *logcnt);

/* How even a placement is.  A rank's load is the sum over its slots of
 * load[expert] / (replicas of expert), replicas counted from phy2log.
 * phy2log NULL: no balancer, expert e whole on the rank
 * epx_moe_expert_rank gives (contiguous blocks; num_slots is ignored).
 * Per layer: balancedness = mean / max rank load (1 = perfect),
 * imbalance = (max - mean) / mean (0 = perfect); a layer with no load
 * counts as perfect.  Overall: the same ratios of the sums over layers of
 * mean and max (the max rank of each layer sets that layer's time).
 * An expert with load > 0 must have a slot, unless params->lost marks it
 * lost: a lost expert must have none, and its load (tokens dropped) is on
 * no rank, so mean, max and both ratios describe the load that is served
 * (with phy2log NULL too).  Every output may be NULL; per-layer outputs
 * are [layers]. */
epx_status_t epx_balance_metrics(const epx_balance_params_t *params,
                                 const double *load, const int32_t *phy2log,
                                 double *balancedness, double *imbalance,
                                 double *layer_balancedness,
                                 double *layer_imbalance);

/* Elastic expert parallelism: the placement left when ranks are gone.
 * params gives the old placement's shape: num_layers, num_experts,
 * num_slots and num_ranks (num_slots a multiple of num_ranks; num_slots
 * may be below num_experts, for a placement that already leaves lost
 * experts out); its other fields are not read.  phy2log:
 * [layers][num_slots], every entry an expert; live: [num_ranks], nonzero =
 * the rank survives (at least one).  The survivors, renumbered densely in
 * the old order, keep their slots: new_phy2log is [layers][nlive *
 * slots_per_rank], new rank i's slots being the slots of the i-th live
 * rank, unchanged.  lost (may be NULL): [layers][num_experts], 1 for an
 * expert in no remaining slot (its weights are gone), else 0; pass it as
 * epx_balance_params_t.lost to plan for the live ranks.  num_lost (may be
 * NULL): the number of (layer, expert) pairs lost.  Outputs are written
 * only on success. */
epx_status_t epx_balance_shrink(const epx_balance_params_t *params,
                                const int32_t *phy2log, const uint8_t *live,
                                int32_t *new_phy2log, uint8_t *lost,
                                int64_t *num_lost);

/* ------------------------------------------------------ weight migration */

/* Live rebalancing of an engine with num_slots.  Register, per layer, this
 * rank's expert weights: slots_per_rank (= num_slots / R) consecutive
 * slots of bytes_per_slot bytes at `base`, local slot j holding the
 * weights of the expert placed on slot first_local + j.  Collective: every
 * rank registers the same layer with the same bytes_per_slot.
 * Device ranks: `base` is device memory of the rank's device (host memory
 * is refused, EPX_ERR_INVALID); the call allocates device staging, so it
 * is refused (EPX_ERR_STATE) while a call of the engine is in flight.
 * The weights move GPU to GPU (the engine's window sharing, or NCCL
 * send/recv with the NCCL backend) on a stream of the engine's own, so
 * they overlap dispatch/combine.  They must be written (their stream
 * synchronised) before rebalance_start reads them.  finish queues the
 * landing and the switch on the device, after the engine's work queued
 * before it and before its later work: the next dispatch of the layer
 * routes by the new placement and its recv orders the caller's stream
 * after the new weights; epx_moe_check also waits for them.  Not while
 * the engine's calls are being captured into a CUDA graph. */
epx_status_t epx_moe_register_weights(epx_moe_t *moe, int layer, void *base,
                                      size_t bytes_per_slot);

typedef struct epx_rebalance_stats {
    size_t struct_size;        /* set to sizeof(epx_rebalance_stats_t) */
    int unchanged;             /* this rank's slots that kept their expert */
    int local_copies;          /* filled from a replica on this rank */
    int received;              /* filled from another rank */
    int sent;                  /* slots this rank sent to others */
} epx_rebalance_stats_t;

/* Collective, between dispatches (not while one of this engine is in
 * flight): move the layer's weights to `phy2log` (every rank the same)
 * and switch the layer's placement to it when the call returns.  Slots
 * that keep their expert are not touched; a slot whose new expert already
 * has a replica on this rank is copied locally; the others receive the
 * weights of an old replica through the transport into a staging buffer,
 * then everything lands at once.  Other layers are unaffected.  `stats`
 * may be NULL. */
epx_status_t epx_moe_rebalance(epx_moe_t *moe, int layer,
                               const int32_t *phy2log,
                               epx_replica_policy_t policy,
                               epx_rebalance_stats_t *stats);

/* The same in two halves, so that the move overlaps dispatch/combine of
 * any layer.  start (collective) validates `phy2log` on every rank, then
 * puts the old weights of the slots whose expert changes into their
 * destinations' staging; nothing the engine uses changes.  Until finish,
 * every layer, this one included, routes by its placement in use and its
 * registered weights stay as they were: two placements are held for the
 * layer, the one in use and the pending one (in staging).  finish
 * (collective) waits for the weights, then every rank agrees that no call
 * of the layer is in flight anywhere (dispatched and not yet combine_sent
 * or released: its rows were routed by the old placement and are computed
 * with the old weights); if one is, every rank returns EPX_ERR_STATE (that
 * rank) or EPX_ERR_PEER (the others), nothing lands, and finish may be
 * called again later.  Otherwise every rank lands its staging and switches
 * the layer, so each token is routed, computed and combined under exactly
 * one placement.  One migration at a time per engine (EPX_ERR_STATE). */
epx_status_t epx_moe_rebalance_start(epx_moe_t *moe, int layer,
                                     const int32_t *phy2log,
                                     epx_replica_policy_t policy);
epx_status_t epx_moe_rebalance_finish(epx_moe_t *moe,
                                      epx_rebalance_stats_t *stats);

/* Online re-planning from the engine's statistics. */
#define EPX_REBALANCE_ARGS_VERSION 1
typedef struct epx_rebalance_args {
    size_t struct_size;        /* sizeof(epx_rebalance_args_t) */
    unsigned version;          /* EPX_REBALANCE_ARGS_VERSION */
    epx_balance_policy_t policy;  /* EPX: re-plan within the budget */
    int num_groups;            /* as epx_balance_params_t (1: none) */
    int num_domains;           /* (1: one domain) */
    int use_decayed;           /* predicted load: 0 the window sums,
                                  1 the decayed load (epx_moe_stats) */
    int64_t max_moves;         /* slots changed over all layers, -1: any */
    int64_t max_bytes;         /* weights moved, -1: any; a slot costs the
                                  largest registered bytes_per_slot */
} epx_rebalance_args_t;

#define EPX_REBALANCE_ARGS_INIT                                               \
    { sizeof(epx_rebalance_args_t), EPX_REBALANCE_ARGS_VERSION,               \
      EPX_BALANCE_EPX, 1, 1, 0, -1, -1 }

/* Collective: sum the statistics over the ranks (epx_moe_stats, global)
 * and plan every layer from its placement in use (each layer needs one)
 * with the budget (epx_balance_plan with current_phy2log, max_moves,
 * max_bytes).  phy2log: [layers][num_slots], the same on every rank;
 * migrate each layer with epx_moe_rebalance or start/finish (slots that
 * keep their expert do not move).  report may be NULL. */
epx_status_t epx_moe_rebalance_plan(epx_moe_t *moe,
                                    const epx_rebalance_args_t *args,
                                    int32_t *phy2log,
                                    epx_balance_report_t *report);
#if defined(__GNUC__) && !defined(EPX_NO_VISIBILITY)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
}
#endif
#endif /* EPX_H */
