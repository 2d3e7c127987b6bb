/*
 * The GPU executor as the engine (src/moe) sees it: plain C, no CUDA
 * types, so the engine builds the same with or without CUDA (nocuda.c
 * answers EPX_ERR_UNSUPPORTED).  Streams are cudaStream_t as void *.
 * epx_moe_create makes one when epx_moe_params_t.device is a CUDA
 * ordinal; src/moe/gpu_ops.c puts it behind the engine's ops table.
 */
#ifndef EPX_CUDA_GPU_H
#define EPX_CUDA_GPU_H

#include <stddef.h>
#include <stdint.h>
#include "epx.h"
#include "moe/mig.h"

typedef struct gpu_moe gpu_moe_t;

/* Collective.  params->device is the CUDA ordinal; the GPU settings
 * (num_sms, gpu_backend, nccl_comm) come from the same params. */
epx_status_t gpu_moe_create(epx_comm_t *comm, const epx_moe_params_t *params,
                            gpu_moe_t **gpu);
/* Collective (a barrier first, so no peer still writes into this rank). */
void gpu_moe_destroy(gpu_moe_t *gpu);
int gpu_moe_num_sms(const gpu_moe_t *gpu);
const char *gpu_moe_backend(const gpu_moe_t *gpu);

/* Stream-ordered steps of a call (include/epx.h; src/cuda/README.md),
 * named by the number dispatch_send gives it; the order they may come in
 * is src/cuda/calls.h's. */
/* Throughput mode: *lay is the call's layout (src/cuda/README.md,
 * "Cached dispatch"): in, the one an EPX_DISPATCH_CACHED call reuses (the
 * handle's); out, the one the call used, the handle's until
 * gpu_layout_release (an uncached call takes a free one).  Low latency:
 * -1. */
epx_status_t gpu_dispatch_send(gpu_moe_t *gpu, const epx_dispatch_args_t *a,
                               void *stream, int *lay, uint64_t *call);
epx_status_t gpu_dispatch_recv(gpu_moe_t *gpu, uint64_t call, void *stream,
                               epx_recv_t *recv);
/* A dispatch this rank refuses (`why`, with epx_last_error's message)
 * before it reaches the executor: throughput mode over windows, the call
 * still takes its turn as an exchange that fails it on every rank (the
 * peers' epx_dispatch_recv: EPX_ERR_PEER); low latency, it takes its
 * number and buffer and its empty words fail it at every peer (their
 * epx_dispatch_poll and epx_moe_check: EPX_ERR_PEER); elsewhere nothing
 * is queued.  Returns `why`, its message kept. */
epx_status_t gpu_dispatch_refuse(gpu_moe_t *gpu, void *stream,
                                 epx_status_t why);
/* Without waiting: which local units of the call have all their rows
 * (include/epx.h epx_dispatch_poll; src/cuda/README.md, "Readiness",
 * and "Readiness in low latency", where recv->expert_counts is host
 * memory holding the ready units' counts). */
epx_status_t gpu_dispatch_poll(gpu_moe_t *gpu, uint64_t call, epx_recv_t *recv,
                               uint8_t *ready, int *num_ready);
/* The handle that kept layout `lay` let go of it (its release). */
void gpu_layout_release(gpu_moe_t *gpu, int lay);
/* After a throughput dispatch_recv: [units] this rank's (token, unit)
 * pairs per unit (the experts, or the slots), read back with the receive
 * counts (the load statistics), and for an EPX_MOE_ELASTIC engine then
 * [num_experts] its pairs naming each expert lost in the call's layer
 * (0 for the others); NULL otherwise (low latency reads nothing back). */
const int32_t *gpu_dispatch_ecount(const gpu_moe_t *gpu);
epx_status_t gpu_combine_send(gpu_moe_t *gpu, uint64_t call,
                              const epx_combine_args_t *a, void *stream);
epx_status_t gpu_combine_recv(gpu_moe_t *gpu, uint64_t call, epx_tensor_t *out,
                              void *stream);
/* The caller let go of the call (epx_handle_release): what the device
 * still has to do for it is queued (calls.h, GPU_ABANDON / GPU_FINISH). */
