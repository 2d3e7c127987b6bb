/*
 * The GPU executor (include/epx/cuda.h): setup, argument checks and the
 * order of kernels and exchanges on the engine's stream.  Throughput mode,
 * token-major or expert-major (both backends); the protocol is
 * the host executor's (count rows to every rank, then rows at offsets
 * computed from the whole count matrix, partials back to the slot each
 * token had in its source's packed order).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "epx/cuda.h"
#include "cuda/gpu.h"
#include "cuda/calls.h"
#include "cuda/cuda_int.h"
#include "cuda/kern_launch.h"
#include "cuda/hier_int.h"
#include "cuda/mig_int.h"
#include "cuda/nccl_ex.h"
#include "proto/ll_nccl.h"
#include "core/comm.h"
#include "moe/wire.h"
#include "util/util.h"

/* A throughput layout (src/cuda/README.md, "Cached dispatch"): one per
 * handle that dispatched, from its uncached dispatch until its release;
 * d holds what lay_point points the call at. */
typedef struct gpu_lay {
    char *d;
    int used;
    int32_t seq;                /* sequence word of the call that made it */
} gpu_lay_t;

/* The GPU settings of epx_moe_params_t (version 4). */
typedef struct cuda_params {
    int device, num_sms;
    epx_gpu_backend_t backend;
    void *nccl_comm;
} cuda_params_t;

struct gpu_moe {
    epx_comm_t *comm;
    epx_moe_params_t p;
    epx_gpu_backend_t backend;
    int device, num_sms, L, first;
    int kset;                   /* EPX_CUDA_KERNELS: EPXK_SET_* */
    int ht_fits;                /* the fused dispatch's grids fit at once */
    char name[32];
    proto_geom_t g;
    cudaStream_t st;
    cudaEvent_t ev_in, ev_out, ev_info;
    epx_cuwin_t *win;           /* windows backend */
    epx_nccl_t *nccl;           /* NCCL backend */
    char *local;                /* this rank's window / receive buffer */
    char *stage;                /* NCCL: packed rows and metadata */
    char **d_peers;             /* [R] device copy of the bases */
    int32_t *d_e2r, *d_first, *d_dest, *d_pos, *d_mycnt, *d_epos, *d_part;
    int64_t *d_sendoff, *d_base, *d_info, *d_ebase;
    unsigned *d_done;
    int64_t *h_info;            /* pinned: the one read-back per dispatch */
    int32_t *h_cnt;             /* pinned: NCCL count matrix + own row */
    int32_t *h_ecnt;            /* pinned: [E] this rank's pairs per expert
                                   (load statistics), read back with h_info */
    int64_t *h_counts;          /* [2L] expert_counts and expert_offsets
                                   handed to the caller */
    int32_t *h_local;           /* [B][L] local_experts, per buffer (its
                                   call's layer: slots hold experts) */
    int blayer[GPU_CALLS_MAX];  /* layer of each buffer's call */
    /* replicas (num_slots): per layer, the host executor's routing tables
     * (epx_moe_set_placement) in device memory, staged through pinned */
    int Elog, layers;
    int32_t *d_route, *h_route; /* [layers][E pick, E + 1 off, U rep] */
    int32_t *h_p2l;             /* [layers][U] */
    int8_t *h_placed, *h_rr;    /* [layers] set; round robin */
    int64_t *nsend, *sendoff, *nrecv, *rbase;  /* NCCL, [R] each */
    int64_t *rsize;             /* NCCL expert-major: [4][R] the same for
                                   rows (proto.h, "expert-major over NCCL") */
    char *rstage;               /* NCCL expert-major: rows received in
                                   source order; combine's partials */
    int64_t *d_emmap;           /* NCCL expert-major: the receiver's map */
    uint64_t seq;
    int64_t T, rows;
    int broken;
    gpu_calls_t calls;          /* calls in flight and their order (calls.h) */
    int64_t comb_T;             /* tokens of the call being combined */
    uint64_t pull_pending;      /* fused combine (kern_comb.cu): the last
                                   call combined, for the next dispatch's
                                   pull fence; 0: none */
    float *d_scratch;           /* low latency: [maxT][H] fp32 (fp64 for an
                                   FP64 engine), the output of a combine
                                   released before its recv */
    epxk_call_t call;
    /* low latency (ll set) */
    int ll;
    proto_ll_t llg;
    int32_t *d_llkeep, *d_lldest, *d_llcnt, *d_llmystat, *d_llsrc;
    int64_t *d_llsendoff, *d_llcounts, *d_llstate;
    uint32_t *d_lluse;
    int64_t *h_lloffs;          /* [L] j * R * cap */
    /* low latency in one kernel per operation (EPX_CUDA_KERNELS=fused,
     * windows, the layout within PROTO_LL1_SMEM_MAX; kern_ll.cu): the
     * receive phase's mark words, [B][L * R] */
    int ll1;
    uint64_t *d_llmark;
    int8_t ll1_recvd[GPU_CALLS_MAX];   /* buffer's call: receive phase queued
                                          (a second recv queues none) */
    /* low latency, epx_dispatch_poll: what the recv kernels publish,
     * [B][EPXK_LLPUB_LEN(L)] (host-mapped; h_ the host's address, d_ the
     * device's), and the counts poll hands the caller, [B][L] */
    int64_t *h_llpub, *d_llpub, *h_llpoll;
    gpu_mig_t *mig;             /* weight migration (migrate.c), or NULL */
    /* low latency over NCCL (proto/ll_nccl.h): each rank's units, and
     * the grouped exchange's operations, [2R] */
    int32_t *h_lln_first;
    epx_nccl_p2p_t *lln_ops;
    /* low latency's load statistics: the device's ring (kern_launch.h
     * EPXK_LL_STATS_RING) and the calls of it the host has read */
    int64_t *d_llnstat;
    int32_t *d_llring, *h_llring;
    int64_t ll_seen;
    /* throughput: layouts, and what the recv kernel publishes for
     * epx_dispatch_poll (host-mapped, EPXK_PUB_*; h_ the host's address,
     * d_ the device's) */
    gpu_lay_t *lays;
    int nlays;
    int64_t *h_pub, *d_pub;
    /* the fused dispatch (kern_ht.cu): its grid barrier and completion
     * counter; whether the call in flight took it, and its number */
    unsigned *d_fbar;
    int fcall;
    uint64_t fseq;
    /* EPX_MOE_ELASTIC (kern_lost.cu): each call's pairs per logical
     * expert lost in its layer, on the device; throughput mode also
     * copies them to h_ecnt + units (host-mapped, d_ecnt the device's
     * address) */
    int elastic;
    int32_t *d_lostcnt, *d_ecnt;
    gpu_hier_t *hier;           /* EPX_MOE_HIERARCHICAL (hier.c), or NULL */
};

/* ------------------------------------------------------------- helpers */

epx_status_t epx_cuda_devices(int *count)
{
    if (!count)
        return epx__error(EPX_ERR_INVALID, "cuda: count is NULL");
    return epx__cuda_devices(count);
}

static epx_status_t check_params(const epx_moe_params_t *p,
                                 const cuda_params_t *c)
{
    if (!p || p->struct_size < offsetof(epx_moe_params_t, num_layers) ||
        p->version < 1)
        return epx__error(EPX_ERR_INVALID, "cuda moe: params missing or "
                          "without struct_size/version");
    if (p->hidden <= 0 || p->num_experts <= 0 || p->topk < 1 ||
        p->topk > EPX_MAX_TOPK || p->topk > p->num_experts ||
        p->max_tokens_per_rank < 0)
        return epx__error(EPX_ERR_INVALID, "cuda moe: hidden %d, experts %d, "
                          "topk %d, max tokens %d out of range", p->hidden,
                          p->num_experts, p->topk, p->max_tokens_per_rank);
    if (p->dtype != EPX_DTYPE_BF16 && p->dtype != EPX_DTYPE_FP32 &&
        p->dtype != EPX_DTYPE_FP64)
        return epx__error(EPX_ERR_INVALID, "cuda moe: dtype must be BF16, "
                          "FP32 or FP64");
    if (p->layout != EPX_LAYOUT_TOKEN_MAJOR &&
        p->layout != EPX_LAYOUT_EXPERT_MAJOR)
        return epx__error(EPX_ERR_INVALID, "cuda moe: unknown layout %d",
                          (int)p->layout);
    if (p->layout == EPX_LAYOUT_EXPERT_MAJOR && p->expert_alignment < 1)
        return epx__error(EPX_ERR_INVALID, "cuda moe: expert_alignment %d "
                          "(>= 1)", p->expert_alignment);
    int v3 = p->version >= 3 &&
             p->struct_size >= offsetof(epx_moe_params_t, flags) +
                                   sizeof(unsigned);
    int v2 = p->version >= 2 &&
             p->struct_size >= offsetof(epx_moe_params_t, mode);
    /* EPX_MOE_ELASTIC: the engine's checks (src/moe/engine.c) allow any
     * num_slots >= 1 and need one */
    const int elastic = v3 && (p->flags & EPX_MOE_ELASTIC);
    if (v2 && p->num_slots != 0 && p->num_slots < p->num_experts &&
        !elastic)
        return epx__error(EPX_ERR_INVALID, "cuda moe: num_slots %d below "
                          "num_experts %d", p->num_slots, p->num_experts);
    if (elastic && (!v2 || p->num_slots <= 0))
        return epx__error(EPX_ERR_INVALID, "cuda moe: EPX_MOE_ELASTIC needs "
                          "num_slots");
    if (v3 && p->mode != EPX_MODE_THROUGHPUT &&
        p->mode != EPX_MODE_LOW_LATENCY)
        return epx__error(EPX_ERR_INVALID, "cuda moe: unknown mode %d",
                          (int)p->mode);
    if (v3) {
        moe_wire_t f;   /* unknown format, or quantized and not BF16 */
        epx_status_t st = moe_wire_init(&f, p->wire, p->dtype, p->hidden);
        if (st != EPX_OK)
            return st;
    }
    if (v3 && p->mode == EPX_MODE_THROUGHPUT &&
        (p->flags & ~(EPX_MOE_ELASTIC | EPX_MOE_HIERARCHICAL)) != 0)
        return epx__error(EPX_ERR_UNSUPPORTED, "cuda moe: flags 0x%x are not "
                          "implemented on the GPU in throughput mode",
                          p->flags);
    if (v3 && p->mode == EPX_MODE_LOW_LATENCY) {
        if (p->layout != EPX_LAYOUT_EXPERT_MAJOR)
            return epx__error(EPX_ERR_INVALID, "cuda moe: low-latency output "
                              "is per expert: use EPX_LAYOUT_EXPERT_MAJOR");
        if (p->flags & EPX_MOE_HIERARCHICAL)   /* the host's status */
            return epx__error(EPX_ERR_INVALID, "moe: EPX_MOE_HIERARCHICAL "
                              "needs EPX_MODE_THROUGHPUT");
        if (p->flags & ~(EPX_MOE_LL_DROP | EPX_MOE_ELASTIC))
            return epx__error(EPX_ERR_UNSUPPORTED, "cuda moe: low latency "
                              "takes no flag but EPX_MOE_LL_DROP and "
                              "EPX_MOE_ELASTIC");
        if (p->ll_capacity < 0 || p->ll_buffers < 0 || p->ll_buffers == 1 ||
            p->ll_buffers > 64)
            return epx__error(EPX_ERR_INVALID, "cuda moe: ll_capacity (%d) "
                              "must be >= 0 and ll_buffers (%d) 0 or in "
                              "[2, 64]", p->ll_capacity, p->ll_buffers);
        if (p->max_tokens_per_rank > PROTO_LL_MASK ||
            p->ll_capacity > PROTO_LL_MASK)
            return epx__error(EPX_ERR_RANGE, "cuda moe: low latency counts "
                              "rows in 24 bits: max_tokens_per_rank (%d) and "
                              "ll_capacity (%d) must be <= %d",
                              p->max_tokens_per_rank, p->ll_capacity,
                              PROTO_LL_MASK);
    }
    if (c->num_sms < 0)
        return epx__error(EPX_ERR_INVALID, "cuda moe: num_sms %d", c->num_sms);
    if (c->backend != EPX_GPU_BACKEND_WINDOWS &&
        c->backend != EPX_GPU_BACKEND_NCCL)
        return epx__error(EPX_ERR_INVALID, "cuda moe: unknown backend %d",
                          (int)c->backend);
    if (c->nccl_comm && c->backend != EPX_GPU_BACKEND_NCCL)
        return epx__error(EPX_ERR_INVALID, "cuda moe: nccl_comm given for "
                          "the windows backend");
    return EPX_OK;
}

/* What every rank must agree on, and its max_tokens_per_rank. */
typedef struct agree {
    int32_t status, hidden, experts, topk, dtype, backend, device_ok;
    int32_t layout, align, mode, cap, bufs, flags, wire, max_tokens, slots,
            layers, kset;
} agree_t;

static epx_status_t agree(epx_comm_t *comm, agree_t *mine, int64_t *maxT)
{
    const int R = comm->nranks;
    agree_t *all = malloc(sizeof(*all) * (size_t)R);
    if (!all)
        return epx__error(EPX_ERR_NOMEM, "cuda moe: out of memory");
    epx_status_t st = epx__comm_allgather(comm, mine, all, sizeof(*mine));
    if (st != EPX_OK) {
        free(all);
        return st;
    }
    *maxT = 0;
    for (int r = 0; r < R && st == EPX_OK; r++) {
        if (all[r].status != EPX_OK)
            st = mine->status != EPX_OK
                ? (epx_status_t)mine->status
                : epx__error(EPX_ERR_PEER, "cuda moe: rank %d failed", r);
        else if (all[r].hidden != mine->hidden ||
                 all[r].experts != mine->experts ||
                 all[r].topk != mine->topk || all[r].dtype != mine->dtype ||
                 all[r].backend != mine->backend ||
                 all[r].layout != mine->layout || all[r].align != mine->align ||
                 all[r].mode != mine->mode || all[r].cap != mine->cap ||
                 all[r].bufs != mine->bufs || all[r].flags != mine->flags ||
                 all[r].wire != mine->wire || all[r].slots != mine->slots ||
                 all[r].layers != mine->layers || all[r].kset != mine->kset)
            st = epx__error(EPX_ERR_MISMATCH, "cuda moe: rank %d has other "
                            "hidden/experts/topk/dtype/backend/layout/"
                            "alignment/mode/ll_capacity/ll_buffers/flags/"
                            "wire/num_slots/num_layers/EPX_CUDA_KERNELS", r);
        if (all[r].max_tokens > *maxT)
            *maxT = all[r].max_tokens;
    }
    free(all);
    return st;
}

