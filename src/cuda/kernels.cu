/*
 * GPU executor kernels (throughput mode, token-major and expert-major, and
 * low latency).  The arithmetic is in proto.h (shared with the host test);
 * this file adds the thread
 * mapping, 16-byte vectorised copies, the release/acquire signals and the
 * bounded waits.  Launched by src/cuda/engine.c through the extern "C"
 * entry points at the end, all on the engine's stream.
 *
 * Memory ordering: a writer's plain stores to a peer's window are followed
 * by __threadfence_system() in every thread, a block barrier, and one
 * st.release.sys of a sequence number; the reader polls with
 * ld.acquire.sys and then synchronises its block, so every row the writer
 * stored before its release is visible to every thread of the reader's
 * block.
 */
#include <cuda_runtime.h>
#include <stdint.h>
#include "epx.h"
#include "proto/proto.h"
#include "proto/ll_nccl.h"
#include "cuda/kern_launch.h"
#include "cuda/kern_sync.cuh"
#include "cuda/kern_reduce.cuh"
#include "cuda/kern_llpub.cuh"

#define WARP 32

/* Wait until *p >= want (sequence numbers only grow).  On timeout, record
 * the error in info[0] and give up: the host turns it into
 * EPX_ERR_TIMEOUT and the engine becomes unusable. */
__device__ static bool wait_u64(const uint64_t *p, uint64_t want,
                                uint64_t timeout_ns, int64_t *info)
{
    return epxk_wait([&] { return epxk_ld_acquire_u64(p) >= want; }, timeout_ns,
                     &info[EPXK_INFO_ERROR]);
}

__device__ static bool wait_s32(const int32_t *p, int32_t want,
                                uint64_t timeout_ns, int64_t *info)
{
    return epxk_wait([&] { return epxk_ld_acquire_s32(p) == want; }, timeout_ns,
                     &info[EPXK_INFO_ERROR]);
}

/* Wait until *p, without the abandoned bit, is >= want. */
__device__ static bool wait_u64_masked(const uint64_t *p, uint64_t want,
                                       uint64_t timeout_ns, int64_t *info)
{
    return epxk_wait([&] { return (epxk_ld_acquire_u64(p) & ~EPXK_LL_ABANDONED) >= want; }, timeout_ns,
                     &info[EPXK_INFO_ERROR]);
}

/* Wait until the word at p carries `tag` in its top 8 bits. */
__device__ static bool wait_tag(const int32_t *p, int32_t tag,
                                uint64_t timeout_ns, int64_t *info)
{
    return epxk_wait([&] { return PROTO_LL_WTAG(epxk_ld_acquire_s32(p)) == tag; }, timeout_ns,
                     &info[EPXK_INFO_ERROR]);
}

/* Copy one row of `bytes` with a warp: 16-byte vectors when both ends
 * and the length allow it (coalesced: lane i takes vector i, i + 32...),
 * four loads in flight per lane before their stores (a 7168-wide bf16 row
 * is 28 vectors a lane: one at a time, each waits out a whole memory
 * latency), else 4- or 2-byte words. */
__device__ static __forceinline__ void warp_copy(char *dst, const char *src,
                                                 int64_t bytes, int lane)
{
    uintptr_t a = (uintptr_t)dst | (uintptr_t)src | (uintptr_t)bytes;
    if ((a & 15) == 0) {
        const uint4 *s = (const uint4 *)src;
        uint4 *d = (uint4 *)dst;
        const int64_t n = bytes / 16;
        int64_t i = lane;
        for (; i + 3 * WARP < n; i += 4 * WARP) {
            const uint4 v0 = s[i], v1 = s[i + WARP], v2 = s[i + 2 * WARP],
                        v3 = s[i + 3 * WARP];
            d[i] = v0;
            d[i + WARP] = v1;
            d[i + 2 * WARP] = v2;
            d[i + 3 * WARP] = v3;
        }
        for (; i < n; i += WARP)
            d[i] = s[i];
    } else if ((a & 3) == 0) {
        const uint32_t *s = (const uint32_t *)src;
        uint32_t *d = (uint32_t *)dst;
        for (int64_t i = lane; i < bytes / 4; i += WARP)
            d[i] = s[i];
    } else {
        const uint16_t *s = (const uint16_t *)src;
        uint16_t *d = (uint16_t *)dst;
        for (int64_t i = lane; i < bytes / 2; i += WARP)
            d[i] = s[i];
    }
}

/* An expert-major entry's partial (proto.h proto_partial_elem: its rows of
 * y in top-k order, weighted, summed in fp32, rounded once) into dst by a
 * warp.  Where y's rows and dst are 16-byte aligned, lane i takes pieces
 * i, i + 32...: one 16-byte load per row and one 16-byte store
 * (proto_partial_acc16, the same arithmetic element by element); else an
 * element per lane. */
__device__ static void warp_partial(const proto_geom_t &g, const char *y,
                                    const int32_t *rows, const float *wt,
                                    char *dst, int lane)
{
    if (g.esize == 8) {   /* FP64 engine: kern_reduce.cuh */
        epxk_partial_f64(g, y, rows, wt, dst, lane);
        return;
    }
    if (((uintptr_t)y | (uintptr_t)dst | (uintptr_t)g.row_bytes) & 15) {
        for (int64_t h = lane; h < g.H; h += WARP)
            proto_store(dst, g.esize, h, proto_partial_elem(&g, y, rows, wt, h));
        return;
    }
    for (int64_t v = lane; v < g.row_bytes / 16; v += WARP) {
        float acc[8];
        for (int e = 0; e < 8; e++)
            acc[e] = 0.0f;
        /* Four rows' loads in flight, then summed in k order (the same
         * arithmetic as one at a time); rows end at the first -1. */
        for (int k0 = 0; k0 < g.K; k0 += 4) {
            union { uint4 u; proto_v16_t p; } t[4];
            int32_t r[4];
            int n = 0;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                r[j] = k0 + j < g.K ? rows[k0 + j] : -1;
                n += r[j] >= 0 && n == j;
            }
#pragma unroll
            for (int j = 0; j < 4; j++)
                if (j < n)
                    t[j].u = *(const uint4 *)(y + (int64_t)r[j] * g.row_bytes +
                                              v * 16);
#pragma unroll
            for (int j = 0; j < 4; j++)
                if (j < n)
                    proto_partial_acc16(g.esize, &t[j].p, wt != NULL,
                                       wt ? wt[r[j]] : 0.0f, acc);
            if (n < 4)
                break;
        }
        union { uint4 u; proto_v16_t p; } o;
        proto_pack16(g.esize, acc, &o.p);
        *(uint4 *)(dst + v * 16) = o.u;
    }
}

/* One bf16 row quantized by a warp into its wire parts (proto.h,
 * "quantized pack"): codes at q, block scales at sc, the NVFP4 row scale at
 * *gs.  Lane i takes chunks i, i + 32...: 32 bytes of input (two 16-byte
 * loads where the row is aligned) and 16 (fp8) or 8 (e2m1) bytes of codes
 * in one store, coalesced across the warp.  Every lane of the warp calls
 * it (shuffles over the full mask). */
