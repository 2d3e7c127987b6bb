/*
 * Hierarchical two-hop dispatch and combine on device ranks
 * (EPX_MOE_HIERARCHICAL, windows backend; src/cuda/README.md,
 * "Hierarchical two-hop").  Every position, record field and the chain's
 * order are proto/hier.h's, which the host executor runs too
 * (src/moe/hier.c, hier_combine.c) and tests/proto/test_hier_core checks
 * over simulated ranks against the reference; this file adds the thread
 * mapping, the copies into peers' windows and the signals:
 *
 *   stage   (dispatch, after offsets; grid, a warp per token): the
 *           token's record (header, row in the wire format, quantized
 *           once) into this rank's staging slot of the token, a copy to
 *           the gateway of each remote destination domain (a slot taken
 *           from the domain's counter: a gateway's records may come in any
 *           order, their positions are in them), and its rows in this
 *           domain at the flat offsets; the last block stores each
 *           gateway's record count and releases its sequence word, and
 *           this rank's data flag at its own domain's members.
 *   forward (grid): waits for the sequence word of each other domain's
 *           source with this rank's local index, forwards its records (a
 *           warp each) to this domain's members; the last block releases
 *           those sources' data flags there.  The recv kernel is the flat
 *           path's: every rank still gets R data flags.
 *   put     (combine_send; grid, a warp per entry): the entry's partial
 *           (the flat path's: a copy of y token-major, the rows' weighted
 *           sum rounded to the engine dtype expert-major; FP64 engines:
 *           in double, unrounded) into the gateway of its source in this
 *           domain at the entry's slot; the last block releases this
 *           member's partials word at every gateway of the domain.
 *   chain   (combine_send; grid): waits for the domain's partials and the
 *           earlier domains' accumulators, then a warp per token of its
 *           sources with destinations here continues the fp32 sum (FP64
 *           engines: double; proto_hier_acc_elem: 0 + first term where it
 *           starts) with this domain's partials in rank order and stores
 *           it into the next destination domain's gateway, or into the
 *           source's finished sums; the last block releases the
 *           accumulators word at the later domains' gateways and the
 *           finished word at every source it serves.
 *   out     (combine_recv; grid): waits for the finished word of every
 *           domain's gateway, rounds each sum once (FP64 engines: the
 *           double sum as it is; 0 for a token that went nowhere).
 * Same memory ordering as kernels.cu: plain stores, __threadfence_system
 * in every thread, a block barrier, one release store; acquire loads on
 * the reader's side.  The words are int32 copies of the call's sequence
 * number, compared for equality (the host executor's words).
 *
 * Never run on a GPU yet.
 */
#include <cuda_runtime.h>
#include <stdint.h>
#include "epx.h"
#include "proto/proto.h"
#include "proto/hier.h"
#include "proto/hier_nccl.h"
#include "cuda/kern_launch.h"
#include "cuda/kern_sync.cuh"
#include "cuda/kern_reduce.cuh"

#define WARP 32

/* Until *p == want, bounded by the timeout (then info's error word). */
__device__ static bool hier_wait(const int32_t *p, int32_t want,
                                 uint64_t timeout_ns, int64_t *info)
{
    return epxk_wait([&] { return epxk_ld_acquire_s32(p) == want; }, timeout_ns,
                     &info[EPXK_INFO_ERROR]);
}

/* A copy by a warp: 16-byte vectors where both ends and the length allow,
 * else 4-byte words, else bytes. */
__device__ static void hier_copy(char *dst, const char *src, int64_t bytes,
                                 int lane)
{
    const uintptr_t a = (uintptr_t)dst | (uintptr_t)src | (uintptr_t)bytes;
    if ((a & 15) == 0) {
        for (int64_t i = lane; i < bytes / 16; i += WARP)
            ((uint4 *)dst)[i] = ((const uint4 *)src)[i];
    } else if ((a & 3) == 0) {
        for (int64_t i = lane; i < bytes / 4; i += WARP)
            ((uint32_t *)dst)[i] = ((const uint32_t *)src)[i];
    } else {
        for (int64_t i = lane; i < bytes; i += WARP)
            dst[i] = src[i];
    }
}

__device__ static __forceinline__ uint64_t *hier_flag(const proto_geom_t &g,
                                                      char *win, int f, int s)
{
    return (uint64_t *)(win + g.off_flags) + (int64_t)f * g.R + s;
}

__device__ static __forceinline__ int32_t *hier_word(char *win, int64_t off,
                                                     int64_t i)
{
    return (int32_t *)(win + off) + i;
}

/* The call's count matrix (a cached call's: its layout's). */
__device__ static __forceinline__ const int32_t *hier_cnt(
    const proto_geom_t &g, const epxk_call_t &c)
{
    return c.cached ? c.lay_cnt
                    : (const int32_t *)(c.peers[g.rank] + g.off_cnt) +
                          proto_cnt_index(&g, c.parity, 0);
}

