/*
 * The GPU executor's throughput mode (src/cuda/README.md, "Protocol
 * (throughput mode)"): token-major or expert-major over both backends;
 * the protocol is the host executor's (count rows to every rank, then
 * rows at offsets computed from the whole count matrix, partials back to
 * the slot each token had in its source's packed order).  The layouts of
 * cached dispatch, the NCCL exchange's sizes and count blocks, the
 * classic and fused kernels' order, the pull combine, and hierarchical
 * two-hop through hier.c.  Behind gpu_ht_ops (engine_int.h); engine.c
 * checks the calls.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "cuda/engine_int.h"
#include "core/comm.h"
#include "moe/wire.h"
#include "util/util.h"

/* ------------------------------------------------------------- layouts */

/* Bytes of a layout: int64 sendoff [R], base [R], ebase [E]; int32 dest
 * and pos [maxT * maxdest] each, epos and ids [maxT * K] each, mycnt
 * [R + E], the count matrix [R * cnt_ints]. */
static size_t lay_bytes(const proto_geom_t *g)
{
    const size_t pairs = (size_t)(g->maxT * g->maxdest);
    return sizeof(int64_t) * (size_t)(2 * g->R + g->E) +
           sizeof(int32_t) * (2 * pairs + 2 * (size_t)(g->maxT * g->K) +
                              (size_t)(g->R + g->E) +
                              (size_t)g->R * (size_t)g->cnt_ints);
}

/* Point the call at layout i. */
static void lay_point(gpu_moe_t *m, int i)
{
    const proto_geom_t *g = &m->g;
    epxk_call_t *c = &m->call;
    const size_t pairs = (size_t)(g->maxT * g->maxdest);
    const size_t tk = (size_t)(g->maxT * g->K);
    int64_t *q = (int64_t *)m->lays[i].d;
    c->sendoff = q;
    c->base = q + g->R;
    c->ebase = q + 2 * g->R;
    int32_t *p = (int32_t *)(q + 2 * g->R + g->E);
    c->dest = p;
    c->pos = p + pairs;
    c->epos = p + 2 * pairs;
    c->lay_ids = c->epos + tk;
    c->mycnt = c->lay_ids + tk;
    c->lay_cnt = c->mycnt + g->R + g->E;
}

/* A free layout for an uncached dispatch: one of those released, or a
 * new one.  Layout 0 is allocated with the engine; more only where a
 * caller keeps several handles, stream-ordered on the engine's stream
 * (cudaMallocAsync: no wait for the device, which peers' kernels may be
 * spinning on). */
static epx_status_t lay_get(gpu_moe_t *m, int *out)
{
    for (int i = 0; i < m->nlays; i++)
        if (!m->lays[i].used) {
            m->lays[i].used = 1;
            *out = i;
            return EPX_OK;
        }
    gpu_lay_t *l = realloc(m->lays, sizeof(*l) * (size_t)(m->nlays + 1));
    if (!l)
        return epx__error(EPX_ERR_NOMEM, "cuda dispatch_send: out of memory");
    m->lays = l;
    char *d = NULL;
    epx_status_t st = m->nlays == 0
        ? epx__cuda_err(cudaMalloc((void **)&d, lay_bytes(&m->g)),
                        "cudaMalloc")
        : epx__cuda_err(cudaMallocAsync((void **)&d, lay_bytes(&m->g), m->st),
                        "cudaMallocAsync");
    if (st != EPX_OK)
        return st;
    l[m->nlays] = (gpu_lay_t){ d, 1, 0 };
    *out = m->nlays++;
    return EPX_OK;
}

/* --------------------------------------------------------------- setup */

static void ht_init(gpu_moe_t *m)
{
    gpu_calls_init(&m->calls, 0, 1);
    m->wbytes = m->sbytes = m->g.total;
    m->rx_lo = m->g.off_rows;
    m->rx_hi = m->g.off_comb;
}

/* Expert-major over NCCL: the receiver's map and its staging.  Poll's
 * words, zero (no call's), and a layout. */
