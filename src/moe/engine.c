/* MoE engine: parameters agreed by every rank, placement, the window. */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include "util/util.h"
#include "moe/ll.h"
#include "moe/hier.h"
#include "cuda/gpu.h"

typedef struct engine_info {   /* what every rank must agree on */
    int32_t status, hidden, experts, topk, dtype, layout, align, layers, slots,
            mode, flags, wire;
    int64_t max_tokens;
} engine_info_t;

#define MOE_MAX_HIDDEN  (1 << 20)
#define MOE_MAX_EXPERTS (1 << 20)
#define MOE_MAX_TOKENS  (1 << 24)
#define MOE_MAX_LAYERS  (1 << 16)

static epx_status_t check_params(const epx_moe_params_t *p, int nranks)
{
    if (p->struct_size < offsetof(epx_moe_params_t, expert_alignment) + sizeof(int))
        return epx__error(EPX_ERR_INVALID,
                          "moe: params not set up with EPX_MOE_PARAMS_INIT");
    epx_status_t vst = epx__check_version("moe params", p->version,
                                          EPX_MOE_PARAMS_VERSION);
    if (vst != EPX_OK)
        return vst;
    if (p->hidden < 1 || p->num_experts < 1 || p->max_tokens_per_rank < 0)
        return epx__error(EPX_ERR_INVALID,
                          "moe: hidden (%d) and num_experts (%d) must be >= 1, "
                          "max_tokens_per_rank (%d) >= 0", p->hidden,
                          p->num_experts, p->max_tokens_per_rank);
    /* Far past any model, and each alone sizes an allocation. */
    const char *big = p->hidden > MOE_MAX_HIDDEN ? "hidden"
        : p->num_experts > MOE_MAX_EXPERTS ? "num_experts"
        : p->max_tokens_per_rank > MOE_MAX_TOKENS ? "max_tokens_per_rank" : NULL;
    if (big)
        return epx__error(EPX_ERR_INVALID,
                          "moe: %s = %d is absurd (limits: hidden %d, "
                          "num_experts %d, max_tokens_per_rank %d)", big,
                          p->hidden > MOE_MAX_HIDDEN ? p->hidden
                          : p->num_experts > MOE_MAX_EXPERTS ? p->num_experts
                          : p->max_tokens_per_rank, MOE_MAX_HIDDEN,
                          MOE_MAX_EXPERTS, MOE_MAX_TOKENS);
    if (p->topk < 1 || p->topk > EPX_MAX_TOPK || p->topk > p->num_experts)
        return epx__error(EPX_ERR_INVALID,
                          "moe: topk %d must be in [1, min(%d, num_experts %d)]",
                          p->topk, EPX_MAX_TOPK, p->num_experts);
    if (p->dtype != EPX_DTYPE_BF16 && p->dtype != EPX_DTYPE_FP32 &&
        p->dtype != EPX_DTYPE_FP64)
        return epx__error(EPX_ERR_INVALID, "moe: dtype %d must be BF16, FP32 "
                          "or FP64", (int)p->dtype);
    if (p->layout != EPX_LAYOUT_TOKEN_MAJOR && p->layout != EPX_LAYOUT_EXPERT_MAJOR)
        return epx__error(EPX_ERR_INVALID, "moe: unknown layout %d",
                          (int)p->layout);
    int v2 = p->struct_size >= offsetof(epx_moe_params_t, stats_decay) + sizeof(double);
    if (v2 && (p->num_layers < 0 || !(p->stats_decay >= 0 && p->stats_decay < 1)))
        return epx__error(EPX_ERR_INVALID,
                          "moe: num_layers (%d) must be >= 0 and stats_decay "
                          "(%g) in [0, 1)", p->num_layers, p->stats_decay);
    if (v2 && (p->num_layers > MOE_MAX_LAYERS ||
               p->num_slots > MOE_MAX_EXPERTS))
        return epx__error(EPX_ERR_INVALID,
                          "moe: %s = %d is absurd (limits: num_layers %d, "
                          "num_slots %d)",
                          p->num_layers > MOE_MAX_LAYERS ? "num_layers"
                                                         : "num_slots",
                          p->num_layers > MOE_MAX_LAYERS ? p->num_layers
                                                         : p->num_slots,
                          MOE_MAX_LAYERS, MOE_MAX_EXPERTS);
    int v3 = p->struct_size >= offsetof(epx_moe_params_t, flags) + sizeof(unsigned);
    /* Elastic: the placement covers the live ranks only, so it may have
     * fewer slots than experts; without slots nothing can be lost. */
    int elastic = v3 && (p->flags & EPX_MOE_ELASTIC);
    if (elastic && (!v2 || p->num_slots <= 0))
        return epx__error(EPX_ERR_INVALID,
                          "moe: EPX_MOE_ELASTIC needs num_slots "
                          "(epx_moe_params_t.num_slots > 0): lost experts are "
                          "the ones a placement leaves out");
    if (v2 && p->num_slots != 0 &&
        (p->num_slots < (elastic ? 1 : p->num_experts) ||
         p->num_slots % nranks != 0))
        return epx__error(EPX_ERR_INVALID,
                          "moe: num_slots %d must be >= num_experts (%d; any "
                          "number with EPX_MOE_ELASTIC) and a multiple of the "
                          "%d ranks", p->num_slots, p->num_experts, nranks);
    moe_wire_t fmt;
    epx_status_t st = moe_wire_init(&fmt, v3 ? p->wire : EPX_WIRE_NATIVE,
                                    p->dtype, p->hidden);
    if (st != EPX_OK)
        return st;
    if (v3 && p->mode != EPX_MODE_THROUGHPUT && p->mode != EPX_MODE_LOW_LATENCY)
        return epx__error(EPX_ERR_INVALID, "moe: unknown mode %d", (int)p->mode);
    if (v3 && (p->flags & ~(EPX_MOE_LL_DROP | EPX_MOE_HIERARCHICAL |
                            EPX_MOE_ELASTIC)))
        return epx__error(EPX_ERR_INVALID, "moe: unknown flags 0x%x", p->flags);
    if (v3 && (p->flags & EPX_MOE_LL_DROP) && p->mode != EPX_MODE_LOW_LATENCY)
        return epx__error(EPX_ERR_INVALID,
                          "moe: EPX_MOE_LL_DROP needs EPX_MODE_LOW_LATENCY");
    if (v3 && (p->flags & EPX_MOE_HIERARCHICAL) &&
        p->mode != EPX_MODE_THROUGHPUT)
        return epx__error(EPX_ERR_INVALID,
                          "moe: EPX_MOE_HIERARCHICAL needs EPX_MODE_THROUGHPUT");
    if (v3 && p->mode == EPX_MODE_LOW_LATENCY) {
        st = ll_check_params(p);
        if (st != EPX_OK)
            return st;
    }
    if (p->expert_alignment < 1 || p->expert_alignment > 4096)
        return epx__error(EPX_ERR_INVALID,
                          "moe: expert_alignment %d must be in [1, 4096]",
                          p->expert_alignment);
    return EPX_OK;
}

