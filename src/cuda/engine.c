/*
 * The GPU executor (include/epx/cuda.h): setup and teardown, the argument
 * checks and call order every mode shares, placement and routing, the
 * statistics' plumbing; each gpu_* call then goes through the engine's
 * mode table (engine_int.h): throughput in ht.c, low latency in ll.c.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cuda/engine_int.h"
#include "core/comm.h"
#include "moe/wire.h"
#include "util/util.h"

/* The GPU settings of epx_moe_params_t (version 4). */
typedef struct cuda_params {
    int device, num_sms;
    epx_gpu_backend_t backend;
    void *nccl_comm;
} cuda_params_t;

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

static epx_status_t usable(gpu_moe_t *m, const char *what)
{
    if (!m)
        return epx__error(EPX_ERR_INVALID, "%s: engine is NULL", what);
    if (m->broken)
        return epx__error(EPX_ERR_STATE, "%s: the engine is unusable after "
                          "an earlier failure (destroy it)", what);
    return gpu_moe_set_device(m);
}

/* Throughput mode's layouts (ht.c); low latency has none. */
void gpu_layout_release(gpu_moe_t *m, int lay)
{
    if (m && lay >= 0 && lay < m->nlays)
        m->lays[lay].used = 0;
}

/* --------------------------------------------------------------- setup */

epx_status_t gpu_moe_dev_alloc(void **ptr, size_t bytes)
{
    return epx__cuda_err(cudaMalloc(ptr, bytes > 0 ? bytes : 1), "cudaMalloc");
}

#define DEV_ALLOC(ptr, n)                                                      \
    do {                                                                       \
        if ((st = gpu_moe_dev_alloc((void **)&(ptr), (n))) != EPX_OK)          \
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

epx_status_t gpu_moe_lost(gpu_moe_t *m, const epx_dispatch_args_t *a, int ecnt)
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
        ecnt ? m->d_ecnt + m->g.E : NULL };
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
        st = gpu_moe_set_device(m);
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
    m->ops = m->ll ? &gpu_ll_ops : &gpu_ht_ops;
    m->ops->init(m);
    /* Collective (the topology), on every rank: the flags are agreed. */
    if (!m->ll && (mine.flags & EPX_MOE_HIERARCHICAL) &&
        (st = gpu_hier_create(comm, g, &m->hier)) != EPX_OK) {
        free(m);
        return st;
    }
    if (m->hier)   /* its receive region and records (hier.h) */
        m->wbytes = (int64_t)gpu_hier_total(m->hier);

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
    if ((st = m->ops->setup(m, first)) != EPX_OK)
        goto gate;
    DEV_ALLOC(m->d_peers, sizeof(char *) * (size_t)R);
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
        st = epx__cuwin_create(comm, m->device, (size_t)m->wbytes, &m->win);
        if (st == EPX_OK) {
            memcpy(peers, epx__cuwin_peers(m->win), sizeof(char *) * (size_t)R);
            m->local = peers[me];
            device_ranks = epx__cuwin_device_ranks(m->win);
            snprintf(m->name, sizeof(m->name), "windows:%s",
                     epx__cuwin_kind_str(epx__cuwin_kind(m->win)));
        }
    } else {
        /* low latency: the buffers, and the blocks to each peer */
        const size_t wbytes = (size_t)m->wbytes, sbytes = (size_t)m->sbytes;
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
    m->ops->budget(m, sms, device_ranks ? device_ranks : 1);
    EPX_LOG(EPX_LOG_INFO, "cuda", me, "engine on device %d: %s, %d SMs of %d, "
            "window %lld bytes", m->device, m->name, m->num_sms, sms,
            (long long)m->wbytes);

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
    return m && m->ops->ecount ? m->ops->ecount(m) : NULL;
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

const int32_t *gpu_moe_local_experts(gpu_moe_t *m, int b)
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
    if ((st = gpu_moe_sync(m)) != EPX_OK)
        return gpu_moe_fail(m, st);
    st = gpu_moe_route_async(m, layer, phy2log, pick, off, rep, round_robin,
                             m->st);
    if (st == EPX_OK)
        st = gpu_moe_sync(m);
    if (st != EPX_OK)
        return gpu_moe_fail(m, st);
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
    m->broken = 1;
    return st;
}

