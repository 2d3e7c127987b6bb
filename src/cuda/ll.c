/*
 * The GPU executor's low-latency mode (src/cuda/README.md, "Low
 * latency"): a buffer per call in flight, nothing read back in the call,
 * so it captures into a graph; over windows (classic or fused kernels) or
 * NCCL (one grouped block exchange per direction, proto/ll_nccl.h).
 * Behind gpu_ll_ops (engine_int.h); engine.c checks the calls.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cuda/engine_int.h"
#include "proto/ll_nccl.h"
#include "moe/wire.h"
#include "util/util.h"

/* ---------------------------------------------------------------- setup */

/* Low latency over NCCL: the staging of either direction (dispatch
 * blocks, or the combine's flag words and partials) holds the larger. */
static int64_t lln_stage_bytes(const gpu_moe_t *m)
{
    const int64_t d = proto_lln_stage_bytes(&m->g, m->llg.cap),
                  c = (int64_t)m->g.R * proto_lln_comb_stride(&m->g);
    return d > c ? d : c;
}

/* Its receive staging, each rank's units (first: [R + 1]) and the
 * exchange's operations. */
static epx_status_t lln_alloc(gpu_moe_t *m, const int32_t *first)
{
    const int R = m->g.R;
    m->h_lln_first = malloc(sizeof(int32_t) * (size_t)(R + 1));
    m->lln_ops = malloc(sizeof(epx_nccl_p2p_t) * (size_t)(2 * R));
    if (!m->h_lln_first || !m->lln_ops)
        return epx__error(EPX_ERR_NOMEM, "cuda moe: out of memory");
    memcpy(m->h_lln_first, first, sizeof(int32_t) * (size_t)(R + 1));
    return epx__cuda_err(cudaMalloc((void **)&m->rstage,
                                    (size_t)lln_stage_bytes(m)),
                         "cudaMalloc");
}

/* Low latency: the words the recv kernels publish for epx_dispatch_poll,
 * zero (no call's). */
static epx_status_t ll_pub_alloc(gpu_moe_t *m)
{
    const size_t n = sizeof(int64_t) * (size_t)m->llg.B *
                     (size_t)EPXK_LLPUB_LEN(m->L);
    epx_status_t st = epx__cuda_err(cudaHostAlloc((void **)&m->h_llpub, n,
                                                  cudaHostAllocMapped |
                                                      cudaHostAllocPortable),
                                    "cudaHostAlloc");
    if (st != EPX_OK)
        return st;
    memset(m->h_llpub, 0, n);
    return epx__cuda_err(cudaHostGetDevicePointer((void **)&m->d_llpub,
                                                  m->h_llpub, 0),
                         "cudaHostGetDevicePointer");
}

static void ll_init(gpu_moe_t *m)
{
    const proto_geom_t *g = &m->g;
    proto_ll_layout(&m->g, proto_ll_buffers(m->p.ll_buffers),
                    proto_ll_capacity(m->p.ll_capacity, g->maxT), &m->llg);
    gpu_calls_init(&m->calls, 1, m->llg.B);
    m->wbytes = m->llg.total;
    m->sbytes = g->total > lln_stage_bytes(m) ? g->total : lln_stage_bytes(m);
    m->rx_lo = m->llg.off_bufs;
    m->rx_hi = m->llg.total;
    m->call.ll_drop = (m->p.flags & EPX_MOE_LL_DROP) != 0;
}

/* Each buffer's arrays, the state and statistics words, poll's words;
 * NCCL: the exchange's staging and operations. */