static epx_status_t ht_setup(gpu_moe_t *m, const int32_t *first)
{
    const proto_geom_t *g = &m->g;
    epx_status_t st;
    (void)first;
    if (g->em && m->backend == EPX_GPU_BACKEND_NCCL) {
        if ((st = gpu_moe_dev_alloc((void **)&m->d_emmap,
                                    sizeof(int64_t) *
                                        (size_t)proto_em_map_len(g, m->L))) !=
            EPX_OK)
            return st;
        /* the rows as received, and later the partials, one per entry */
        size_t n = (size_t)g->total;
        if ((size_t)(g->ents * g->row_bytes) > n)
            n = (size_t)(g->ents * g->row_bytes);
        if ((st = gpu_moe_dev_alloc((void **)&m->rstage, n)) != EPX_OK)
            return st;
    }
    const size_t pub = sizeof(int64_t) * (size_t)(EPXK_PUB_FUSED(m->L) +
                                                  EPXK_PUBF_ECNT + g->E);
    st = epx__cuda_err(cudaHostAlloc((void **)&m->h_pub, pub,
                                     cudaHostAllocMapped |
                                         cudaHostAllocPortable),
                       "cudaHostAlloc");
    if (st == EPX_OK) {
        memset(m->h_pub, 0, pub);
        st = epx__cuda_err(cudaHostGetDevicePointer((void **)&m->d_pub,
                                                    m->h_pub, 0),
                           "cudaHostGetDevicePointer");
    }
    int lay0;
    if (st == EPX_OK && (st = lay_get(m, &lay0)) == EPX_OK)
        m->lays[lay0].used = 0;
    return st;
}

/* The fused dispatch's grid barriers need every block of the ranks
 * sharing this device resident at once (peers spin meanwhile): classic
 * kernels where the occupancy says they may not be. */
static void ht_budget(gpu_moe_t *m, int sms, int ranks)
{
    m->ht_fits = m->kset == EPXK_SET_FUSED &&
                 epxk_ht_fits(&m->g, m->num_sms * ranks, sms);
    if (m->kset == EPXK_SET_FUSED && !m->ht_fits)
        EPX_LOG(EPX_LOG_WARN, "cuda", m->comm->rank, "EPX_CUDA_KERNELS=fused: "
                "%d blocks of the fused dispatch may not all be resident on "
                "%d SMs; the classic dispatch kernels run", m->num_sms * ranks,
                sms);
}

/* ------------------------------------------------------------ dispatch */

static epx_status_t comb_fence(gpu_moe_t *m);   /* fused combine */

static epx_status_t ht_cached(const gpu_moe_t *m, int lay)
{
    if (lay < 0 || lay >= m->nlays || !m->lays[lay].used)
        return epx__error(EPX_ERR_INVALID, "dispatch: EPX_DISPATCH_CACHED "
                          "needs a handle of an earlier dispatch on this "
                          "engine");
    return EPX_OK;
}

/* A cached call's outcome: route, this rank's ids differed from its
 * layout's; agree, the ranks' (proto_cached_agree). */
static epx_status_t ht_agreed(const gpu_moe_t *m, int64_t route, int64_t agree)
{
    (void)m;
    if (route || agree == EPX_ERR_INVALID)
        return epx__error(EPX_ERR_INVALID, "dispatch: EPX_DISPATCH_CACHED "
                          "with a routing that differs from the handle's "
                          "(found on the device; nothing was sent)");
    if (agree == EPX_ERR_PEER)
        return epx__error(EPX_ERR_PEER, "dispatch: a rank's cached dispatch "
                          "had a routing that differs from its handle's "
                          "(nothing was sent)");
    if (agree != 0)
        return epx__error(EPX_ERR_MISMATCH, "dispatch: ranks disagree on "
                          "EPX_DISPATCH_CACHED (some passed it, or they "
                          "reuse handles of different dispatches); nothing "
                          "was sent");
    return EPX_OK;
}

/* The read-back of the NCCL count matrix: host sizes of the exchange. */
static void nccl_sizes(gpu_moe_t *m)
{
    const proto_geom_t *g = &m->g;
    const int32_t *mycnt = m->h_cnt + (size_t)g->R * g->cnt_ints;
    int64_t so = 0, rb = 0;
    for (int r = 0; r < g->R; r++) {
        m->nsend[r] = mycnt[r];
        m->sendoff[r] = so;
        so += mycnt[r];
        m->nrecv[r] = m->h_cnt[(size_t)r * g->cnt_ints + g->rank];
        m->rbase[r] = rb;
        rb += m->nrecv[r];
    }
    if (!g->em)
        return;
    /* Expert-major: the rows, staged unit by unit at the source and
     * received in source order (proto.h). */
    int64_t *ns = m->rsize, *soff = ns + g->R, *nr = soff + g->R,
            *rbs = nr + g->R;
    for (int r = 0; r < g->R; r++) {
        int f0 = proto_first_expert(g->R, g->E, r),
            f1 = proto_first_expert(g->R, g->E, r + 1);
        soff[r] = proto_em_stage_base(g, mycnt, f0);
        ns[r] = proto_em_stage_base(g, mycnt, f1) - soff[r];
        rbs[r] = proto_em_map_at(g, m->h_cnt, m->first, m->L,
                                 (int64_t)r * m->L);
        nr[r] = proto_em_map_at(g, m->h_cnt, m->first, m->L,
                                (int64_t)(r + 1) * m->L) - rbs[r];
    }
}

