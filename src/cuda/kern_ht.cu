/*
 * The fused throughput dispatch (EPX_CUDA_KERNELS=fused; windows backend,
 * token-major and expert-major): the classic chain's layout count, layout
 * place, offsets, pack and recv kernels, the read-back of the counts and
 * the host's event wait, as one kernel per rank.  Positions, rows,
 * metadata and wire bits are the classic kernels' (the host executor's):
 * the layout's
 * arithmetic is proto.h's "fused layout (tiles)", checked lane by lane
 * against the walk in tests/cuda/test_kern_host.c, and a quantized row is
 * encoded once per token with the classic pack's per-chunk code
 * (proto_q_row_fan is the same fan-out on the host).  The window protocol
 * (count rows and sequence words by call parity, data flags) is the
 * classic one, so a rank whose call falls back to the classic kernels
 * (cached, refused) still meets fused peers.  src/cuda/README.md, "Fused
 * kernels: throughput dispatch".
 *
 * One grid of `blocks` blocks (the SM budget), all resident together:
 *  1. count: warps take contiguous ranges of 32-token tiles; per tile
 *     and destination a ballot and its popcount; per unit shared-memory
 *     counts; each block's totals into part[b]; grid barrier;
 *  2. block 0 sums the totals, stores this rank's count row into every
 *     peer's count block and releases its sequence word (before any
 *     position is placed); every block places its tiles (the lower
 *     blocks' and warps' counts, plus the ballot ranks; expert-major
 *     epos by __match_any_sync over rounds of 32 (token, k) pairs);
 *  3. every block waits (one thread per source) for every count row of
 *     the call and checks the headers (proto_cached_agree); grid barrier;
 *  4. block 0 publishes the receive totals to host-mapped memory
 *     (EPXK_PUB_*, then the sequence word), before any row moves;
 *  5. fan-out pack: a warp per token, each 16-byte vector (8 in flight
 *     per lane) loaded once and stored to every destination of the token
 *     (expert-major: to every (token, k) pair's row, and the entries), a
 *     quantized row encoded once;
 *  6. completion: one system fence per block, a block counter; the last
 *     block releases the data flag at every destination;
 *  7. block 0: readiness per local unit (epx_dispatch_poll), then every
 *     source's data flag, so that stream order gives the rows to the
 *     caller.
 * Waits poll from one thread with __nanosleep backoff, bounded by
 * EPX_TIMEOUT (%globaltimer); a timeout sets EPXK_INFO_ERROR and goes on.
 *
 * Never run on a GPU yet.
 */
#include <cuda_runtime.h>
#include <stdint.h>
#include "epx.h"
#include "proto/proto.h"
#include "cuda/kern_launch.h"
#include "cuda/kern_sync.cuh"

#define WARP 32
/* 256 threads, at most 128 registers each: a block needs half an SM, so
 * the ranks' grids (which wait for one another) find room beside other
 * kernels more easily than a whole-SM block would. */
#define HT_THREADS 256
#define HT_WARPS (HT_THREADS / WARP)
#define HT_UNROLL 8          /* 16-byte loads in flight per lane */
#define HT_SMEM_MAX (48 * 1024 - 256)   /* dynamic, below the default */

static const unsigned FULL = 0xffffffffu;

__device__ static __forceinline__ unsigned ht_ld_acquire_gpu(const unsigned *p)
{
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];"
                 : "=r"(v) : "l"(p) : "memory");
    return v;
}

