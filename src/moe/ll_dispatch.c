/*
 * Low-latency dispatch on the host executor.
 *
 *   send: routing layout (layout.c), then each (token, unit) row gets the
 *         next slot of its (unit, this rank) range; rows beyond ll_capacity
 *         fail the call (EPX_ERR_RANGE) or, with EPX_MOE_LL_DROP, are not
 *         sent; a quantized wire packs each token once (ll_stage).  Per
 *         destination: the header (status, layer, placement),
 *         then per local unit of the destination its rows and their
 *         metadata, a flush and the count word; then the combine entries,
 *         a flush, the final word and the DATA signal.  No count exchange:
 *         every offset is fixed by (unit, source, slot).
 *   recv: wait for the R DATA signals of the call's buffer, check the
 *         headers, mark padding rows, describe the buffer.
 *   poll: the same without waiting, per local unit from its R count words.
 *
 * A rank with bad input still sends its header (with the error) and its
 * words, so the others learn it in their recv or poll instead of waiting:
 * every rank fails the call, and the engine stays usable.
 */
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "moe/ll.h"

/* Every put of dispatch is counted in the engine's statistics. */
static inline epx_status_t put(epx_moe_t *m, int d, size_t off,
                               const void *src, size_t len)
{
    return moe_put(m, &m->put_dispatch, d, off, src, len);
}

static inline epx_status_t put32(epx_moe_t *m, int d, size_t off, int32_t v)
{
    return put(m, d, off, &v, sizeof(v));
}

static inline int32_t load32(const epx_moe_t *m, size_t off)
{
    return __atomic_load_n((const int32_t *)moe_local(m, off), __ATOMIC_ACQUIRE);
}

/* Quantized wire: each token that goes anywhere, packed once into the
 * staging rows (ll_put_row then puts it to each of its ranges). */
static void ll_stage(epx_moe_t *m, const epx_handle_t *h, const char *x,
                     float gscale)
{
    moe_ll_t *l = m->ll;
    const moe_wire_t *f = &m->fmt;
    for (int64_t t = 0; t < h->T; t++)
        if (h->ndest[t] > 0)
            moe_wire_pack_row(f, x + (size_t)t * m->row_bytes,
                              l->sq + (size_t)t * f->data_bytes,
                              l->ss + (size_t)t * f->scale_bytes, &l->sg[t],
                              gscale);
}

/* Every row of a low-latency dispatch is stored through here: token t of
 * x (native) or of the staging rows (quantized) into row `slot` of the
 * buffer, its data, scales and row scale each in its own region. */
static inline epx_status_t ll_put_row(epx_moe_t *m, int d, uint64_t call,
                                      int64_t slot, const char *x, int64_t t)
{
    const moe_ll_t *l = m->ll;
    const moe_wire_t *f = &m->fmt;
    const size_t s = (size_t)slot, i = (size_t)t;
    if (!moe_wire_quantized(f))
        return put(m, d, ll_at(l, call, l->off.rows) + s * m->row_bytes,
                   x + i * m->row_bytes, m->row_bytes);
    epx_status_t st = put(m, d, ll_at(l, call, l->off.rows) + s * f->data_bytes,
                          l->sq + i * f->data_bytes, f->data_bytes);
    if (st == EPX_OK)
        st = put(m, d, ll_at(l, call, l->off.scales) + s * f->scale_bytes,
                 l->ss + i * f->scale_bytes, f->scale_bytes);
    if (st == EPX_OK && f->global_bytes)
        st = put(m, d, ll_at(l, call, l->off.gscale) + s * f->global_bytes,
                 &l->sg[i], f->global_bytes);
    return st;
}

/* Slots of this call's rows (proto.h's walk): pos[t*K+k] is the slot of
 * the (token, unit) row in its (unit, this rank) range, -1 for none or
 * dropped; then each token's destinations among the rows kept with its
 * positions there (return slots, entries), and the rows bucketed by unit
 * in slot order. */