/* NCCL: this rank's count block (header and counts, kern_nccl.cu) to
 * every rank and theirs here, one grouped exchange of the same size
 * whatever the call (so ranks that disagree on it still pair up), then
 * this rank's verdict on every source's header into info's agreement
 * (proto.h proto_cached_agree_all: the same on every rank). */
static epx_status_t nccl_heads(gpu_moe_t *m)
{
    const proto_geom_t *g = &m->g;
    const epxk_call_t *c = &m->call;
    const int64_t hdr = PROTO_CNT_HDR;
    const int32_t *mine = (const int32_t *)(m->stage + g->off_cnt) +
                          proto_cnt_index(g, c->parity, g->rank) - hdr;
    int32_t *blk = (int32_t *)(m->local + g->off_cnt) +
                   proto_cnt_index(g, c->parity, 0) - hdr;
    epx_status_t st = gpu_moe_launch(m, EPXK_NCCL_HEAD);
    if (st == EPX_OK)
        st = epx__nccl_counts(m->nccl, g, mine, blk, m->st);
    if (st == EPX_OK)
        st = gpu_moe_launch(m, EPXK_NCCL_AGREE);
    return st;
}

/* Does this uncached throughput call take the fused dispatch
 * (EPX_CUDA_KERNELS=fused, kern_ht.cu)?  Windows backend, within the
 * kernel's shared memory; the rest (NCCL, cached and refused calls)
 * takes the classic kernels, which speak the same window protocol. */
static int ht_fused_ok(const gpu_moe_t *m)
{
    return m->kset == EPXK_SET_FUSED && m->call.windows && m->ht_fits &&
           !m->hier && epxk_ht_covers(&m->g);
}

/* The rows into the peers' windows (windows backend): the pack kernel,
 * or the hierarchical stage and forward kernels (kern_hier.cu). */
static epx_status_t pack(gpu_moe_t *m)
{
    if (m->hier)
        return gpu_hier_dispatch(m->hier, &m->g, &m->call, m->num_sms, m->st);
    return gpu_moe_launch(m, EPXK_PACK);
}

/* A bad argument on this rank (throughput, both backends), refused on
 * every rank as the host executor's count exchange does: the call still
 * takes its turn, as a header-only exchange that says so (proto.h
 * PROTO_CNT_REFUSED), so the peers' offsets kernels (NCCL: their verdict
 * on the headers, nccl_heads) fail it (EPX_ERR_PEER from their
 * epx_dispatch_recv) and nothing is packed or moved; here it is over at
 * once.  Returns `why` (its message kept), or the error that stopped the
 * exchange from being queued (then the peers time out). */
static epx_status_t ht_refuse(gpu_moe_t *m, void *stream, epx_status_t why)
{
    char msg[512];
    snprintf(msg, sizeof(msg), "%s", epx_last_error());
    int li = -1, b;
    uint64_t n;
    epx_status_t st = lay_get(m, &li);
    if (st == EPX_OK && (st = gpu_calls_send(&m->calls, 0, &n, &b)) != EPX_OK)
        gpu_layout_release(m, li);
    if (st != EPX_OK)
        return st;
    epxk_call_t *c = &m->call;
    m->seq++;
    lay_point(m, li);
    m->lays[li].seq = (int32_t)m->seq;
    c->cached = 0;
    c->refused = 1;
    c->lay_seq = m->lays[li].seq;
    c->route = (proto_route_t){ 0, NULL, NULL, NULL };
    c->x = NULL;
    c->idx = NULL;
    c->w = NULL;
    c->idx64 = 0;
    c->T = 0;
    c->gscale = 0.0f;
    c->seq = m->seq;
    c->parity = (int)(m->seq & 1);
    if ((st = gpu_moe_stream_in(m, stream)) == EPX_OK)
        st = epx__cuda_err(cudaMemsetAsync(m->d_info + EPXK_INFO_BAD_IDS, 0,
                                           sizeof(int64_t) * EPXK_INFO_CALL,
                                           m->st), "cudaMemsetAsync");
    if (st == EPX_OK && (st = gpu_moe_launch(m, EPXK_CACHED)) == EPX_OK &&
        (st = c->windows ? gpu_moe_launch(m, EPXK_OFFSETS) : nccl_heads(m)) ==
            EPX_OK &&
        (st = pack(m)) == EPX_OK)
        st = gpu_moe_launch(m, EPXK_RECV);
    c->refused = 0;
    /* Over here: the next call is queued after these kernels. */
    gpu_calls_recv(&m->calls, n, &b);
    gpu_calls_release(&m->calls, n, &b);
    gpu_layout_release(m, li);
    if (st != EPX_OK)
        return gpu_moe_fail(m, st);
    return epx__error(why, "%s", msg);
}