/* The input rows are read-only during the kernel: no L1 allocation. */
__device__ static __forceinline__ uint4 ht_ld_nc(const uint4 *p)
{
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

/* One thread's bounded wait, backing off from 32 ns to 1 us between
 * polls.  On timeout: the error flag, false. */
template <typename F>
__device__ static bool ht_wait(F done, uint64_t timeout_ns, int64_t *info)
{
    unsigned ns = 32;
    return epxk_wait(done, timeout_ns, &info[EPXK_INFO_ERROR], 0u,
                     [&](unsigned) {
                         __nanosleep(ns);
                         if (ns < 1024)
                             ns <<= 1;
                     });
}

__device__ static bool ht_wait_u64(const uint64_t *p, uint64_t want,
                                   uint64_t timeout_ns, int64_t *info)
{
    return ht_wait([&] { return epxk_ld_acquire_u64(p) >= want; },
                   timeout_ns, info);
}

__device__ static bool ht_wait_s32(const int32_t *p, int32_t want,
                                   uint64_t timeout_ns, int64_t *info)
{
    return ht_wait([&] { return epxk_ld_acquire_s32(p) == want; },
                   timeout_ns, info);
}

/* All blocks of the grid meet (they are resident together): arrivals
 * counted in bar[0], the last resets it and advances the generation
 * bar[1], which the others poll.  Global stores before it are visible to
 * every block after it. */
__device__ static void ht_grid_sync(unsigned *bar, uint64_t timeout_ns,
                                    int64_t *info)
{
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned gen = ht_ld_acquire_gpu(&bar[1]);
        __threadfence();
        if (atomicAdd(&bar[0], 1u) == gridDim.x - 1) {
            atomicExch(&bar[0], 0u);
            __threadfence();
            atomicAdd(&bar[1], 1u);
        } else {
            ht_wait([&] { return ht_ld_acquire_gpu(&bar[1]) != gen; },
                    timeout_ns, info);
        }
        __threadfence();
    }
    __syncthreads();
}

__device__ static __forceinline__ int32_t *ht_cnt(const proto_geom_t &g,
                                                  char *win, int p, int s)
{
    return (int32_t *)(win + g.off_cnt) + proto_cnt_index(&g, p, s);
}

__device__ static __forceinline__ uint64_t *ht_flag(const proto_geom_t &g,
                                                    char *win, int f, int s)
{
    return (uint64_t *)(win + g.off_flags) + (int64_t)f * g.R + s;
}

__device__ static __forceinline__ char *ht_shfl_ptr(char *p, int j)
{
    return (char *)__shfl_sync(FULL, (unsigned long long)p, j);
}

/* ------------------------------------------------------------ layout */

/* One tile of the count pass by a warp (proto_ht_tile_count): the
 * tile's tokens to each destination into the warp's counts wc[R]; the
 * lane's own token's ids checked, kept with the layout (cached
 * dispatch), counted per unit into the block's ucnt and (expert-major)
 * the warp's wu. */
__device__ static void ht_tile_count(const proto_geom_t &g,
                                     const epxk_call_t &c,
                                     const proto_ids_t *ids, int64_t tile,
                                     int32_t *wc, int32_t *ucnt, int32_t *wu,
                                     int lane)
{
    const int64_t t = tile * PROTO_HT_TILE + lane;
    for (int wd = 0; wd < proto_ht_mask_words(g.R); wd++) {
        const uint32_t m = proto_ht_dmask(ids, c.e2r, c.T, t, wd);
        uint32_t u = __reduce_or_sync(FULL, m);
        while (u) {
            const int bit = __ffs(u) - 1;
            u &= u - 1u;
            const uint32_t bal = __ballot_sync(FULL, (m >> bit) & 1u);
            if (lane == 0)
                wc[32 * wd + bit] += __popc(bal);
        }
    }
    for (int k = 0; t < c.T && k < g.K; k++) {
        if (proto_expert_bad(ids, t, k))
            c.info[EPXK_INFO_BAD_IDS] = 1;
        if (c.lay_ids)
            c.lay_ids[t * g.K + k] = proto_cache_id(ids, t, k);
        const int64_t e = proto_expert_id(ids, t, k);
        if (e >= 0) {
            atomicAdd(&ucnt[e], 1);
            if (wu)
                atomicAdd(&wu[e], 1);
        }
    }
}

/* Expert-major: one tile's epos by a warp (proto_ht_tile_epos): K rounds
 * of 32 consecutive (token, k) pairs; the lanes of a round with the same
 * unit, found by __match_any_sync, take run[u] plus their rank among
 * them, and the group's lowest lane advances run[u] (the warp's running
 * positions per unit, shared memory). */
__device__ static void ht_tile_epos(const proto_geom_t &g,
                                    const epxk_call_t &c,
                                    const proto_ids_t *ids, int64_t tile,
                                    int32_t *run, int lane)
{
    const int64_t p0 = tile * PROTO_HT_TILE * g.K;
    for (int r = 0; r < g.K; r++) {
        const int64_t p = (int64_t)r * PROTO_HT_TILE + lane;
        const int64_t u = proto_ht_pair_unit(ids, c.T, tile, p);
        const uint32_t mm = __match_any_sync(FULL, (unsigned long long)u);
        const int below = proto_ht_below(mm, lane);
        const int32_t r0 = u >= 0 ? run[u] : 0;
        if (u >= 0)
            c.epos[p0 + p] = r0 + below;
        __syncwarp();
        if (u >= 0 && below == 0)
            run[u] = r0 + __popc(mm);
        __syncwarp();
    }
}

