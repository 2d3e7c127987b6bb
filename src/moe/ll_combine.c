/*
 * Low-latency combine on the host executor.
 *
 *   send: for every source and every entry (token) it sent here, reduce
 *         the token's rows in top-k order in fp32 (weighted unless
 *         UNWEIGHTED), round to the engine dtype and put the partial into
 *         the source's buffer at the return slot the source chose; then the
 *         combine status and the COMB signal of the buffer.
 *   recv: wait for the R COMB signals and sum each token's partials in
 *         ascending rank order in fp32, rounding once.
 * In place (y is the received x) where every peer is mapped: the expert
 * rank sends only its status (the outputs stay in its buffer), and the
 * source reduces each token's rows straight from the peers' buffers
 * through their entries: one pass over the data instead of two.  The
 * buffer stays untouched until the source is done: its next writes there
 * (call + B) wait for this call's COMB signals, and the range read is the
 * source's own.
 * The arithmetic is throughput mode's (combine.c): the same inputs give
 * the same bits in both modes and both paths.  Rows dropped at dispatch are in no entry:
 * they contribute nothing.
 */
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "moe/ll.h"

static epx_status_t ll_comb_enter(epx_moe_t *m, epx_handle_t *h, int want,
                                  const char *order, ll_call_t **cp)
{
    if (!h || h->moe != m)
        return epx__error(EPX_ERR_INVALID, "combine: handle NULL or of "
                          "another engine");
    epx_status_t st = moe_check_usable(m, "combine");
    if (st != EPX_OK)
        return st;
    if (!h->ll || h->ll->state != want)
        return epx__error(EPX_ERR_STATE, "combine: %s", order);
    *cp = h->ll;
    return EPX_OK;
}

epx_status_t ll_combine_send(epx_moe_t *m, epx_handle_t *h,
                             const epx_combine_args_t *a)
{
    ll_call_t *c = NULL;
    epx_status_t st = ll_comb_enter(m, h, LL_RECEIVED,
                                    "no received dispatch for this handle", &c);
    if (st != EPX_OK)
        return st;
    moe_progress(m, MOE_AT_COMBINE_SEND, c->layer, c->call + 1);
    moe_ll_t *l = m->ll;
    /* Every rank combines in dispatch order, else two ranks could wait on
     * each other's different calls. */
    for (int b = 0; b < l->B; b++) {
        epx_handle_t *g = l->ring[b];
        if (g && g != h && g->ll->call < c->call && g->ll->state < LL_COMBINING)
            return epx__error(EPX_ERR_STATE,
                              "combine: call %llu was dispatched earlier and "
                              "is not combined yet (combine in dispatch order, "
                              "or release it)", (unsigned long long)g->ll->call);
    }
    if (!a || a->struct_size < offsetof(epx_combine_args_t, flags) + sizeof(unsigned))
        return epx__error(EPX_ERR_INVALID,
                          "combine: args NULL or not set up with "
                          "EPX_COMBINE_ARGS_INIT");
    if ((st = epx__check_version("combine args", a->version,
                                 EPX_COMBINE_ARGS_VERSION)) != EPX_OK)
        return st;
    const int64_t rows = (int64_t)moe_nlocal(m, m->rank) * m->R * l->cap;
    if ((st = moe_check_tensor(&a->y, "combine", "y", 1u << m->p.dtype, rows,
                               m->H)) != EPX_OK ||
        (st = moe_check_y_apart(m, &a->y)) != EPX_OK)
        return st;
    const uint64_t call = c->call;
    const char *y = a->y.data;
    const float *w = (a->flags & EPX_COMBINE_UNWEIGHTED)
        ? NULL : (const float *)moe_local(m, ll_at(l, call, l->off.w));
    const int32_t *fw = (const int32_t *)moe_local(m, ll_at(l, call, l->off.fw));
    const int32_t *ents = (const int32_t *)moe_local(m, ll_at(l, call, l->off.entries));
    const size_t comb = ll_at(l, call, l->off.comb);
    const size_t word = ll_at(l, call, l->off.hdr) +
                        sizeof(int32_t) * ((size_t)m->rank * PROTO_LL_HDR + ll_comb_word(l, call));
    const int pull = m->direct && a->y.data == moe_local(m, ll_at(l, call, l->off.rows));
    const int32_t ok = !pull ? MOE_COMB_PUSHED
        : (a->flags & EPX_COMBINE_UNWEIGHTED) ? MOE_COMB_PULL_UNWEIGHTED
                                              : MOE_COMB_PULL;
    for (int i = 1; i <= m->R && st == EPX_OK; i++) {
        int s = (m->rank + i) % m->R;
        int32_t n = pull ? 0 : fw[s] & (int32_t)LL_COUNT_MASK;
        const int32_t *e = ents + (size_t)s * (size_t)m->maxT * (size_t)m->g.ent_ints;
        for (int32_t k = 0; k < n && st == EPX_OK; k++, e += m->g.ent_ints) {
            moe_reduce_partial(m, y, e, w, m->wire);
            st = moe_put(m, &m->put_combine, s,
                         comb + (size_t)e[1] * m->row_bytes, m->wire,
                         m->row_bytes);
        }
        m->put_combine += sizeof(ok);
        if (st == EPX_OK)
            st = epx__win_put_signal(m->win, s, word, &ok, sizeof(ok),
                                     ll_comb_slot(l, call), 1);
    }
    if (st != EPX_OK) {
        m->broken = 1;
        return st;
    }
    c->state = LL_COMBINING;
    return EPX_OK;
}