static epx_status_t ll_setup(gpu_moe_t *m, const int32_t *first)
{
    const proto_geom_t *g = &m->g;
    const int R = g->R;
    const int64_t maxT = g->maxT;
    const size_t pairs = (size_t)(maxT * g->maxdest);
    const size_t B = (size_t)m->llg.B, cap = (size_t)m->llg.cap;
    epx_status_t st;
    GPU_DEV_ALLOC(m->d_llkeep, sizeof(int32_t) * B * (size_t)(maxT * g->K));
    GPU_DEV_ALLOC(m->d_lldest, sizeof(int32_t) * B * 2 * pairs);
    GPU_DEV_ALLOC(m->d_llcnt, sizeof(int32_t) * B * (size_t)(R + g->E));
    GPU_DEV_ALLOC(m->d_llmystat, sizeof(int32_t) * B);
    GPU_DEV_ALLOC(m->d_llsrc, sizeof(int32_t) * B * (size_t)m->L * R * cap);
    GPU_DEV_ALLOC(m->d_llsendoff, sizeof(int64_t) * B * (size_t)R);
    GPU_DEV_ALLOC(m->d_llcounts, sizeof(int64_t) * B * (size_t)m->L);
    GPU_DEV_ALLOC(m->d_llstate, sizeof(int64_t) * EPXK_LL_NSTATE);
    GPU_DEV_ALLOC(m->d_scratch, (size_t)(g->esize == 8 ? 8 : 4) *
                                (size_t)(maxT * g->H));
    GPU_DEV_ALLOC(m->d_lluse, sizeof(uint32_t) * B);
    const size_t per = (size_t)(1 + m->Elog + g->E);
    GPU_DEV_ALLOC(m->d_llnstat, sizeof(int64_t));
    m->ll1 = m->kset == EPXK_SET_FUSED &&
             m->backend == EPX_GPU_BACKEND_WINDOWS &&
             proto_ll1_smem(g, maxT) <= PROTO_LL1_SMEM_MAX;
    if (m->ll1) {
        const size_t n = sizeof(uint64_t) * B * (size_t)m->L * R;
        GPU_DEV_ALLOC(m->d_llmark, n);
        st = epx__cuda_err(cudaMemsetAsync(m->d_llmark, 0, n, m->st),
                           "cudaMemset");
        if (st != EPX_OK)
            return st;
    }
    GPU_DEV_ALLOC(m->d_llring, sizeof(int32_t) * per * EPXK_LL_STATS_RING);
    m->h_llring = malloc(sizeof(int32_t) * per * EPXK_LL_STATS_RING);
    if (!m->h_llring)
        return epx__error(EPX_ERR_NOMEM, "cuda moe: out of memory");
    m->h_lloffs = calloc((size_t)m->L + 1, sizeof(int64_t));
    m->h_llpoll = calloc(B * (size_t)m->L + 1, sizeof(int64_t));
    if (!m->h_lloffs || !m->h_llpoll)
        return epx__error(EPX_ERR_NOMEM, "cuda moe: out of memory");
    if ((st = ll_pub_alloc(m)) != EPX_OK)
        return st;
    for (int j = 0; j < m->L; j++)
        m->h_lloffs[j] = (int64_t)j * R * (int64_t)cap;
    st = epx__cuda_err(cudaMemsetAsync(m->d_lluse, 0,
                                       sizeof(uint32_t) * B, m->st),
                       "cudaMemset");
    if (st == EPX_OK)
        st = epx__cuda_err(cudaMemsetAsync(m->d_llstate, 0,
                                           sizeof(int64_t) * EPXK_LL_NSTATE,
                                           m->st), "cudaMemset");
    if (st == EPX_OK)
        st = epx__cuda_err(cudaMemsetAsync(m->d_llnstat, 0,
                                           sizeof(int64_t), m->st),
                           "cudaMemset");
    if (st == EPX_OK && m->backend == EPX_GPU_BACKEND_NCCL)
        st = lln_alloc(m, first);
    return st;
}

static void ll_budget(gpu_moe_t *m, int sms, int ranks)
{
    (void)m;
    (void)sms;
    (void)ranks;
}

/* ------------------------------------------------------------- dispatch */

static epx_status_t ll_cached(const gpu_moe_t *m, int lay)
{
    (void)m;
    (void)lay;
    return epx__error(EPX_ERR_INVALID, "dispatch: EPX_DISPATCH_CACHED saves "
                      "the count exchange of throughput mode; low latency "
                      "has none (dispatch without it)");
}