static epx_status_t agree(epx_moe_t *m, epx_status_t mine, int64_t *maxT)
{
    static const char *names[] = { "status", "hidden", "num_experts", "topk",
                                   "dtype", "layout", "expert_alignment",
                                   "num_layers", "num_slots", "mode", "flags",
                                   "wire" };
    const epx_moe_params_t *p = &m->p;
    engine_info_t me = (engine_info_t){ mine, p->hidden, p->num_experts, p->topk,
                          (int32_t)p->dtype, (int32_t)p->layout,
                          p->expert_alignment, m->layers, m->U,
                          (int32_t)m->p.mode, (int32_t)p->flags,
                          (int32_t)m->fmt.wire,
                          p->max_tokens_per_rank };
    engine_info_t *all = calloc((size_t)m->R, sizeof(*all));
    if (!all)
        return epx__error(EPX_ERR_NOMEM, "moe: out of memory");
    epx_status_t st = epx__comm_allgather(m->comm, &me, all, sizeof(me));
    for (int r = 0; r < m->R && st == EPX_OK; r++) {
        if (all[r].status != EPX_OK) {
            st = mine != EPX_OK ? mine
                : epx__error(EPX_ERR_PEER,
                             "moe: rank %d rejected its engine parameters (%s)",
                             r, epx_status_str((epx_status_t)all[r].status));
            break;
        }
        const int32_t *a = &all[r].status, *b = &me.status;
        for (int f = 1; f < 12; f++)
            if (a[f] != b[f]) {
                st = epx__error(EPX_ERR_MISMATCH,
                                "moe: %s is %d on rank %d but %d on rank %d",
                                names[f], (int)b[f], m->rank, (int)a[f], r);
                break;
            }
        if (all[r].max_tokens > *maxT)
            *maxT = all[r].max_tokens;
    }
    free(all);
    return st;
}