/* One tile of the place pass by a warp (proto_ht_tile_place): run[R],
 * the warp's running first position per destination, in shared memory. */
__device__ static void ht_tile_place(const proto_geom_t &g,
                                     const epxk_call_t &c,
                                     const proto_ids_t *ids, int64_t tile,
                                     int32_t *run, int lane)
{
    const int64_t t = tile * PROTO_HT_TILE + lane;
    const int64_t at = t * g.maxdest;
    int j = 0;
    for (int wd = 0; wd < proto_ht_mask_words(g.R); wd++) {
        const uint32_t m = proto_ht_dmask(ids, c.e2r, c.T, t, wd);
        uint32_t u = __reduce_or_sync(FULL, m);
        while (u) {
            const int bit = __ffs(u) - 1;
            const int d = 32 * wd + bit;
            u &= u - 1u;
            const uint32_t bal = __ballot_sync(FULL, (m >> bit) & 1u);
            const int32_t r = run[d];
            if ((m >> bit) & 1u) {
                c.dest[at + j] = d;
                c.pos[at + j] = r + proto_ht_below(bal, lane);
                j++;
            }
            __syncwarp();
            if (lane == 0)
                run[d] = r + __popc(bal);
            __syncwarp();
        }
    }
    for (; t < c.T && j < g.maxdest; j++)
        c.dest[at + j] = -1;
}

/* ------------------------------------------------------- fan-out pack */

/* A row of `bytes` from src to each of the warp's nd destinations (lane
 * j holds destination j's address): 16-byte vectors where every address
 * and the length allow (HT_UNROLL loads in flight per lane, each stored
 * nd times), else 4- or 2-byte words. */
__device__ static void ht_fan_copy(const char *src, char *mine, int64_t bytes,
                                   int nd, int lane)
{
    const unsigned a = __reduce_or_sync(FULL, (unsigned)(
        ((uintptr_t)src | (uintptr_t)bytes |
         (lane < nd ? (uintptr_t)mine : 0)) & 15));
    if (a == 0) {
        const uint4 *s = (const uint4 *)src;
        const int64_t nv = bytes / 16;
        for (int64_t i0 = 0; i0 < nv; i0 += HT_UNROLL * WARP) {
            uint4 v[HT_UNROLL];
#pragma unroll
            for (int u = 0; u < HT_UNROLL; u++) {
                const int64_t i = i0 + u * WARP + lane;
                if (i < nv)
                    v[u] = ht_ld_nc(s + i);
            }
            for (int j = 0; j < nd; j++) {
                uint4 *d = (uint4 *)ht_shfl_ptr(mine, j);
#pragma unroll
                for (int u = 0; u < HT_UNROLL; u++) {
                    const int64_t i = i0 + u * WARP + lane;
                    if (i < nv)
                        d[i] = v[u];
                }
            }
        }
    } else if ((a & 3) == 0) {
        const uint32_t *s = (const uint32_t *)src;
        for (int64_t i0 = 0; i0 < bytes / 4; i0 += WARP) {
            const int64_t i = i0 + lane;
            const uint32_t v = i < bytes / 4 ? s[i] : 0;
            for (int j = 0; j < nd; j++) {
                uint32_t *d = (uint32_t *)ht_shfl_ptr(mine, j);
                if (i < bytes / 4)
                    d[i] = v;
            }
        }
    } else {
        const uint16_t *s = (const uint16_t *)src;
        for (int64_t i0 = 0; i0 < bytes / 2; i0 += WARP) {
            const int64_t i = i0 + lane;
            const uint16_t v = i < bytes / 2 ? s[i] : 0;
            for (int j = 0; j < nd; j++) {
                uint16_t *d = (uint16_t *)ht_shfl_ptr(mine, j);
                if (i < bytes / 2)
                    d[i] = v;
            }
        }
    }
}

