/*
 * Low-latency mode: parameters, the window, the buffers' life cycle.
 *
 * Buffer reuse.  Call n + B writes into buffer n % B again, so before a
 * rank sends call n + B it waits until every rank has finished call n:
 * each rank, when it combines call n (epx_combine_send) or releases it
 * uncombined, puts its combine status and bumps call n's COMB counter at
 * every rank, and the sender waits for all R of them.  A rank can be told
 * of call n + B's abandon while still reading call n's: hence the two
 * COMB slots per buffer (ll.h).  A rank only reads call n's words,
 * rows and partials before its own COMB signal of call n (its combine_send
 * or release) or while waiting for the others' (its combine_recv), so no
 * source overwrites a buffer that someone still reads, and a source is at
 * most one use of a buffer ahead of any reader.
 *
 * Outstanding calls: at most B per rank (dispatched, neither combined to
 * the end nor released): a rank's ring holds the handle of each buffer.
 */
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "moe/ll.h"

#define LL_MAX_BUFFERS 64

epx_status_t ll_check_params(const epx_moe_params_t *p)
{
    if (p->layout != EPX_LAYOUT_EXPERT_MAJOR)
        return epx__error(EPX_ERR_INVALID,
                          "moe: low-latency output is per expert "
                          "([local experts, capacity, H]): use "
                          "EPX_LAYOUT_EXPERT_MAJOR");
    if (p->ll_capacity < 0 || p->ll_buffers < 0 ||
        p->ll_buffers == 1 || p->ll_buffers > LL_MAX_BUFFERS)
        return epx__error(EPX_ERR_INVALID,
                          "moe: ll_capacity (%d) must be >= 0 and ll_buffers "
                          "(%d) 0 or in [2, %d]", p->ll_capacity,
                          p->ll_buffers, LL_MAX_BUFFERS);
    if (p->max_tokens_per_rank > LL_MAX_COUNT || p->ll_capacity > LL_MAX_COUNT)
        return epx__error(EPX_ERR_RANGE,
                          "moe: low latency counts rows in 24 bits: "
                          "max_tokens_per_rank (%d) and ll_capacity (%d) must "
                          "be <= %lld", p->max_tokens_per_rank, p->ll_capacity,
                          (long long)LL_MAX_COUNT);
    return EPX_OK;
}

/* The window: the protocol's low-latency layout (proto/geom.h), from
 * the engine's geometry (m->g, laid out in engine.c). */
static epx_status_t plan(epx_moe_t *m, moe_ll_t *l)
{
    l->L = m->g.Lmax;
    size_t R = (size_t)m->R, L = (size_t)l->L, cap = (size_t)l->cap;
    size_t rows = L * R * cap, ents = R * (size_t)m->maxT;
    double total = (double)l->B * ((double)rows *
                                   ((double)moe_wire_row_bytes(&m->fmt) + 8) +
                                   (double)ents * m->g.ent_ints * 4 +
                                   (double)m->maxT * m->maxdest * m->row_bytes);
    if ((double)L * (double)R * (double)cap > INT32_MAX ||
        (double)ents > INT32_MAX || total > (double)(1ull << 46))
        return epx__error(EPX_ERR_RANGE,
                          "moe: %d buffers of %d experts x %d ranks x %d rows "
                          "(ll_capacity) x %zu bytes exceed what one engine "
                          "can address; lower ll_capacity or ll_buffers",
                          l->B, l->L, m->R, l->cap,
                          moe_wire_row_bytes(&m->fmt));
    proto_ll_layout(&m->g, l->B, l->cap, &l->off);
    m->win_bytes = (size_t)l->off.total;
    m->win_progress = (size_t)l->off.off_progress;
    return EPX_OK;
}

/* Every rank must use the same capacity, buffers and flags. */
static epx_status_t agree(epx_moe_t *m)
{
    int32_t me[3] = { m->p.ll_capacity, m->p.ll_buffers, (int32_t)m->p.flags };
    static const char *names[3] = { "ll_capacity", "ll_buffers", "flags" };
    int32_t *all = malloc(sizeof(me) * (size_t)m->R);
    if (!all)
        return epx__error(EPX_ERR_NOMEM, "moe: out of memory");
    epx_status_t st = epx__comm_allgather(m->comm, me, all, sizeof(me));
    for (int r = 0; r < m->R && st == EPX_OK; r++)
        for (int f = 0; f < 3; f++)
            if (all[r * 3 + f] != me[f]) {
                st = epx__error(EPX_ERR_MISMATCH,
                                "moe: %s is %d on rank %d but %d on rank %d",
                                names[f], (int)me[f], m->rank,
                                (int)all[r * 3 + f], r);
                break;
            }
    free(all);
    return st;
}