/* The window's geometry: the protocol's (proto/geom.h), from the shape
 * every rank agreed on; the CUDA executor derives the same shape from the
 * same parameters (src/cuda/engine.c). */
static void geom_init(epx_moe_t *m)
{
    proto_geom_shape(&m->g, m->R, m->rank, m->U, m->K, m->H, (int)m->esize,
                     (int)m->fmt.wire, m->maxT,
                     m->p.layout == EPX_LAYOUT_EXPERT_MAJOR,
                     m->p.expert_alignment);
    proto_geom_layout(&m->g);
}

/* Throughput mode's window: the geometry, then the hierarchical regions.
 * Reject sizes whose window would not fit the int32 row indices and slot
 * numbers of the protocol, or the address space. */
static epx_status_t plan_window(epx_moe_t *m)
{
    size_t R = (size_t)m->R;
    m->win_progress = (size_t)m->g.off_progress;
    m->win_bytes = moe_hier_window(m, (size_t)m->g.total);
    const double total = (double)R * (double)m->maxT *
        ((double)moe_wire_row_bytes(&m->fmt) * m->K + (double)m->row_bytes * 2 +
         4.0 * (m->g.ent_ints + 2 * m->K + 2));
    if (m->g.xrows > INT32_MAX || m->g.ents > INT32_MAX ||
        (m->hier && (double)m->hier->ND * (double)m->hier->P > INT32_MAX) ||
        (double)m->maxT * m->maxdest > INT32_MAX || total > (double)(1ull << 46))
        return epx__error(EPX_ERR_RANGE,
                          "moe: %d ranks x %lld tokens x %zu-byte rows need a "
                          "window beyond what one engine can address; lower "
                          "max_tokens_per_rank", m->R, (long long)m->maxT,
                          m->row_bytes);
    return EPX_OK;
}

/* Replica tables (engines with num_slots): storage, and every rank's
 * domain for the local-first rule (collective: the communicator's map). */
static epx_status_t replicas_init(epx_moe_t *m)
{
    if (m->p.num_slots <= 0)
        return EPX_OK;
    size_t L = (size_t)m->layers, U = (size_t)m->U, E = (size_t)m->E;
    m->phy2log = malloc(sizeof(int32_t) * L * U);
    m->rep_off = malloc(sizeof(int32_t) * L * (E + 1));
    m->rep = malloc(sizeof(int32_t) * L * U);
    m->pick = malloc(sizeof(int32_t) * L * E);
    m->policy = calloc(L, sizeof(int32_t));
    m->place_hash = calloc(L, sizeof(uint32_t));
    m->rank_domain = malloc(sizeof(int32_t) * (size_t)m->R);
    m->w_base = calloc(L, sizeof(void *));
    m->w_bytes = calloc(L, sizeof(size_t));
    if (!m->w_base || !m->w_bytes || !m->phy2log || !m->rep_off || !m->rep || !m->pick || !m->policy ||
        !m->place_hash || !m->rank_domain)
        return epx__error(EPX_ERR_NOMEM, "moe: out of memory (replicas)");
    for (size_t i = 0; i < L * U; i++)
        m->phy2log[i] = -1;
    const epx_topo_t *t;
    epx_status_t st = epx_comm_topology(m->comm, &t);
    if (st != EPX_OK)
        return st;
    for (int r = 0; r < m->R; r++)
        m->rank_domain[r] = epx_topo_rank_domain(t, r);
    return EPX_OK;
}