/* No layouts: each buffer holds its call's. */
static epx_status_t ll_layout(gpu_moe_t *m, int *lay)
{
    (void)m;
    *lay = -1;
    return EPX_OK;
}

/* Point the call at buffer b's own arrays: a call captured in a graph
 * replays with them. */
static void ll_point(gpu_moe_t *m, int b)
{
    epxk_call_t *c = &m->call;
    const proto_geom_t *g = &m->g;
    const size_t pairs = (size_t)(g->maxT * g->maxdest);
    c->ll_b = b;
    c->keep = m->d_llkeep + (size_t)b * (size_t)(g->maxT * g->K);
    c->dest = m->d_lldest + (size_t)b * 2 * pairs;
    c->pos = c->dest + pairs;
    c->mycnt = m->d_llcnt + (size_t)b * (size_t)(g->R + g->E);
    c->sendoff = m->d_llsendoff + (size_t)b * (size_t)g->R;
    c->ll_mystat = m->d_llmystat + b;
    c->ll_counts = m->d_llcounts + (size_t)b * (size_t)m->L;
    c->ll_src = m->d_llsrc + (size_t)b * (size_t)m->L * (size_t)g->R *
                (size_t)m->llg.cap;
    c->ll_mark = m->d_llmark ? m->d_llmark + (size_t)b * (size_t)m->L *
                                                 (size_t)g->R
                             : NULL;
    /* readiness: the buffer's words, and its live call's id there */
    c->ll_pub = m->d_llpub ? m->d_llpub + (size_t)b *
                                              (size_t)EPXK_LLPUB_LEN(m->L)
                           : NULL;
    c->ll_id = m->calls.slot[b].n + 1;
}

/* Low latency over NCCL (proto/ll_nccl.h, src/cuda/README.md "Low
 * latency over NCCL"): one grouped send/recv of a block to and from every
 * peer, each of a size the placement gives, so nothing is read back and
 * the call captures into a graph.  comb: the combine's blocks (a flag
 * word, then the partials of the entries this rank can hold from each
 * source), else the dispatch's. */
static epx_status_t lln_exchange(gpu_moe_t *m, int comb)
{
    const proto_geom_t *g = &m->g;
    const int R = g->R, cap = m->llg.cap;
    const int32_t *first = m->h_lln_first;
    const int Lme = first[g->rank + 1] - first[g->rank];
    proto_lln_blk_t me;
    proto_lln_block(g, Lme, cap, &me);
    const int64_t stride = proto_lln_comb_stride(g);
    int64_t soff = 0;
    for (int p = 0; p < R; p++) {
        const int Lp = first[p + 1] - first[p];
        proto_lln_blk_t bp;
        proto_lln_block(g, Lp, cap, &bp);
        epx_nccl_p2p_t *o = &m->lln_ops[2 * p];
        if (comb) {
            o[0] = (epx_nccl_p2p_t){ p, 0, m->stage + p * stride,
                                     (size_t)proto_lln_comb_bytes(g, Lme,
                                                                  cap) };
            o[1] = (epx_nccl_p2p_t){ p, 1, m->rstage + p * stride,
                                     (size_t)proto_lln_comb_bytes(g, Lp,
                                                                  cap) };
        } else {
            o[0] = (epx_nccl_p2p_t){ p, 0, m->stage + soff,
                                     (size_t)bp.bytes };
            o[1] = (epx_nccl_p2p_t){ p, 1, m->rstage + p * me.bytes,
                                     (size_t)me.bytes };
        }
        soff += bp.bytes;
    }
    return epx__nccl_p2p(m->nccl, m->lln_ops, 2 * R, m->st);
}

/* The dispatch's pack over NCCL: this rank's blocks, the exchange, the
 * received ones into the buffer (then ll recv as over windows). */
static epx_status_t lln_dispatch(gpu_moe_t *m)
{
    epx_status_t st = gpu_moe_launch(m, EPXK_LLN_PACK);
    if (st == EPX_OK)
        st = lln_exchange(m, 0);
    if (st == EPX_OK)
        st = gpu_moe_launch(m, EPXK_LLN_SCATTER);
    return st;
}

