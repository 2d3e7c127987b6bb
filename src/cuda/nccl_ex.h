/*
 * The NCCL backend: the exchange as a user writes it with NCCL — one
 * ncclGroupStart / ncclSend + ncclRecv per peer / ncclGroupEnd per phase —
 * over the same staging and receive layouts as the windows backend
 * (proto.h), so the kernels are shared.
 */
#ifndef EPX_CUDA_NCCL_EX_H
#define EPX_CUDA_NCCL_EX_H

#include <stdint.h>
#include "epx.h"
#include "proto/proto.h"

typedef struct epx_nccl epx_nccl_t;

/* Collective.  adopt: the caller's ncclComm_t (same ranks, same order),
 * kept by the caller; NULL: create one (unique id through the comm). */
epx_status_t epx__nccl_create(epx_comm_t *comm, void *adopt,
                              epx_nccl_t **nc);
void epx__nccl_destroy(epx_nccl_t *nc);
int epx__nccl_adopted(const epx_nccl_t *nc);

/* Every rank's count block, its header and counts (PROTO_CNT_HDR + R + E
 * int32 at blk, the same size in every call: cached, uncached or
 * refused), into source s's block of cnt (this parity's first block in
 * the receive window, its header: blocks cnt_ints apart). */
epx_status_t epx__nccl_counts(epx_nccl_t *nc, const proto_geom_t *g,
                              const int32_t *blk, int32_t *cnt,
                              void *stream);
/* Rows and metadata: to each d, the staged rows [sendoff[d], +nsend[d]);
 * from each s, into win rows [rbase[s], +nrecv[s]). */
epx_status_t epx__nccl_dispatch(epx_nccl_t *nc, const proto_geom_t *g,
                                char *stage, char *win, const int64_t *nsend,
                                const int64_t *sendoff, const int64_t *nrecv,
                                const int64_t *rbase, void *stream);
/* Expert-major (proto.h, "expert-major over NCCL"): ent and rows are
 * [4][R] each (nsend, sendoff, nrecv, rbase) of entries and of rows.
 * Rows (data, scales, row scale, src_token, weight) from the staged rows
 * [sendoff, +nsend) to each peer into rstage's rows [rbase, +nrecv) from
 * it; entries (return slot, rows) from the staged entries into win's
 * entries, in place. */
epx_status_t epx__nccl_dispatch_em(epx_nccl_t *nc, const proto_geom_t *g,
                                   char *stage, char *rstage, char *win,
                                   const int64_t *ent, const int64_t *rows,
                                   void *stream);
/* Expert outputs back: to each s, y rows [rbase[s], +nrecv[s]); from each
 * d, into win comb rows [sendoff[d], +nsend[d]). */
epx_status_t epx__nccl_combine(epx_nccl_t *nc, const proto_geom_t *g,
                               const void *y, char *win, const int64_t *nsend,
                               const int64_t *sendoff, const int64_t *nrecv,
                               const int64_t *rbase, void *stream);

/* Point to point, one group: each op sends `bytes` at buf to `peer` or
 * receives them there from it; the ops between two ranks pair up in the
 * order given (weight migration, src/cuda/migrate.c). */
typedef struct epx_nccl_p2p {
    int32_t peer, recv;
    void *buf;
    size_t bytes;
} epx_nccl_p2p_t;
epx_status_t epx__nccl_p2p(epx_nccl_t *nc, const epx_nccl_p2p_t *ops, int n,
                           void *stream);

/* The NCCL module (epx_nccl.so, which needs libnccl) gives these to the
 * CUDA module, loaded by the first NCCL-backend engine (nccl_load.c). */
typedef struct epx_nccl_module_ops {
    epx_status_t (*create)(epx_comm_t *comm, void *adopt, epx_nccl_t **nc);
    void (*destroy)(epx_nccl_t *nc);
    int (*adopted)(const epx_nccl_t *nc);
    epx_status_t (*counts)(epx_nccl_t *nc, const proto_geom_t *g,
                           const int32_t *blk, int32_t *cnt, void *stream);
    epx_status_t (*dispatch)(epx_nccl_t *nc, const proto_geom_t *g, char *stage,
                             char *win, const int64_t *nsend,
                             const int64_t *sendoff, const int64_t *nrecv,
                             const int64_t *rbase, void *stream);
    epx_status_t (*combine)(epx_nccl_t *nc, const proto_geom_t *g,
                            const void *y, char *win, const int64_t *nsend,
                            const int64_t *sendoff, const int64_t *nrecv,
                            const int64_t *rbase, void *stream);
    epx_status_t (*p2p)(epx_nccl_t *nc, const epx_nccl_p2p_t *ops, int n,
                        void *stream);
    epx_status_t (*dispatch_em)(epx_nccl_t *nc, const proto_geom_t *g,
                                char *stage, char *rstage, char *win,
                                const int64_t *ent, const int64_t *rows,
                                void *stream);
} epx_nccl_module_ops_t;

#endif /* EPX_CUDA_NCCL_EX_H */