/* 0: the slot is on this rank, 1: in its domain, 2: elsewhere. */
static int replica_tier(const epx_moe_t *m, int slot)
{
    int r = m->u2r[slot];
    return r == m->rank ? 0
        : m->rank_domain[r] == m->rank_domain[m->rank] ? 1 : 2;
}

epx_status_t epx_moe_set_placement(epx_moe_t *m, int layer,
                                   const int32_t *phy2log,
                                   epx_replica_policy_t policy)
{
    if (!m || !phy2log)
        return epx__error(EPX_ERR_INVALID, "moe: engine or phy2log NULL");
    if (m->p.num_slots <= 0)
        return epx__error(EPX_ERR_INVALID, "moe: the engine has no slots "
                          "(create it with num_slots to place replicas)");
    if (layer < 0 || layer >= m->layers)
        return epx__error(EPX_ERR_INVALID, "moe: layer %d out of range [0, %d)",
                          layer, m->layers);
    if (policy != EPX_REPLICA_LOCAL_FIRST && policy != EPX_REPLICA_ROUND_ROBIN)
        return epx__error(EPX_ERR_INVALID, "moe: unknown replica policy %d",
                          (int)policy);
    if (m->state == MOE_SENT || m->state == MOE_COMBINING ||
        (m->gpu && gpu_moe_busy(m->gpu)))
        return epx__error(EPX_ERR_STATE, "moe: placement changed while a "
                          "dispatch is in flight");
    return moe_placement_install(m, layer, phy2log, policy);
}

/* Checked here, installed only when valid: a bad placement changes
 * nothing.  No state check: weight migration switches a layer while a
 * call of another layer is in flight. */
epx_status_t moe_placement_install(epx_moe_t *m, int layer,
                                   const int32_t *phy2log,
                                   epx_replica_policy_t policy)
{
    epx_status_t st = moe_placement_tables(m, layer, phy2log, policy);
    if (st != EPX_OK || !m->gpu)
        return st;
    /* Device ranks route in their kernels, from the same tables. */
    const size_t U = (size_t)m->U, E = (size_t)m->E;
    return gpu_moe_set_placement(m->gpu, layer, m->phy2log + (size_t)layer * U,
                                 m->pick + (size_t)layer * E,
                                 m->rep_off + (size_t)layer * (E + 1),
                                 m->rep + (size_t)layer * U,
                                 policy == EPX_REPLICA_ROUND_ROBIN);
}

epx_status_t moe_placement_tables(epx_moe_t *m, int layer,
                                  const int32_t *phy2log,
                                  epx_replica_policy_t policy)
{
    const int U = m->U, E = m->E;
    int32_t *cnt = calloc((size_t)E + 1, sizeof(int32_t));
    if (!cnt)
        return epx__error(EPX_ERR_NOMEM, "moe: out of memory (placement)");
    epx_status_t st = EPX_OK;
    for (int u = 0; u < U && st == EPX_OK; u++)
        if (phy2log[u] < 0 || phy2log[u] >= E)
            st = epx__error(EPX_ERR_INVALID, "moe: phy2log[%d] = %d is not an "
                            "expert of [0, %d)", u, (int)phy2log[u], E);
        else
            cnt[phy2log[u] + 1]++;
    for (int e = 0; e < E && st == EPX_OK && !(m->p.flags & EPX_MOE_ELASTIC); e++)
        if (cnt[e + 1] == 0)
            st = epx__error(EPX_ERR_INVALID,
                            "moe: expert %d has no slot in the placement "
                            "(only an EPX_MOE_ELASTIC engine may lose "
                            "experts)", e);
    if (st != EPX_OK) {
        free(cnt);
        return st;
    }
    int32_t *off = m->rep_off + (size_t)layer * (size_t)(E + 1);
    int32_t *p2l = m->phy2log + (size_t)layer * (size_t)U;
    int32_t *rep = m->rep + (size_t)layer * (size_t)U;
    int32_t *pick = m->pick + (size_t)layer * (size_t)E;
    for (int e = 0; e < E; e++)
        cnt[e + 1] += cnt[e];
    memcpy(off, cnt, sizeof(int32_t) * (size_t)(E + 1));
    memcpy(p2l, phy2log, sizeof(int32_t) * (size_t)U);
    for (int u = 0; u < U; u++)          /* cnt[e]: next free place of e */
        rep[cnt[phy2log[u]]++] = u;
    free(cnt);
    uint32_t h = 2166136261u ^ (uint32_t)policy;
    for (int u = 0; u < U; u++)
        h = (h ^ (uint32_t)phy2log[u]) * 16777619u;
    m->place_hash[layer] = h ? h : 1;
    m->policy[layer] = policy;
    /* Local-first table: on this rank, else in its domain, else any;
     * candidate (rank mod count) among several; -1 for a lost expert. */
    for (int e = 0; e < E; e++) {
        int tier_best = 3, n = 0;
        pick[e] = -1;
        if (off[e] == off[e + 1])
            continue;
        for (int i = off[e]; i < off[e + 1]; i++) {
            int tier = replica_tier(m, rep[i]);
            if (tier < tier_best) {
                tier_best = tier;
                n = 0;
            }
            n += tier == tier_best;
        }
        int want = m->rank % n;
        for (int i = off[e]; i < off[e + 1]; i++) {
            if (replica_tier(m, rep[i]) == tier_best && want-- == 0) {
                pick[e] = rep[i];
                break;
            }
        }
    }
    return EPX_OK;
}

