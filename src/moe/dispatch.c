/*
 * Throughput-mode dispatch on the host executor.
 *
 *   send: check input, layout, count exchange (every rank puts its count
 *         block into every rank's window; each rank then holds the whole
 *         [R][E] matrix and computes every receive offset itself), then one
 *         put per (token, destination) — or per (token, local expert) in
 *         expert-major — straight into its final place, and a data signal.
 *   recv: wait for the R data signals; the output is the window itself.
 * A quantized wire format quantizes each token once, into a staging row,
 * and puts its data, scales and row scale into their own regions
 * (wire.h), one put each per destination row.
 *
 * A rank with bad input still joins the count exchange, carrying its error
 * in the status word, so every rank returns before any token moves.  A
 * cached dispatch reuses the handle's routing and offsets but still joins
 * the count exchange with a two-word header, for the same reason.
 */
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "moe/ll.h"
#include "moe/hier.h"

static inline epx_status_t put32(epx_moe_t *m, int d, size_t off, int32_t v)
{
    return moe_put(m, &m->put_dispatch, d, off, &v, sizeof(v));
}

/* One token row (already in its wire format) to row r of destination d. */
static inline epx_status_t put_row(epx_moe_t *m, int d, int64_t r,
                                   const void *q, const void *scale,
                                   const float *global)
{
    const moe_wire_t *f = &m->fmt;
    const proto_geom_t *o = &m->g;
    epx_status_t st = moe_put(m, &m->put_dispatch, d,
                              o->off_rows + (size_t)r * f->data_bytes, q,
                              f->data_bytes);
    if (f->scale_bytes)
        st = st != EPX_OK ? st : moe_put(m, &m->put_dispatch, d,
                      o->off_scales + (size_t)r * f->scale_bytes, scale,
                      f->scale_bytes);
    if (f->global_bytes)
        st = st != EPX_OK ? st : moe_put(m, &m->put_dispatch, d,
                      o->off_gscale + (size_t)r * f->global_bytes, global,
                      f->global_bytes);
    return st;
}

/* After the phase's signals arrived: the first rank that reported an error. */
epx_status_t moe_first_error(epx_moe_t *m, int phase, uint64_t call,
                             const char *what)
{
    for (int s = 0; s < m->R; s++) {
        int32_t v = phase < 0 ? moe_blk(m, call, s)[PROTO_CNT_STATUS]
                              : *(int32_t *)moe_local(m, moe_status_off(m, phase, call, s));
        if (v < 0)  /* >= 0: success, possibly with a mode (combine) */
            return epx__error(EPX_ERR_PEER, "%s: rank %d failed its part (%s)",
                              what, s, epx_status_str((epx_status_t)v));
    }
    return EPX_OK;
}

/* Wait until every source's block of `call` is complete.  The signal
 * counter alone is not enough: a rank that already returned from this call
 * (someone's input was bad) may have signalled for its next call. */
static epx_status_t wait_blocks(epx_moe_t *m, uint64_t call)
{
    const int32_t want = (int32_t)(call + 1);
    double deadline = 0;
    for (int s = 0; s < m->R; s++) {
        const int32_t *seq = moe_blk(m, call, s) + proto_cnt_seq(&m->g);
        for (long spins = 0; __atomic_load_n(seq, __ATOMIC_ACQUIRE) != want;
             spins++) {
            if (spins < 1000) {
                if (spins % 64 == 63)
                    epx__win_progress(m->win);
                continue;
            }
            epx_status_t alive = epx__comm_alive(m->comm);
            if (alive != EPX_OK)
                return alive;
            if (deadline == 0)
                deadline = epx__now() + epx__comm_timeout(m->comm);
            if (epx__now() > deadline)
                return epx__error(EPX_ERR_TIMEOUT,
                                  "dispatch: rank %d: no counts from rank %d "
                                  "for call %llu after %.1f s", m->rank, s,
                                  (unsigned long long)call,
                                  epx__comm_timeout(m->comm));
            epx__win_progress(m->win);   /* network puts land by progress */
            sched_yield();
        }
    }
    return EPX_OK;
}

