/*
 * Low latency over NCCL: where the sender stages what a destination's
 * buffer receives from it, and where the receiver puts it back into the
 * low-latency buffer (geom.h proto_ll_layout), so the receive geometry,
 * the words and the combine are the windows backend's.
 *
 * NCCL needs every size on the host, and low latency reads nothing back
 * (a call may be captured in a CUDA graph), so each source sends every
 * destination a block of a size the host knows from the placement alone:
 * the destination's L units at full capacity (cap rows each), and as many
 * entries as can exist there, min(maxT, L * cap) (a token sent to a rank
 * has a kept row there).  One block per peer, so one ncclSend and one
 * ncclRecv per peer and call.  A block, in the receiver's order:
 *
 *   words   [2 + L] int32   status, final word, then the count word of
 *                           each of the destination's units, as the
 *                           windows backend stores them (tag and count):
 *                           so the receiver's waits on tags are met by
 *                           the copy itself
 *   src_tok [L * cap] int32, w [L * cap] fp32   per row (unit j, slot p
 *                           at j * cap + p)
 *   ent_slot [n] int32, ent_rows [n][K] int32   entries in position order
 *   rows    [L * cap][xrow_bytes], scales [L * cap][scale_bytes],
 *   gscale  [L * cap] fp32  the wire's parts
 *
 * each region 16-byte aligned.  The sender's blocks lie back to back in
 * destination order; the receiver's, R blocks of its own size, in
 * source order.  A scatter then puts block s's row (j, p) at the
 * buffer's row (j * R + s) * cap + p, its entry i at s * maxT + i and its
 * words at cw[j * R + s], fw[s], st[s].
 *
 * Combine: the partial of entry i from source s goes into the staging
 * at row i of block s (blocks of an fp32-or-wider row stride, a 16-byte
 * flag word first), and s receives from d block d's first min(maxT,
 * L_d * cap) rows; entry i from d is the i-th token of s sent to d, so
 * its return slot is sendoff[d] + i: the combine scatter copies the
 * mycnt[d] partials there and the windows backend's reduce runs as it is.
 * The flag word carries the comb flag (use + 1, abandoned bit), so the
 * reduce's and the next pack's waits are met by the copy as well.
 */
#ifndef EPX_PROTO_LL_NCCL_H
#define EPX_PROTO_LL_NCCL_H

#include <stdint.h>
#include "proto/geom.h"

#define PROTO_LLN_ST 0         /* words: the source's status */
#define PROTO_LLN_FW 1         /* its final word */
#define PROTO_LLN_CW 2         /* then a count word per unit */

/* A block's regions (byte offsets from its start) and its size. */
typedef struct proto_lln_blk {
    int64_t words, src_tok, w, ent_slot, ent_rows, rows, scales, gscale;
    int64_t bytes;
} proto_lln_blk_t;

/* Entries a destination with L units can receive from one source. */
PROTO_HD int64_t proto_lln_nent(const proto_geom_t *g, int L, int cap)
{
    const int64_t n = (int64_t)L * cap;
    return n < g->maxT ? n : g->maxT;
}

/* The block of a destination with L units. */
PROTO_HD void proto_lln_block(const proto_geom_t *g, int L, int cap,
                              proto_lln_blk_t *b)
{
    const int64_t A = 16, rows = (int64_t)L * cap,
                  n = proto_lln_nent(g, L, cap);
    int64_t o = 0;
    b->words = o;
    o = proto_round_up(o + (int64_t)(PROTO_LLN_CW + L) * 4, A);
    b->src_tok = o;
    o = proto_round_up(o + rows * 4, A);
    b->w = o;
    o = proto_round_up(o + rows * 4, A);
    b->ent_slot = o;
    o = proto_round_up(o + n * 4, A);
    b->ent_rows = o;
    o = proto_round_up(o + n * g->K * 4, A);
    b->rows = o;
    o = proto_round_up(o + rows * g->xrow_bytes, A);
    b->scales = o;
    o = proto_round_up(o + rows * g->scale_bytes, A);
    b->gscale = o;
    o = proto_round_up(o + rows * g->gscale_bytes, A);
    b->bytes = o;
}

/* Offset of destination d's block in the sender's staging (units per
 * rank from first[R + 1]); d = R gives the staging's size. */
PROTO_HD int64_t proto_lln_send_off(const proto_geom_t *g, const int32_t *first,
                                    int cap, int d)
{
    int64_t o = 0;
    proto_lln_blk_t b;
    for (int p = 0; p < d; p++) {
        proto_lln_block(g, first[p + 1] - first[p], cap, &b);
        o += b.bytes;
    }
    return o;
}

/* The largest staging any rank needs, sending or receiving: R blocks of
 * the largest destination (Lmax units). */
PROTO_HD int64_t proto_lln_stage_bytes(const proto_geom_t *g, int cap)
{
    proto_lln_blk_t b;
    proto_lln_block(g, g->Lmax, cap, &b);
    return (int64_t)g->R * b.bytes;
}

/* The buffer's row of block s's row r (unit r / cap, slot r % cap). */
PROTO_HD int64_t proto_lln_row(const proto_geom_t *g, int cap, int s, int64_t r)
{
    return ((r / cap) * g->R + s) * (int64_t)cap + r % cap;
}

/* Block row of a kept choice: unit e of the destination whose units
 * start at first_d, slot p. */
PROTO_HD int64_t proto_lln_brow(int cap, int first_d, int64_t e, int64_t p)
{
    return (e - first_d) * (int64_t)cap + p;
}

/* Combine: the stride of a block (a flag word, then maxT rows) and its
 * bytes sent to a source by a rank of L units. */
PROTO_HD int64_t proto_lln_comb_stride(const proto_geom_t *g)
{
    return 16 + g->maxT * (int64_t)g->row_bytes;
}
PROTO_HD int64_t proto_lln_comb_bytes(const proto_geom_t *g, int L, int cap)
{
    return 16 + proto_lln_nent(g, L, cap) * (int64_t)g->row_bytes;
}

#endif /* EPX_PROTO_LL_NCCL_H */
