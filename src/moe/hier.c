/*
 * Hierarchical two-hop dispatch (see hier.h): domains, window regions,
 * per-handle bases, staging across domains and forwarding inside them.
 */
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "moe/hier.h"
#include "cuda/gpu.h"

epx_status_t moe_hier_init(epx_moe_t *m)
{
    const epx_topo_t *t;
    epx_status_t st = epx_comm_topology(m->comm, &t);
    if (st != EPX_OK)
        return st;
    const int R = m->R;
    int32_t *dom = malloc(sizeof(int32_t) * (size_t)R);
    if (!dom)
        return epx__error(EPX_ERR_NOMEM, "moe: out of memory (hierarchical)");
    for (int r = 0; r < R; r++)
        dom[r] = epx_topo_rank_domain(t, r);
    const int L = proto_hier_blocks(dom, R);
    free(dom);
    if (!L)
        return epx__error(EPX_ERR_UNSUPPORTED,
                          "moe: EPX_MOE_HIERARCHICAL needs the ranks' domains "
                          "(topology '%s') to be contiguous blocks of equal "
                          "size", epx_topo_name(t));
    moe_hier_t *x = calloc(1, sizeof(*x));
    if (!x)
        return epx__error(EPX_ERR_NOMEM, "moe: out of memory (hierarchical)");
    m->hier = x;
    proto_hier_shape(&x->c, R, L, m->K, m->rank);
    x->L = L;
    x->ND = x->c.ND;
    x->dom = x->c.dom;
    x->li = x->c.li;
    x->maxdl = x->c.maxdl;
    x->rec_hdr = (size_t)proto_hier_rec_hdr(m->K);
    x->wrow = moe_wire_row_bytes(&m->fmt);
    x->rec_bytes = (size_t)proto_hier_rec_bytes(m->K, (int64_t)x->wrow);
    x->acc_size = m->p.dtype == EPX_DTYPE_FP64 ? sizeof(double) : sizeof(float);
    x->acc = malloc(x->acc_size * (size_t)m->H);
    x->wire = malloc(m->row_bytes);
    x->rec = aligned_alloc(16, x->rec_bytes);
    if (!x->acc || !x->wire || !x->rec)
        return epx__error(EPX_ERR_NOMEM, "moe: out of memory (hierarchical)");
    return EPX_OK;
}

void moe_hier_free(epx_moe_t *m)
{
    moe_hier_t *x = m->hier;
    if (!x)
        return;
    free(x->acc);
    free(x->wire);
    free(x->rec);
    free(x);
    m->hier = NULL;
}

size_t moe_hier_window(epx_moe_t *m, size_t at)
{
    moe_hier_t *x = m->hier;
    if (!x)
        return at;
    proto_hier_win_t w;
    proto_hier_layout(&w, &x->c, (int64_t)at, m->maxT, m->H,
                      (int64_t)x->rec_bytes, (int64_t)m->row_bytes,
                      (int64_t)x->acc_size);
    x->P = w.P;
    x->shdr = (size_t)w.shdr;
    x->pdone = (size_t)w.pdone;
    x->cdone = (size_t)w.cdone;
    x->stage = (size_t)w.stage;
    x->part = (size_t)w.part;
    x->chain = (size_t)w.chain;
    x->final = (size_t)w.final;
    return (size_t)w.end;
}

epx_status_t moe_hier_wait_word(epx_moe_t *m, const int32_t *word,
                                int32_t want, const char *what, int peer)
{
    double deadline = 0;
    for (long spins = 0; __atomic_load_n(word, __ATOMIC_ACQUIRE) != want;
         spins++) {
        if (spins % 64 == 63)
            epx__win_progress(m->win);   /* network puts land by progress */
        if (spins < 1000)
            continue;
        epx_status_t alive = epx__comm_alive(m->comm);
        if (alive != EPX_OK) {
            m->broken = 1;
            return alive;
        }
        if (deadline == 0)
            deadline = epx__now() + epx__comm_timeout(m->comm);
        if (epx__now() > deadline) {
            m->broken = 1;
            return moe_diagnose(m, epx__error(EPX_ERR_TIMEOUT, "%s: rank %d: "
                                              "nothing from rank %d after "
                                              "%.1f s", what, m->rank, peer,
                                              epx__comm_timeout(m->comm)),
                                what);
        }
        epx__win_progress(m->win);
        sched_yield();
    }
    return EPX_OK;
}

void moe_hier_handle_free(epx_handle_t *h)
{
    if (!h->hier_h)
        return;
    free(h->hier_h->entbase);
    free(h->hier_h->rowbase);
    free(h->hier_h->slotbase);
    free(h->hier_h);
    h->hier_h = NULL;
}

