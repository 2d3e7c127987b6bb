/*
 * Hierarchical two-hop on device ranks (EPX_MOE_HIERARCHICAL, windows
 * backend; src/cuda/README.md "Hierarchical two-hop"): the domains from the
 * communicator's topology, the regions after the geometry's, and the order
 * of the kernels of kern_hier.cu.  Never run on a GPU yet.
 */
#include <stdlib.h>
#include "cuda/hier_int.h"
#include "cuda/cuda_int.h"
#include "core/module.h"
#include "util/util.h"

struct gpu_hier {
    epxk_hier_t k;
    size_t total;
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
    free(h);
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
    if (s == EPX_OK) {
        *dispatch = (int64_t)v[0];
        *combine = (int64_t)v[1];
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

epx_status_t gpu_hier_dispatch(const gpu_hier_t *h, const proto_geom_t *g,
                               const epxk_call_t *c, int blocks,
                               cudaStream_t st)
{
    epx_status_t s = launch(h, EPXK_HIER_STAGE, g, c, blocks, st);
    return s != EPX_OK ? s : launch(h, EPXK_HIER_FWD, g, c, blocks, st);
}

epx_status_t gpu_hier_combine_send(const gpu_hier_t *h, const proto_geom_t *g,
                                   const epxk_call_t *c, int blocks,
                                   cudaStream_t st)
{
    epx_status_t s = launch(h, EPXK_HIER_PUT, g, c, blocks, st);
    return s != EPX_OK ? s : launch(h, EPXK_HIER_CHAIN, g, c, blocks, st);
}

epx_status_t gpu_hier_combine_recv(const gpu_hier_t *h, const proto_geom_t *g,
                                   const epxk_call_t *c, int blocks,
                                   cudaStream_t st)
{
    return launch(h, EPXK_HIER_OUT, g, c, blocks, st);
}
