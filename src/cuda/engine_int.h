/*
 * What the GPU executor's engine files share inside the CUDA module: the
 * engine's state (struct gpu_moe) and the helpers every mode uses.
 */
#ifndef EPX_CUDA_ENGINE_INT_H
#define EPX_CUDA_ENGINE_INT_H

#include "epx/cuda.h"
#include "cuda/gpu.h"
#include "cuda/calls.h"
#include "cuda/cuda_int.h"
#include "cuda/kern_launch.h"
#include "cuda/hier_int.h"
#include "cuda/mig_int.h"
#include "cuda/nccl_ex.h"

/* A throughput layout (src/cuda/README.md, "Cached dispatch"): one per
 * handle that dispatched, from its uncached dispatch until its release;
 * d holds what lay_point points the call at. */
typedef struct gpu_lay {
    char *d;
    int used;
    int32_t seq;                /* sequence word of the call that made it */
} gpu_lay_t;

/* What differs by mode (src/moe/ops.h is the host side's table): chosen
 * once by gpu_moe_create, gpu_ht_ops (ht.c: throughput, both backends,
 * hierarchical through hier.c) or gpu_ll_ops (ll.c: low latency, windows
 * and NCCL).  The gpu_* calls (engine.c) check their arguments and the
 * calls' order (calls.h), then go through it; b is the call's buffer. */
typedef struct gpu_mode_ops {
    /* after the geometry: the mode's layout and calls, and wbytes,
     * sbytes, rx_lo, rx_hi */
    void (*init)(gpu_moe_t *m);
    /* the mode's buffers (first: each rank's first unit, [R + 1]) */
    epx_status_t (*setup)(gpu_moe_t *m, const int32_t *first);
    /* the SM budget known: sms on the device, ranks sharing it */
    void (*budget)(gpu_moe_t *m, int sms, int ranks);
    /* EPX_DISPATCH_CACHED with handle lay: EPX_OK, or the error to refuse
     * the call with */
    epx_status_t (*cached)(const gpu_moe_t *m, int lay);
    /* a layout for an uncached dispatch, -1 where the mode has none */
    epx_status_t (*layout)(gpu_moe_t *m, int *lay);
    /* the call's number, buffer b, layout lay and routing are set */
    epx_status_t (*dispatch_send)(gpu_moe_t *m, const epx_dispatch_args_t *a,
                                  void *stream, int b, int lay, int cached);
    epx_status_t (*dispatch_recv)(gpu_moe_t *m, uint64_t call, void *stream,
                                  epx_recv_t *recv, int b);
    epx_status_t (*dispatch_poll)(gpu_moe_t *m, uint64_t call, int b,
                                  int received, epx_recv_t *recv,
                                  uint8_t *ready, int *num_ready);
    /* a bad argument on this rank, refused on every rank */
    epx_status_t (*refuse)(gpu_moe_t *m, void *stream, epx_status_t why);
    /* after stream_in; call.T, y and unweighted set */
    epx_status_t (*combine_send)(gpu_moe_t *m, const epx_combine_args_t *a,
                                 int b);
    /* between stream_in and stream_out; call.T, out and out_esize set */
    epx_status_t (*combine_recv)(gpu_moe_t *m, int b);
    void (*release)(gpu_moe_t *m, uint64_t call);
    epx_status_t (*check)(gpu_moe_t *m, int64_t *dropped);
    /* the load statistics: read back with each dispatch
     * (gpu_dispatch_ecount), or from a ring on the device
     * (gpu_moe_ll_stats); NULL where the mode has no such */
    const int32_t *(*ecount)(const gpu_moe_t *m);
    epx_status_t (*stats)(gpu_moe_t *m, gpu_stats_fn each, void *ctx,
                          int64_t *lost);
} gpu_mode_ops_t;

extern const gpu_mode_ops_t gpu_ht_ops, gpu_ll_ops;