/* Count exchange of call m->n_counts; returns the agreed status.  Every
 * dispatch runs it, cached or not: it is where a rank's bad input reaches
 * the others before any token moves.  A cached dispatch puts only the
 * header (status, cached flag, its handle's call): the counts of its
 * routing are known.  The sequence word goes last, after a flush. */
static epx_status_t exchange_counts(epx_moe_t *m, epx_status_t mine, int cached,
                                    uint64_t handle_call, int layer)
{
    uint64_t call = m->n_counts++;
    size_t body = sizeof(int32_t) * (size_t)(cached ? PROTO_CNT_HDR : proto_cnt_seq(&m->g));
    size_t blk_bytes = sizeof(int32_t) * (size_t)m->g.cnt_ints;
    size_t off = m->g.off_cnt +
                 ((size_t)(call & 1) * (size_t)m->R + (size_t)m->rank) * blk_bytes;
    int32_t seq = (int32_t)(call + 1);
    m->blk[PROTO_CNT_STATUS] = mine;
    m->blk[PROTO_CNT_CACHED] = cached;
    m->blk[PROTO_CNT_HANDLE] = (int32_t)handle_call;
    m->blk[PROTO_CNT_LAYER] = layer;
    m->blk[PROTO_CNT_PLACE] = m->place_hash ? (int32_t)m->place_hash[layer] : 0;
    epx_status_t st = EPX_OK;
    for (int d = 0; d < m->R && st == EPX_OK; d++) {
        st = moe_put(m, &m->put_dispatch, d, off, m->blk, body);
        if (st == EPX_OK)
            st = epx__win_flush(m->win, d);
        m->put_dispatch += sizeof(seq);
        if (st == EPX_OK)
            st = epx__win_put_signal(m->win, d, off + blk_bytes - sizeof(seq),
                                     &seq, sizeof(seq), MOE_SIG_COUNTS, 1);
    }
    if (st == EPX_OK)
        st = epx__win_wait(m->win, MOE_SIG_COUNTS, (uint64_t)m->R * m->n_counts);
    if (st == EPX_OK)
        st = wait_blocks(m, call);
    if (st != EPX_OK) {
        m->broken = 1;
        return moe_diagnose(m, st, "dispatch_send");
    }
    if (mine != EPX_OK)
        return mine;
    if ((st = moe_first_error(m, -1, call, "dispatch")) != EPX_OK)
        return st;
    for (int s = 0; s < m->R; s++) {
        const int32_t *b = moe_blk(m, call, s);
        if (b[PROTO_CNT_CACHED] != cached)
            return epx__error(EPX_ERR_MISMATCH,
                              "dispatch: rank %d %s EPX_DISPATCH_CACHED but "
                              "rank %d %s", s, cached ? "did not pass" : "passed",
                              m->rank, cached ? "did" : "did not");
        if (b[PROTO_CNT_LAYER] != layer || b[PROTO_CNT_PLACE] != m->blk[PROTO_CNT_PLACE])
            return epx__error(EPX_ERR_MISMATCH,
                              "dispatch: rank %d dispatches layer %d with "
                              "placement %08x, rank %d layer %d with %08x "
                              "(epx_moe_set_placement must agree)", s,
                              (int)b[PROTO_CNT_LAYER], (unsigned)b[PROTO_CNT_PLACE],
                              m->rank, layer, (unsigned)m->blk[PROTO_CNT_PLACE]);
        if (cached && b[PROTO_CNT_HANDLE] != (int32_t)handle_call)
            return epx__error(EPX_ERR_MISMATCH,
                              "dispatch: cached dispatch with handles of "
                              "different dispatches (rank %d: call %d, rank %d: "
                              "call %d)", s, (int)b[PROTO_CNT_HANDLE], m->rank,
                              (int)handle_call);
    }
    return EPX_OK;
}

