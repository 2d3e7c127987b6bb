/* The NCCL backend (see nccl_ex.h). */
#include <stdlib.h>
#include <string.h>
#include <nccl.h>
#include "cuda/nccl_ex.h"
#include "core/comm.h"
#include "util/util.h"

struct epx_nccl {
    ncclComm_t comm;
    int adopted;
    int R, rank;
    int aborted;        /* epx__nccl_abort: the communicator is gone */
};

static epx_status_t nccl_err(ncclResult_t r, const char *what)
{
    if (r == ncclSuccess)
        return EPX_OK;
    return epx__error(EPX_ERR_SYSTEM, "%s: %s", what, ncclGetErrorString(r));
}

epx_status_t epx__nccl_create(epx_comm_t *comm, void *adopt, epx_nccl_t **out)
{
    epx_nccl_t *nc = calloc(1, sizeof(*nc));
    if (!nc)
        return epx__error(EPX_ERR_NOMEM, "nccl: out of memory");
    nc->R = comm->nranks;
    nc->rank = comm->rank;
    epx_status_t st = EPX_OK;
    if (adopt) {
        int n = -1, r = -1;
        nc->comm = (ncclComm_t)adopt;
        nc->adopted = 1;
        st = nccl_err(ncclCommCount(nc->comm, &n), "ncclCommCount");
        if (st == EPX_OK)
            st = nccl_err(ncclCommUserRank(nc->comm, &r), "ncclCommUserRank");
        if (st == EPX_OK && (n != nc->R || r != nc->rank))
            st = epx__error(EPX_ERR_MISMATCH, "nccl: adopted communicator has "
                            "rank %d of %d, the epx comm rank %d of %d", r, n,
                            nc->rank, nc->R);
    } else {
        ncclUniqueId id;
        memset(&id, 0, sizeof(id));
        int32_t ok = EPX_OK;
        if (nc->rank == 0)
            ok = nccl_err(ncclGetUniqueId(&id), "ncclGetUniqueId");
        /* Rank 0's id (and status) reach everyone through the bootstrap. */
        struct { int32_t ok; ncclUniqueId id; } mine = { ok, id }, *all =
            malloc(sizeof(mine) * (size_t)nc->R);
        if (!all)
            st = epx__error(EPX_ERR_NOMEM, "nccl: out of memory");
        else
            st = epx__comm_allgather(comm, &mine, all, sizeof(mine));
        if (st == EPX_OK && all[0].ok != EPX_OK)
            st = nc->rank == 0 ? ok
                               : epx__error(EPX_ERR_PEER, "nccl: rank 0 could "
                                            "not get a unique id");
        if (st == EPX_OK)
            st = nccl_err(ncclCommInitRank(&nc->comm, nc->R, all[0].id,
                                           nc->rank),
                          "ncclCommInitRank");
        free(all);
    }
    if (st != EPX_OK) {
        free(nc);
        return st;
    }
    *out = nc;
    return EPX_OK;
}

void epx__nccl_destroy(epx_nccl_t *nc)
{
    if (!nc)
        return;
    if (!nc->adopted && !nc->aborted) {
        ncclCommFinalize(nc->comm);
        ncclCommDestroy(nc->comm);
    }
    free(nc);
}

void epx__nccl_abort(epx_nccl_t *nc)
{
    if (!nc || nc->adopted || nc->aborted)
        return;
    ncclCommAbort(nc->comm);
    nc->aborted = 1;
}

int epx__nccl_adopted(const epx_nccl_t *nc)
{
    return nc->adopted;
}

epx_status_t epx__nccl_counts(epx_nccl_t *nc, const proto_geom_t *g,
                              const int32_t *blk, int32_t *cnt,
                              void *stream)
{
    cudaStream_t st = (cudaStream_t)stream;
    /* header and counts, not the sequence word (no one waits on it) */
    const size_t n = (size_t)(PROTO_CNT_HDR + g->R + g->E);
    ncclResult_t r = ncclGroupStart();
    for (int p = 0; p < nc->R && r == ncclSuccess; p++) {
        r = ncclSend(blk, n, ncclInt32, p, nc->comm, st);
        if (r == ncclSuccess)
            r = ncclRecv(cnt + (size_t)p * g->cnt_ints, n, ncclInt32, p,
                         nc->comm, st);
    }
    ncclResult_t e = ncclGroupEnd();
    return nccl_err(r != ncclSuccess ? r : e, "nccl count exchange");
}

/* Rows of `bytes` each, as bytes; metadata as int32 / float words. */
static ncclResult_t rows_pair(epx_nccl_t *nc, int64_t bytes, int p,
                              const char *sbase, int64_t s0, int64_t ns,
                              char *rbase_, int64_t r0, int64_t nr,
                              cudaStream_t st)
{
    ncclResult_t r = ncclSuccess;
    if (ns > 0 && bytes > 0)
        r = ncclSend(sbase + s0 * bytes, (size_t)(ns * bytes), ncclUint8, p,
                     nc->comm, st);
    if (r == ncclSuccess && nr > 0 && bytes > 0)
        r = ncclRecv(rbase_ + r0 * bytes, (size_t)(nr * bytes), ncclUint8, p,
                     nc->comm, st);
    return r;
}