struct gpu_moe {
    const gpu_mode_ops_t *ops;
    epx_comm_t *comm;
    epx_moe_params_t p;
    epx_gpu_backend_t backend;
    int device, num_sms, L, first;
    int kset;                   /* EPX_CUDA_KERNELS: EPXK_SET_* */
    int ht_fits;                /* the fused dispatch's grids fit at once */
    char name[32];
    proto_geom_t g;
    cudaStream_t st;
    cudaEvent_t ev_in, ev_out, ev_info;
    epx_cuwin_t *win;           /* windows backend */
    epx_nccl_t *nccl;           /* NCCL backend */
    char *local;                /* this rank's window / receive buffer */
    char *stage;                /* NCCL: packed rows and metadata */
    char **d_peers;             /* [R] device copy of the bases */
    int32_t *d_e2r, *d_first, *d_dest, *d_pos, *d_mycnt, *d_epos, *d_part;
    int64_t *d_sendoff, *d_base, *d_info, *d_ebase;
    unsigned *d_done;
    int64_t *h_info;            /* pinned: the one read-back per dispatch */
    int32_t *h_cnt;             /* pinned: NCCL count matrix + own row */
    int32_t *h_ecnt;            /* pinned: [E] this rank's pairs per expert
                                   (load statistics), read back with h_info */
    int64_t *h_counts;          /* [2L] expert_counts and expert_offsets
                                   handed to the caller */
    int32_t *h_local;           /* [B][L] local_experts, per buffer (its
                                   call's layer: slots hold experts) */
    int blayer[GPU_CALLS_MAX];  /* layer of each buffer's call */
    /* replicas (num_slots): per layer, the host executor's routing tables
     * (epx_moe_set_placement) in device memory, staged through pinned */
    int Elog, layers;
    int32_t *d_route, *h_route; /* [layers][E pick, E + 1 off, U rep] */
    int32_t *h_p2l;             /* [layers][U] */
    int8_t *h_placed, *h_rr;    /* [layers] set; round robin */
    int64_t *nsend, *sendoff, *nrecv, *rbase;  /* NCCL, [R] each */
    int64_t *rsize;             /* NCCL expert-major: [4][R] the same for
                                   rows (proto.h, "expert-major over NCCL") */
    char *rstage;               /* NCCL expert-major: rows received in
                                   source order; combine's partials */
    int64_t *d_emmap;           /* NCCL expert-major: the receiver's map */
    uint64_t seq;
    int64_t T, rows;
    int broken;
    /* by mode (init): the window's protocol bytes and NCCL's staging,
     * and the receive region combine_send's test keeps y out of */
    int64_t wbytes, sbytes, rx_lo, rx_hi;
    gpu_calls_t calls;          /* calls in flight and their order (calls.h) */
    int64_t comb_T;             /* tokens of the call being combined */
    uint64_t pull_pending;      /* fused combine (kern_comb.cu): the last
                                   call combined, for the next dispatch's
                                   pull fence; 0: none */
    float *d_scratch;           /* low latency: [maxT][H] fp32 (fp64 for an
                                   FP64 engine), the output of a combine
                                   released before its recv */
    epxk_call_t call;
    /* low latency (ll set) */
    int ll;
    proto_ll_t llg;
    int32_t *d_llkeep, *d_lldest, *d_llcnt, *d_llmystat, *d_llsrc;
    int64_t *d_llsendoff, *d_llcounts, *d_llstate;
    uint32_t *d_lluse;
    int64_t *h_lloffs;          /* [L] j * R * cap */
    /* low latency in one kernel per operation (EPX_CUDA_KERNELS=fused,
     * windows, the layout within PROTO_LL1_SMEM_MAX; kern_ll.cu): the
     * receive phase's mark words, [B][L * R] */
    int ll1;
    uint64_t *d_llmark;
    int8_t ll1_recvd[GPU_CALLS_MAX];   /* buffer's call: receive phase queued
                                          (a second recv queues none) */
    /* low latency, epx_dispatch_poll: what the recv kernels publish,
     * [B][EPXK_LLPUB_LEN(L)] (host-mapped; h_ the host's address, d_ the
     * device's), and the counts poll hands the caller, [B][L] */
    int64_t *h_llpub, *d_llpub, *h_llpoll;
    gpu_mig_t *mig;             /* weight migration (migrate.c), or NULL */
    /* low latency over NCCL (proto/ll_nccl.h): each rank's units, and
     * the grouped exchange's operations, [2R] */
    int32_t *h_lln_first;
    epx_nccl_p2p_t *lln_ops;
    /* low latency's load statistics: the device's ring (kern_launch.h
     * EPXK_LL_STATS_RING) and the calls of it the host has read */
    int64_t *d_llnstat;
    int32_t *d_llring, *h_llring;
    int64_t ll_seen;
    /* throughput: layouts, and what the recv kernel publishes for
     * epx_dispatch_poll (host-mapped, EPXK_PUB_*; h_ the host's address,
     * d_ the device's) */
    gpu_lay_t *lays;
    int nlays;
    int64_t *h_pub, *d_pub;
    /* the fused dispatch (kern_ht.cu): its grid barrier and completion
     * counter; whether the call in flight took it, and its number */
    unsigned *d_fbar;
    int fcall;
    uint64_t fseq;
    /* EPX_MOE_ELASTIC (kern_lost.cu): each call's pairs per logical
     * expert lost in its layer, on the device; throughput mode also
     * copies them to h_ecnt + units (host-mapped, d_ecnt the device's
     * address) */
    int elastic;
    int32_t *d_lostcnt, *d_ecnt;
    gpu_hier_t *hier;           /* EPX_MOE_HIERARCHICAL (hier.c), or NULL */
};