/* A bf16 row quantized once by the warp and stored to each of its nd
 * destinations (lane j holds destination j's codes q, scales sc and row
 * scale gs): the classic pack's warp_quant_row chunk for chunk (lane i
 * takes chunks i, i + 32...; the block's lanes reduce its maximum with
 * xor shuffles; NVFP4 first reduces the row's), with each chunk's codes
 * and each block's scale stored nd times: the bits proto_q_row_fan gives
 * on the host. */
__device__ static void ht_fan_quant(const proto_geom_t &g, const uint16_t *x,
                                    char *q, char *sc, float *gs, int nd,
                                    float given, int lane)
{
    const int64_t chunks = proto_q_chunks(&g);
    const int G = proto_q_group(&g), cb = proto_q_chunk_bytes(&g);
    const bool xvec = ((uintptr_t)x & 15) == 0;
    const bool qvec = __reduce_or_sync(FULL, (unsigned)(
        (lane < nd ? (uintptr_t)q : 0) & (uintptr_t)(cb - 1))) == 0;
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
            m = __reduce_max_sync(FULL, m);
        global = proto_q_row_global(given, m);
        if (lane < nd)
            *gs = global;
    }
    for (int64_t c0 = 0; c0 < chunks; c0 += WARP) {
        const int64_t c = c0 + lane;
        int n = 0, nan = 0;
        uint32_t m = 0;
        if (c < chunks) {
            if (xvec && proto_q_chunk_len(&g, c) == MOE_QUANT_CHUNK) {
                const uint4 *p = (const uint4 *)(x + c * MOE_QUANT_CHUNK);
                v.u[0] = ht_ld_nc(p);
                v.u[1] = ht_ld_nc(p + 1);
                n = MOE_QUANT_CHUNK;
            } else {
                n = proto_q_load_chunk(&g, x, c, v.h);
            }
            m = moe_quant_chunk_amax(v.h, MOE_QUANT_CHUNK, &nan);
        }
        /* The block's lanes are consecutive, G a power of two. */
        for (int off = 1; off < G; off <<= 1) {
            uint32_t m2 = __shfl_xor_sync(FULL, m, off);
            m = m2 > m ? m2 : m;
            nan |= __shfl_xor_sync(FULL, nan, off);
        }
        uint32_t s = 0;
        if (n > 0)
            s = proto_q_encode(&g, v.h, MOE_QUANT_CHUNK, m, nan, global, o.b);
        const int nb = n > 0 ? proto_q_chunk_stored(&g, n) : 0;
        for (int j = 0; j < nd; j++) {
            char *dq = ht_shfl_ptr(q, j), *dsc = ht_shfl_ptr(sc, j);
            if (n == 0)
                continue;
            char *dst = dq + c * cb;
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
                proto_q_store_scale(&g, dsc, c / G, s);
        }
    }
}

/* Token t by a warp: its destinations (dest/pos, ascending, -1 after),
 * lane j taking the j-th: its row there (base + pos), the metadata the
 * classic pack stores (source rank, token, return slot, local ids and
 * weights), then the row, read once and stored to all of them. */
__device__ static void ht_pack_token(const proto_geom_t &g,
                                     const epxk_call_t &c,
                                     const proto_ids_t *ids,
                                     const int64_t *base, int64_t t, int lane)
{
    int d = -1;
    int32_t p = 0;
    if (lane < g.maxdest) {
        d = __ldcg(&c.dest[t * g.maxdest + lane]);
        p = d >= 0 ? __ldcg(&c.pos[t * g.maxdest + lane]) : 0;
    }
    const int nd = __popc(__ballot_sync(FULL, d >= 0));
    if (nd == 0)
        return;
    char *w = NULL;
    int64_t row = 0;
    if (d >= 0) {
        w = c.peers[d];
        row = base[d] + p;
        const int64_t slot = __ldcg(&c.sendoff[d]) + p;
        ((int32_t *)(w + g.off_src_rank))[row] = g.rank;
        ((int32_t *)(w + g.off_src_token))[row] = (int32_t)t;
        ((int32_t *)(w + g.off_ret_slot))[row] = (int32_t)slot;
        proto_meta_topk(&g, ids, c.w, c.e2r, t, d, c.first[d],
                       (int32_t *)(w + g.off_idx) + row * g.K,
                       (float *)(w + g.off_w) + row * g.K);
    }
    const char *xr = (const char *)c.x + t * g.row_bytes;
    if (!g.qblock) {
        ht_fan_copy(xr, w ? w + g.off_rows + row * g.xrow_bytes : NULL,
                    g.xrow_bytes, nd, lane);
        return;
    }
    ht_fan_quant(g, (const uint16_t *)xr,
                 w ? w + g.off_rows + row * g.xrow_bytes : NULL,
                 w ? w + g.off_scales + row * g.scale_bytes : NULL,
                 w ? (float *)(w + g.off_gscale) + row : NULL, nd, c.gscale,
                 lane);
}