/* A record's wire parts: row scale, scales, data (proto/hier.h). */
typedef struct hier_parts {
    char *gs, *sc, *q;
} hier_parts_t;

__device__ static __forceinline__ hier_parts_t hier_rec_parts(
    const proto_geom_t &g, const epxk_hier_t &h, char *rec)
{
    hier_parts_t p;
    p.gs = rec + h.rec_hdr;
    p.sc = p.gs + g.gscale_bytes;
    p.q = p.sc + g.scale_bytes;
    return p;
}

/* A bf16 row quantized once by a warp into a record's parts: the
 * arithmetic of proto.h proto_q_row_fan (its scale blocks taken by the
 * lanes in turn; NVFP4's row maximum reduced over the warp first). */
__device__ static void hier_quant(const proto_geom_t &g, const hier_parts_t &p,
                                  const uint16_t *x, float given, int lane)
{
    const int64_t chunks = proto_q_chunks(&g);
    const int G = proto_q_group(&g), cb = proto_q_chunk_bytes(&g);
    uint16_t v[MOE_QUANT_CHUNK];
    uint8_t o[MOE_QUANT_CHUNK];
    float global = 0.0f;
    if (g.wire == EPX_WIRE_NVFP4) {
        uint32_t m = 0;
        for (int64_t c = lane; given <= 0.0f && c < chunks; c += WARP) {
            int nan;
            proto_q_load_chunk(&g, x, c, v);
            uint32_t a = moe_quant_chunk_amax(v, MOE_QUANT_CHUNK, &nan);
            m = a > m ? a : m;
        }
        if (given <= 0.0f)   /* the same for the whole warp */
            m = __reduce_max_sync(0xffffffffu, m);
        global = proto_q_row_global(given, m);
        if (lane == 0)
            *(float *)p.gs = global;
    }
    for (int64_t b0 = (int64_t)lane * G; b0 < chunks; b0 += (int64_t)WARP * G) {
        uint32_t m = 0;
        int nan = 0;
        for (int64_t c = b0; c < b0 + G && c < chunks; c++) {
            int n1;
            proto_q_load_chunk(&g, x, c, v);
            uint32_t a = moe_quant_chunk_amax(v, MOE_QUANT_CHUNK, &n1);
            m = a > m ? a : m;
            nan |= n1;
        }
        for (int64_t c = b0; c < b0 + G && c < chunks; c++) {
            const int len = proto_q_load_chunk(&g, x, c, v);
            const uint32_t s = proto_q_encode(&g, v, MOE_QUANT_CHUNK, m, nan,
                                              global, o);
            const int nb = proto_q_chunk_stored(&g, len);
            for (int i = 0; i < nb; i++)
                p.q[c * cb + i] = (char)o[i];
            if (c == b0)
                proto_q_store_scale(&g, p.sc, c / G, s);
        }
    }
}

/* A record's row into row `row` of window w's receive regions. */
__device__ static void hier_put_row(const proto_geom_t &g, char *w, int64_t row,
                                    const hier_parts_t &p, int lane)
{
    hier_copy(w + g.off_rows + row * g.xrow_bytes, p.q, g.xrow_bytes, lane);
    if (g.scale_bytes)
        hier_copy(w + g.off_scales + row * g.scale_bytes, p.sc, g.scale_bytes,
                  lane);
    if (g.gscale_bytes && lane == 0)
        ((float *)(w + g.off_gscale))[row] = *(const float *)p.gs;
}

/* One record of source src to its destinations in this rank's domain, at
 * the flat path's places (proto/hier.h), by a warp.  only >= 0: to that
 * member alone, its entry's return slot rslot (over NCCL: the record's
 * place in hop 2's receive, proto/hier_nccl.h). */