/* From the count matrix (proto.h): where this rank's tokens go at every
 * destination, and what this rank itself receives. */
static void plan_offsets(epx_moe_t *m, epx_handle_t *h)
{
    const proto_geom_t *g = &m->g;
    const int32_t *cnt = moe_cnt(m, m->n_counts - 1);
    const int me = m->rank;
    h->nent = proto_recv_rows(g, cnt);
    for (int d = 0; d < m->R; d++) {
        h->entbase[d] = proto_dest_base(g, cnt, d);
        /* Expert-major segments, in expert order: d's walked once. */
        int64_t at = 0;
        for (int j = 0; j < moe_nlocal(m, d); j++) {
            int e = m->first[d] + j;
            if (d == me) {
                h->counts[j] = proto_recv_expert(g, cnt, m->first[d], j);
                h->offsets[j] = at;
            }
            h->ebase[e] = proto_expert_base_at(g, cnt, me, e, at);
            at = proto_expert_next(g, cnt, m->first[d], j, at);
        }
        if (d == me)
            h->nrows = g->em ? at : h->nent;
    }
}

/* Every row of this rank's tokens straight into its place: per (token,
 * destination) the entry and, token-major, the row with its metadata;
 * expert-major a row per (token, local expert of the destination). */
static epx_status_t send_tokens(epx_moe_t *m, epx_handle_t *h,
                                const epx_dispatch_args_t *a)
{
    const int K = m->K, me = m->rank;
    const char *x = a->x.data;
    const float *w = a->topk_weights.data;
    const proto_geom_t *o = &m->g;
    const proto_ids_t units = moe_units(m, h);
    int32_t ent[3 + EPX_MAX_TOPK], lidx[EPX_MAX_TOPK];
    float lw[EPX_MAX_TOPK];
    epx_status_t st = EPX_OK;
    const int quant = moe_wire_quantized(&m->fmt);
    const float gscale = moe_args_gscale(a);
    for (int64_t t = 0; t < h->T && st == EPX_OK; t++) {
        const char *row = x + (size_t)t * m->row_bytes;
        if (quant && h->ndest[t] > 0) {   /* once, whatever the fan-out */
            moe_wire_pack_row(&m->fmt, row, m->stage_q, m->stage_s,
                              &m->stage_g, gscale);
            row = m->stage_q;
        }
        for (int j = 0; j < h->ndest[t] && st == EPX_OK; j++) {
            int d = h->dest[t * m->maxdest + j], nloc = 0;
            int64_t e_at = h->entbase[d] + h->pos[t * m->maxdest + j];
            ent[0] = me;
            ent[1] = (int32_t)proto_ret_slot(o, h->sendoff, h->dest, h->pos,
                                             t, j);
            if (o->em) {
                for (int k = 0; k < K; k++) {
                    int64_t u = proto_expert_id(&units, t, k);
                    if (u < 0 || proto_owner(m->u2r, u) != d)
                        continue;
                    int64_t r = proto_expert_row(o, h->ebase, h->epos, u, t, k);
                    ent[3 + nloc++] = (int32_t)r;
                    st = st != EPX_OK ? st : put_row(m, d, r, row, m->stage_s, &m->stage_g);
                    st = st != EPX_OK ? st : put32(m, d, o->off_src_rank + (size_t)r * 4, me);
                    st = st != EPX_OK ? st : put32(m, d, o->off_src_token + (size_t)r * 4, (int32_t)t);
                    st = st != EPX_OK ? st : moe_put(m, &m->put_dispatch, d, o->off_w + (size_t)r * 4,
                                  &w[t * K + k], sizeof(float));
                }
            }
            ent[2] = nloc;
            st = st != EPX_OK ? st : moe_put(m, &m->put_dispatch, d,
                          o->off_entries + (size_t)e_at * (size_t)m->g.ent_ints * 4,
                          ent, sizeof(int32_t) * (size_t)(3 + nloc));
            if (o->em)
                continue;
            proto_meta_topk(o, &units, w, m->u2r, t, d, m->first[d], lidx, lw);
            st = st != EPX_OK ? st : put_row(m, d, e_at, row, m->stage_s, &m->stage_g);
            st = st != EPX_OK ? st : put32(m, d, o->off_src_rank + (size_t)e_at * 4, me);
            st = st != EPX_OK ? st : put32(m, d, o->off_src_token + (size_t)e_at * 4, (int32_t)t);
            st = st != EPX_OK ? st : moe_put(m, &m->put_dispatch, d, o->off_idx + (size_t)e_at * K * 4,
                          lidx, sizeof(int32_t) * (size_t)K);
            st = st != EPX_OK ? st : moe_put(m, &m->put_dispatch, d, o->off_w + (size_t)e_at * K * 4,
                          lw, sizeof(float) * (size_t)K);
        }
    }
    return st;   /* the first failing put's status (and message) */
}