/* The combine's put over NCCL (abandon: the flag words alone, marked,
 * and the buffer's next use): staged, exchanged, the partials to their
 * return slots and the flags into the buffer (then ll comb reduce). */
static epx_status_t lln_combine(gpu_moe_t *m, int abandon)
{
    epx_status_t st = gpu_moe_launch(m, abandon ? EPXK_LLN_ABANDON
                                                : EPXK_LLN_COMB_PUT);
    if (st == EPX_OK)
        st = lln_exchange(m, 1);
    if (st == EPX_OK)
        st = gpu_moe_launch(m, EPXK_LLN_COMB_SCATTER);
    return st;
}

/* What a low-latency recv describes: buffer b's regions, its counts in
 * device memory (counts NULL), or poll's in host memory. */
static void ll_describe(gpu_moe_t *m, int b, const int64_t *counts,
                        epx_recv_t *recv)
{
    const proto_geom_t *g = &m->g;
    ll_point(m, b);
    const epxk_call_t *c = &m->call;
    char *bw = m->local + m->llg.off_bufs + (int64_t)c->ll_b * m->llg.buf;
    m->rows = (int64_t)m->L * g->R * m->llg.cap;
    epx_recv_t r;
    memset(&r, 0, sizeof(r));
    r.struct_size = recv->struct_size ? recv->struct_size : sizeof(r);
    r.num_rows = m->rows;
    moe_wire_t f;   /* checked at creation */
    moe_wire_init(&f, (epx_wire_t)g->wire, m->p.dtype, g->H);
    r.x.data = bw + m->llg.rows;
    r.x.dtype = f.x_dtype;
    r.x.rows = m->rows;
    r.x.cols = f.x_cols;
    r.num_local_experts = m->L;
    r.first_local_expert = m->first;
    r.expert_counts = counts ? counts : c->ll_counts;   /* device memory */
    r.expert_offsets = m->h_lloffs;
    r.src_rank = c->ll_src;
    r.src_token = (const int32_t *)(bw + m->llg.src_tok);
    r.topk_idx = NULL;
    r.topk_weights = (const float *)(bw + m->llg.w);
    r.local_experts = gpu_moe_local_experts(m, b);
    r.x_scales.dtype = f.scale_dtype;
    if (moe_wire_quantized(&f)) {
        r.x_scales.data = bw + m->llg.scales;
        r.x_scales.rows = m->rows;
        r.x_scales.cols = f.nblocks;
    }
    if (f.global_bytes)
        r.x_global_scale = (const float *)(bw + m->llg.gscale);
    r.capacity = m->llg.cap;
    r.num_dropped = -1;                        /* counted on the device */
    size_t n = r.struct_size < sizeof(r) ? r.struct_size : sizeof(r);
    memcpy(recv, &r, n);
}

/* Kernels only (layout, pack, recv) into buffer b, no host
 * synchronisation. */
static epx_status_t ll_dispatch_send(gpu_moe_t *m,
                                     const epx_dispatch_args_t *a,
                                     void *stream, int b, int lay, int cached)
{
    (void)lay;
    (void)cached;
    epxk_call_t *c = &m->call;
    epx_status_t st = gpu_moe_stream_in(m, stream);
    if (st == EPX_OK)
        st = gpu_moe_lost(m, a, 0);
    if (st != EPX_OK)
        return gpu_moe_fail(m, st);
    ll_point(m, b);
    c->x = a->x.data;
    c->idx = a->topk_idx.data;
    c->idx64 = a->topk_idx.dtype == EPX_DTYPE_INT64;
    c->w = a->topk_weights.data;
    c->T = a->x.rows;
    c->layer = m->blayer[b];
    if (m->ll1) {   /* the send phase; the receive phase at recv */
        if ((st = gpu_moe_launch(m, EPXK_LL1_DISPATCH_SEND)) != EPX_OK)
            return gpu_moe_fail(m, st);
        m->ll1_recvd[b] = 0;
        return EPX_OK;
    }
    if ((st = gpu_moe_launch(m, EPXK_LL_LAYOUT)) != EPX_OK ||
        (st = gpu_moe_launch(m, EPXK_LL_STATS)) != EPX_OK ||
        (st = m->call.windows ? gpu_moe_launch(m, EPXK_LL_PACK)
                              : lln_dispatch(m)) != EPX_OK ||
        (st = gpu_moe_launch(m, EPXK_LL_RECV)) != EPX_OK)
        return gpu_moe_fail(m, st);
    return EPX_OK;
}