static epx_status_t launch(gpu_moe_t *m, int which)
{
    int rc = epxk_launch(which, &m->g, &m->call, m->num_sms, m->st);
    return epx__cuda_err((cudaError_t)rc, "kernel launch");
}

/* Let the engine's stream run after the work queued on `stream`. */
static epx_status_t stream_in(gpu_moe_t *m, void *stream)
{
    EPX_CUDA_TRY(cudaEventRecord(m->ev_in, (cudaStream_t)stream));
    EPX_CUDA_TRY(cudaStreamWaitEvent(m->st, m->ev_in, 0));
    return EPX_OK;
}

/* And `stream` after the engine's work. */
static epx_status_t stream_out(gpu_moe_t *m, void *stream)
{
    EPX_CUDA_TRY(cudaEventRecord(m->ev_out, m->st));
    EPX_CUDA_TRY(cudaStreamWaitEvent((cudaStream_t)stream, m->ev_out, 0));
    return EPX_OK;
}

static epx_status_t set_device(const gpu_moe_t *m)
{
    return epx__cuda_err(cudaSetDevice(m->device), "cudaSetDevice");
}

static epx_status_t usable(gpu_moe_t *m, const char *what)
{
    if (!m)
        return epx__error(EPX_ERR_INVALID, "%s: engine is NULL", what);
    if (m->broken)
        return epx__error(EPX_ERR_STATE, "%s: the engine is unusable after "
                          "an earlier failure (destroy it)", what);
    return set_device(m);
}

static epx_status_t fail(gpu_moe_t *m, epx_status_t st)
{
    m->broken = 1;
    return st;
}

/* ------------------------------------------------------------- layouts */

/* Bytes of a layout: int64 sendoff [R], base [R], ebase [E]; int32 dest
 * and pos [maxT * maxdest] each, epos and ids [maxT * K] each, mycnt
 * [R + E], the count matrix [R * cnt_ints]. */
static size_t lay_bytes(const proto_geom_t *g)
{
    const size_t pairs = (size_t)(g->maxT * g->maxdest);
    return sizeof(int64_t) * (size_t)(2 * g->R + g->E) +
           sizeof(int32_t) * (2 * pairs + 2 * (size_t)(g->maxT * g->K) +
                              (size_t)(g->R + g->E) +
                              (size_t)g->R * (size_t)g->cnt_ints);
}

/* Point the call at layout i. */
static void lay_point(gpu_moe_t *m, int i)
{
    const proto_geom_t *g = &m->g;
    epxk_call_t *c = &m->call;
    const size_t pairs = (size_t)(g->maxT * g->maxdest);
    const size_t tk = (size_t)(g->maxT * g->K);
    int64_t *q = (int64_t *)m->lays[i].d;
    c->sendoff = q;
    c->base = q + g->R;
    c->ebase = q + 2 * g->R;
    int32_t *p = (int32_t *)(q + 2 * g->R + g->E);
    c->dest = p;
    c->pos = p + pairs;
    c->epos = p + 2 * pairs;
    c->lay_ids = c->epos + tk;
    c->mycnt = c->lay_ids + tk;
    c->lay_cnt = c->mycnt + g->R + g->E;
}

/* A free layout for an uncached dispatch: one of those released, or a
 * new one.  Layout 0 is allocated with the engine; more only where a
 * caller keeps several handles, stream-ordered on the engine's stream
 * (cudaMallocAsync: no wait for the device, which peers' kernels may be
 * spinning on). */
static epx_status_t lay_get(gpu_moe_t *m, int *out)
{
    for (int i = 0; i < m->nlays; i++)
        if (!m->lays[i].used) {
            m->lays[i].used = 1;
            *out = i;
            return EPX_OK;
        }
    gpu_lay_t *l = realloc(m->lays, sizeof(*l) * (size_t)(m->nlays + 1));
    if (!l)
        return epx__error(EPX_ERR_NOMEM, "cuda dispatch_send: out of memory");
    m->lays = l;
    char *d = NULL;
    epx_status_t st = m->nlays == 0
        ? epx__cuda_err(cudaMalloc((void **)&d, lay_bytes(&m->g)),
                        "cudaMalloc")
        : epx__cuda_err(cudaMallocAsync((void **)&d, lay_bytes(&m->g), m->st),
                        "cudaMallocAsync");
    if (st != EPX_OK)
        return st;
    l[m->nlays] = (gpu_lay_t){ d, 1, 0 };
    *out = m->nlays++;
    return EPX_OK;
}

void gpu_layout_release(gpu_moe_t *m, int lay)
{
    if (m && lay >= 0 && lay < m->nlays)
        m->lays[lay].used = 0;
}

/* --------------------------------------------------------------- setup */

/* Low latency over NCCL: the staging of either direction (dispatch
 * blocks, or the combine's flag words and partials) holds the larger. */
static int64_t lln_stage_bytes(const gpu_moe_t *m)
{
    const int64_t d = proto_lln_stage_bytes(&m->g, m->llg.cap),
                  c = (int64_t)m->g.R * proto_lln_comb_stride(&m->g);
    return d > c ? d : c;
}

/* Its receive staging, each rank's units (first: [R + 1]) and the
 * exchange's operations. */
static epx_status_t lln_alloc(gpu_moe_t *m, const int32_t *first)
{
    const int R = m->g.R;
    m->h_lln_first = malloc(sizeof(int32_t) * (size_t)(R + 1));
    m->lln_ops = malloc(sizeof(epx_nccl_p2p_t) * (size_t)(2 * R));
    if (!m->h_lln_first || !m->lln_ops)
        return epx__error(EPX_ERR_NOMEM, "cuda moe: out of memory");
    memcpy(m->h_lln_first, first, sizeof(int32_t) * (size_t)(R + 1));
    return epx__cuda_err(cudaMalloc((void **)&m->rstage,
                                    (size_t)lln_stage_bytes(m)),
                         "cudaMalloc");
}

/* Low latency: the words the recv kernels publish for epx_dispatch_poll,
 * zero (no call's). */
static epx_status_t ll_pub_alloc(gpu_moe_t *m)
{
    const size_t n = sizeof(int64_t) * (size_t)m->llg.B *
                     (size_t)EPXK_LLPUB_LEN(m->L);
    epx_status_t st = epx__cuda_err(cudaHostAlloc((void **)&m->h_llpub, n,
                                                  cudaHostAllocMapped |
                                                      cudaHostAllocPortable),
                                    "cudaHostAlloc");
    if (st != EPX_OK)
        return st;
    memset(m->h_llpub, 0, n);
    return epx__cuda_err(cudaHostGetDevicePointer((void **)&m->d_llpub,
                                                  m->h_llpub, 0),
                         "cudaHostGetDevicePointer");
}

#define DEV_ALLOC(ptr, n)                                                      \
    do {                                                                       \
        st = epx__cuda_err(cudaMalloc((void **)&(ptr), (n) > 0 ? (n) : 1),         \
                           "cudaMalloc");                                      \
        if (st != EPX_OK)                                                      \
            goto gate;                                                         \
    } while (0)

/* h_ecnt: [units] this rank's pairs per unit, read back with h_info;
 * elastic engines: then [Elog] its pairs per lost expert, which the lost
 * kernel stores through d_ecnt (host-mapped, as the fused dispatch's
 * counts are read without a stream synchronisation), and d_lostcnt. */
static epx_status_t ecnt_alloc(gpu_moe_t *m)
{
    const int units = m->g.E, extra = m->elastic ? m->Elog : 0;
    epx_status_t st = epx__cuda_err(
        cudaHostAlloc((void **)&m->h_ecnt,
                      sizeof(int32_t) * (size_t)(units + extra),
                      cudaHostAllocMapped | cudaHostAllocPortable),
        "cudaHostAlloc");
    if (st != EPX_OK || !m->elastic)
        return st;
    memset(m->h_ecnt, 0, sizeof(int32_t) * (size_t)(units + extra));
    st = epx__cuda_err(cudaHostGetDevicePointer((void **)&m->d_ecnt,
                                                m->h_ecnt, 0),
                       "cudaHostGetDevicePointer");
    if (st == EPX_OK)
        st = epx__cuda_err(cudaMalloc((void **)&m->d_lostcnt,
                                      sizeof(int32_t) * (size_t)m->Elog),
                           "cudaMalloc");
    if (st == EPX_OK)
        st = epx__cuda_err(cudaMemset(m->d_lostcnt, 0,
                                      sizeof(int32_t) * (size_t)m->Elog),
                           "cudaMemset");
    m->call.lostcnt = m->d_lostcnt;
    return st;
}

/* Elastic engines: the call's lost mask (the caller's, device memory)
 * and its demand for lost experts (kern_lost.cu), on the engine's
 * stream before the call's other kernels, which read the same table. */
static epx_status_t lost_launch(gpu_moe_t *m, const epx_dispatch_args_t *a)
{
    if (!m->elastic || !m->call.route.off)
        return EPX_OK;
    uint8_t *mask = a->struct_size >= offsetof(epx_dispatch_args_t, lost) +
                                          sizeof(uint8_t *)
        ? a->lost : NULL;
    const epxk_lost_t l = {
        a->topk_idx.data, a->topk_idx.dtype == EPX_DTYPE_INT64,
        a->x.rows * m->g.K, m->Elog, m->call.route.off,
        a->x.rows > 0 ? mask : NULL, m->d_lostcnt,
        m->ll ? NULL : m->d_ecnt + m->g.E };
    return epx__cuda_err((cudaError_t)epxk_lost_launch(&l, m->st),
                         "kernel launch");
}

