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
 * in any order: proto_hier_msg_stage_counts of them, which the gateway
 * learns from the count blocks below (the count matrix does not say it:
 * a token to two members of D is one record).
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
 * ranks of one local index.  Each row carries its source domain and token
 * (proto_hier_crow_*), so a message's rows may come in any order and the
 * receiver lands each at its token; only the counts must be known on the
 * host of both ends.
 *
 * The counts (the device form, src/cuda/README.md "Hierarchical two-hop
 * over NCCL"): source s counts its tokens' chain steps, ch[D][next] (next
 * a later domain, or ND: home), and sends the gateway of each domain D
 * (itself for its own domain) a count block of CB = 2 ND + 1 int32: row D
 * of ch (what that gateway sends on for s) and column D (what it receives
 * for s from each earlier domain).  From the blocks it receives a gateway
 * knows hop 1's records (proto_hier_cb_staged), and its chain messages
 * both ways; the source its finished sums from its own blocks.  Hop 2
 * and the partials need only the count matrix.  Records and chain rows
 * are placed in a message by a counter (any order): the positions that
 * matter (a record's dpos, a row's token) travel with them.
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
    const int64_t li = G % x->L;
    for (int64_t b2 = 0; b2 < b; b2++)
        at += cnt[(b2 * x->L + li) * g->cnt_ints + m];
    *count = cnt[((int64_t)b * x->L + li) * g->cnt_ints + m];
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

/* ---------------------------------------------------- the count blocks */

/* Ints of a count block; the index of ch[D][next] in the block for D's
 * gateway (next -1: home), and of ch[D][next] in the block for next's
 * gateway (its column D). */
PROTO_HD int proto_hier_cb_len(const proto_hier_t *x)
{
    return 2 * x->ND + 1;
}

PROTO_HD int64_t proto_hier_cb_out(const proto_hier_t *x, int D, int next)
{
    return (int64_t)D * proto_hier_cb_len(x) + (next < 0 ? x->ND : next);
}

PROTO_HD int64_t proto_hier_cb_in(const proto_hier_t *x, int next, int D)
{
    return (int64_t)next * proto_hier_cb_len(x) + x->ND + 1 + D;
}

/* A token's chain steps (dst[0..nd) its destinations ascending): for each
 * domain on its chain, that domain and the next (-1: home), into dom[],
 * nxt[] (at most min(nd, ND) of them); their number. */
PROTO_HD int proto_hier_steps(const int32_t *dst, int nd, int L, int *dom,
                              int *nxt)
{
    int n = 0;
    for (int j = 0; j < nd; j++) {
        const int D = dst[j] / L;
        if (j > 0 && dst[j - 1] / L == D)
            continue;
        if (n > 0)
            nxt[n - 1] = D;
        dom[n] = D;
        nxt[n++] = -1;
    }
    return n;
}

/* Source x's count blocks [ND][CB] from its tokens 0..T-1 (dest: its
 * walk's destinations, [T][maxdest], -1 padded). */
PROTO_HD void proto_hier_cb_fill(const proto_geom_t *g, const proto_hier_t *x,
                                 const int32_t *dest, int64_t T, int32_t *cb)
{
    int dom[EPX_MAX_TOPK], nxt[EPX_MAX_TOPK];
    for (int64_t i = 0; i < (int64_t)x->ND * proto_hier_cb_len(x); i++)
        cb[i] = 0;
    for (int64_t t = 0; t < T; t++) {
        const int32_t *dst = dest + t * g->maxdest;
        int nd = 0;
        while (nd < g->maxdest && dst[nd] >= 0)
            nd++;
        const int n = proto_hier_steps(dst, nd, x->L, dom, nxt);
        for (int i = 0; i < n; i++) {
            cb[proto_hier_cb_out(x, dom[i], nxt[i])]++;
            if (nxt[i] >= 0)
                cb[proto_hier_cb_in(x, nxt[i], dom[i])]++;
        }
    }
}

/* At the gateway of domain `dom` (x), the block of source b * L + li
 * (blk: CB ints): its records staged here (hop 1; 0 for the gateway's own
 * domain, whose tokens are its own), the rows of it this gateway sends on
 * to the gateway of domain q (q < ND) or home (q == ND), and those it
 * receives from the gateway of domain p. */
PROTO_HD int64_t proto_hier_cb_staged(const proto_hier_t *x, int b,
                                      const int32_t *blk)
{
    int64_t n = 0;
    for (int q = 0; b != x->dom && q <= x->ND; q++)
        n += blk[q];
    return n;
}

