/*
 * Hierarchical two-hop on device ranks (EPX_MOE_HIERARCHICAL; src/cuda/
 * README.md "Hierarchical two-hop", and "... over NCCL"): the domains from
 * the communicator's topology, the regions after the geometry's, and the
 * order of the kernels of kern_hier.cu; over NCCL also the stagings and
 * the grouped exchanges of proto/hier_nccl.h with their host sizes.
 * Never run on a GPU yet.
 */
#include <stdlib.h>
#include <string.h>
#include "cuda/hier_int.h"
#include "cuda/cuda_int.h"
#include "cuda/nccl_ex.h"
#include "proto/hier_nccl.h"
#include "core/module.h"
#include "util/util.h"

struct gpu_hier {
    epxk_hier_t k;
    size_t total;
    /* over NCCL (NULL: windows) */
    epx_nccl_t *nc;
    char *nbuf;                 /* the device stagings, one allocation */
    int32_t *h_blk;             /* pinned: the count blocks sent, received,
                                   read back with the count matrix */
    int32_t *sblk, *rblk;       /* the last agreed dispatch's blocks */
    int32_t *cnt;               /* and its count matrix [R][cnt_ints] */
    epx_nccl_p2p_t *ops;
    int nops;
    int64_t cross[2];           /* bytes across domains, counted here */
};

epx_status_t gpu_hier_create(epx_comm_t *comm, const proto_geom_t *g,
                             gpu_hier_t **out)
{
    const char *name = "";
    *out = NULL;
    int32_t *dom = malloc(sizeof(int32_t) * (size_t)g->R);
    if (!dom)
        return epx__error(EPX_ERR_NOMEM, "cuda moe: out of memory");
    /* collective: before anything may fail on one rank alone */
    epx_status_t st = epx__comm_rank_domains(comm, dom, &name);
    gpu_hier_t *h = st == EPX_OK ? calloc(1, sizeof(*h)) : NULL;
    if (!h) {
        free(dom);
        return st != EPX_OK ? st : epx__error(EPX_ERR_NOMEM, "cuda moe: out "
                                                            "of memory");
    }
    const int L = proto_hier_blocks(dom, g->R);
    free(dom);
    if (!L) {
        free(h);
        return epx__error(EPX_ERR_UNSUPPORTED,
                          "cuda moe: EPX_MOE_HIERARCHICAL needs the ranks' "
                          "domains (topology '%s') to be contiguous blocks "
                          "of equal size", name);
    }
    proto_hier_shape(&h->k.x, g->R, L, g->K, g->rank);
    h->k.rec_hdr = proto_hier_rec_hdr(g->K);
    h->k.rec_bytes = proto_hier_rec_bytes(g->K, g->xrow_bytes +
                                                    g->scale_bytes +
                                                    g->gscale_bytes);
    proto_hier_layout(&h->k.w, &h->k.x, g->total, g->maxT, g->H,
                      h->k.rec_bytes, g->row_bytes,
                      proto_hier_acc_size(g->esize));
    h->total = (size_t)h->k.w.end;
    *out = h;
    return EPX_OK;
}

size_t gpu_hier_total(const gpu_hier_t *h)
{
    return h->total;
}

epx_status_t gpu_hier_setup(gpu_hier_t *h, cudaStream_t st)
{
    const size_t n = sizeof(int32_t) * (size_t)h->k.x.ND;
    epx_status_t s = epx__cuda_err(cudaMalloc((void **)&h->k.count, n),
                                   "cudaMalloc");
    if (s == EPX_OK)
        s = epx__cuda_err(cudaMemsetAsync(h->k.count, 0, n, st),
                          "cudaMemsetAsync");
    if (s == EPX_OK)
        s = epx__cuda_err(cudaMalloc((void **)&h->k.cross,
                                     2 * sizeof(unsigned long long)),
                          "cudaMalloc");
    if (s == EPX_OK)
        s = epx__cuda_err(cudaMemsetAsync(h->k.cross, 0,
                                          2 * sizeof(unsigned long long), st),
                          "cudaMemsetAsync");
    if (s == EPX_OK)
        s = epx__cuda_err((cudaError_t)epxk_hier_preload(),
                          "loading the kernels");
    return s;
}

void gpu_hier_destroy(gpu_hier_t *h)
{
    if (!h)
        return;
    cudaFree(h->k.count);
    cudaFree(h->k.cross);
    cudaFree(h->nbuf);
    cudaFreeHost(h->h_blk);
    free(h->sblk);
    free(h->rblk);
    free(h->cnt);
    free(h->ops);
    free(h);
}

/* Over NCCL (proto/hier_nccl.h): the stagings after the window's regions
 * (which receive hop 1's records, the partials and the chain's
 * accumulators as over windows). */
