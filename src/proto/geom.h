/*
 * The window geometry of the protocol: the one definition of where every
 * region of a rank's window lies, in throughput mode (proto_geom_layout)
 * and in low-latency mode (proto_ll_layout).  The host executor
 * (src/moe/engine.c, src/moe/ll.c) and the CUDA executor
 * (src/cuda/engine.c, src/cuda/kernels.cu) lay their windows out with
 * these functions and nothing else; tests/proto/test_geom checks the
 * regions and that a host engine's window is this one.
 *
 * One window serves both executors, so a few regions are used by one
 * executor only and reserved (never touched) by the other: the host's
 * combine status, completion and progress words, its entries, its
 * low-latency headers; the device's flags and its split entries.  They
 * are a few words per rank or an int32 per entry, next to rows of
 * kilobytes; on the host they cost nothing (windows are sparse), on the
 * device a fraction of a per cent.  Keeping them in both windows is what
 * makes every shared region's offset the same in both, whatever the
 * executor, with no executor switch inside the layout.
 *
 * Throughput window of each rank (byte offsets in proto_geom_t, each
 * region PROTO_ALIGN aligned; the NCCL backend's staging and receive
 * buffers use the same layout):
 *   flags  [PROTO_NFLAG][R] uint64   device: per source, sequence of the
 *                                    last call whose data / combine rows
 *                                    it finished (host: reserved)
 *   cnt    [2][R][cnt_ints] int32    the count block of each source, by
 *                                    call parity: PROTO_CNT_HDR header
 *                                    words, tokens to each rank [R],
 *                                    (token, k) pairs per unit [E], then
 *                                    the sequence word (call + 1),
 *                                    written after the rest
 *   status [2][R] int32              host: combine status per source, by
 *                                    parity (device: [0][s] the last call
 *                                    whose pull combine source s finished,
 *                                    fused kernel set only; [1] reserved)
 *   done   [R] int32                 host: data phase (call + 1) whose
 *                                    rows the source finished writing
 *                                    here (epx_dispatch_poll)
 *   progress [PROTO_PROGRESS_BYTES]  host: where this rank is (progress.c)
 *   entries [ents][ent_ints] int32   host: one per received token: source,
 *                                    return slot, rows here, the rows
 *   src_rank, src_token [xrows] int32   per received row
 *   ret_slot [ents] int32            device: per entry its return slot
 *   ent_src, ent_rows [ents], [ents][K] int32   device, expert-major: an
 *                                    entry's source and its rows here in
 *                                    top-k order (-1 after the last)
 *   idx    [ents][K]                 token-major: local expert id (-1)
 *   w      token-major [ents][K] weight (0); expert-major [xrows]
 *   rows   [xrows][xrow_bytes]       received tokens: token-major one per
 *                                    entry, source-major; expert-major one
 *                                    per (token, local expert), segments
 *                                    of `align` rows per local expert;
 *                                    the wire format's data part
 *   scales [xrows][scale_bytes]      quantized wire: the rows' block scales
 *   gscale [xrows] fp32              NVFP4: the rows' own scales
 *   comb   [maxT*maxdest][row_bytes] partials coming back to this rank, at
 *                                    the slot the token had in its source's
 *                                    packed order
 * The hierarchical mode appends its forwarding regions after `total`
 * (proto/hier.h proto_hier_layout, on both executors).
 *
 * Plain C compiled by the C compiler and by nvcc; nothing here touches
 * memory other than through its arguments.
 */
#ifndef EPX_PROTO_GEOM_H
#define EPX_PROTO_GEOM_H

#include <stdint.h>
#include "epx.h"
#include "proto/quant_codec.h"

#if defined(__CUDACC__)
#define PROTO_HD static __host__ __device__ __forceinline__
#else
#define PROTO_HD static inline
#endif

/* Every region starts on a multiple of this (16-byte vector rows, and
 * the device's coalescing); a low-latency buffer on a whole page, so
 * that pages are committed buffer by buffer. */
#define PROTO_ALIGN 256
#define PROTO_LL_BUF_ALIGN 4096
/* The host's progress record (src/moe/moe.h, MOE_PR_*: 3 int64). */
#define PROTO_PROGRESS_BYTES 64

enum { PROTO_FLAG_DATA = 0, PROTO_FLAG_COMB = 1, PROTO_NFLAG = 2 };

