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

/* ---------------------------------- the device form's stagings and ops
 *
 * What src/cuda/hier.c posts, as plain lists so the host can check them
 * (tests/proto/test_hier_core.c): NCCL hangs where, within a group, A's
 * sends to B and B's receives from A differ in number or size.  An op
 * names a region and a byte offset in it; hier.c maps the region to a
 * device pointer: the stagings, one allocation laid out by
 * proto_hier_stg_layout, and two of the window's regions (hier.h's
 * proto_hier_layout), which hop 1 and the partials receive into. */
enum {
    PROTO_HIER_REG_CBS,     /* count blocks sent [ND][CB] int32 */
    PROTO_HIER_REG_CBR,     /* received [ND][CB], right after them */
    PROTO_HIER_REG_CCOUNT,  /* the kernels' counters [2 ND] int32 */
    PROTO_HIER_REG_SSTAGE,  /* hop 1's records sent [ND][maxT] */
    PROTO_HIER_REG_FSTAGE,  /* hop 2's records sent [ND * P] */
    PROTO_HIER_REG_RFWD,    /* hop 2's records received [ents] */
    PROTO_HIER_REG_PSTAGE,  /* the partials sent [ents] rows */
    PROTO_HIER_REG_CSEND,   /* chain rows sent [ND * maxT] */
    PROTO_HIER_REG_RCHAIN,  /* chain rows received [ND * maxT] */
    PROTO_HIER_REG_RFINAL,  /* finished sums received [maxT] */
    PROTO_HIER_REG_NSTG,    /* the stagings' number; then the window's: */
    PROTO_HIER_REG_WSTAGE = PROTO_HIER_REG_NSTG,  /* w.stage: hop 1's */
    PROTO_HIER_REG_WPART,   /* w.part: the partials' */
    PROTO_HIER_REG_N
};

/* off: a staging's offset in the allocation (256-aligned, but the
 * received blocks right after the sent, so one read-back copies both),
 * a window region's in the window; size: its bytes.  The read-back: the
 * bytes [rb_off, rb_off + rb_bytes) of the stagings, in which the sent
 * and received blocks start at rb_sent and rb_recv. */
typedef struct proto_hier_stg {
    int64_t off[PROTO_HIER_REG_N], size[PROTO_HIER_REG_N];
    int64_t total;
    int64_t rb_off, rb_bytes, rb_sent, rb_recv;
    int64_t recb, crow, row, maxT, P;   /* sizes the op lists go by */
} proto_hier_stg_t;

typedef struct proto_hier_op {
    int peer, recv, reg;                /* recv 0: a send */
    int64_t off, bytes;
} proto_hier_op_t;

/* w: the window's regions (proto_hier_layout), rec_bytes its records'. */
PROTO_HD void proto_hier_stg_layout(proto_hier_stg_t *l, const proto_geom_t *g,
                                    const proto_hier_t *x,
                                    const proto_hier_win_t *w,
                                    int64_t rec_bytes)
{
    const int64_t ND = x->ND, blk = ND * proto_hier_cb_len(x) * 4;
    l->recb = rec_bytes;
    l->crow = proto_hier_crow_bytes(g->H, proto_hier_acc_size(g->esize));
    l->row = g->row_bytes;
    l->maxT = g->maxT;
    l->P = w->P;
    l->size[PROTO_HIER_REG_CBS] = blk;
    l->size[PROTO_HIER_REG_CBR] = blk;
    l->size[PROTO_HIER_REG_CCOUNT] = 2 * ND * 4;
    l->size[PROTO_HIER_REG_SSTAGE] = ND * g->maxT * rec_bytes;
    l->size[PROTO_HIER_REG_FSTAGE] = ND * w->P * rec_bytes;
    l->size[PROTO_HIER_REG_RFWD] = g->ents * rec_bytes;
    l->size[PROTO_HIER_REG_PSTAGE] = g->ents * g->row_bytes;
    l->size[PROTO_HIER_REG_CSEND] = ND * g->maxT * l->crow;
    l->size[PROTO_HIER_REG_RCHAIN] = ND * g->maxT * l->crow;
    l->size[PROTO_HIER_REG_RFINAL] = g->maxT * l->crow;
    int64_t at = 0;
    for (int i = 0; i < PROTO_HIER_REG_NSTG; i++) {
        l->off[i] = at;
        at += l->size[i];
        if (i != PROTO_HIER_REG_CBS)
            at = proto_round_up(at, 256);
    }
    l->total = at;
    l->off[PROTO_HIER_REG_WSTAGE] = w->stage;
    l->size[PROTO_HIER_REG_WSTAGE] = ND * g->maxT * rec_bytes;
    l->off[PROTO_HIER_REG_WPART] = w->part;
    l->size[PROTO_HIER_REG_WPART] = ND * w->P * g->row_bytes;
    l->rb_off = l->off[PROTO_HIER_REG_CBS];
    l->rb_bytes = l->off[PROTO_HIER_REG_CBR] + blk - l->rb_off;
    l->rb_sent = l->off[PROTO_HIER_REG_CBS] - l->rb_off;
    l->rb_recv = l->off[PROTO_HIER_REG_CBR] - l->rb_off;
}