void gpu_call_release(gpu_moe_t *gpu, uint64_t call);
/* Replicas (num_slots): one layer's routing tables, the host executor's
 * (src/moe/engine.c epx_moe_set_placement): phy2log [U], this rank's
 * local-first pick [E], each expert's replicas off [E + 1] / rep [U];
 * round_robin: route by token index instead of pick.  Not while a call
 * is in flight. */
/* A call is in flight (dispatched, not combined or released). */
int gpu_moe_busy(const gpu_moe_t *gpu);
epx_status_t gpu_moe_set_placement(gpu_moe_t *gpu, int layer,
                                   const int32_t *phy2log, const int32_t *pick,
                                   const int32_t *off, const int32_t *rep,
                                   int round_robin);
/* Synchronise with the engine's stream; the first device-side error of
 * the calls since the last check (epx_moe_check). */
epx_status_t gpu_moe_check(gpu_moe_t *gpu, int64_t *dropped);

/* Weight migration (src/cuda/migrate.c): the moves of src/moe/mig.h's
 * plan, which src/balance/migrate.c computes, between device ranks.
 * A call of `layer` dispatched and not yet combine_sent or released. */
int gpu_moe_layer_busy(const gpu_moe_t *gpu, int layer);
/* [base, base + bytes) is device memory of this rank's device. */
epx_status_t gpu_mig_check(gpu_moe_t *gpu, const void *base, size_t bytes);
/* Collective (every rank, the same bytes): staging of at least `bytes`
 * per rank in device memory, shared as the engine's windows are
 * (windows backend) or local (NCCL); kept while large enough. */
epx_status_t gpu_mig_reserve(gpu_moe_t *gpu, size_t bytes);
/* The host waits (bounded by the comm's timeout) for the last landing:
 * staging free, the weights it wrote final. */
epx_status_t gpu_mig_quiet(gpu_moe_t *gpu);
/* Queue the plan's transfers of weights (device memory, `bytes` per
 * slot) on the migration stream: sends into the destinations' staging;
 * NCCL also posts the receives. */
epx_status_t gpu_mig_send(gpu_moe_t *gpu, const void *weights, size_t bytes,
                          const moe_mig_xfer_t *x, int n);
/* The host waits (bounded) until this rank's transfers are done. */
epx_status_t gpu_mig_wait(gpu_moe_t *gpu);
/* The switch, queued: after the engine's work queued so far, staging
 * slot land[i] into weights slot land[i], then the layer's routing
 * tables (as gpu_moe_set_placement's); the engine's later work waits for
 * both.  The caller has checked that no call of the layer is in flight. */
epx_status_t gpu_mig_land(gpu_moe_t *gpu, int layer, void *weights,
                          size_t bytes, const int32_t *land, int nland,
                          const int32_t *phy2log, const int32_t *pick,
                          const int32_t *off, const int32_t *rep,
                          int round_robin);
/* Low latency's load statistics: synchronises with the engine's stream
 * (never while capturing a graph) and hands each call the device recorded
 * since the last read to each(ctx, layer, counts per logical expert,
 * counts per unit), in call order.  *lost: the calls the device's ring
 * (GPU_LL_STATS_CALLS) no longer held (not read for that many calls).
 * Throughput mode: nothing (its counts come with dispatch_recv). */
#define GPU_LL_STATS_CALLS 1024
typedef void (*gpu_stats_fn)(void *ctx, int layer, const int32_t *ecount,
                             const int32_t *ucount);
epx_status_t gpu_moe_ll_stats(gpu_moe_t *gpu, gpu_stats_fn each, void *ctx,
                              int64_t *lost);
/* Hierarchical engines: bytes put across domains since creation
 * (epx_moe_cross_domain_bytes), counted by the kernels; synchronises with
 * the engine's stream.  Other engines: EPX_ERR_UNSUPPORTED. */
epx_status_t gpu_moe_cross_bytes(gpu_moe_t *gpu, int64_t *dispatch,
                                 int64_t *combine);

#endif /* EPX_CUDA_GPU_H */