/* The kernels of one step of the call, on the engine's stream. */
static inline epx_status_t gpu_moe_launch(gpu_moe_t *m, int which)
{
    int rc = epxk_launch(which, &m->g, &m->call, m->num_sms, m->st);
    return epx__cuda_err((cudaError_t)rc, "kernel launch");
}

/* Let the engine's stream run after the work queued on `stream`. */
static inline epx_status_t gpu_moe_stream_in(gpu_moe_t *m, void *stream)
{
    EPX_CUDA_TRY(cudaEventRecord(m->ev_in, (cudaStream_t)stream));
    EPX_CUDA_TRY(cudaStreamWaitEvent(m->st, m->ev_in, 0));
    return EPX_OK;
}

/* And `stream` after the engine's work. */
static inline epx_status_t gpu_moe_stream_out(gpu_moe_t *m, void *stream)
{
    EPX_CUDA_TRY(cudaEventRecord(m->ev_out, m->st));
    EPX_CUDA_TRY(cudaStreamWaitEvent((cudaStream_t)stream, m->ev_out, 0));
    return EPX_OK;
}

static inline epx_status_t gpu_moe_set_device(const gpu_moe_t *m)
{
    return epx__cuda_err(cudaSetDevice(m->device), "cudaSetDevice");
}

/* The checks' steps, on the engine's stream. */
static inline epx_status_t gpu_moe_sync(gpu_moe_t *m)
{
    return epx__cuda_err(cudaStreamSynchronize(m->st), "cudaStreamSynchronize");
}

static inline epx_status_t gpu_moe_read(gpu_moe_t *m, void *dst,
                                        const void *src, size_t bytes)
{
    return epx__cuda_err(cudaMemcpyAsync(dst, src, bytes,
                                         cudaMemcpyDeviceToHost, m->st),
                         "cudaMemcpyAsync");
}

/* cudaMalloc of at least one byte; GPU_DEV_ALLOC returns the failure
 * (st in scope). */
epx_status_t gpu_moe_dev_alloc(void **ptr, size_t bytes);
#define GPU_DEV_ALLOC(ptr, n)                                                  \
    do {                                                                       \
        if ((st = gpu_moe_dev_alloc((void **)&(ptr), (n))) != EPX_OK)          \
            return st;                                                         \
    } while (0)
/* recv.local_experts of buffer b's call: the expert of each local unit
 * (with slots, by the call's layer's placement). */
const int32_t *gpu_moe_local_experts(gpu_moe_t *m, int b);
/* A device wait that timed out (the kernels' error word): the engine is
 * unusable; who: the message's prefix. */
epx_status_t gpu_moe_timeout(gpu_moe_t *m, const char *who);
/* Elastic engines: the call's lost mask and its demand for lost experts
 * (kern_lost.cu), first on the engine's stream; ecnt: also into h_ecnt
 * after the units (throughput mode's statistics). */
epx_status_t gpu_moe_lost(gpu_moe_t *m, const epx_dispatch_args_t *a,
                          int ecnt);

#endif /* EPX_CUDA_ENGINE_INT_H */