__device__ static void warp_quant_row(const proto_geom_t &g, char *q, char *sc,
                                      float *gs, const uint16_t *x,
                                      float given, int lane)
{
    const unsigned full = 0xffffffffu;
    const int64_t chunks = proto_q_chunks(&g);
    const int G = proto_q_group(&g), cb = proto_q_chunk_bytes(&g);
    const bool xvec = ((uintptr_t)x & 15) == 0;
    const bool qvec = ((uintptr_t)q & (uintptr_t)(cb - 1)) == 0;
    union { uint4 u[2]; uint16_t h[MOE_QUANT_CHUNK]; } v;
    union { uint4 u; uint2 d; uint8_t b[MOE_QUANT_CHUNK]; } o;
    float global = 0.0f;
    if (g.wire == EPX_WIRE_NVFP4) {
        uint32_t m = 0;
        /* given is the same for the whole warp: no divergent shuffles */
        for (int64_t c = lane; given <= 0.0f && c < chunks; c += WARP) {
            int nan;
            proto_q_load_chunk(&g, x, c, v.h);
            uint32_t a = moe_quant_chunk_amax(v.h, MOE_QUANT_CHUNK, &nan);
            m = a > m ? a : m;
        }
        if (given <= 0.0f)
            m = __reduce_max_sync(full, m);
        global = proto_q_row_global(given, m);
        if (lane == 0)
            *gs = global;
    }
    for (int64_t c0 = 0; c0 < chunks; c0 += WARP) {
        const int64_t c = c0 + lane;
        int n = 0, nan = 0;
        uint32_t m = 0;
        if (c < chunks) {
            if (xvec && proto_q_chunk_len(&g, c) == MOE_QUANT_CHUNK) {
                const uint4 *p = (const uint4 *)(x + c * MOE_QUANT_CHUNK);
                v.u[0] = p[0];
                v.u[1] = p[1];
                n = MOE_QUANT_CHUNK;
            } else {
                n = proto_q_load_chunk(&g, x, c, v.h);
            }
            m = moe_quant_chunk_amax(v.h, MOE_QUANT_CHUNK, &nan);
        }
        /* The block's lanes are consecutive, G a power of two. */
        for (int off = 1; off < G; off <<= 1) {
            uint32_t m2 = __shfl_xor_sync(full, m, off);
            m = m2 > m ? m2 : m;
            nan |= __shfl_xor_sync(full, nan, off);
        }
        if (n == 0)
            continue;
        uint32_t s = proto_q_encode(&g, v.h, MOE_QUANT_CHUNK, m, nan, global,
                                   o.b);
        char *dst = q + c * cb;
        const int nb = proto_q_chunk_stored(&g, n);
        if (qvec && nb == cb) {
            if (cb == 16)
                *(uint4 *)dst = o.u;
            else
                *(uint2 *)dst = o.d;
        } else {
            for (int i = 0; i < MOE_QUANT_CHUNK; i++)
                if (i < nb)
                    dst[i] = (char)o.b[i];
        }
        if (c % G == 0)
            proto_q_store_scale(&g, sc, c / G, s);
    }
}

/* Row `row` of a window's (or staging buffer's) receive regions from
 * token row xrow: a copy (native wire) or its quantized parts. */
__device__ static __forceinline__ void warp_put_row(const proto_geom_t &g,
                                                    char *w, int64_t row,
                                                    const char *xrow,
                                                    float given, int lane)
{
    char *q = w + g.off_rows + row * g.xrow_bytes;
    if (!g.qblock) {
        warp_copy(q, xrow, g.xrow_bytes, lane);
        return;
    }
    warp_quant_row(g, q, w + g.off_scales + row * g.scale_bytes,
                   (float *)(w + g.off_gscale) + row,
                   (const uint16_t *)xrow, given, lane);
}

/* Count of a window's region. */
__device__ static __forceinline__ int32_t *win_cnt(const proto_geom_t &g,
                                                   char *win, int p, int s)
{
    return (int32_t *)(win + g.off_cnt) + proto_cnt_index(&g, p, s);
}

__device__ static __forceinline__ uint64_t *win_flag(const proto_geom_t &g,
                                                     char *win, int f, int s)
{
    return (uint64_t *)(win + g.off_flags) + (int64_t)f * g.R + s;
}

/* ---------------------------------------------------------------- layout */

/* Routing layout over nb blocks, a chunk of tokens each (proto.h,
 * "routing layout"): count, then place.  Grid of nb blocks: the chunk's
 * tokens per destination and (token, k) pairs per expert into part[b];
 * its dest entries cleared; invalid ids flagged. */
__global__ void epxk_layout_count_kernel(proto_geom_t g, epxk_call_t c)
{
    const int n = g.R + g.E, b = blockIdx.x;
    const proto_ids_t ids = { c.idx, c.idx64, g.K, g.E, c.route };
    int64_t t0, t1;
    proto_layout_range(c.T, gridDim.x, b, &t0, &t1);
    for (int64_t i = t0 * g.maxdest + threadIdx.x; i < t1 * g.maxdest;
         i += blockDim.x)
        c.dest[i] = -1;
    for (int64_t i = t0 * g.K + threadIdx.x; i < t1 * g.K; i += blockDim.x) {
        if (proto_expert_bad(&ids, i / g.K, (int)(i % g.K)))
            c.info[EPXK_INFO_BAD_IDS] = 1;
        if (c.lay_ids)   /* kept with the layout, for a cached dispatch */
            c.lay_ids[i] = proto_cache_id(&ids, i / g.K, (int)(i % g.K));
    }
    for (int u = threadIdx.x; u < n; u += blockDim.x)
        c.part[(int64_t)b * n + u] = (int32_t)(u < g.R
            ? proto_layout_dest(&g, &ids, NULL, c.e2r, t0, t1, u, 0, NULL, NULL)
            : proto_layout_expert(&g, &ids, t0, t1, u - g.R, 0, NULL));
}

/* Grid of nb blocks: dest/pos (and expert-major epos) of the chunk's
 * tokens from the parts of the lower chunks.  Block 0: this rank's
 * counts row and the packed offsets; with windows, the counts row is then
 * stored into every peer's count buffer and released with the call's
 * sequence word. */
__global__ void epxk_layout_place_kernel(proto_geom_t g, epxk_call_t c)
{
    const int n = g.R + g.E, b = blockIdx.x;
    const proto_ids_t ids = { c.idx, c.idx64, g.K, g.E, c.route };
    int64_t t0, t1;
    proto_layout_range(c.T, gridDim.x, b, &t0, &t1);
    for (int u = threadIdx.x; u < n; u += blockDim.x) {
        const int64_t base = proto_layout_base(c.part, n, b, u);
        if (u < g.R)
            proto_layout_dest(&g, &ids, NULL, c.e2r, t0, t1, u, base, c.dest,
                             c.pos);
        else if (g.em)
            proto_layout_expert(&g, &ids, t0, t1, u - g.R, base, c.epos);
    }
    if (b != 0)
        return;
    for (int u = threadIdx.x; u < n; u += blockDim.x)
        c.mycnt[u] = (int32_t)proto_layout_base(c.part, n, gridDim.x, u);
    __syncthreads();
    if (threadIdx.x == 0) {
        int64_t o = 0;
        for (int d = 0; d < g.R; d++) {
            c.sendoff[d] = o;
            o += c.mycnt[d];
        }
    }
    if (!c.windows)
        return;
    for (int64_t i = threadIdx.x; i < (int64_t)g.R * n; i += blockDim.x) {
        int d = (int)(i / n), u = (int)(i % n);
        win_cnt(g, c.peers[d], c.parity, g.rank)[u] = c.mycnt[u];
    }
    __threadfence_system();
    __syncthreads();
    for (int d = threadIdx.x; d < g.R; d += blockDim.x)
        epxk_st_release_s32(win_cnt(g, c.peers[d], c.parity, g.rank) + n,
                       (int32_t)c.seq);
}

/* Cached dispatch, grid of nb blocks (the layout's chunks): the call's
 * ids against its layout's (a difference and invalid ids flagged); the
 * last block stores this rank's header (cached, the layout's call, its
 * status: proto_cached_agree) into every peer's count block and releases
 * the sequence word there: the count exchange without the counts, which
 * still tells each rank that its peers have entered the call.  A refused
 * call (a bad argument on this rank, T = 0) sends the same header marked
 * PROTO_CNT_REFUSED, which fails the call on every rank.  NCCL: the
 * check only; the header travels with the counts (kern_nccl.cu). */
__global__ void epxk_cached_kernel(proto_geom_t g, epxk_call_t c)
{
    const proto_ids_t ids = { c.idx, c.idx64, g.K, g.E, c.route };
    int64_t t0, t1;
    proto_layout_range(c.T, gridDim.x, blockIdx.x, &t0, &t1);
    for (int64_t i = t0 * g.K + threadIdx.x; i < t1 * g.K; i += blockDim.x) {
        const int64_t t = i / g.K;
        const int k = (int)(i % g.K);
        if (proto_expert_bad(&ids, t, k))
            c.info[EPXK_INFO_BAD_IDS] = 1;
        if (proto_cache_id(&ids, t, k) != c.lay_ids[i])
            c.info[EPXK_INFO_ROUTE] = 1;
    }
    if (!c.windows)   /* NCCL: the header goes with the counts (kern_nccl.cu) */
        return;
    if (!epxk_grid_last(c.done))
        return;
    const int n = g.R + g.E;
    const int route = *(volatile int64_t *)&c.info[EPXK_INFO_ROUTE] != 0;
    for (int d = threadIdx.x; d < g.R; d += blockDim.x)
        proto_cnt_header(win_cnt(g, c.peers[d], c.parity, g.rank) -
                             PROTO_CNT_HDR, (int32_t)c.seq, 1, c.refused,
                         c.lay_seq, route);
    __threadfence_system();
    __syncthreads();
    for (int d = threadIdx.x; d < g.R; d += blockDim.x)
        epxk_st_release_s32(win_cnt(g, c.peers[d], c.parity, g.rank) + n,
                       (int32_t)c.seq);
}