/* Ops one group may hold at the most (the partials': 2 per member and
 * source domain). */
PROTO_HD int proto_hier_ops_max(const proto_hier_t *x)
{
    return 2 * x->L * x->ND + 2 * x->ND + 2 * x->L + 4;
}

/* An op of bytes > 0 (none of an empty message, on both ends alike). */
PROTO_HD void proto_hier_op_add(proto_hier_op_t *op, int *n, int peer,
                                int recv, int reg, int64_t off, int64_t bytes)
{
    if (bytes > 0) {
        proto_hier_op_t o = { peer, recv, reg, off, bytes };
        op[(*n)++] = o;
    }
}

/* The count blocks' group: block D to domain D's rank of this local
 * index, its block for us back. */
PROTO_HD int proto_hier_ops_counts(const proto_hier_stg_t *l,
                                   const proto_hier_t *x, proto_hier_op_t *op)
{
    const int64_t cb = (int64_t)proto_hier_cb_len(x) * 4;
    int n = 0;
    (void)l;
    for (int D = 0; D < x->ND; D++) {
        proto_hier_op_add(op, &n, D * x->L + x->li, 0, PROTO_HIER_REG_CBS,
                          D * cb, cb);
        proto_hier_op_add(op, &n, D * x->L + x->li, 1, PROTO_HIER_REG_CBR,
                          D * cb, cb);
    }
    return n;
}

/* Hop 1's group (sblk, rblk: the blocks sent and received, read back):
 * the records staged for each remote domain to its gateway, that
 * gateway's records here at its source domain's place. */
PROTO_HD int proto_hier_ops_hop1(const proto_hier_stg_t *l,
                                 const proto_geom_t *g, const proto_hier_t *x,
                                 const int32_t *sblk, const int32_t *rblk,
                                 proto_hier_op_t *op)
{
    const int L = x->L, CB = proto_hier_cb_len(x);
    int n = 0;
    for (int D = 0; D < x->ND; D++) {
        if (D == x->dom)
            continue;
        proto_hier_t gx;
        proto_hier_shape(&gx, x->R, L, g->K, D * L + x->li);
        const int64_t at = D * l->maxT * l->recb;
        proto_hier_op_add(op, &n, D * L + x->li, 0, PROTO_HIER_REG_SSTAGE, at,
                          proto_hier_cb_staged(&gx, x->dom,
                                               sblk + (int64_t)D * CB) *
                              l->recb);
        proto_hier_op_add(op, &n, D * L + x->li, 1, PROTO_HIER_REG_WSTAGE, at,
                          proto_hier_cb_staged(x, D, rblk + (int64_t)D * CB) *
                              l->recb);
    }
    return n;
}

/* Hop 2's group (cnt: the count matrix): to each member of the domain
 * its message, from each gateway of it its message here. */
