/*
 * The one call from C into the kernels: which kernel, the geometry and
 * one call's arguments (all device pointers), launched on a stream.
 */
#ifndef EPX_CUDA_KERN_LAUNCH_H
#define EPX_CUDA_KERN_LAUNCH_H

#include <stdint.h>
#include "proto/proto.h"
#include "proto/hier.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { EPXK_LAYOUT = 0, EPXK_OFFSETS, EPXK_PACK, EPXK_RECV, EPXK_COMB_PUT,
       EPXK_COMB_REDUCE, EPXK_LL_LAYOUT, EPXK_LL_PACK, EPXK_LL_RECV,
       EPXK_LL_COMB_PUT, EPXK_LL_COMB_REDUCE, EPXK_LL_ABANDON,
       /* expert-major over NCCL (proto.h): the staging bases (before
        * pack), the receiver's map (after the count exchange), the
        * scatter (after the exchange), combine's partials */
       EPXK_NCCL_EM_BASE, EPXK_NCCL_EM_MAP, EPXK_NCCL_EM_SCATTER,
       EPXK_NCCL_EM_PARTIAL,
       /* low latency: the call's counts into the statistics ring */
       EPXK_LL_STATS,
       /* a cached dispatch: the ids against the handle's, the header */
       EPXK_CACHED,
       /* low latency in one kernel per operation (EPXK_SET_FUSED,
        * kern_ll.cu): the dispatch's and the combine's send and receive
        * phases, each a launch of its operation's kernel */
       EPXK_LL1_DISPATCH_SEND, EPXK_LL1_DISPATCH_RECV, EPXK_LL1_COMB_SEND,
       EPXK_LL1_COMB_RECV,
       /* throughput over NCCL (kern_nccl.cu): this rank's count block
        * (header and counts) staged for the exchange, and every source's
        * header checked after it (proto_cached_agree_all) */
       EPXK_NCCL_HEAD, EPXK_NCCL_AGREE,
       /* low latency over NCCL (proto/ll_nccl.h): this rank's blocks
        * staged, the received blocks into the buffer, the partials
        * staged (or, abandoned, the flag words alone), the returned
        * partials and flags into the buffer */
       EPXK_LLN_PACK, EPXK_LLN_SCATTER, EPXK_LLN_COMB_PUT, EPXK_LLN_ABANDON,
       EPXK_LLN_COMB_SCATTER };

/* Kernel sets (EPX_CUDA_KERNELS): classic, verified on a device; fused,
 * the single-pass data path (issue: fused dispatch, pull combine, one
 * low-latency kernel per operation), the default only once a device run
 * has verified it and shown it faster.  Both give the host executor's
 * bits. */
enum { EPXK_SET_CLASSIC = 0, EPXK_SET_FUSED = 1 };

/* Low latency's load statistics: a ring of the last EPXK_LL_STATS_RING
 * recorded calls, each [1 + logical experts + units] int32 (layer, counts
 * per logical expert, counts per unit), and a counter of the calls
 * recorded (int64), read back by the host (engine.c gpu_moe_ll_stats). */
#define EPXK_LL_STATS_RING 1024   /* gpu.h GPU_LL_STATS_CALLS */

/* Low latency, ll_state[]: the first error of the calls since the host
 * last looked (0, or an epx_status_t), and the rows dropped here. */
enum { EPXK_LL_ERR = 0, EPXK_LL_DROPPED = 1, EPXK_LL_NSTATE = 2 };
/* Bit of a comb flag set by a rank that abandoned the call. */
#define EPXK_LL_ABANDONED (1ull << 62)

/* info[]: error flag (a wait timed out), rows received (expert-major:
 * with padding), invalid expert ids seen by this rank's layout, a cached
 * call's ids differing from its layout's (1), the ranks' agreement on a
 * cached call (0, or the least status proto_cached_agree gave: nothing
 * was packed), entries received (tokens), then the counts of each local
 * expert and (expert-major) their first rows:
 * [EPXK_INFO_COUNTS + 2 * local experts].  Each send clears the three
 * words of its own call (EPXK_INFO_CALL words from EPXK_INFO_BAD_IDS). */
