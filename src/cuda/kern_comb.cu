/*
 * The fused kernel set's throughput combine (EPX_CUDA_KERNELS=fused,
 * windows backend; src/cuda/README.md, "Fused kernels: pull combine"):
 *
 *   ready (combine_send, y in place): one block releases this rank's
 *         combine flag at every rank, its mode in the flag's top bits
 *         (EPXK_COMB_MODE_*), and moves nothing;
 *   pull  (combine_recv): every block waits for every rank's flag; a warp
 *         per token gathers its terms (proto.h, "pull combine": the rows
 *         of its destinations in ascending rank order, read where the
 *         dispatch put them, or the partials a destination that pushed
 *         put into this rank's comb region) and sums them in fp32 with
 *         several 16-byte loads in flight per lane, rounding once.
 * A rank whose y is not in place pushes with the classic comb put kernel
 * (kernels.cu), whose flag carries no mode bit: PROTO_PULL_PUSHED.
 *
 * Write after read: the pull reads peers' receive rows (and, expert-
 * major, their entries and weights) until it ends; its last block then
 * stores the call into every rank's pulled word (geom.h `status[0][s]`).
 *   fence (the next dispatch_send, before anything of it is queued):
 *         one block waits until every rank's pulled word reached this
 *         rank's last combined call, so no store of the next dispatch,
 *         whatever kernels make it, lands in rows a pull still reads.
 *   done  (a call released between its combine's send and recv, which
 *         never pulls): the pulled word alone, so no peer's fence waits.
 * Usually the fence finds the words there already: the pulls end long
 * before the next dispatch is queued.  This keeps one receive buffer
 * (no geometry change, the host executor's offsets unchanged) and does
 * not lean on how a dispatch orders its own stores (the classic one's
 * count exchange happens to order them after every rank's pull too; a
 * dispatch that waits only for the sources it needs would not).
 */
#include <cuda_runtime.h>
#include <stdint.h>
#include "epx.h"
#include "proto/proto.h"
#include "cuda/kern_launch.h"
#include "cuda/kern_sync.cuh"
#include "cuda/kern_reduce.cuh"

#define WARP 32
#define PULL_THREADS 512
#define PULL_WARPS (PULL_THREADS / WARP)

__device__ static __forceinline__ uint64_t *cb_flag(const proto_geom_t &g,
                                                    char *win, int s)
{
    return (uint64_t *)(win + g.off_flags) + (int64_t)PROTO_FLAG_COMB * g.R + s;
}

/* Source s's pulled word in window win (geom.h `status[0][s]`). */
__device__ static __forceinline__ int32_t *cb_pulled(const proto_geom_t &g,
                                                     char *win, int s)
{
    return (int32_t *)(win + g.off_status) + s;
}

/* This rank's pulled word of call `seq` into every rank's window, by the
 * block's threads (after the block's reads). */
__device__ static void cb_release_pulled(const proto_geom_t &g,
                                         const epxk_call_t &c)
{
    for (int d = threadIdx.x; d < g.R; d += blockDim.x)
        epxk_st_release_s32(cb_pulled(g, c.peers[d], g.rank), (int32_t)c.seq);
}

/* Backoff between polls of a peer's word: none for the first polls
 * (the word is usually there), then short sleeps, so that many waiting
 * threads leave the memory system to the stores they wait for. */
__device__ static void cb_backoff(unsigned n)
{
    if (n >= 64)
        __nanosleep(n < 1024 ? 64 : 512);
}

/* Source s's combine flag of this call: its mode (PROTO_PULL_*), or -1
 * after a timeout (recorded in info, as every wait does). */
__device__ static int cb_wait(const uint64_t *p, uint64_t seq,
                              uint64_t timeout_ns, int64_t *info)
{
    uint64_t v = 0;
    if (!epxk_wait([&] {
            v = epxk_ld_acquire_u64(p);
            return (v & EPXK_COMB_SEQ_MASK) >= seq;
        }, timeout_ns, &info[EPXK_INFO_ERROR], 1023u, cb_backoff))
        return -1;
    return (int)(v >> EPXK_COMB_MODE_SHIFT);
}