/* Header words of a count block: the sender's dispatch status, whether
 * the call is cached, the call of the handle it reuses, its layer and
 * placement hash (the host's; the device writes the first three only in
 * a cached call, tagged with the call's sequence word: proto.h
 * proto_cached_agree). */
enum { PROTO_CNT_STATUS = 0, PROTO_CNT_CACHED = 1, PROTO_CNT_HANDLE = 2,
       PROTO_CNT_LAYER = 3, PROTO_CNT_PLACE = 4, PROTO_CNT_HDR = 5 };

/* Header words per source of a low-latency buffer (the host's): dispatch
 * status, layer, placement hash, and the combine status of even and of
 * odd uses of the buffer (src/moe/ll.h). */
enum { PROTO_LL_HDR_STATUS = 0, PROTO_LL_HDR_LAYER = 1,
       PROTO_LL_HDR_PLACE = 2, PROTO_LL_HDR_COMB = 3 /* and 4 */,
       PROTO_LL_HDR = 5 };

typedef struct proto_geom {
    /* the shape (proto_geom_shape) */
    int R, rank;
    int E;                    /* units a token is routed to: the experts,
                                 or the slots (num_slots > 0) */
    int K, H;
    int esize;                /* 2 (bf16), 4 (fp32), 8 (fp64) */
    int wire;                 /* epx_wire_t of dispatch */
    int64_t maxT;             /* largest max_tokens_per_rank of any rank */
    int em;                   /* expert-major layout */
    int align;                /* expert-major segment alignment (rows) */
    int Lmax;                 /* most local units of any rank */
    /* derived (proto_geom_layout) */
    int maxdest;              /* min(K, R): destinations of a token at most */
    int cnt_ints;             /* PROTO_CNT_HDR + R + E + 1 */
    int ent_ints;             /* 3 + K: a host entry */
    int64_t ents;             /* entries: R * maxT */
    int64_t xrows;            /* received rows at most */
    int64_t row_bytes;        /* H * esize: rows are contiguous, as
                                 epx_recv_t.x describes them (partials) */
    int qblock;               /* quantized: elements per scale, else 0 */
    int64_t xrow_bytes;       /* a received row's data: row_bytes, H fp8
                                 codes, or ceil(H / 2) e2m1 bytes */
    int64_t scale_bytes;      /* a row's scales */
    int64_t gscale_bytes;     /* 4 (NVFP4), else 0 */
    int64_t off_flags, off_cnt, off_status, off_done, off_progress,
            off_entries, off_src_rank, off_src_token, off_ret_slot,
            off_ent_src, off_ent_rows, off_idx, off_w, off_rows, off_scales,
            off_gscale, off_comb, total;
} proto_geom_t;

PROTO_HD int64_t proto_round_up(int64_t v, int64_t a)
{
    return (v + a - 1) / a * a;
}

/* Contiguous placement: rank r holds [floor(r*E/R), floor((r+1)*E/R)). */
PROTO_HD int proto_first_expert(int R, int E, int r)
{
    return (int)((int64_t)r * E / R);
}

/* Shape of a row on the wire for `wire` (an epx_wire_t; unknown values
 * read as native): elements per scale (0: none), bytes of its data, of
 * its block scales and of its row scale.  A quantized wire needs bf16
 * rows (the engines check). */
PROTO_HD void proto_wire_shape(int wire, int64_t H, int esize, int *qblock,
                               int64_t *data_bytes, int64_t *scale_bytes,
                               int64_t *gscale_bytes)
{
    int qb = 0, ssize = 1;
    *gscale_bytes = 0;
    switch (wire) {
    case EPX_WIRE_FP8: qb = MOE_QUANT_FP8_BLOCK; ssize = 4; break;
    case EPX_WIRE_FP8_UE8M0: qb = MOE_QUANT_FP8_BLOCK; break;
    case EPX_WIRE_MXFP8: qb = MOE_QUANT_MX_BLOCK; break;
    case EPX_WIRE_NVFP4:
        qb = MOE_QUANT_FP4_BLOCK;
        *gscale_bytes = 4;
        break;
    default: break;
    }
    *qblock = qb;
    *data_bytes = !qb ? H * esize : wire == EPX_WIRE_NVFP4 ? (H + 1) / 2 : H;
    *scale_bytes = qb ? (H + qb - 1) / qb * ssize : 0;
}