__device__ static void hier_forward(const proto_geom_t &g,
                                    const epxk_call_t &c, const epxk_hier_t &h,
                                    const int32_t *cnt, char *rec, int src,
                                    int lane, int only, int64_t rslot)
{
    const int K = g.K, L = h.x.L;
    const int32_t *r = (const int32_t *)rec;
    const proto_ids_t ids = proto_hier_rec_ids(r, K, g.E);
    const float *rw = (const float *)r + PROTO_HIER_REC_W(K);
    const hier_parts_t p = hier_rec_parts(g, h, rec);
    int32_t dst[EPX_MAX_TOPK];
    const int nd = proto_walk_dests(&g, &ids, NULL, c.e2r, 0, NULL, dst, NULL);
    for (int j = 0; j < nd; j++) {
        const int d = dst[j];
        if (d / L != h.x.dom || (only >= 0 && d != only))
            continue;
        char *w = c.peers[d];
        const int32_t dp = proto_hier_rec_dpos(r, K, c.e2r, d);
        const int64_t e_at = proto_hier_entbase(&g, cnt, src, d) + dp;
        const int64_t slot = only >= 0 ? rslot
            : proto_hier_slot(&g, &h.x, cnt, h.w.P, src, d, dp);
        if (!g.em) {
            hier_put_row(g, w, e_at, p, lane);
            if (lane == 0) {
                ((int32_t *)(w + g.off_src_rank))[e_at] = src;
                ((int32_t *)(w + g.off_src_token))[e_at] = r[0];
                ((int32_t *)(w + g.off_ret_slot))[e_at] = (int32_t)slot;
                proto_meta_topk(&g, &ids, rw, c.e2r, 0, d, c.first[d],
                                (int32_t *)(w + g.off_idx) + e_at * K,
                                (float *)(w + g.off_w) + e_at * K);
            }
            continue;
        }
        /* Expert-major: a row per choice of a unit of d, in top-k order,
         * and the entry naming them. */
        int32_t *erows = (int32_t *)(w + g.off_ent_rows) + e_at * K;
        int n = 0;
        for (int k = 0; k < K; k++) {
            const int32_t u = r[PROTO_HIER_REC_IDS(K) + k];
            if (u < 0 || proto_owner(c.e2r, u) != d)
                continue;
            const int64_t row = proto_hier_unit_row(&g, cnt, src, c.first[d],
                                                    r, K, k);
            hier_put_row(g, w, row, p, lane);
            if (lane == 0) {
                ((int32_t *)(w + g.off_src_rank))[row] = src;
                ((int32_t *)(w + g.off_src_token))[row] = r[0];
                ((float *)(w + g.off_w))[row] = rw[k];
                erows[n] = (int32_t)row;
            }
            n++;
        }
        if (lane == 0) {
            for (int k = n; k < K; k++)
                erows[k] = -1;
            ((int32_t *)(w + g.off_ent_src))[e_at] = src;
            ((int32_t *)(w + g.off_ret_slot))[e_at] = (int32_t)slot;
        }
    }
}

/* Token t's record (header, row in the wire format, quantized once) into
 * this rank's staging slot of it, by a warp; visible to the warp after. */
__device__ static char *hier_rec_make(const proto_geom_t &g,
                                      const epxk_call_t &c,
                                      const epxk_hier_t &h,
                                      const proto_ids_t &ids, int64_t t,
                                      int lane)
{
    char *rec = c.peers[g.rank] + h.w.stage +
                ((int64_t)h.x.dom * g.maxT + t) * h.rec_bytes;
    const hier_parts_t p = hier_rec_parts(g, h, rec);
    if (lane == 0)
        proto_hier_rec_fill(&g, &ids, c.w, c.e2r, c.dest, c.pos,
                            g.em ? c.epos : NULL, t, (int32_t *)rec);
    const char *x = (const char *)c.x + t * g.row_bytes;
    if (g.qblock)
        hier_quant(g, p, (const uint16_t *)x, c.gscale, lane);
    else
        hier_copy(p.q, x, g.row_bytes, lane);
    __threadfence();
    __syncwarp();
    return rec;
}

__global__ void epxk_hier_stage_kernel(proto_geom_t g, epxk_call_t c,
                                       epxk_hier_t h)
{
    const int lane = threadIdx.x % WARP;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / WARP);
    const int L = h.x.L, dom = h.x.dom;
    const int32_t *cnt = hier_cnt(g, c);
    const proto_ids_t ids = { c.idx, c.idx64, g.K, g.E, c.route };
    const int64_t wrow = g.xrow_bytes + g.scale_bytes + g.gscale_bytes;
    unsigned long long cross = 0;   /* this warp's bytes across domains */
    if (c.info[EPXK_INFO_ERROR] == 0 && c.info[EPXK_INFO_AGREE] == 0)
        for (int64_t t = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
             t < c.T; t += warps) {
            const int32_t *dst = c.dest + t * g.maxdest;
            if (dst[0] < 0)
                continue;
            char *rec = hier_rec_make(g, c, h, ids, t, lane);
            for (int j = 0; j < g.maxdest && dst[j] >= 0; j++) {
                const int D = proto_hier_stage_dom(dst, j, L, dom);
                cross += (unsigned long long)proto_hier_cross_stage(dst, j, L,
                                                                    dom, wrow);
                if (D < 0)
                    continue;
                int slot = 0;
                if (lane == 0)
                    slot = atomicAdd(&h.count[D], 1);
                slot = __shfl_sync(0xffffffffu, slot, 0);
                char *gw = c.peers[proto_hier_gateway(&h.x, g.rank, D)];
                hier_copy(gw + h.w.stage +
                              ((int64_t)dom * g.maxT + slot) * h.rec_bytes,
                          rec, h.rec_bytes, lane);
            }
            hier_forward(g, c, h, cnt, rec, g.rank, lane, -1, 0);
        }
    if (lane == 0 && cross)
        atomicAdd(&h.cross[0], cross);
    if (!epxk_grid_last(c.done))
        return;
    for (int D = threadIdx.x; D < h.x.ND; D += blockDim.x) {
        const int32_t n = atomicExch(&h.count[D], 0);
        if (D == dom)
            continue;
        char *gw = c.peers[proto_hier_gateway(&h.x, g.rank, D)];
        *hier_word(gw, h.w.shdr, 2 * (int64_t)dom) = n;
        __threadfence_system();
        epxk_st_release_s32(hier_word(gw, h.w.shdr, 2 * (int64_t)dom + 1),
                            (int32_t)c.seq);
    }
    for (int j = threadIdx.x; j < L; j += blockDim.x)
        epxk_st_release_u64(hier_flag(g, c.peers[dom * L + j],
                                      PROTO_FLAG_DATA, g.rank), c.seq);
}

