/*
 * Hierarchical two-hop dispatch (see hier.h): domains, window regions,
 * per-handle bases, staging across domains and forwarding inside them.
 */
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "moe/hier.h"

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

epx_status_t moe_hier_init(epx_moe_t *m)
{
    const epx_topo_t *t;
    epx_status_t st = epx_comm_topology(m->comm, &t);
    if (st != EPX_OK)
        return st;
    const int R = m->R;
    int L = 1;   /* the first domain's size */
    while (L < R && epx_topo_rank_domain(t, L) == epx_topo_rank_domain(t, 0))
        L++;
    int ok = R % L == 0;
    for (int r = 0; r < R && ok; r++) {
        int d = epx_topo_rank_domain(t, r), head = epx_topo_rank_domain(t, r / L * L);
        ok = d == head && d >= 0 &&
             (r % L != 0 || r == 0 || d != epx_topo_rank_domain(t, r - 1));
        for (int b = 0; ok && r % L == 0 && b < r / L; b++)
            ok = epx_topo_rank_domain(t, b * L) != d;
    }
    if (!ok)
        return epx__error(EPX_ERR_UNSUPPORTED,
                          "moe: EPX_MOE_HIERARCHICAL needs the ranks' domains "
                          "(topology '%s') to be contiguous blocks of equal "
                          "size", epx_topo_name(t));
    moe_hier_t *x = calloc(1, sizeof(*x));
    if (!x)
        return epx__error(EPX_ERR_NOMEM, "moe: out of memory (hierarchical)");
    m->hier = x;
    x->L = L;
    x->ND = R / L;
    x->dom = m->rank / L;
    x->li = m->rank % L;
    x->maxdl = m->K < L ? m->K : L;
    x->rec_hdr = (sizeof(int32_t) + 8 * (size_t)m->K + 15) & ~(size_t)15;
    x->wrow = moe_wire_row_bytes(&m->fmt);
    x->rec_bytes = (x->rec_hdr + x->wrow + 15) & ~(size_t)15;
    x->dcur = malloc(sizeof(int32_t) * (size_t)R);
    x->ucur = malloc(sizeof(int32_t) * (size_t)m->U);
    x->acc_size = m->p.dtype == EPX_DTYPE_FP64 ? sizeof(double) : sizeof(float);
    x->acc = malloc(x->acc_size * (size_t)m->H);
    x->wire = malloc(m->row_bytes);
    x->rec = aligned_alloc(16, x->rec_bytes);
    if (!x->dcur || !x->ucur || !x->acc || !x->wire || !x->rec)
        return epx__error(EPX_ERR_NOMEM, "moe: out of memory (hierarchical)");
    return EPX_OK;
}

void moe_hier_free(epx_moe_t *m)
{
    moe_hier_t *x = m->hier;
    if (!x)
        return;
    free(x->dcur);
    free(x->ucur);
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
    size_t ND = (size_t)x->ND, T = (size_t)m->maxT, H = (size_t)m->H;
    x->P = m->maxT * x->maxdl;
    x->shdr = at;  at = align64(at + ND * 2 * sizeof(int32_t));
    x->pdone = at; at = align64(at + (size_t)x->L * sizeof(int32_t));
    x->cdone = at; at = align64(at + ND * sizeof(int32_t));
    x->stage = at; at = align64(at + ND * T * x->rec_bytes);
    x->part = at;  at = align64(at + ND * (size_t)x->P * m->row_bytes);
    x->chain = at; at = align64(at + ND * T * H * x->acc_size);
    x->final = at; at = align64(at + T * H * x->acc_size);
    return at;
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
    free(h->hier_h);
    h->hier_h = NULL;
}

/* From the count matrix of this call (proto.h): for each source this
 * rank forwards (one per domain, with its local index), its first entry
 * at each member and its first expert-major row at each unit of the
 * domain — what the flat path's plan_offsets gives that source. */
epx_status_t moe_hier_plan(epx_moe_t *m, epx_handle_t *h)
{
    moe_hier_t *x = m->hier;
    const int L = x->L, ND = x->ND, U = m->U, d0 = x->dom * L;
    if (!h->hier_h) {
        moe_hier_h_t *hh = calloc(1, sizeof(*hh));
        if (hh) {
            hh->entbase = malloc(sizeof(int64_t) * (size_t)ND * (size_t)L);
            hh->rowbase = malloc(sizeof(int64_t) * (size_t)ND * (size_t)U);
        }
        h->hier_h = hh;
        if (!hh || !hh->entbase || !hh->rowbase) {
            moe_hier_handle_free(h);
            m->broken = 1;
            return epx__error(EPX_ERR_NOMEM, "dispatch: out of memory");
        }
    }
    const proto_geom_t *g = &m->g;
    const int32_t *cnt = moe_cnt(m, m->n_counts - 1);
    for (int a = 0; a < ND; a++) {
        const int src = a * L + x->li;
        int64_t *e = h->hier_h->entbase + (size_t)a * (size_t)L,
                *r = h->hier_h->rowbase + (size_t)a * (size_t)U;
        for (int j = 0; j < L; j++) {
            const int d = d0 + j;
            e[j] = proto_cnt_below(g, cnt, src, d);
            int64_t at = 0;   /* d's segments, in unit order */
            for (int i = 0; i < moe_nlocal(m, d); i++) {
                const int u = m->first[d] + i;
                r[u] = proto_expert_base_at(g, cnt, src, u, at);
                at = proto_expert_next(g, cnt, m->first[d], i, at);
            }
        }
    }
    return EPX_OK;
}

/* One token as a gateway sees it: its row in the wire format (data,
 * scales, row scale: wire.h; the last two absent for the native wire). */