/* The shape both executors derive from the engine's parameters: R ranks
 * (this one `rank`), E units (num_slots, or num_experts), top-k K,
 * hidden H, engine dtype size esize, wire, the largest
 * max_tokens_per_rank maxT, expert-major em with segment alignment align
 * (token-major: 1).  Lmax from the contiguous placement. */
PROTO_HD void proto_geom_shape(proto_geom_t *g, int R, int rank, int E,
                               int K, int H, int esize, int wire,
                               int64_t maxT, int em, int align)
{
    g->R = R;
    g->rank = rank;
    g->E = E;
    g->K = K;
    g->H = H;
    g->esize = esize;
    g->wire = wire;
    g->maxT = maxT;
    g->em = em;
    g->align = em ? align : 1;
    g->Lmax = 0;
    for (int r = 0; r < R; r++) {
        int l = proto_first_expert(R, E, r + 1) - proto_first_expert(R, E, r);
        g->Lmax = l > g->Lmax ? l : g->Lmax;
    }
}

/* The shape from an engine's parameters as the device executor reads
 * them (src/cuda/engine.c): the units are the slots or the experts; a
 * params struct older than version 3 has no wire (native).
 * tests/proto/test_geom compares the host engine's geometry with this.
 * Host code only. */
static inline void proto_geom_params(proto_geom_t *g,
                                     const epx_moe_params_t *p, int R,
                                     int rank, int64_t maxT)
{
    proto_geom_shape(g, R, rank,
                     p->num_slots > 0 ? p->num_slots : p->num_experts,
                     p->topk, p->hidden,
                     p->dtype == EPX_DTYPE_BF16 ? 2
                     : p->dtype == EPX_DTYPE_FP64 ? 8 : 4,
                     p->version >= 3 && p->struct_size >= sizeof(*p)
                     ? (int)p->wire : EPX_WIRE_NATIVE,
                     maxT, p->layout == EPX_LAYOUT_EXPERT_MAJOR,
                     p->expert_alignment);
}

/* Offsets of every region of the throughput window (the list above),
 * from the shape (proto_geom_shape). */
PROTO_HD void proto_geom_layout(proto_geom_t *g)
{
    const int64_t ents = (int64_t)g->R * g->maxT;
    const int per = g->K < g->Lmax ? g->K : g->Lmax;   /* rows per entry */
    const int64_t A = PROTO_ALIGN;
    int64_t o = 0;
    g->maxdest = g->K < g->R ? g->K : g->R;
    g->cnt_ints = PROTO_CNT_HDR + g->R + g->E + 1;
    g->ent_ints = 3 + g->K;
    g->row_bytes = (int64_t)g->H * g->esize;
    proto_wire_shape(g->wire, g->H, g->esize, &g->qblock, &g->xrow_bytes,
                     &g->scale_bytes, &g->gscale_bytes);
    g->ents = ents;
    g->xrows = g->em ? ents * per + (int64_t)g->Lmax * (g->align - 1) : ents;
    g->off_flags = o;
    o = proto_round_up(o + (int64_t)PROTO_NFLAG * g->R * 8, A);
    g->off_cnt = o;
    o = proto_round_up(o + 2 * (int64_t)g->R * g->cnt_ints * 4, A);
    g->off_status = o;
    o = proto_round_up(o + 2 * (int64_t)g->R * 4, A);
    g->off_done = o;
    o = proto_round_up(o + (int64_t)g->R * 4, A);
    g->off_progress = o;
    o = proto_round_up(o + PROTO_PROGRESS_BYTES, A);
    g->off_entries = o;
    o = proto_round_up(o + ents * g->ent_ints * 4, A);
    g->off_src_rank = o;
    o = proto_round_up(o + g->xrows * 4, A);
    g->off_src_token = o;
    o = proto_round_up(o + g->xrows * 4, A);
    g->off_ret_slot = o;
    o = proto_round_up(o + ents * 4, A);
    g->off_ent_src = o;
    o = proto_round_up(o + (g->em ? ents * 4 : 0), A);
    g->off_ent_rows = o;
    o = proto_round_up(o + (g->em ? ents * g->K * 4 : 0), A);
    g->off_idx = o;
    o = proto_round_up(o + (g->em ? 0 : ents * g->K * 4), A);
    g->off_w = o;
    o = proto_round_up(o + (g->em ? g->xrows : ents * g->K) * 4, A);
    g->off_rows = o;
    o = proto_round_up(o + g->xrows * g->xrow_bytes, A);
    g->off_scales = o;
    o = proto_round_up(o + g->xrows * g->scale_bytes, A);
    g->off_gscale = o;
    o = proto_round_up(o + g->xrows * g->gscale_bytes, A);
    g->off_comb = o;
    o = proto_round_up(o + g->maxT * g->maxdest * g->row_bytes, A);
    g->total = o;
}