__global__ void epxk_hier_fwd_kernel(proto_geom_t g, epxk_call_t c,
                                     epxk_hier_t h)
{
    const int lane = threadIdx.x % WARP;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / WARP);
    const int L = h.x.L, ND = h.x.ND, dom = h.x.dom;
    char *mine = c.peers[g.rank];
    const int32_t *cnt = hier_cnt(g, c);
    for (int b = threadIdx.x; b < ND; b += blockDim.x)
        if (b != dom && *(volatile int64_t *)&c.info[EPXK_INFO_ERROR] == 0)
            hier_wait(hier_word(mine, h.w.shdr, 2 * (int64_t)b + 1),
                      (int32_t)c.seq, c.timeout_ns, c.info);
    __syncthreads();
    const bool go = *(volatile int64_t *)&c.info[EPXK_INFO_ERROR] == 0 &&
                    c.info[EPXK_INFO_AGREE] == 0;
    for (int b = 0; go && b < ND; b++) {
        if (b == dom)
            continue;
        const int src = proto_hier_gateway(&h.x, g.rank, b);
        const int64_t n = *hier_word(mine, h.w.shdr, 2 * (int64_t)b);
        for (int64_t k = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
             k < n; k += warps)
            hier_forward(g, c, h, cnt,
                         mine + h.w.stage + ((int64_t)b * g.maxT + k) *
                                                h.rec_bytes,
                         src, lane, -1, 0);
    }
    if (!epxk_grid_last(c.done))
        return;
    for (int i = threadIdx.x; i < ND * L; i += blockDim.x) {
        const int b = i / L, j = i % L;
        if (b != dom)
            epxk_st_release_u64(hier_flag(g, c.peers[dom * L + j],
                                          PROTO_FLAG_DATA,
                                          proto_hier_gateway(&h.x, g.rank, b)),
                                c.seq);
    }
}

__global__ void epxk_hier_put_kernel(proto_geom_t g, epxk_call_t c,
                                     epxk_hier_t h)
{
    const int lane = threadIdx.x % WARP;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / WARP);
    const int L = h.x.L, dom = h.x.dom;
    char *mine = c.peers[g.rank];
    const int64_t ents = c.info[EPXK_INFO_ENTS];
    const float *wt = c.unweighted ? NULL : (const float *)(mine + g.off_w);
    if (c.info[EPXK_INFO_ERROR] == 0)
        for (int64_t i = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
             i < ents; i += warps) {
            const int64_t slot = ((const int32_t *)(mine + g.off_ret_slot))[i];
            const int s = g.em ? ((const int32_t *)(mine + g.off_ent_src))[i]
                               : ((const int32_t *)(mine + g.off_src_rank))[i];
            /* over NCCL: the partials' staging, at the record's place in
             * hop 2's receive (the slot the scatter gave) */
            char *dst = h.nccl ? h.pstage + slot * g.row_bytes
                               : c.peers[dom * L + s % L] + h.w.part +
                                     slot * g.row_bytes;
            if (!g.em) {
                hier_copy(dst, (const char *)c.y + i * g.row_bytes,
                          g.row_bytes, lane);
                continue;
            }
            const int32_t *rows = (const int32_t *)(mine + g.off_ent_rows) +
                                  i * g.K;
            if (g.esize == 8) {   /* FP64: the partial in double */
                epxk_partial_f64(g, (const char *)c.y, rows, wt, dst, lane);
                continue;
            }
            for (int64_t e = lane; e < g.H; e += WARP)
                proto_store(dst, g.esize, e,
                            proto_partial_elem(&g, (const char *)c.y, rows, wt,
                                               e));
        }
    if (!epxk_grid_last(c.done) || h.nccl)
        return;
    for (int j = threadIdx.x; j < L; j += blockDim.x)
        epxk_st_release_s32(hier_word(c.peers[dom * L + j], h.w.pdone,
                                      h.x.li), (int32_t)c.seq);
}