/* The call's kernels and exchanges: cached (the layout's ids checked
 * and reused), fused, or classic over windows or NCCL. */
static epx_status_t ht_dispatch_send(gpu_moe_t *m,
                                     const epx_dispatch_args_t *a,
                                     void *stream, int b, int li, int cached)
{
    const proto_geom_t *g = &m->g;
    epxk_call_t *c = &m->call;
    const int64_t T = a->x.rows;
    epx_status_t st;
    (void)b;
    m->seq++;
    lay_point(m, li);
    if (!cached)
        m->lays[li].seq = (int32_t)m->seq;
    c->cached = cached;
    c->lay_seq = m->lays[li].seq;
    c->x = a->x.data;
    c->idx = a->topk_idx.data;
    c->idx64 = a->topk_idx.dtype == EPX_DTYPE_INT64;
    c->w = a->topk_weights.data;
    c->T = T;
    c->seq = m->seq;
    c->parity = (int)(m->seq & 1);
    if ((st = gpu_moe_stream_in(m, stream)) != EPX_OK ||
        (st = comb_fence(m)) != EPX_OK)
        return gpu_moe_fail(m, st);
    /* This call's flags only (a call released before its recv leaves
     * its own set). */
    if ((st = epx__cuda_err(cudaMemsetAsync(m->d_info + EPXK_INFO_BAD_IDS, 0,
                                            sizeof(int64_t) * EPXK_INFO_CALL,
                                            m->st),
                            "cudaMemsetAsync")) != EPX_OK ||
        (st = gpu_moe_lost(m, a, 1)) != EPX_OK)
        return gpu_moe_fail(m, st);
    m->fcall = 0;
    if (cached && c->windows) {
        /* The ids checked against the layout's, the headers exchanged;
         * then the layout's ids route the rows, so what is packed always
         * matches the positions. */
        if ((st = gpu_moe_launch(m, EPXK_CACHED)) == EPX_OK) {
            c->idx = c->lay_ids;
            c->idx64 = 0;
            if ((st = gpu_moe_launch(m, EPXK_OFFSETS)) == EPX_OK &&
                (st = pack(m)) == EPX_OK)
                st = gpu_moe_launch(m, EPXK_RECV);
        }
    } else if (ht_fused_ok(m)) {
        /* One kernel; the counts come back through mapped memory. */
        m->fcall = 1;
        m->fseq = m->seq;
        st = epx__cuda_err((cudaError_t)epxk_ht_launch(&m->g, c, m->num_sms,
                                                       m->st),
                           "kernel launch");
    } else if (c->windows) {
        if ((st = gpu_moe_launch(m, EPXK_LAYOUT)) == EPX_OK &&
            (st = gpu_moe_launch(m, EPXK_OFFSETS)) == EPX_OK &&
            (st = pack(m)) == EPX_OK)
            st = gpu_moe_launch(m, EPXK_RECV);
    } else {
        int32_t *cnt = (int32_t *)(m->local + g->off_cnt) +
                       proto_cnt_index(g, c->parity, 0);
        /* every source's counts, from the first's (after its header) */
        size_t blk = sizeof(int32_t) *
                     ((size_t)g->R * g->cnt_ints - PROTO_CNT_HDR);
        /* Expert-major: pack stages unit by unit (ebase: the staging
         * bases), and the map of what arrives follows the counts.  A
         * cached call keeps its layout's (ids checked against it on the
         * device, then those ids pack), and the counts every rank sends
         * are its layout's: the matrix that arrives is the layout's. */
        if (cached) {
            if ((st = gpu_moe_launch(m, EPXK_CACHED)) == EPX_OK) {
                c->idx = c->lay_ids;
                c->idx64 = 0;
            }
        } else if ((st = gpu_moe_launch(m, EPXK_LAYOUT)) == EPX_OK && g->em &&
                   !m->hier) {
            st = gpu_moe_launch(m, EPXK_NCCL_EM_BASE);
        }
        /* hierarchical: its records and count blocks after the heads, as
         * a refused call's pack (hier.c) */
        if (st == EPX_OK && !m->hier)
            st = gpu_moe_launch(m, EPXK_PACK);
        if (st == EPX_OK)
            st = nccl_heads(m);
        if (st == EPX_OK && m->hier)
            st = pack(m);
        if (st == EPX_OK && g->em && !m->hier)
            st = gpu_moe_launch(m, EPXK_NCCL_EM_MAP);
        /* The one host synchronisation: the verdict on the call and the
         * sizes of the receives. */
        if (st == EPX_OK)
            st = epx__cuda_err(cudaMemcpyAsync(m->h_info + EPXK_INFO_AGREE,
                                               m->d_info + EPXK_INFO_AGREE,
                                               sizeof(int64_t),
                                               cudaMemcpyDeviceToHost, m->st),
                               "cudaMemcpyAsync");
        if (st == EPX_OK)
            st = epx__cuda_err(cudaMemcpyAsync(m->h_cnt, cnt, blk,
                                               cudaMemcpyDeviceToHost, m->st),
                               "cudaMemcpyAsync");
        if (st == EPX_OK)
            st = epx__cuda_err(cudaMemcpyAsync(
                                   m->h_cnt + (size_t)g->R * g->cnt_ints,
                                   c->mycnt,
                                   sizeof(int32_t) * (size_t)(g->R + g->E),
                                   cudaMemcpyDeviceToHost, m->st),
                               "cudaMemcpyAsync");
        if (st == EPX_OK)
            st = epx__cuda_err(cudaStreamSynchronize(m->st),
                               "cudaStreamSynchronize");
        /* Rows move only where the ranks agreed (all alike: nothing is
         * sent, nothing awaited); the recv kernel then reports none. */
        const int agreed = st == EPX_OK && m->h_info[EPXK_INFO_AGREE] == 0;
        if (agreed && m->hier) {
            st = gpu_hier_nccl_recv(m->hier, g, c, m->local, m->h_cnt,
                                    m->num_sms, m->st);
        } else if (agreed) {
            nccl_sizes(m);
            st = g->em
                ? epx__nccl_dispatch_em(m->nccl, g, m->stage, m->rstage,
                                        m->local, m->nsend, m->rsize, m->st)
                : epx__nccl_dispatch(m->nccl, g, m->stage, m->local, m->nsend,
                                     m->sendoff, m->nrecv, m->rbase, m->st);
        }
        if (st == EPX_OK && agreed && g->em && !m->hier)
            st = gpu_moe_launch(m, EPXK_NCCL_EM_SCATTER);
        if (st == EPX_OK)
            st = gpu_moe_launch(m, EPXK_RECV);
    }
    /* The layout's per-expert counts ride along: the statistics come from
     * the routing without a pass of their own (the fused kernel publishes
     * them and the rest of info in mapped memory). */
    if (st == EPX_OK && !m->fcall)
        st = epx__cuda_err(cudaMemcpyAsync(m->h_ecnt, c->mycnt + g->R,
                                           sizeof(int32_t) * (size_t)g->E,
                                           cudaMemcpyDeviceToHost, m->st),
                           "cudaMemcpyAsync");
    if (st == EPX_OK && !m->fcall)
        st = epx__cuda_err(cudaMemcpyAsync(m->h_info, m->d_info,
                                           sizeof(int64_t) *
                                               (size_t)(EPXK_INFO_COUNTS +
                                                        2 * m->L),
                                           cudaMemcpyDeviceToHost, m->st),
                           "cudaMemcpyAsync");
    if (st == EPX_OK)
        st = epx__cuda_err(cudaEventRecord(m->ev_info, m->st),
                           "cudaEventRecord");
    if (st != EPX_OK)
        return gpu_moe_fail(m, st);
    return EPX_OK;
}