epx_status_t gpu_moe_create(epx_comm_t *comm, const epx_moe_params_t *params,
                            gpu_moe_t **out)
{
    if (!comm || !out || !params ||
        params->struct_size < offsetof(epx_moe_params_t, nccl_comm) +
                                  sizeof(void *))
        return epx__error(EPX_ERR_INVALID, "cuda moe: comm, params or out "
                          "NULL, or params older than version 4");
    const cuda_params_t cp = { params->device, params->num_sms,
                               params->gpu_backend, params->nccl_comm };
    const cuda_params_t *cparams = &cp;
    gpu_moe_t *m = calloc(1, sizeof(*m));
    if (!m)
        return epx__error(EPX_ERR_NOMEM, "cuda moe: out of memory");
    const int R = comm->nranks, me = comm->rank;
    m->comm = comm;
    agree_t mine = { 0 };
    epx_status_t st = check_params(params, cparams);
    int ndev = 0;
    if (st == EPX_OK)
        st = epx__cuda_devices(&ndev);
    if (st == EPX_OK) {
        memcpy(&m->p, params, params->struct_size < sizeof(m->p)
                                  ? params->struct_size : sizeof(m->p));
        m->backend = cparams->backend;
        m->device = cparams->device;
        if (m->device < 0)
            st = epx__cuda_err(cudaGetDevice(&m->device), "cudaGetDevice");
        else if (m->device >= ndev)
            st = epx__error(EPX_ERR_INVALID, "cuda moe: device %d of %d",
                            m->device, ndev);
    }
    if (st == EPX_OK)
        st = set_device(m);
    /* vetted by epx__cfg_check: classic or fused; every rank the same */
    m->kset = strcmp(epx__cfg_str("EPX_CUDA_KERNELS"), "fused") == 0
                  ? EPXK_SET_FUSED : EPXK_SET_CLASSIC;
    mine.kset = m->kset;
    mine.status = st;
    if (params) {
        mine.hidden = params->hidden;
        mine.experts = params->num_experts;
        mine.topk = params->topk;
        mine.dtype = params->dtype;
        mine.max_tokens = params->max_tokens_per_rank;
        mine.layout = params->layout;
        mine.align = params->layout == EPX_LAYOUT_EXPERT_MAJOR
                         ? params->expert_alignment : 1;
        mine.slots = params->num_slots;
        mine.layers = params->num_layers > 0 ? params->num_layers : 1;
        if (mine.status == EPX_OK && params->num_slots % R != 0)
            mine.status = epx__error(EPX_ERR_INVALID, "cuda moe: num_slots "
                                     "%d is not a multiple of the %d ranks",
                                     params->num_slots, R);
        if (params->version >= 3) {
            mine.mode = params->mode;
            mine.cap = params->ll_capacity;
            mine.bufs = params->ll_buffers;
            mine.flags = (int32_t)params->flags;
            mine.wire = (int32_t)params->wire;
        }
    }
    mine.backend = cparams ? (int32_t)cparams->backend : -1;
    int64_t maxT = 0;
    char **peers = NULL;       /* declared before the gotos below */
    int32_t *e2r = NULL;
    int sms = 1;
    st = agree(comm, &mine, &maxT);
    if (st != EPX_OK) {
        free(m);
        return st;
    }

    proto_geom_t *g = &m->g;
    /* The kernels' units: the experts, or the slots (the ids are routed
     * to a slot as they are read, proto.h proto_route_t).  The shape is
     * the host executor's (src/moe/engine.c), laid out by the same
     * function (proto/geom.h). */
    m->Elog = m->p.num_experts;
    m->layers = mine.layers;
    m->elastic = m->p.version >= 3 && (m->p.flags & EPX_MOE_ELASTIC) &&
                 m->p.num_slots > 0;
    proto_geom_params(g, &m->p, R, me, maxT);
    /* Row indices and slots are int32 on the device. */
    if ((int64_t)R * maxT * g->K >= INT32_MAX ||
        (int64_t)R * maxT * g->K + (int64_t)g->Lmax * g->align >= INT32_MAX) {
        int K = g->K;
        free(m);
        return epx__error(EPX_ERR_RANGE, "cuda moe: %d ranks x %lld tokens "
                          "x topk %d (and the alignment) exceeds 32-bit row "
                          "indices", R, (long long)maxT, K);
    }
    proto_geom_layout(g);
    m->ll = m->p.version >= 3 &&
            m->p.struct_size >= sizeof(epx_moe_params_t) &&
            m->p.mode == EPX_MODE_LOW_LATENCY;
    if (m->ll)
        proto_ll_layout(g, proto_ll_buffers(m->p.ll_buffers),
                        proto_ll_capacity(m->p.ll_capacity, maxT), &m->llg);
    gpu_calls_init(&m->calls, m->ll, m->ll ? m->llg.B : 1);
    /* Collective (the topology), on every rank: the flags are agreed. */
    if (!m->ll && (mine.flags & EPX_MOE_HIERARCHICAL) &&
        (st = gpu_hier_create(comm, g, &m->hier)) != EPX_OK) {
        free(m);
        return st;
    }

    e2r = malloc(sizeof(int32_t) * (size_t)(g->E + R + 1));
    int32_t *first = e2r ? e2r + g->E : NULL;
    if (!e2r) {
        st = epx__error(EPX_ERR_NOMEM, "cuda moe: out of memory");
        goto gate;
    }
    for (int r = 0; r <= R; r++)
        first[r] = proto_first_expert(R, g->E, r);
    for (int r = 0; r < R; r++)
        for (int e = first[r]; e < first[r + 1]; e++)
            e2r[e] = r;
    m->first = first[me];
    m->L = first[me + 1] - first[me];

    /* Everything below is undone by gpu_moe_destroy's frees. */
    const size_t pairs = (size_t)(maxT * g->maxdest);
    m->h_counts = calloc(2 * (size_t)m->L + 1, sizeof(int64_t));
    m->h_local = calloc((size_t)m->calls.B * (size_t)m->L + 1,
                        sizeof(int32_t));
    m->nsend = calloc(8 * (size_t)R, sizeof(int64_t));
    if (!m->h_counts || !m->h_local || !m->nsend) {
        st = epx__error(EPX_ERR_NOMEM, "cuda moe: out of memory");
        goto gate;
    }
    m->sendoff = m->nsend + R;
    m->nrecv = m->nsend + 2 * R;
    m->rbase = m->nsend + 3 * R;
    m->rsize = m->nsend + 4 * R;
    for (int b = 0; b < m->calls.B; b++)
        for (int j = 0; j < m->L; j++)
            m->h_local[(size_t)b * m->L + j] = m->first + j;
    if (m->p.num_slots > 0) {
        const size_t per = (size_t)(2 * m->Elog + 1 + g->E);
        m->h_p2l = calloc((size_t)m->layers * (size_t)g->E, sizeof(int32_t));
        m->h_placed = calloc((size_t)m->layers, 2);
        m->h_rr = m->h_placed ? m->h_placed + m->layers : NULL;
        if (!m->h_p2l || !m->h_placed) {
            st = epx__error(EPX_ERR_NOMEM, "cuda moe: out of memory");
            goto gate;
        }
        DEV_ALLOC(m->d_route, sizeof(int32_t) * per * (size_t)m->layers);
        st = epx__cuda_err(cudaMallocHost((void **)&m->h_route,
                                          sizeof(int32_t) * per *
                                              (size_t)m->layers),
                           "cudaMallocHost");
        if (st != EPX_OK)
            goto gate;
    }
    st = epx__cuda_err(cudaStreamCreateWithFlags(&m->st,
                                                 cudaStreamNonBlocking),
                       "cudaStreamCreateWithFlags");
    if (st == EPX_OK)   /* before the collectives below (kern_launch.h) */
        st = epx__cuda_err((cudaError_t)epxk_preload(), "loading the kernels");
    if (st == EPX_OK)
        st = epx__cuda_err((cudaError_t)epxk_comb_preload(),
                           "loading the kernels");
    if (st == EPX_OK && m->kset == EPXK_SET_FUSED)
        st = epx__cuda_err((cudaError_t)epxk_ht_preload(),
                           "loading the kernels");
    if (st == EPX_OK)
        st = epx__cuda_err((cudaError_t)epxk_lost_preload(),
                           "loading the kernels");
    if (st == EPX_OK && m->hier)
        st = gpu_hier_setup(m->hier, m->st);
    if (st != EPX_OK)
        goto gate;
    st = epx__cuda_err(cudaEventCreateWithFlags(&m->ev_in,
                                                cudaEventDisableTiming),
                       "cudaEventCreate");
    if (st == EPX_OK)
        st = epx__cuda_err(cudaEventCreateWithFlags(&m->ev_out,
                                                    cudaEventDisableTiming),
                           "cudaEventCreate");
    if (st == EPX_OK)
        st = epx__cuda_err(cudaEventCreateWithFlags(&m->ev_info,
                                                    cudaEventDisableTiming),
                           "cudaEventCreate");
    if (st != EPX_OK)
        goto gate;
    DEV_ALLOC(m->d_e2r, sizeof(int32_t) * (size_t)(g->E + R + 1));
    m->d_first = m->d_e2r + g->E;
    DEV_ALLOC(m->d_dest, sizeof(int32_t) * pairs * 2);
    m->d_pos = m->d_dest + pairs;
    DEV_ALLOC(m->d_mycnt, sizeof(int32_t) * (size_t)(R + g->E));
    DEV_ALLOC(m->d_epos, sizeof(int32_t) * (size_t)(maxT * g->K));
    DEV_ALLOC(m->d_sendoff, sizeof(int64_t) * (size_t)(2 * R + g->E +
                                                       EPXK_INFO_COUNTS +
                                                       2 * m->L));
    m->d_base = m->d_sendoff + R;
    m->d_ebase = m->d_base + R;
    m->d_info = m->d_ebase + g->E;
    DEV_ALLOC(m->d_done, sizeof(unsigned));
    DEV_ALLOC(m->d_fbar, sizeof(unsigned) * 3);
    if (m->ll) {
        const size_t B = (size_t)m->llg.B, cap = (size_t)m->llg.cap;
        DEV_ALLOC(m->d_llkeep, sizeof(int32_t) * B * (size_t)(maxT * g->K));
        DEV_ALLOC(m->d_lldest, sizeof(int32_t) * B * 2 * pairs);
        DEV_ALLOC(m->d_llcnt, sizeof(int32_t) * B * (size_t)(R + g->E));
        DEV_ALLOC(m->d_llmystat, sizeof(int32_t) * B);
        DEV_ALLOC(m->d_llsrc, sizeof(int32_t) * B * (size_t)m->L * R * cap);
        DEV_ALLOC(m->d_llsendoff, sizeof(int64_t) * B * (size_t)R);
        DEV_ALLOC(m->d_llcounts, sizeof(int64_t) * B * (size_t)m->L);
        DEV_ALLOC(m->d_llstate, sizeof(int64_t) * EPXK_LL_NSTATE);
        DEV_ALLOC(m->d_scratch, (size_t)(g->esize == 8 ? 8 : 4) *
                                    (size_t)(maxT * g->H));
        DEV_ALLOC(m->d_lluse, sizeof(uint32_t) * B);
        const size_t per = (size_t)(1 + m->Elog + g->E);
        DEV_ALLOC(m->d_llnstat, sizeof(int64_t));
        m->ll1 = m->kset == EPXK_SET_FUSED &&
                 m->backend == EPX_GPU_BACKEND_WINDOWS &&
                 proto_ll1_smem(g, maxT) <= PROTO_LL1_SMEM_MAX;
        if (m->ll1) {
            const size_t n = sizeof(uint64_t) * B * (size_t)m->L * R;
            DEV_ALLOC(m->d_llmark, n);
            st = epx__cuda_err(cudaMemsetAsync(m->d_llmark, 0, n, m->st),
                               "cudaMemset");
            if (st != EPX_OK)
                goto gate;
        }
        DEV_ALLOC(m->d_llring, sizeof(int32_t) * per * EPXK_LL_STATS_RING);
        m->h_llring = malloc(sizeof(int32_t) * per * EPXK_LL_STATS_RING);
        if (!m->h_llring) {
            st = epx__error(EPX_ERR_NOMEM, "cuda moe: out of memory");
            goto gate;
        }
        m->h_lloffs = calloc((size_t)m->L + 1, sizeof(int64_t));
        m->h_llpoll = calloc(B * (size_t)m->L + 1, sizeof(int64_t));
        if (!m->h_lloffs || !m->h_llpoll) {
            st = epx__error(EPX_ERR_NOMEM, "cuda moe: out of memory");
            goto gate;
        }
        if ((st = ll_pub_alloc(m)) != EPX_OK)
            goto gate;
        for (int j = 0; j < m->L; j++)
            m->h_lloffs[j] = (int64_t)j * R * (int64_t)cap;
        st = epx__cuda_err(cudaMemsetAsync(m->d_lluse, 0,
                                           sizeof(uint32_t) * B, m->st),
                           "cudaMemset");
        if (st == EPX_OK)
            st = epx__cuda_err(cudaMemsetAsync(m->d_llstate, 0,
                                               sizeof(int64_t) * EPXK_LL_NSTATE,
                                               m->st), "cudaMemset");
        if (st == EPX_OK)
            st = epx__cuda_err(cudaMemsetAsync(m->d_llnstat, 0,
                                               sizeof(int64_t), m->st),
                               "cudaMemset");
        if (st != EPX_OK)
            goto gate;
    }
    DEV_ALLOC(m->d_peers, sizeof(char *) * (size_t)R);
    if (m->ll && m->backend == EPX_GPU_BACKEND_NCCL &&
        (st = lln_alloc(m, first)) != EPX_OK)
        goto gate;
    if (g->em && !m->ll && m->backend == EPX_GPU_BACKEND_NCCL) {
        DEV_ALLOC(m->d_emmap, sizeof(int64_t) *
                                  (size_t)proto_em_map_len(g, m->L));
        /* the rows as received, and later the partials, one per entry */
        size_t n = (size_t)g->total;
        if ((size_t)(g->ents * g->row_bytes) > n)
            n = (size_t)(g->ents * g->row_bytes);
        DEV_ALLOC(m->rstage, n);
    }
    st = epx__cuda_err(cudaDeviceGetAttribute(&sms,
                                              cudaDevAttrMultiProcessorCount,
                                              m->device),
                       "cudaDeviceGetAttribute");
    if (st != EPX_OK)
        goto gate;
    /* The layout's counts per token chunk: a chunk per block at most, and
     * never more blocks than SMs (num_sms, set below, is at most sms). */
    DEV_ALLOC(m->d_part, sizeof(int32_t) * (size_t)(sms > 0 ? sms : 1) *
                             (size_t)(R + g->E));
    st = epx__cuda_err(cudaMallocHost((void **)&m->h_info,
                                      sizeof(int64_t) *
                                          (size_t)(EPXK_INFO_COUNTS + 2 * m->L)),
                       "cudaMallocHost");
    if (st == EPX_OK)
        st = ecnt_alloc(m);
    if (st == EPX_OK)
        st = epx__cuda_err(cudaMallocHost((void **)&m->h_cnt,
                                          sizeof(int32_t) *
                                              (size_t)(R + 1) * g->cnt_ints),
                           "cudaMallocHost");
    if (st != EPX_OK)
        goto gate;
    if (!m->ll) {   /* poll's words, zero (no call's), and a layout */
        const size_t pub = sizeof(int64_t) * (size_t)(EPXK_PUB_FUSED(m->L) +
                                                      EPXK_PUBF_ECNT + g->E);
        st = epx__cuda_err(cudaHostAlloc((void **)&m->h_pub, pub,
                                         cudaHostAllocMapped |
                                             cudaHostAllocPortable),
                           "cudaHostAlloc");
        if (st == EPX_OK) {
            memset(m->h_pub, 0, pub);
            st = epx__cuda_err(cudaHostGetDevicePointer((void **)&m->d_pub,
                                                        m->h_pub, 0),
                               "cudaHostGetDevicePointer");
        }
        int lay0;
        if (st == EPX_OK && (st = lay_get(m, &lay0)) == EPX_OK)
            m->lays[lay0].used = 0;
        if (st != EPX_OK)
            goto gate;
    }
    /* Set up on the engine's stream, whose kernels do not wait for the
     * legacy stream (a plain cudaMemset or cudaMemcpy may land after
     * them); pageable sources are staged before the call returns. */
    st = epx__cuda_err(cudaMemcpyAsync(m->d_e2r, e2r,
                                  sizeof(int32_t) * (size_t)(g->E + R + 1),
                                  cudaMemcpyHostToDevice, m->st), "cudaMemcpy");
    if (st == EPX_OK)
        st = epx__cuda_err(cudaMemsetAsync(m->d_done, 0, sizeof(unsigned),
                                           m->st), "cudaMemset");
    if (st == EPX_OK)
        st = epx__cuda_err(cudaMemsetAsync(m->d_fbar, 0, sizeof(unsigned) * 3,
                                           m->st), "cudaMemset");
    if (st == EPX_OK)
        st = epx__cuda_err(cudaMemsetAsync(m->d_info, 0, sizeof(int64_t) *
                                      (size_t)(EPXK_INFO_COUNTS + 2 * m->L),
                                      m->st),
                           "cudaMemset");
    if (st != EPX_OK)
        goto gate;

    peers = calloc((size_t)R, sizeof(char *));
    if (!peers)
        st = epx__error(EPX_ERR_NOMEM, "cuda moe: out of memory");
gate:
    /* The window (or NCCL) set-up below is collective: a rank that failed
     * alone above must not leave its peers waiting there. */
    st = epx__comm_agree_peer(comm, st, "cuda moe: set-up");
    if (st != EPX_OK)
        goto out;
    int device_ranks = 1;
    if (m->backend == EPX_GPU_BACKEND_WINDOWS) {
        st = epx__cuwin_create(comm, m->device,
                               m->ll ? (size_t)m->llg.total
                               : m->hier ? gpu_hier_total(m->hier)
                                         : (size_t)g->total,
                               &m->win);
        if (st == EPX_OK) {
            memcpy(peers, epx__cuwin_peers(m->win), sizeof(char *) * (size_t)R);
            m->local = peers[me];
            device_ranks = epx__cuwin_device_ranks(m->win);
            snprintf(m->name, sizeof(m->name), "windows:%s",
                     epx__cuwin_kind_str(epx__cuwin_kind(m->win)));
        }
    } else {
        /* low latency: the buffers, and the blocks to each peer */
        const size_t wbytes = m->ll ? (size_t)m->llg.total
                              : m->hier ? gpu_hier_total(m->hier)
                                        : (size_t)g->total;
        size_t sbytes = (size_t)g->total;
        if (m->ll && (size_t)lln_stage_bytes(m) > sbytes)
            sbytes = (size_t)lln_stage_bytes(m);
        st = epx__cuda_err(cudaMalloc((void **)&m->local, wbytes),
                           "cudaMalloc");
        if (st == EPX_OK)
            st = epx__cuda_err(cudaMalloc((void **)&m->stage, sbytes),
                               "cudaMalloc");
        if (st == EPX_OK)
            st = epx__cuda_err(cudaMemsetAsync(m->local, 0, wbytes, m->st),
                               "cudaMemset");
        /* Collective from here: every rank calls it. */
        epx_status_t nst = epx__nccl_create(comm, cparams->nccl_comm,
                                            &m->nccl);
        if (st == EPX_OK)
            st = nst;
        if (st == EPX_OK && m->hier)   /* its stagings (hier.c) */
            st = gpu_hier_nccl(m->hier, m->nccl, g, m->st);
        peers[me] = m->local;
        snprintf(m->name, sizeof(m->name), "%s",
                 m->nccl && epx__nccl_adopted(m->nccl) ? "nccl:adopted"
                                                       : "nccl");
    }
    if (st == EPX_OK)
        st = epx__cuda_err(cudaMemcpyAsync(m->d_peers, peers,
                                      sizeof(char *) * (size_t)R,
                                      cudaMemcpyHostToDevice, m->st),
                       "cudaMemcpy");
    /* Every rank succeeds, or all fail (and destroy together). */
    st = epx__comm_agree_peer(comm, st, "cuda moe: set-up");
    if (st != EPX_OK)
        goto out;

    m->num_sms = cparams->num_sms > 0 ? cparams->num_sms
                                      : sms / (device_ranks ? device_ranks : 1);
    if (m->num_sms > sms)
        m->num_sms = sms;
    if (m->num_sms < 1)
        m->num_sms = 1;
    /* The fused dispatch's grid barriers need every block of the ranks
     * sharing this device resident at once (peers spin meanwhile):
     * classic kernels where the occupancy says they may not be. */
    m->ht_fits = m->kset == EPXK_SET_FUSED && !m->ll &&
                 epxk_ht_fits(g, m->num_sms * (device_ranks ? device_ranks
                                                            : 1), sms);
    if (m->kset == EPXK_SET_FUSED && !m->ll && !m->ht_fits)
        EPX_LOG(EPX_LOG_WARN, "cuda", me, "EPX_CUDA_KERNELS=fused: %d "
                "blocks of the fused dispatch may not all be resident on "
                "%d SMs; the classic dispatch kernels run", m->num_sms *
                (device_ranks ? device_ranks : 1), sms);
    EPX_LOG(EPX_LOG_INFO, "cuda", me, "engine on device %d: %s, %d SMs of %d, "
            "window %lld bytes", m->device, m->name, m->num_sms, sms,
            (long long)(m->ll ? m->llg.total : g->total));

    /* The fixed part of every call. */
    m->call.e2r = m->d_e2r;
    m->call.first = m->d_first;
    m->call.num_local = m->L;
    m->call.dest = m->d_dest;
    m->call.pos = m->d_pos;
    m->call.epos = m->d_epos;
    m->call.ebase = m->d_ebase;
    m->call.mycnt = m->d_mycnt;
    m->call.part = m->d_part;
    m->call.sendoff = m->d_sendoff;
    m->call.base = m->d_base;
    m->call.info = m->d_info;
    m->call.done = m->d_done;
    m->call.peers = m->d_peers;
    m->call.stage = m->stage;
    m->call.windows = m->backend == EPX_GPU_BACKEND_WINDOWS;
    m->call.ll = m->llg;
    m->call.ll_drop = m->ll && (m->p.flags & EPX_MOE_LL_DROP) != 0;
    m->call.ll_use = m->d_lluse;
    m->call.ll_state = m->d_llstate;
    m->call.ll_nstat = m->d_llnstat;
    m->call.ll_ring = m->d_llring;
    m->call.rstage = m->rstage;
    m->call.emmap = m->d_emmap;
    m->call.pub = m->d_pub;
    m->call.fbar = m->d_fbar;
    double to = epx__comm_timeout(comm);
    m->call.timeout_ns = (uint64_t)(to * 1e9);
    free(e2r);
    free(peers);
    *out = m;
    return EPX_OK;

out:
    free(e2r);
    free(peers);
    gpu_moe_destroy(m);
    return st;
}