epx_status_t gpu_hier_nccl(gpu_hier_t *h, epx_nccl_t *nc,
                           const proto_geom_t *g, cudaStream_t st)
{
    epxk_hier_t *k = &h->k;
    const int ND = k->x.ND, CB = proto_hier_cb_len(&k->x);
    const int64_t acc = proto_hier_acc_size(g->esize);
    const int64_t blk = (int64_t)ND * CB * 4;
    k->crow = proto_hier_crow_bytes(g->H, acc);
    /* each region 256-aligned: the count blocks (sent, then received
     * right after them: one read-back copies both), counters, then the
     * stagings */
    const int64_t sz[10] = {
        2 * blk, 0, 2 * (int64_t)ND * 4, ND * g->maxT * k->rec_bytes,
        ND * k->w.P * k->rec_bytes, g->ents * k->rec_bytes,
        g->ents * g->row_bytes, ND * g->maxT * k->crow,
        ND * g->maxT * k->crow, g->maxT * k->crow };
    int64_t off[10], at = 0;
    for (int i = 0; i < 10; i++) {
        off[i] = at;
        at = proto_round_up(at + sz[i], 256);
    }
    h->nc = nc;
    h->nops = 2 * k->x.L * ND + 4 * ND + 8;
    h->ops = malloc(sizeof(epx_nccl_p2p_t) * (size_t)h->nops);
    h->sblk = malloc((size_t)(2 * blk));
    h->rblk = h->sblk ? h->sblk + (int64_t)ND * CB : NULL;
    h->cnt = malloc(sizeof(int32_t) * (size_t)g->R * (size_t)g->cnt_ints);
    if (!h->ops || !h->sblk || !h->cnt)
        return epx__error(EPX_ERR_NOMEM, "cuda moe: out of memory");
    epx_status_t s = epx__cuda_err(cudaMalloc((void **)&h->nbuf, (size_t)at),
                                   "cudaMalloc");
    if (s == EPX_OK)
        s = epx__cuda_err(cudaMemsetAsync(h->nbuf, 0, (size_t)at, st),
                          "cudaMemsetAsync");
    if (s == EPX_OK)
        s = epx__cuda_err(cudaMallocHost((void **)&h->h_blk, (size_t)(2 * blk)),
                          "cudaMallocHost");
    if (s != EPX_OK)
        return s;
    k->nccl = 1;
    k->cb_send = (int32_t *)(h->nbuf + off[0]);
    k->cb_recv = k->cb_send + (int64_t)ND * CB;   /* h_blk's second half */
    k->ccount = (int32_t *)(h->nbuf + off[2]);
    k->sstage = h->nbuf + off[3];
    k->fstage = h->nbuf + off[4];
    k->rfwd = h->nbuf + off[5];
    k->pstage = h->nbuf + off[6];
    k->csend = h->nbuf + off[7];
    k->rchain = h->nbuf + off[8];
    k->rfinal = h->nbuf + off[9];
    return EPX_OK;
}

epx_status_t gpu_hier_cross_bytes(const gpu_hier_t *h, cudaStream_t st,
                                  int64_t *dispatch, int64_t *combine)
{
    unsigned long long v[2] = { 0, 0 };
    /* the calls queued so far first (copies into pageable memory are not
     * to wait behind kernels that wait for peers), then the counters */
    epx_status_t s = epx__cuda_err(cudaStreamSynchronize(st),
                                   "cudaStreamSynchronize");
    if (s == EPX_OK)
        s = epx__cuda_err(cudaMemcpyAsync(v, h->k.cross, sizeof(v),
                                          cudaMemcpyDeviceToHost, st),
                          "cudaMemcpyAsync");
    if (s == EPX_OK)
        s = epx__cuda_err(cudaStreamSynchronize(st), "cudaStreamSynchronize");
    if (s == EPX_OK) {   /* over NCCL the host counts (h->cross) */
        *dispatch = (int64_t)v[0] + h->cross[0];
        *combine = (int64_t)v[1] + h->cross[1];
    }
    return s;
}

static epx_status_t launch(const gpu_hier_t *h, int which,
                           const proto_geom_t *g, const epxk_call_t *c,
                           int blocks, cudaStream_t st)
{
    return epx__cuda_err((cudaError_t)epxk_hier_launch(which, g, c, &h->k,
                                                       blocks, st),
                         "kernel launch");
}

/* One grouped exchange of the ops gathered (none: nothing). */
static epx_status_t nccl_group(gpu_hier_t *h, int n, cudaStream_t st)
{
    return epx__nccl_p2p(h->nc, h->ops, n, st);
}

static void op_add(gpu_hier_t *h, int *n, int peer, int recv, void *buf,
                   int64_t bytes)
{
    if (bytes > 0)
        h->ops[(*n)++] = (epx_nccl_p2p_t){ peer, recv, buf, (size_t)bytes };
}