/* One block: y is in this rank's receive rows; tell every rank so. */
__global__ void epxk_comb_ready_kernel(proto_geom_t g, epxk_call_t c)
{
    /* y was written by earlier work on the caller's stream, which this
     * stream waited for: the release below carries it to the peers. */
    __threadfence_system();
    __syncthreads();
    const uint64_t v = c.seq |
                       ((uint64_t)c.comb_pull << EPXK_COMB_MODE_SHIFT);
    for (int d = threadIdx.x; d < g.R; d += blockDim.x)
        epxk_st_release_u64(cb_flag(g, c.peers[d], g.rank), v);
}

/* One block: wait until every rank's pulled word reached call
 * c.pull_wait (proto_seq_reached). */
__global__ void epxk_comb_fence_kernel(proto_geom_t g, epxk_call_t c)
{
    char *mine = c.peers[g.rank];
    const int32_t want = (int32_t)c.pull_wait;
    for (int s = threadIdx.x; s < g.R; s += blockDim.x) {
        const int32_t *p = cb_pulled(g, mine, s);
        epxk_wait([&] { return proto_seq_reached(epxk_ld_acquire_s32(p),
                                                 want); },
                  c.timeout_ns, &c.info[EPXK_INFO_ERROR], 1023u, cb_backoff);
    }
}

/* One block: this rank will not pull call c.seq (released before its
 * combine_recv); its pulled word anyway. */
__global__ void epxk_comb_done_kernel(proto_geom_t g, epxk_call_t c)
{
    cb_release_pulled(g, c);
}

/* Grid of num_sms blocks of PULL_THREADS.  Dynamic shared memory: the
 * R sources' modes. */