void gpu_moe_destroy(gpu_moe_t *m)
{
    if (!m)
        return;
    cudaSetDevice(m->device);
    /* A lost peer (elastic: the survivors drop the old engine): NCCL's
     * transfers with it never end, so abort them before waiting. */
    if (m->nccl && epx__comm_alive(m->comm) != EPX_OK)
        epx__nccl_abort(m->nccl);
    if (m->st)
        cudaStreamSynchronize(m->st);
    gpu_mig_sync(m->mig);
    /* No peer may still be storing into this rank's window. */
    if (m->win)
        epx_comm_barrier(m->comm);
    gpu_mig_destroy(m->mig);
    epx__cuwin_destroy(m->win);
    gpu_hier_destroy(m->hier);
    epx__nccl_destroy(m->nccl);
    if (!m->win)
        cudaFree(m->local);
    cudaFree(m->stage);
    free(m->h_lln_first);
    free(m->lln_ops);
    cudaFree(m->d_e2r);
    cudaFree(m->d_dest);
    cudaFree(m->d_mycnt);
    cudaFree(m->d_epos);
    cudaFree(m->d_part);
    cudaFree(m->d_llkeep);
    cudaFree(m->d_lldest);
    cudaFree(m->d_llcnt);
    cudaFree(m->d_llmystat);
    cudaFree(m->d_llsrc);
    cudaFree(m->d_llsendoff);
    cudaFree(m->d_llcounts);
    cudaFree(m->d_llstate);
    cudaFree(m->d_scratch);
    cudaFree(m->d_lluse);
    cudaFree(m->d_llnstat);
    cudaFree(m->d_llmark);
    cudaFree(m->d_llring);
    free(m->h_llring);
    cudaFree(m->rstage);
    cudaFree(m->d_emmap);
    free(m->h_lloffs);
    cudaFree(m->d_sendoff);
    cudaFree(m->d_done);
    cudaFree(m->d_fbar);
    cudaFree(m->d_peers);
    cudaFreeHost(m->h_info);
    cudaFreeHost(m->h_cnt);
    cudaFreeHost(m->h_ecnt);
    cudaFree(m->d_lostcnt);
    cudaFreeHost(m->h_pub);
    cudaFreeHost(m->h_llpub);
    free(m->h_llpoll);
    for (int i = 0; i < m->nlays; i++)
        cudaFree(m->lays[i].d);
    free(m->lays);
    if (m->ev_in)
        cudaEventDestroy(m->ev_in);
    if (m->ev_out)
        cudaEventDestroy(m->ev_out);
    if (m->ev_info)
        cudaEventDestroy(m->ev_info);
    if (m->st)
        cudaStreamDestroy(m->st);
    free(m->h_counts);
    free(m->h_local);
    free(m->h_p2l);
    free(m->h_placed);
    cudaFree(m->d_route);
    cudaFreeHost(m->h_route);
    free(m->nsend);
    free(m);
}

const int32_t *gpu_dispatch_ecount(const gpu_moe_t *m)
{
    return m && !m->ll && m->calls.slot[0].state == GPU_CALL_RECEIVED
        ? m->h_ecnt : NULL;
}

int gpu_moe_num_sms(const gpu_moe_t *m)
{
    return m ? m->num_sms : 0;
}

const char *gpu_moe_backend(const gpu_moe_t *m)
{
    return m ? m->name : "";
}

epx_status_t gpu_moe_cross_bytes(gpu_moe_t *m, int64_t *dispatch,
                                 int64_t *combine)
{
    epx_status_t st = usable(m, "cuda cross_domain_bytes");
    if (st != EPX_OK)
        return st;
    if (!m->hier)
        return epx__error(EPX_ERR_UNSUPPORTED, "moe: only hierarchical "
                          "engines count cross-domain bytes");
    return gpu_hier_cross_bytes(m->hier, m->st, dispatch, combine);
}

/* ------------------------------------------------------------ dispatch */

static int tensor_ok(const epx_tensor_t *t, epx_dtype_t dt, int64_t rows,
                     int64_t cols)
{
    return t->dtype == dt && t->rows == rows && t->cols == cols &&
           (t->data || rows == 0 || cols == 0);
}

/* The read-back of the NCCL count matrix: host sizes of the exchange. */
static void nccl_sizes(gpu_moe_t *m)
{
    const proto_geom_t *g = &m->g;
    const int32_t *mycnt = m->h_cnt + (size_t)g->R * g->cnt_ints;
    int64_t so = 0, rb = 0;
    for (int r = 0; r < g->R; r++) {
        m->nsend[r] = mycnt[r];
        m->sendoff[r] = so;
        so += mycnt[r];
        m->nrecv[r] = m->h_cnt[(size_t)r * g->cnt_ints + g->rank];
        m->rbase[r] = rb;
        rb += m->nrecv[r];
    }
    if (!g->em)
        return;
    /* Expert-major: the rows, staged unit by unit at the source and
     * received in source order (proto.h). */
    int64_t *ns = m->rsize, *soff = ns + g->R, *nr = soff + g->R,
            *rbs = nr + g->R;
    for (int r = 0; r < g->R; r++) {
        int f0 = proto_first_expert(g->R, g->E, r),
            f1 = proto_first_expert(g->R, g->E, r + 1);
        soff[r] = proto_em_stage_base(g, mycnt, f0);
        ns[r] = proto_em_stage_base(g, mycnt, f1) - soff[r];
        rbs[r] = proto_em_map_at(g, m->h_cnt, m->first, m->L,
                                 (int64_t)r * m->L);
        nr[r] = proto_em_map_at(g, m->h_cnt, m->first, m->L,
                                (int64_t)(r + 1) * m->L) - rbs[r];
    }
}

static epx_status_t st_sync(gpu_moe_t *m);

/* recv.local_experts of buffer b's call: the expert of each local unit
 * (with slots, by the call's layer's placement). */
static const int32_t *gpu_local_experts(gpu_moe_t *m, int b)
{
    int32_t *l = m->h_local + (size_t)b * (size_t)m->L;
    if (m->h_p2l)
        for (int j = 0; j < m->L; j++)
            l[j] = m->h_p2l[(size_t)m->blayer[b] * (size_t)m->g.E +
                            (size_t)(m->first + j)];
    return l;
}

int gpu_moe_busy(const gpu_moe_t *m)
{
    return m && gpu_calls_outstanding(&m->calls) > 0;
}

epx_status_t gpu_moe_set_placement(gpu_moe_t *m, int layer,
                                   const int32_t *phy2log, const int32_t *pick,
                                   const int32_t *off, const int32_t *rep,
                                   int round_robin)
{
    epx_status_t st = usable(m, "cuda set_placement");
    if (st != EPX_OK)
        return st;
    if (!m->d_route)
        return epx__error(EPX_ERR_INVALID, "cuda set_placement: the engine "
                          "has no slots");
    if (gpu_calls_outstanding(&m->calls) > 0)
        return epx__error(EPX_ERR_STATE, "cuda set_placement: a call of the "
                          "engine is in flight");
    /* No call in flight: the engine's stream only finishes kernels already
     * queued (their peers' progress does not wait for this thread), then
     * the staging copy is free to rewrite. */
    if ((st = st_sync(m)) != EPX_OK)
        return fail(m, st);
    st = gpu_moe_route_async(m, layer, phy2log, pick, off, rep, round_robin,
                             m->st);
    if (st == EPX_OK)
        st = st_sync(m);
    if (st != EPX_OK)
        return fail(m, st);
    return EPX_OK;
}

epx_status_t gpu_moe_route_async(gpu_moe_t *m, int layer,
                                 const int32_t *phy2log, const int32_t *pick,
                                 const int32_t *off, const int32_t *rep,
                                 int round_robin, cudaStream_t on)
{
    const int E = m->Elog, U = m->g.E;
    const size_t per = (size_t)(2 * E + 1 + U);
    int32_t *h = m->h_route + per * (size_t)layer;
    memcpy(h, pick, sizeof(int32_t) * (size_t)E);
    memcpy(h + E, off, sizeof(int32_t) * (size_t)(E + 1));
    memcpy(h + 2 * E + 1, rep, sizeof(int32_t) * (size_t)U);
    epx_status_t st = epx__cuda_err(
        cudaMemcpyAsync(m->d_route + per * (size_t)layer, h,
                        sizeof(int32_t) * per, cudaMemcpyHostToDevice, on),
        "cudaMemcpyAsync");
    if (st != EPX_OK)
        return st;
    memcpy(m->h_p2l + (size_t)layer * (size_t)U, phy2log,
           sizeof(int32_t) * (size_t)U);
    m->h_rr[layer] = (int8_t)(round_robin != 0);
    m->h_placed[layer] = 1;
    return EPX_OK;
}

int gpu_moe_layer_busy(const gpu_moe_t *m, int layer)
{
    for (int b = 0; m && b < m->calls.B; b++) {
        int s = m->calls.slot[b].state;
        if ((s == GPU_CALL_SENT || s == GPU_CALL_RECEIVED) &&
            m->blayer[b] == layer)
            return 1;
    }
    return 0;
}

