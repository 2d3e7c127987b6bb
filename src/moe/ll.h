/*
 * Low-latency mode (EPX_MODE_LOW_LATENCY) of the host executor: internals.
 *
 * One phase, no count exchange.  The window holds B = ll_buffers buffers;
 * call n uses buffer n % B.  Its layout is the protocol's (proto_ll_layout
 * in src/proto/geom.h, the CUDA executor's too): per buffer the header
 * words of each source (PROTO_LL_HDR_*: dispatch status, layer, placement
 * hash, combine status of even and of odd uses of the buffer), the count
 * words [L][R] (tag << 24 | rows the source routed there), the final
 * words [R] (tag << 24 | entries), per row its source token and weight,
 * the entries [R][maxT][3+K] (source, return slot, rows here, the rows in
 * top-k order), the rows in the wire format (wire.h) with their scales
 * and row scales, and the partials coming back; the regions only the
 * device uses are reserved.
 *
 * L is the largest number of local units of any rank (every rank uses the
 * same offsets), cap = ll_capacity.  A word is valid for call n when its
 * tag is ll_tag(n): the tag of a buffer's consecutive uses differ and are
 * never 0 (the window starts zeroed), and a source is never more than one
 * use of a buffer ahead of a reader (see ll.c), so a reader cannot mistake
 * an old word for a new one or the reverse.
 *
 * Signals: DATA b (slot b), one per source and call after all its words;
 * COMB b.p (slot B + 2b + p, p the parity of the buffer's use n / B), one
 * per expert rank and call after its partials, or when it abandons the
 * call.  Both count cumulatively: every call brings exactly R of each to
 * every rank.
 *
 * Why COMB (signal and status word) alternates between two slots: a rank
 * may abandon call n + B (a failed dispatch_send, or a release before its
 * recv) as soon as every rank has combine_sent call n, while a slower
 * rank is still in its combine_recv of call n, waiting for call n's COMB
 * signals and then reading their status words.  With one slot, that early
 * abandon overwrote the status a peer had put for call n (its combine_recv
 * then reported a release that never happened) and its signal could stand
 * in for a call-n signal still on its way (the recv would go on before
 * that peer's partials were there).  Call n + 2B cannot come early the
 * same way: a rank dispatches it only after every rank combined or
 * released call n + B, which the slow rank does only after its
 * combine_recv of call n.
 */
#ifndef EPX_MOE_LL_H
#define EPX_MOE_LL_H

#include "moe/moe.h"

enum { LL_SENT = 1, LL_RECEIVED, LL_COMBINING, LL_DONE };
#define LL_COUNT_MASK ((uint32_t)PROTO_LL_MASK)   /* proto/geom.h */
#define LL_MAX_COUNT ((int64_t)LL_COUNT_MASK)
/* Combine status of a rank that released a call without combining it. */
#define LL_ABANDONED ((int32_t)EPX_ERR_STATE)

typedef struct moe_ll {
    int B;                     /* buffers */
    int cap;                   /* rows per (local unit, source) */
    int L;                     /* largest local unit count of any rank */
    int drop;                  /* EPX_MOE_LL_DROP */
    proto_ll_t off;            /* the window (proto/geom.h): regions within
                                  a buffer, buffer b at ll_at */
    uint64_t n_calls;          /* calls dispatched (failed ones included) */
    epx_handle_t **ring;       /* [B] outstanding call of each buffer */
    int32_t *src_rank;         /* [B][L*R*cap] recv output, kept locally */
    int32_t *hw;               /* [B][L*R] per range: rows [hw, cap) are
                                  padding in src_rank, src_tok and weight
                                  already, rows below hw have src_rank s;
                                  -1: unknown (rewrite the whole range) */
    int32_t *local_exp;        /* [B][L] recv output: logical experts */
    /* send-side scratch */
    int32_t *cnt;              /* [U] rows routed per unit (this call) */
    int32_t *boff;             /* [U+1] buckets: this call's rows by unit */
    int32_t *bucket;           /* [maxT*K] t*K+k, by unit then token */
    int32_t *tok;              /* [cap] src_tok of one range */
    float *wt;                 /* [cap] weights of one range */
    int32_t *ents;             /* [maxT][3+K] entries for one destination */
    int32_t *fill;             /* [R] entries per destination */
    /* quantized wire: this call's tokens packed once (whatever their
     * fan-out), then put from here to every range they go to */
    char *sq, *ss;             /* [maxT] rows of data, of scales */
    float *sg;                 /* [maxT] row scales (NVFP4) */
    int64_t unchecked_drops;   /* rows dropped here since epx_moe_check
                                  last asked (as the GPU executor counts) */
} moe_ll_t;