epx_status_t gpu_moe_timeout(gpu_moe_t *m, const char *who)
{
    return gpu_moe_fail(m, epx__error(EPX_ERR_TIMEOUT, "%s: a peer did not "
                                      "signal within the timeout", who));
}

epx_status_t gpu_moe_check(gpu_moe_t *m, int64_t *dropped)
{
    epx_status_t st = usable(m, "cuda check");
    if (st != EPX_OK)
        return st;
    return m->ops->check(m, dropped);
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

epx_status_t gpu_dispatch_refuse(gpu_moe_t *m, void *stream,
                                 epx_status_t why)
{
    if (usable(m, "cuda dispatch_send") != EPX_OK)
        return why;
    return m->ops->refuse(m, stream, why);
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
    if (cached && (st = m->ops->cached(m, *lay)) != EPX_OK)
        return m->ops->refuse(m, stream, st);
    float gs = 0;
    int layer = 0;
    if ((st = args_check(m, a, &gs, &layer)) != EPX_OK)
        return m->ops->refuse(m, stream, st);
    /* Its layout (throughput), number and buffer, or a refusal with
     * nothing queued. */
    int b, li = cached ? *lay : -1;
    if (!cached && (st = m->ops->layout(m, &li)) != EPX_OK)
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
    return m->ops->dispatch_send(m, a, stream, b, li, cached);
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
    return m->ops->dispatch_recv(m, call, stream, recv, b);
}

/* Readiness without waiting (include/epx.h), by mode. */
epx_status_t gpu_dispatch_poll(gpu_moe_t *m, uint64_t call, epx_recv_t *recv,
                               uint8_t *ready, int *num_ready)
{
    epx_status_t st = usable(m, "cuda dispatch_poll");
    if (st != EPX_OK)
        return st;
    if (!recv || !num_ready || (!ready && m->L > 0))
        return epx__error(EPX_ERR_INVALID, "dispatch_poll: recv, ready or "
                          "num_ready NULL");
    int b, received;
    if ((st = gpu_calls_poll(&m->calls, call, &b, &received)) != EPX_OK)
        return st;
    return m->ops->dispatch_poll(m, call, b, received, recv, ready,
                                 num_ready);
}

/* ------------------------------------------------------------- combine */

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
    const uintptr_t rb = lb + (uintptr_t)m->rx_lo;
    const uintptr_t re = lb + (uintptr_t)m->rx_hi;
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
    m->call.T = m->comb_T;
    m->call.y = a->y.data;
    m->call.unweighted = (a->flags & EPX_COMBINE_UNWEIGHTED) != 0;
    if ((st = gpu_moe_stream_in(m, stream)) != EPX_OK ||
        (st = m->ops->combine_send(m, a, b)) != EPX_OK)
        return gpu_moe_fail(m, st);
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
    m->call.T = m->comb_T;
    m->call.out = out->data;
    m->call.out_esize = out->dtype == EPX_DTYPE_BF16 ? 2
                        : out->dtype == EPX_DTYPE_FP64 ? 8 : 4;
    if ((st = gpu_moe_stream_in(m, stream)) != EPX_OK ||
        (st = m->ops->combine_recv(m, b)) != EPX_OK ||
        (st = gpu_moe_stream_out(m, stream)) != EPX_OK)
        return gpu_moe_fail(m, st);
    return EPX_OK;
}

/* The call out of flight, and what its mode does on the device then. */
void gpu_call_release(gpu_moe_t *m, uint64_t call)
{
    if (!m || m->broken)
        return;
    m->ops->release(m, call);
}

/* Low latency's statistics from the device's ring (ll.c). */
epx_status_t gpu_moe_ll_stats(gpu_moe_t *m, gpu_stats_fn each, void *ctx,
                              int64_t *lost)
{
    *lost = 0;
    if (!m || !m->ops->stats)
        return EPX_OK;
    epx_status_t st = usable(m, "cuda statistics");
    if (st != EPX_OK)
        return st;
    return m->ops->stats(m, each, ctx, lost);
}