/* Record k of source domain b here (proto/hier.h): its token into *t,
 * the part slots of its terms in this domain into slot, its chain's
 * *j0 and *next (proto_hier_chain); the number of terms (0: not on the
 * chain here). */
__device__ static int hier_chain_terms(const proto_geom_t &g,
                                       const epxk_call_t &c,
                                       const epxk_hier_t &h,
                                       const int32_t *cnt, int b, int64_t k,
                                       int64_t *slot, int64_t *t, int *j0,
                                       int *next)
{
    const int K = g.K;
    const int src = proto_hier_gateway(&h.x, g.rank, b);
    const int32_t *r = (const int32_t *)(c.peers[g.rank] + h.w.stage +
                                         ((int64_t)b * g.maxT + k) *
                                             h.rec_bytes);
    int32_t dst[EPX_MAX_TOPK];
    const proto_ids_t ids = proto_hier_rec_ids(r, K, g.E);
    *t = r[0];
    const int nd = proto_walk_dests(&g, &ids, NULL, c.e2r, 0, NULL, dst,
                                    NULL);
    const int here = proto_hier_chain(dst, nd, h.x.L, h.x.dom, j0, next);
    for (int j = 0; j < here; j++)
        slot[j] = proto_hier_slot(&g, &h.x, cnt, h.w.P, src, dst[*j0 + j],
                                  proto_hier_rec_dpos(r, K, c.e2r,
                                                      dst[*j0 + j]));
    return here;
}

/* A warp's stretch of a sum (proto/hier.h proto_hier_acc_elem: 0 + the
 * first term where the sum starts, else the accumulator `in` so far + it)
 * into out, accumulators of acc bytes (FP64 engines: double). */
__device__ static void hier_chain_sum(const proto_geom_t &g, const char *part,
                                      const int64_t *slot, int here, int j0,
                                      int64_t acc, const char *in, char *out,
                                      int lane)
{
    for (int64_t e = lane; e < g.H; e += WARP)
        if (acc == 8)
            ((double *)out)[e] = proto_hier_acc_elem_f64(
                &g, part, slot, here, j0 == 0,
                j0 == 0 ? 0.0 : ((const double *)in)[e], e);
        else
            ((float *)out)[e] = proto_hier_acc_elem(
                &g, part, slot, here, j0 == 0,
                j0 == 0 ? 0.0f : ((const float *)in)[e], e);
}

__global__ void epxk_hier_chain_kernel(proto_geom_t g, epxk_call_t c,
                                       epxk_hier_t h)
{
    const int lane = threadIdx.x % WARP;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / WARP);
    const int L = h.x.L, ND = h.x.ND, dom = h.x.dom;
    char *mine = c.peers[g.rank];
    const int32_t *cnt = hier_cnt(g, c);
    for (int i = threadIdx.x; i < L + dom; i += blockDim.x)
        if (*(volatile int64_t *)&c.info[EPXK_INFO_ERROR] == 0)
            hier_wait(i < L ? hier_word(mine, h.w.pdone, i)
                            : hier_word(mine, h.w.cdone, i - L),
                      (int32_t)c.seq, c.timeout_ns, c.info);
    __syncthreads();
    const bool go = *(volatile int64_t *)&c.info[EPXK_INFO_ERROR] == 0;
    int64_t slot[EPX_MAX_TOPK];
    unsigned long long cross = 0;   /* this warp's bytes across domains */
    for (int b = 0; go && b < ND; b++) {
        const int src = proto_hier_gateway(&h.x, g.rank, b);
        const int64_t n = b == dom ? c.T
                                   : *hier_word(mine, h.w.shdr, 2 * (int64_t)b);
        for (int64_t k = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
             k < n; k += warps) {
            if (b == dom && c.dest[k * g.maxdest] < 0)
                continue;   /* a token of ours that went nowhere */
            int64_t t;
            int j0, next;
            const int here = hier_chain_terms(g, c, h, cnt, b, k, slot, &t,
                                              &j0, &next);
            if (here == 0)
                continue;
            /* accumulators of acc_size bytes (FP64 engines: double) */
            const int64_t acc = proto_hier_acc_size(g.esize);
            const char *in = mine + h.w.chain +
                             ((int64_t)b * g.maxT + t) * g.H * acc;
            char *out = next >= 0
                ? c.peers[proto_hier_gateway(&h.x, g.rank, next)] +
                      h.w.chain + ((int64_t)b * g.maxT + t) * g.H * acc
                : c.peers[src] + h.w.final + t * g.H * acc;
            const char *part = mine + h.w.part;
            cross += (unsigned long long)proto_hier_cross_chain(
                &h.x, next, src, g.H * acc);
            /* proto.h's row sums (proto/hier.h): 0 + the first term where
             * the sum starts, else the accumulator so far + it */
            hier_chain_sum(g, part, slot, here, j0, acc, in, out, lane);
        }
    }
    if (lane == 0 && cross)
        atomicAdd(&h.cross[1], cross);
    if (!epxk_grid_last(c.done))
        return;
    for (int b = threadIdx.x; b < ND; b += blockDim.x) {
        char *w = c.peers[proto_hier_gateway(&h.x, g.rank, b)];
        if (b > dom)
            epxk_st_release_s32(hier_word(w, h.w.cdone, dom), (int32_t)c.seq);
        epxk_st_release_s32(hier_word(w, h.w.fdone, dom), (int32_t)c.seq);
    }
}