/* From the count matrix of this call (proto/hier.h): for each source this
 * rank forwards (one per domain, with its local index), its first entry
 * at each member, its first expert-major row at each unit of the domain
 * and its partials' first slot here for each member. */
epx_status_t moe_hier_plan(epx_moe_t *m, epx_handle_t *h)
{
    moe_hier_t *x = m->hier;
    const int L = x->L, ND = x->ND, U = m->U, d0 = x->dom * L;
    if (!h->hier_h) {
        moe_hier_h_t *hh = calloc(1, sizeof(*hh));
        if (hh) {
            hh->entbase = malloc(sizeof(int64_t) * (size_t)ND * (size_t)L);
            hh->rowbase = malloc(sizeof(int64_t) * (size_t)ND * (size_t)U);
            hh->slotbase = malloc(sizeof(int64_t) * (size_t)ND * (size_t)L);
        }
        h->hier_h = hh;
        if (!hh || !hh->entbase || !hh->rowbase || !hh->slotbase) {
            moe_hier_handle_free(h);
            m->broken = 1;
            return epx__error(EPX_ERR_NOMEM, "dispatch: out of memory");
        }
    }
    const proto_geom_t *g = &m->g;
    const int32_t *cnt = moe_cnt(m, m->n_counts - 1);
    for (int a = 0; a < ND; a++) {
        const int src = proto_hier_gateway(&x->c, m->rank, a);
        int64_t *e = h->hier_h->entbase + (size_t)a * (size_t)L,
                *r = h->hier_h->rowbase + (size_t)a * (size_t)U,
                *sl = h->hier_h->slotbase + (size_t)a * (size_t)L;
        for (int j = 0; j < L; j++) {
            const int d = d0 + j;
            e[j] = proto_hier_entbase(g, cnt, src, d);
            sl[j] = proto_hier_slot(g, &x->c, cnt, x->P, src, d, 0);
            proto_hier_rowbases(g, cnt, src, m->first[d], moe_nlocal(m, d), r);
        }
    }
    return EPX_OK;
}

/* One token as a gateway sees it: its record header (proto/hier.h) and
 * its row in the wire format (data, scales, row scale: wire.h; the last
 * two absent for the native wire). */
typedef struct hrec {
    int32_t t;
    const int32_t *rec;        /* header: t, then per choice unit, weight,
                                  positions */
    const int32_t *ids;        /* [K] units, -1 none */
    const float *w;            /* [K] */
    const char *q, *s, *g;     /* data, scales, row scale */
} hrec_t;

/* A staging record: header, then the row's wire parts in the order row
 * scale, scales, data, so that fp32 scales stay aligned. */
static void rec_parts(const epx_moe_t *m, const char *p, hrec_t *r)
{
    const moe_wire_t *f = &m->fmt;
    r->rec = (const int32_t *)p;
    r->t = r->rec[0];
    r->ids = r->rec + PROTO_HIER_REC_IDS(m->K);
    r->w = (const float *)(r->rec + PROTO_HIER_REC_W(m->K));
    r->g = p + m->hier->rec_hdr;
    r->s = r->g + f->global_bytes;
    r->q = r->s + f->scale_bytes;
}

static void rec_of_stage(const epx_moe_t *m, int a, int64_t k, hrec_t *r)
{
    const moe_hier_t *x = m->hier;
    rec_parts(m, moe_local(m, x->stage) +
                 ((size_t)a * (size_t)m->maxT + (size_t)k) * x->rec_bytes, r);
}

/* A token's row to row r of member d: the wire bytes as they arrived. */
static epx_status_t put_row(epx_moe_t *m, int d, int64_t r, const hrec_t *rc)
{
    const moe_wire_t *f = &m->fmt;
    const proto_geom_t *o = &m->g;
    epx_status_t st = moe_put(m, &m->put_dispatch, d, o->off_rows + (size_t)r * f->data_bytes,
                                   rc->q, f->data_bytes);
    if (f->scale_bytes)
        st = st != EPX_OK ? st : moe_put(m, &m->put_dispatch, d, o->off_scales + (size_t)r * f->scale_bytes,
                           rc->s, f->scale_bytes);
    if (f->global_bytes)
        st = st != EPX_OK ? st : moe_put(m, &m->put_dispatch, d, o->off_gscale + (size_t)r * f->global_bytes,
                           rc->g, f->global_bytes);
    return st;
}

/* Forward one token of source src to its destinations in
 * this domain, at the flat path's places: the source's bases (x->eb,
 * x->rb) plus the token's positions its record carries; its partials come
 * back at the slots x->sb gives (proto/hier.h). */