/* Words of a count block (from its start): tokens to rank d, (token, k)
 * pairs of unit u, the sequence word. */
PROTO_HD int proto_cnt_dest(const proto_geom_t *g, int d)
{
    (void)g;
    return PROTO_CNT_HDR + d;
}
PROTO_HD int proto_cnt_unit(const proto_geom_t *g, int u)
{
    return PROTO_CNT_HDR + g->R + u;
}
PROTO_HD int proto_cnt_seq(const proto_geom_t *g)
{
    return g->cnt_ints - 1;
}

/* Counts of source s in the count region's blocks of parity p: the
 * index (in int32) of its first count, after the block's header words.
 * From there, [d] are the tokens to rank d, [R + u] the (token, k) pairs
 * of unit u and [R + E] the sequence word; the next source's counts are
 * cnt_ints further. */
PROTO_HD int64_t proto_cnt_index(const proto_geom_t *g, int p, int s)
{
    return ((int64_t)p * g->R + s) * g->cnt_ints + PROTO_CNT_HDR;
}

/* ------------------------------------------------------------ low latency
 *
 * Local unit j of rank d receives source s's rows at j*R*cap + s*cap + i,
 * i < the rows s routed there (at most cap; the rest dropped or an
 * error).  Window of each rank:
 *   comb_flags [B][R] uint64  device: use + 1 of buffer b whose partials
 *                             rank s has put, and so whose rows it no
 *                             longer reads (host: reserved)
 *   progress [PROTO_PROGRESS_BYTES]  host: where this rank is (device:
 *                             reserved)
 *   B buffers of `buf` bytes (from off_bufs, page aligned), each:
 *     hdr     [R][PROTO_LL_HDR] int32  host: per source, the header words
 *                                      (device: reserved)
 *     cw      [L][R] int32     count word per (local unit, source):
 *                              tag << 24 | rows the source routed there
 *     fw      [R] int32        final word per source: tag << 24 | entries
 *     st      [R] int32        device: status per source (0, or an epx
 *                              error), stored before the source's count
 *                              and final words: read once one of them
 *                              carries the tag (host: in hdr)
 *     src_tok, w [L*R*cap]     per row: token on its source, weight
 *     entries [R][maxT][ent_ints] int32  host: per (source, token sent
 *                              here): source, return slot, rows here, the
 *                              rows in top-k order
 *     ent_slot [R][maxT] int32 device: the same entry's return slot
 *     ent_rows [R][maxT][K]    device: its rows in top-k order, -1 after
 *     rows    [L*R*cap][xrow_bytes]   the wire format's data part
 *     scales  [L*R*cap][scale_bytes]  quantized wire: block scales
 *     gscale  [L*R*cap] fp32   NVFP4: the rows' own scales
 *     comb    [maxT*maxdest][row_bytes]  partials back to this rank
 * Row i's data, scales and row scale sit at i times their sizes in their
 * regions, so epx_recv_t describes both executors' rows alike.
 * The tag of use u of a buffer is u % 255 + 1: never 0 (zeroed window),
 * different for consecutive uses; a source writes use u only after every
 * rank released the buffer's use u - 1, so no reader sees two uses
 * mixed.  Counts are 24 bits. */

typedef struct proto_ll {
    int B, cap;
    int64_t off_comb_flags, off_bufs, buf, off_progress;   /* window */
    int64_t hdr, cw, fw, st, src_tok, w, entries, ent_slot, ent_rows, rows,
            scales, gscale, comb;                          /* in a buffer */
    int64_t total;
} proto_ll_t;