static epx_status_t ll_layout(epx_moe_t *m, epx_handle_t *h, ll_call_t *c)
{
    moe_ll_t *l = m->ll;
    const int K = m->K, U = m->U, cap = l->cap;
    const proto_ids_t units = moe_units(m, h);
    /* no count exchange here: the block's words are scratch */
    int32_t *per_dest = m->blk + proto_cnt_dest(&m->g, 0);
    memset(l->cnt, 0, sizeof(int32_t) * (size_t)U);
    memset(per_dest, 0, sizeof(int32_t) * (size_t)m->R);
    for (int64_t t = 0; t < h->T; t++)
        h->ndest[t] = proto_walk_token(&m->g, &units, m->u2r, t, cap, l->cnt,
                                       c->pos, per_dest, h->dest, h->pos);
    for (int u = 0; u < U; u++)
        if (l->cnt[u] > cap && !l->drop)
            return epx__error(EPX_ERR_RANGE,
                              "dispatch: %d tokens for expert %d exceed "
                              "ll_capacity %d (raise it, or pass "
                              "EPX_MOE_LL_DROP to drop the excess)",
                              (int)l->cnt[u], u, cap);
    l->boff[0] = 0;
    for (int u = 0; u < U; u++)
        l->boff[u + 1] = l->boff[u] + (int32_t)proto_ll_kept(l->cnt[u], cap);
    for (int64_t i = 0; i < h->T * K; i++)
        if (c->pos[i] >= 0)
            l->bucket[l->boff[h->idx[i]] + c->pos[i]] = (int32_t)i;
    moe_layout_sendoff(m, h, per_dest);
    return EPX_OK;
}

/* This rank's entries at destination d: per token sent there, the return
 * slot and its rows at d in top-k order. */
static int32_t ll_entries(epx_moe_t *m, epx_handle_t *h, ll_call_t *c, int d)
{
    const moe_ll_t *l = m->ll;
    const proto_ids_t units = moe_units(m, h);
    int32_t n = 0;
    for (int64_t t = 0; t < h->T; t++) {
        const int32_t *dst = h->dest + t * m->maxdest;
        int j = 0;
        while (j < h->ndest[t] && dst[j] != d)
            j++;
        if (j == h->ndest[t])
            continue;
        int32_t *ent = l->ents + (size_t)n++ * (size_t)m->g.ent_ints;
        ent[0] = m->rank;
        ent[1] = (int32_t)proto_ret_slot(&m->g, h->sendoff, h->dest, h->pos,
                                         t, j);
        ent[2] = proto_ll_entry_rows(&m->g, &units, c->pos, m->u2r, l->cap,
                                     m->first[d], t, d, ent + 3);
    }
    return n;
}

/* Everything for destination d; with an error only the header and empty
 * words. */