static epx_status_t forward(epx_moe_t *m, int src, const hrec_t *rc)
{
    moe_hier_t *x = m->hier;
    const int K = m->K, L = x->L, d0 = x->dom * L;
    const int tm = m->p.layout == EPX_LAYOUT_TOKEN_MAJOR;
    const proto_geom_t *o = &m->g;
    const int64_t *eb = x->eb, *rb = x->rb, *sb = x->sb;
    const proto_ids_t ids = proto_hier_rec_ids(rc->rec, K, m->U);
    int32_t dst[EPX_MAX_TOPK];
    int32_t ent[3 + EPX_MAX_TOPK], lidx[EPX_MAX_TOPK];
    float lw[EPX_MAX_TOPK];
    epx_status_t st = EPX_OK;
    int nd = proto_walk_dests(o, &ids, NULL, m->u2r, 0, NULL, dst, NULL);
    for (int j = 0; j < nd; j++) {
        int d = dst[j], nloc = 0;
        if (d / L != x->dom)
            continue;
        const int32_t dp = proto_hier_rec_dpos(rc->rec, K, m->u2r, d);
        int64_t e_at = eb[d - d0] + dp;
        ent[0] = src;
        ent[1] = (int32_t)(sb[d - d0] + dp);
        proto_meta_topk(o, &ids, rc->w, m->u2r, 0, d, m->first[d], lidx, lw);
        for (int k = 0; k < K && !tm; k++) {
            if (lidx[k] < 0)
                continue;
            int64_t r = proto_hier_row(rb, rc->rec, K, k);
            ent[3 + nloc++] = (int32_t)r;
            st = st != EPX_OK ? st : put_row(m, d, r, rc);
            st = st != EPX_OK ? st : moe_put(m, &m->put_dispatch, d, o->off_src_rank + (size_t)r * 4, &src, 4);
            st = st != EPX_OK ? st : moe_put(m, &m->put_dispatch, d, o->off_src_token + (size_t)r * 4, &rc->t, 4);
            st = st != EPX_OK ? st : moe_put(m, &m->put_dispatch, d, o->off_w + (size_t)r * 4, &lw[k], 4);
        }
        ent[2] = nloc;
        st = st != EPX_OK ? st : moe_put(m, &m->put_dispatch, d,
                           o->off_entries + (size_t)e_at * (size_t)m->g.ent_ints * 4,
                           ent, sizeof(int32_t) * (size_t)(3 + nloc));
        if (!tm)
            continue;
        st = st != EPX_OK ? st : put_row(m, d, e_at, rc);
        st = st != EPX_OK ? st : moe_put(m, &m->put_dispatch, d, o->off_src_rank + (size_t)e_at * 4, &src, 4);
        st = st != EPX_OK ? st : moe_put(m, &m->put_dispatch, d, o->off_src_token + (size_t)e_at * 4, &rc->t, 4);
        st = st != EPX_OK ? st : moe_put(m, &m->put_dispatch, d, o->off_idx + (size_t)e_at * K * 4, lidx,
                           sizeof(int32_t) * (size_t)K);
        st = st != EPX_OK ? st : moe_put(m, &m->put_dispatch, d, o->off_w + (size_t)e_at * K * 4, lw,
                           sizeof(float) * (size_t)K);
    }
    return st;   /* the first failing put's status (and message) */
}

/* Source src's rows are all in place at every member: its completion word
 * and data signal, on its behalf. */
static epx_status_t finish_source(epx_moe_t *m, int src, int32_t seq)
{
    const int L = m->hier->L, d0 = m->hier->dom * L;
    epx_status_t st = EPX_OK;
    for (int d = d0; d < d0 + L && st == EPX_OK; d++) {
        st = epx__win_flush(m->win, d);
        if (st == EPX_OK)
            st = epx__win_put_signal(m->win, d, moe_done_off(m, src), &seq,
                                     sizeof(seq), MOE_SIG_DATA, 1);
    }
    return st;
}

/* Source slot a's bases. */
static void set_bases(epx_moe_t *m, const epx_handle_t *h, int a)
{
    moe_hier_t *x = m->hier;
    x->eb = h->hier_h->entbase + (size_t)a * (size_t)x->L;
    x->rb = h->hier_h->rowbase + (size_t)a * (size_t)m->U;
    x->sb = h->hier_h->slotbase + (size_t)a * (size_t)x->L;
}