__global__ void epxk_hier_out_kernel(proto_geom_t g, epxk_call_t c,
                                     epxk_hier_t h)
{
    char *mine = c.peers[g.rank];
    for (int b = threadIdx.x; !h.nccl && b < h.x.ND; b += blockDim.x)
        if (*(volatile int64_t *)&c.info[EPXK_INFO_ERROR] == 0)
            hier_wait(hier_word(mine, h.w.fdone, b), (int32_t)c.seq,
                      c.timeout_ns, c.info);
    __syncthreads();
    if (*(volatile int64_t *)&c.info[EPXK_INFO_ERROR] != 0)
        return;
    const float *fin = (const float *)(mine + h.w.final);
    const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t nth = (int64_t)gridDim.x * blockDim.x;
    if (g.esize == 8) {   /* FP64: the double sum as it is, FP64 out */
        const double *fin64 = (const double *)(mine + h.w.final);
        for (int64_t i = tid; i < c.T * g.H; i += nth)
            ((double *)c.out)[i] = c.dest[i / g.H * g.maxdest] < 0
                                       ? 0.0 : fin64[i];
        return;
    }
    for (int64_t i = tid; i < c.T * g.H; i += nth) {
        const int64_t t = i / g.H, e = i % g.H;
        proto_store((char *)c.out + t * g.H * c.out_esize, c.out_esize, e,
                    c.dest[t * g.maxdest] < 0 ? 0.0f : fin[i]);
    }
}

/* ------------------------------------------------------- over NCCL
 *
 * The messages of proto/hier_nccl.h (src/cuda/README.md, "Hierarchical
 * two-hop over NCCL"); hier.c posts the grouped sends and receives, with
 * sizes from the count matrix and the count blocks read back at the
 * dispatch's one synchronisation.  No waits: NCCL's stream order. */

/* Dispatch, before the count exchange's read-back (a warp per token):
 * the token's record into this rank's staging (stage[dom][t]), a copy per
 * remote destination domain into hop 1's staging at a slot from that
 * domain's counter, and its chain steps into the count blocks (zeroed
 * before); the last block zeroes the counters. */
__global__ void epxk_hiern_stage_kernel(proto_geom_t g, epxk_call_t c,
                                        epxk_hier_t h)
{
    const int lane = threadIdx.x % WARP;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / WARP);
    const int L = h.x.L, dom = h.x.dom;
    const proto_ids_t ids = { c.idx, c.idx64, g.K, g.E, c.route };
    if (c.info[EPXK_INFO_ERROR] == 0)
        for (int64_t t = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
             t < c.T; t += warps) {
            const int32_t *dst = c.dest + t * g.maxdest;
            if (dst[0] < 0)
                continue;
            char *rec = hier_rec_make(g, c, h, ids, t, lane);
            int nd = 0;
            while (nd < g.maxdest && dst[nd] >= 0)
                nd++;
            for (int j = 0; j < nd; j++) {
                const int D = proto_hier_stage_dom(dst, j, L, dom);
                if (D < 0)
                    continue;
                int slot = 0;
                if (lane == 0)
                    slot = atomicAdd(&h.count[D], 1);
                slot = __shfl_sync(0xffffffffu, slot, 0);
                hier_copy(h.sstage + ((int64_t)D * g.maxT + slot) *
                                         h.rec_bytes,
                          rec, h.rec_bytes, lane);
            }
            if (lane == 0) {
                int sd[EPX_MAX_TOPK], sn[EPX_MAX_TOPK];
                const int n = proto_hier_steps(dst, nd, L, sd, sn);
                for (int i = 0; i < n; i++) {
                    atomicAdd(&h.cb_send[proto_hier_cb_out(&h.x, sd[i],
                                                           sn[i])], 1);
                    if (sn[i] >= 0)
                        atomicAdd(&h.cb_send[proto_hier_cb_in(&h.x, sn[i],
                                                              sd[i])], 1);
                }
            }
        }
    if (!epxk_grid_last(c.done))
        return;
    for (int D = threadIdx.x; D < h.x.ND; D += blockDim.x)
        h.count[D] = 0;
}