epx_status_t gpu_moe_eng(gpu_moe_t *m, const char *what, gpu_eng_t *e)
{
    if (m)   /* filled even when unusable: collectives still take part */
        *e = (gpu_eng_t){ m->comm, m->device,
                          m->backend == EPX_GPU_BACKEND_WINDOWS, m->nccl,
                          m->st, &m->mig };
    return usable(m, what);
}

epx_status_t gpu_moe_fail(gpu_moe_t *m, epx_status_t st)
{
    return fail(m, st);
}

/* ------------------------------------------------------ low latency */

/* Point the call at buffer b's own arrays: a call captured in a graph
 * replays with them. */
static void ll_point(gpu_moe_t *m, int b)
{
    epxk_call_t *c = &m->call;
    const proto_geom_t *g = &m->g;
    const size_t pairs = (size_t)(g->maxT * g->maxdest);
    c->ll_b = b;
    c->keep = m->d_llkeep + (size_t)b * (size_t)(g->maxT * g->K);
    c->dest = m->d_lldest + (size_t)b * 2 * pairs;
    c->pos = c->dest + pairs;
    c->mycnt = m->d_llcnt + (size_t)b * (size_t)(g->R + g->E);
    c->sendoff = m->d_llsendoff + (size_t)b * (size_t)g->R;
    c->ll_mystat = m->d_llmystat + b;
    c->ll_counts = m->d_llcounts + (size_t)b * (size_t)m->L;
    c->ll_src = m->d_llsrc + (size_t)b * (size_t)m->L * (size_t)g->R *
                (size_t)m->llg.cap;
    c->ll_mark = m->d_llmark ? m->d_llmark + (size_t)b * (size_t)m->L *
                                                 (size_t)g->R
                             : NULL;
    /* readiness: the buffer's words, and its live call's id there */
    c->ll_pub = m->d_llpub ? m->d_llpub + (size_t)b * (size_t)EPXK_LLPUB_LEN(m->L)
                           : NULL;
    c->ll_id = m->calls.slot[b].n + 1;
}

/* Low latency over NCCL (proto/ll_nccl.h, src/cuda/README.md "Low
 * latency over NCCL"): one grouped send/recv of a block to and from every
 * peer, each of a size the placement gives, so nothing is read back and
 * the call captures into a graph.  comb: the combine's blocks (a flag
 * word, then the partials of the entries this rank can hold from each
 * source), else the dispatch's. */
static epx_status_t lln_exchange(gpu_moe_t *m, int comb)
{
    const proto_geom_t *g = &m->g;
    const int R = g->R, cap = m->llg.cap;
    const int32_t *first = m->h_lln_first;
    const int Lme = first[g->rank + 1] - first[g->rank];
    proto_lln_blk_t me;
    proto_lln_block(g, Lme, cap, &me);
    const int64_t stride = proto_lln_comb_stride(g);
    int64_t soff = 0;
    for (int p = 0; p < R; p++) {
        const int Lp = first[p + 1] - first[p];
        proto_lln_blk_t bp;
        proto_lln_block(g, Lp, cap, &bp);
        epx_nccl_p2p_t *o = &m->lln_ops[2 * p];
        if (comb) {
            o[0] = (epx_nccl_p2p_t){ p, 0, m->stage + p * stride,
                                     (size_t)proto_lln_comb_bytes(g, Lme,
                                                                  cap) };
            o[1] = (epx_nccl_p2p_t){ p, 1, m->rstage + p * stride,
                                     (size_t)proto_lln_comb_bytes(g, Lp,
                                                                  cap) };
        } else {
            o[0] = (epx_nccl_p2p_t){ p, 0, m->stage + soff,
                                     (size_t)bp.bytes };
            o[1] = (epx_nccl_p2p_t){ p, 1, m->rstage + p * me.bytes,
                                     (size_t)me.bytes };
        }
        soff += bp.bytes;
    }
    return epx__nccl_p2p(m->nccl, m->lln_ops, 2 * R, m->st);
}

/* The dispatch's pack over NCCL: this rank's blocks, the exchange, the
 * received ones into the buffer (then ll recv as over windows). */
static epx_status_t lln_dispatch(gpu_moe_t *m)
{
    epx_status_t st = launch(m, EPXK_LLN_PACK);
    if (st == EPX_OK)
        st = lln_exchange(m, 0);
    if (st == EPX_OK)
        st = launch(m, EPXK_LLN_SCATTER);
    return st;
}

/* The combine's put over NCCL (abandon: the flag words alone, marked,
 * and the buffer's next use): staged, exchanged, the partials to their
 * return slots and the flags into the buffer (then ll comb reduce). */
static epx_status_t lln_combine(gpu_moe_t *m, int abandon)
{
    epx_status_t st = launch(m, abandon ? EPXK_LLN_ABANDON
                                        : EPXK_LLN_COMB_PUT);
    if (st == EPX_OK)
        st = lln_exchange(m, 1);
    if (st == EPX_OK)
        st = launch(m, EPXK_LLN_COMB_SCATTER);
    return st;
}

/* Kernels only (layout, pack, recv) into buffer b, no host
 * synchronisation. */
static epx_status_t ll_dispatch_send(gpu_moe_t *m,
                                     const epx_dispatch_args_t *a,
                                     void *stream, int b)
{
    epxk_call_t *c = &m->call;
    epx_status_t st = stream_in(m, stream);
    if (st == EPX_OK)
        st = lost_launch(m, a);
    if (st != EPX_OK)
        return fail(m, st);
    ll_point(m, b);
    c->x = a->x.data;
    c->idx = a->topk_idx.data;
    c->idx64 = a->topk_idx.dtype == EPX_DTYPE_INT64;
    c->w = a->topk_weights.data;
    c->T = a->x.rows;
    c->layer = m->blayer[b];
    if (m->ll1) {   /* the send phase; the receive phase at recv */
        if ((st = launch(m, EPXK_LL1_DISPATCH_SEND)) != EPX_OK)
            return fail(m, st);
        m->ll1_recvd[b] = 0;
        return EPX_OK;
    }
    if ((st = launch(m, EPXK_LL_LAYOUT)) != EPX_OK ||
        (st = launch(m, EPXK_LL_STATS)) != EPX_OK ||
        (st = m->call.windows ? launch(m, EPXK_LL_PACK) : lln_dispatch(m)) !=
            EPX_OK ||
        (st = launch(m, EPXK_LL_RECV)) != EPX_OK)
        return fail(m, st);
    return EPX_OK;
}

static void ll_describe(gpu_moe_t *m, int b, const int64_t *counts,
                        epx_recv_t *recv);

static epx_status_t ll_dispatch_recv(gpu_moe_t *m, void *stream,
                                     epx_recv_t *recv, int b)
{
    epx_status_t st = EPX_OK;
    if (m->ll1 && !m->ll1_recvd[b]) {   /* the receive phase, after the
                                           caller's work, once */
        ll_point(m, b);
        if ((st = stream_in(m, stream)) != EPX_OK ||
            (st = launch(m, EPXK_LL1_DISPATCH_RECV)) != EPX_OK)
            return fail(m, st);
        m->ll1_recvd[b] = 1;
    }
    st = stream_out(m, stream);
    if (st != EPX_OK)
        return fail(m, st);
    ll_describe(m, b, NULL, recv);
    return EPX_OK;
}

/* What a low-latency recv describes: buffer b's regions, its counts in
 * device memory (counts NULL), or poll's in host memory. */
static void ll_describe(gpu_moe_t *m, int b, const int64_t *counts,
                        epx_recv_t *recv)
{
    const proto_geom_t *g = &m->g;
    ll_point(m, b);
    const epxk_call_t *c = &m->call;
    char *bw = m->local + m->llg.off_bufs + (int64_t)c->ll_b * m->llg.buf;
    m->rows = (int64_t)m->L * g->R * m->llg.cap;
    epx_recv_t r;
    memset(&r, 0, sizeof(r));
    r.struct_size = recv->struct_size ? recv->struct_size : sizeof(r);
    r.num_rows = m->rows;
    moe_wire_t f;   /* checked at creation */
    moe_wire_init(&f, (epx_wire_t)g->wire, m->p.dtype, g->H);
    r.x.data = bw + m->llg.rows;
    r.x.dtype = f.x_dtype;
    r.x.rows = m->rows;
    r.x.cols = f.x_cols;
    r.num_local_experts = m->L;
    r.first_local_expert = m->first;
    r.expert_counts = counts ? counts : c->ll_counts;   /* device memory */
    r.expert_offsets = m->h_lloffs;
    r.src_rank = c->ll_src;
    r.src_token = (const int32_t *)(bw + m->llg.src_tok);
    r.topk_idx = NULL;
    r.topk_weights = (const float *)(bw + m->llg.w);
    r.local_experts = gpu_local_experts(m, b);
    r.x_scales.dtype = f.scale_dtype;
    if (moe_wire_quantized(&f)) {
        r.x_scales.data = bw + m->llg.scales;
        r.x_scales.rows = m->rows;
        r.x_scales.cols = f.nblocks;
    }
    if (f.global_bytes)
        r.x_global_scale = (const float *)(bw + m->llg.gscale);
    r.capacity = m->llg.cap;
    r.num_dropped = -1;                        /* counted on the device */
    size_t n = r.struct_size < sizeof(r) ? r.struct_size : sizeof(r);
    memcpy(recv, &r, n);
}

/* The checks' steps, on the engine's stream. */
static epx_status_t st_sync(gpu_moe_t *m)
{
    return epx__cuda_err(cudaStreamSynchronize(m->st), "cudaStreamSynchronize");
}

static epx_status_t st_read(gpu_moe_t *m, void *dst, const void *src,
                            size_t bytes)
{
    return epx__cuda_err(cudaMemcpyAsync(dst, src, bytes,
                                         cudaMemcpyDeviceToHost, m->st),
                         "cudaMemcpyAsync");
}

static epx_status_t ll_check(gpu_moe_t *m, int64_t *dropped);

/* Throughput mode: combine never synchronises, so a device wait that
 * timed out in it is otherwise seen only by the next dispatch_recv. */
static epx_status_t ht_check(gpu_moe_t *m, int64_t *dropped)
{
    int64_t err = 0;
    epx_status_t st = st_sync(m);
    if (st == EPX_OK && m->d_info) {
        st = st_read(m, &err, m->d_info + EPXK_INFO_ERROR, sizeof(err));
        if (st == EPX_OK)
            st = st_sync(m);
    }
    if (st != EPX_OK)
        return fail(m, st);
    if (err)
        return fail(m, epx__error(EPX_ERR_TIMEOUT, "cuda: a peer did not "
                                  "signal within the timeout"));
    if (dropped)
        *dropped = 0;
    return EPX_OK;
}

epx_status_t gpu_moe_check(gpu_moe_t *m, int64_t *dropped)
{
    epx_status_t st = usable(m, "cuda check");
    if (st != EPX_OK)
        return st;
    return m->ll ? ll_check(m, dropped) : ht_check(m, dropped);
}

epx_status_t ll_check(gpu_moe_t *m, int64_t *dropped)
{
    epx_status_t st = usable(m, "cuda ll_check");
    if (st != EPX_OK)
        return st;
    if (!m->ll)
        return epx__error(EPX_ERR_INVALID, "cuda ll_check: the engine is not "
                          "in low-latency mode");
    int64_t state[EPXK_LL_NSTATE], err = 0;
    /* Wait for the call first: the copies below go to pageable memory,
     * and one queued behind kernels that wait for peers could hold the
     * driver while the peers still have copies of their own to make.
     * Then on the engine's stream, never the legacy one (in a process of
     * several ranks that would also wait for their blocking streams). */
    st = st_sync(m);
    if (st == EPX_OK)
        st = st_read(m, state, m->d_llstate, sizeof(state));
    if (st == EPX_OK)
        st = st_read(m, &err, m->d_info + EPXK_INFO_ERROR, sizeof(err));
    if (st == EPX_OK)
        st = epx__cuda_err(cudaMemsetAsync(m->d_llstate, 0, sizeof(state),
                                           m->st), "cudaMemsetAsync");
    if (st == EPX_OK)
        st = st_sync(m);
    if (st != EPX_OK)
        return fail(m, st);
    if (err)
        return fail(m, epx__error(EPX_ERR_TIMEOUT, "cuda low latency: a peer "
                                  "did not signal within the timeout"));
    if (dropped)
        *dropped = state[EPXK_LL_DROPPED];
    if (state[EPXK_LL_ERR] != 0) {
        epx_status_t e = (epx_status_t)state[EPXK_LL_ERR];
        return epx__error(e, "cuda low latency: a call since the last check "
                          "failed on the device (%s%s); its outputs are "
                          "unspecified", epx_status_str(e),
                          e == EPX_ERR_RANGE ? ": more rows than ll_capacity "
                          "without EPX_MOE_LL_DROP" : e == EPX_ERR_INVALID
                          ? ": expert ids outside [-1, num_experts)" : "");
    }
    return EPX_OK;
}

static void ht_describe(gpu_moe_t *m, int b, int64_t rows, epx_recv_t *recv);

/* A cached call's outcome: route, this rank's ids differed from its
 * layout's; agree, the ranks' (proto_cached_agree). */
static epx_status_t ht_agreed(const gpu_moe_t *m, int64_t route, int64_t agree)
{
    (void)m;
    if (route || agree == EPX_ERR_INVALID)
        return epx__error(EPX_ERR_INVALID, "dispatch: EPX_DISPATCH_CACHED "
                          "with a routing that differs from the handle's "
                          "(found on the device; nothing was sent)");
    if (agree == EPX_ERR_PEER)
        return epx__error(EPX_ERR_PEER, "dispatch: a rank's cached dispatch "
                          "had a routing that differs from its handle's "
                          "(nothing was sent)");
    if (agree != 0)
        return epx__error(EPX_ERR_MISMATCH, "dispatch: ranks disagree on "
                          "EPX_DISPATCH_CACHED (some passed it, or they "
                          "reuse handles of different dispatches); nothing "
                          "was sent");
    return EPX_OK;
}

