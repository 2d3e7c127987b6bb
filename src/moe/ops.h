/*
 * The engine's executors behind one table.  The public calls
 * (src/moe/api.c) check what every executor needs and go through
 * epx_moe_t.ops; each executor keeps its own protocol and state:
 *   moe_ht_ops   host, throughput mode (dispatch.c, combine.c, ht_poll.c);
 *                its data phases by path (moe_ht_path_t, moe.h): flat, or
 *                hierarchical (hier.c, hier_combine.c)
 *   moe_ll_ops   host, low-latency mode (ll*.c)
 *   moe_gpu_ops  CUDA device ranks (gpu_ops.c over src/cuda)
 */
#ifndef EPX_MOE_OPS_H
#define EPX_MOE_OPS_H

#include "epx.h"

typedef struct moe_ops {
    const char *name;
    epx_status_t (*dispatch_send)(epx_moe_t *m, const epx_dispatch_args_t *a,
                                  epx_handle_t **handle);
    epx_status_t (*dispatch_recv)(epx_moe_t *m, epx_handle_t *h,
                                  epx_recv_t *out);
    epx_status_t (*dispatch_poll)(epx_moe_t *m, epx_handle_t *h,
                                  epx_recv_t *out, uint8_t *ready,
                                  int *num_ready);
    epx_status_t (*combine_send)(epx_moe_t *m, epx_handle_t *h,
                                 const epx_combine_args_t *a);
    epx_status_t (*combine_recv)(epx_moe_t *m, epx_handle_t *h,
                                 epx_tensor_t *out);
    /* Take the handle's call out of flight; the handle is then freed or
     * kept for reuse by the caller of this hook (api.c). */
    void (*release)(epx_moe_t *m, epx_handle_t *h);
    epx_status_t (*check)(epx_moe_t *m, int64_t *dropped);
} moe_ops_t;

extern const moe_ops_t moe_ht_ops, moe_ll_ops, moe_gpu_ops;

#endif /* EPX_MOE_OPS_H */
