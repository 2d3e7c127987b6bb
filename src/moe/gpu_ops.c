/*
 * Device ranks behind the engine's ops table: the GPU executor
 * (src/cuda/gpu.h) drives the exchange; the engine keeps what is
 * executor-independent (placement, handles, call order).  Plain C: built
 * with or without CUDA (without, gpu_moe_create says why not).
 */
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "moe/moe.h"
#include "cuda/gpu.h"
#include "epx/cuda.h"

epx_status_t moe_gpu_create(epx_moe_t *m, const epx_moe_params_t *params)
{
    epx_status_t st = gpu_moe_create(m->comm, params, &m->gpu);
    if (st != EPX_OK)
        return st;
    epx__comm_hold(m->comm);   /* kept until the engine goes (comm.c) */
    m->ops = &moe_gpu_ops;
    m->E = params->num_experts;
    m->U = params->num_slots > 0 ? params->num_slots : m->E;
    m->st_ecount = calloc((size_t)m->E, sizeof(int32_t));
    if (!m->st_ecount)
        return epx__error(EPX_ERR_NOMEM, "moe: out of memory");
    m->K = params->topk;
    m->H = params->hidden;
    return EPX_OK;
}

static epx_status_t gpu_send(epx_moe_t *m, const epx_dispatch_args_t *a,
                             epx_handle_t **handle)
{
    epx_status_t st = moe_check_usable(m, "dispatch");
    if (st != EPX_OK)
        return st;
    if (!a || !handle)
        return epx__error(EPX_ERR_INVALID, "dispatch: args or handle NULL");
    if ((st = epx__check_version("dispatch args", a->version,
                                 EPX_DISPATCH_ARGS_VERSION)) != EPX_OK)
        return st;
    /* The layer's range, like every argument of an uncached call, is
     * checked by the executor, which has its peers fail the call too. */
    const int layer = moe_args_layer(a);
    void *stream = a->struct_size >= offsetof(epx_dispatch_args_t, stream) +
                                         sizeof(void *) ? a->stream : NULL;
    const int cached = a->struct_size >= offsetof(epx_dispatch_args_t, flags) +
                                             sizeof(unsigned) &&
                       (a->flags & EPX_DISPATCH_CACHED);
    epx_handle_t *h;
    if (cached) {
        /* The host executor's checks (dispatch.c), refused on every rank
         * as there; the ids themselves are device memory, compared with
         * the layout's on the device. */
        h = *handle;
        const char *bad = NULL;
        if (!h || h->moe != m || !h->dispatched || !h->gpu_lay)
            bad = "needs a handle of an earlier dispatch on this engine";
        else if (a->x.rows != h->T)
            bad = "with a routing that differs from the handle's";
        else if (layer != h->layer ||
                 (m->place_hash && m->place_hash[h->layer] != h->place))
            bad = "for another layer or after the layer's placement changed";
        if (bad)
            return gpu_dispatch_refuse(m->gpu, stream, epx__error(
                EPX_ERR_INVALID, "dispatch: EPX_DISPATCH_CACHED %s", bad));
    } else {
        /* The handle first: once the call is queued nothing may fail. */
        h = m->spare ? m->spare : calloc(1, sizeof(*h));
        if (!h)
            return epx__error(EPX_ERR_NOMEM, "dispatch: out of memory");
        m->spare = NULL;
        if (!h->moe)
            moe_handle_link(m, h);
    }
    uint64_t call;
    int lay = h->gpu_lay - 1;
    st = gpu_dispatch_send(m->gpu, a, stream, &lay, &call);
    if (st != EPX_OK) {
        if (!cached)
            m->spare = h;
        return st;
    }
    h->gpu_lay = lay + 1;
    h->layer = layer;
    h->call = call;
    h->gpu_counted = 0;
    if (!cached) {
        h->T = a->x.rows;
        h->dispatched = 0;
        h->place = m->place_hash ? m->place_hash[layer] : 0;
    }
    h->stream = h->cstream = stream;
    *handle = h;
    return EPX_OK;
}