/* Records of source domain b here: its own tokens (b == dom), else hop
 * 1's, as the count block of that source says. */
__device__ static __forceinline__ int64_t hiern_records(const epxk_call_t &c,
                                                        const epxk_hier_t &h,
                                                        int b)
{
    return b == h.x.dom ? c.T
        : proto_hier_cb_staged(&h.x, b,
                               h.cb_recv + (int64_t)b * proto_hier_cb_len(&h.x));
}

/* Dispatch, the gateway after hop 1 (a warp per record): each record
 * into hop 2's staging at its place in the message to each member with a
 * destination of it (proto_hier_fwd_at + proto_hier_msg_seg + dpos). */
__global__ void epxk_hiern_pack_kernel(proto_geom_t g, epxk_call_t c,
                                       epxk_hier_t h)
{
    const int lane = threadIdx.x % WARP;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / WARP);
    const int K = g.K, L = h.x.L, dom = h.x.dom;
    char *mine = c.peers[g.rank];
    const int32_t *cnt = hier_cnt(g, c);
    for (int b = 0; b < h.x.ND; b++) {
        const int64_t n = hiern_records(c, h, b);
        for (int64_t k = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
             k < n; k += warps) {
            if (b == dom && c.dest[k * g.maxdest] < 0)
                continue;   /* a token of ours sent nowhere */
            const char *rec = mine + h.w.stage +
                              ((int64_t)b * g.maxT + k) * h.rec_bytes;
            for (int m = dom * L; m < (dom + 1) * L; m++) {
                const int32_t dp = proto_hier_rec_dpos((const int32_t *)rec,
                                                       K, c.e2r, m);
                if (dp < 0)
                    continue;
                int64_t nseg;
                const int64_t at =
                    proto_hier_fwd_at(&g, &h.x, cnt, g.rank, m) +
                    proto_hier_msg_seg(&g, &h.x, cnt, g.rank, m, b, &nseg) + dp;
                hier_copy(h.fstage + at * h.rec_bytes, rec, h.rec_bytes, lane);
            }
        }
    }
}

/* Dispatch, the member after hop 2 (a warp per received record, h.n of
 * them): to its rows and entry here, its return slot its place. */
__global__ void epxk_hiern_scatter_kernel(proto_geom_t g, epxk_call_t c,
                                          epxk_hier_t h)
{
    const int lane = threadIdx.x % WARP;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / WARP);
    const int32_t *cnt = hier_cnt(g, c);
    for (int64_t i = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
         i < h.n; i += warps) {
        int src;
        int32_t dp;
        if (!proto_hier_fwd_locate(&g, &h.x, cnt, g.rank, i, &src, &dp))
            continue;
        hier_forward(g, c, h, cnt, h.rfwd + i * h.rec_bytes, src, lane,
                     g.rank, i);
    }
}

/* Combine, this gateway's round (a warp per record; dynamic shared
 * memory: 2 ND int64): each token with destinations in this domain
 * continues its sum (proto_hier_acc_elem, as the windows chain) from the
 * accumulator landed at its token, into its chain message (q: the next
 * domain's gateway, or ND + b home) at a slot from that message's
 * counter, the row's source domain and token before it; the last block
 * zeroes the counters. */
__global__ void epxk_hiern_chain_kernel(proto_geom_t g, epxk_call_t c,
                                        epxk_hier_t h)
{
    extern __shared__ int64_t hiern_at[];
    const int lane = threadIdx.x % WARP;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / WARP);
    const int ND = h.x.ND, dom = h.x.dom;
    char *mine = c.peers[g.rank];
    const int32_t *cnt = hier_cnt(g, c);
    for (int q = threadIdx.x; q < 2 * ND; q += blockDim.x)
        hiern_at[q] = proto_hier_cmsg_at(&h.x, h.cb_recv, q);
    __syncthreads();
    const int64_t acc = proto_hier_acc_size(g.esize);
    int64_t slot[EPX_MAX_TOPK];
    for (int b = 0; c.info[EPXK_INFO_ERROR] == 0 && b < ND; b++) {
        const int src = proto_hier_gateway(&h.x, g.rank, b);
        const int64_t n = hiern_records(c, h, b);
        for (int64_t k = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
             k < n; k += warps) {
            if (b == dom && c.dest[k * g.maxdest] < 0)
                continue;
            int64_t t;
            int j0, next;
            const int here = hier_chain_terms(g, c, h, cnt, b, k, slot, &t,
                                              &j0, &next);
            if (here == 0)
                continue;
            const int q = next >= 0 ? next : ND + b;
            int at = 0;
            if (lane == 0)
                at = atomicAdd(&h.ccount[q], 1);
            at = __shfl_sync(0xffffffffu, at, 0);
            int32_t *row = (int32_t *)(h.csend +
                                       (hiern_at[q] + at) * h.crow);
            if (lane == 0) {
                row[0] = b;
                row[1] = (int32_t)t;
            }
            char *out = (char *)row + PROTO_HIER_CROW_HDR;
            const char *in = mine + h.w.chain +
                             ((int64_t)b * g.maxT + t) * g.H * acc;
            const char *part = mine + h.w.part;
            hier_chain_sum(g, part, slot, here, j0, acc, in, out, lane);
        }
    }
    if (!epxk_grid_last(c.done))
        return;
    for (int q = threadIdx.x; q < 2 * ND; q += blockDim.x)
        h.ccount[q] = 0;
}