/* What a throughput recv describes: the window's regions, `rows` rows and
 * the counts in h_counts. */
static void ht_describe(gpu_moe_t *m, int b, int64_t rows, epx_recv_t *recv)
{
    const proto_geom_t *g = &m->g;
    epx_recv_t r;
    memset(&r, 0, sizeof(r));
    r.struct_size = recv->struct_size ? recv->struct_size : sizeof(r);
    r.num_rows = rows;
    moe_wire_t f;   /* checked at creation */
    moe_wire_init(&f, (epx_wire_t)g->wire, m->p.dtype, g->H);
    r.x.data = m->local + g->off_rows;
    r.x.dtype = f.x_dtype;
    r.x.rows = rows;
    r.x.cols = f.x_cols;
    r.num_local_experts = m->L;
    r.first_local_expert = m->first;
    r.expert_counts = m->h_counts;
    r.expert_offsets = g->em ? m->h_counts + m->L : NULL;
    r.src_rank = (const int32_t *)(m->local + g->off_src_rank);
    r.src_token = (const int32_t *)(m->local + g->off_src_token);
    r.topk_idx = g->em ? NULL : (const int32_t *)(m->local + g->off_idx);
    r.topk_weights = (const float *)(m->local + g->off_w);
    r.local_experts = gpu_moe_local_experts(m, b);
    r.x_scales.dtype = f.scale_dtype;
    if (moe_wire_quantized(&f)) {
        r.x_scales.data = m->local + g->off_scales;
        r.x_scales.rows = rows;
        r.x_scales.cols = f.nblocks;
    }
    if (f.global_bytes)
        r.x_global_scale = (const float *)(m->local + g->off_gscale);
    size_t n = r.struct_size < sizeof(r) ? r.struct_size : sizeof(r);
    memcpy(recv, &r, n);
}