enum { EPXK_INFO_ERROR = 0, EPXK_INFO_ROWS = 1, EPXK_INFO_BAD_IDS = 2,
       EPXK_INFO_ROUTE = 3, EPXK_INFO_AGREE = 4, EPXK_INFO_ENTS = 5,
       EPXK_INFO_COUNTS = 6 };
#define EPXK_INFO_CALL 3

/* Throughput mode: what the recv kernel publishes in host-mapped memory
 * for epx_dispatch_poll (src/cuda/README.md, "Readiness"), int64 words:
 * the call's sequence word once the rest of the counts is there (stored
 * last, release), its agreement (EPXK_INFO_AGREE, or EPX_ERR_INVALID
 * where this rank's ids differed from its layout's), the rows received, the
 * counts and first rows of each local unit, then per local unit the
 * sequence word of the last call whose rows for it all arrived:
 * [EPXK_PUB_COUNTS + 3 * local units]. */
enum { EPXK_PUB_SEQ = 0, EPXK_PUB_AGREE = 1, EPXK_PUB_ROWS = 2,
       EPXK_PUB_COUNTS = 3 };

/* The fused dispatch (kern_ht.cu) publishes more, after those words, so
 * that epx_dispatch_recv reads nothing back: the error flag
 * (EPXK_INFO_ERROR: a wait timed out, in this call or an earlier one),
 * the invalid ids seen (EPXK_INFO_BAD_IDS) and this rank's (token, k)
 * pairs per unit (the load statistics):
 * [EPXK_PUB_FUSED(L) + EPXK_PUBF_ECNT + units], all before the sequence
 * word. */
#define EPXK_PUB_FUSED(L) (EPXK_PUB_COUNTS + 3 * (int64_t)(L))
enum { EPXK_PUBF_ERROR = 0, EPXK_PUBF_BAD_IDS = 1, EPXK_PUBF_ECNT = 2 };

/* Low latency: what the recv kernels publish in host-mapped memory for
 * epx_dispatch_poll (src/cuda/README.md, "Readiness in low latency"),
 * int64 words per buffer, [EPXK_LLPUB_LEN(L)]: the id of the last call
 * found failed (the host's call number + 1, stored last, release) and
 * its status (proto_ll_src_fail), then per local unit its rows (kept)
 * and the id of the last call whose rows for it all arrived (stored
 * after the count and the rows' metadata, release). */
enum { EPXK_LLPUB_FAIL = 0, EPXK_LLPUB_FAILST = 1, EPXK_LLPUB_COUNTS = 2 };
#define EPXK_LLPUB_LEN(L) (EPXK_LLPUB_COUNTS + 2 * (int64_t)(L))