epx_status_t ll_combine_recv(epx_moe_t *m, epx_handle_t *h, epx_tensor_t *out)
{
    ll_call_t *c = NULL;
    epx_status_t st = ll_comb_enter(m, h, LL_COMBINING,
                                    "recv without a matching combine_send", &c);
    if (st != EPX_OK)
        return st;
    if ((st = moe_check_out(m, h, out)) != EPX_OK)
        return st;
    moe_ll_t *l = m->ll;
    const uint64_t call = c->call;
    const int b = ll_buf(l, call);
    moe_progress(m, MOE_AT_COMBINE_RECV, c->layer, call + 1);
    st = epx__win_wait(m->win, ll_comb_slot(l, call), ll_comb_target(m, call));
    c->state = LL_DONE;
    if (l->ring[b] == h)
        l->ring[b] = NULL;
    if (st != EPX_OK) {
        m->broken = 1;
        return moe_diagnose(m, st, "combine_recv");
    }
    moe_progress(m, MOE_AT_DONE, c->layer, call + 1);
    const int32_t *hdr = (const int32_t *)moe_local(m, ll_at(l, call, l->off.hdr)) +
                         ll_comb_word(l, call);
    for (int d = 0; d < m->R; d++) {
        int32_t v = hdr[(size_t)d * PROTO_LL_HDR];
        if (v == LL_ABANDONED)
            return epx__error(EPX_ERR_PEER, "combine: rank %d released call "
                              "%llu without combining it", d,
                              (unsigned long long)call);
        if (v < 0)
            return epx__error(EPX_ERR_PEER, "combine: rank %d failed its part "
                              "(%s)", d, epx_status_str((epx_status_t)v));
    }
    const char *comb = moe_local(m, ll_at(l, call, l->off.comb));
    const size_t out_row = epx_dtype_size(out->dtype) * (size_t)m->H;
    const size_t ent0 = sizeof(int32_t) * (size_t)m->rank * (size_t)m->maxT *
                        (size_t)m->g.ent_ints;
    comb_src_t src[EPX_MAX_TOPK];
    for (int64_t t = 0; t < h->T; t++) {
        int nd = h->ndest[t];
        for (int j = 0; j < nd; j++) {   /* ascending ranks */
            int d = h->dest[t * m->maxdest + j];
            int32_t mode = hdr[(size_t)d * PROTO_LL_HDR];
            /* entries follow token order: the token's position at d */
            int64_t e_at = h->pos[t * m->maxdest + j];
            if (mode == MOE_COMB_PUSHED) {
                src[j] = (comb_src_t){ comb + (size_t)proto_ret_slot(
                                           &m->g, h->sendoff, h->dest, h->pos,
                                           t, j) * m->row_bytes, NULL, NULL };
                continue;
            }
            const char *pw = epx__win_peer_ptr(m->win, d);
            src[j].row = pw + ll_at(l, call, l->off.rows);
            src[j].ent = (const int32_t *)(pw + ll_at(l, call, l->off.entries) +
                                           ent0) + e_at * m->g.ent_ints;
            src[j].w = mode == MOE_COMB_PULL_UNWEIGHTED ? NULL
                : (const float *)(pw + ll_at(l, call, l->off.w));
        }
        moe_reduce_token(m, src, nd, (char *)out->data + (size_t)t * out_row,
                         out->dtype);
    }
    return EPX_OK;
}
