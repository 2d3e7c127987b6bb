/*
 * Routing layout: check a dispatch's input, then find each token's
 * destination ranks (each once, ascending) and count tokens per expert and
 * per destination.  Pure local work, before anything is sent.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "moe/ll.h"
#include "moe/hier.h"

/* Shape, dtype (any of the bits in `dtypes`, 1 << dtype) and alignment. */
epx_status_t moe_check_tensor(const epx_tensor_t *t, const char *what,
                              const char *name, unsigned dtypes, int64_t rows,
                              int64_t cols)
{
    if ((unsigned)t->dtype > EPX_DTYPE_FP64 || !(dtypes & (1u << t->dtype)))
        return epx__error(EPX_ERR_INVALID, "%s: %s has unsupported dtype %d",
                          what, name, (int)t->dtype);
    if (t->rows != rows || t->cols != cols)
        return epx__error(EPX_ERR_INVALID,
                          "%s: %s is [%lld, %lld], want [%lld, %lld]", what, name,
                          (long long)t->rows, (long long)t->cols,
                          (long long)rows, (long long)cols);
    if (rows > 0 && cols > 0 && !t->data)
        return epx__error(EPX_ERR_INVALID, "%s: %s data is NULL", what, name);
    if ((uintptr_t)t->data % epx_dtype_size(t->dtype))
        return epx__error(EPX_ERR_INVALID,
                          "%s: %s data %p is not aligned to %zu bytes", what,
                          name, t->data, epx_dtype_size(t->dtype));
    return EPX_OK;
}

static inline int64_t idx_at(const epx_tensor_t *t, int64_t i)
{
    return t->dtype == EPX_DTYPE_INT64 ? ((const int64_t *)t->data)[i]
                                       : ((const int32_t *)t->data)[i];
}

epx_status_t moe_check_args(epx_moe_t *m, const epx_dispatch_args_t *a)
{
    if (a->struct_size < offsetof(epx_dispatch_args_t, flags) + sizeof(unsigned))
        return epx__error(EPX_ERR_INVALID,
                          "dispatch: args not set up with EPX_DISPATCH_ARGS_INIT");
    epx_status_t vst = epx__check_version("dispatch args", a->version,
                                          EPX_DISPATCH_ARGS_VERSION);
    if (vst != EPX_OK)
        return vst;
    int64_t T = a->x.rows;
    int layer = moe_args_layer(a);
    if (layer < 0 || layer >= m->layers)
        return epx__error(EPX_ERR_INVALID,
                          "dispatch: layer %d out of range [0, %d) (num_layers)",
                          layer, m->layers);
    if (T < 0)
        return epx__error(EPX_ERR_INVALID, "dispatch: %lld tokens",
                          (long long)T);
    float g = moe_args_gscale(a);
    if (g != 0.0f && m->fmt.wire != EPX_WIRE_NVFP4)
        return epx__error(EPX_ERR_INVALID, "dispatch: x_global_scale %g "
                          "with wire format %s (only nvfp4 has a tensor "
                          "scale; 0 otherwise)", (double)g,
                          moe_wire_name(m->fmt.wire));
    if (!(g >= 0.0f) || isinf(g))   /* NaN fails the comparison */
        return epx__error(EPX_ERR_INVALID, "dispatch: x_global_scale %g: "
                          "want a finite scale > 0, or 0 for each token's "
                          "own", (double)g);
    if (T > m->p.max_tokens_per_rank)
        return epx__error(EPX_ERR_RANGE,
                          "dispatch: %lld tokens exceed max_tokens_per_rank %d",
                          (long long)T, m->p.max_tokens_per_rank);
    epx_status_t st = moe_check_tensor(&a->x, "dispatch", "x",
                                       1u << m->p.dtype, T, m->H);
    if (st == EPX_OK)
        st = moe_check_tensor(&a->topk_idx, "dispatch", "topk_idx",
                              1u << EPX_DTYPE_INT32 | 1u << EPX_DTYPE_INT64, T,
                              m->K);
    if (st == EPX_OK)
        st = moe_check_tensor(&a->topk_weights, "dispatch", "topk_weights",
                              1u << EPX_DTYPE_FP32, T, m->K);
    /* A NaN or Inf weight would poison the combined row silently. */
    const float *w = a->topk_weights.data;
    for (int64_t i = 0; st == EPX_OK && i < T * m->K; i++)
        if (EPX_UNLIKELY(!isfinite(w[i])) && idx_at(&a->topk_idx, i) != -1)
            st = epx__error(EPX_ERR_INVALID,
                            "dispatch: topk_weights[%lld][%d] = %g (token "
                            "%lld, expert %lld): routing weights must be "
                            "finite", (long long)(i / m->K), (int)(i % m->K),
                            (double)w[i], (long long)(i / m->K),
                            (long long)idx_at(&a->topk_idx, i));
    return st;
}