static epx_status_t ll_send_to(epx_moe_t *m, epx_handle_t *h, ll_call_t *c,
                               const epx_dispatch_args_t *a, int d,
                               uint64_t call, epx_status_t mine)
{
    moe_ll_t *l = m->ll;
    const int R = m->R, me = m->rank, cap = l->cap, K = m->K;
    const int32_t tag = ll_tag(l, call) << 24;
    const proto_ll_t *o = &l->off;
    int32_t hdr[3] = { mine, c ? c->layer : 0, c ? (int32_t)c->place : 0 };
    epx_status_t st = put(m, d, ll_at(l, call, o->hdr) +
                          sizeof(int32_t) * (size_t)me * PROTO_LL_HDR,
                          hdr, sizeof(hdr));
    if (st == EPX_OK)   /* before any word: a reader may then read it */
        st = epx__win_flush(m->win, d);
    int32_t nent = 0;
    for (int j = 0; j < moe_nlocal(m, d) && st == EPX_OK; j++) {
        int u = m->first[d] + j;
        int32_t n = mine == EPX_OK ? l->cnt[u] : 0;
        int32_t kept = (int32_t)proto_ll_kept(n, cap);
        int64_t base = proto_ll_row(&m->g, cap, m->first[d], u, me, 0);
        const char *x = mine == EPX_OK ? a->x.data : NULL;
        const float *w = mine == EPX_OK ? a->topk_weights.data : NULL;
        for (int32_t i = 0; i < kept && st == EPX_OK; i++) {
            int32_t r = l->bucket[l->boff[u] + i];
            l->tok[i] = r / K;
            l->wt[i] = w[r];
            st = ll_put_row(m, d, call, base + i, x, r / K);
        }
        if (kept > 0 && st == EPX_OK)
            st = put(m, d, ll_at(l, call, o->src_tok) + (size_t)base * 4,
                     l->tok, sizeof(int32_t) * (size_t)kept);
        if (kept > 0 && st == EPX_OK)
            st = put(m, d, ll_at(l, call, o->w) + (size_t)base * 4,
                     l->wt, sizeof(float) * (size_t)kept);
        if (kept > 0 && st == EPX_OK)
            st = epx__win_flush(m->win, d);
        if (st == EPX_OK)
            st = put32(m, d, ll_at(l, call, o->cw) +
                       sizeof(int32_t) * ((size_t)j * R + me), tag | n);
    }
    if (mine == EPX_OK && st == EPX_OK && (nent = ll_entries(m, h, c, d)) > 0)
        st = put(m, d, ll_at(l, call, o->entries) +
                 sizeof(int32_t) * (size_t)me * (size_t)m->maxT *
                 (size_t)m->g.ent_ints,
                 l->ents, sizeof(int32_t) * (size_t)nent * (size_t)m->g.ent_ints);
    if (st == EPX_OK)
        st = epx__win_flush(m->win, d);
    if (st == EPX_OK)
        st = put32(m, d, ll_at(l, call, o->fw) + sizeof(int32_t) * (size_t)me,
                   tag | nent);
    if (st == EPX_OK)
        st = epx__win_signal(m->win, d, ll_buf(l, call), 1);
    return st;
}

epx_status_t ll_dispatch_send(epx_moe_t *m, const epx_dispatch_args_t *a,
                              epx_handle_t **handle)
{
    moe_ll_t *l = m->ll;
    const uint64_t call = l->n_calls;
    const int b = ll_buf(l, call);
    /* Nothing sent: the caller may combine or release and call again. */
    if (l->ring[b])
        return epx__error(EPX_ERR_STATE,
                          "dispatch: %d low-latency calls outstanding "
                          "(ll_buffers): combine or release the oldest first",
                          l->B);
    moe_progress(m, MOE_AT_DISPATCH_SEND, a ? moe_args_layer(a) : 0, call + 1);
    /* Reuse of the buffer: every rank must be done with call - B. */
    epx_status_t st = call >= (uint64_t)l->B
        ? epx__win_wait(m->win, ll_comb_slot(l, call - (uint64_t)l->B),
                        ll_comb_target(m, call - (uint64_t)l->B))
        : EPX_OK;
    if (st != EPX_OK) {
        m->broken = 1;
        return moe_diagnose(m, st, "dispatch_send (buffer reuse)");
    }
    epx_status_t mine = !a || !handle
        ? epx__error(EPX_ERR_INVALID, "dispatch: args or handle NULL")
        : moe_check_args(m, a);
    if (mine == EPX_OK && (a->flags & EPX_DISPATCH_CACHED))
        mine = epx__error(EPX_ERR_INVALID,
                          "dispatch: EPX_DISPATCH_CACHED saves the count "
                          "exchange of throughput mode; low latency has none "
                          "(dispatch without it)");
    epx_handle_t *h = NULL;
    ll_call_t *c = NULL;
    if (mine == EPX_OK) {
        h = moe_handle_new(m, a->x.rows);
        c = h ? ll_call_get(m, h) : NULL;
        if (!c)
            mine = epx__error(EPX_ERR_NOMEM, "dispatch: out of memory");
        else if ((mine = moe_layout(m, a, h)) == EPX_OK)
            mine = ll_layout(m, h, c);
        if (c && mine == EPX_OK) {
            if (moe_wire_quantized(&m->fmt))
                ll_stage(m, h, a->x.data, moe_args_gscale(a));
            c->layer = h->layer;
            c->place = m->place_hash ? m->place_hash[h->layer] : 0;
        }
    }
    for (int i = 1; i <= m->R && st == EPX_OK; i++)
        st = ll_send_to(m, h, mine == EPX_OK ? c : NULL, a,
                        (m->rank + i) % m->R, call, mine);
    l->n_calls++;
    if (st == EPX_OK && mine != EPX_OK) {
        st = ll_abandon(m, call);
        ll_forget_ranges(m, call, NULL);
    }
    if (st != EPX_OK)
        m->broken = 1;
    if (st != EPX_OK || mine != EPX_OK) {
        epx_handle_release(h);
        return mine != EPX_OK ? mine : st;
    }
    c->call = call;
    c->state = LL_SENT;
    c->failed = EPX_OK;
    c->dropped = 0;
    memset(c->done, 0, (size_t)(l->L > 0 ? l->L : 1));
    l->ring[b] = h;
    moe_stats_record(m, h->layer, h->ecount, h->ucount);
    moe_lost_write(m, a);
    *handle = h;
    return EPX_OK;
}