/* The dispatch arguments, as the host executor checks them. */
static epx_status_t args_check(gpu_moe_t *m, const epx_dispatch_args_t *a,
                               float *gs, int *layer)
{
    const proto_geom_t *g = &m->g;
    const int64_t T = a->x.rows;
    /* The caller's NVFP4 tensor scale: the host executor's checks. */
    *gs = a->struct_size >= offsetof(epx_dispatch_args_t,
                                                x_global_scale) + sizeof(float)
        ? a->x_global_scale : 0.0f;
    if (*gs != 0.0f && g->wire != EPX_WIRE_NVFP4)
        return epx__error(EPX_ERR_INVALID, "cuda dispatch_send: "
                          "x_global_scale %g with a wire other than nvfp4 "
                          "(0 otherwise)", (double)*gs);
    if (!(*gs >= 0.0f) || isinf(*gs))   /* NaN fails the comparison */
        return epx__error(EPX_ERR_INVALID, "cuda dispatch_send: "
                          "x_global_scale %g: want a finite scale > 0, or 0 "
                          "for each token's own", (double)*gs);
    if (T > m->p.max_tokens_per_rank)   /* the host executor's status */
        return epx__error(EPX_ERR_RANGE, "dispatch: %lld tokens exceed "
                          "max_tokens_per_rank %d", (long long)T,
                          m->p.max_tokens_per_rank);
    if (T < 0 ||
        !tensor_ok(&a->x, m->p.dtype, T, g->H) ||
        (a->topk_idx.dtype != EPX_DTYPE_INT32 &&
         a->topk_idx.dtype != EPX_DTYPE_INT64) ||
        !tensor_ok(&a->topk_idx, a->topk_idx.dtype, T, g->K) ||
        !tensor_ok(&a->topk_weights, EPX_DTYPE_FP32, T, g->K))
        return epx__error(EPX_ERR_INVALID, "cuda dispatch_send: x must be "
                          "[T <= %d, %d] in the engine dtype, topk_idx [T, %d] "
                          "INT32/INT64, topk_weights [T, %d] FP32",
                          m->p.max_tokens_per_rank, g->H, g->K, g->K);
    const int l = a->struct_size >= offsetof(epx_dispatch_args_t, layer) +
                                         sizeof(int) ? a->layer : 0;
    if (l < 0 || l >= m->layers)
        return epx__error(EPX_ERR_INVALID, "cuda dispatch_send: layer %d out "
                          "of range [0, %d) (num_layers)", l, m->layers);
    if (m->h_placed && !m->h_placed[l])
        return epx__error(EPX_ERR_INVALID, "cuda dispatch_send: layer %d has "
                          "no placement (epx_moe_set_placement)", l);
    *layer = l;
    return EPX_OK;
}

static epx_status_t pack(gpu_moe_t *m);   /* the rows (windows) */

/* NCCL: this rank's count block (header and counts, kern_nccl.cu) to
 * every rank and theirs here, one grouped exchange of the same size
 * whatever the call (so ranks that disagree on it still pair up), then
 * this rank's verdict on every source's header into info's agreement
 * (proto.h proto_cached_agree_all: the same on every rank). */
static epx_status_t nccl_heads(gpu_moe_t *m)
{
    const proto_geom_t *g = &m->g;
    const epxk_call_t *c = &m->call;
    const int64_t hdr = PROTO_CNT_HDR;
    const int32_t *mine = (const int32_t *)(m->stage + g->off_cnt) +
                          proto_cnt_index(g, c->parity, g->rank) - hdr;
    int32_t *blk = (int32_t *)(m->local + g->off_cnt) +
                   proto_cnt_index(g, c->parity, 0) - hdr;
    epx_status_t st = launch(m, EPXK_NCCL_HEAD);
    if (st == EPX_OK)
        st = epx__nccl_counts(m->nccl, g, mine, blk, m->st);
    if (st == EPX_OK)
        st = launch(m, EPXK_NCCL_AGREE);
    return st;
}

/* A bad argument on this rank (throughput, both backends), refused on
 * every rank as the host executor's count exchange does: the call still
 * takes its turn, as a header-only exchange that says so (proto.h
 * PROTO_CNT_REFUSED), so the peers' offsets kernels (NCCL: their verdict
 * on the headers, nccl_heads) fail it (EPX_ERR_PEER from their
 * epx_dispatch_recv) and nothing is packed or moved; here it is over at
 * once.  Returns `why` (its message kept), or the error that stopped the
 * exchange from being queued (then the peers time out). */
static epx_status_t refuse(gpu_moe_t *m, void *stream, epx_status_t why)
{
    char msg[512];
    snprintf(msg, sizeof(msg), "%s", epx_last_error());
    int li = -1, b;
    uint64_t n;
    epx_status_t st = lay_get(m, &li);
    if (st == EPX_OK && (st = gpu_calls_send(&m->calls, 0, &n, &b)) != EPX_OK)
        gpu_layout_release(m, li);
    if (st != EPX_OK)
        return st;
    epxk_call_t *c = &m->call;
    m->seq++;
    lay_point(m, li);
    m->lays[li].seq = (int32_t)m->seq;
    c->cached = 0;
    c->refused = 1;
    c->lay_seq = m->lays[li].seq;
    c->route = (proto_route_t){ 0, NULL, NULL, NULL };
    c->x = NULL;
    c->idx = NULL;
    c->w = NULL;
    c->idx64 = 0;
    c->T = 0;
    c->gscale = 0.0f;
    c->seq = m->seq;
    c->parity = (int)(m->seq & 1);
    if ((st = stream_in(m, stream)) == EPX_OK)
        st = epx__cuda_err(cudaMemsetAsync(m->d_info + EPXK_INFO_BAD_IDS, 0,
                                           sizeof(int64_t) * EPXK_INFO_CALL,
                                           m->st), "cudaMemsetAsync");
    if (st == EPX_OK && (st = launch(m, EPXK_CACHED)) == EPX_OK &&
        (st = c->windows ? launch(m, EPXK_OFFSETS) : nccl_heads(m)) ==
            EPX_OK &&
        (st = pack(m)) == EPX_OK)
        st = launch(m, EPXK_RECV);
    c->refused = 0;
    /* Over here: the next call is queued after these kernels. */
    gpu_calls_recv(&m->calls, n, &b);
    gpu_calls_release(&m->calls, n, &b);
    gpu_layout_release(m, li);
    if (st != EPX_OK)
        return fail(m, st);
    return epx__error(why, "%s", msg);
}

/* A bad argument on this rank in low latency, refused on every rank as
 * the host executor's header does: the call still takes its number and
 * buffer, and its pack (nothing packed: c->ll_refused) stores the status
 * and empty words at every peer, whose recv kernels then fail the call
 * (their epx_dispatch_poll and epx_moe_check: EPX_ERR_PEER, or
 * EPX_ERR_RANGE for too many tokens, as on host ranks); here it is
 * abandoned at once (its comb flags, so no peer's combine waits for it)
 * and over.  Returns `why` (its message kept), or the error that stopped
 * the call from being queued.  Nothing is read back: it captures. */
static epx_status_t ll_refuse(gpu_moe_t *m, void *stream, epx_status_t why)
{
    char msg[512];
    snprintf(msg, sizeof(msg), "%s", epx_last_error());
    uint64_t n;
    int b;
    /* a buffer still in use: nothing sent, as on host ranks */
    epx_status_t st = gpu_calls_send(&m->calls, 0, &n, &b);
    if (st != EPX_OK)
        return st;
    epxk_call_t *c = &m->call;
    ll_point(m, b);
    c->ll_refused = why;
    c->T = 0;
    c->x = c->idx = NULL;
    c->w = NULL;
    if ((st = stream_in(m, stream)) == EPX_OK &&
        (st = c->windows ? launch(m, EPXK_LL_PACK) : lln_dispatch(m)) ==
            EPX_OK)
        st = c->windows ? launch(m, EPXK_LL_ABANDON) : lln_combine(m, 1);
    c->ll_refused = 0;
    gpu_calls_release(&m->calls, n, &b);   /* its abandon is queued */
    if (st != EPX_OK)
        return fail(m, st);
    return epx__error(why, "%s", msg);
}

epx_status_t gpu_dispatch_refuse(gpu_moe_t *m, void *stream,
                                 epx_status_t why)
{
    if (usable(m, "cuda dispatch_send") != EPX_OK)
        return why;
    if (m->ll)
        return ll_refuse(m, stream, why);
    return refuse(m, stream, why);
}

static epx_status_t comb_fence(gpu_moe_t *m);   /* fused combine */
/* Does this uncached throughput call take the fused dispatch
 * (EPX_CUDA_KERNELS=fused, kern_ht.cu)?  Windows backend, within the
 * kernel's shared memory; the rest (NCCL, cached and refused calls)
 * takes the classic kernels, which speak the same window protocol. */
static int ht_fused_ok(const gpu_moe_t *m)
{
    return m->kset == EPXK_SET_FUSED && m->call.windows && m->ht_fits &&
           !m->hier && epxk_ht_covers(&m->g);
}

/* The rows into the peers' windows (windows backend): the pack kernel,
 * or the hierarchical stage and forward kernels (kern_hier.cu). */
static epx_status_t pack(gpu_moe_t *m)
{
    if (m->hier)
        return gpu_hier_dispatch(m->hier, &m->g, &m->call, m->num_sms, m->st);
    return launch(m, EPXK_PACK);
}


epx_status_t gpu_dispatch_send(gpu_moe_t *m, const epx_dispatch_args_t *a,
                               void *stream, int *lay, uint64_t *call)
{
    epx_status_t st = usable(m, "cuda dispatch_send");
    if (st != EPX_OK)
        return st;
    const proto_geom_t *g = &m->g;
    if (!a || !lay || a->struct_size < offsetof(epx_dispatch_args_t, flags) +
                                           sizeof(unsigned))
        return epx__error(EPX_ERR_INVALID, "cuda dispatch_send: args missing");
    const int64_t T = a->x.rows;
    /* Other bits are ignored, as on host ranks. */
    const int cached = (a->flags & EPX_DISPATCH_CACHED) != 0;
    if (cached && m->ll)
        return ll_refuse(m, stream, epx__error(EPX_ERR_INVALID, "dispatch: "
                         "EPX_DISPATCH_CACHED saves the count exchange of "
                         "throughput mode; low latency has none (dispatch "
                         "without it)"));
    if (cached && (*lay < 0 || *lay >= m->nlays || !m->lays[*lay].used))
        return refuse(m, stream, epx__error(EPX_ERR_INVALID, "dispatch: "
                                            "EPX_DISPATCH_CACHED needs a "
                                            "handle of an earlier dispatch "
                                            "on this engine"));
    float gs = 0;
    int layer = 0;
    if ((st = args_check(m, a, &gs, &layer)) != EPX_OK)
        return m->ll ? ll_refuse(m, stream, st) : refuse(m, stream, st);
    /* Its layout (throughput), number and buffer, or a refusal with
     * nothing queued. */
    int b, li = cached ? *lay : -1;
    if (!cached && !m->ll && (st = lay_get(m, &li)) != EPX_OK)
        return st;
    if ((st = gpu_calls_send(&m->calls, T, call, &b)) != EPX_OK) {
        if (!cached)
            gpu_layout_release(m, li);
        return st;
    }
    *lay = li;
    epxk_call_t *c = &m->call;
    c->gscale = gs;
    m->blayer[b] = layer;
    c->route = (proto_route_t){ 0, NULL, NULL, NULL };
    if (m->d_route) {
        const size_t per = (size_t)(2 * m->Elog + 1 + g->E);
        const int32_t *t = m->d_route + per * (size_t)layer;
        c->route = (proto_route_t){ m->Elog, m->h_rr[layer] ? NULL : t,
                                   t + m->Elog, t + 2 * m->Elog + 1 };
    }
    if (m->ll)
        return ll_dispatch_send(m, a, stream, b);
    m->seq++;
    lay_point(m, li);
    if (!cached)
        m->lays[li].seq = (int32_t)m->seq;
    c->cached = cached;
    c->lay_seq = m->lays[li].seq;
    c->x = a->x.data;
    c->idx = a->topk_idx.data;
    c->idx64 = a->topk_idx.dtype == EPX_DTYPE_INT64;
    c->w = a->topk_weights.data;
    c->T = T;
    c->seq = m->seq;
    c->parity = (int)(m->seq & 1);
    if ((st = stream_in(m, stream)) != EPX_OK ||
        (st = comb_fence(m)) != EPX_OK)
        return fail(m, st);
    /* This call's flags only (a call released before its recv leaves
     * its own set). */
    if ((st = epx__cuda_err(cudaMemsetAsync(m->d_info + EPXK_INFO_BAD_IDS, 0,
                                            sizeof(int64_t) * EPXK_INFO_CALL,
                                            m->st),
                            "cudaMemsetAsync")) != EPX_OK ||
        (st = lost_launch(m, a)) != EPX_OK)
        return fail(m, st);
    m->fcall = 0;
    if (cached && c->windows) {
        /* The ids checked against the layout's, the headers exchanged;
         * then the layout's ids route the rows, so what is packed always
         * matches the positions. */
        if ((st = launch(m, EPXK_CACHED)) == EPX_OK) {
            c->idx = c->lay_ids;
            c->idx64 = 0;
            if ((st = launch(m, EPXK_OFFSETS)) == EPX_OK &&
                (st = pack(m)) == EPX_OK)
                st = launch(m, EPXK_RECV);
        }
    } else if (ht_fused_ok(m)) {
        /* One kernel; the counts come back through mapped memory. */
        m->fcall = 1;
        m->fseq = m->seq;
        st = epx__cuda_err((cudaError_t)epxk_ht_launch(&m->g, c, m->num_sms,
                                                       m->st),
                           "kernel launch");
    } else if (c->windows) {
        if ((st = launch(m, EPXK_LAYOUT)) == EPX_OK &&
            (st = launch(m, EPXK_OFFSETS)) == EPX_OK &&
            (st = pack(m)) == EPX_OK)
            st = launch(m, EPXK_RECV);
    } else {
        int32_t *cnt = (int32_t *)(m->local + g->off_cnt) +
                       proto_cnt_index(g, c->parity, 0);
        /* every source's counts, from the first's (after its header) */
        size_t blk = sizeof(int32_t) *
                     ((size_t)g->R * g->cnt_ints - PROTO_CNT_HDR);
        /* Expert-major: pack stages unit by unit (ebase: the staging
         * bases), and the map of what arrives follows the counts.  A
         * cached call keeps its layout's (ids checked against it on the
         * device, then those ids pack), and the counts every rank sends
         * are its layout's: the matrix that arrives is the layout's. */
        if (cached) {
            if ((st = launch(m, EPXK_CACHED)) == EPX_OK) {
                c->idx = c->lay_ids;
                c->idx64 = 0;
            }
        } else if ((st = launch(m, EPXK_LAYOUT)) == EPX_OK && g->em &&
                   !m->hier) {
            st = launch(m, EPXK_NCCL_EM_BASE);
        }
        /* hierarchical: its records and count blocks after the heads, as
         * a refused call's pack (hier.c) */
        if (st == EPX_OK && !m->hier)
            st = launch(m, EPXK_PACK);
        if (st == EPX_OK)
            st = nccl_heads(m);
        if (st == EPX_OK && m->hier)
            st = pack(m);
        if (st == EPX_OK && g->em && !m->hier)
            st = launch(m, EPXK_NCCL_EM_MAP);
        /* The one host synchronisation: the verdict on the call and the
         * sizes of the receives. */
        if (st == EPX_OK)
            st = epx__cuda_err(cudaMemcpyAsync(m->h_info + EPXK_INFO_AGREE,
                                               m->d_info + EPXK_INFO_AGREE,
                                               sizeof(int64_t),
                                               cudaMemcpyDeviceToHost, m->st),
                               "cudaMemcpyAsync");
        if (st == EPX_OK)
            st = epx__cuda_err(cudaMemcpyAsync(m->h_cnt, cnt, blk,
                                               cudaMemcpyDeviceToHost, m->st),
                               "cudaMemcpyAsync");
        if (st == EPX_OK)
            st = epx__cuda_err(cudaMemcpyAsync(
                                   m->h_cnt + (size_t)g->R * g->cnt_ints,
                                   c->mycnt,
                                   sizeof(int32_t) * (size_t)(g->R + g->E),
                                   cudaMemcpyDeviceToHost, m->st),
                               "cudaMemcpyAsync");
        if (st == EPX_OK)
            st = epx__cuda_err(cudaStreamSynchronize(m->st),
                               "cudaStreamSynchronize");
        /* Rows move only where the ranks agreed (all alike: nothing is
         * sent, nothing awaited); the recv kernel then reports none. */
        const int agreed = st == EPX_OK && m->h_info[EPXK_INFO_AGREE] == 0;
        if (agreed && m->hier) {
            st = gpu_hier_nccl_recv(m->hier, g, c, m->local, m->h_cnt,
                                    m->num_sms, m->st);
        } else if (agreed) {
            nccl_sizes(m);
            st = g->em
                ? epx__nccl_dispatch_em(m->nccl, g, m->stage, m->rstage,
                                        m->local, m->nsend, m->rsize, m->st)
                : epx__nccl_dispatch(m->nccl, g, m->stage, m->local, m->nsend,
                                     m->sendoff, m->nrecv, m->rbase, m->st);
        }
        if (st == EPX_OK && agreed && g->em && !m->hier)
            st = launch(m, EPXK_NCCL_EM_SCATTER);
        if (st == EPX_OK)
            st = launch(m, EPXK_RECV);
    }
    /* The layout's per-expert counts ride along: the statistics come from
     * the routing without a pass of their own (the fused kernel publishes
     * them and the rest of info in mapped memory). */
    if (st == EPX_OK && !m->fcall)
        st = epx__cuda_err(cudaMemcpyAsync(m->h_ecnt, c->mycnt + g->R,
                                           sizeof(int32_t) * (size_t)g->E,
                                           cudaMemcpyDeviceToHost, m->st),
                           "cudaMemcpyAsync");
    if (st == EPX_OK && !m->fcall)
        st = epx__cuda_err(cudaMemcpyAsync(m->h_info, m->d_info,
                                           sizeof(int64_t) *
                                               (size_t)(EPXK_INFO_COUNTS +
                                                        2 * m->L),
                                           cudaMemcpyDeviceToHost, m->st),
                           "cudaMemcpyAsync");
    if (st == EPX_OK)
        st = epx__cuda_err(cudaEventRecord(m->ev_info, m->st),
                           "cudaEventRecord");
    if (st != EPX_OK)
        return fail(m, st);
    return EPX_OK;
}

