/*
 * Weight migration between device ranks: the moves of the one plan
 * (src/moe/mig.h, computed by src/balance/migrate.c), GPU to GPU.
 *
 * Staging: windows backend, a window of device memory per rank shared
 * as the engine's windows are (window.c: same process, CUDA IPC, cuMem
 * descriptors or fabric handles); a send is one copy from this rank's
 * weights into the destination's staging window.  NCCL backend, a local
 * buffer; the sends and receives between ranks are one group of
 * ncclSend / ncclRecv on the engine's communicator (which runs its
 * operations in issue order, so they take their place between the
 * dispatch exchanges issued before and after), local copies are copies.
 *
 * Everything is ordered on the migration stream, a stream of its own,
 * so the transfers overlap the engine's dispatch/combine of any layer.
 * The live weights are only read until the switch.  The switch (land)
 * waits on the device for the engine's work queued so far (the expert
 * computation of the layer's last combine came before its combine_send,
 * which the engine's stream waits for), copies staging into the weights,
 * uploads the layer's routing tables, and makes the engine's stream wait
 * for that: the next dispatch of the layer routes by the new placement,
 * and its recv orders the caller's stream after the new weights.  The
 * host waits only for this rank's transfers (finish) and for the last
 * landing (the next start or register, and destroy).
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "cuda/mig_int.h"
#include "core/comm.h"
#include "util/util.h"

struct gpu_mig {
    epx_comm_t *comm;
    cudaStream_t st;            /* the migration stream */
    cudaEvent_t ev_moved;       /* this rank's transfers */
    cudaEvent_t ev_tail;        /* the engine's work before the switch */
    cudaEvent_t ev_land;        /* the landing and the tables */
    int moved, landed;          /* an event recorded and not waited for */
    size_t bytes;               /* staging per rank */
    epx_cuwin_t *win;           /* windows backend: staging windows */
    char *stage;                /* NCCL: this rank's staging */
};

/* This rank's staging, and where a send to `peer` writes. */
static char *stage_of(const gpu_mig_t *g, int peer)
{
    return g->win ? epx__cuwin_peers(g->win)[peer] : g->stage;
}

/* The host waits for `ev`, no longer than the comm's timeout. */
static epx_status_t ev_wait(const gpu_mig_t *g, cudaEvent_t ev,
                            const char *what)
{
    const double limit = epx__comm_timeout(g->comm), t0 = epx__now();
    for (;;) {
        cudaError_t e = cudaEventQuery(ev);
        if (e == cudaSuccess)
            return EPX_OK;
        if (e != cudaErrorNotReady)
            return epx__cuda_err(e, what);
        if (epx__now() - t0 > limit)
            return epx__error(EPX_ERR_TIMEOUT, "%s: not done after %.1f s "
                              "(EPX_TIMEOUT)", what, limit);
        struct timespec ts = { 0, 50000 };
        nanosleep(&ts, NULL);
    }
}

static void free_stage(gpu_mig_t *g)
{
    epx__cuwin_destroy(g->win);
    g->win = NULL;
    cudaFree(g->stage);
    g->stage = NULL;
    g->bytes = 0;
}

void gpu_mig_sync(gpu_mig_t *g)
{
    if (g && g->st)
        cudaStreamSynchronize(g->st);
}

void gpu_mig_destroy(gpu_mig_t *g)
{
    if (!g)
        return;
    gpu_mig_sync(g);
    free_stage(g);
    if (g->ev_moved)
        cudaEventDestroy(g->ev_moved);
    if (g->ev_tail)
        cudaEventDestroy(g->ev_tail);
    if (g->ev_land)
        cudaEventDestroy(g->ev_land);
    if (g->st)
        cudaStreamDestroy(g->st);
    free(g);
}