uint64_t moe_hash_idx(const epx_moe_t *m, const epx_dispatch_args_t *a)
{
    uint64_t h = 1469598103934665603ull ^ (uint64_t)a->x.rows;
    int64_t n = a->x.rows * m->K;
    for (int64_t i = 0; i < n; i++)
        h = (h ^ (uint64_t)idx_at(&a->topk_idx, i)) * 1099511628211ull;
    return h;
}

/* Handles are sized for max_tokens_per_rank, so the engine can keep one
 * released handle and hand it out again: no allocation per dispatch in the
 * usual dispatch / combine / release loop. */
epx_handle_t *moe_handle_new(epx_moe_t *m, int64_t T)
{
    epx_handle_t *h = m->spare;
    if (h) {
        m->spare = NULL;
        h->T = T;
        h->dispatched = 0;
        return h;
    }
    h = calloc(1, sizeof(*h));
    int nl = moe_nlocal(m, m->rank);
    size_t t = (size_t)(m->p.max_tokens_per_rank > 0 ? m->p.max_tokens_per_rank : 1);
    if (!h)
        return NULL;
    moe_handle_link(m, h);
    h->T = T;
    h->idx = malloc(sizeof(int32_t) * t * (size_t)m->K);
    h->ndest = malloc(sizeof(int32_t) * t);
    h->dest = malloc(sizeof(int32_t) * t * (size_t)m->maxdest);
    h->pos = malloc(sizeof(int32_t) * t * (size_t)m->maxdest);
    h->epos = malloc(sizeof(int32_t) * t * (size_t)m->K);
    h->sendoff = malloc(sizeof(int64_t) * (size_t)m->R);
    h->counts = calloc((size_t)(nl > 0 ? nl : 1), sizeof(int64_t));
    h->offsets = calloc((size_t)(nl > 0 ? nl : 1), sizeof(int64_t));
    h->entbase = malloc(sizeof(int64_t) * (size_t)m->R);
    h->ebase = malloc(sizeof(int64_t) * (size_t)m->U);
    h->ecount = malloc(sizeof(int32_t) * (size_t)m->E);
    h->ucount = malloc(sizeof(int32_t) * (size_t)m->U);
    if (!h->ucount || !h->ecount || !h->entbase || !h->ebase || !h->idx || !h->ndest || !h->dest ||
        !h->pos || !h->epos || !h->sendoff || !h->counts || !h->offsets) {
        moe_handle_free(h);
        return NULL;
    }
    return h;
}

void moe_handle_link(epx_moe_t *m, epx_handle_t *h)
{
    h->moe = m;
    h->live_prev = NULL;
    h->live_next = m->live;
    if (m->live)
        m->live->live_prev = h;
    m->live = h;
}

void moe_handle_free(epx_handle_t *h)
{
    if (!h)
        return;
    if (h->moe) {
        if (h->live_prev)
            h->live_prev->live_next = h->live_next;
        else
            h->moe->live = h->live_next;
        if (h->live_next)
            h->live_next->live_prev = h->live_prev;
    }
    free(h->idx);
    free(h->ndest);
    free(h->dest);
    free(h->pos);
    free(h->epos);
    free(h->sendoff);
    free(h->counts);
    free(h->offsets);
    free(h->entbase);
    free(h->ebase);
    free(h->ecount);
    free(h->ucount);
    ll_call_free(h->ll);
    moe_ht_poll_free(h);
    moe_hier_handle_free(h);
    free(h);
}

void moe_handles_orphan(epx_moe_t *m)
{
    for (epx_handle_t *h = m->live, *next; h; h = next) {
        next = h->live_next;
        h->moe = NULL;
        h->live_prev = h->live_next = NULL;
    }
    m->live = NULL;
}

/* The lost mask of a dispatch (version 5 args, after the call succeeded):
 * 1 where the entry names an expert without a slot in the layer.  From
 * the ids and the placement, so a cached dispatch writes it too. */
void moe_lost_write(const epx_moe_t *m, const epx_dispatch_args_t *a)
{
    uint8_t *lost = moe_args_lost(a);
    if (!lost)
        return;
    const int64_t n = a->x.rows * m->K;
    const int32_t *off = m->p.num_slots > 0
        ? m->rep_off + (size_t)moe_args_layer(a) * (size_t)(m->E + 1) : NULL;
    for (int64_t i = 0; i < n; i++)
        lost[i] = (uint8_t)proto_expert_lost(off, m->E,
                                             idx_at(&a->topk_idx, i));
}