/* The end of a throughput recv, its rows and counts known: the caller's
 * stream after the engine's work, the regions described, and ids outside
 * [-1, E) reported (bad). */
static epx_status_t ht_recv_end(gpu_moe_t *m, void *stream, epx_recv_t *recv,
                                int b, int bad)
{
    epx_status_t st = gpu_moe_stream_out(m, stream);
    if (st != EPX_OK)
        return gpu_moe_fail(m, st);
    ht_describe(m, b, m->rows, recv);
    if (bad)
        return epx__error(EPX_ERR_INVALID, "cuda dispatch: topk_idx held ids "
                          "outside [-1, %d); they were treated as -1 (recv "
                          "is filled: complete the call with combine)",
                          m->Elog);
    return EPX_OK;
}

/* The fused dispatch's host wait: its sequence word in mapped memory,
 * which the kernel stores once every count row of the call is here,
 * before the rows move.  Bounded: by EPX_TIMEOUT four times over (the
 * kernel's waits before it publishes, each bounded by the timeout, and
 * the engine's earlier work) from the moment the work queued before the
 * dispatch on the caller's stream is done (ev_in); a kernel that ended
 * without publishing is an error. */
static epx_status_t ht_fused_wait(gpu_moe_t *m)
{
    const double limit = 4 * epx__comm_timeout(m->comm);
    double t0 = 0;
    for (unsigned n = 0;; n++) {
        if ((uint64_t)__atomic_load_n(&m->h_pub[EPXK_PUB_SEQ],
                                      __ATOMIC_ACQUIRE) == m->fseq)
            return EPX_OK;
        if (n % 64)
            continue;
        cudaError_t e = cudaEventQuery(m->ev_info);
        if (e == cudaSuccess) {
            if ((uint64_t)__atomic_load_n(&m->h_pub[EPXK_PUB_SEQ],
                                          __ATOMIC_ACQUIRE) == m->fseq)
                return EPX_OK;
            return epx__error(EPX_ERR_SYSTEM, "cuda dispatch: the fused "
                              "kernel ended without publishing its counts");
        }
        if (e != cudaErrorNotReady)
            return epx__cuda_err(e, "cudaEventQuery");
        if (t0 == 0) {   /* the clock starts once the inputs are ready */
            e = cudaEventQuery(m->ev_in);
            if (e == cudaSuccess)
                t0 = epx__now();
            else if (e != cudaErrorNotReady)
                return epx__cuda_err(e, "cudaEventQuery");
        } else if (epx__now() - t0 > limit) {
            return epx__error(EPX_ERR_TIMEOUT, "cuda dispatch: the fused "
                              "kernel published no counts within %.1f s",
                              limit);
        }
        struct timespec ts = { 0, 2000 };
        nanosleep(&ts, NULL);
    }
}

/* dispatch_recv of a fused call: what the classic path reads back from
 * info and the layout's counts, read from the mapped words instead; the
 * rows are the caller's through stream order (stream_out). */
static epx_status_t ht_fused_recv(gpu_moe_t *m, uint64_t call, void *stream,
                                  epx_recv_t *recv, int b)
{
    const int64_t *pub = m->h_pub, *pf = pub + EPXK_PUB_FUSED(m->L);
    epx_status_t st = ht_fused_wait(m);
    if (st != EPX_OK)
        return gpu_moe_fail(m, st);
    /* The published counts serve epx_dispatch_poll early; recv keeps the
     * contract's guarantees: the inputs are free and every unit's rows
     * are here when it returns (the kernel is done), and a wait that
     * timed out after the counts were published (info's error word) is
     * this call's error. */
    if ((st = epx__cuda_err(cudaEventSynchronize(m->ev_info),
                            "cudaEventSynchronize")) != EPX_OK ||
        (st = gpu_moe_read(m, m->h_info + EPXK_INFO_ERROR,
                           m->d_info + EPXK_INFO_ERROR, sizeof(int64_t))) !=
            EPX_OK ||
        (st = gpu_moe_sync(m)) != EPX_OK)
        return gpu_moe_fail(m, st);
    if (pf[EPXK_PUBF_ERROR] || m->h_info[EPXK_INFO_ERROR])
        return gpu_moe_timeout(m, "cuda dispatch");
    int bad = pf[EPXK_PUBF_BAD_IDS] != 0;
    if ((st = ht_agreed(m, 0, pub[EPXK_PUB_AGREE])) != EPX_OK) {
        gpu_calls_release(&m->calls, call, &b);
        return st;
    }
    m->rows = pub[EPXK_PUB_ROWS];
    for (int j = 0; j < 2 * m->L; j++)
        m->h_counts[j] = pub[EPXK_PUB_COUNTS + j];
    for (int e = 0; e < m->g.E; e++)
        m->h_ecnt[e] = (int32_t)pf[EPXK_PUBF_ECNT + e];
    return ht_recv_end(m, stream, recv, b, bad);
}