/* Expert-major, token t by a warp: the entry at each destination of the
 * token (source, return slot, its rows there in top-k order, at the
 * token-major place base + pos) and one row per (token, k) pair with a
 * unit, at ebase[e] + epos, with its source, token and weight: the
 * classic pack_expert_major's stores.  The row is read once (quantized
 * once) and stored to every pair's row, lane j taking the j-th pair. */
__device__ static void ht_pack_token_em(const proto_geom_t &g,
                                        const epxk_call_t &c,
                                        const proto_ids_t *ids,
                                        const int64_t *base,
                                        const int64_t *ebase, int64_t t,
                                        int lane)
{
    if (lane < g.maxdest) {
        const int d = __ldcg(&c.dest[t * g.maxdest + lane]);
        if (d >= 0) {
            const int32_t p = __ldcg(&c.pos[t * g.maxdest + lane]);
            char *w = c.peers[d];
            const int64_t ent = base[d] + p;
            ((int32_t *)(w + g.off_ent_src))[ent] = g.rank;
            ((int32_t *)(w + g.off_ret_slot))[ent] =
                (int32_t)(__ldcg(&c.sendoff[d]) + p);
            proto_entry_rows(&g, ids, c.e2r, ebase, c.epos, t, d,
                             (int32_t *)(w + g.off_ent_rows) + ent * g.K);
        }
    }
    const int64_t e = lane < g.K ? proto_expert_id(ids, t, lane) : -1;
    const uint32_t vb = __ballot_sync(FULL, e >= 0);
    const int np = __popc(vb);
    if (np == 0)
        return;
    char *w = NULL;
    int64_t row = 0;
    if (e >= 0) {
        w = c.peers[proto_owner(c.e2r, e)];
        row = ebase[e] + __ldcg(&c.epos[t * g.K + lane]);
        ((int32_t *)(w + g.off_src_rank))[row] = g.rank;
        ((int32_t *)(w + g.off_src_token))[row] = (int32_t)t;
        ((float *)(w + g.off_w))[row] = c.w[t * g.K + lane];
    }
    /* lane j < np: the j-th pair's row (the j-th set bit of vb) */
    uint32_t v = vb;
    for (int i = 0; i < lane && v; i++)
        v &= v - 1u;
    const int from = v ? __ffs(v) - 1 : 0;
    w = ht_shfl_ptr(w, from);
    row = __shfl_sync(FULL, row, from);
    if (lane >= np)
        w = NULL;
    const char *xr = (const char *)c.x + t * g.row_bytes;
    if (!g.qblock) {
        ht_fan_copy(xr, w ? w + g.off_rows + row * g.xrow_bytes : NULL,
                    g.xrow_bytes, np, lane);
        return;
    }
    ht_fan_quant(g, (const uint16_t *)xr,
                 w ? w + g.off_rows + row * g.xrow_bytes : NULL,
                 w ? w + g.off_scales + row * g.scale_bytes : NULL,
                 w ? (float *)(w + g.off_gscale) + row : NULL, np, c.gscale,
                 lane);
}

/* ---------------------------------------------------- receive totals */

/* Block 0, once every count row of the call is here: the classic recv
 * kernel's totals (info, the count matrix kept with the layout; expert-
 * major: each unit's first row, the padding marks) and their publication
 * for the host (EPXK_PUB_*, then EPXK_PUB_FUSED's words, then the
 * sequence word, released). */