static ncclResult_t meta_pair(epx_nccl_t *nc, const proto_geom_t *g, int p,
                              const char *stage, int64_t s0, int64_t ns,
                              char *win, int64_t r0, int64_t nr,
                              cudaStream_t st)
{
    /* src_rank, src_token: a word per row; topk ids and weights: K. */
    const int64_t off[4] = { g->off_src_rank, g->off_src_token, g->off_idx,
                             g->off_w };
    ncclResult_t r = ncclSuccess;
    for (int f = 0; f < 4 && r == ncclSuccess; f++) {
        int64_t per = f >= 2 ? g->K : 1;
        if (ns > 0)
            r = ncclSend(stage + off[f] + s0 * per * 4, (size_t)(ns * per),
                         ncclInt32, p, nc->comm, st);
        if (r == ncclSuccess && nr > 0)
            r = ncclRecv(win + off[f] + r0 * per * 4, (size_t)(nr * per),
                         ncclInt32, p, nc->comm, st);
    }
    return r;
}

epx_status_t epx__nccl_dispatch(epx_nccl_t *nc, const proto_geom_t *g,
                                char *stage, char *win, const int64_t *nsend,
                                const int64_t *sendoff, const int64_t *nrecv,
                                const int64_t *rbase, void *stream)
{
    cudaStream_t st = (cudaStream_t)stream;
    ncclResult_t r = ncclGroupStart();
    for (int p = 0; p < nc->R && r == ncclSuccess; p++) {
        /* A row's three wire parts (scales and row scale: none for the
         * native wire), each in its own region. */
        r = rows_pair(nc, g->xrow_bytes, p, stage + g->off_rows, sendoff[p],
                      nsend[p], win + g->off_rows, rbase[p], nrecv[p], st);
        if (r == ncclSuccess)
            r = rows_pair(nc, g->scale_bytes, p, stage + g->off_scales,
                          sendoff[p], nsend[p], win + g->off_scales, rbase[p],
                          nrecv[p], st);
        if (r == ncclSuccess)
            r = rows_pair(nc, g->gscale_bytes, p, stage + g->off_gscale,
                          sendoff[p], nsend[p], win + g->off_gscale, rbase[p],
                          nrecv[p], st);
        if (r == ncclSuccess)
            r = meta_pair(nc, g, p, stage, sendoff[p], nsend[p], win,
                          rbase[p], nrecv[p], st);
    }
    ncclResult_t e = ncclGroupEnd();
    return nccl_err(r != ncclSuccess ? r : e, "nccl dispatch exchange");
}

epx_status_t epx__nccl_dispatch_em(epx_nccl_t *nc, const proto_geom_t *g,
                                   char *stage, char *rstage, char *win,
                                   const int64_t *ent, const int64_t *rows,
                                   void *stream)
{
    cudaStream_t st = (cudaStream_t)stream;
    const int R = nc->R;
    /* Per row: its three wire parts, then src_token and weight (the
     * source is the range's; the scatter writes it). */
    const int64_t roff[5] = { g->off_rows, g->off_scales, g->off_gscale,
                              g->off_src_token, g->off_w };
    const int64_t rsize[5] = { g->xrow_bytes, g->scale_bytes, g->gscale_bytes,
                               4, 4 };
    /* Per entry: return slot and rows (the source: the scatter's). */
    const int64_t eoff[2] = { g->off_ret_slot, g->off_ent_rows };
    const int64_t esize[2] = { 4, 4 * (int64_t)g->K };
    ncclResult_t r = ncclGroupStart();
    for (int p = 0; p < R && r == ncclSuccess; p++) {
        for (int f = 0; f < 5 && r == ncclSuccess; f++)
            r = rows_pair(nc, rsize[f], p, stage + roff[f], rows[R + p],
                          rows[p], rstage + roff[f], rows[3 * R + p],
                          rows[2 * R + p], st);
        for (int f = 0; f < 2 && r == ncclSuccess; f++)
            r = rows_pair(nc, esize[f], p, stage + eoff[f], ent[R + p],
                          ent[p], win + eoff[f], ent[3 * R + p],
                          ent[2 * R + p], st);
    }
    ncclResult_t e = ncclGroupEnd();
    return nccl_err(r != ncclSuccess ? r : e, "nccl expert-major exchange");
}

epx_status_t epx__nccl_combine(epx_nccl_t *nc, const proto_geom_t *g,
                               const void *y, char *win, const int64_t *nsend,
                               const int64_t *sendoff, const int64_t *nrecv,
                               const int64_t *rbase, void *stream)
{
    cudaStream_t st = (cudaStream_t)stream;
    ncclResult_t r = ncclGroupStart();
    for (int p = 0; p < nc->R && r == ncclSuccess; p++)
        r = rows_pair(nc, g->row_bytes, p, (const char *)y, rbase[p], nrecv[p],
                      win + g->off_comb, sendoff[p], nsend[p], st);
    ncclResult_t e = ncclGroupEnd();
    return nccl_err(r != ncclSuccess ? r : e, "nccl combine exchange");
}

epx_status_t epx__nccl_p2p(epx_nccl_t *nc, const epx_nccl_p2p_t *ops, int n,
                           void *stream)
{
    cudaStream_t st = (cudaStream_t)stream;
    if (n <= 0)
        return EPX_OK;
    ncclResult_t r = ncclGroupStart();
    for (int i = 0; i < n && r == ncclSuccess; i++)
        r = ops[i].recv
            ? ncclRecv(ops[i].buf, ops[i].bytes, ncclUint8, ops[i].peer,
                       nc->comm, st)
            : ncclSend(ops[i].buf, ops[i].bytes, ncclUint8, ops[i].peer,
                       nc->comm, st);
    ncclResult_t e = ncclGroupEnd();
    return nccl_err(r != ncclSuccess ? r : e, "nccl point-to-point exchange");
}
