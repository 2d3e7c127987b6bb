/*
 * Hierarchical combine (see hier.h): partials to the gateway in the
 * domain, then per token a chain of fp32 accumulators through the
 * gateways of its destination domains in ascending order: the flat path's
 * sum (reduce.c), each gateway adding its stretch of the terms.
 */
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "moe/hier.h"

/* Each received token's partial to its gateway in this domain. */
static epx_status_t send_partials(epx_moe_t *m, epx_handle_t *h,
                                  const epx_combine_args_t *a, int32_t seq)
{
    moe_hier_t *x = m->hier;
    const int tm = m->p.layout == EPX_LAYOUT_TOKEN_MAJOR, L = x->L;
    const int d0 = x->dom * L;
    const char *y = a->y.data;
    const float *wt = (a->flags & EPX_COMBINE_UNWEIGHTED)
        ? NULL : (const float *)moe_local(m, m->g.off_w);
    const int32_t *ents = (const int32_t *)moe_local(m, m->g.off_entries);
    epx_status_t st = EPX_OK;
    for (int64_t i = 0; i < h->nent && st == EPX_OK; i++) {
        const int32_t *ent = ents + i * m->g.ent_ints;
        int g = d0 + ent[0] % L;
        size_t dst = x->part + (size_t)ent[1] * m->row_bytes;
        if (tm) {
            st = moe_put(m, &m->put_combine, g, dst, y + (size_t)i * m->row_bytes,
                              m->row_bytes);
            continue;
        }
        moe_reduce_partial(m, y, ent, wt, x->wire);
        st = moe_put(m, &m->put_combine, g, dst, x->wire, m->row_bytes);
    }
    for (int g = d0; g < d0 + L && st == EPX_OK; g++) {
        st = epx__win_flush(m->win, g);
        if (st == EPX_OK)
            st = moe_put(m, &m->put_combine, g, x->pdone + sizeof(int32_t) * (size_t)x->li,
                              &seq, sizeof(seq));
    }
    return st;
}

/* Gateway: for each token of the sources with our local index that has
 * destinations here, continue its sum with our domain's partials and pass
 * it on (next domain's gateway, or the source). */
static epx_status_t chain(epx_moe_t *m, epx_handle_t *h, int32_t seq)
{
    moe_hier_t *x = m->hier;
    const int L = x->L, ND = x->ND, K = m->K;
    const size_t frow = x->acc_size * (size_t)m->H;
    const int32_t *pdone = (const int32_t *)moe_local(m, x->pdone);
    const int32_t *cdone = (const int32_t *)moe_local(m, x->cdone);
    epx_status_t st = EPX_OK;
    for (int j = 0; j < L && st == EPX_OK; j++)
        st = moe_hier_wait_word(m, &pdone[j], seq, "combine", x->dom * L + j);
    for (int b = 0; b < x->dom && st == EPX_OK; b++)
        st = moe_hier_wait_word(m, &cdone[b], seq, "combine", b * L + x->li);
    int32_t dst[EPX_MAX_TOPK], dpos[EPX_MAX_TOPK];
    comb_src_t part[EPX_MAX_TOPK];
    const int64_t *slotbase = h->hier_h->slotbase;
    for (int b = 0; b < ND && st == EPX_OK; b++) {
        const int src = proto_hier_gateway(&x->c, m->rank, b);
        const int64_t *sb = slotbase + (size_t)b * (size_t)L;
        int64_t n = h->T;
        if (b != x->dom)
            n = __atomic_load_n((const int32_t *)moe_local(m, x->shdr) + 2 * b,
                                __ATOMIC_ACQUIRE);
        for (int64_t k = 0; k < n && st == EPX_OK; k++) {
            int32_t t;
            int nd;
            /* The token's destinations, ascending (as dispatch numbered
             * them), and its positions there: our own tokens' layout, or
             * the staging record's. */
            if (b == x->dom) {
                t = (int32_t)k;
                nd = h->ndest[k];
                memcpy(dst, h->dest + k * m->maxdest, sizeof(int32_t) * (size_t)nd);
                memcpy(dpos, h->pos + k * m->maxdest, sizeof(int32_t) * (size_t)nd);
            } else {
                const int32_t *rec = (const int32_t *)(moe_local(m, x->stage) +
                    ((size_t)b * (size_t)m->maxT + (size_t)k) * x->rec_bytes);
                const proto_ids_t u = proto_hier_rec_ids(rec, K, m->U);
                t = rec[0];
                nd = proto_walk_dests(&m->g, &u, NULL, m->u2r, 0, NULL, dst,
                                      NULL);
                for (int j = 0; j < nd; j++)
                    dpos[j] = proto_hier_rec_dpos(rec, K, m->u2r, dst[j]);
            }
            /* Ours are its terms here; the sum starts here or comes from
             * the domain before, and goes on to the next or home. */
            int j0, next;
            const int here = proto_hier_chain(dst, nd, L, x->dom, &j0, &next);
            if (here == 0)
                continue;
            for (int j = 0; j < here; j++)
                part[j] = (comb_src_t){ moe_local(m, x->part) +
                    (size_t)(sb[dst[j0 + j] - x->dom * L] + dpos[j0 + j]) *
                    m->row_bytes, NULL, NULL };
            const int first = j0 == 0;
            void *acc = x->acc;
            if (!first)
                memcpy(acc, moe_local(m, x->chain) +
                       ((size_t)b * (size_t)m->maxT + (size_t)t) * frow, frow);
            moe_reduce_add(m, part, here, first, acc);
            if (next >= 0) {
                st = moe_put(m, &m->put_combine,
                             proto_hier_gateway(&x->c, m->rank, next), x->chain +
                                  ((size_t)b * (size_t)m->maxT + (size_t)t) * frow,
                                  acc, frow);
                x->cross_combine += (int64_t)frow;
            } else {
                st = moe_put(m, &m->put_combine, src, x->final + (size_t)t * frow, acc,
                                  frow);
                if (src / L != x->dom)
                    x->cross_combine += (int64_t)frow;
            }
        }
    }
    /* Accumulators complete for the later domains' gateways. */
    for (int b = x->dom + 1; b < ND && st == EPX_OK; b++) {
        int g = b * L + x->li;
        st = epx__win_flush(m->win, g);
        if (st == EPX_OK)
            st = moe_put(m, &m->put_combine, g, x->cdone + sizeof(int32_t) * (size_t)x->dom,
                              &seq, sizeof(seq));
    }
    return st;
}

static epx_status_t hier_combine_send(epx_moe_t *m, epx_handle_t *h,
                                      const epx_combine_args_t *a,
                                      int32_t *word)
{
    *word = MOE_COMB_PUSHED;
    const int32_t seq = (int32_t)(m->n_comb + 1);
    epx_status_t st = send_partials(m, h, a, seq);
    if (st == EPX_OK)
        st = chain(m, h, seq);
    return st;   /* the first failing put's status (and message) */
}

static void hier_combine_out(epx_moe_t *m, epx_handle_t *h, epx_tensor_t *out,
                             uint64_t call)
{
    (void)call;
    const moe_hier_t *x = m->hier;
    const size_t frow = x->acc_size * (size_t)m->H;
    const size_t orow = epx_dtype_size(out->dtype) * (size_t)m->H;
    for (int64_t t = 0; t < h->T; t++)
        moe_reduce_out(m, moe_local(m, x->final) + (size_t)t * frow,
                       h->ndest[t], (char *)out->data + (size_t)t * orow,
                       out->dtype);
}

const moe_ht_path_t moe_hier_path = {
    moe_hier_plan, moe_hier_dispatch, hier_combine_send, hier_combine_out
};