/* Data phase, after our tokens: to every rank a completion word (the data
 * call + 1, behind a flush, so that epx_dispatch_poll can tell which
 * sources are done without waiting) with the signal recv waits for. */
static epx_status_t signal_data(epx_moe_t *m)
{
    int32_t seq = (int32_t)(m->n_data + 1);
    epx_status_t st = EPX_OK;
    for (int d = 0; d < m->R && st == EPX_OK; d++) {
        st = epx__win_flush(m->win, d);
        if (st == EPX_OK)
            st = epx__win_put_signal(m->win, d, moe_done_off(m, m->rank),
                                     &seq, sizeof(seq), MOE_SIG_DATA, 1);
    }
    return st;
}

/* The flat path's dispatch: every row straight to its destination. */
epx_status_t moe_flat_send(epx_moe_t *m, epx_handle_t *h,
                           const epx_dispatch_args_t *a)
{
    epx_status_t st = send_tokens(m, h, a);
    return st == EPX_OK ? signal_data(m) : st;
}

/* A wait or put failed earlier: peers are out of step and no later call
 * can be trusted. */
epx_status_t moe_check_usable(const epx_moe_t *m, const char *what)
{
    if (m->comm->dead_rank >= 0)   /* names the dead rank, every call */
        return epx__comm_alive(m->comm);
    if (m->comm->destroyed)
        return epx__error(EPX_ERR_STATE, "%s: the engine's communicator was "
                          "destroyed; destroy the engine", what);
    return m->broken
        ? epx__error(EPX_ERR_STATE, "%s: the engine lost step with its peers "
                     "after a failed wait or put; destroy it", what)
        : EPX_OK;
}

