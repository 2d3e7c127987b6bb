/*
 * Hierarchical two-hop (proto/hier.h) as point-to-point messages, for a
 * backend whose exchanges are grouped sends and receives of sizes both
 * sides must know on the host (NCCL): what each message holds, in which
 * order, and how many of it, so every pairing is the same on both ends.
 * The positions a gateway or member writes are hier.h's; this adds only
 * the messages' segments.
 *
 * Dispatch, hop 1: source s sends the gateway of each remote destination
 * domain D its records of the tokens staged there (proto_hier_stage_dom),
 * in token order: proto_hier_msg_stage_counts of them, which the gateway
 * learns from a count exchange (the count matrix does not say it: a token
 * to two members of D is one record).
 *
 * Dispatch, hop 2: gateway G sends each member m of its domain (itself
 * included) one message of segments, one per source domain b ascending:
 * the records of source b * L + G % L (G's own tokens for b == G's
 * domain) with a destination at m, each at its position dpos there.  The
 * segment's size is that source's count to m from the count matrix, so
 * both ends know it without an exchange (proto_hier_msg_seg).
 *
 * Combine, partials: member m sends G the reverse message, the same
 * segments, its partial of each entry where hop 2 put the record; G puts
 * it at proto_hier_slot.
 *
 * Combine, chain: in round D (domains ascending) each gateway of D adds
 * its terms and sends each token's accumulator to the gateway of its next
 * destination domain, or to the source after the last: messages between
 * ranks of one local index, per source domain b ascending, the tokens in
 * token order.  The receiver counts the same tokens from its records
 * (proto_hier_chain_prev), the source from its own destinations.
 *
 * Plain C (PROTO_HD); checked over simulated ranks against the windows
 * path and the reference by tests/proto/test_hier_core.c.
 */
#ifndef EPX_PROTO_HIER_NCCL_H
#define EPX_PROTO_HIER_NCCL_H

#include <stdint.h>
#include "proto/proto.h"
#include "proto/hier.h"

/* Hop 1: how many of source `dom`'s tokens 0..T-1 (dest: its walk's
 * destinations, [T][maxdest], -1 padded) are staged per domain, into
 * n[ND] (0 for its own domain). */
PROTO_HD void proto_hier_msg_stage_counts(const proto_geom_t *g,
                                          const proto_hier_t *x,
                                          const int32_t *dest, int64_t T,
                                          int64_t *n)
{
    for (int D = 0; D < x->ND; D++)
        n[D] = 0;
    for (int64_t t = 0; t < T; t++) {
        const int32_t *dst = dest + t * g->maxdest;
        for (int j = 0; j < g->maxdest && dst[j] >= 0; j++) {
            const int D = proto_hier_stage_dom(dst, j, x->L, x->dom);
            if (D >= 0)
                n[D]++;
        }
    }
}

/* Hop 2 (and the partials back): in the message between gateway G and
 * member m of its domain, the first record of source domain b's
 * segment, its size into *count.  Record dpos of the segment is the
 * token of source b * L + G % L at position dpos at m. */
PROTO_HD int64_t proto_hier_msg_seg(const proto_geom_t *g,
                                    const proto_hier_t *x, const int32_t *cnt,
                                    int G, int m, int b, int64_t *count)
{
    int64_t at = 0;
    for (int b2 = 0; b2 < b; b2++)
        at += cnt[(int64_t)(b2 * x->L + G % x->L) * g->cnt_ints + m];
    *count = cnt[(int64_t)(b * x->L + G % x->L) * g->cnt_ints + m];
    return at;
}

/* The whole message between G and m, in records (rows). */
PROTO_HD int64_t proto_hier_msg_fwd_total(const proto_geom_t *g,
                                          const proto_hier_t *x,
                                          const int32_t *cnt, int G, int m)
{
    int64_t n;
    const int64_t at = proto_hier_msg_seg(g, x, cnt, G, m, x->ND - 1, &n);
    return at + n;
}

/* The chain: the domain before D on a token's chain (dst[0..nd)
 * ascending), -1 where the sum starts at D, -2 where D is not on it. */
PROTO_HD int proto_hier_chain_prev(const int32_t *dst, int nd, int L, int D)
{
    int prev = -1;
    for (int j = 0; j < nd; j++) {
        const int Dj = dst[j] / L;
        if (Dj == D)
            return prev;
        if (Dj > D)
            break;
        prev = Dj;
    }
    return -2;
}

/* The domain whose gateway hands the token's finished sum to its source:
 * its last destination's (-1: none). */
PROTO_HD int proto_hier_chain_last(const int32_t *dst, int nd, int L)
{
    return nd > 0 ? dst[nd - 1] / L : -1;
}

#endif /* EPX_PROTO_HIER_NCCL_H */