epx_status_t ll_init(epx_moe_t *m)
{
    moe_ll_t *l = calloc(1, sizeof(*l));
    if (!l)
        return epx__error(EPX_ERR_NOMEM, "moe: out of memory");
    m->ll = l;
    epx_status_t st = agree(m);
    if (st != EPX_OK)
        return st;
    l->B = proto_ll_buffers(m->p.ll_buffers);
    l->cap = proto_ll_capacity(m->p.ll_capacity, m->maxT);
    l->drop = (m->p.flags & EPX_MOE_LL_DROP) != 0;
    if ((st = plan(m, l)) != EPX_OK)
        return st;
    size_t R = (size_t)m->R, U = (size_t)m->U, K = (size_t)m->K,
           T = (size_t)(m->maxT > 0 ? m->maxT : 1),
           rows = (size_t)l->L * R * (size_t)l->cap;
    l->ring = calloc((size_t)l->B, sizeof(*l->ring));
    l->src_rank = malloc(sizeof(int32_t) * (size_t)l->B * (rows ? rows : 1));
    l->hw = malloc(sizeof(int32_t) * (size_t)l->B * (size_t)l->L * R + 1);
    l->local_exp = malloc(sizeof(int32_t) * (size_t)l->B * (size_t)(l->L + 1));
    l->cnt = malloc(sizeof(int32_t) * U);
    l->boff = malloc(sizeof(int32_t) * (U + 1));
    l->bucket = malloc(sizeof(int32_t) * T * K);
    l->tok = malloc(sizeof(int32_t) * (size_t)l->cap);
    l->wt = malloc(sizeof(float) * (size_t)l->cap);
    l->ents = malloc(sizeof(int32_t) * T * (size_t)m->g.ent_ints);
    l->fill = malloc(sizeof(int32_t) * R);
    if (moe_wire_quantized(&m->fmt)) {
        l->sq = malloc(T * m->fmt.data_bytes);
        l->ss = malloc(T * m->fmt.scale_bytes);
        l->sg = malloc(T * sizeof(float));
        if (!l->sq || !l->ss || !l->sg)
            return epx__error(EPX_ERR_NOMEM, "moe: out of memory (low latency)");
    }
    if (!l->ring || !l->src_rank || !l->hw || !l->local_exp || !l->cnt || !l->boff || !l->bucket ||
        !l->tok || !l->wt || !l->ents || !l->fill)
        return epx__error(EPX_ERR_NOMEM, "moe: out of memory (low latency)");
    /* Nothing known yet: a peer may write into the window as soon as it
     * exists, so the first use of each range writes its padding. */
    memset(l->hw, 0xff, sizeof(int32_t) * (size_t)l->B * (size_t)l->L * R);
    return epx__win_create(m->comm, m->win_bytes, 3 * l->B, &m->win);
}

/* Before the window goes: every put a peer makes into it must have landed
 * (transport.h), and a put of a peer may need this rank's progress to
 * complete at all (UCX over the network).  A combined call's puts are
 * covered by the COMB signals its combine_recv waited for; those of a
 * failed or released call (the peers' abandon words, the rows of an
 * overflowing call) by nothing until the buffer's next use.  So the calls
 * still outstanding here are abandoned, and the last call of each buffer
 * is waited for until every rank combined or released it: a rank that
 * leaves right after a failed dispatch_send keeps progressing until its
 * peers' last puts are in, instead of leaving them blocked on it. */
void ll_drain(epx_moe_t *m)
{
    moe_ll_t *l = m->ll;
    if (!l || !m->win || m->broken)
        return;
    for (int b = 0; b < l->B; b++) {
        epx_handle_t *h = l->ring[b];
        if (h && h->ll && (h->ll->state == LL_SENT || h->ll->state == LL_RECEIVED)) {
            ll_abandon(m, h->ll->call);
            h->ll->state = LL_DONE;
        }
    }
    for (uint64_t n = l->n_calls > (uint64_t)l->B ? l->n_calls - (uint64_t)l->B : 0;
         n < l->n_calls && !m->broken; n++)
        if (epx__win_wait(m->win, ll_comb_slot(l, n), ll_comb_target(m, n)) != EPX_OK) {
            EPX_LOG(EPX_LOG_WARN, "moe", m->rank, "destroy: %s", epx_last_error());
            m->broken = 1;
        }
}