static epx_status_t ll_dispatch_recv(gpu_moe_t *m, uint64_t call,
                                     void *stream, epx_recv_t *recv, int b)
{
    (void)call;
    epx_status_t st = EPX_OK;
    if (m->ll1 && !m->ll1_recvd[b]) {   /* the receive phase, after the
                                           caller's work, once */
        ll_point(m, b);
        if ((st = gpu_moe_stream_in(m, stream)) != EPX_OK ||
            (st = gpu_moe_launch(m, EPXK_LL1_DISPATCH_RECV)) != EPX_OK)
            return gpu_moe_fail(m, st);
        m->ll1_recvd[b] = 1;
    }
    st = gpu_moe_stream_out(m, stream);
    if (st != EPX_OK)
        return gpu_moe_fail(m, st);
    ll_describe(m, b, NULL, recv);
    return EPX_OK;
}

/* A bad argument on this rank in low latency, refused on every rank as
 * the host executor's header does: the call still takes its number and
 * buffer, and its pack (nothing packed: c->ll_refused) stores the status
 * and empty words at every peer, whose recv kernels then fail the call
 * (their epx_dispatch_poll and epx_moe_check: EPX_ERR_PEER, or
 * EPX_ERR_RANGE for too many tokens, as on host ranks); here it is
 * abandoned at once (its comb flags, so no peer's combine waits for it)
 * and over.  Returns `why` (its message kept), or the error that stopped
 * the call from being queued.  Nothing is read back: it captures. */
static epx_status_t ll_refuse(gpu_moe_t *m, void *stream, epx_status_t why)
{
    char msg[512];
    snprintf(msg, sizeof(msg), "%s", epx_last_error());
    uint64_t n;
    int b;
    /* a buffer still in use: nothing sent, as on host ranks */
    epx_status_t st = gpu_calls_send(&m->calls, 0, &n, &b);
    if (st != EPX_OK)
        return st;
    epxk_call_t *c = &m->call;
    ll_point(m, b);
    c->ll_refused = why;
    c->T = 0;
    c->x = c->idx = NULL;
    c->w = NULL;
    if ((st = gpu_moe_stream_in(m, stream)) == EPX_OK &&
        (st = c->windows ? gpu_moe_launch(m, EPXK_LL_PACK)
                         : lln_dispatch(m)) == EPX_OK)
        st = c->windows ? gpu_moe_launch(m, EPXK_LL_ABANDON)
                        : lln_combine(m, 1);
    c->ll_refused = 0;
    gpu_calls_release(&m->calls, n, &b);   /* its abandon is queued */
    if (st != EPX_OK)
        return gpu_moe_fail(m, st);
    return epx__error(why, "%s", msg);
}

/* Low-latency readiness without waiting (src/cuda/README.md, "Readiness
 * in low latency"): what the call's recv kernel published for its buffer
 * (gpu_ll_poll_read).  The fused set queues its receive phase at the
 * call's first poll (on the engine's stream, right after the send phase,
 * as the classic recv kernel runs), so that the units can get ready
 * before epx_dispatch_recv, which then queues none.  A failure found is
 * the call's from then on (gpu_calls_fail). */