/* The rank's device (version 4), and whether every rank is of the same
 * kind (host or device): the executors' set-up exchanges differ, so this
 * is agreed first.  Collective. */
static epx_status_t agree_device(epx_moe_t *m, const epx_moe_params_t *p,
                                 int *device)
{
    int v4 = p->struct_size >= offsetof(epx_moe_params_t, nccl_comm) +
                                   sizeof(void *) && p->version >= 4;
    *device = v4 ? p->device : EPX_DEVICE_HOST;
    /* 0 host, 1 device, -1 neither, -2 a device rank asking for what only
     * host ranks do (elastic; all refused on every rank) */
    int v3 = p->struct_size >= offsetof(epx_moe_params_t, flags) +
                                   sizeof(unsigned) && p->version >= 3;
    int32_t mine = *device >= 0 ? 1 : *device == EPX_DEVICE_HOST ? 0 : -1;
    if (mine == 1 && v3 && (p->flags & EPX_MOE_ELASTIC))
        mine = -2;
    int32_t *all = calloc((size_t)m->R, sizeof(int32_t));
    if (!all)
        return epx__error(EPX_ERR_NOMEM, "moe: out of memory");
    epx_status_t st = epx__comm_allgather(m->comm, &mine, all, sizeof(mine));
    if (st == EPX_OK && mine == -1)
        st = epx__error(EPX_ERR_INVALID, "moe: device %d is neither "
                        "EPX_DEVICE_HOST nor a CUDA ordinal", *device);
    if (st == EPX_OK && mine == -2)
        st = epx__error(EPX_ERR_UNSUPPORTED, "moe: EPX_MOE_ELASTIC "
                        "(epx_moe_params_t.flags) is implemented on host ranks "
                        "only, not on device %d", *device);
    for (int r = 0; r < m->R && st == EPX_OK; r++)
        if (all[r] < 0)
            st = epx__error(EPX_ERR_PEER, "moe: rank %d passed an invalid "
                            "device%s", r, all[r] == -2
                            ? " (EPX_MOE_ELASTIC on a device rank)" : "");
        else if (all[r] != mine)
            st = epx__error(EPX_ERR_MISMATCH, "moe: rank %d is a %s rank but "
                            "rank %d a %s rank (epx_moe_params_t.device)",
                            m->rank, mine ? "device" : "host", r,
                            all[r] ? "device" : "host");
    free(all);
    return st;
}

/* Device ranks: the GPU executor, and the engine's placement (contiguous
 * units: experts, or slots whose experts epx_moe_set_placement sets, in
 * the same tables as the host executor's) and statistics. */