PROTO_HD int64_t proto_hier_cb_send(const int32_t *blk, int q)
{
    return blk[q];
}

PROTO_HD int64_t proto_hier_cb_recv(const proto_hier_t *x, const int32_t *blk,
                                    int p)
{
    return blk[x->ND + 1 + p];
}

/* ------------------------------------------------ the chain's messages
 *
 * A gateway's chain sends in its round, in its send staging: message q
 * (q < ND: to the gateway of domain q; q >= ND: home to source
 * (q - ND) * L + li), rows of proto_hier_crow_bytes; rblk its received
 * blocks [ND][CB] (from source b * L + li at b).  Its rows there, and the
 * first row. */
PROTO_HD int64_t proto_hier_cmsg_n(const proto_hier_t *x, const int32_t *rblk,
                                   int q)
{
    const int CB = proto_hier_cb_len(x);
    if (q >= x->ND)
        return proto_hier_cb_send(rblk + (int64_t)(q - x->ND) * CB, x->ND);
    int64_t n = 0;
    for (int b = 0; b < x->ND; b++)
        n += proto_hier_cb_send(rblk + (int64_t)b * CB, q);
    return n;
}

PROTO_HD int64_t proto_hier_cmsg_at(const proto_hier_t *x,
                                    const int32_t *rblk, int q)
{
    int64_t at = 0;
    for (int q2 = 0; q2 < q; q2++)
        at += proto_hier_cmsg_n(x, rblk, q2);
    return at;
}

/* Rows the gateway receives in round p from the gateway of domain p (its
 * accumulators to go on here). */
PROTO_HD int64_t proto_hier_cmsg_in(const proto_hier_t *x,
                                    const int32_t *rblk, int p)
{
    int64_t n = 0;
    for (int b = 0; b < x->ND; b++)
        n += proto_hier_cb_recv(x, rblk + (int64_t)b * proto_hier_cb_len(x),
                                p);
    return n;
}

/* Finished sums the source receives in round D from the gateway of D
 * (sblk: the blocks it sent, [ND][CB]). */
PROTO_HD int64_t proto_hier_fmsg_in(const proto_hier_t *x,
                                    const int32_t *sblk, int D)
{
    return proto_hier_cb_send(sblk + (int64_t)D * proto_hier_cb_len(x), x->ND);
}

/* A chain row: int32 source domain and token, padded to 16 bytes, then
 * the accumulator (H elements of acc bytes), padded to 16. */
#define PROTO_HIER_CROW_HDR 16
PROTO_HD int64_t proto_hier_crow_bytes(int64_t H, int64_t acc)
{
    return PROTO_HIER_CROW_HDR + proto_round_up(H * acc, 16);
}

/* ------------------------------------------------- hop 2's placements */

/* The message from gateway G to member m in G's send staging (records):
 * after G's messages to the members below m. */
PROTO_HD int64_t proto_hier_fwd_at(const proto_geom_t *g,
                                   const proto_hier_t *x, const int32_t *cnt,
                                   int G, int m)
{
    int64_t at = 0;
    for (int m2 = G / x->L * x->L; m2 < m; m2++)
        at += proto_hier_msg_fwd_total(g, x, cnt, G, m2);
    return at;
}

/* The same message in m's receive staging: after those of the gateways
 * below G. */
PROTO_HD int64_t proto_hier_fwd_rat(const proto_geom_t *g,
                                    const proto_hier_t *x, const int32_t *cnt,
                                    int G, int m)
{
    int64_t at = 0;
    for (int G2 = m / x->L * x->L; G2 < G; G2++)
        at += proto_hier_msg_fwd_total(g, x, cnt, G2, m);
    return at;
}

/* Member m's received record i: its gateway, source and position dpos
 * at m (0: i beyond what m receives). */
PROTO_HD int proto_hier_fwd_locate(const proto_geom_t *g,
                                   const proto_hier_t *x, const int32_t *cnt,
                                   int m, int64_t i, int *src, int32_t *dpos)
{
    for (int G = m / x->L * x->L; G < (m / x->L + 1) * x->L; G++)
        for (int b = 0; b < x->ND; b++) {
            const int64_t n = cnt[(int64_t)(b * x->L + G % x->L) * g->cnt_ints +
                                  m];
            if (i < n) {
                *src = b * x->L + G % x->L;
                *dpos = (int32_t)i;
                return 1;
            }
            i -= n;
        }
    return 0;
}

#endif /* EPX_PROTO_HIER_NCCL_H */