typedef struct hrec {
    int32_t t;
    const int32_t *ids;        /* [K] units, -1 none */
    const float *w;            /* [K] */
    const char *q, *s, *g;     /* data, scales, row scale */
} hrec_t;

/* A staging record: header (t, ids, w), then the row's wire parts in the
 * order row scale, scales, data, so that fp32 scales stay aligned. */
static void rec_parts(const epx_moe_t *m, const char *p, hrec_t *r)
{
    const moe_wire_t *f = &m->fmt;
    r->t = *(const int32_t *)p;
    r->ids = (const int32_t *)p + 1;
    r->w = (const float *)(r->ids + m->K);
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

/* Forward one token of source (slot a, rank src) to its destinations in
 * this domain, at the flat path's places: the positions of proto.h's
 * walk over the source's tokens, continued from its last token here
 * (x->dcur, x->ucur), after the source's bases; *pc counts its partial
 * slots. */
static epx_status_t forward(epx_moe_t *m, int a, int src, const hrec_t *rc,
                            int64_t *pc)
{
    moe_hier_t *x = m->hier;
    const int K = m->K, L = x->L, d0 = x->dom * L;
    const int tm = m->p.layout == EPX_LAYOUT_TOKEN_MAJOR;
    const proto_geom_t *o = &m->g;
    const int64_t *eb = x->eb, *rb = x->rb;
    const proto_ids_t ids = { rc->ids, 0, K, m->U, { 0, NULL, NULL, NULL } };
    int32_t dst[EPX_MAX_TOPK], pos[EPX_MAX_TOPK], upos[EPX_MAX_TOPK];
    int32_t ent[3 + EPX_MAX_TOPK], lidx[EPX_MAX_TOPK];
    float lw[EPX_MAX_TOPK];
    epx_status_t st = EPX_OK;
    int nd = proto_walk_token(o, &ids, m->u2r, 0, INT32_MAX, x->ucur, upos,
                              x->dcur, dst, pos);
    for (int j = 0; j < nd; j++) {
        int d = dst[j], nloc = 0;
        if (d / L != x->dom)
            continue;
        int64_t e_at = eb[d - d0] + pos[j];
        ent[0] = src;
        ent[1] = (int32_t)((int64_t)a * x->P + (*pc)++);
        proto_meta_topk(o, &ids, rc->w, m->u2r, 0, d, m->first[d], lidx, lw);
        for (int k = 0; k < K && !tm; k++) {
            if (lidx[k] < 0)
                continue;
            int64_t r = proto_expert_row(o, rb, upos, rc->ids[k], 0, k);
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

/* Source slot a's bases, and its walk from its first token. */
static void reset_cursors(epx_moe_t *m, const epx_handle_t *h, int a)
{
    moe_hier_t *x = m->hier;
    x->eb = h->hier_h->entbase + (size_t)a * (size_t)x->L;
    x->rb = h->hier_h->rowbase + (size_t)a * (size_t)m->U;
    memset(x->dcur, 0, sizeof(int32_t) * (size_t)m->R);
    memset(x->ucur, 0, sizeof(int32_t) * (size_t)m->U);
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
    int64_t *nst = calloc((size_t)ND, sizeof(int64_t)), pc = 0;
    if (!nst) {
        m->broken = 1;
        return epx__error(EPX_ERR_NOMEM, "dispatch: out of memory");
    }
    /* 1. This rank's tokens, each put into its wire format once: one
     * staging record per remote destination domain, and forwarded to its
     * destinations in our own domain (source slot x->dom). */
    reset_cursors(m, h, x->dom);
    for (int64_t t = 0; t < h->T && st == EPX_OK; t++) {
        const int32_t *dst = h->dest + t * m->maxdest;
        if (h->ndest[t] == 0)
            continue;
        int32_t tt = (int32_t)t;
        memcpy(rec, &tt, 4);
        memcpy(rec + 4, h->idx + t * K, 4 * (size_t)K);
        memcpy(rec + 4 + 4 * (size_t)K, w + t * K, 4 * (size_t)K);
        hrec_t rc;
        rec_parts(m, rec, &rc);
        if (quant)
            moe_wire_pack_row(&m->fmt, xs + (size_t)t * m->row_bytes,
                              (char *)rc.q, (char *)rc.s, (float *)rc.g,
                              moe_args_gscale(a));
        else
            rc.q = xs + (size_t)t * m->row_bytes;   /* no copy */
        for (int j = 0; j < h->ndest[t] && st == EPX_OK; j++) {
            int b = dst[j] / L;
            if (b == x->dom || (j > 0 && dst[j - 1] / L == b))
                continue;   /* own domain, or a domain already staged */
            int g = b * L + x->li;
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
            st = forward(m, x->dom, me, &rc, &pc);
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
        pc = 0;
        reset_cursors(m, h, b);
        const int32_t *hdr = (const int32_t *)moe_local(m, x->shdr) + 2 * b;
        st = moe_hier_wait_word(m, hdr + 1, seq, "dispatch", src);
        int32_t n = st == EPX_OK ? __atomic_load_n(hdr, __ATOMIC_ACQUIRE) : 0;
        for (int64_t k = 0; k < n && st == EPX_OK; k++) {
            hrec_t rc;
            rec_of_stage(m, b, k, &rc);
            st = forward(m, b, src, &rc, &pc);
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
    if (!m->hier)
        return epx__error(EPX_ERR_UNSUPPORTED, "moe: only hierarchical "
                          "engines count cross-domain bytes");
    *dispatch = m->hier->cross_dispatch;
    *combine = m->hier->cross_combine;
    return EPX_OK;
}
