/*
 * Weight migration's plan as both executors see it: which of this rank's
 * slots go to which rank's staging, which it receives, which it lands.
 * Plain C, no CUDA, no engine: src/balance/migrate.c computes it (the
 * one plan, from the old and new placements), the host path moves it
 * with window puts, the GPU executor (src/cuda/migrate.c) with device
 * copies or NCCL send/recv.  Slots here are local slot numbers (0 ..
 * spr-1 on their rank); bytes are the caller's (slot * bytes_per_slot).
 */
#ifndef EPX_MOE_MIG_H
#define EPX_MOE_MIG_H

#include <stdint.h>
#include "epx.h"

/* One transfer of one slot's weights.  A send reads this rank's local
 * slot `slot` and writes the staging slot `stage` of rank `peer` (this
 * rank too: a local copy).  A receive (peer != this rank) is the other
 * end of the peer's send, into this rank's staging slot `stage`; the
 * windows backends ignore it (the sender writes), NCCL posts it. */
typedef struct moe_mig_xfer {
    int32_t peer;
    int32_t recv;      /* 0 send, 1 receive */
    int32_t slot;      /* send: this rank's local slot read; receive: -1 */
    int32_t stage;     /* the destination's local slot */
} moe_mig_xfer_t;

/* This rank's part of one migration.  The transfers come in ascending
 * order of the destination slot (global number), so the sends from s to
 * d and the receives at d from s pair up in order (NCCL matches them so). */
typedef struct moe_mig_plan {
    int n;                     /* transfers in x */
    moe_mig_xfer_t *x;         /* [U + spr] at most */
    int nland;                 /* local slots whose expert changes */
    int32_t *land;             /* [spr] those slots, ascending: staging
                                  slot j lands into weights slot j */
    epx_rebalance_stats_t s;   /* this rank's counts (epx.h) */
} moe_mig_plan_t;

/* src/balance/migrate.c.  The old slot that feeds new slot u with
 * expert e: a replica on u's own rank first, else old replica number
 * (u mod count); -1 when e has none.  R ranks of U / R slots. */
int moe_mig_source(int U, int R, const int32_t *old, int u, int e);
/* Rank `me`'s plan from `old` to `next` ([U] each); plan's arrays are
 * allocated here (moe_mig_plan_free).  EPX_ERR_INVALID when a changed
 * slot's new expert has no old replica. */
epx_status_t moe_mig_plan(int U, int R, int me, const int32_t *old,
                          const int32_t *next, moe_mig_plan_t *plan);
void moe_mig_plan_free(moe_mig_plan_t *plan);

#endif /* EPX_MOE_MIG_H */