/* The executor checks the order of the handle's call (src/cuda/calls.h). */
static epx_status_t gpu_recv(epx_moe_t *m, epx_handle_t *h, epx_recv_t *out)
{
    /* A dead peer known here: say so before waiting on the device (the
     * device's own waits end at the timeout). */
    epx_status_t st = moe_check_usable(m, "dispatch");
    if (st == EPX_OK)
        st = gpu_dispatch_recv(m->gpu, h->call, h->stream, out);
    /* Counted once per call, at its first recv (recv may be repeated). */
    const int32_t *ucount = st == EPX_OK && !h->gpu_counted
        ? gpu_dispatch_ecount(m->gpu) : NULL;
    if (st == EPX_OK)
        h->dispatched = h->gpu_counted = 1;
    if (ucount && m->p.num_slots > 0) {   /* per slot: sum each expert's */
        const int32_t *p2l = m->phy2log + (size_t)h->layer * (size_t)m->U;
        memset(m->st_ecount, 0, sizeof(int32_t) * (size_t)m->E);
        for (int u = 0; u < m->U; u++)
            m->st_ecount[p2l[u]] += ucount[u];
        /* Elastic: the demand for lost experts, counted by the device
         * after the units (gpu_dispatch_ecount), as the host executor's
         * layout counts it. */
        for (int e = 0; (m->p.flags & EPX_MOE_ELASTIC) && e < m->E; e++)
            m->st_ecount[e] += ucount[m->U + e];
        moe_stats_record(m, h->layer, m->st_ecount, ucount);
    } else if (ucount) {
        moe_stats_record(m, h->layer, ucount, ucount);
    }
    return st;
}

/* Readiness from what the device published (src/cuda/README.md,
 * "Readiness"): never waits, never synchronises. */
static epx_status_t gpu_poll(epx_moe_t *m, epx_handle_t *h, epx_recv_t *out,
                             uint8_t *ready, int *num_ready)
{
    epx_status_t st = moe_check_usable(m, "dispatch_poll");
    return st != EPX_OK ? st
                        : gpu_dispatch_poll(m->gpu, h->call, out, ready,
                                            num_ready);
}

static epx_status_t gpu_csend(epx_moe_t *m, epx_handle_t *h,
                              const epx_combine_args_t *a)
{
    epx_status_t st = moe_check_usable(m, "combine");
    if (st == EPX_OK && a)
        st = epx__check_version("combine args", a->version,
                                EPX_COMBINE_ARGS_VERSION);
    if (st != EPX_OK)
        return st;
    void *stream = a && a->struct_size >= offsetof(epx_combine_args_t,
                                                   stream) + sizeof(void *)
        ? a->stream : h->cstream;
    st = gpu_combine_send(m->gpu, h->call, a, stream);
    if (st == EPX_OK)   /* a refused combine leaves the handle as it was */
        h->cstream = stream;
    return st;
}

static epx_status_t gpu_crecv(epx_moe_t *m, epx_handle_t *h, epx_tensor_t *out)
{
    epx_status_t st = moe_check_usable(m, "combine");
    return st != EPX_OK ? st
                        : gpu_combine_recv(m->gpu, h->call, out, h->cstream);
}

static void gpu_release(epx_moe_t *m, epx_handle_t *h)
{
    gpu_call_release(m->gpu, h->call);
    if (h->gpu_lay)   /* the next dispatch may take it (stream order) */
        gpu_layout_release(m->gpu, h->gpu_lay - 1);
    h->gpu_lay = 0;
}

/* Low latency: the device records each call's counts (no host
 * synchronisation in the call); they are read here, in call order. */
static void stats_one(void *ctx, int layer, const int32_t *ecount,
                      const int32_t *ucount)
{
    moe_stats_record(ctx, layer, ecount, ucount);
}

static void stats_drop(void *ctx, int layer, const int32_t *ecount,
                       const int32_t *ucount)
{
    (void)ctx, (void)layer, (void)ecount, (void)ucount;
}

epx_status_t moe_gpu_stats_sync(epx_moe_t *m, int keep)
{
    if (!m->gpu)
        return EPX_OK;
    int64_t lost = 0;
    epx_status_t st = gpu_moe_ll_stats(m->gpu, keep ? stats_one : stats_drop,
                                       m, &lost);
    if (lost > 0 && keep)
        EPX_LOG(EPX_LOG_WARN, "moe", m->rank, "load statistics: %lld "
                "low-latency calls were not read within %d calls of the "
                "device's record and are left out (read them with "
                "epx_moe_stats or epx_moe_check more often)",
                (long long)lost, GPU_LL_STATS_CALLS);
    return st;
}

static epx_status_t gpu_check(epx_moe_t *m, int64_t *dropped)
{
    epx_status_t st = gpu_moe_check(m->gpu, dropped);
    /* It synchronised anyway: read the statistics too, so the device's
     * record never overflows for a caller that checks. */
    return st == EPX_OK ? moe_gpu_stats_sync(m, 1) : st;
}

const moe_ops_t moe_gpu_ops = {
    "cuda", gpu_send, gpu_recv, gpu_poll, gpu_csend, gpu_crecv, gpu_release,
    gpu_check
};

int epx_cuda_moe_num_sms(const epx_moe_t *m)
{
    return m && m->gpu ? gpu_moe_num_sms(m->gpu) : 0;
}

const char *epx_cuda_moe_backend(const epx_moe_t *m)
{
    return m && m->gpu ? gpu_moe_backend(m->gpu) : "";
}