/* One block.  With windows, wait for every source's count row of this
 * call; then this rank's first entry at each destination and (expert-
 * major) its first row for each expert. */
__global__ void epxk_offsets_kernel(proto_geom_t g, epxk_call_t c)
{
    char *mine = c.peers[g.rank];
    if (c.windows)
        for (int s = threadIdx.x; s < g.R; s += blockDim.x) {
            const int32_t *blk = win_cnt(g, mine, c.parity, s);
            if (!wait_s32(blk + g.R + g.E, (int32_t)c.seq, c.timeout_ns,
                          c.info))
                continue;
            /* Every rank cached with the same layout, or none. */
            int a = proto_cached_agree(blk - PROTO_CNT_HDR, (int32_t)c.seq,
                                       c.cached, c.lay_seq);
            if (a != EPX_OK)
                atomicMin((long long *)&c.info[EPXK_INFO_AGREE],
                          (long long)a);
        }
    __syncthreads();
    if (c.cached)   /* base and ebase are the layout's */
        return;
    const int32_t *cnt = win_cnt(g, mine, c.parity, 0);
    for (int d = threadIdx.x; d < g.R; d += blockDim.x)
        c.base[d] = proto_dest_base(&g, cnt, d);
    if (g.em)
        for (int e = threadIdx.x; e < g.E; e += blockDim.x)
            c.ebase[e] = proto_expert_base(&g, cnt, c.first[c.e2r[e]], e);
}

/* Expert-major, one (token, destination) pair by a warp (windows only):
 * a copy of the row per expert of t at d, at that expert's row, with its
 * source, token and weight; and the entry (source, return slot, rows in
 * top-k order) that combine reduces. */
__device__ static void pack_expert_major(const proto_geom_t &g,
                                         const epxk_call_t &c,
                                         const proto_ids_t *ids, char *w, int d,
                                         int64_t t, int64_t ent, int64_t slot,
                                         int lane)
{
    for (int k = 0; k < g.K; k++) {
        int64_t e = proto_expert_id(ids, t, k);
        if (e < 0 || proto_owner(c.e2r, e) != d)
            continue;
        int64_t row = proto_expert_row(&g, c.ebase, c.epos, e, t, k);
        warp_put_row(g, w, row, (const char *)c.x + t * g.row_bytes,
                     c.gscale, lane);
        if (lane == 0) {
            ((int32_t *)(w + g.off_src_rank))[row] = g.rank;
            ((int32_t *)(w + g.off_src_token))[row] = (int32_t)t;
            ((float *)(w + g.off_w))[row] = c.w[t * g.K + k];
        }
    }
    if (lane == 0) {
        ((int32_t *)(w + g.off_ent_src))[ent] = g.rank;
        ((int32_t *)(w + g.off_ret_slot))[ent] = (int32_t)slot;
        proto_entry_rows(&g, ids, c.e2r, c.ebase, c.epos, t, d,
                        (int32_t *)(w + g.off_ent_rows) + ent * g.K);
    }
}

/* Grid of num_sms blocks, a warp per (token, destination): the row and
 * its metadata go straight into the destination's window (or the NCCL
 * staging buffer, in packed order).  The last block releases the data
 * flag at every destination. */
__global__ void epxk_pack_kernel(proto_geom_t g, epxk_call_t c)
{
    const int lane = threadIdx.x % WARP;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / WARP);
    const int64_t pairs = c.T * g.maxdest;
    const proto_ids_t ids = { c.idx, c.idx64, g.K, g.E, c.route };
    if (c.info[EPXK_INFO_ERROR] == 0 && c.info[EPXK_INFO_AGREE] == 0)
        for (int64_t i = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
             i < pairs; i += warps) {
            int d = c.dest[i];
            if (d < 0)
                continue;
            int64_t t = i / g.maxdest;
            int64_t slot = c.sendoff[d] + c.pos[i];
            int64_t row = c.windows ? c.base[d] + c.pos[i] : slot;
            char *w = c.windows ? c.peers[d] : c.stage;
            if (g.em) {
                pack_expert_major(g, c, &ids, w, d, t, row, slot, lane);
                continue;
            }
            warp_put_row(g, w, row, (const char *)c.x + t * g.row_bytes,
                         c.gscale, lane);
            if (lane == 0) {
                ((int32_t *)(w + g.off_src_rank))[row] = g.rank;
                ((int32_t *)(w + g.off_src_token))[row] = (int32_t)t;
                ((int32_t *)(w + g.off_ret_slot))[row] = (int32_t)slot;
                proto_meta_topk(&g, &ids, c.w, c.e2r, t, d,
                               c.first[d],
                               (int32_t *)(w + g.off_idx) + row * g.K,
                               (float *)(w + g.off_w) + row * g.K);
            }
        }
    if (!c.windows)
        return;
    if (epxk_grid_last(c.done))
        for (int d = threadIdx.x; d < g.R; d += blockDim.x)
            epxk_st_release_u64(win_flag(g, c.peers[d], PROTO_FLAG_DATA, g.rank),
                           c.seq);
}

/* One block.  The receive totals into info (rows, then per local unit)
 * and the padding marks, from the count matrix (complete: the offsets
 * kernel waited for it; a cached call's is its layout's), before any row
 * arrives: no source stores there in this call.  They are published for
 * epx_dispatch_poll (c.pub, host-mapped), then each local unit's
 * sequence word once the data flag of every source with rows for it
 * arrived (release: the rows, which the flag's acquire made visible, and
 * the marks come before it); with windows, then every source's flag.
 * A call whose ranks did not agree (EPXK_INFO_AGREE) received nothing. */
__global__ void epxk_recv_kernel(proto_geom_t g, epxk_call_t c)
{
    char *mine = c.peers[g.rank];
    const int32_t *win = win_cnt(g, mine, c.parity, 0);
    const int32_t *cnt = c.cached ? c.lay_cnt : win;
    const int L = c.num_local, first = c.first[g.rank];
    const bool agreed = c.info[EPXK_INFO_AGREE] == 0;
    int64_t *counts = c.info + EPXK_INFO_COUNTS, *offs = counts + L;
    /* An uncached call's matrix is kept with its layout. */
    if (!c.cached && c.lay_cnt)
        for (int64_t i = threadIdx.x;
             i < (int64_t)g.R * g.cnt_ints - PROTO_CNT_HDR; i += blockDim.x)
            c.lay_cnt[i] = win[i];
    if (threadIdx.x == 0) {
        c.info[EPXK_INFO_ENTS] = agreed ? proto_recv_rows(&g, cnt) : 0;
        c.info[EPXK_INFO_ROWS] = !agreed ? 0
            : g.em ? proto_expert_offset(&g, cnt, first, L)
                   : proto_recv_rows(&g, cnt);
    }
    for (int j = threadIdx.x; j < L; j += blockDim.x) {
        counts[j] = agreed ? proto_recv_expert(&g, cnt, first, j) : 0;
        offs[j] = agreed && g.em ? proto_expert_offset(&g, cnt, first, j) : 0;
    }
    __syncthreads();
    /* Mark the padding after each expert's rows (stale rows of earlier
     * calls otherwise). */
    for (int j = 0; g.em && agreed && j < L; j++) {
        int64_t end = j + 1 < L ? offs[j + 1] : c.info[EPXK_INFO_ROWS];
        for (int64_t r = offs[j] + counts[j] + threadIdx.x; r < end;
             r += blockDim.x) {
            ((int32_t *)(mine + g.off_src_rank))[r] = -1;
            ((int32_t *)(mine + g.off_src_token))[r] = -1;
            ((float *)(mine + g.off_w))[r] = 0.0f;
        }
    }
    if (c.pub) {
        for (int j = threadIdx.x; j < L; j += blockDim.x) {
            c.pub[EPXK_PUB_COUNTS + j] = counts[j];
            c.pub[EPXK_PUB_COUNTS + L + j] = offs[j];
        }
        if (threadIdx.x == 0) {
            c.pub[EPXK_PUB_AGREE] = c.info[EPXK_INFO_ROUTE]
                ? (int64_t)EPX_ERR_INVALID : c.info[EPXK_INFO_AGREE];
            c.pub[EPXK_PUB_ROWS] = c.info[EPXK_INFO_ROWS];
        }
    }
    __threadfence_system();
    __syncthreads();
    if (c.pub && threadIdx.x == 0)
        epxk_st_release_u64((uint64_t *)&c.pub[EPXK_PUB_SEQ], c.seq);
    /* Readiness: unit by unit, as their sources arrive.  A wait that
     * timed out ends the waiting (the error is the host's to report). */
    for (int j = threadIdx.x; agreed && c.pub && j < L; j += blockDim.x) {
        bool ok = true;
        for (int s = 0; ok && s < g.R; s++)
            if (c.windows && proto_unit_fed(&g, cnt, s, first + j))
                ok = *(volatile int64_t *)&c.info[EPXK_INFO_ERROR] == 0 &&
                     wait_u64(win_flag(g, mine, PROTO_FLAG_DATA, s), c.seq,
                              c.timeout_ns, c.info);
        if (ok)
            epxk_st_release_u64((uint64_t *)&c.pub[EPXK_PUB_COUNTS + 2 * L + j],
                           c.seq);
    }
    if (c.windows)
        for (int s = threadIdx.x; s < g.R; s += blockDim.x)
            if (*(volatile int64_t *)&c.info[EPXK_INFO_ERROR] == 0)
                wait_u64(win_flag(g, mine, PROTO_FLAG_DATA, s), c.seq,
                         c.timeout_ns, c.info);
}