PROTO_HD int proto_hier_ops_hop2(const proto_hier_stg_t *l,
                                 const proto_geom_t *g, const proto_hier_t *x,
                                 const int32_t *cnt, proto_hier_op_t *op)
{
    const int me = g->rank, m0 = x->dom * x->L;
    int n = 0;
    for (int m = m0; m < m0 + x->L; m++) {
        proto_hier_op_add(op, &n, m, 0, PROTO_HIER_REG_FSTAGE,
                          proto_hier_fwd_at(g, x, cnt, me, m) * l->recb,
                          proto_hier_msg_fwd_total(g, x, cnt, me, m) *
                              l->recb);
        proto_hier_op_add(op, &n, m, 1, PROTO_HIER_REG_RFWD,
                          proto_hier_fwd_rat(g, x, cnt, m, me) * l->recb,
                          proto_hier_msg_fwd_total(g, x, cnt, m, me) *
                              l->recb);
    }
    return n;
}

/* The partials' group, hop 2 reversed: as member each segment (gateway
 * p, source domain b) of what p sent here, from where it landed; as
 * gateway member p's segment into part at the slot of its first row. */
PROTO_HD int proto_hier_ops_parts(const proto_hier_stg_t *l,
                                  const proto_geom_t *g, const proto_hier_t *x,
                                  const int32_t *cnt, proto_hier_op_t *op)
{
    const int me = g->rank, L = x->L, m0 = x->dom * L;
    int n = 0;
    for (int p = m0; p < m0 + L; p++)
        for (int b = 0; b < x->ND; b++) {
            int64_t ns, nr;
            const int64_t at = proto_hier_fwd_rat(g, x, cnt, p, me) +
                               proto_hier_msg_seg(g, x, cnt, p, me, b, &ns);
            proto_hier_op_add(op, &n, p, 0, PROTO_HIER_REG_PSTAGE,
                              at * l->row, ns * l->row);
            proto_hier_msg_seg(g, x, cnt, me, p, b, &nr);
            proto_hier_op_add(op, &n, p, 1, PROTO_HIER_REG_WPART,
                              proto_hier_slot(g, x, cnt, l->P,
                                              b * L + x->li, p, 0) * l->row,
                              nr * l->row);
        }
    return n;
}

/* Chain rows received in the rounds before D (accumulators: from the
 * domains before this one), and finished sums; where round D's land. */
PROTO_HD int64_t proto_hier_chain_before(const proto_hier_t *x,
                                         const int32_t *rblk, int D)
{
    int64_t n = 0;
    for (int p = 0; p < D && p < x->dom; p++)
        n += proto_hier_cmsg_in(x, rblk, p);
    return n;
}

PROTO_HD int64_t proto_hier_final_before(const proto_hier_t *x,
                                         const int32_t *sblk, int D)
{
    int64_t n = 0;
    for (int p = 0; p < D; p++)
        n += proto_hier_fmsg_in(x, sblk, p);
    return n;
}

/* Chain round D's group: in this domain's round its messages (to each
 * later domain's gateway, then home to each source, in message order);
 * every round what comes here from domain D's rank of this local index,
 * the accumulators first, then the finished sums. */
PROTO_HD int proto_hier_ops_chain(const proto_hier_stg_t *l,
                                  const proto_hier_t *x, const int32_t *sblk,
                                  const int32_t *rblk, int D,
                                  proto_hier_op_t *op)
{
    const int ND = x->ND, L = x->L, li = x->li;
    int n = 0;
    for (int q = 0; D == x->dom && q < 2 * ND; q++)
        proto_hier_op_add(op, &n, (q < ND ? q : q - ND) * L + li, 0,
                          PROTO_HIER_REG_CSEND,
                          proto_hier_cmsg_at(x, rblk, q) * l->crow,
                          proto_hier_cmsg_n(x, rblk, q) * l->crow);
    const int64_t nc = D < x->dom ? proto_hier_cmsg_in(x, rblk, D) : 0;
    proto_hier_op_add(op, &n, D * L + li, 1, PROTO_HIER_REG_RCHAIN,
                      proto_hier_chain_before(x, rblk, D) * l->crow,
                      nc * l->crow);
    proto_hier_op_add(op, &n, D * L + li, 1, PROTO_HIER_REG_RFINAL,
                      proto_hier_final_before(x, sblk, D) * l->crow,
                      proto_hier_fmsg_in(x, sblk, D) * l->crow);
    return n;
}

#endif /* EPX_PROTO_HIER_NCCL_H */