epx_status_t gpu_mig_check(gpu_moe_t *m, const void *base, size_t bytes)
{
    gpu_eng_t e;
    epx_status_t st = gpu_moe_eng(m, "balance: register_weights", &e);
    if (st != EPX_OK)
        return st;
    struct cudaPointerAttributes a;
    memset(&a, 0, sizeof(a));
    cudaError_t r = cudaPointerGetAttributes(&a, base);
    if (r != cudaSuccess)
        (void)cudaGetLastError();   /* not an error of the engine's */
    if (r != cudaSuccess || (a.type != cudaMemoryTypeDevice &&
                             a.type != cudaMemoryTypeManaged))
        return epx__error(EPX_ERR_INVALID, "balance: register_weights: %p "
                          "(%zu bytes) is not device memory; device ranks "
                          "register their weights in device memory", base,
                          bytes);
    if (a.type == cudaMemoryTypeDevice && a.device != e.device)
        return epx__error(EPX_ERR_INVALID, "balance: register_weights: %p is "
                          "memory of device %d, the engine's is device %d",
                          base, a.device, e.device);
    return EPX_OK;
}

/* The state and its stream and events, on first use. */
static epx_status_t mig_get(const gpu_eng_t *e, gpu_mig_t **out)
{
    if (*e->mig) {
        *out = *e->mig;
        return EPX_OK;
    }
    gpu_mig_t *g = calloc(1, sizeof(*g));
    if (!g)
        return epx__error(EPX_ERR_NOMEM, "cuda migrate: out of memory");
    g->comm = e->comm;
    epx_status_t st = epx__cuda_err(
        cudaStreamCreateWithFlags(&g->st, cudaStreamNonBlocking),
        "cudaStreamCreateWithFlags");
    if (st == EPX_OK)
        st = epx__cuda_err(cudaEventCreateWithFlags(&g->ev_moved,
                                                    cudaEventDisableTiming),
                           "cudaEventCreate");
    if (st == EPX_OK)
        st = epx__cuda_err(cudaEventCreateWithFlags(&g->ev_tail,
                                                    cudaEventDisableTiming),
                           "cudaEventCreate");
    if (st == EPX_OK)
        st = epx__cuda_err(cudaEventCreateWithFlags(&g->ev_land,
                                                    cudaEventDisableTiming),
                           "cudaEventCreate");
    if (st != EPX_OK) {
        gpu_mig_destroy(g);
        return st;
    }
    *e->mig = *out = g;
    return EPX_OK;
}

epx_status_t gpu_mig_quiet(gpu_moe_t *m)
{
    gpu_eng_t e;
    epx_status_t st = gpu_moe_eng(m, "balance", &e);
    gpu_mig_t *g = st == EPX_OK ? *e.mig : NULL;
    if (!g || !g->landed)
        return st;
    st = ev_wait(g, g->ev_land, "balance: the last migration's landing");
    if (st != EPX_OK)
        return gpu_moe_fail(m, st);
    g->landed = 0;
    return EPX_OK;
}

epx_status_t gpu_mig_reserve(gpu_moe_t *m, size_t bytes)
{
    gpu_eng_t e;
    epx_status_t st = gpu_moe_eng(m, "balance: register_weights", &e);
    gpu_mig_t *g = NULL;
    if (st == EPX_OK)
        st = mig_get(&e, &g);
    if (st == EPX_OK)
        st = gpu_mig_quiet(m);
    if (!e.windows) {              /* NCCL: local staging */
        if (st == EPX_OK && bytes > g->bytes) {
            free_stage(g);
            st = epx__cuda_err(cudaMalloc((void **)&g->stage, bytes),
                               "cudaMalloc (migration staging)");
            if (st == EPX_OK)
                g->bytes = bytes;
        }
        return st;
    }
    /* The window below is collective: every rank agrees first (a rank
     * that failed above takes part with its status), then all decide
     * alike (the same bytes, the same history). */
    if ((st = epx__comm_agree_peer(e.comm, st, "cuda migrate: staging")) !=
        EPX_OK || bytes <= g->bytes)
        return st;
    free_stage(g);
    st = epx__cuwin_create(e.comm, e.device, bytes, &g->win);
    if (st == EPX_OK)
        g->bytes = bytes;
    return st;
}