__global__ void __launch_bounds__(PULL_THREADS)
epxk_comb_pull_kernel(proto_geom_t g, epxk_call_t c)
{
    extern __shared__ int cb_mode[];
    __shared__ proto_pull_term_t terms[PULL_WARPS][EPX_MAX_TOPK];
    char *mine = c.peers[g.rank];
    for (int s = threadIdx.x; s < g.R; s += blockDim.x)
        cb_mode[s] = cb_wait(cb_flag(g, mine, s), c.seq, c.timeout_ns,
                             c.info);
    __syncthreads();
    /* After a timeout nothing is summed (out unspecified, the host
     * reports it), but every block still arrives below. */
    const bool ok = *(volatile int64_t *)&c.info[EPXK_INFO_ERROR] == 0;
    const int lane = threadIdx.x % WARP, wi = threadIdx.x / WARP;
    const int64_t warps = (int64_t)gridDim.x * PULL_WARPS;
    const char *comb = mine + g.off_comb;
    proto_pull_term_t *tm = terms[wi];
    const int V = 16 / g.esize;
    const bool vec = g.row_bytes % 16 == 0 &&
                     ((int64_t)g.H * c.out_esize) % 16 == 0 &&
                     ((uintptr_t)c.out & 15) == 0;
    for (int64_t t = blockIdx.x * PULL_WARPS + wi; ok && t < c.T;
         t += warps) {
        /* The token's terms: lane j takes destination j (maxdest <= K <=
         * 32), an exclusive scan over the lanes places them. */
        const int d = lane < g.maxdest ? c.dest[t * g.maxdest + lane] : -1;
        const int m = d >= 0 ? cb_mode[d] : 0;
        int n = d >= 0 ? proto_pull_dest_nterms(&g, c.peers[d], m, c.base,
                                                c.dest, c.pos, t, lane)
                       : 0;
        /* dest ends at its first -1: a lane past it counts nothing */
        const unsigned live = __ballot_sync(0xffffffffu, d < 0);
        if (live && lane >= __ffs(live) - 1)
            n = 0;
        int at = n;
        for (int o = 1; o < WARP; o <<= 1) {
            const int x = __shfl_up_sync(0xffffffffu, at, o);
            if (lane >= o)
                at += x;
        }
        const int nt = __shfl_sync(0xffffffffu, at, WARP - 1);
        at -= n;
        if (n > 0)
            proto_pull_dest_terms(&g, c.peers[d], comb, m, c.sendoff, c.base,
                                  c.dest, c.pos, t, lane, tm + at);
        __syncwarp();
        char *orow = (char *)c.out + t * g.H * c.out_esize;
        if (!vec) {
            for (int64_t h = lane; h < g.H; h += WARP)
                proto_store(orow, c.out_esize, h,
                            proto_pull_elem(g.esize, tm, nt, h));
            __syncwarp();
            continue;
        }
        /* Two pieces a lane at a time (v, v + 32), four terms' loads each
         * in flight before their sums, taken in term order. */
        const int64_t nv = g.row_bytes / 16;
        for (int64_t v0 = lane; v0 < nv; v0 += 2 * WARP) {
            const int64_t v1 = v0 + WARP;
            const bool two = v1 < nv;
            float acc0[8], acc1[8], part0[8], part1[8];
            for (int e = 0; e < 8; e++)
                acc0[e] = acc1[e] = part0[e] = part1[e] = 0.0f;
            for (int k0 = 0; k0 < nt; k0 += 4) {
                union { uint4 u; proto_v16_t p; } a[4], b[4];
#pragma unroll
                for (int j = 0; j < 4; j++)
                    if (k0 + j < nt) {
                        const uint4 *r = (const uint4 *)tm[k0 + j].row;
                        a[j].u = r[v0];
                        if (two)
                            b[j].u = r[v1];
                    }
#pragma unroll
                for (int j = 0; j < 4; j++)
                    if (k0 + j < nt) {
                        const int f = tm[k0 + j].f;
                        const float w = tm[k0 + j].w;
                        proto_pull_acc16(g.esize, f, w, &a[j].p, part0, acc0);
                        if (two)
                            proto_pull_acc16(g.esize, f, w, &b[j].p, part1,
                                             acc1);
                    }
            }
            epxk_store16(orow + v0 * V * c.out_esize, c.out_esize, V, acc0);
            if (two)
                epxk_store16(orow + v1 * V * c.out_esize, c.out_esize, V, acc1);
        }
        __syncwarp();   /* the terms are rewritten for the next token */
    }
    /* The last block to finish stores the pulled words: every block's
     * reads are done (their values stored), fenced before its arrival. */
    __shared__ bool last;
    __threadfence_system();
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned prev = atomicAdd(c.done, 1u);
        last = prev == gridDim.x - 1;
        if (last)
            *c.done = 0;
        __threadfence_system();
    }
    __syncthreads();
    if (last)
        cb_release_pulled(g, c);
}

extern "C" int epxk_comb_launch(int which, const proto_geom_t *g,
                                const epxk_call_t *c, int blocks,
                                void *stream)
{
    cudaStream_t st = (cudaStream_t)stream;
    switch (which) {
    case EPXK_COMB_READY:
        epxk_comb_ready_kernel<<<1, 128, 0, st>>>(*g, *c);
        break;
    case EPXK_COMB_PULL:
        epxk_comb_pull_kernel<<<blocks, PULL_THREADS,
                                sizeof(int) * (size_t)g->R, st>>>(*g, *c);
        break;
    case EPXK_COMB_FENCE:
        epxk_comb_fence_kernel<<<1, 128, 0, st>>>(*g, *c);
        break;
    case EPXK_COMB_DONE:
        epxk_comb_done_kernel<<<1, 128, 0, st>>>(*g, *c);
        break;
    default:
        return (int)cudaErrorInvalidValue;
    }
    return (int)cudaGetLastError();
}

extern "C" int epxk_comb_preload(void)
{
    const void *k[] = {
        (const void *)epxk_comb_ready_kernel,
        (const void *)epxk_comb_pull_kernel,
        (const void *)epxk_comb_fence_kernel,
        (const void *)epxk_comb_done_kernel,
    };
    return epxk_load_kernels(k, sizeof(k) / sizeof(k[0]));
}