/* Over NCCL, in the dispatch after the count matrix's exchange (on every
 * rank, a refused call's too, so the NCCL operations pair up): the
 * records and count blocks (zeroed first), the blocks to and from each
 * domain's rank of this local index, and their read-back, which the
 * engine's one synchronisation waits for. */
static epx_status_t nccl_counts(gpu_hier_t *h, const proto_geom_t *g,
                                const epxk_call_t *c, int blocks,
                                cudaStream_t st)
{
    const epxk_hier_t *k = &h->k;
    const int ND = k->x.ND, L = k->x.L, li = k->x.li;
    const int64_t CB = proto_hier_cb_len(&k->x), blk = (int64_t)ND * CB * 4;
    epx_status_t s = epx__cuda_err(cudaMemsetAsync(k->cb_send, 0, (size_t)blk,
                                                   st), "cudaMemsetAsync");
    if (s == EPX_OK)
        s = launch(h, EPXK_HIERN_STAGE, g, c, blocks, st);
    int n = 0;
    for (int D = 0; D < ND; D++) {   /* block D to domain D's rank, its back */
        op_add(h, &n, D * L + li, 0, k->cb_send + D * CB, CB * 4);
        op_add(h, &n, D * L + li, 1, k->cb_recv + D * CB, CB * 4);
    }
    if (s == EPX_OK)
        s = nccl_group(h, n, st);
    if (s == EPX_OK)
        s = epx__cuda_err(cudaMemcpyAsync(h->h_blk, k->cb_send,
                                          (size_t)(2 * blk),
                                          cudaMemcpyDeviceToHost, st),
                          "cudaMemcpyAsync");
    return s;
}

epx_status_t gpu_hier_dispatch(const gpu_hier_t *h, const proto_geom_t *g,
                               const epxk_call_t *c, int blocks,
                               cudaStream_t st)
{
    if (h->nc)
        return nccl_counts((gpu_hier_t *)h, g, c, blocks, st);
    epx_status_t s = launch(h, EPXK_HIER_STAGE, g, c, blocks, st);
    return s != EPX_OK ? s : launch(h, EPXK_HIER_FWD, g, c, blocks, st);
}

epx_status_t gpu_hier_nccl_recv(gpu_hier_t *h, const proto_geom_t *g,
                                const epxk_call_t *c, char *local,
                                const int32_t *cnt, int blocks,
                                cudaStream_t st)
{
    epxk_hier_t *k = &h->k;
    const proto_hier_t *x = &k->x;
    const int ND = x->ND, L = x->L, li = x->li, me = g->rank;
    const int64_t CB = proto_hier_cb_len(x), recb = k->rec_bytes;
    const int64_t wrow = g->xrow_bytes + g->scale_bytes + g->gscale_bytes;
    /* the counts this call's exchanges and its combine go by */
    memcpy(h->sblk, h->h_blk, sizeof(int32_t) * (size_t)(2 * ND * CB));
    memcpy(h->cnt, cnt, sizeof(int32_t) * (size_t)g->R * (size_t)g->cnt_ints);
    cnt = h->cnt;
    /* hop 1: records to each remote domain's gateway, theirs here (into
     * the staging regions, per source domain) */
    int n = 0;
    for (int D = 0; D < ND; D++) {
        if (D == x->dom)
            continue;
        proto_hier_t gx;
        proto_hier_shape(&gx, g->R, L, g->K, D * L + li);
        const int64_t ns = proto_hier_cb_staged(&gx, x->dom, h->sblk + D * CB);
        h->cross[0] += ns * wrow;
        op_add(h, &n, D * L + li, 0, k->sstage + D * g->maxT * recb,
               ns * recb);
        op_add(h, &n, D * L + li, 1,
               local + k->w.stage + D * g->maxT * recb,
               proto_hier_cb_staged(x, D, h->rblk + D * CB) * recb);
    }
    epx_status_t s = nccl_group(h, n, st);
    if (s == EPX_OK)
        s = launch(h, EPXK_HIERN_PACK, g, c, blocks, st);
    /* hop 2: to each member its message, from each gateway of the domain
     * its message here */
    n = 0;
    const int m0 = x->dom * L;
    for (int m = m0; m < m0 + L; m++) {
        op_add(h, &n, m, 0,
               k->fstage + proto_hier_fwd_at(g, x, cnt, me, m) * recb,
               proto_hier_msg_fwd_total(g, x, cnt, me, m) * recb);
        op_add(h, &n, m, 1,
               k->rfwd + proto_hier_fwd_rat(g, x, cnt, m, me) * recb,
               proto_hier_msg_fwd_total(g, x, cnt, m, me) * recb);
    }
    if (s == EPX_OK)
        s = nccl_group(h, n, st);
    k->n = proto_hier_fwd_rat(g, x, cnt, m0 + L, me);
    if (s == EPX_OK)
        s = launch(h, EPXK_HIERN_SCATTER, g, c, blocks, st);
    return s;
}

