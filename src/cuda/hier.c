/*
 * Hierarchical two-hop on device ranks (EPX_MOE_HIERARCHICAL; src/cuda/
 * README.md "Hierarchical two-hop", and "... over NCCL"): the domains from
 * the communicator's topology, the regions after the geometry's, and the
 * order of the kernels of kern_hier.cu; over NCCL also the stagings and
 * the grouped exchanges, whose layout and op lists proto/hier_nccl.h
 * builds (checked on the host by tests/proto/test_hier_core): here only
 * their regions mapped to device pointers and posted.
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
    proto_hier_stg_t l;         /* the stagings' layout */
    proto_hier_op_t *op;        /* a group's ops (proto/hier_nccl.h) */
    epx_nccl_p2p_t *ops;        /* and as posted */
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
    free(h->op);
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
    const size_t blk = sizeof(int32_t) * (size_t)ND * (size_t)CB;
    const int nops = proto_hier_ops_max(&k->x);
    proto_hier_stg_t *l = &h->l;
    proto_hier_stg_layout(l, g, &k->x, &k->w, k->rec_bytes);
    k->crow = l->crow;
    h->nc = nc;
    h->op = malloc(sizeof(proto_hier_op_t) * (size_t)nops);
    h->ops = malloc(sizeof(epx_nccl_p2p_t) * (size_t)nops);
    h->sblk = malloc(2 * blk);
    h->rblk = h->sblk ? h->sblk + (int64_t)ND * CB : NULL;
    h->cnt = malloc(sizeof(int32_t) * (size_t)g->R * (size_t)g->cnt_ints);
    if (!h->op || !h->ops || !h->sblk || !h->cnt)
        return epx__error(EPX_ERR_NOMEM, "cuda moe: out of memory");
    epx_status_t s = epx__cuda_err(cudaMalloc((void **)&h->nbuf,
                                              (size_t)l->total), "cudaMalloc");
    if (s == EPX_OK)
        s = epx__cuda_err(cudaMemsetAsync(h->nbuf, 0, (size_t)l->total, st),
                          "cudaMemsetAsync");
    if (s == EPX_OK)
        s = epx__cuda_err(cudaMallocHost((void **)&h->h_blk,
                                         (size_t)l->rb_bytes),
                          "cudaMallocHost");
    if (s != EPX_OK)
        return s;
    k->nccl = 1;
    k->cb_send = (int32_t *)(h->nbuf + l->off[PROTO_HIER_REG_CBS]);
    k->cb_recv = (int32_t *)(h->nbuf + l->off[PROTO_HIER_REG_CBR]);
    k->ccount = (int32_t *)(h->nbuf + l->off[PROTO_HIER_REG_CCOUNT]);
    k->sstage = h->nbuf + l->off[PROTO_HIER_REG_SSTAGE];
    k->fstage = h->nbuf + l->off[PROTO_HIER_REG_FSTAGE];
    k->rfwd = h->nbuf + l->off[PROTO_HIER_REG_RFWD];
    k->pstage = h->nbuf + l->off[PROTO_HIER_REG_PSTAGE];
    k->csend = h->nbuf + l->off[PROTO_HIER_REG_CSEND];
    k->rchain = h->nbuf + l->off[PROTO_HIER_REG_RCHAIN];
    k->rfinal = h->nbuf + l->off[PROTO_HIER_REG_RFINAL];
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

/* One grouped exchange of the n ops in h->op, each region mapped to its
 * device pointer (the stagings, or the window: local; none: nothing). */