static epx_status_t create_gpu(epx_moe_t *m, const epx_moe_params_t *params)
{
    epx_status_t st = moe_gpu_create(m, params);
    if (st != EPX_OK)
        return st;
    m->layers = m->p.num_layers > 0 ? m->p.num_layers : 1;
    if ((st = replicas_init(m)) != EPX_OK)   /* the host's tables */
        return st;
    m->decay = m->p.stats_decay > 0 ? m->p.stats_decay : 0.9;
    m->u2r = malloc(sizeof(int32_t) * (size_t)m->U);
    m->first = malloc(sizeof(int32_t) * (size_t)(m->R + 1));
    if (!m->u2r || !m->first)
        return epx__error(EPX_ERR_NOMEM, "moe: out of memory");
    for (int r = 0; r <= m->R; r++)
        m->first[r] = proto_first_expert(m->R, m->U, r);
    for (int r = 0; r < m->R; r++)
        for (int u = m->first[r]; u < m->first[r + 1]; u++)
            m->u2r[u] = r;
    return moe_stats_init(m);
}

epx_status_t epx_moe_create(epx_comm_t *comm, const epx_moe_params_t *params,
                            epx_moe_t **out)
{
    if (!comm || !params || !out)
        return epx__error(EPX_ERR_INVALID, "moe: comm, params or output NULL");
    epx_moe_t *m = calloc(1, sizeof(*m));
    if (!m)
        return epx__error(EPX_ERR_NOMEM, "moe: out of memory");
    m->comm = comm;
    m->eid = comm->next_engine++;   /* collective: the same on every rank */
    m->R = comm->nranks;
    m->rank = comm->rank;
    m->ops = &moe_ht_ops;
    memcpy(&m->p, params, params->struct_size < sizeof(m->p)
                              ? params->struct_size : sizeof(m->p));
    int device;
    epx_status_t st = agree_device(m, params, &device);
    if (st == EPX_OK && device >= 0)
        st = create_gpu(m, params);
    if (st != EPX_OK || device >= 0) {
        if (st != EPX_OK) {
            epx_moe_destroy(m);
            return st;
        }
        *out = m;
        return EPX_OK;
    }
    epx_status_t mine = check_params(params, m->R);
    if (mine == EPX_OK) {
        m->E = params->num_experts;
        m->U = m->p.num_slots > 0 ? m->p.num_slots : m->E;
        m->K = params->topk;
        m->H = params->hidden;
        m->esize = epx_dtype_size(params->dtype);
        m->row_bytes = m->esize * (size_t)m->H;
        moe_wire_init(&m->fmt, m->p.wire, m->p.dtype, m->H);  /* checked */
        m->maxdest = m->K < m->R ? m->K : m->R;
        m->u2r = malloc(sizeof(int32_t) * (size_t)m->U);
        m->first = malloc(sizeof(int32_t) * (size_t)(m->R + 1));
        m->local_exp = malloc(sizeof(int32_t) * (size_t)m->U);
        m->wire = malloc(m->row_bytes);
        m->mode = malloc(sizeof(int32_t) * (size_t)m->R);
        m->stage_q = malloc(m->fmt.data_bytes + 1);
        m->stage_s = malloc(m->fmt.scale_bytes + 1);
        if (!m->stage_q || !m->stage_s || !m->wire || !m->mode || !m->u2r || !m->first ||
            !m->local_exp)
            mine = epx__error(EPX_ERR_NOMEM, "moe: out of memory");
    }
    m->layers = m->p.num_layers > 0 ? m->p.num_layers : 1;
    m->decay = m->p.stats_decay > 0 ? m->p.stats_decay : 0.9;
    m->maxT = mine == EPX_OK ? params->max_tokens_per_rank : 0;
    if ((st = agree(m, mine, &m->maxT)) != EPX_OK)
        goto err_free;
    /* Contiguous placement: rank r holds the units [floor(rU/R),
     * floor((r+1)U/R)) (the experts, or its num_slots/R slots). */
    for (int r = 0; r <= m->R; r++)
        m->first[r] = proto_first_expert(m->R, m->U, r);
    for (int r = 0; r < m->R; r++)
        for (int u = m->first[r]; u < m->first[r + 1]; u++)
            m->u2r[u] = r;
    geom_init(m);
    if (!(m->blk = malloc(sizeof(int32_t) * (size_t)m->g.cnt_ints))) {
        st = epx__error(EPX_ERR_NOMEM, "moe: out of memory");
        goto err_free;
    }
    m->path = &moe_flat_path;
    if ((m->p.flags & EPX_MOE_HIERARCHICAL) &&
        (st = moe_hier_init(m)) != EPX_OK)
        goto err_free;
    if (m->hier)
        m->path = &moe_hier_path;
    if ((st = moe_stats_init(m)) != EPX_OK || (st = replicas_init(m)) != EPX_OK)
        goto err_free;
    if (m->p.mode == EPX_MODE_LOW_LATENCY) {
        m->ops = &moe_ll_ops;
        if ((st = ll_init(m)) != EPX_OK)   /* its own window */
            goto err_free;
    } else {
        if ((st = plan_window(m)) != EPX_OK)
            goto err_free;
        if ((st = epx__win_create(comm, m->win_bytes, MOE_NSIG, &m->win)) != EPX_OK)
            goto err_free;
    }
    m->direct = 1;
    for (int r = 0; r < m->R; r++)
        m->direct &= epx__win_peer_ptr(m->win, r) != NULL;
    EPX_LOG(EPX_LOG_INFO, "moe", m->rank,
            "engine H=%d E=%d K=%d maxT=%lld %s (wire %s, %zu bytes a row) %s: "
            "window %.1f MiB reserved (sparse), %d local experts", m->H, m->E,
            m->K, (long long)m->maxT,
            m->p.dtype == EPX_DTYPE_BF16 ? "bf16"
            : m->p.dtype == EPX_DTYPE_FP64 ? "fp64" : "fp32",
            moe_wire_name(m->fmt.wire), moe_wire_row_bytes(&m->fmt),
            m->p.layout == EPX_LAYOUT_TOKEN_MAJOR ? "token-major" : "expert-major",
            (double)m->win_bytes / (1 << 20), moe_nlocal(m, m->rank));
    *out = m;
    return EPX_OK;

err_free:
    epx_moe_destroy(m);
    return st;
}