__device__ static void ht_publish(const proto_geom_t &g, const epxk_call_t &c,
                                  const int32_t *cnt, int agree)
{
    char *mine = c.peers[g.rank];
    const int L = c.num_local, first = c.first[g.rank];
    const bool agreed = agree == 0;
    int64_t *counts = c.info + EPXK_INFO_COUNTS, *offs = counts + L;
    int64_t *pf = c.pub + EPXK_PUB_FUSED(L);
    if (c.lay_cnt)
        for (int64_t i = threadIdx.x;
             i < (int64_t)g.R * g.cnt_ints - PROTO_CNT_HDR; i += blockDim.x)
            c.lay_cnt[i] = cnt[i];
    const int64_t ents = agreed ? proto_recv_rows(&g, cnt) : 0;
    const int64_t rows = !agreed ? 0
        : g.em ? proto_expert_offset(&g, cnt, first, L) : ents;
    for (int j = threadIdx.x; j < L; j += blockDim.x) {
        counts[j] = agreed ? proto_recv_expert(&g, cnt, first, j) : 0;
        offs[j] = agreed && g.em ? proto_expert_offset(&g, cnt, first, j) : 0;
        c.pub[EPXK_PUB_COUNTS + j] = counts[j];
        c.pub[EPXK_PUB_COUNTS + L + j] = offs[j];
    }
    __syncthreads();
    /* Expert-major: the padding after each unit's rows (stale rows of
     * earlier calls otherwise); no source stores there in this call. */
    for (int j = 0; g.em && agreed && j < L; j++) {
        const int64_t end = j + 1 < L ? offs[j + 1] : rows;
        for (int64_t r = offs[j] + counts[j] + threadIdx.x; r < end;
             r += blockDim.x) {
            ((int32_t *)(mine + g.off_src_rank))[r] = -1;
            ((int32_t *)(mine + g.off_src_token))[r] = -1;
            ((float *)(mine + g.off_w))[r] = 0.0f;
        }
    }
    for (int u = threadIdx.x; u < g.E; u += blockDim.x)
        pf[EPXK_PUBF_ECNT + u] = c.mycnt[g.R + u];
    if (threadIdx.x == 0) {
        c.info[EPXK_INFO_ENTS] = ents;
        c.info[EPXK_INFO_ROWS] = rows;
        c.pub[EPXK_PUB_AGREE] = agree;
        c.pub[EPXK_PUB_ROWS] = rows;
        pf[EPXK_PUBF_ERROR] = *(volatile int64_t *)&c.info[EPXK_INFO_ERROR];
        pf[EPXK_PUBF_BAD_IDS] =
            *(volatile int64_t *)&c.info[EPXK_INFO_BAD_IDS];
    }
    __threadfence_system();
    __syncthreads();
    if (threadIdx.x == 0)
        epxk_st_release_u64((uint64_t *)&c.pub[EPXK_PUB_SEQ], c.seq);
}

/* Block 0, last: each local unit's readiness word once every source
 * with rows for it signalled (the classic recv kernel's), then every
 * source's data flag. */
__device__ static void ht_recv_wait(const proto_geom_t &g,
                                    const epxk_call_t &c, const int32_t *cnt,
                                    int agree)
{
    char *mine = c.peers[g.rank];
    const int L = c.num_local, first = c.first[g.rank];
    for (int j = threadIdx.x; agree == 0 && j < L; j += blockDim.x) {
        bool ok = true;
        for (int s = 0; ok && s < g.R; s++)
            if (proto_unit_fed(&g, cnt, s, first + j))
                ok = *(volatile int64_t *)&c.info[EPXK_INFO_ERROR] == 0 &&
                     ht_wait_u64(ht_flag(g, mine, PROTO_FLAG_DATA, s), c.seq,
                                 c.timeout_ns, c.info);
        if (ok)
            epxk_st_release_u64((uint64_t *)&c.pub[EPXK_PUB_COUNTS + 2 * L + j],
                              c.seq);
    }
    for (int s = threadIdx.x; s < g.R; s += blockDim.x)
        if (*(volatile int64_t *)&c.info[EPXK_INFO_ERROR] == 0)
            ht_wait_u64(ht_flag(g, mine, PROTO_FLAG_DATA, s), c.seq,
                        c.timeout_ns, c.info);
}

/* ------------------------------------------------------------ kernel */

/* Shared memory: unit and destination totals of the block [R + E], the
 * warps' counts, then their running positions, per destination
 * [HT_WARPS][R] and (expert-major) per unit [HT_WARPS][E]; int64 from an
 * 8-byte boundary: this rank's first row at each destination [R] and
 * (expert-major) at each unit [E]. */