#define PROTO_LL_MASK 0xffffff
#define PROTO_LL_TAG(u) ((int32_t)((u) % 255u) + 1)
/* A count or final word, and its tag (unsigned shifts: tags reach 255). */
#define PROTO_LL_WORD(tag, n) ((int32_t)((uint32_t)(tag) << 24 | (uint32_t)(n)))
#define PROTO_LL_WTAG(w) ((int32_t)((uint32_t)(w) >> 24))

/* The buffers and the rows per (unit, source) an engine's parameters
 * ask for (epx_moe_params_t ll_buffers, ll_capacity; 0: the defaults):
 * 2 buffers, and room for every token of the largest max_tokens_per_rank
 * (at least 1). */
PROTO_HD int proto_ll_buffers(int ll_buffers)
{
    return ll_buffers > 0 ? ll_buffers : 2;
}
PROTO_HD int proto_ll_capacity(int ll_capacity, int64_t maxT)
{
    return ll_capacity > 0 ? ll_capacity : maxT > 0 ? (int)maxT : 1;
}

/* g from proto_geom_layout (R, K, esize, maxT, Lmax, maxdest, ent_ints
 * and the row shapes used); B buffers of cap rows per (unit, source). */
PROTO_HD void proto_ll_layout(const proto_geom_t *g, int B, int cap,
                              proto_ll_t *l)
{
    const int64_t rows = (int64_t)g->Lmax * g->R * cap;
    const int64_t ents = (int64_t)g->R * g->maxT;
    const int64_t A = PROTO_ALIGN;
    int64_t o = 0;
    l->B = B;
    l->cap = cap;
    l->off_comb_flags = 0;
    l->off_progress = proto_round_up((int64_t)B * g->R * 8, A);
    l->off_bufs = proto_round_up(l->off_progress + PROTO_PROGRESS_BYTES,
                                 PROTO_LL_BUF_ALIGN);
    l->hdr = o;
    o = proto_round_up(o + (int64_t)g->R * PROTO_LL_HDR * 4, A);
    l->cw = o;
    o = proto_round_up(o + (int64_t)g->Lmax * g->R * 4, A);
    l->fw = o;
    o = proto_round_up(o + (int64_t)g->R * 4, A);
    l->st = o;
    o = proto_round_up(o + (int64_t)g->R * 4, A);
    l->src_tok = o;
    o = proto_round_up(o + rows * 4, A);
    l->w = o;
    o = proto_round_up(o + rows * 4, A);
    l->entries = o;
    o = proto_round_up(o + ents * g->ent_ints * 4, A);
    l->ent_slot = o;
    o = proto_round_up(o + ents * 4, A);
    l->ent_rows = o;
    o = proto_round_up(o + ents * g->K * 4, A);
    l->rows = o;
    o = proto_round_up(o + rows * g->xrow_bytes, A);
    l->scales = o;
    o = proto_round_up(o + rows * g->scale_bytes, A);
    l->gscale = o;
    o = proto_round_up(o + rows * g->gscale_bytes, A);
    l->comb = o;
    o = proto_round_up(o + g->maxT * g->maxdest * g->row_bytes, A);
    l->buf = proto_round_up(o, PROTO_LL_BUF_ALIGN);
    l->total = l->off_bufs + (int64_t)B * l->buf;
}

/* Offset of buffer b's region at `off` (one of hdr .. comb). */
PROTO_HD int64_t proto_ll_at(const proto_ll_t *l, int b, int64_t off)
{
    return l->off_bufs + (int64_t)b * l->buf + off;
}

/* Row `row` of a buffer at bw: its data, its block scales and its row
 * scale (the last two only with a quantized wire). */
PROTO_HD char *proto_ll_row_data(const proto_geom_t *g, const proto_ll_t *l,
                                 char *bw, int64_t row)
{
    return bw + l->rows + row * g->xrow_bytes;
}
PROTO_HD char *proto_ll_row_scales(const proto_geom_t *g, const proto_ll_t *l,
                                   char *bw, int64_t row)
{
    return bw + l->scales + row * g->scale_bytes;
}
PROTO_HD float *proto_ll_row_gscale(const proto_ll_t *l, char *bw, int64_t row)
{
    return (float *)(bw + l->gscale) + row;
}

#endif /* EPX_PROTO_GEOM_H */