/* The fused dispatch's host wait: its sequence word in mapped memory,
 * which the kernel stores once every count row of the call is here,
 * before the rows move.  Bounded: by EPX_TIMEOUT four times over (the
 * kernel's waits before it publishes, each bounded by the timeout, and
 * the engine's earlier work) from the moment the work queued before the
 * dispatch on the caller's stream is done (ev_in); a kernel that ended
 * without publishing is an error. */
static epx_status_t ht_fused_wait(gpu_moe_t *m)
{
    const double limit = 4 * epx__comm_timeout(m->comm);
    double t0 = 0;
    for (unsigned n = 0;; n++) {
        if ((uint64_t)__atomic_load_n(&m->h_pub[EPXK_PUB_SEQ],
                                      __ATOMIC_ACQUIRE) == m->fseq)
            return EPX_OK;
        if (n % 64)
            continue;
        cudaError_t e = cudaEventQuery(m->ev_info);
        if (e == cudaSuccess) {
            if ((uint64_t)__atomic_load_n(&m->h_pub[EPXK_PUB_SEQ],
                                          __ATOMIC_ACQUIRE) == m->fseq)
                return EPX_OK;
            return epx__error(EPX_ERR_SYSTEM, "cuda dispatch: the fused "
                              "kernel ended without publishing its counts");
        }
        if (e != cudaErrorNotReady)
            return epx__cuda_err(e, "cudaEventQuery");
        if (t0 == 0) {   /* the clock starts once the inputs are ready */
            e = cudaEventQuery(m->ev_in);
            if (e == cudaSuccess)
                t0 = epx__now();
            else if (e != cudaErrorNotReady)
                return epx__cuda_err(e, "cudaEventQuery");
        } else if (epx__now() - t0 > limit) {
            return epx__error(EPX_ERR_TIMEOUT, "cuda dispatch: the fused "
                              "kernel published no counts within %.1f s",
                              limit);
        }
        struct timespec ts = { 0, 2000 };
        nanosleep(&ts, NULL);
    }
}

/* dispatch_recv of a fused call: what the classic path reads back from
 * info and the layout's counts, read from the mapped words instead; the
 * rows are the caller's through stream order (stream_out). */
static epx_status_t ht_fused_recv(gpu_moe_t *m, uint64_t call, void *stream,
                                  epx_recv_t *recv, int b)
{
    const int64_t *pub = m->h_pub, *pf = pub + EPXK_PUB_FUSED(m->L);
    epx_status_t st = ht_fused_wait(m);
    if (st != EPX_OK)
        return fail(m, st);
    /* The published counts serve epx_dispatch_poll early; recv keeps the
     * contract's guarantees: the inputs are free and every unit's rows
     * are here when it returns (the kernel is done), and a wait that
     * timed out after the counts were published (info's error word) is
     * this call's error. */
    if ((st = epx__cuda_err(cudaEventSynchronize(m->ev_info),
                            "cudaEventSynchronize")) != EPX_OK ||
        (st = st_read(m, m->h_info + EPXK_INFO_ERROR,
                      m->d_info + EPXK_INFO_ERROR, sizeof(int64_t))) !=
            EPX_OK ||
        (st = st_sync(m)) != EPX_OK)
        return fail(m, st);
    if (pf[EPXK_PUBF_ERROR] || m->h_info[EPXK_INFO_ERROR])
        return fail(m, epx__error(EPX_ERR_TIMEOUT, "cuda dispatch: a peer "
                                  "did not signal within the timeout"));
    int bad = pf[EPXK_PUBF_BAD_IDS] != 0;
    if ((st = ht_agreed(m, 0, pub[EPXK_PUB_AGREE])) != EPX_OK) {
        gpu_calls_release(&m->calls, call, &b);
        return st;
    }
    m->rows = pub[EPXK_PUB_ROWS];
    for (int j = 0; j < 2 * m->L; j++)
        m->h_counts[j] = pub[EPXK_PUB_COUNTS + j];
    for (int e = 0; e < m->g.E; e++)
        m->h_ecnt[e] = (int32_t)pf[EPXK_PUBF_ECNT + e];
    if ((st = stream_out(m, stream)) != EPX_OK)
        return fail(m, st);
    ht_describe(m, b, m->rows, recv);
    if (bad)
        return epx__error(EPX_ERR_INVALID, "cuda dispatch: topk_idx held ids "
                          "outside [-1, %d); they were treated as -1 (recv "
                          "is filled: complete the call with combine)",
                          m->Elog);
    return EPX_OK;
}

epx_status_t gpu_dispatch_recv(gpu_moe_t *m, uint64_t call, void *stream,
                               epx_recv_t *recv)
{
    epx_status_t st = usable(m, "cuda dispatch_recv");
    if (st != EPX_OK)
        return st;
    if (!recv)
        return epx__error(EPX_ERR_INVALID, "cuda dispatch_recv: recv is NULL");
    int b;
    if ((st = gpu_calls_recv(&m->calls, call, &b)) != EPX_OK)
        return st;
    if (m->ll)
        return ll_dispatch_recv(m, stream, recv, b);
    if (m->fcall)
        return ht_fused_recv(m, call, stream, recv, b);
    /* The one host synchronisation of the windows backend. */
    st = epx__cuda_err(cudaEventSynchronize(m->ev_info),
                       "cudaEventSynchronize");
    if (st != EPX_OK)
        return fail(m, st);
    if (m->h_info[EPXK_INFO_ERROR])
        return fail(m, epx__error(EPX_ERR_TIMEOUT, "cuda dispatch: a peer "
                                  "did not signal within the timeout"));
    int bad = m->h_info[EPXK_INFO_BAD_IDS] != 0;   /* cleared by each send */
    /* A cached call the ranks did not agree on moved nothing: it ends
     * here (its combine is refused), the engine stays usable. */
    if ((st = ht_agreed(m, m->h_info[EPXK_INFO_ROUTE],
                        m->h_info[EPXK_INFO_AGREE])) != EPX_OK) {
        gpu_calls_release(&m->calls, call, &b);
        return st;
    }
    m->rows = m->h_info[EPXK_INFO_ROWS];
    for (int j = 0; j < 2 * m->L; j++)
        m->h_counts[j] = m->h_info[EPXK_INFO_COUNTS + j];
    if ((st = stream_out(m, stream)) != EPX_OK)
        return fail(m, st);
    ht_describe(m, b, m->rows, recv);
    if (bad)
        return epx__error(EPX_ERR_INVALID, "cuda dispatch: topk_idx held ids "
                          "outside [-1, %d); they were treated as -1 (recv "
                          "is filled: complete the call with combine)",
                          m->Elog);
    return EPX_OK;
}

/* What a throughput recv describes: the window's regions, `rows` rows and
 * the counts in h_counts. */
static void ht_describe(gpu_moe_t *m, int b, int64_t rows, epx_recv_t *recv)
{
    const proto_geom_t *g = &m->g;
    epx_recv_t r;
    memset(&r, 0, sizeof(r));
    r.struct_size = recv->struct_size ? recv->struct_size : sizeof(r);
    r.num_rows = rows;
    moe_wire_t f;   /* checked at creation */
    moe_wire_init(&f, (epx_wire_t)g->wire, m->p.dtype, g->H);
    r.x.data = m->local + g->off_rows;
    r.x.dtype = f.x_dtype;
    r.x.rows = rows;
    r.x.cols = f.x_cols;
    r.num_local_experts = m->L;
    r.first_local_expert = m->first;
    r.expert_counts = m->h_counts;
    r.expert_offsets = g->em ? m->h_counts + m->L : NULL;
    r.src_rank = (const int32_t *)(m->local + g->off_src_rank);
    r.src_token = (const int32_t *)(m->local + g->off_src_token);
    r.topk_idx = g->em ? NULL : (const int32_t *)(m->local + g->off_idx);
    r.topk_weights = (const float *)(m->local + g->off_w);
    r.local_experts = gpu_local_experts(m, b);
    r.x_scales.dtype = f.scale_dtype;
    if (moe_wire_quantized(&f)) {
        r.x_scales.data = m->local + g->off_scales;
        r.x_scales.rows = rows;
        r.x_scales.cols = f.nblocks;
    }
    if (f.global_bytes)
        r.x_global_scale = (const float *)(m->local + g->off_gscale);
    size_t n = r.struct_size < sizeof(r) ? r.struct_size : sizeof(r);
    memcpy(recv, &r, n);
}

/* Low-latency readiness without waiting (src/cuda/README.md, "Readiness
 * in low latency"): what the call's recv kernel published for its buffer
 * (gpu_ll_poll_read).  The fused set queues its receive phase at the
 * call's first poll (on the engine's stream, right after the send phase,
 * as the classic recv kernel runs), so that the units can get ready
 * before epx_dispatch_recv, which then queues none.  A failure found is
 * the call's from then on (gpu_calls_fail). */