void epx_moe_destroy(epx_moe_t *m)
{
    if (!m)
        return;
    epx_comm_t *held = m->gpu ? m->comm : NULL;   /* gpu_ops.c's hold */
    gpu_moe_destroy(m->gpu);
    free(m->st_ecount);
    ll_drain(m);
    epx__win_destroy(m->win);
    moe_handle_free(m->spare);
    moe_handles_orphan(m);
    ll_free(m);
    moe_stats_free(m);
    free(m->u2r);
    free(m->phy2log);
    free(m->rep_off);
    free(m->rep);
    free(m->pick);
    free(m->policy);
    free(m->place_hash);
    free(m->rank_domain);
    free(m->w_base);
    free(m->w_bytes);
    moe_mig_free(m);
    epx__win_destroy(m->w_stage);
    free(m->local_exp);
    free(m->first);
    free(m->blk);
    free(m->wire);
    free(m->stage_q);
    free(m->stage_s);
    free(m->mode);
    moe_hier_free(m);
    free(m);
    if (held)   /* last: it may complete the communicator's teardown */
        epx__comm_win_gone(held);
}

int epx_moe_expert_lost(const epx_moe_t *m, int layer, int e)
{
    if (!m || layer < 0 || layer >= m->layers || e < 0 || e >= m->E)
        return -1;
    if (m->p.num_slots <= 0)
        return 0;
    if (m->phy2log[(size_t)layer * (size_t)m->U] < 0)
        return -1;
    const int32_t *off = m->rep_off + (size_t)layer * (size_t)(m->E + 1);
    return off[e] == off[e + 1];
}

int epx_moe_expert_rank(const epx_moe_t *m, int e)
{
    return m && e >= 0 && e < m->U ? m->u2r[e] : -1;
}
int epx_moe_num_local_experts(const epx_moe_t *m)
{
    return m ? moe_nlocal(m, m->rank) : 0;
}
int epx_moe_first_local_expert(const epx_moe_t *m)
{
    return m ? m->first[m->rank] : -1;
}