/* Source s's header, readable once one of its words of the call is seen. */
static epx_status_t ll_check_source(epx_moe_t *m, ll_call_t *c, int s)
{
    const moe_ll_t *l = m->ll;
    const int32_t *hdr = (const int32_t *)moe_local(m, ll_at(l, c->call, l->off.hdr)) +
                         (size_t)s * PROTO_LL_HDR;
    if (hdr[PROTO_LL_HDR_STATUS] == EPX_ERR_RANGE)
        return epx__error(EPX_ERR_RANGE,
                          "dispatch: rank %d routed more tokens to one expert "
                          "than ll_capacity (%d); nothing of the call is "
                          "usable (raise ll_capacity or pass EPX_MOE_LL_DROP)",
                          s, l->cap);
    if (hdr[PROTO_LL_HDR_STATUS] < 0)
        return epx__error(EPX_ERR_PEER, "dispatch: rank %d failed its part (%s)",
                          s, epx_status_str((epx_status_t)hdr[PROTO_LL_HDR_STATUS]));
    if (hdr[PROTO_LL_HDR_LAYER] != c->layer || (uint32_t)hdr[PROTO_LL_HDR_PLACE] != c->place)
        return epx__error(EPX_ERR_MISMATCH,
                          "dispatch: rank %d dispatches layer %d with placement "
                          "%08x, rank %d layer %d with %08x "
                          "(epx_moe_set_placement must agree)", s,
                          (int)hdr[PROTO_LL_HDR_LAYER], (unsigned)hdr[PROTO_LL_HDR_PLACE],
                          m->rank, c->layer, (unsigned)c->place);
    return EPX_OK;
}

/* Local unit j has all its rows: count them, mark the padding.  Only
 * what changed since the buffer's last use is written: rows that were
 * padding then and still are stay as they were (at these shapes most of a
 * range is padding, and rewriting it every call costs more than the rows). */
static void ll_finish_expert(epx_moe_t *m, epx_handle_t *h, ll_call_t *c, int j)
{
    const moe_ll_t *l = m->ll;
    const int R = m->R, cap = l->cap;
    const uint64_t call = c->call;
    const size_t per_buf = (size_t)l->L * (size_t)R * (size_t)cap;
    int32_t *srank = l->src_rank + (size_t)ll_buf(l, call) * per_buf;
    int32_t *hw = l->hw + ((size_t)ll_buf(l, call) * (size_t)l->L + (size_t)j) *
                          (size_t)R;
    int32_t *stok = (int32_t *)moe_local(m, ll_at(l, call, l->off.src_tok));
    float *wt = (float *)moe_local(m, ll_at(l, call, l->off.w));
    int64_t count = 0;
    for (int s = 0; s < R; s++) {
        int32_t word = load32(m, ll_at(l, call, l->off.cw) +
                                 sizeof(int32_t) * ((size_t)j * R + s));
        int32_t kept = (int32_t)proto_ll_kept(word, cap);
        int32_t was = hw[s] < 0 ? 0 : hw[s], end = hw[s] < 0 ? cap : hw[s];
        const int first = m->first[m->rank];
        size_t base = (size_t)proto_ll_row(&m->g, cap, first, first + j, s, 0);
        for (int32_t i = was; i < kept; i++)
            srank[base + i] = s;
        for (int32_t i = kept; i < end; i++) {
            srank[base + i] = stok[base + i] = -1;
            wt[base + i] = 0.0f;
        }
        hw[s] = kept;
        count += kept;
        c->dropped += proto_ll_dropped(word, cap);
        m->ll->unchecked_drops += proto_ll_dropped(word, cap);
    }
    h->counts[j] = count;
    h->offsets[j] = proto_ll_row(&m->g, cap, m->first[m->rank],
                                 m->first[m->rank] + j, 0, 0);
    c->done[j] = 1;
}