/* Grid of num_sms blocks, a warp per received row: the expert output goes
 * back into its source's window at the row's return slot; the last block
 * releases the combine flag at every rank. */
__global__ void epxk_comb_put_kernel(proto_geom_t g, epxk_call_t c)
{
    const int lane = threadIdx.x % WARP;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / WARP);
    char *mine = c.peers[g.rank];
    const int64_t ents = c.info[EPXK_INFO_ENTS];
    const float *wt = c.unweighted ? NULL : (const float *)(mine + g.off_w);
    if (c.info[EPXK_INFO_ERROR] == 0)
        for (int64_t i = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
             i < ents; i += warps) {
            int64_t slot = ((const int32_t *)(mine + g.off_ret_slot))[i];
            if (g.em) {
                /* The token's partial: its rows here in top-k order. */
                int s = ((const int32_t *)(mine + g.off_ent_src))[i];
                const int32_t *rows =
                    (const int32_t *)(mine + g.off_ent_rows) + i * g.K;
                char *dst = c.peers[s] + g.off_comb + slot * g.row_bytes;
                warp_partial(g, (const char *)c.y, rows, wt, dst, lane);
                continue;
            }
            int s = ((const int32_t *)(mine + g.off_src_rank))[i];
            warp_copy(c.peers[s] + g.off_comb + slot * g.row_bytes,
                      (const char *)c.y + i * g.row_bytes, g.row_bytes, lane);
        }
    if (epxk_grid_last(c.done))
        for (int d = threadIdx.x; d < g.R; d += blockDim.x)
            epxk_st_release_u64(win_flag(g, c.peers[d], PROTO_FLAG_COMB, g.rank),
                           c.seq);
}

/* Grid of num_sms blocks.  With windows, every block waits for every
 * rank's combine flag; then out[t][h] is the ascending-rank fp32 sum of
 * the partials (coalesced over h), rounded once. */
__global__ void epxk_comb_reduce_kernel(proto_geom_t g, epxk_call_t c)
{
    char *mine = c.peers[g.rank];
    if (c.windows)
        for (int s = threadIdx.x; s < g.R; s += blockDim.x)
            wait_u64(win_flag(g, mine, PROTO_FLAG_COMB, s), c.seq,
                     c.timeout_ns, c.info);
    __syncthreads();
    if (c.info[EPXK_INFO_ERROR] != 0)
        return;
    epxk_reduce_out(g, c, mine + g.off_comb);
}


/* ------------------------------------------------------------ low latency
 *
 * No host synchronisation and no count exchange: the layout, every offset
 * and the buffer's use number (its tag) are on the device, so a call's
 * five kernels can be captured into a CUDA graph and replayed. */

__device__ static __forceinline__ char *ll_bufp(const epxk_call_t &c,
                                                char *win)
{
    return win + c.ll.off_bufs + (int64_t)c.ll_b * c.ll.buf;
}

/* Comb flags [B][R]: of the call's buffer, set by rank s. */
__device__ static __forceinline__ uint64_t *ll_comb_flag(const proto_geom_t &g,
                                                         const epxk_call_t &c,
                                                         char *win, int s)
{
    return (uint64_t *)(win + c.ll.off_comb_flags) +
           (int64_t)c.ll_b * g.R + s;
}

/* Low-latency layout over nb blocks, a chunk of tokens each (proto.h,
 * "routing layout"): count the choices per expert, then give them their
 * slots (beyond cap dropped) and count the kept destinations, then place
 * the destinations.  Grid of nb blocks: the chunk's choices per expert
 * into part[b][R + e]; its keep and dest entries cleared. */
__global__ void epxk_ll_layout_count_kernel(proto_geom_t g, epxk_call_t c)
{
    const int n = g.R + g.E, b = blockIdx.x;
    const proto_ids_t ids = { c.idx, c.idx64, g.K, g.E, c.route };
    int64_t t0, t1;
    proto_layout_range(c.T, gridDim.x, b, &t0, &t1);
    for (int64_t i = t0 * g.K + threadIdx.x; i < t1 * g.K; i += blockDim.x)
        c.keep[i] = -1;
    for (int64_t i = t0 * g.maxdest + threadIdx.x; i < t1 * g.maxdest;
         i += blockDim.x)
        c.dest[i] = -1;
    for (int e = threadIdx.x; e < g.E; e += blockDim.x)
        c.part[(int64_t)b * n + g.R + e] =
            (int32_t)proto_layout_expert(&g, &ids, t0, t1, e, 0, NULL);
}

/* Grid of nb blocks: the slots of the chunk's choices (keep) from the
 * choices of the lower chunks, then the chunk's tokens per destination
 * among the kept choices into part[b][d]. */
__global__ void epxk_ll_layout_keep_kernel(proto_geom_t g, epxk_call_t c)
{
    const int n = g.R + g.E, b = blockIdx.x;
    const proto_ids_t ids = { c.idx, c.idx64, g.K, g.E, c.route };
    int64_t t0, t1;
    proto_layout_range(c.T, gridDim.x, b, &t0, &t1);
    for (int e = threadIdx.x; e < g.E; e += blockDim.x)
        proto_ll_layout_expert(&g, &ids, t0, t1, e,
                              proto_layout_base(c.part, n, b, g.R + e),
                              c.ll.cap, c.keep);
    __syncthreads();
    for (int d = threadIdx.x; d < g.R; d += blockDim.x)
        c.part[(int64_t)b * n + d] = (int32_t)proto_layout_dest(
            &g, &ids, c.keep, c.e2r, t0, t1, d, 0, NULL, NULL);
}

/* Grid of nb blocks: the chunk's kept destinations (dest/pos).  Block 0:
 * the counts, return-slot offsets and this call's own status (invalid
 * ids, or more rows than cap without DROP). */
__global__ void epxk_ll_layout_place_kernel(proto_geom_t g, epxk_call_t c)
{
    const int n = g.R + g.E, b = blockIdx.x;
    const proto_ids_t ids = { c.idx, c.idx64, g.K, g.E, c.route };
    int64_t t0, t1;
    proto_layout_range(c.T, gridDim.x, b, &t0, &t1);
    for (int d = threadIdx.x; d < g.R; d += blockDim.x)
        proto_layout_dest(&g, &ids, c.keep, c.e2r, t0, t1, d,
                         proto_layout_base(c.part, n, b, d), c.dest, c.pos);
    if (b != 0)
        return;
    __shared__ int bad, over;
    if (threadIdx.x == 0)
        bad = over = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < c.T * g.K; i += blockDim.x)
        if (proto_expert_bad(&ids, i / g.K, (int)(i % g.K)))
            atomicOr(&bad, 1);
    for (int u = threadIdx.x; u < n; u += blockDim.x) {
        int64_t v = proto_layout_base(c.part, n, gridDim.x, u);
        c.mycnt[u] = (int32_t)v;
        if (u >= g.R && v > c.ll.cap && !c.ll_drop)
            atomicOr(&over, 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int64_t o = 0;
        for (int d = 0; d < g.R; d++) {
            c.sendoff[d] = o;
            o += c.mycnt[d];
        }
        int32_t st = bad ? EPX_ERR_INVALID : over ? EPX_ERR_RANGE : 0;
        *c.ll_mystat = st;
        if (st)
            epxk_ll_error(c, st);
    }
}