/* The counts read back (windows: the one host synchronisation), a
 * cached call's verdict, the receive regions described. */
static epx_status_t ht_dispatch_recv(gpu_moe_t *m, uint64_t call,
                                     void *stream, epx_recv_t *recv, int b)
{
    epx_status_t st;
    if (m->fcall)
        return ht_fused_recv(m, call, stream, recv, b);
    /* The one host synchronisation of the windows backend. */
    st = epx__cuda_err(cudaEventSynchronize(m->ev_info),
                       "cudaEventSynchronize");
    if (st != EPX_OK)
        return gpu_moe_fail(m, st);
    if (m->h_info[EPXK_INFO_ERROR])
        return gpu_moe_timeout(m, "cuda dispatch");
    int bad = m->h_info[EPXK_INFO_BAD_IDS] != 0;   /* cleared by each send */
    /* A cached call the ranks did not agree on moved nothing: it ends
     * here (its combine is refused), the engine stays usable. */
    if ((st = ht_agreed(m, m->h_info[EPXK_INFO_ROUTE],
                        m->h_info[EPXK_INFO_AGREE])) != EPX_OK) {
        gpu_calls_release(&m->calls, call, &b);
        return st;
    }
    m->rows = m->h_info[EPXK_INFO_ROWS];
    for (int j = 0; j < 2 * m->L; j++)
        m->h_counts[j] = m->h_info[EPXK_INFO_COUNTS + j];
    return ht_recv_end(m, stream, recv, b, bad);
}

/* Throughput readiness without waiting (include/epx.h; src/cuda/README.md,
 * "Readiness"): what the recv kernel has published in host-mapped memory
 * for this call (gpu_poll_read), or, after dispatch_recv, everything. */
static epx_status_t ht_dispatch_poll(gpu_moe_t *m, uint64_t call, int b,
                                     int received, epx_recv_t *recv,
                                     uint8_t *ready, int *num_ready)
{
    epx_status_t st;
    (void)call;
    int64_t rows = m->rows;
    int n = m->L;
    if (received) {
        if (m->L > 0)
            memset(ready, 1, (size_t)m->L);
    } else {
        int64_t agree = 0;
        n = gpu_poll_read(m->h_pub, m->L, m->seq, ready, m->h_counts, &rows,
                          &agree);
        if ((st = ht_agreed(m, 0, agree)) != EPX_OK)
            return st;
    }
    ht_describe(m, b, rows, recv);
    *num_ready = n;
    return EPX_OK;
}

/* ------------------------------------------------------------- combine */

/* The fused set's combine (kern_comb.cu), throughput mode over windows:
 * whether it runs this call. */
static int comb_fused(const gpu_moe_t *m)
{
    /* FP64 engines combine with the classic kernels (the pull sums in
     * fp32); every rank has the engine's dtype, so all ranks agree. */
    return m->kset == EPXK_SET_FUSED && m->call.windows &&
           m->g.esize != 8 && !m->hier;
}

static epx_status_t comb_launch(gpu_moe_t *m, int which)
{
    int rc = epxk_comb_launch(which, &m->g, &m->call, m->num_sms, m->st);
    return epx__cuda_err((cudaError_t)rc, "kernel launch");
}

/* Its send: y in the receive rows (as epx_recv_t.x describes them, the
 * host executor's test for outputs in place) stays there for the
 * sources to pull, and only the flag saying so goes out; else the
 * classic put pushes the partials. */
static epx_status_t comb_fused_send(gpu_moe_t *m, const epx_combine_args_t *a)
{
    const int in_place = !m->g.qblock &&
                         a->y.data == (void *)(m->local + m->g.off_rows);
    m->call.comb_pull = !in_place ? PROTO_PULL_PUSHED
                      : m->call.unweighted ? PROTO_PULL_UNWEIGHTED
                                           : PROTO_PULL_ROWS;
    m->pull_pending = m->call.seq;   /* every rank pulls this call */
    return in_place ? comb_launch(m, EPXK_COMB_READY)
                    : gpu_moe_launch(m, EPXK_COMB_PUT);
}