static epx_status_t ll_dispatch_poll(gpu_moe_t *m, uint64_t call, int b,
                                     int received, epx_recv_t *recv,
                                     uint8_t *ready, int *num_ready)
{
    epx_status_t st;
    (void)received;
    if (m->ll1 && !m->ll1_recvd[b]) {
        /* not into a graph being captured: nothing of it would run now */
        enum cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
        if ((st = epx__cuda_err(cudaStreamIsCapturing(m->st, &cs),
                                "cudaStreamIsCapturing")) != EPX_OK)
            return gpu_moe_fail(m, st);
        if (cs == cudaStreamCaptureStatusNone) {
            ll_point(m, b);
            if ((st = gpu_moe_launch(m, EPXK_LL1_DISPATCH_RECV)) != EPX_OK)
                return gpu_moe_fail(m, st);
            m->ll1_recvd[b] = 1;
        }
    }
    int64_t *counts = m->h_llpoll + (size_t)b * (size_t)m->L;
    int32_t bad = 0;
    int n = gpu_ll_poll_read(m->h_llpub + (size_t)b *
                                              (size_t)EPXK_LLPUB_LEN(m->L),
                             m->L, call + 1, ready, counts, &bad);
    if (bad) {
        gpu_calls_fail(&m->calls, call, (epx_status_t)bad);
        return epx__error((epx_status_t)bad, "dispatch_poll: the call failed "
                          "on the device (%s: %s); release its handle",
                          epx_status_str((epx_status_t)bad),
                          bad == EPX_ERR_RANGE
                              ? "a rank routed more tokens to one expert than "
                                "ll_capacity, without EPX_MOE_LL_DROP"
                              : bad == EPX_ERR_PEER
                              ? "another rank's arguments, routing or wait "
                                "failed"
                              : "this rank's own routing failed");
    }
    ll_describe(m, b, counts, recv);   /* counts: host memory, the ready
                                          units' */
    *num_ready = n;
    return EPX_OK;
}

/* ------------------------------------------------------------- combine */

static epx_status_t ll_combine_send(gpu_moe_t *m, const epx_combine_args_t *a,
                                    int b)
{
    (void)a;
    ll_point(m, b);
    if (!m->call.windows)
        return lln_combine(m, 0);
    return gpu_moe_launch(m, m->ll1 ? EPXK_LL1_COMB_SEND : EPXK_LL_COMB_PUT);
}

static epx_status_t ll_combine_recv(gpu_moe_t *m, int b)
{
    ll_point(m, b);
    return gpu_moe_launch(m, m->ll1 ? EPXK_LL1_COMB_RECV
                                    : EPXK_LL_COMB_REDUCE);
}

/* A call released before its combine is abandoned on the device (its
 * comb flags marked, so no peer waits), one released between its
 * combine's send and recv still gets its reduce (into scratch), which
 * advances the buffer's use. */
static void ll_release(gpu_moe_t *m, uint64_t call)
{
    int b;
    int64_t T = m->comb_T;
    int what = gpu_calls_release(&m->calls, call, &b);
    if (what == GPU_NOTHING || gpu_moe_set_device(m) != EPX_OK)
        return;
    ll_point(m, b);
    epx_status_t st;
    if (what == GPU_ABANDON) {
        st = m->call.windows ? gpu_moe_launch(m, EPXK_LL_ABANDON)
                             : lln_combine(m, 1);
    } else {
        m->call.T = T;
        m->call.out = m->d_scratch;
        m->call.out_esize = m->g.esize == 8 ? 8 : 4;
        st = gpu_moe_launch(m, EPXK_LL_COMB_REDUCE);
    }
    if (st != EPX_OK)
        gpu_moe_fail(m, st);
}

/* ---------------------------------------------------- checks, statistics */

