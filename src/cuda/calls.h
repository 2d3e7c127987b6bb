/*
 * A device rank's calls in flight, kept on the host: which buffer each
 * uses, its state, and the order the API allows (include/epx.h).  Plain
 * C with no CUDA, so the rules are tested on any host
 * (tests/cuda/test_gpu_calls); engine.c queues the kernels they allow.
 *
 * Throughput mode: one buffer.  A dispatch while the previous call is
 * received but not combined abandons it (nothing to undo on the device);
 * while it is sent or combining, EPX_ERR_STATE.
 * Low latency: B buffers, call n in buffer n % B.  A dispatch whose
 * buffer still holds an outstanding call (dispatched, neither combined
 * nor released) gets EPX_ERR_STATE; calls are combined in the order they
 * were dispatched, one combine at a time (a later call combined first
 * would have the ranks' kernels wait on each other in opposite orders).
 * Releasing a call not yet combined abandons it (GPU_ABANDON: the
 * device marks it so peers do not wait); one released between its
 * combine's send and recv still needs its reduce (GPU_FINISH), which
 * advances the buffer's use on the device.
 * A refused step changes nothing.
 */
#ifndef EPX_CUDA_CALLS_H
#define EPX_CUDA_CALLS_H

#include <stdint.h>
#include "epx.h"

#define GPU_CALLS_MAX 64

enum { GPU_CALL_FREE = 0, GPU_CALL_SENT, GPU_CALL_RECEIVED,
       GPU_CALL_COMBINING };
/* What a release leaves the device to do. */
enum { GPU_NOTHING = 0, GPU_ABANDON, GPU_FINISH };

typedef struct gpu_call {
    uint64_t n;                /* call number */
    int state;
    int64_t T;                 /* tokens dispatched */
    int failed;                /* low latency: the failure a poll found
                                  (0: none); recv and poll return it */
} gpu_call_t;

typedef struct gpu_calls {
    int B;                     /* buffers */
    int ll;                    /* low-latency rules */
    uint64_t next;             /* number of the next dispatch */
    int combining;             /* buffer being combined, -1 */
    gpu_call_t slot[GPU_CALLS_MAX];
} gpu_calls_t;

void gpu_calls_init(gpu_calls_t *c, int ll, int buffers);
/* A dispatch of T tokens: its number and buffer. */
epx_status_t gpu_calls_send(gpu_calls_t *c, int64_t T, uint64_t *n, int *b);
/* The buffer of a call that may be received (sent, or received before:
 * recv may be repeated), now received. */
epx_status_t gpu_calls_recv(gpu_calls_t *c, uint64_t n, int *b);
/* Call n may be polled (sent, or received: between its dispatch and its
 * combine): its buffer, and whether it was received.  Changes nothing.
 * A call a poll found failed (gpu_calls_fail) returns that failure here
 * and from gpu_calls_recv, as the host executor's recv and poll do. */
epx_status_t gpu_calls_poll(const gpu_calls_t *c, uint64_t n, int *b,
                            int *received);
/* Throughput readiness of call `seq` from what its recv kernel published
 * (pub, host-mapped, kern_launch.h EPXK_PUB_*; L local units): ready[j]
 * 1 where unit j's rows all arrived; counts [2L] the units' counts and
 * first rows, *rows the rows received and *agree the call's agreement,
 * once the kernel published them, else zeros (nothing ready).  Returns
 * the units ready.  Reads only (acquire), never waits. */
int gpu_poll_read(const int64_t *pub, int L, uint64_t seq, uint8_t *ready,
                  int64_t *counts, int64_t *rows, int64_t *agree);
/* Low latency: call n failed (st, from a poll); its recv and polls say
 * so from now on, and its combine is refused. */
void gpu_calls_fail(gpu_calls_t *c, uint64_t n, epx_status_t st);
/* Low-latency readiness of the call with id `id` (its number + 1) from
 * what the recv kernel published for its buffer (pub, host-mapped,
 * kern_launch.h EPXK_LLPUB_*; L local units): *fail the call's failure
 * (0: none found yet; then nothing is ready); else ready[j] 1 where unit
 * j's rows all arrived, counts[j] its rows there (0 where not ready).
 * Returns the units ready.  Reads only (acquire), never waits. */
int gpu_ll_poll_read(const int64_t *pub, int L, uint64_t id, uint8_t *ready,
                     int64_t *counts, int32_t *fail);
/* Call n's combine may start: its buffer and tokens. */
epx_status_t gpu_calls_combine_send(gpu_calls_t *c, uint64_t n, int *b,
                                    int64_t *T);
/* Call n's combine may complete: its buffer; the call is then done. */
epx_status_t gpu_calls_combine_recv(gpu_calls_t *c, uint64_t n, int *b);
/* Release of call n (any state; unknown or done calls: GPU_NOTHING):
 * the call is done, and what the device still has to do for it, in
 * buffer *b. */
int gpu_calls_release(gpu_calls_t *c, uint64_t n, int *b);
/* Outstanding calls (dispatched, not done). */
int gpu_calls_outstanding(const gpu_calls_t *c);

#endif /* EPX_CUDA_CALLS_H */