/* Grid: wait until every rank combined the buffer's previous use (so
 * nobody still reads what this call overwrites), then a warp per (token,
 * destination): its kept rows at their fixed places (a quantized wire:
 * quantized while stored, into the data, scales and row-scale regions;
 * one quantization per row, as expert-major in throughput mode) and its
 * entry; the last block stores the status and count words and releases
 * the final word at every destination. */
__global__ void epxk_ll_pack_kernel(proto_geom_t g, epxk_call_t c)
{
    const int lane = threadIdx.x % WARP;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / WARP);
    const proto_ids_t ids = { c.idx, c.idx64, g.K, g.E, c.route };
    const uint32_t u = c.ll_use[c.ll_b];
    const int32_t tag = PROTO_LL_TAG(u);
    char *mine = c.peers[g.rank];
    for (int s = threadIdx.x; s < g.R; s += blockDim.x)
        wait_u64_masked(ll_comb_flag(g, c, mine, s), u, c.timeout_ns, c.info);
    __syncthreads();
    /* a refused call (a bad argument here) packs nothing */
    const int32_t mystat = c.ll_refused ? c.ll_refused : *c.ll_mystat;
    const int ok = mystat == 0 && c.info[EPXK_INFO_ERROR] == 0;
    if (ok)
        for (int64_t i = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
             i < c.T * g.maxdest; i += warps) {
            int d = c.dest[i];
            if (d < 0)
                continue;
            int64_t t = i / g.maxdest;
            char *bw = ll_bufp(c, c.peers[d]);
            for (int k = 0; k < g.K; k++) {
                int64_t e = proto_kept_id(&ids, c.keep, t, k);
                if (e < 0 || proto_owner(c.e2r, e) != d)
                    continue;
                int64_t row = proto_ll_row(&g, c.ll.cap, c.first[d], e, g.rank,
                                          c.keep[t * g.K + k]);
                const char *xr = (const char *)c.x + t * g.row_bytes;
                char *q = proto_ll_row_data(&g, &c.ll, bw, row);
                if (g.qblock)
                    warp_quant_row(g, q, proto_ll_row_scales(&g, &c.ll, bw, row),
                                   proto_ll_row_gscale(&c.ll, bw, row),
                                   (const uint16_t *)xr, c.gscale, lane);
                else
                    warp_copy(q, xr, g.row_bytes, lane);
                if (lane == 0) {
                    ((int32_t *)(bw + c.ll.src_tok))[row] = (int32_t)t;
                    ((float *)(bw + c.ll.w))[row] = c.w[t * g.K + k];
                }
            }
            if (lane == 0) {
                int64_t ent = (int64_t)g.rank * g.maxT + c.pos[i];
                ((int32_t *)(bw + c.ll.ent_slot))[ent] =
                    (int32_t)(c.sendoff[d] + c.pos[i]);
                proto_ll_entry_rows(&g, &ids, c.keep, c.e2r, c.ll.cap,
                                   c.first[d], t, d,
                                   (int32_t *)(bw + c.ll.ent_rows) + ent * g.K);
            }
        }
    if (!epxk_grid_last(c.done))
        return;
    const int32_t st = ok ? 0 : mystat ? mystat : EPX_ERR_TIMEOUT;
    for (int d = threadIdx.x; d < g.R; d += blockDim.x)
        ((int32_t *)(ll_bufp(c, c.peers[d]) + c.ll.st))[g.rank] = st;
    /* The status, then the count words after the rows (a unit is ready
     * once its words are there: recv's readiness), then the final word. */
    __threadfence_system();
    __syncthreads();
    for (int d = threadIdx.x; d < g.R; d += blockDim.x) {
        char *bw = ll_bufp(c, c.peers[d]);
        for (int e = c.first[d]; e < c.first[d + 1]; e++) {
            int32_t n = ok ? c.mycnt[g.R + e] : 0;
            epxk_st_relaxed_s32((int32_t *)(bw + c.ll.cw) +
                                    (e - c.first[d]) * g.R + g.rank,
                                PROTO_LL_WORD(tag, n < PROTO_LL_MASK
                                                       ? n : PROTO_LL_MASK));
        }
        epxk_st_release_s32((int32_t *)(bw + c.ll.fw) + g.rank,
                            PROTO_LL_WORD(tag, ok ? c.mycnt[d] : 0));
    }
}

/* Grid.  Unit by unit, a block each in turn: once every source's count
 * word for local unit j carries the tag (proto_ll_unit_ready; the rows,
 * and the source's status, came before it), its rows' sources and
 * padding marks, its count and drops; then, published for
 * epx_dispatch_poll (c.ll_pub, host-mapped), its count and its ready
 * word (release, after a system fence), or the call's failure where a
 * source's status says so (proto_ll_src_fail: no unit of a failed call
 * is ever ready).  Then every block waits for every source's final word
 * (the entries combine reads); block 0 records the sources' status (and
 * publishes a failure: a rank without local units learns it there). */
__global__ void epxk_ll_recv_kernel(proto_geom_t g, epxk_call_t c)
{
    const uint32_t u = c.ll_use[c.ll_b];
    const int32_t tag = PROTO_LL_TAG(u);
    char *bw = ll_bufp(c, c.peers[g.rank]);
    const int32_t *fw = (const int32_t *)(bw + c.ll.fw);
    const int32_t *cw = (const int32_t *)(bw + c.ll.cw);
    const int32_t *stw = (const int32_t *)(bw + c.ll.st);
    const int L = c.num_local, cap = c.ll.cap;
    int32_t *stok = (int32_t *)(bw + c.ll.src_tok);
    float *wt = (float *)(bw + c.ll.w);
    __shared__ int bad_src, missing;
    for (int j = blockIdx.x; j < L; j += gridDim.x) {
        if (threadIdx.x == 0)
            bad_src = g.R, missing = 0;
        __syncthreads();
        for (int s = threadIdx.x; s < g.R; s += blockDim.x) {
            const int32_t *p = cw + (int64_t)j * g.R + s;
            if (*(volatile int64_t *)&c.info[EPXK_INFO_ERROR] == 0 &&
                wait_tag(p, tag, c.timeout_ns, c.info)) {
                if (proto_ll_src_fail(stw[s], s, g.rank))
                    atomicMin(&bad_src, s);
            } else {
                atomicOr(&missing, 1);
            }
        }
        __syncthreads();
        if (missing)   /* timed out: the host reports it (check) */
            break;
        const int64_t r0 = (int64_t)j * g.R * cap;
        for (int64_t r = r0 + threadIdx.x; r < r0 + (int64_t)g.R * cap;
             r += blockDim.x) {
            int s = proto_ll_row_source(&g, cap, cw, r);
            c.ll_src[r] = s;
            if (s < 0) {
                stok[r] = -1;
                wt[r] = 0.0f;
            }
        }
        if (threadIdx.x == 0) {
            int64_t n = 0, dropped = 0;
            for (int s = 0; s < g.R; s++) {
                n += proto_ll_kept(cw[(int64_t)j * g.R + s], cap);
                dropped += proto_ll_dropped(cw[(int64_t)j * g.R + s], cap);
            }
            c.ll_counts[j] = n;
            if (dropped)
                atomicAdd((unsigned long long *)&c.ll_state[EPXK_LL_DROPPED],
                          (unsigned long long)dropped);
            if (c.ll_pub)
                c.ll_pub[EPXK_LLPUB_COUNTS + j] = n;
        }
        __threadfence_system();
        __syncthreads();
        if (threadIdx.x == 0)
            epxk_llpub_unit(c, stw, bad_src, g.R, g.rank, L, j);
        __syncthreads();
    }
    epxk_ll_recv_end(g, c, stw, bad_src, [&](int s) {
        wait_tag(fw + s, tag, c.timeout_ns, c.info);
    });
}

/* Grid, a warp per (source, entry): the token's partial from its rows
 * here into the source's buffer at the return slot; the last block
 * releases this rank's comb flag of the buffer's use at every rank. */