typedef struct epxk_call {
    /* inputs of this dispatch */
    const void *x;            /* [T][H] engine dtype */
    const void *idx;          /* [T][K] int32 or int64 */
    int idx64;
    const float *w;           /* [T][K] */
    int64_t T;
    float gscale;             /* NVFP4: the caller's tensor scale for every
                                 row; 0: each row's own */
    proto_route_t route;       /* replica routing of the call's layer */
    const void *y;            /* combine: [rows][H] */
    void *out;                /* combine: [T][H] */
    int out_esize;            /* 2, 4, or 8 (an FP64 engine's out) */
    /* engine state */
    const int32_t *e2r;       /* [E] owner rank */
    const int32_t *first;     /* [R + 1] first expert of each rank */
    int num_local;
    int32_t *dest, *pos;      /* [maxT][maxdest] */
    int32_t *epos;            /* expert-major: [maxT][K] */
    int64_t *ebase;           /* expert-major: [E] first row at the owner */
    int unweighted;           /* expert-major combine: EPX_COMBINE_UNWEIGHTED */
    int32_t *mycnt;           /* [R + E] */
    int32_t *part;            /* layout: [blocks][R + E] counts per token
                                 chunk (proto.h, "routing layout") */
    int64_t *sendoff;         /* [R] */
    int64_t *base;            /* [R] */
    int64_t *info;            /* [EPXK_INFO_COUNTS + 2 * local experts] */
    unsigned *done;           /* grid completion counter, 0 between uses */
    char *const *peers;       /* [R] window bases in this process (windows) */
    char *stage;              /* NCCL: packed rows and metadata (low
                                 latency: the blocks to each peer) */
    int windows;              /* 1: peers' windows, 0: NCCL moves data */
    int parity;
    uint64_t seq;             /* call number, from 1 */
    uint64_t timeout_ns;
    /* the call's layout (src/cuda/README.md, "Cached dispatch"): dest,
     * pos, epos, mycnt, sendoff, base and ebase above point into it */
    int cached;               /* reuse it: no layout, no counts */
    int refused;              /* a bad argument here: the header says so
                                 (proto.h PROTO_CNT_REFUSED), T = 0 */
    int32_t lay_seq;          /* sequence word of the call that made it */
    int32_t *lay_ids;         /* [maxT][K] its ids (proto_cache_id) */
    int32_t *lay_cnt;         /* [R][cnt_ints] its count matrix, as
                                 proto_recv_expert reads it */
    int64_t *pub;             /* host-mapped, EPXK_PUB_*; NULL: none */
    /* low latency: every pointer below is the call's buffer's own, so a
     * captured call replays with the same arguments; the use number of
     * the buffer (and so the tag) lives on the device */
    proto_ll_t ll;
    int ll_b;                 /* buffer */
    int ll_drop;              /* EPX_MOE_LL_DROP */
    int32_t *keep;            /* [maxT][K] slot in its range, -1 */
    uint32_t *ll_use;         /* [B] uses of each buffer completed */
    int32_t *ll_mystat;       /* this call's own status (0 or an error) */
    int64_t *ll_counts;       /* [L] rows per local expert (recv output) */
    int32_t *ll_src;          /* [L*R*cap] source of each row, -1 padding */
    int64_t *ll_state;        /* [EPXK_LL_NSTATE], sticky */
    int layer;                /* low latency: the call's layer (statistics) */
    int64_t *ll_nstat;        /* low latency: calls recorded in the ring */
    int32_t *ll_ring;         /* [EPXK_LL_STATS_RING][1 + Elog + E] */
    /* expert-major over NCCL */
    char *rstage;             /* received rows in source order; combine:
                                 the partials, [entries][row_bytes]
                                 (low latency over NCCL: the blocks
                                 received from each peer) */
    int64_t *emmap;           /* [proto_em_map_len] the receiver's map */
    /* low latency, fused: [L * R] the buffer's mark word per (local
     * expert, source) range (proto.h proto_ll1_mark), 0 at first */
    uint64_t *ll_mark;
    /* fused set, combine: y in this rank's receive rows (proto.h
     * PROTO_PULL_ROWS or PROTO_PULL_UNWEIGHTED), or 0 (pushed) */
    int comb_pull;
    uint64_t pull_wait;       /* fused set, the pull fence: the call every
                                 rank's pulled word must reach */
    /* the fused dispatch (kern_ht.cu): [0] its grid barrier's arrivals,
     * [1] the barrier's generation, [2] blocks done packing; zero
     * between calls (the generation only grows) */
    unsigned *fbar;
    /* low latency, readiness: the call's buffer's words (EPXK_LLPUB_*;
     * NULL: none) and the call's id there (its number + 1) */
    int64_t *ll_pub;
    uint64_t ll_id;
    /* low latency: a bad argument on this rank (its status, 0: none):
     * the call still takes its turn, packing nothing, and its status
     * words fail it at every peer */
    int32_t ll_refused;
    /* elastic engines (kern_lost.cu): this call's pairs per logical
     * expert lost in its layer, [Elog] device memory, which the
     * low-latency statistics add to the expert's count; NULL: none */
    const int32_t *lostcnt;
} epxk_call_t;

