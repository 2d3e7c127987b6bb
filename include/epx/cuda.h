/*
 * epx GPU executor: dispatch and combine of tensors in device memory,
 * stream-ordered.  No CUDA types: streams are cudaStream_t passed as
 * void *, an NCCL communicator is an ncclComm_t passed as void *.
 * Available when libepx was built with CUDA (configure found nvcc);
 * otherwise every function returns EPX_ERR_UNSUPPORTED.
 *
 * v0 scope: BF16 or FP32, native wire.  Throughput mode: token-major
 * layout, or expert-major with the windows backend (expert_offsets and
 * expert_counts are host memory, the per-row arrays device memory, as
 * for token-major).  Low-latency mode (windows backend): see
 * epx_cuda_moe_ll_check.  Other params (expert-major or low latency over
 * NCCL, quantized wire, replica slots, hierarchical, cached dispatch) are
 * refused with EPX_ERR_UNSUPPORTED.
 *
 * Thread safety: as epx.h; each rank's engine is driven by one thread,
 * which may drive it while other threads of the process drive other ranks
 * (one stream and one SM budget each).
 */
#ifndef EPX_CUDA_H
#define EPX_CUDA_H

#include <epx.h>

#ifdef __cplusplus
extern "C" {
#endif
#if defined(__GNUC__) && !defined(EPX_NO_VISIBILITY)
#pragma GCC visibility push(default)
#endif

typedef struct epx_cuda_moe epx_cuda_moe_t;

typedef enum epx_cuda_backend {
    /* Kernels store into the peers' windows (direct pointers, CUDA IPC,
     * cuMem POSIX descriptors or fabric handles, probed). */
    EPX_CUDA_BACKEND_WINDOWS = 0,
    /* The same exchange written with NCCL grouped send/recv: the baseline,
     * and the fallback where windows cannot be shared. */
    EPX_CUDA_BACKEND_NCCL = 1
} epx_cuda_backend_t;

#define EPX_CUDA_PARAMS_VERSION 1
typedef struct epx_cuda_params {
    size_t struct_size;        /* sizeof(epx_cuda_params_t) */
    unsigned version;          /* EPX_CUDA_PARAMS_VERSION */
    int device;                /* CUDA device ordinal; -1: the current one */
    /* Blocks of the data kernels, one per SM (at most the device's SMs).
     * 0: the device's SMs divided by the ranks sharing the device, so the
     * kernels of every rank on a GPU are resident together (they wait for
     * each other). */
    int num_sms;
    epx_cuda_backend_t backend;
    /* NCCL backend: an ncclComm_t over the same ranks in the same order to
     * adopt (the caller keeps ownership); NULL: epx creates one. */
    void *nccl_comm;
} epx_cuda_params_t;

#define EPX_CUDA_PARAMS_INIT                                                  \
    { sizeof(epx_cuda_params_t), EPX_CUDA_PARAMS_VERSION, -1, 0,              \
      EPX_CUDA_BACKEND_WINDOWS, NULL }

/* EPX_OK and the number of devices, or EPX_ERR_UNSUPPORTED (not built with
 * CUDA, no driver, no device) with the reason in epx_last_error(). */
epx_status_t epx_cuda_devices(int *count);

/* Collective.  Allocates the windows (device memory) and the engine's
 * stream on `device`; every rank passes the same moe params as for
 * epx_moe_create.  The calling thread's current device becomes `device`. */
epx_status_t epx_cuda_moe_create(epx_comm_t *comm,
                                 const epx_moe_params_t *params,
                                 const epx_cuda_params_t *cparams,
                                 epx_cuda_moe_t **moe);
/* Collective (a barrier first, so no peer still writes into this rank). */
void epx_cuda_moe_destroy(epx_cuda_moe_t *moe);
/* SMs (blocks) the data kernels use. */
int epx_cuda_moe_num_sms(const epx_cuda_moe_t *moe);
/* "windows:direct", "windows:posix-fd", "windows:fabric", "windows:ipc",
 * "nccl" or "nccl:adopted". */
const char *epx_cuda_moe_backend(const epx_cuda_moe_t *moe);

/* Stream-ordered dispatch and combine.  Tensors are device memory.  Work
 * runs on the engine's own stream, ordered after the work already queued
 * on `stream` (an event); epx_dispatch_recv and epx_combine_recv make
 * `stream` wait for it (an event), so the caller's kernels queued between
 * send and recv overlap with the exchange.  Inputs (x, topk_idx,
 * topk_weights; y) must stay unchanged until the matching recv returned.
 *
 * Host synchronisation: at most once per dispatch (throughput mode needs
 * the received row count on the host to describe recv): in
 * epx_cuda_dispatch_recv for the windows backend, in epx_cuda_dispatch_send
 * for NCCL (to size the receives).  Combine never synchronises.
 * One dispatch in flight per engine, in the order send, recv,
 * combine_send, combine_recv. */
epx_status_t epx_cuda_dispatch_send(epx_cuda_moe_t *moe,
                                    const epx_dispatch_args_t *args,
                                    void *stream);
/* recv as epx_dispatch_recv describes it; pointers are device memory
 * owned by the engine, valid until the next epx_cuda_dispatch_send. */
epx_status_t epx_cuda_dispatch_recv(epx_cuda_moe_t *moe, void *stream,
                                    epx_recv_t *recv);
/* y: [recv.num_rows, H] in the engine dtype, device memory (may be
 * recv.x itself). */
epx_status_t epx_cuda_combine_send(epx_cuda_moe_t *moe,
                                   const epx_combine_args_t *args,
                                   void *stream);
/* out: [T, H] BF16 or FP32, device memory; written in `stream` order. */
epx_status_t epx_cuda_combine_recv(epx_cuda_moe_t *moe, epx_tensor_t *out,
                                   void *stream);

/* Low-latency mode (EPX_MODE_LOW_LATENCY, expert-major, windows backend):
 * the host executor's output layout (epx.h: rows j*R*cap + s*cap + i,
 * padding with src_rank -1) and the same four calls, which only queue
 * kernels: no host synchronisation, so a dispatch and its combine can be
 * captured into a CUDA graph (cudaStreamCaptureModeThreadLocal when
 * other ranks' threads share the process) and replayed, every rank
 * replaying the same sequence.  One call in flight, as in throughput mode;
 * call n uses buffer n % ll_buffers (a captured call keeps its buffer), so
 * a rank's next dispatch does not wait for the slowest rank's combine of
 * this one.  A dispatch_send after dispatch_recv without combine abandons
 * that call (peers that combine it get EPX_ERR_PEER from the next check).
 * In recv, expert_counts is DEVICE memory ([local experts] int64, written
 * in stream order) and num_dropped is -1: the host does not wait for
 * them.  Errors (bad ids, more rows than ll_capacity without
 * EPX_MOE_LL_DROP on any rank, a peer's abandon, a timeout) are found on
 * the device: every rank's kernels still finish, the call's outputs are
 * unspecified, and the error is reported here.
 *
 * Synchronises with the engine's stream (never while capturing) and
 * returns the first error of the calls since the previous check (EPX_OK,
 * EPX_ERR_INVALID, EPX_ERR_RANGE, EPX_ERR_PEER; EPX_ERR_TIMEOUT leaves the
 * engine unusable); *dropped (may be NULL) gets the rows dropped on this
 * rank since then.  EPX_ERR_INVALID for an engine in throughput mode. */
epx_status_t epx_cuda_moe_ll_check(epx_cuda_moe_t *moe, int64_t *dropped);

/* Either mode: epx_cuda_moe_ll_check in low latency; in throughput mode
 * it synchronises with the engine's stream and returns EPX_ERR_TIMEOUT
 * (the engine then unusable) when a device wait of the calls since the
 * last check timed out (*dropped: 0).  A throughput combine never
 * synchronises, so without a check its timeout reaches the host only at
 * the next epx_cuda_dispatch_recv, and its output is unspecified. */
epx_status_t epx_cuda_moe_check(epx_cuda_moe_t *moe, int64_t *dropped);

#if defined(__GNUC__) && !defined(EPX_NO_VISIBILITY)
#pragma GCC visibility pop
#endif
#ifdef __cplusplus
}
#endif
#endif /* EPX_CUDA_H */
