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
    h->retbase = malloc(sizeof(int64_t) * t);
    h->counts = calloc((size_t)(nl > 0 ? nl : 1), sizeof(int64_t));
    h->offsets = calloc((size_t)(nl > 0 ? nl : 1), sizeof(int64_t));
    h->entbase = malloc(sizeof(int64_t) * (size_t)m->R);
    h->ebase = malloc(sizeof(int64_t) * (size_t)m->U);
    h->ecount = malloc(sizeof(int32_t) * (size_t)m->E);
    h->ucount = malloc(sizeof(int32_t) * (size_t)m->U);
    if (!h->ucount || !h->ecount || !h->entbase || !h->ebase || !h->idx || !h->ndest || !h->dest ||
        !h->retbase || !h->counts || !h->offsets) {
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
    free(h->retbase);
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

/* The unit (expert, or slot of a replica) token t sends logical expert e
 * to, by the layer's replica policy; -1 when e is lost (no replica). */
static inline int32_t route(const epx_moe_t *m, int layer, int64_t t, int32_t e)
{
    if (m->p.num_slots <= 0)
        return e;
    if (m->policy[layer] == EPX_REPLICA_LOCAL_FIRST)
        return m->pick[(size_t)layer * (size_t)m->E + (size_t)e];
    const int32_t *off = m->rep_off + (size_t)layer * (size_t)(m->E + 1);
    const int32_t *rep = m->rep + (size_t)layer * (size_t)m->U;
    int32_t n = off[e + 1] - off[e];
    return n > 0 ? rep[off[e] + (int32_t)(t % n)] : -1;
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
    for (int64_t i = 0; i < n; i++) {
        int64_t e = idx_at(&a->topk_idx, i);
        lost[i] = off && e >= 0 && off[e] == off[e + 1];
    }
}

/* Fills h's send side (units per top-k slot, destinations) and m->blk
 * (tokens per unit, per destination), and h->ecount (tokens per logical
 * expert); EPX_ERR_INVALID on a bad expert id, with nothing sent yet. */
epx_status_t moe_layout(epx_moe_t *m, const epx_dispatch_args_t *a,
                        epx_handle_t *h)
{
    const int K = m->K, E = m->E, U = m->U, layer = moe_args_layer(a);
    int32_t *cnt_u = m->blk + proto_cnt_unit(&m->g, 0),
            *cnt_r = m->blk + proto_cnt_dest(&m->g, 0);
    memset(m->blk, 0, sizeof(int32_t) * (size_t)m->g.cnt_ints);
    memset(h->ecount, 0, sizeof(int32_t) * (size_t)E);
    h->layer = layer;
    if (m->p.num_slots > 0 && m->phy2log[(size_t)layer * (size_t)U] < 0)
        return epx__error(EPX_ERR_INVALID,
                          "dispatch: layer %d has no placement "
                          "(epx_moe_set_placement)", layer);
    int64_t slot = 0;
    int32_t logical[EPX_MAX_TOPK];
    for (int64_t t = 0; t < h->T; t++) {
        int32_t *ids = h->idx + t * K, *dst = h->dest + t * m->maxdest;
        int nd = 0;
        for (int k = 0; k < K; k++) {
            int64_t e = idx_at(&a->topk_idx, t * K + k);
            if (e < -1 || e >= E)
                return epx__error(EPX_ERR_INVALID,
                                  "dispatch: topk_idx[%lld][%d] = %lld is out of "
                                  "range [-1, %d)", (long long)t, k,
                                  (long long)e, E);
            logical[k] = (int32_t)e;
            ids[k] = -1;
            if (e < 0)
                continue;
            for (int j = 0; j < k; j++)
                if (logical[j] == e)
                    return epx__error(EPX_ERR_INVALID,
                                      "dispatch: token %lld lists expert %lld "
                                      "twice (top-k slots %d and %d)",
                                      (long long)t, (long long)e, j, k);
            int32_t u = route(m, layer, t, (int32_t)e);
            h->ecount[e]++;   /* demand, lost or not (the balancer's input) */
            if (u < 0)
                continue;     /* lost: sent nowhere, combine leaves it out */
            ids[k] = u;
            cnt_u[u]++;
            nd = moe_dest_add(dst, nd, m->u2r[u]);
        }
        h->ndest[t] = nd;
        h->retbase[t] = slot;
        slot += nd;
        for (int j = 0; j < nd; j++)
            cnt_r[dst[j]]++;
    }
    memcpy(h->ucount, cnt_u, sizeof(int32_t) * (size_t)U);
    return EPX_OK;
}