__global__ void epxk_ll_comb_put_kernel(proto_geom_t g, epxk_call_t c)
{
    const int lane = threadIdx.x % WARP;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / WARP);
    const uint32_t u = c.ll_use[c.ll_b];
    char *bw = ll_bufp(c, c.peers[g.rank]);
    const float *wt = c.unweighted ? NULL : (const float *)(bw + c.ll.w);
    const int32_t *fw = (const int32_t *)(bw + c.ll.fw);
    if (c.info[EPXK_INFO_ERROR] == 0)
        for (int64_t i = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
             i < (int64_t)g.R * g.maxT; i += warps) {
            int s = (int)(i / g.maxT);
            if (i % g.maxT >= (fw[s] & PROTO_LL_MASK))
                continue;
            int64_t slot = ((const int32_t *)(bw + c.ll.ent_slot))[i];
            const int32_t *rows = (const int32_t *)(bw + c.ll.ent_rows) + i * g.K;
            char *dst = ll_bufp(c, c.peers[s]) + c.ll.comb + slot * g.row_bytes;
            warp_partial(g, (const char *)c.y, rows, wt, dst, lane);
        }
    if (epxk_grid_last(c.done))
        for (int d = threadIdx.x; d < g.R; d += blockDim.x)
            epxk_st_release_u64(ll_comb_flag(g, c, c.peers[d], g.rank),
                           (uint64_t)u + 1);
}

/* Grid: wait for every rank's partials of this use, sum them in ascending
 * rank order (throughput mode's reduce); the last block advances the
 * buffer's use. */
__global__ void epxk_ll_comb_reduce_kernel(proto_geom_t g, epxk_call_t c)
{
    const uint32_t u = c.ll_use[c.ll_b];
    char *mine = c.peers[g.rank];
    char *bw = ll_bufp(c, mine);
    for (int s = threadIdx.x; s < g.R; s += blockDim.x)
        if (wait_u64_masked(ll_comb_flag(g, c, mine, s), (uint64_t)u + 1,
                            c.timeout_ns, c.info) &&
            (epxk_ld_acquire_u64(ll_comb_flag(g, c, mine, s)) & EPXK_LL_ABANDONED))
            epxk_ll_error(c, EPX_ERR_PEER);
    __syncthreads();
    if (c.info[EPXK_INFO_ERROR] == 0) {
        epxk_reduce_out(g, c, bw + c.ll.comb);
    } else {
        epxk_ll_error(c, EPX_ERR_TIMEOUT);
    }
    if (epxk_grid_last(c.done) && threadIdx.x == 0)
        c.ll_use[c.ll_b] = u + 1;
}

/* One thread: this rank gives up a received call without combining it:
 * its comb flag (marked abandoned) so nobody waits, and the next use. */
__global__ void epxk_ll_abandon_kernel(proto_geom_t g, epxk_call_t c)
{
    const uint32_t u = c.ll_use[c.ll_b];
    __threadfence_system();
    for (int d = 0; d < g.R; d++)
        epxk_st_release_u64(ll_comb_flag(g, c, c.peers[d], g.rank),
                       ((uint64_t)u + 1) | EPXK_LL_ABANDONED);
    c.ll_use[c.ll_b] = u + 1;
}

/* ------------------------------------------------- expert-major over NCCL
 *
 * proto.h, "expert-major over NCCL": the sender stages unit by unit (the
 * pack kernel with ebase = the staging bases), the grouped send/recv
 * moves each source's range into rstage and its entries into place, and
 * the scatter puts each row at its expert-major row. */

/* A warp's copy of any byte count (block scales may be odd). */
__device__ static __forceinline__ void warp_copy_any(char *dst, const char *src,
                                                     int64_t bytes, int lane)
{
    if (bytes & 1) {
        for (int64_t i = lane; i < bytes; i += WARP)
            dst[i] = src[i];
        return;
    }
    warp_copy(dst, src, bytes, lane);
}

/* One block, before pack: each unit's first staging row. */
__global__ void epxk_nccl_em_base_kernel(proto_geom_t g, epxk_call_t c)
{
    for (int e = threadIdx.x; e < g.E; e += blockDim.x)
        c.ebase[e] = proto_em_stage_base(&g, c.mycnt, e);
}

/* One block, after the count exchange: the receiver's map. */
__global__ void epxk_nccl_em_map_kernel(proto_geom_t g, epxk_call_t c)
{
    const int32_t *cnt = win_cnt(g, c.peers[g.rank], c.parity, 0);
    const int L = c.num_local;
    for (int64_t i = threadIdx.x; i < proto_em_map_len(&g, L); i += blockDim.x)
        c.emmap[i] = proto_em_map_at(&g, cnt, c.first[g.rank], L, i);
}

/* Grid: a warp per staged row (data, scales, row scale, source, token,
 * weight to its row here), then a thread per received entry (its source,
 * and its rows turned into rows here). */
__global__ void epxk_nccl_em_scatter_kernel(proto_geom_t g, epxk_call_t c)
{
    const int lane = threadIdx.x % WARP;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / WARP);
    const int L = c.num_local;
    const int64_t RL = (int64_t)g.R * L, *map = c.emmap;
    char *w = c.peers[g.rank];
    const char *q = c.rstage;
    for (int64_t i = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
         i < map[RL]; i += warps) {
        int s;
        const int64_t f = proto_em_scatter_row(&g, map, L, i, &s);
        warp_copy_any(w + g.off_rows + f * g.xrow_bytes,
                      q + g.off_rows + i * g.xrow_bytes, g.xrow_bytes, lane);
        if (g.scale_bytes)
            warp_copy_any(w + g.off_scales + f * g.scale_bytes,
                          q + g.off_scales + i * g.scale_bytes,
                          g.scale_bytes, lane);
        if (lane == 0) {
            if (g.gscale_bytes)
                ((float *)(w + g.off_gscale))[f] =
                    ((const float *)(q + g.off_gscale))[i];
            ((int32_t *)(w + g.off_src_rank))[f] = s;
            ((int32_t *)(w + g.off_src_token))[f] =
                ((const int32_t *)(q + g.off_src_token))[i];
            ((float *)(w + g.off_w))[f] = ((const float *)(q + g.off_w))[i];
        }
    }
    const int64_t ents = map[2 * RL + 1 + g.R];
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < ents;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int s = proto_em_entry_src(&g, map, L, i);
        int32_t *rows = (int32_t *)(w + g.off_ent_rows) + i * g.K;
        ((int32_t *)(w + g.off_ent_src))[i] = s;
        for (int k = 0; k < g.K && rows[k] >= 0; k++)
            rows[k] = (int32_t)proto_em_entry_row(&g, map, L, s, rows[k]);
    }
}

/* Grid, a warp per received entry: its partial (the windows backend's
 * comb put arithmetic) into rstage at the entry's index, whence each
 * source's range goes back with one send. */
__global__ void epxk_nccl_em_partial_kernel(proto_geom_t g, epxk_call_t c)
{
    const int lane = threadIdx.x % WARP;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / WARP);
    char *mine = c.peers[g.rank];
    const int64_t ents = c.info[EPXK_INFO_ENTS];
    const float *wt = c.unweighted ? NULL : (const float *)(mine + g.off_w);
    for (int64_t i = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
         i < ents; i += warps)
        warp_partial(g, (const char *)c.y,
                     (const int32_t *)(mine + g.off_ent_rows) + i * g.K, wt,
                     c.rstage + i * g.row_bytes, lane);
}

/* ------------------------------------------------ low latency statistics */

/* One block, after the low-latency layout: a call that is sent (its own
 * status 0) appends its layer and its counts per logical expert and per
 * unit (all its choices, dropped ones too: the host executor's) to the
 * ring, then advances the counter.  Calls of one engine run in stream
 * order, so one writer at a time. */
__global__ void epxk_ll_stats_kernel(proto_geom_t g, epxk_call_t c)
{
    if (*c.ll_mystat != 0)
        return;
    epxk_ll_stats_put(g, c, c.mycnt);
}

/* ------------------------------------------------- low latency over NCCL
 *
 * proto/ll_nccl.h: the sender stages a block per destination in the
 * receiver's order (lln pack), one grouped send/recv of sizes the host
 * knows moves the blocks (nccl.c, through epx__nccl_p2p), the receiver
 * scatters them into its buffer (lln scatter), whose words then carry
 * the call's tags, so ll recv runs as over windows.  Combine: each
 * entry's partial into the block of its source (lln comb put, or only
 * the flag words: lln abandon), the exchange, then the partials to
 * their return slots and the flags into the buffer's comb flags (lln comb
 * scatter), and ll comb reduce as over windows.  No wait on a peer: NCCL's
 * stream order is the protocol. */

/* Destination d's block in the send staging. */
__device__ static __forceinline__ char *lln_block(const proto_geom_t &g,
                                                  const epxk_call_t &c, int d,
                                                  proto_lln_blk_t *b)
{
    proto_lln_block(&g, c.first[d + 1] - c.first[d], c.ll.cap, b);
    return c.stage + proto_lln_send_off(&g, c.first, c.ll.cap, d);
}