static epx_status_t ht_dispatch_send(epx_moe_t *m, const epx_dispatch_args_t *a,
                                     epx_handle_t **handle)
{
    epx_status_t st = moe_check_usable(m, "dispatch");
    if (st != EPX_OK)
        return st;
    /* Call-order errors cannot be agreed with the peers (they are in
     * another call): the engine is unusable afterwards (epx.h). */
    if (m->state == MOE_SENT || m->state == MOE_COMBINING)
        return epx__error(EPX_ERR_STATE,
                          "dispatch: the previous dispatch/combine of this "
                          "engine is not finished (call its recv first)");
    /* A received but never combined dispatch is abandoned.  No barrier is
     * needed: no peer writes into our window before our count block of
     * this call reached it, i.e. before we stopped reading the old one. */
    m->state = MOE_IDLE;
    m->cur = NULL;

    epx_status_t mine = !a || !handle
        ? epx__error(EPX_ERR_INVALID, "dispatch: args or handle NULL")
        : moe_check_args(m, a);
    int cached = mine == EPX_OK && (a->flags & EPX_DISPATCH_CACHED);
    epx_handle_t *h = NULL;
    int fresh = 0;   /* h is this call's own (a refused cached call's
                        handle stays the caller's, untouched) */
    if (cached) {
        h = *handle;
        if (!h || h->moe != m || !h->dispatched)
            mine = epx__error(EPX_ERR_INVALID,
                              "dispatch: EPX_DISPATCH_CACHED needs a handle of "
                              "an earlier dispatch on this engine");
        else if (a->x.rows != h->T || moe_hash_idx(m, a) != h->hash)
            mine = epx__error(EPX_ERR_INVALID,
                              "dispatch: EPX_DISPATCH_CACHED with a routing that "
                              "differs from the handle's");
        else if (moe_args_layer(a) != h->layer ||
                 (m->place_hash && m->place_hash[h->layer] != h->place))
            mine = epx__error(EPX_ERR_INVALID,
                              "dispatch: EPX_DISPATCH_CACHED for another layer "
                              "or after the layer's placement changed");
        if (mine != EPX_OK)
            cached = 0;
    } else if (mine == EPX_OK) {
        h = moe_handle_new(m, a->x.rows);
        fresh = h != NULL;
        if (!h)
            mine = epx__error(EPX_ERR_NOMEM, "dispatch: out of memory");
        else if ((mine = moe_layout(m, a, h)) == EPX_OK) {
            h->hash = moe_hash_idx(m, a);
            h->place = m->place_hash ? m->place_hash[h->layer] : 0;
        }
    }
    if (mine != EPX_OK)
        memset(m->blk, 0, sizeof(int32_t) * (size_t)m->g.cnt_ints);
    if (fresh)
        h->call = m->n_counts;
    int layer = mine == EPX_OK ? moe_args_layer(a) : 0;
    m->calls++;
    moe_progress(m, MOE_AT_DISPATCH_SEND, layer, m->calls);
    st = exchange_counts(m, mine, cached, cached ? h->call : 0, layer);
    if (st == EPX_OK && !cached) {
        plan_offsets(m, h);
        st = moe_ht_poll_plan(m, h);
        if (st == EPX_OK && m->path->plan)
            st = m->path->plan(m, h);
    }
    if (st == EPX_OK && moe_hook_before_data)
        moe_hook_before_data(m);
    if (st == EPX_OK)
        st = m->path->send(m, h, a);
    if (st != EPX_OK) {
        if (fresh)
            epx_handle_release(h);   /* not in flight: freed or kept */
        return st;
    }
    moe_stats_record(m, moe_args_layer(a), h->ecount, h->ucount);
    moe_lost_write(m, a);
    m->state = MOE_SENT;
    m->cur = h;
    *handle = h;
    return EPX_OK;
}

static epx_status_t ht_dispatch_recv(epx_moe_t *m, epx_handle_t *h,
                                     epx_recv_t *out)
{
    epx_status_t usable = moe_check_usable(m, "dispatch");
    if (usable != EPX_OK)
        return usable;
    if (m->state != MOE_SENT || m->cur != h)
        return epx__error(EPX_ERR_STATE,
                          "dispatch: recv without a matching dispatch_send");
    m->n_data++;
    moe_progress(m, MOE_AT_DISPATCH_RECV, h->layer, m->calls);
    epx_status_t st = epx__win_wait(m->win, MOE_SIG_DATA, (uint64_t)m->R * m->n_data);
    if (st != EPX_OK) {
        m->broken = 1;
        m->state = MOE_IDLE;
        m->cur = NULL;
        return moe_diagnose(m, st, "dispatch_recv");
    }
    moe_recv_describe(m, h, out);
    h->dispatched = 1;
    m->state = MOE_RECEIVED;
    return EPX_OK;
}