epx_status_t moe_hier_dispatch(epx_moe_t *m, epx_handle_t *h,
                               const epx_dispatch_args_t *a)
{
    moe_hier_t *x = m->hier;
    const int K = m->K, L = x->L, ND = x->ND, me = m->rank;
    const int32_t seq = (int32_t)(m->n_data + 1);
    const int quant = moe_wire_quantized(&m->fmt);
    const char *xs = a->x.data;
    const float *w = a->topk_weights.data;
    char *rec = x->rec;
    epx_status_t st = EPX_OK;
    int64_t *nst = calloc((size_t)ND, sizeof(int64_t));
    if (!nst) {
        m->broken = 1;
        return epx__error(EPX_ERR_NOMEM, "dispatch: out of memory");
    }
    /* 1. This rank's tokens, each put into its wire format once: one
     * staging record per remote destination domain, and forwarded to its
     * destinations in our own domain (source slot x->dom). */
    const proto_ids_t units = { h->idx, 0, K, m->U, { 0, NULL, NULL, NULL } };
    set_bases(m, h, x->dom);
    for (int64_t t = 0; t < h->T && st == EPX_OK; t++) {
        const int32_t *dst = h->dest + t * m->maxdest;
        if (h->ndest[t] == 0)
            continue;
        proto_hier_rec_fill(&m->g, &units, w, m->u2r, h->dest, h->pos,
                            h->epos, t, (int32_t *)rec);
        hrec_t rc;
        rec_parts(m, rec, &rc);
        if (quant)
            moe_wire_pack_row(&m->fmt, xs + (size_t)t * m->row_bytes,
                              (char *)rc.q, (char *)rc.s, (float *)rc.g,
                              moe_args_gscale(a));
        else
            rc.q = xs + (size_t)t * m->row_bytes;   /* no copy */
        for (int j = 0; j < h->ndest[t] && st == EPX_OK; j++) {
            int b = proto_hier_stage_dom(dst, j, L, x->dom);
            if (b < 0)
                continue;   /* own domain, or a domain already staged */
            int g = proto_hier_gateway(&x->c, me, b);
            size_t off = x->stage + ((size_t)x->dom * (size_t)m->maxT +
                                     (size_t)nst[b]++) * x->rec_bytes;
            if (quant)      /* header and wire parts in one put */
                st = moe_put(m, &m->put_dispatch, g, off, rec, x->rec_hdr + x->wrow);
            else {
                st = moe_put(m, &m->put_dispatch, g, off, rec, x->rec_hdr);
                if (st == EPX_OK)
                    st = moe_put(m, &m->put_dispatch, g, off + x->rec_hdr, rc.q,
                                      m->row_bytes);
            }
            x->cross_dispatch += (int64_t)x->wrow;
        }
        if (st == EPX_OK)
            st = forward(m, me, &rc);
    }
    for (int b = 0; b < ND && st == EPX_OK; b++) {
        if (b == x->dom)
            continue;
        int g = b * L + x->li;
        size_t off = x->shdr + (size_t)x->dom * 2 * sizeof(int32_t);
        int32_t n = (int32_t)nst[b];
        st = moe_put(m, &m->put_dispatch, g, off, &n, sizeof(n));
        if (st == EPX_OK)
            st = epx__win_flush(m->win, g);
        if (st == EPX_OK)
            st = moe_put(m, &m->put_dispatch, g, off + sizeof(int32_t), &seq, sizeof(seq));
    }
    free(nst);
    if (st == EPX_OK)
        st = finish_source(m, me, seq);
    /* 2. Forward the staged tokens of each other domain's source with our
     * local index, in domain order (each source's tokens in token order,
     * as the flat path writes them). */
    for (int b = 0; b < ND && st == EPX_OK; b++) {
        const int src = b * L + x->li;
        if (b == x->dom)
            continue;
        set_bases(m, h, b);
        const int32_t *hdr = (const int32_t *)moe_local(m, x->shdr) + 2 * b;
        st = moe_hier_wait_word(m, hdr + 1, seq, "dispatch", src);
        int32_t n = st == EPX_OK ? __atomic_load_n(hdr, __ATOMIC_ACQUIRE) : 0;
        for (int64_t k = 0; k < n && st == EPX_OK; k++) {
            hrec_t rc;
            rec_of_stage(m, b, k, &rc);
            st = forward(m, src, &rc);
        }
        if (st == EPX_OK)
            st = finish_source(m, src, seq);
    }
    return st;
}

epx_status_t epx_moe_cross_domain_bytes(const epx_moe_t *m, int64_t *dispatch,
                                        int64_t *combine)
{
    if (!m || !dispatch || !combine)
        return epx__error(EPX_ERR_INVALID, "moe: engine or output NULL");
    if (m->gpu)   /* the kernels' counters (src/cuda/hier.c) */
        return gpu_moe_cross_bytes(m->gpu, dispatch, combine);
    if (!m->hier)
        return epx__error(EPX_ERR_UNSUPPORTED, "moe: only hierarchical "
                          "engines count cross-domain bytes");
    *dispatch = m->hier->cross_dispatch;
    *combine = m->hier->cross_combine;
    return EPX_OK;
}