/* Grid, a warp per (token, destination): its kept rows (quantized while
 * stored, as ll pack) and their metadata into the destination's block at
 * proto_lln_brow, its entry at its position; block 0 the words of every
 * block (status, final word, count words with the use's tag; a refused
 * call or a timed-out one: no rows, its status). */
__global__ void epxk_lln_pack_kernel(proto_geom_t g, epxk_call_t c)
{
    const int lane = threadIdx.x % WARP;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / WARP);
    const proto_ids_t ids = { c.idx, c.idx64, g.K, g.E, c.route };
    const int32_t tag = PROTO_LL_TAG(c.ll_use[c.ll_b]);
    const int32_t mystat = c.ll_refused ? c.ll_refused : *c.ll_mystat;
    const int ok = mystat == 0 && c.info[EPXK_INFO_ERROR] == 0;
    if (ok)
        for (int64_t i = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
             i < c.T * g.maxdest; i += warps) {
            const int d = c.dest[i];
            if (d < 0)
                continue;
            const int64_t t = i / g.maxdest;
            proto_lln_blk_t bk;
            char *blk = lln_block(g, c, d, &bk);
            for (int k = 0; k < g.K; k++) {
                int64_t e = proto_kept_id(&ids, c.keep, t, k);
                if (e < 0 || proto_owner(c.e2r, e) != d)
                    continue;
                const int64_t r = proto_lln_brow(c.ll.cap, c.first[d], e,
                                                 c.keep[t * g.K + k]);
                const char *xr = (const char *)c.x + t * g.row_bytes;
                char *q = blk + bk.rows + r * g.xrow_bytes;
                if (g.qblock)
                    warp_quant_row(g, q, blk + bk.scales + r * g.scale_bytes,
                                   (float *)(blk + bk.gscale) + r,
                                   (const uint16_t *)xr, c.gscale, lane);
                else
                    warp_copy(q, xr, g.row_bytes, lane);
                if (lane == 0) {
                    ((int32_t *)(blk + bk.src_tok))[r] = (int32_t)t;
                    ((float *)(blk + bk.w))[r] = c.w[t * g.K + k];
                }
            }
            if (lane == 0) {
                const int64_t p = c.pos[i];
                ((int32_t *)(blk + bk.ent_slot))[p] =
                    (int32_t)(c.sendoff[d] + p);
                proto_ll_entry_rows(&g, &ids, c.keep, c.e2r, c.ll.cap,
                                    c.first[d], t, d,
                                    (int32_t *)(blk + bk.ent_rows) + p * g.K);
            }
        }
    if (blockIdx.x != 0)
        return;
    const int32_t st = ok ? 0 : mystat ? mystat : EPX_ERR_TIMEOUT;
    for (int d = threadIdx.x; d < g.R; d += blockDim.x) {
        proto_lln_blk_t bk;
        int32_t *w = (int32_t *)(lln_block(g, c, d, &bk) + bk.words);
        w[PROTO_LLN_ST] = st;
        w[PROTO_LLN_FW] = PROTO_LL_WORD(tag, ok ? c.mycnt[d] : 0);
        for (int e = c.first[d]; e < c.first[d + 1]; e++) {
            int32_t n = ok ? c.mycnt[g.R + e] : 0;
            w[PROTO_LLN_CW + e - c.first[d]] =
                PROTO_LL_WORD(tag, n < PROTO_LL_MASK ? n : PROTO_LL_MASK);
        }
    }
}

/* Grid, after the exchange: every source's block (rstage, R blocks of
 * this rank's size) into the buffer: its words, its entries that can
 * exist, and its kept rows (a warp per row; the padding's marks are ll
 * recv's, as over windows). */
__global__ void epxk_lln_scatter_kernel(proto_geom_t g, epxk_call_t c)
{
    const int L = c.num_local, cap = c.ll.cap, lane = threadIdx.x % WARP;
    proto_lln_blk_t bk;
    proto_lln_block(&g, L, cap, &bk);
    char *bw = ll_bufp(c, c.peers[g.rank]);
    const int64_t rows = (int64_t)L * cap, n = proto_lln_nent(&g, L, cap);
    const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x,
                  nth = (int64_t)gridDim.x * blockDim.x;
    for (int64_t s = tid; s < g.R; s += nth) {
        const int32_t *w = (const int32_t *)(c.rstage + s * bk.bytes +
                                             bk.words);
        ((int32_t *)(bw + c.ll.st))[s] = w[PROTO_LLN_ST];
        ((int32_t *)(bw + c.ll.fw))[s] = w[PROTO_LLN_FW];
        for (int j = 0; j < L; j++)
            ((int32_t *)(bw + c.ll.cw))[(int64_t)j * g.R + s] =
                w[PROTO_LLN_CW + j];
    }
    for (int64_t i = tid; i < g.R * n; i += nth) {
        const int64_t s = i / n, p = i % n, ent = s * g.maxT + p;
        const char *blk = c.rstage + s * bk.bytes;
        ((int32_t *)(bw + c.ll.ent_slot))[ent] =
            ((const int32_t *)(blk + bk.ent_slot))[p];
        for (int k = 0; k < g.K; k++)
            ((int32_t *)(bw + c.ll.ent_rows))[ent * g.K + k] =
                ((const int32_t *)(blk + bk.ent_rows))[p * g.K + k];
    }
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / WARP);
    for (int64_t i = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
         i < g.R * rows; i += warps) {
        const int s = (int)(i / rows);
        const int64_t r = i % rows;
        const char *blk = c.rstage + (int64_t)s * bk.bytes;
        const int32_t cw = ((const int32_t *)(blk + bk.words))
                               [PROTO_LLN_CW + r / cap];
        if (r % cap >= proto_ll_kept(cw, cap))
            continue;
        const int64_t row = proto_lln_row(&g, cap, s, r);
        warp_copy_any(proto_ll_row_data(&g, &c.ll, bw, row),
                      blk + bk.rows + r * g.xrow_bytes, g.xrow_bytes, lane);
        if (g.scale_bytes)
            warp_copy_any(proto_ll_row_scales(&g, &c.ll, bw, row),
                          blk + bk.scales + r * g.scale_bytes, g.scale_bytes,
                          lane);
        if (lane == 0) {
            if (g.gscale_bytes)
                *proto_ll_row_gscale(&c.ll, bw, row) =
                    ((const float *)(blk + bk.gscale))[r];
            ((int32_t *)(bw + c.ll.src_tok))[row] =
                ((const int32_t *)(blk + bk.src_tok))[r];
            ((float *)(bw + c.ll.w))[row] = ((const float *)(blk + bk.w))[r];
        }
    }
}

/* Grid, a warp per (source, entry): the partial (ll comb put's
 * arithmetic) into row p of the source's block in the staging; block 0
 * the blocks' flag words (the use + 1; after a timeout too, so peers'
 * reduces end). */
__global__ void epxk_lln_comb_put_kernel(proto_geom_t g, epxk_call_t c)
{
    const int lane = threadIdx.x % WARP;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / WARP);
    const int64_t stride = proto_lln_comb_stride(&g);
    const uint32_t u = c.ll_use[c.ll_b];
    char *bw = ll_bufp(c, c.peers[g.rank]);
    const float *wt = c.unweighted ? NULL : (const float *)(bw + c.ll.w);
    const int32_t *fw = (const int32_t *)(bw + c.ll.fw);
    if (c.info[EPXK_INFO_ERROR] == 0)
        for (int64_t i = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
             i < (int64_t)g.R * g.maxT; i += warps) {
            const int s = (int)(i / g.maxT);
            const int64_t p = i % g.maxT;
            if (p >= (fw[s] & PROTO_LL_MASK))
                continue;
            const int32_t *rows = (const int32_t *)(bw + c.ll.ent_rows) +
                                  i * g.K;
            warp_partial(g, (const char *)c.y, rows, wt,
                         c.stage + s * stride + 16 + p * g.row_bytes, lane);
        }
    if (blockIdx.x == 0)
        for (int s = threadIdx.x; s < g.R; s += blockDim.x)
            *(uint64_t *)(c.stage + s * stride) = (uint64_t)u + 1;
}

/* One thread: a call abandoned here still sends its combine blocks (NCCL
 * pairs every rank's exchanges), with no partial and the flag marked
 * abandoned; the buffer's next use. */