/* 0, or the cudaError_t of the launch (cudaGetLastError).  blocks: the
 * SM budget of the grid kernels; the layouts (EPXK_LAYOUT: two kernels,
 * EPXK_LL_LAYOUT: three) take proto_layout_nblocks(T, blocks) of them. */
int epxk_launch(int which, const proto_geom_t *g, const epxk_call_t *c,
                int blocks, void *stream);

/* The fused set's throughput combine (kern_comb.cu; src/cuda/README.md,
 * "Fused kernels: pull combine"), windows backend: ready (combine_send
 * with y in place: the combine flag with its mode, nothing moved) and
 * pull (combine_recv: each token's sum read from its destinations'
 * windows, or from the partials pushed here).  A combine flag's value is
 * the call's sequence number, and in its top bits the sender's
 * PROTO_PULL_* mode (0: pushed, what the classic put kernel stores).
 * Then fence (the next dispatch_send: until every rank's pull of the
 * last combined call is done; geom.h `status`) and done (a call released
 * between its combine's send and recv: its pulled word, no pull). */
enum { EPXK_COMB_READY = 0, EPXK_COMB_PULL = 1, EPXK_COMB_FENCE = 2,
       EPXK_COMB_DONE = 3 };
#define EPXK_COMB_MODE_SHIFT 60
#define EPXK_COMB_SEQ_MASK ((1ull << EPXK_COMB_MODE_SHIFT) - 1)
int epxk_comb_launch(int which, const proto_geom_t *g, const epxk_call_t *c,
                     int blocks, void *stream);
/* epxk_preload for those kernels. */
int epxk_comb_preload(void);

/* 0, or the cudaError_t of loading every kernel now.  With lazy loading
 * (CUDA_MODULE_LOADING=LAZY, CUDA's default) a kernel is loaded at its
 * first launch, and loading may wait for the whole context: a rank's
 * first launch would wait for a peer's kernel that waits for that very
 * launch (ranks as threads of one process).  Called at engine creation,
 * before the ranks' last collective step. */
int epxk_preload(void);

/* kern_ll.cu: the EPXK_LL1_* launches (through epxk_launch), and its
 * kernels loaded (through epxk_preload). */
int epxk_ll1_launch(int which, const proto_geom_t *g, const epxk_call_t *c,
                    int blocks, void *stream);
int epxk_ll1_preload(void);

/* kern_nccl.cu: the EPXK_NCCL_HEAD and EPXK_NCCL_AGREE launches (through
 * epxk_launch), and their kernels loaded (through epxk_preload). */
int epxk_nccl_launch(int which, const proto_geom_t *g, const epxk_call_t *c,
                     int blocks, void *stream);
int epxk_nccl_preload(void);

/* The fused throughput dispatch (EPX_CUDA_KERNELS=fused, kern_ht.cu):
 * layout, count exchange, pack, completion flags and the receive totals
 * in one kernel of `blocks` blocks, which must all be resident together
 * (they meet in grid barriers).  epxk_ht_covers: 1 when the kernel takes
 * this geometry (its shared memory within the default 48 KiB); else
 * the engine runs the classic kernels.  epxk_ht_preload:
 * epxk_preload for it. */
int epxk_ht_covers(const proto_geom_t *g);
/* 1 when `blocks` blocks of the fused dispatch (every rank's grid on
 * this device) can be resident at once on `sms` SMs (occupancy). */
int epxk_ht_fits(const proto_geom_t *g, int blocks, int sms);
int epxk_ht_launch(const proto_geom_t *g, const epxk_call_t *c, int blocks,
                   void *stream);