static epx_status_t ll_check(gpu_moe_t *m, int64_t *dropped)
{
    int64_t state[EPXK_LL_NSTATE], err = 0;
    /* Wait for the call first: the copies below go to pageable memory,
     * and one queued behind kernels that wait for peers could hold the
     * driver while the peers still have copies of their own to make.
     * Then on the engine's stream, never the legacy one (in a process of
     * several ranks that would also wait for their blocking streams). */
    epx_status_t st = gpu_moe_sync(m);
    if (st == EPX_OK)
        st = gpu_moe_read(m, state, m->d_llstate, sizeof(state));
    if (st == EPX_OK)
        st = gpu_moe_read(m, &err, m->d_info + EPXK_INFO_ERROR, sizeof(err));
    if (st == EPX_OK)
        st = epx__cuda_err(cudaMemsetAsync(m->d_llstate, 0, sizeof(state),
                                           m->st), "cudaMemsetAsync");
    if (st == EPX_OK)
        st = gpu_moe_sync(m);
    if (st != EPX_OK)
        return gpu_moe_fail(m, st);
    if (err)
        return gpu_moe_timeout(m, "cuda low latency");
    if (dropped)
        *dropped = state[EPXK_LL_DROPPED];
    if (state[EPXK_LL_ERR] != 0) {
        epx_status_t e = (epx_status_t)state[EPXK_LL_ERR];
        return epx__error(e, "cuda low latency: a call since the last check "
                          "failed on the device (%s%s); its outputs are "
                          "unspecified", epx_status_str(e),
                          e == EPX_ERR_RANGE ? ": more rows than ll_capacity "
                          "without EPX_MOE_LL_DROP" : e == EPX_ERR_INVALID
                          ? ": expert ids outside [-1, num_experts)" : "");
    }
    return EPX_OK;
}

_Static_assert(EPXK_LL_STATS_RING == GPU_LL_STATS_CALLS,
               "the statistics ring as gpu.h describes it");

/* The ring is read whole after the counter: a call captured in a graph
 * may be replaying on another stream meanwhile, so the counter is read
 * again after the ring, and a call whose entry a later one may be
 * overwriting (in flight: the second count + 1) counts as lost. */
static epx_status_t ll_stats(gpu_moe_t *m, gpu_stats_fn each, void *ctx,
                             int64_t *lost)
{
    epx_status_t st;
    const size_t per = (size_t)(1 + m->Elog + m->g.E);
    const int64_t NR = EPXK_LL_STATS_RING;
    int64_t n0 = 0, n1 = 0;
    /* Synchronise before each copy into pageable memory (ll_check). */
    if ((st = gpu_moe_sync(m)) == EPX_OK &&
        (st = gpu_moe_read(m, &n0, m->d_llnstat, sizeof(n0))) == EPX_OK &&
        (st = gpu_moe_sync(m)) == EPX_OK && n0 > m->ll_seen &&
        (st = gpu_moe_read(m, m->h_llring, m->d_llring,
                           sizeof(int32_t) * per * EPXK_LL_STATS_RING)) ==
            EPX_OK)
        st = gpu_moe_read(m, &n1, m->d_llnstat, sizeof(n1));
    if (st == EPX_OK)
        st = gpu_moe_sync(m);
    if (st != EPX_OK)
        return gpu_moe_fail(m, st);
    if (n0 <= m->ll_seen)
        return EPX_OK;
    int64_t from = n1 + 1 - NR > m->ll_seen ? n1 + 1 - NR : m->ll_seen;
    if (from > n0)
        from = n0;
    *lost = from - m->ll_seen;
    for (int64_t n = from; n < n0; n++) {
        const int32_t *e = m->h_llring + (size_t)(n % NR) * per;
        if (e[0] >= 0 && e[0] < m->layers)
            each(ctx, e[0], e + 1, e + 1 + m->Elog);
    }
    m->ll_seen = n0;
    return EPX_OK;
}

const gpu_mode_ops_t gpu_ll_ops = {
    .init = ll_init,
    .setup = ll_setup,
    .budget = ll_budget,
    .cached = ll_cached,
    .layout = ll_layout,
    .dispatch_send = ll_dispatch_send,
    .dispatch_recv = ll_dispatch_recv,
    .dispatch_poll = ll_dispatch_poll,
    .refuse = ll_refuse,
    .combine_send = ll_combine_send,
    .combine_recv = ll_combine_recv,
    .release = ll_release,
    .check = ll_check,
    .ecount = NULL,   /* the device's ring (ll_stats) */
    .stats = ll_stats,
};