void ll_free(epx_moe_t *m)
{
    moe_ll_t *l = m->ll;
    if (!l)
        return;
    free(l->ring);
    free(l->src_rank);
    free(l->hw);
    free(l->local_exp);
    free(l->cnt);
    free(l->boff);
    free(l->bucket);
    free(l->tok);
    free(l->wt);
    free(l->ents);
    free(l->fill);
    free(l->sq);
    free(l->ss);
    free(l->sg);
    free(l);
    m->ll = NULL;
}

void ll_call_free(ll_call_t *c)
{
    if (!c)
        return;
    free(c->pos);
    free(c->done);
    free(c);
}

/* The handle's call record, allocated once per handle. */
ll_call_t *ll_call_get(epx_moe_t *m, epx_handle_t *h)
{
    if (!h->ll) {
        ll_call_t *c = calloc(1, sizeof(*c));
        size_t n = (size_t)(m->maxT > 0 ? m->maxT : 1) * (size_t)m->K;
        if (!c)
            return NULL;
        c->pos = malloc(sizeof(int32_t) * n);
        c->done = malloc((size_t)(m->ll->L > 0 ? m->ll->L : 1));
        if (!c->pos || !c->done) {
            ll_call_free(c);
            return NULL;
        }
        h->ll = c;
    }
    return h->ll;
}

/* This rank is done with `call` without combining it: say so to every
 * rank (their combine_recv of the call fails with EPX_ERR_PEER) and count
 * as finished for the buffer's reuse. */
epx_status_t ll_abandon(epx_moe_t *m, uint64_t call)
{
    moe_ll_t *l = m->ll;
    int32_t word = LL_ABANDONED;
    size_t off = ll_at(l, call, l->off.hdr) +
                 sizeof(int32_t) * ((size_t)m->rank * PROTO_LL_HDR + ll_comb_word(l, call));
    epx_status_t st = EPX_OK;
    for (int d = 0; d < m->R && st == EPX_OK; d++)
        st = epx__win_put_signal(m->win, d, off, &word, sizeof(word),
                                 ll_comb_slot(l, call), 1);
    if (st != EPX_OK) {
        /* Peers would wait for this call's combine: the engine is unusable
         * (EPX_ERR_STATE from now on); say why where it happens, since a
         * release has no status to return. */
        EPX_LOG(EPX_LOG_WARN, "moe", m->rank, "abandoning low-latency call "
                "%llu failed, the engine is now unusable: %s",
                (unsigned long long)call, epx_last_error());
        m->broken = 1;
    }
    return st;
}

/* Sources may have written rows of `call` that this rank never counted
 * (a failed call, or one released before every expert was ready): the
 * ranges of the experts not in `done` (NULL: all) are rewritten in full
 * when the buffer is next received. */
void ll_forget_ranges(epx_moe_t *m, uint64_t call, const uint8_t *done)
{
    moe_ll_t *l = m->ll;
    const size_t R = (size_t)m->R;
    int32_t *hw = l->hw + (size_t)ll_buf(l, call) * (size_t)l->L * R;
    for (int j = 0; j < moe_nlocal(m, m->rank); j++)
        if (!done || !done[j])
            memset(hw + (size_t)j * R, 0xff, sizeof(int32_t) * R);
}

/* epx_handle_release of a low-latency handle: not collective.  A call not
 * yet combined is abandoned (the others see it in their combine_recv);
 * the peers' side of it is waited for lazily, before its buffer's reuse. */
void ll_release(epx_moe_t *m, epx_handle_t *h)
{
    ll_call_t *c = h->ll;
    moe_ll_t *l = m->ll;
    if (!c || !c->state)
        return;
    int b = ll_buf(l, c->call);
    if (c->state == LL_SENT || c->state == LL_RECEIVED)
        ll_abandon(m, c->call);
    if (c->state == LL_SENT)
        ll_forget_ranges(m, c->call, c->done);
    if (l->ring[b] == h)
        l->ring[b] = NULL;
    c->state = 0;
}