__global__ void epxk_lln_abandon_kernel(proto_geom_t g, epxk_call_t c)
{
    const int64_t stride = proto_lln_comb_stride(&g);
    const uint32_t u = c.ll_use[c.ll_b];
    for (int s = 0; s < g.R; s++)
        *(uint64_t *)(c.stage + s * stride) =
            ((uint64_t)u + 1) | EPXK_LL_ABANDONED;
    c.ll_use[c.ll_b] = u + 1;
}

/* Grid, after the combine exchange: each destination's flag word into
 * the buffer's comb flag of it, its partial p (a warp each) to return
 * slot sendoff[d] + p, for the mycnt[d] tokens sent there (none where
 * this rank abandoned the call). */
__global__ void epxk_lln_comb_scatter_kernel(proto_geom_t g, epxk_call_t c)
{
    const int lane = threadIdx.x % WARP;
    const int64_t stride = proto_lln_comb_stride(&g);
    char *mine = c.peers[g.rank];
    char *comb = ll_bufp(c, mine) + c.ll.comb;
    const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (int64_t d = tid; d < g.R; d += (int64_t)gridDim.x * blockDim.x)
        *ll_comb_flag(g, c, mine, (int)d) =
            *(const uint64_t *)(c.rstage + d * stride);
    /* abandoned here (this rank's own block says so): no partial is
     * wanted, and a refused call's counts are not this call's */
    if (*(const uint64_t *)(c.rstage + g.rank * stride) & EPXK_LL_ABANDONED)
        return;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / WARP);
    for (int64_t i = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
         i < (int64_t)g.R * g.maxT; i += warps) {
        const int d = (int)(i / g.maxT);
        const int64_t p = i % g.maxT;
        if (p >= c.mycnt[d])
            continue;
        warp_copy_any(comb + (c.sendoff[d] + p) * g.row_bytes,
                      c.rstage + d * stride + 16 + p * g.row_bytes,
                      g.row_bytes, lane);
    }
}

/* ------------------------------------------------------- host entry points */


extern "C" int epxk_launch(int which, const proto_geom_t *g,
                           const epxk_call_t *c, int blocks, void *stream)
{
    cudaStream_t st = (cudaStream_t)stream;
    switch (which) {
    case EPXK_LAYOUT: {
        const int nb = proto_layout_nblocks(c->T, blocks);
        epxk_layout_count_kernel<<<nb, 256, 0, st>>>(*g, *c);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess)
            return (int)e;
        epxk_layout_place_kernel<<<nb, 256, 0, st>>>(*g, *c);
        break;
    }
    case EPXK_CACHED:
        epxk_cached_kernel<<<proto_layout_nblocks(c->T, blocks), 256, 0,
                             st>>>(*g, *c);
        break;
    case EPXK_OFFSETS:
        epxk_offsets_kernel<<<1, 128, 0, st>>>(*g, *c);
        break;
    case EPXK_PACK:
        epxk_pack_kernel<<<blocks, 512, 0, st>>>(*g, *c);
        break;
    case EPXK_RECV:
        epxk_recv_kernel<<<1, 128, 0, st>>>(*g, *c);
        break;
    case EPXK_COMB_PUT:
        epxk_comb_put_kernel<<<blocks, 512, 0, st>>>(*g, *c);
        break;
    case EPXK_COMB_REDUCE:
        epxk_comb_reduce_kernel<<<blocks, 512, 0, st>>>(*g, *c);
        break;
    case EPXK_LL_LAYOUT: {
        const int nb = proto_layout_nblocks(c->T, blocks);
        epxk_ll_layout_count_kernel<<<nb, 256, 0, st>>>(*g, *c);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess)
            return (int)e;
        epxk_ll_layout_keep_kernel<<<nb, 256, 0, st>>>(*g, *c);
        if ((e = cudaGetLastError()) != cudaSuccess)
            return (int)e;
        epxk_ll_layout_place_kernel<<<nb, 256, 0, st>>>(*g, *c);
        break;
    }
    case EPXK_LL_PACK:
        epxk_ll_pack_kernel<<<blocks, 512, 0, st>>>(*g, *c);
        break;
    case EPXK_LL_RECV:
        epxk_ll_recv_kernel<<<blocks, 256, 0, st>>>(*g, *c);
        break;
    case EPXK_LL_COMB_PUT:
        epxk_ll_comb_put_kernel<<<blocks, 512, 0, st>>>(*g, *c);
        break;
    case EPXK_LL_COMB_REDUCE:
        epxk_ll_comb_reduce_kernel<<<blocks, 512, 0, st>>>(*g, *c);
        break;
    case EPXK_LL_ABANDON:
        epxk_ll_abandon_kernel<<<1, 1, 0, st>>>(*g, *c);
        break;
    case EPXK_NCCL_EM_BASE:
        epxk_nccl_em_base_kernel<<<1, 256, 0, st>>>(*g, *c);
        break;
    case EPXK_NCCL_EM_MAP:
        epxk_nccl_em_map_kernel<<<1, 256, 0, st>>>(*g, *c);
        break;
    case EPXK_NCCL_EM_SCATTER:
        epxk_nccl_em_scatter_kernel<<<blocks, 512, 0, st>>>(*g, *c);
        break;
    case EPXK_NCCL_EM_PARTIAL:
        epxk_nccl_em_partial_kernel<<<blocks, 512, 0, st>>>(*g, *c);
        break;
    case EPXK_LL_STATS:
        epxk_ll_stats_kernel<<<1, 256, 0, st>>>(*g, *c);
        break;
    case EPXK_LL1_DISPATCH_SEND:
    case EPXK_LL1_DISPATCH_RECV:
    case EPXK_LL1_COMB_SEND:
    case EPXK_LL1_COMB_RECV:
        return epxk_ll1_launch(which, g, c, blocks, stream);
    case EPXK_NCCL_HEAD:
    case EPXK_NCCL_AGREE:
        return epxk_nccl_launch(which, g, c, blocks, stream);
    case EPXK_LLN_PACK:
        epxk_lln_pack_kernel<<<blocks, 512, 0, st>>>(*g, *c);
        break;
    case EPXK_LLN_SCATTER:
        epxk_lln_scatter_kernel<<<blocks, 512, 0, st>>>(*g, *c);
        break;
    case EPXK_LLN_COMB_PUT:
        epxk_lln_comb_put_kernel<<<blocks, 512, 0, st>>>(*g, *c);
        break;
    case EPXK_LLN_ABANDON:
        epxk_lln_abandon_kernel<<<1, 1, 0, st>>>(*g, *c);
        break;
    case EPXK_LLN_COMB_SCATTER:
        epxk_lln_comb_scatter_kernel<<<blocks, 512, 0, st>>>(*g, *c);
        break;
    default:
        return (int)cudaErrorInvalidValue;
    }
    return (int)cudaGetLastError();
}

extern "C" int epxk_preload(void)
{
    const void *k[] = {
        (const void *)epxk_layout_count_kernel,
        (const void *)epxk_layout_place_kernel,
        (const void *)epxk_cached_kernel,
        (const void *)epxk_offsets_kernel,
        (const void *)epxk_pack_kernel,
        (const void *)epxk_recv_kernel,
        (const void *)epxk_comb_put_kernel,
        (const void *)epxk_comb_reduce_kernel,
        (const void *)epxk_ll_layout_count_kernel,
        (const void *)epxk_ll_layout_keep_kernel,
        (const void *)epxk_ll_layout_place_kernel,
        (const void *)epxk_ll_pack_kernel,
        (const void *)epxk_ll_recv_kernel,
        (const void *)epxk_ll_comb_put_kernel,
        (const void *)epxk_ll_comb_reduce_kernel,
        (const void *)epxk_ll_abandon_kernel,
        (const void *)epxk_nccl_em_base_kernel,
        (const void *)epxk_nccl_em_map_kernel,
        (const void *)epxk_nccl_em_scatter_kernel,
        (const void *)epxk_nccl_em_partial_kernel,
        (const void *)epxk_ll_stats_kernel,
        (const void *)epxk_lln_pack_kernel,
        (const void *)epxk_lln_scatter_kernel,
        (const void *)epxk_lln_comb_put_kernel,
        (const void *)epxk_lln_abandon_kernel,
        (const void *)epxk_lln_comb_scatter_kernel,
    };
    int e = epxk_load_kernels(k, sizeof(k) / sizeof(k[0]));
    if (e)
        return e;
    e = epxk_ll1_preload();
    return e ? e : epxk_nccl_preload();
}