static __host__ __device__ size_t ht_smem_ints(const proto_geom_t *g)
{
    return (size_t)(g->R + g->E + HT_WARPS * g->R) +
           (g->em ? (size_t)HT_WARPS * (size_t)g->E : 0);
}

static size_t ht_smem(const proto_geom_t *g)
{
    const size_t n = (sizeof(int32_t) * ht_smem_ints(g) + 7) & ~(size_t)7;
    return n + sizeof(int64_t) * (size_t)(g->R + (g->em ? g->E : 0));
}

__global__ void __launch_bounds__(HT_THREADS, 2)
epxk_ht_dispatch_kernel(proto_geom_t g, epxk_call_t c)
{
    extern __shared__ int32_t sm[];
    __shared__ int s_agree;
    const int R = g.R, n = R + g.E, W = HT_WARPS;
    const int lane = threadIdx.x % WARP, w = threadIdx.x / WARP;
    const int b = blockIdx.x, nb = gridDim.x, NW = nb * W;
    int32_t *s_cnt = sm;                 /* [R + E] */
    int32_t *s_w = sm + n;               /* [W][R] */
    int32_t *s_u = g.em ? s_w + W * R : NULL;   /* [W][E] */
    int64_t *s_base = (int64_t *)((char *)sm +
        ((sizeof(int32_t) * ht_smem_ints(&g) + 7) & ~(size_t)7));
    int64_t *s_ebase = g.em ? s_base + R : NULL;   /* [E] */
    const proto_ids_t ids = { c.idx, c.idx64, g.K, g.E, c.route };
    char *mine = c.peers[g.rank];
    int64_t ta, tb;
    proto_layout_range(proto_ht_tiles(c.T), NW, b * W + w, &ta, &tb);

    for (int64_t i = threadIdx.x; i < (int64_t)ht_smem_ints(&g);
         i += blockDim.x)
        sm[i] = 0;
    if (threadIdx.x == 0)
        s_agree = 0;
    __syncthreads();

    /* 1. count */
    for (int64_t tile = ta; tile < tb; tile++)
        ht_tile_count(g, c, &ids, tile, s_w + w * R, s_cnt + R,
                      s_u ? s_u + w * g.E : NULL, lane);
    __syncthreads();
    for (int d = threadIdx.x; d < R; d += blockDim.x) {
        int32_t s = 0;
        for (int w2 = 0; w2 < W; w2++)
            s += s_w[w2 * R + d];
        s_cnt[d] = s;
    }
    __syncthreads();
    for (int u = threadIdx.x; u < n; u += blockDim.x)
        c.part[(int64_t)b * n + u] = s_cnt[u];
    ht_grid_sync(c.fbar, c.timeout_ns, c.info);

    /* 2. block 0: this rank's totals, send offsets, its count row to
     * every peer; every block: the positions of its tiles */
    if (b == 0) {
        for (int u = threadIdx.x; u < n; u += blockDim.x) {
            int32_t s = 0;
            for (int b2 = 0; b2 < nb; b2++)
                s += __ldcg(&c.part[(int64_t)b2 * n + u]);
            c.mycnt[u] = s;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int64_t o = 0;
            for (int d = 0; d < R; d++) {
                c.sendoff[d] = o;
                o += c.mycnt[d];
            }
        }
        for (int64_t i = threadIdx.x; i < (int64_t)R * n; i += blockDim.x) {
            const int d = (int)(i / n), u = (int)(i % n);
            ht_cnt(g, c.peers[d], c.parity, g.rank)[u] = c.mycnt[u];
        }
        __threadfence_system();
        __syncthreads();
        for (int d = threadIdx.x; d < R; d += blockDim.x)
            epxk_st_release_s32(ht_cnt(g, c.peers[d], c.parity, g.rank) + n,
                              (int32_t)c.seq);
    }
    for (int d = threadIdx.x; d < R; d += blockDim.x) {
        int32_t acc = 0;
        for (int b2 = 0; b2 < b; b2++)
            acc += __ldcg(&c.part[(int64_t)b2 * n + d]);
        for (int w2 = 0; w2 < W; w2++) {
            const int32_t v = s_w[w2 * R + d];
            s_w[w2 * R + d] = acc;
            acc += v;
        }
    }
    for (int u = threadIdx.x; s_u && u < g.E; u += blockDim.x) {
        int32_t acc = 0;
        for (int b2 = 0; b2 < b; b2++)
            acc += __ldcg(&c.part[(int64_t)b2 * n + R + u]);
        for (int w2 = 0; w2 < W; w2++) {
            const int32_t v = s_u[w2 * g.E + u];
            s_u[w2 * g.E + u] = acc;
            acc += v;
        }
    }
    __syncthreads();
    for (int64_t tile = ta; tile < tb; tile++) {
        ht_tile_place(g, c, &ids, tile, s_w + w * R, lane);
        if (s_u)
            ht_tile_epos(g, c, &ids, tile, s_u + w * g.E, lane);
    }

    /* 3. every count row of the call, and the ranks' agreement */
    for (int s = threadIdx.x; s < R; s += blockDim.x) {
        const int32_t *blk = ht_cnt(g, mine, c.parity, s);
        if (!ht_wait_s32(blk + n, (int32_t)c.seq, c.timeout_ns, c.info))
            continue;
        const int a = proto_cached_agree(blk - PROTO_CNT_HDR, (int32_t)c.seq,
                                         0, 0);
        if (a != EPX_OK)
            atomicMin(&s_agree, a);
    }
    ht_grid_sync(c.fbar, c.timeout_ns, c.info);
    const int32_t *cnt = ht_cnt(g, mine, c.parity, 0);
    for (int d = threadIdx.x; d < R; d += blockDim.x) {
        s_base[d] = proto_dest_base(&g, cnt, d);
        if (b == 0)
            c.base[d] = s_base[d];
    }
    for (int e = threadIdx.x; s_ebase && e < g.E; e += blockDim.x) {
        s_ebase[e] = proto_expert_base(&g, cnt, c.first[c.e2r[e]], e);
        if (b == 0)
            c.ebase[e] = s_ebase[e];
    }
    __syncthreads();
    const int agree = s_agree;
    if (b == 0 && agree != 0 && threadIdx.x == 0)
        atomicMin((long long *)&c.info[EPXK_INFO_AGREE], (long long)agree);

    /* 4. the receive totals, to the host before any row moves */
    if (b == 0)
        ht_publish(g, c, cnt, agree);

    /* 5. pack: consecutive tokens on different blocks */
    if (agree == 0 && *(volatile int64_t *)&c.info[EPXK_INFO_ERROR] == 0)
        for (int64_t t = (int64_t)w * nb + b; t < c.T; t += NW) {
            if (g.em)
                ht_pack_token_em(g, c, &ids, s_base, s_ebase, t, lane);
            else
                ht_pack_token(g, c, &ids, s_base, t, lane);
        }

    /* 6. completion: one fence per block; the last releases the data
     * flags (also when nothing was packed: the peers wait for them) */
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence_system();
        if (atomicAdd(&c.fbar[2], 1u) == (unsigned)nb - 1) {
            atomicExch(&c.fbar[2], 0u);
            __threadfence_system();
            for (int d = 0; d < R; d++)
                epxk_st_release_u64(ht_flag(g, c.peers[d], PROTO_FLAG_DATA,
                                          g.rank), c.seq);
        }
    }

    /* 7. readiness and every source's rows */
    if (b == 0)
        ht_recv_wait(g, c, cnt, agree);
}

/* ------------------------------------------------------- entry points */

extern "C" int epxk_ht_covers(const proto_geom_t *g)
{
    return ht_smem(g) <= HT_SMEM_MAX;
}

extern "C" int epxk_ht_fits(const proto_geom_t *g, int blocks, int sms)
{
    int per = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(
            &per, epxk_ht_dispatch_kernel, HT_THREADS, ht_smem(g)) !=
        cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return (long long)per * sms >= blocks;
}

extern "C" int epxk_ht_launch(const proto_geom_t *g, const epxk_call_t *c,
                              int blocks, void *stream)
{
    epxk_ht_dispatch_kernel<<<blocks > 0 ? blocks : 1, HT_THREADS, ht_smem(g),
                              (cudaStream_t)stream>>>(*g, *c);
    return (int)cudaGetLastError();
}

extern "C" int epxk_ht_preload(void)
{
    cudaFuncAttributes a;
    return (int)cudaFuncGetAttributes(&a,
                                      (const void *)epxk_ht_dispatch_kernel);
}