epx_status_t gpu_mig_send(gpu_moe_t *m, const void *weights, size_t B,
                          const moe_mig_xfer_t *x, int n)
{
    gpu_eng_t e;
    epx_status_t st = gpu_moe_eng(m, "balance: rebalance_start", &e);
    if (st != EPX_OK)
        return st;
    gpu_mig_t *g = *e.mig;
    if (!g || (!g->win && !g->stage))
        return epx__error(EPX_ERR_STATE, "balance: no device staging "
                          "(epx_moe_register_weights first)");
    const int me = e.comm->rank;
    const char *w = weights;
    epx_nccl_p2p_t *ops = e.windows ? NULL
                                    : calloc((size_t)n + 1, sizeof(*ops));
    int nops = 0;
    if (!e.windows && !ops)
        return epx__error(EPX_ERR_NOMEM, "cuda migrate: out of memory");
    for (int i = 0; i < n && st == EPX_OK; i++) {
        const moe_mig_xfer_t *t = &x[i];
        if (e.windows || t->peer == me) {
            /* Into the destination's staging (a peer's mapped window,
             * or this rank's own); receives are the peers' sends. */
            if (!t->recv)
                st = epx__cuda_err(
                    cudaMemcpyAsync(stage_of(g, t->peer) + (size_t)t->stage * B,
                                    w + (size_t)t->slot * B, B,
                                    cudaMemcpyDefault, g->st),
                    "cudaMemcpyAsync (weights into staging)");
        } else {
            ops[nops++] = (epx_nccl_p2p_t){
                t->peer, t->recv,
                t->recv ? (void *)(g->stage + (size_t)t->stage * B)
                        : (void *)(uintptr_t)(w + (size_t)t->slot * B),
                B };
        }
    }
    if (st == EPX_OK && nops > 0)
        st = epx__nccl_p2p(e.nccl, ops, nops, g->st);
    free(ops);
    if (st == EPX_OK)
        st = epx__cuda_err(cudaEventRecord(g->ev_moved, g->st),
                           "cudaEventRecord");
    if (st != EPX_OK)
        return gpu_moe_fail(m, st);
    g->moved = 1;
    return EPX_OK;
}

epx_status_t gpu_mig_wait(gpu_moe_t *m)
{
    gpu_eng_t e;
    epx_status_t st = gpu_moe_eng(m, "balance: rebalance_finish", &e);
    gpu_mig_t *g = st == EPX_OK ? *e.mig : NULL;
    if (!g || !g->moved)
        return st;
    st = ev_wait(g, g->ev_moved, "balance: the weights' transfers");
    if (st != EPX_OK)
        return gpu_moe_fail(m, st);
    g->moved = 0;
    return EPX_OK;
}

epx_status_t gpu_mig_land(gpu_moe_t *m, int layer, void *weights, size_t B,
                          const int32_t *land, int nland,
                          const int32_t *phy2log, const int32_t *pick,
                          const int32_t *off, const int32_t *rep,
                          int round_robin)
{
    gpu_eng_t e;
    epx_status_t st = gpu_moe_eng(m, "balance: rebalance_finish", &e);
    if (st != EPX_OK)
        return st;
    gpu_mig_t *g = *e.mig;
    if (!g)
        return epx__error(EPX_ERR_STATE, "balance: no device staging");
    const char *stage = stage_of(g, e.comm->rank);
    char *w = weights;
    /* After the engine's work so far (the layer's expert computations
     * included), the landing, then the tables; the engine's later work
     * after both. */
    st = epx__cuda_err(cudaEventRecord(g->ev_tail, e.st), "cudaEventRecord");
    if (st == EPX_OK)
        st = epx__cuda_err(cudaStreamWaitEvent(g->st, g->ev_tail, 0),
                           "cudaStreamWaitEvent");
    for (int i = 0; i < nland && st == EPX_OK; i++)
        st = epx__cuda_err(
            cudaMemcpyAsync(w + (size_t)land[i] * B,
                            stage + (size_t)land[i] * B, B,
                            cudaMemcpyDeviceToDevice, g->st),
            "cudaMemcpyAsync (staging into weights)");
    if (st == EPX_OK)
        st = gpu_moe_route_async(m, layer, phy2log, pick, off, rep,
                                 round_robin, g->st);
    if (st == EPX_OK)
        st = epx__cuda_err(cudaEventRecord(g->ev_land, g->st),
                           "cudaEventRecord");
    if (st == EPX_OK)
        st = epx__cuda_err(cudaStreamWaitEvent(e.st, g->ev_land, 0),
                           "cudaStreamWaitEvent");
    if (st != EPX_OK)
        return gpu_moe_fail(m, st);
    g->landed = 1;
    return EPX_OK;
}