/* The ids of a dispatch as the protocol core reads them, routed to units
 * by the layer's replica tables (engines with num_slots). */
static proto_ids_t dispatch_ids(const epx_moe_t *m, const epx_dispatch_args_t *a,
                                int layer)
{
    proto_ids_t ids = { a->topk_idx.data, a->topk_idx.dtype == EPX_DTYPE_INT64,
                        m->K, m->U, { 0, NULL, NULL, NULL } };
    if (m->p.num_slots > 0) {
        const size_t l = (size_t)layer;
        ids.rt.E = m->E;
        ids.rt.pick = m->policy[layer] == EPX_REPLICA_LOCAL_FIRST
            ? m->pick + l * (size_t)m->E : NULL;
        ids.rt.off = m->rep_off + l * (size_t)(m->E + 1);
        ids.rt.rep = m->rep + l * (size_t)m->U;
    }
    return ids;
}

/* Why proto_expert_bad flagged choice k of token t. */
static epx_status_t layout_bad(const epx_moe_t *m, const epx_dispatch_args_t *a,
                               int64_t t, int k)
{
    int64_t e = idx_at(&a->topk_idx, t * m->K + k);
    if (e < -1 || e >= m->E)
        return epx__error(EPX_ERR_INVALID,
                          "dispatch: topk_idx[%lld][%d] = %lld is out of "
                          "range [-1, %d)", (long long)t, k, (long long)e,
                          m->E);
    int j = 0;
    while (j < k && idx_at(&a->topk_idx, t * m->K + j) != e)
        j++;
    return epx__error(EPX_ERR_INVALID,
                      "dispatch: token %lld lists expert %lld twice (top-k "
                      "slots %d and %d)", (long long)t, (long long)e, j, k);
}

/* The routing layout (proto.h's walk): h's units per top-k slot and their
 * positions, destinations and positions there, the return slots' bases;
 * m->blk's counts (tokens per unit, per destination) and h->ecount
 * (tokens per logical expert); EPX_ERR_INVALID on a bad expert id, with
 * nothing sent yet. */
epx_status_t moe_layout(epx_moe_t *m, const epx_dispatch_args_t *a,
                        epx_handle_t *h)
{
    const int K = m->K, E = m->E, U = m->U, layer = moe_args_layer(a);
    const proto_geom_t *g = &m->g;
    int32_t *cnt_u = m->blk + proto_cnt_unit(g, 0),
            *cnt_r = m->blk + proto_cnt_dest(g, 0);
    memset(m->blk, 0, sizeof(int32_t) * (size_t)g->cnt_ints);
    memset(h->ecount, 0, sizeof(int32_t) * (size_t)E);
    h->layer = layer;
    if (m->p.num_slots > 0 && m->phy2log[(size_t)layer * (size_t)U] < 0)
        return epx__error(EPX_ERR_INVALID,
                          "dispatch: layer %d has no placement "
                          "(epx_moe_set_placement)", layer);
    const proto_ids_t ids = dispatch_ids(m, a, layer), units = moe_units(m, h);
    for (int64_t t = 0; t < h->T; t++) {
        for (int k = 0; k < K; k++) {
            if (proto_expert_bad(&ids, t, k))
                return layout_bad(m, a, t, k);
            int64_t e = proto_expert_raw(ids.idx, ids.idx64, K, t, k);
            if (e >= 0)
                h->ecount[e]++;   /* demand, lost or not (the balancer's) */
            /* -1 when lost: sent nowhere, combine leaves it out */
            h->idx[t * K + k] = (int32_t)proto_expert_id(&ids, t, k);
        }
        h->ndest[t] = proto_walk_token(g, &units, m->u2r, t, INT32_MAX,
                                       cnt_u, h->epos, cnt_r, h->dest, h->pos);
    }
    moe_layout_sendoff(m, h, cnt_r);
    memcpy(h->ucount, cnt_u, sizeof(int32_t) * (size_t)U);
    return EPX_OK;
}

/* Return slots: our tokens grouped by destination rank (proto_ret_slot),
 * from the tokens to each. */
void moe_layout_sendoff(const epx_moe_t *m, epx_handle_t *h,
                        const int32_t *per_dest)
{
    int64_t at = 0;
    for (int d = 0; d < m->R; d++) {
        h->sendoff[d] = at;
        at += per_dest[d];
    }
}