static epx_status_t ll_dispatch_poll(gpu_moe_t *m, uint64_t call,
                                     epx_recv_t *recv, uint8_t *ready,
                                     int *num_ready)
{
    int b, received;
    epx_status_t st = gpu_calls_poll(&m->calls, call, &b, &received);
    if (st != EPX_OK)
        return st;
    if (m->ll1 && !m->ll1_recvd[b]) {
        /* not into a graph being captured: nothing of it would run now */
        enum cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
        if ((st = epx__cuda_err(cudaStreamIsCapturing(m->st, &cs),
                                "cudaStreamIsCapturing")) != EPX_OK)
            return fail(m, st);
        if (cs == cudaStreamCaptureStatusNone) {
            ll_point(m, b);
            if ((st = launch(m, EPXK_LL1_DISPATCH_RECV)) != EPX_OK)
                return fail(m, st);
            m->ll1_recvd[b] = 1;
        }
    }
    int64_t *counts = m->h_llpoll + (size_t)b * (size_t)m->L;
    int32_t bad = 0;
    int n = gpu_ll_poll_read(m->h_llpub + (size_t)b *
                                              (size_t)EPXK_LLPUB_LEN(m->L),
                             m->L, call + 1, ready, counts, &bad);
    if (bad) {
        gpu_calls_fail(&m->calls, call, (epx_status_t)bad);
        return epx__error((epx_status_t)bad, "dispatch_poll: the call failed "
                          "on the device (%s: %s); release its handle",
                          epx_status_str((epx_status_t)bad),
                          bad == EPX_ERR_RANGE
                              ? "a rank routed more tokens to one expert than "
                                "ll_capacity, without EPX_MOE_LL_DROP"
                              : bad == EPX_ERR_PEER
                              ? "another rank's arguments, routing or wait "
                                "failed"
                              : "this rank's own routing failed");
    }
    ll_describe(m, b, counts, recv);   /* counts: host memory, the ready
                                          units' */
    *num_ready = n;
    return EPX_OK;
}

/* Throughput readiness without waiting (include/epx.h; src/cuda/README.md,
 * "Readiness"): what the recv kernel has published in host-mapped memory
 * for this call (gpu_poll_read), or, after dispatch_recv, everything. */
epx_status_t gpu_dispatch_poll(gpu_moe_t *m, uint64_t call, epx_recv_t *recv,
                               uint8_t *ready, int *num_ready)
{
    epx_status_t st = usable(m, "cuda dispatch_poll");
    if (st != EPX_OK)
        return st;
    if (!recv || !num_ready || (!ready && m->L > 0))
        return epx__error(EPX_ERR_INVALID, "dispatch_poll: recv, ready or "
                          "num_ready NULL");
    if (m->ll)
        return ll_dispatch_poll(m, call, recv, ready, num_ready);
    int b, received;
    if ((st = gpu_calls_poll(&m->calls, call, &b, &received)) != EPX_OK)
        return st;
    int64_t rows = m->rows;
    int n = m->L;
    if (received) {
        if (m->L > 0)
            memset(ready, 1, (size_t)m->L);
    } else {
        int64_t agree = 0;
        n = gpu_poll_read(m->h_pub, m->L, m->seq, ready, m->h_counts, &rows,
                          &agree);
        if ((st = ht_agreed(m, 0, agree)) != EPX_OK)
            return st;
    }
    ht_describe(m, b, rows, recv);
    *num_ready = n;
    return EPX_OK;
}

/* ------------------------------------------------------------- combine */

/* The fused set's combine (kern_comb.cu), throughput mode over windows:
 * whether it runs this call. */
static int comb_fused(const gpu_moe_t *m)
{
    /* FP64 engines combine with the classic kernels (the pull sums in
     * fp32); every rank has the engine's dtype, so all ranks agree. */
    return m->kset == EPXK_SET_FUSED && !m->ll && m->call.windows &&
           m->g.esize != 8 && !m->hier;
}

static epx_status_t comb_launch(gpu_moe_t *m, int which)
{
    int rc = epxk_comb_launch(which, &m->g, &m->call, m->num_sms, m->st);
    return epx__cuda_err((cudaError_t)rc, "kernel launch");
}

/* Its send: y in the receive rows (as epx_recv_t.x describes them, the
 * host executor's test for outputs in place) stays there for the
 * sources to pull, and only the flag saying so goes out; else the
 * classic put pushes the partials. */
static epx_status_t comb_fused_send(gpu_moe_t *m, const epx_combine_args_t *a)
{
    const int in_place = !m->g.qblock &&
                         a->y.data == (void *)(m->local + m->g.off_rows);
    m->call.comb_pull = !in_place ? PROTO_PULL_PUSHED
                      : m->call.unweighted ? PROTO_PULL_UNWEIGHTED
                                           : PROTO_PULL_ROWS;
    m->pull_pending = m->call.seq;   /* every rank pulls this call */
    return in_place ? comb_launch(m, EPXK_COMB_READY)
                    : launch(m, EPXK_COMB_PUT);
}

/* The pull fence, first on the engine's stream in a throughput dispatch
 * after a fused combine: nothing of this dispatch stores into a window
 * before every rank's pull of that combine is done (kern_comb.cu). */
static epx_status_t comb_fence(gpu_moe_t *m)
{
    if (!m->pull_pending)
        return EPX_OK;
    m->call.pull_wait = m->pull_pending;
    m->pull_pending = 0;
    return comb_launch(m, EPXK_COMB_FENCE);
}

epx_status_t gpu_combine_send(gpu_moe_t *m, uint64_t call,
                              const epx_combine_args_t *a, void *stream)
{
    epx_status_t st = usable(m, "cuda combine_send");
    if (st != EPX_OK)
        return st;
    /* A call that is over (a cached dispatch the ranks did not agree on
     * ends in its recv) is refused before its arguments are read. */
    int pb, prcv;
    if (gpu_calls_poll(&m->calls, call, &pb, &prcv) != EPX_OK)
        return epx__error(EPX_ERR_STATE, "combine: no received dispatch for "
                          "this handle");
    if (!a || a->struct_size < offsetof(epx_combine_args_t, flags) +
                                   sizeof(unsigned) ||
        !tensor_ok(&a->y, m->p.dtype, m->rows, m->g.H))
        return epx__error(EPX_ERR_INVALID, "cuda combine_send: y must be "
                          "[%lld, %d] in the engine dtype",
                          (long long)m->rows, m->g.H);
    /* y in the receive regions would overrun the narrower quantized rows
     * into their scales while peers may still read them (low latency:
     * into the buffers, whose partials peers are storing). */
    const uintptr_t yb = (uintptr_t)a->y.data, lb = (uintptr_t)m->local;
    const uintptr_t ye = yb + (uintptr_t)(m->rows * m->g.row_bytes);
    const uintptr_t rb = lb + (uintptr_t)(m->ll ? m->llg.off_bufs
                                                : m->g.off_rows);
    const uintptr_t re = lb + (uintptr_t)(m->ll ? m->llg.total
                                                : m->g.off_comb);
    if (m->g.qblock && m->rows > 0 && yb < re && ye > rb)
        return epx__error(EPX_ERR_INVALID, "cuda combine_send: with a "
                          "quantized wire y may not lie in the engine's "
                          "receive buffers");
    if (a->flags & ~EPX_COMBINE_UNWEIGHTED ||
        (a->flags && !m->g.em))
        return epx__error(EPX_ERR_INVALID, "cuda combine_send: flags 0x%x "
                          "(EPX_COMBINE_UNWEIGHTED is for the expert-major "
                          "layout)", a->flags);
    int b;
    if ((st = gpu_calls_combine_send(&m->calls, call, &b, &m->comb_T)) !=
        EPX_OK)
        return st;
    if (m->ll)
        ll_point(m, b);
    m->call.T = m->comb_T;
    m->call.y = a->y.data;
    m->call.unweighted = (a->flags & EPX_COMBINE_UNWEIGHTED) != 0;
    if ((st = stream_in(m, stream)) != EPX_OK)
        return fail(m, st);
    if (m->ll && !m->call.windows)
        st = lln_combine(m, 0);
    else if (m->ll)
        st = launch(m, m->ll1 ? EPXK_LL1_COMB_SEND : EPXK_LL_COMB_PUT);
    else if (comb_fused(m))
        st = comb_fused_send(m, a);
    else if (m->hier)
        st = gpu_hier_combine_send(m->hier, &m->g, &m->call, m->local,
                                   m->num_sms, m->st);
    else if (m->call.windows)
        st = launch(m, EPXK_COMB_PUT);
    else if (!m->g.em)
        st = epx__nccl_combine(m->nccl, &m->g, a->y.data, m->local, m->nsend,
                               m->sendoff, m->nrecv, m->rbase, m->st);
    /* Expert-major over NCCL: each entry's partial into rstage, in entry
     * order, so each source's partials go back as one range. */
    else if ((st = launch(m, EPXK_NCCL_EM_PARTIAL)) == EPX_OK)
        st = epx__nccl_combine(m->nccl, &m->g, m->rstage, m->local, m->nsend,
                               m->sendoff, m->nrecv, m->rbase, m->st);
    if (st != EPX_OK)
        return fail(m, st);
    return EPX_OK;
}

epx_status_t gpu_combine_recv(gpu_moe_t *m, uint64_t call, epx_tensor_t *out,
                              void *stream)
{
    epx_status_t st = usable(m, "cuda combine_recv");
    if (st != EPX_OK)
        return st;
    if (m->calls.combining < 0 ||
        m->calls.slot[m->calls.combining].n != call)
        return epx__error(EPX_ERR_STATE, "cuda combine_recv: recv without a "
                          "matching combine_send");
    /* An FP64 engine's output is FP64 (the double sum), the others' BF16
     * or FP32: the host executor's rule (moe_check_out). */
    const int f64 = m->g.esize == 8;
    if (!out || (f64 ? out->dtype != EPX_DTYPE_FP64
                     : out->dtype != EPX_DTYPE_BF16 &&
                       out->dtype != EPX_DTYPE_FP32) ||
        !tensor_ok(out, out->dtype, m->comb_T, m->g.H))
        return epx__error(EPX_ERR_INVALID, "cuda combine_recv: out must be "
                          "[%lld, %d] %s", (long long)m->comb_T, m->g.H,
                          f64 ? "FP64 (an FP64 engine's output)"
                              : "BF16 or FP32 (FP64 only of an FP64 engine)");
    int b;
    gpu_calls_combine_recv(&m->calls, call, &b);   /* checked above */
    if (m->ll)
        ll_point(m, b);
    m->call.T = m->comb_T;
    m->call.out = out->data;
    m->call.out_esize = out->dtype == EPX_DTYPE_BF16 ? 2
                        : out->dtype == EPX_DTYPE_FP64 ? 8 : 4;
    if ((st = stream_in(m, stream)) != EPX_OK ||
        (st = comb_fused(m) ? comb_launch(m, EPXK_COMB_PULL)
              : m->hier ? gpu_hier_combine_recv(m->hier, &m->g, &m->call,
                                                m->num_sms, m->st)
              : launch(m, !m->ll ? EPXK_COMB_REDUCE
                          : m->ll1 ? EPXK_LL1_COMB_RECV : EPXK_LL_COMB_REDUCE)) !=
            EPX_OK ||
        (st = stream_out(m, stream)) != EPX_OK)
        return fail(m, st);
    return EPX_OK;
}

/* Low latency: a call released before its combine is abandoned on the
 * device (its comb flags marked, so no peer waits), one released between
 * its combine's send and recv still gets its reduce (into scratch), which
 * advances the buffer's use.  Throughput mode: nothing to do. */
void gpu_call_release(gpu_moe_t *m, uint64_t call)
{
    if (!m || m->broken)
        return;
    int b;
    int64_t T = m->comb_T;
    /* Fused throughput combine sent but never received: no pull, so its
     * pulled word goes out alone (kern_comb.cu). */
    if (comb_fused(m) && m->calls.combining >= 0 &&
        m->calls.slot[m->calls.combining].n == call) {
        gpu_calls_release(&m->calls, call, &b);
        epx_status_t st = set_device(m);
        if (st == EPX_OK && (st = comb_launch(m, EPXK_COMB_DONE)) != EPX_OK)
            fail(m, st);
        return;
    }
    int what = gpu_calls_release(&m->calls, call, &b);
    if (what == GPU_NOTHING || set_device(m) != EPX_OK)
        return;
    ll_point(m, b);
    epx_status_t st;
    if (what == GPU_ABANDON) {
        st = m->call.windows ? launch(m, EPXK_LL_ABANDON) : lln_combine(m, 1);
    } else {
        m->call.T = T;
        m->call.out = m->d_scratch;
        m->call.out_esize = m->g.esize == 8 ? 8 : 4;
        st = launch(m, EPXK_LL_COMB_REDUCE);
    }
    if (st != EPX_OK)
        fail(m, st);
}

_Static_assert(EPXK_LL_STATS_RING == GPU_LL_STATS_CALLS,
               "the statistics ring as gpu.h describes it");

/* The ring is read whole after the counter: a call captured in a graph
 * may be replaying on another stream meanwhile, so the counter is read
 * again after the ring, and a call whose entry a later one may be
 * overwriting (in flight: the second count + 1) counts as lost. */
epx_status_t gpu_moe_ll_stats(gpu_moe_t *m, gpu_stats_fn each, void *ctx,
                              int64_t *lost)
{
    *lost = 0;
    if (!m || !m->ll)
        return EPX_OK;
    epx_status_t st = usable(m, "cuda statistics");
    if (st != EPX_OK)
        return st;
    const size_t per = (size_t)(1 + m->Elog + m->g.E);
    const int64_t NR = EPXK_LL_STATS_RING;
    int64_t n0 = 0, n1 = 0;
    /* Synchronise before each copy into pageable memory (ll_check). */
    if ((st = st_sync(m)) == EPX_OK &&
        (st = st_read(m, &n0, m->d_llnstat, sizeof(n0))) == EPX_OK &&
        (st = st_sync(m)) == EPX_OK && n0 > m->ll_seen &&
        (st = st_read(m, m->h_llring, m->d_llring,
                      sizeof(int32_t) * per * EPXK_LL_STATS_RING)) == EPX_OK)
        st = st_read(m, &n1, m->d_llnstat, sizeof(n1));
    if (st == EPX_OK)
        st = st_sync(m);
    if (st != EPX_OK)
        return fail(m, st);
    if (n0 <= m->ll_seen)
        return EPX_OK;
    int64_t from = n1 + 1 - NR > m->ll_seen ? n1 + 1 - NR : m->ll_seen;
    if (from > n0)
        from = n0;
    *lost = from - m->ll_seen;
    for (int64_t n = from; n < n0; n++) {
        const int32_t *e = m->h_llring + (size_t)(n % NR) * per;
        if (e[0] >= 0 && e[0] < m->layers)
            each(ctx, e[0], e + 1, e + 1 + m->Elog);
    }
    m->ll_seen = n0;
    return EPX_OK;
}