/* Combine over NCCL: the partials (hop 2 reversed, each (gateway, source
 * domain) segment into the gateway's part at its first slot), then the
 * chain, a grouped exchange per domain ascending: this domain's round
 * lands the accumulators received so far and runs the chain kernel, then
 * sends its messages (to each later domain's gateway, then home to each
 * source, in message order); every round receives what comes here from
 * that domain's rank of this local index, the accumulators first, then
 * the finished sums. */
static epx_status_t nccl_combine(gpu_hier_t *h, const proto_geom_t *g,
                                 const epxk_call_t *c, char *local,
                                 int blocks, cudaStream_t st)
{
    epxk_hier_t *k = &h->k;
    const proto_hier_t *x = &k->x;
    const int ND = x->ND, L = x->L, li = x->li, me = g->rank;
    const int m0 = x->dom * L;
    const int32_t *cnt = h->cnt;
    epx_status_t s = launch(h, EPXK_HIER_PUT, g, c, blocks, st);
    int n = 0;
    for (int p = m0; p < m0 + L; p++)
        for (int b = 0; b < ND; b++) {
            int64_t ns, nr;
            /* as member: to gateway p; as gateway: from member p */
            const int64_t at = proto_hier_fwd_rat(g, x, cnt, p, me) +
                               proto_hier_msg_seg(g, x, cnt, p, me, b, &ns);
            op_add(h, &n, p, 0, k->pstage + at * g->row_bytes,
                   ns * g->row_bytes);
            proto_hier_msg_seg(g, x, cnt, me, p, b, &nr);
            op_add(h, &n, p, 1,
                   local + k->w.part +
                       proto_hier_slot(g, x, cnt, k->w.P, b * L + li, p, 0) *
                           g->row_bytes,
                   nr * g->row_bytes);
        }
    if (s == EPX_OK)
        s = nccl_group(h, n, st);
    const int64_t frow = g->H * proto_hier_acc_size(g->esize);
    int64_t cin = 0, fin = 0;
    for (int D = 0; s == EPX_OK && D < ND; D++) {
        n = 0;
        if (D == x->dom) {
            k->n = cin;
            s = launch(h, EPXK_HIERN_LAND_CHAIN, g, c, blocks, st);
            if (s == EPX_OK)
                s = launch(h, EPXK_HIERN_CHAIN, g, c, blocks, st);
            for (int q = 0; q < 2 * ND; q++) {
                const int64_t nq = proto_hier_cmsg_n(x, h->rblk, q);
                const int to = (q < ND ? q : q - ND) * L + li;
                if (q < ND || q - ND != x->dom)
                    h->cross[1] += nq * frow;
                op_add(h, &n, to, 0,
                       k->csend + proto_hier_cmsg_at(x, h->rblk, q) * k->crow,
                       nq * k->crow);
            }
        }
        const int64_t nc = D < x->dom ? proto_hier_cmsg_in(x, h->rblk, D) : 0;
        const int64_t nf = proto_hier_fmsg_in(x, h->sblk, D);
        op_add(h, &n, D * L + li, 1, k->rchain + cin * k->crow,
               nc * k->crow);
        op_add(h, &n, D * L + li, 1, k->rfinal + fin * k->crow,
               nf * k->crow);
        cin += nc;
        fin += nf;
        if (s == EPX_OK)
            s = nccl_group(h, n, st);
    }
    k->n = 0;
    return s;
}

epx_status_t gpu_hier_combine_send(gpu_hier_t *h, const proto_geom_t *g,
                                   const epxk_call_t *c, char *local,
                                   int blocks, cudaStream_t st)
{
    if (h->nc)
        return nccl_combine(h, g, c, local, blocks, st);
    epx_status_t s = launch(h, EPXK_HIER_PUT, g, c, blocks, st);
    return s != EPX_OK ? s : launch(h, EPXK_HIER_CHAIN, g, c, blocks, st);
}

epx_status_t gpu_hier_combine_recv(gpu_hier_t *h, const proto_geom_t *g,
                                   const epxk_call_t *c, int blocks,
                                   cudaStream_t st)
{
    epx_status_t s = EPX_OK;
    if (h->nc) {   /* the finished sums received, at their tokens */
        int64_t nf = 0;
        for (int D = 0; D < h->k.x.ND; D++)
            nf += proto_hier_fmsg_in(&h->k.x, h->sblk, D);
        h->k.n = nf;
        s = launch(h, EPXK_HIERN_LAND_FINAL, g, c, blocks, st);
        h->k.n = 0;
    }
    return s != EPX_OK ? s : launch(h, EPXK_HIER_OUT, g, c, blocks, st);
}