void moe_recv_describe(epx_moe_t *m, epx_handle_t *h, epx_recv_t *out)
{
    int nl = moe_nlocal(m, m->rank), tm = m->p.layout == EPX_LAYOUT_TOKEN_MAJOR;
    int32_t *srank = (int32_t *)moe_local(m, m->g.off_src_rank);
    int32_t *stok = (int32_t *)moe_local(m, m->g.off_src_token);
    float *wt = (float *)moe_local(m, m->g.off_w);
    if (!tm) {  /* mark the padding rows of each segment */
        for (int j = 0; j < nl; j++) {
            int64_t end = j + 1 < nl ? h->offsets[j + 1] : h->nrows;
            for (int64_t r = h->offsets[j] + h->counts[j]; r < end; r++) {
                srank[r] = stok[r] = -1;
                wt[r] = 0.0f;
            }
        }
    }
    /* Fill a full struct, hand the caller only as much as it declared (a
     * caller built against an older, shorter epx_recv_t; 0 = this one). */
    epx_recv_t full;
    size_t n = out->struct_size && out->struct_size < sizeof(full)
        ? out->struct_size : sizeof(full);
    memset(&full, 0, sizeof(full));
    full.struct_size = n;
    full.num_rows = h->nrows;
    full.x.data = moe_local(m, m->g.off_rows);
    full.x.dtype = m->fmt.x_dtype;
    full.x.rows = h->nrows;
    full.x.cols = m->fmt.x_cols;
    if (m->fmt.scale_bytes) {
        full.x_scales.data = moe_local(m, m->g.off_scales);
        full.x_scales.dtype = m->fmt.scale_dtype;
        full.x_scales.rows = h->nrows;
        full.x_scales.cols = m->fmt.nblocks;
    }
    if (m->fmt.global_bytes)
        full.x_global_scale = (const float *)moe_local(m, m->g.off_gscale);
    full.num_local_experts = nl;
    full.first_local_expert = m->first[m->rank];
    for (int j = 0; j < nl; j++) {
        int u = m->first[m->rank] + j;
        m->local_exp[j] = m->p.num_slots > 0
            ? m->phy2log[(size_t)h->layer * (size_t)m->U + (size_t)u] : u;
    }
    full.local_experts = m->local_exp;
    full.expert_counts = h->counts;
    full.expert_offsets = tm ? NULL : h->offsets;
    full.src_rank = srank;
    full.src_token = stok;
    full.topk_idx = tm ? (const int32_t *)moe_local(m, m->g.off_idx) : NULL;
    full.topk_weights = wt;
    memcpy(out, &full, n);
}

/* Releasing the handle of the call in flight: take in that phase, so the
 * signal counters stay in step with the peers. */
static void ht_release(epx_moe_t *m, epx_handle_t *h)
{
    if (m->cur == h) {
        /* Take in the phase in flight so the counters stay in step. */
        epx_status_t st = EPX_OK;
        if (m->state == MOE_SENT)
            st = epx__win_wait(m->win, MOE_SIG_DATA, (uint64_t)m->R * ++m->n_data);
        else if (m->state == MOE_COMBINING)
            st = epx__win_wait(m->win, MOE_SIG_COMB, (uint64_t)m->R * ++m->n_comb);
        if (st != EPX_OK)
            m->broken = 1;
        m->state = MOE_IDLE;
        m->cur = NULL;
    }
}

static epx_status_t host_check(epx_moe_t *m, int64_t *dropped)
{
    (void)m;
    if (dropped)
        *dropped = 0;
    return EPX_OK;
}

const moe_ops_t moe_ht_ops = {
    "host:throughput", ht_dispatch_send, ht_dispatch_recv, moe_ht_poll,
    moe_ht_combine_send, moe_ht_combine_recv, ht_release, host_check
};
const moe_ops_t moe_ll_ops = {
    "host:low-latency", ll_dispatch_send, ll_dispatch_recv, ll_dispatch_poll,
    ll_combine_send, ll_combine_recv, ll_release, ll_check
};