/* Received chain rows (h.n of them; final: the finished sums, else the
 * accumulators to go on here), a warp each, to their tokens. */
__device__ static void hiern_land(const proto_geom_t &g, const epxk_call_t &c,
                                  const epxk_hier_t &h, int final)
{
    const int lane = threadIdx.x % WARP;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / WARP);
    const int64_t acc = proto_hier_acc_size(g.esize);
    char *mine = c.peers[g.rank];
    const char *base = final ? h.rfinal : h.rchain;
    for (int64_t i = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
         i < h.n; i += warps) {
        const int32_t *row = (const int32_t *)(base + i * h.crow);
        const int64_t b = final ? 0 : row[0], t = row[1];
        if (b < 0 || b >= h.x.ND || t < 0 || t >= g.maxT)
            continue;   /* not a row (a failed call sends unwritten ones) */
        char *to = mine + (final ? h.w.final : h.w.chain) +
                   (b * g.maxT + t) * g.H * acc;
        hier_copy(to, (const char *)row + PROTO_HIER_CROW_HDR, g.H * acc,
                  lane);
    }
}

__global__ void epxk_hiern_land_chain_kernel(proto_geom_t g, epxk_call_t c,
                                             epxk_hier_t h)
{
    hiern_land(g, c, h, 0);
}

__global__ void epxk_hiern_land_final_kernel(proto_geom_t g, epxk_call_t c,
                                             epxk_hier_t h)
{
    hiern_land(g, c, h, 1);
}

/* The kernels by their EPXK_HIER* number (kern_launch.h). */
typedef void (*hier_kernel_t)(proto_geom_t, epxk_call_t, epxk_hier_t);
static const hier_kernel_t hier_kernels[] = {
    epxk_hier_stage_kernel,         /* EPXK_HIER_STAGE */
    epxk_hier_fwd_kernel,           /* EPXK_HIER_FWD */
    epxk_hier_put_kernel,           /* EPXK_HIER_PUT */
    epxk_hier_chain_kernel,         /* EPXK_HIER_CHAIN */
    epxk_hier_out_kernel,           /* EPXK_HIER_OUT */
    epxk_hiern_stage_kernel,        /* EPXK_HIERN_STAGE */
    epxk_hiern_pack_kernel,         /* EPXK_HIERN_PACK */
    epxk_hiern_scatter_kernel,      /* EPXK_HIERN_SCATTER */
    epxk_hiern_chain_kernel,        /* EPXK_HIERN_CHAIN */
    epxk_hiern_land_chain_kernel,   /* EPXK_HIERN_LAND_CHAIN */
    epxk_hiern_land_final_kernel,   /* EPXK_HIERN_LAND_FINAL */
};
enum { HIER_KERNELS = sizeof(hier_kernels) / sizeof(hier_kernels[0]) };
static_assert(HIER_KERNELS == EPXK_HIERN_LAND_FINAL + 1,
              "one kernel per EPXK_HIER* number");

extern "C" int epxk_hier_launch(int which, const proto_geom_t *g,
                                const epxk_call_t *c, const epxk_hier_t *h,
                                int blocks, void *stream)
{
    if (which < 0 || which >= HIER_KERNELS)
        return (int)cudaErrorInvalidValue;
    /* hiern chain: two int64 per domain of shared memory */
    const size_t smem = which == EPXK_HIERN_CHAIN
                            ? sizeof(int64_t) * 2 * (size_t)h->x.ND : 0;
    hier_kernels[which]<<<blocks, 512, smem, (cudaStream_t)stream>>>(*g, *c,
                                                                      *h);
    return (int)cudaGetLastError();
}

extern "C" int epxk_hier_preload(void)
{
    const void *k[HIER_KERNELS];
    for (int i = 0; i < HIER_KERNELS; i++)
        k[i] = (const void *)hier_kernels[i];
    return epxk_load_kernels(k, HIER_KERNELS);
}
