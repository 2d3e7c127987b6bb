/*
 * Hierarchical combine (see hier.h): partials to the gateway in the
 * domain, then per token a chain of fp32 accumulators through the
 * gateways of its destination domains in ascending order, the flat path's
 * sum term for term.
 */
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "moe/hier.h"
#include "moe/reduce.h"

/* Distinct domains of a token's destinations, ascending: the first, and
 * the one after `dom` (-1: none). */
static void chain_of(const epx_moe_t *m, const int32_t *ids, int dom,
                     int *first, int *next)
{
    const int L = m->hier->L;
    *first = -1;
    *next = -1;
    for (int k = 0; k < m->K; k++) {
        if (ids[k] < 0)
            continue;
        int b = m->u2r[ids[k]] / L;
        if (*first < 0 || b < *first)
            *first = b;
        if (b > dom && (*next < 0 || b < *next))
            *next = b;
    }
}

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
    const int L = x->L, ND = x->ND, K = m->K, H = m->H;
    const size_t frow = x->acc_size * (size_t)H;
    const int f64 = m->p.dtype == EPX_DTYPE_FP64;
    const int32_t *pdone = (const int32_t *)moe_local(m, x->pdone);
    const int32_t *cdone = (const int32_t *)moe_local(m, x->cdone);
    epx_status_t st = EPX_OK;
    for (int j = 0; j < L && st == EPX_OK; j++)
        st = moe_hier_wait_word(m, &pdone[j], seq, "combine", x->dom * L + j);
    for (int b = 0; b < x->dom && st == EPX_OK; b++)
        st = moe_hier_wait_word(m, &cdone[b], seq, "combine", b * L + x->li);
    int dst[EPX_MAX_TOPK];
    for (int b = 0; b < ND && st == EPX_OK; b++) {
        const int src = b * L + x->li;
        int64_t n = h->T, pc = 0;
        if (b != x->dom)
            n = __atomic_load_n((const int32_t *)moe_local(m, x->shdr) + 2 * b,
                                __ATOMIC_ACQUIRE);
        for (int64_t k = 0; k < n && st == EPX_OK; k++) {
            const int32_t *ids;
            int32_t t;
            if (b == x->dom) {
                t = (int32_t)k;
                ids = h->idx + k * K;
            } else {
                const char *p = moe_local(m, x->stage) +
                    ((size_t)b * (size_t)m->maxT + (size_t)k) * x->rec_bytes;
                t = *(const int32_t *)p;
                ids = (const int32_t *)p + 1;
            }
            /* Destinations here, ascending (as dispatch numbered them). */
            int nd = 0;
            for (int kk = 0; kk < K; kk++) {
                if (ids[kk] < 0 || m->u2r[ids[kk]] / L != x->dom)
                    continue;
                int d = m->u2r[ids[kk]], i = nd;
                while (i > 0 && dst[i - 1] > d)
                    i--;
                if (i > 0 && dst[i - 1] == d)
                    continue;
                memmove(dst + i + 1, dst + i, sizeof(int) * (size_t)(nd - i));
                dst[i] = d;
                nd++;
            }
            if (nd == 0)
                continue;
            int first, next;
            chain_of(m, ids, x->dom, &first, &next);
            void *acc = x->acc;
            if (first != x->dom)
                memcpy(acc, moe_local(m, x->chain) +
                       ((size_t)b * (size_t)m->maxT + (size_t)t) * frow, frow);
            for (int j = 0; j < nd; j++) {
                const char *p = moe_local(m, x->part) +
                    (size_t)((int64_t)b * x->P + pc++) * m->row_bytes;
                if (f64)
                    moe_accum_f64(acc, (const double *)p, NULL,
                                  first == x->dom && j == 0, H);
                else
                    moe_accum(acc, p, m->p.dtype, NULL,
                              first == x->dom && j == 0, H);
            }
            if (next >= 0) {
                st = moe_put(m, &m->put_combine, next * L + x->li, x->chain +
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
    for (int64_t t = 0; t < h->T; t++) {
        char *o = (char *)out->data + (size_t)t * orow;
        const char *fin = moe_local(m, x->final) + (size_t)t * frow;
        if (h->ndest[t] == 0)
            memset(o, 0, orow);
        else if (m->p.dtype == EPX_DTYPE_FP64)   /* out FP64 (moe_check_out) */
            memcpy(o, fin, frow);
        else
            moe_store(o, (const float *)fin, out->dtype, m->H);
    }
}

const moe_ht_path_t moe_hier_path = {
    moe_hier_plan, moe_hier_dispatch, hier_combine_send, hier_combine_out
};