/* The pull fence, first on the engine's stream in a throughput dispatch
 * after a fused combine: nothing of this dispatch stores into a window
 * before every rank's pull of that combine is done (kern_comb.cu). */
static epx_status_t comb_fence(gpu_moe_t *m)
{
    if (!m->pull_pending)
        return EPX_OK;
    m->call.pull_wait = m->pull_pending;
    m->pull_pending = 0;
    return comb_launch(m, EPXK_COMB_FENCE);
}

/* The partials back: the fused pull, hierarchical, the put over
 * windows, or NCCL's exchange. */
static epx_status_t ht_combine_send(gpu_moe_t *m, const epx_combine_args_t *a,
                                    int b)
{
    epx_status_t st;
    (void)b;
    if (comb_fused(m))
        st = comb_fused_send(m, a);
    else if (m->hier)
        st = gpu_hier_combine_send(m->hier, &m->g, &m->call, m->local,
                                   m->num_sms, m->st);
    else if (m->call.windows)
        st = gpu_moe_launch(m, EPXK_COMB_PUT);
    else if (!m->g.em)
        st = epx__nccl_combine(m->nccl, &m->g, a->y.data, m->local, m->nsend,
                               m->sendoff, m->nrecv, m->rbase, m->st);
    /* Expert-major over NCCL: each entry's partial into rstage, in entry
     * order, so each source's partials go back as one range. */
    else if ((st = gpu_moe_launch(m, EPXK_NCCL_EM_PARTIAL)) == EPX_OK)
        st = epx__nccl_combine(m->nccl, &m->g, m->rstage, m->local, m->nsend,
                               m->sendoff, m->nrecv, m->rbase, m->st);
    return st;
}

/* The partials summed into out: the fused pull, hierarchical, or the
 * classic reduce. */
static epx_status_t ht_combine_recv(gpu_moe_t *m, int b)
{
    (void)b;
    return comb_fused(m) ? comb_launch(m, EPXK_COMB_PULL)
           : m->hier ? gpu_hier_combine_recv(m->hier, &m->g, &m->call,
                                             m->num_sms, m->st)
           : gpu_moe_launch(m, EPXK_COMB_REDUCE);
}

/* Throughput: a fused combine sent but never received gets no pull, so
 * its pulled word goes out alone (kern_comb.cu); otherwise nothing to do. */
static void ht_release(gpu_moe_t *m, uint64_t call)
{
    int b;
    if (comb_fused(m) && m->calls.combining >= 0 &&
        m->calls.slot[m->calls.combining].n == call) {
        gpu_calls_release(&m->calls, call, &b);
        epx_status_t st = gpu_moe_set_device(m);
        if (st == EPX_OK && (st = comb_launch(m, EPXK_COMB_DONE)) != EPX_OK)
            gpu_moe_fail(m, st);
        return;
    }
    gpu_calls_release(&m->calls, call, &b);   /* GPU_NOTHING */
}

/* -------------------------------------------------- checks, statistics */

/* Throughput mode: combine never synchronises, so a device wait that
 * timed out in it is otherwise seen only by the next dispatch_recv. */
static epx_status_t ht_check(gpu_moe_t *m, int64_t *dropped)
{
    int64_t err = 0;
    epx_status_t st = gpu_moe_sync(m);
    if (st == EPX_OK && m->d_info) {
        st = gpu_moe_read(m, &err, m->d_info + EPXK_INFO_ERROR, sizeof(err));
        if (st == EPX_OK)
            st = gpu_moe_sync(m);
    }
    if (st != EPX_OK)
        return gpu_moe_fail(m, st);
    if (err)
        return gpu_moe_timeout(m, "cuda");
    if (dropped)
        *dropped = 0;
    return EPX_OK;
}

/* The layout's per-expert counts of the call received (gpu_dispatch_ecount). */
static const int32_t *ht_ecount(const gpu_moe_t *m)
{
    return m->calls.slot[0].state == GPU_CALL_RECEIVED ? m->h_ecnt : NULL;
}

const gpu_mode_ops_t gpu_ht_ops = {
    .init = ht_init,
    .setup = ht_setup,
    .budget = ht_budget,
    .cached = ht_cached,
    .layout = lay_get,
    .dispatch_send = ht_dispatch_send,
    .dispatch_recv = ht_dispatch_recv,
    .dispatch_poll = ht_dispatch_poll,
    .refuse = ht_refuse,
    .combine_send = ht_combine_send,
    .combine_recv = ht_combine_recv,
    .release = ht_release,
    .check = ht_check,
    .ecount = ht_ecount,
    .stats = NULL,   /* read back with each dispatch */
};