/* Per handle: the call and what its rows became. */
typedef struct ll_call {
    uint64_t call;
    int state;                 /* LL_SENT .. LL_DONE; 0 no call */
    int failed;                /* dispatch_recv/poll saw a peer's error */
    int layer;
    uint32_t place;
    int32_t *pos;              /* [maxT*K] slot in its range, -1 none/dropped */
    uint8_t *done;             /* [L] expert finalized by recv/poll */
    int64_t dropped;           /* rows this rank did not receive */
} ll_call_t;

static inline int ll_tag(const moe_ll_t *l, uint64_t call)
{
    return (int)((call / (uint64_t)l->B) % 255u) + 1;
}
static inline int ll_buf(const moe_ll_t *l, uint64_t call)
{
    return (int)(call % (uint64_t)l->B);
}
/* DATA signal target of the call's buffer once `call` is complete. */
static inline uint64_t ll_target(const epx_moe_t *m, uint64_t call)
{
    return (uint64_t)m->R * (call / (uint64_t)m->ll->B + 1);
}
/* The call's COMB signal slot, its target once every rank combined or
 * released the call, and the header word of its combine status. */
static inline int ll_comb_slot(const moe_ll_t *l, uint64_t call)
{
    return l->B + 2 * ll_buf(l, call) + (int)((call / (uint64_t)l->B) & 1);
}
static inline uint64_t ll_comb_target(const epx_moe_t *m, uint64_t call)
{
    return (uint64_t)m->R * (call / (uint64_t)m->ll->B / 2 + 1);
}
static inline int ll_comb_word(const moe_ll_t *l, uint64_t call)
{
    return PROTO_LL_HDR_COMB + (int)((call / (uint64_t)l->B) & 1);
}
static inline size_t ll_at(const moe_ll_t *l, uint64_t call, int64_t off)
{
    return (size_t)proto_ll_at(&l->off, ll_buf(l, call), off);
}

/* ll.c */
epx_status_t ll_check_params(const epx_moe_params_t *p);
epx_status_t ll_init(epx_moe_t *m);          /* collective; creates m->win */
void ll_drain(epx_moe_t *m);
void ll_free(epx_moe_t *m);
void ll_call_free(ll_call_t *c);
ll_call_t *ll_call_get(epx_moe_t *m, epx_handle_t *h);
epx_status_t ll_abandon(epx_moe_t *m, uint64_t call);
void ll_release(epx_moe_t *m, epx_handle_t *h);
epx_status_t ll_check(epx_moe_t *m, int64_t *dropped);
void ll_forget_ranges(epx_moe_t *m, uint64_t call, const uint8_t *done);
/* ll_dispatch.c */
epx_status_t ll_dispatch_send(epx_moe_t *m, const epx_dispatch_args_t *a,
                              epx_handle_t **handle);
epx_status_t ll_dispatch_recv(epx_moe_t *m, epx_handle_t *h, epx_recv_t *out);
epx_status_t ll_dispatch_poll(epx_moe_t *m, epx_handle_t *h, epx_recv_t *out,
                              uint8_t *ready, int *num_ready);
/* ll_combine.c */
epx_status_t ll_combine_send(epx_moe_t *m, epx_handle_t *h,
                             const epx_combine_args_t *a);
epx_status_t ll_combine_recv(epx_moe_t *m, epx_handle_t *h, epx_tensor_t *out);

#endif /* EPX_MOE_LL_H */