static epx_status_t nccl_group(gpu_hier_t *h, int n, char *local,
                               cudaStream_t st)
{
    for (int i = 0; i < n; i++) {
        const proto_hier_op_t *o = &h->op[i];
        char *base = o->reg < PROTO_HIER_REG_NSTG ? h->nbuf : local;
        h->ops[i] = (epx_nccl_p2p_t){ o->peer, o->recv,
                                      base + h->l.off[o->reg] + o->off,
                                      (size_t)o->bytes };
    }
    return epx__nccl_p2p(h->nc, h->ops, n, st);
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
    const proto_hier_stg_t *l = &h->l;
    epx_status_t s = epx__cuda_err(
        cudaMemsetAsync(k->cb_send, 0, (size_t)l->size[PROTO_HIER_REG_CBS],
                        st), "cudaMemsetAsync");
    if (s == EPX_OK)
        s = launch(h, EPXK_HIERN_STAGE, g, c, blocks, st);
    const int n = proto_hier_ops_counts(l, &k->x, h->op);
    if (s == EPX_OK)
        s = nccl_group(h, n, NULL, st);
    if (s == EPX_OK)
        s = epx__cuda_err(cudaMemcpyAsync(h->h_blk, h->nbuf + l->rb_off,
                                          (size_t)l->rb_bytes,
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
    const proto_hier_stg_t *l = &h->l;
    const size_t blk = sizeof(int32_t) * (size_t)x->ND *
                       (size_t)proto_hier_cb_len(x);
    const int64_t wrow = g->xrow_bytes + g->scale_bytes + g->gscale_bytes;
    /* the counts this call's exchanges and its combine go by */
    memcpy(h->sblk, (const char *)h->h_blk + l->rb_sent, blk);
    memcpy(h->rblk, (const char *)h->h_blk + l->rb_recv, blk);
    memcpy(h->cnt, cnt, sizeof(int32_t) * (size_t)g->R * (size_t)g->cnt_ints);
    cnt = h->cnt;
    /* hop 1: records to each remote domain's gateway, theirs here */
    int n = proto_hier_ops_hop1(l, g, x, h->sblk, h->rblk, h->op);
    for (int i = 0; i < n; i++)
        if (!h->op[i].recv)
            h->cross[0] += h->op[i].bytes / l->recb * wrow;
    epx_status_t s = nccl_group(h, n, local, st);
    if (s == EPX_OK)
        s = launch(h, EPXK_HIERN_PACK, g, c, blocks, st);
    /* hop 2: to each member its message, from each gateway its message */
    n = proto_hier_ops_hop2(l, g, x, cnt, h->op);
    if (s == EPX_OK)
        s = nccl_group(h, n, local, st);
    k->n = proto_hier_fwd_rat(g, x, cnt, (x->dom + 1) * x->L, g->rank);
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
    const int ND = x->ND;
    epx_status_t s = launch(h, EPXK_HIER_PUT, g, c, blocks, st);
    int n = proto_hier_ops_parts(&h->l, g, x, h->cnt, h->op);
    if (s == EPX_OK)
        s = nccl_group(h, n, local, st);
    const int64_t frow = g->H * proto_hier_acc_size(g->esize);
    for (int D = 0; s == EPX_OK && D < ND; D++) {
        if (D == x->dom) {
            k->n = proto_hier_chain_before(x, h->rblk, D);
            s = launch(h, EPXK_HIERN_LAND_CHAIN, g, c, blocks, st);
            if (s == EPX_OK)
                s = launch(h, EPXK_HIERN_CHAIN, g, c, blocks, st);
            for (int q = 0; q < 2 * ND; q++)   /* all but home inside */
                if (q < ND || q - ND != x->dom)
                    h->cross[1] += proto_hier_cmsg_n(x, h->rblk, q) * frow;
        }
        n = proto_hier_ops_chain(&h->l, x, h->sblk, h->rblk, D, h->op);
        if (s == EPX_OK)
            s = nccl_group(h, n, local, st);
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
        h->k.n = proto_hier_final_before(&h->k.x, h->sblk, h->k.x.ND);
        s = launch(h, EPXK_HIERN_LAND_FINAL, g, c, blocks, st);
        h->k.n = 0;
    }
    return s != EPX_OK ? s : launch(h, EPXK_HIER_OUT, g, c, blocks, st);
}