int epxk_ht_preload(void);

/* Elastic engines (kern_lost.cu): a dispatch's lost mask and its demand
 * for lost experts (proto.h proto_expert_lost), one block on the
 * engine's stream before the call's other kernels.  off: the layer's
 * proto_route_t.off. */
typedef struct epxk_lost {
    const void *idx;          /* [n] the call's ids, int32 or int64 */
    int idx64;
    int64_t n;                /* T * K */
    int E;                    /* logical experts */
    const int32_t *off;       /* [E + 1] */
    uint8_t *mask;            /* [n] device memory, or NULL */
    int32_t *cnt;             /* [E] device memory: pairs naming each
                                 lost expert (0 for the others) */
    int32_t *hcnt;            /* [E] host-mapped copy of cnt, or NULL */
} epxk_lost_t;
int epxk_lost_launch(const epxk_lost_t *a, void *stream);
int epxk_lost_preload(void);
/* Hierarchical two-hop (EPX_MOE_HIERARCHICAL, windows backend;
 * kern_hier.cu, src/cuda/README.md "Hierarchical two-hop"): the domains
 * and regions of proto/hier.h after the geometry's, and the stage
 * kernel's record counters per destination domain (device, [ND], zero
 * between calls).  Dispatch: stage (in place of pack: each token's record
 * into this rank's staging, once per remote destination domain into its
 * gateway there, its own domain's rows at the flat offsets), forward (the
 * records staged here to this domain's members, then the data flags on
 * their sources' behalf).  Combine: put (partials into the gateway in
 * this domain), chain (the gateway's stretch of each sum, on to the next
 * domain's gateway or home), out (combine_recv: the sums rounded). */
enum { EPXK_HIER_STAGE = 0, EPXK_HIER_FWD = 1, EPXK_HIER_PUT = 2,
       EPXK_HIER_CHAIN = 3, EPXK_HIER_OUT = 4,
       /* over NCCL (proto/hier_nccl.h; put and out are the windows
        * form's with h.nccl): records and count blocks staged, hop 2
        * packed, hop 2 scattered, a chain round, chain rows and finished
        * sums landed at their tokens */
       EPXK_HIERN_STAGE = 5, EPXK_HIERN_PACK = 6, EPXK_HIERN_SCATTER = 7,
       EPXK_HIERN_CHAIN = 8, EPXK_HIERN_LAND_CHAIN = 9,
       EPXK_HIERN_LAND_FINAL = 10 };
typedef struct epxk_hier {
    proto_hier_t x;
    proto_hier_win_t w;
    int64_t rec_hdr, rec_bytes;
    int32_t *count;
    /* [2] device counters: bytes put across domains in dispatch and
     * combine (proto/hier.h, "bytes across domains"), since creation */
    unsigned long long *cross;
    /* over NCCL (0 / NULL with windows), device memory: count blocks sent
     * and received ([ND][proto_hier_cb_len]), the chain messages' row
     * counters ([2 ND], zero between calls), hop 1's staging ([ND][maxT]
     * records), hop 2's ([ND * P] records) and its receive ([ents]
     * records), the partials' staging ([ents] rows), the chain rows sent
     * and received ([ND * maxT] of crow bytes) and the finished sums
     * received ([maxT]); n: what a scatter or land launch takes */
    int nccl;
    int32_t *cb_send, *cb_recv, *ccount;
    char *sstage, *fstage, *rfwd, *pstage, *csend, *rchain, *rfinal;
    int64_t crow, n;
} epxk_hier_t;
int epxk_hier_launch(int which, const proto_geom_t *g, const epxk_call_t *c,
                     const epxk_hier_t *h, int blocks, void *stream);
int epxk_hier_preload(void);

#ifdef __cplusplus
}
#endif
#endif /* EPX_CUDA_KERN_LAUNCH_H */