static void ll_fill(epx_moe_t *m, epx_handle_t *h, ll_call_t *c, epx_recv_t *out)
{
    const moe_ll_t *l = m->ll;
    const int nl = moe_nlocal(m, m->rank), b = ll_buf(l, c->call);
    const int64_t rows = (int64_t)nl * m->R * l->cap;
    epx_recv_t full;
    size_t n = out->struct_size && out->struct_size < sizeof(full)
        ? out->struct_size : sizeof(full);
    memset(&full, 0, sizeof(full));
    int32_t *lexp = l->local_exp + (size_t)b * (size_t)(l->L + 1);
    for (int j = 0; j < nl; j++) {
        int u = m->first[m->rank] + j;
        lexp[j] = m->p.num_slots > 0
            ? m->phy2log[(size_t)c->layer * (size_t)m->U + (size_t)u] : u;
    }
    full.struct_size = n;
    full.num_rows = rows;
    full.x.data = moe_local(m, ll_at(l, c->call, l->off.rows));
    full.x.dtype = m->fmt.x_dtype;
    full.x.rows = rows;
    full.x.cols = m->fmt.x_cols;
    if (m->fmt.scale_bytes) {
        full.x_scales.data = moe_local(m, ll_at(l, c->call, l->off.scales));
        full.x_scales.dtype = m->fmt.scale_dtype;
        full.x_scales.rows = rows;
        full.x_scales.cols = m->fmt.nblocks;
    }
    if (m->fmt.global_bytes)
        full.x_global_scale = (const float *)moe_local(m, ll_at(l, c->call,
                                                                l->off.gscale));
    full.num_local_experts = nl;
    full.first_local_expert = m->first[m->rank];
    full.expert_counts = h->counts;
    full.expert_offsets = h->offsets;
    full.src_rank = l->src_rank + (size_t)b * (size_t)l->L * (size_t)m->R *
                                      (size_t)l->cap;
    full.src_token = (const int32_t *)moe_local(m, ll_at(l, c->call, l->off.src_tok));
    full.topk_idx = NULL;
    full.topk_weights = (const float *)moe_local(m, ll_at(l, c->call, l->off.w));
    full.local_experts = lexp;
    full.capacity = l->cap;
    full.num_dropped = c->dropped;
    memcpy(out, &full, n);
}

static epx_status_t ll_enter(epx_moe_t *m, epx_handle_t *h, epx_recv_t *out,
                             int poll, ll_call_t **cp)
{
    if (!h || !out || h->moe != m)
        return epx__error(EPX_ERR_INVALID,
                          "dispatch: handle or output NULL, or handle of "
                          "another engine");
    epx_status_t st = moe_check_usable(m, "dispatch");
    if (st != EPX_OK)
        return st;
    ll_call_t *c = h->ll;
    if (!c || (c->state != LL_SENT && !(poll && c->state == LL_RECEIVED)))
        return epx__error(EPX_ERR_STATE,
                          "dispatch: recv without a matching dispatch_send");
    if (c->failed != EPX_OK)
        return epx__error((epx_status_t)c->failed,
                          "dispatch: the call failed on another rank; "
                          "release its handle");
    *cp = c;
    return EPX_OK;
}

epx_status_t ll_dispatch_recv(epx_moe_t *m, epx_handle_t *h, epx_recv_t *out)
{
    ll_call_t *c = NULL;
    epx_status_t st = ll_enter(m, h, out, 0, &c);
    if (st != EPX_OK)
        return st;
    const moe_ll_t *l = m->ll;
    moe_progress(m, MOE_AT_DISPATCH_RECV, c->layer, c->call + 1);
    st = epx__win_wait(m->win, ll_buf(l, c->call), ll_target(m, c->call));
    if (st != EPX_OK) {
        m->broken = 1;
        return moe_diagnose(m, st, "dispatch_recv");
    }
    const int32_t tag = ll_tag(l, c->call);
    for (int s = 0; s < m->R && st == EPX_OK; s++) {
        int32_t fw = load32(m, ll_at(l, c->call, l->off.fw) + sizeof(int32_t) * (size_t)s);
        if ((int32_t)((uint32_t)fw >> 24) != tag)
            st = epx__error(EPX_ERR_STATE,
                            "dispatch: rank %d's words of call %llu are "
                            "missing after its signal (ranks out of step)",
                            s, (unsigned long long)c->call);
        else
            st = ll_check_source(m, c, s);
    }
    if (st != EPX_OK) {
        c->failed = st;
        return st;
    }
    for (int j = 0; j < moe_nlocal(m, m->rank); j++)
        if (!c->done[j])
            ll_finish_expert(m, h, c, j);
    ll_fill(m, h, c, out);
    c->state = LL_RECEIVED;
    h->dispatched = 1;
    return EPX_OK;
}

epx_status_t ll_dispatch_poll(epx_moe_t *m, epx_handle_t *h, epx_recv_t *out,
                              uint8_t *ready, int *num_ready)
{
    ll_call_t *c = NULL;
    epx_status_t st = ll_enter(m, h, out, 1, &c);
    if (st != EPX_OK)
        return st;
    const moe_ll_t *l = m->ll;
    const int R = m->R, nl = moe_nlocal(m, m->rank);
    const int32_t tag = ll_tag(l, c->call);
    const size_t cw = ll_at(l, c->call, l->off.cw);
    epx__win_progress(m->win);   /* network puts land by progress */
    /* A source's header can be read once any of its words has arrived:
     * an error shows as soon as the source's first word does. */
    for (int s = 0; s < R && st == EPX_OK; s++) {
        int32_t w = load32(m, ll_at(l, c->call, l->off.fw) + sizeof(int32_t) * (size_t)s);
        if (nl > 0 && (int32_t)((uint32_t)w >> 24) != tag)
            w = load32(m, cw + sizeof(int32_t) * (size_t)s);
        if ((int32_t)((uint32_t)w >> 24) == tag)
            st = ll_check_source(m, c, s);
    }
    if (st != EPX_OK) {
        c->failed = st;
        return st;
    }
    int n = 0;
    for (int j = 0; j < nl; j++) {
        int all = c->done[j];
        for (int s = 0; s < R && !all; s++) {
            int32_t w = load32(m, cw + sizeof(int32_t) * ((size_t)j * R + s));
            if ((int32_t)((uint32_t)w >> 24) != tag)
                break;
            all = s == R - 1;
        }
        if (all && !c->done[j])
            ll_finish_expert(m, h, c, j);
        if (!c->done[j]) {   /* its count 0; its offset is fixed */
            h->counts[j] = 0;
            h->offsets[j] = proto_ll_row(&m->g, l->cap, m->first[m->rank],
                                         m->first[m->rank] + j, 0, 0);
        }
        ready[j] = (uint8_t)c->done[j];
        n += c->done[j];
    }
    ll_fill(m, h, c, out);
    *num_ready = n;
    if (n < nl)
        sched_yield();   /* a caller polling in a loop lets its peers run */
    return EPX_OK;
}

/* epx_moe_check: the host finds every error in the call that meets it;
 * what is left to report are the rows dropped since the last check. */
epx_status_t ll_check(epx_moe_t *m, int64_t *dropped)
{
    if (dropped)
        *dropped = m->ll->unchecked_drops;
    m->ll->unchecked_drops = 0;
    return EPX_OK;
}
