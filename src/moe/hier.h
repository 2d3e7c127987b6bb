/*
 * Hierarchical two-hop dispatch and combine (EPX_MOE_HIERARCHICAL,
 * throughput mode).  Domains are the topology's rank domains; they must be
 * contiguous blocks of L ranks in ascending order (ND = R / L domains), so
 * that the ascending rank order of the combine contract is the ascending
 * order of domains, each in rank order.  Rank r has domain r / L and local
 * index r % L; the gateway of source s in domain D is the rank of D with
 * s's local index.
 *
 * Dispatch: a token goes once to each remote destination domain's gateway
 * (a staging record: token index, its K units, weights, and the row in the
 * wire format, quantized once at the source; the gateway forwards those
 * bytes as they are); every rank
 * then forwards, for itself and for the ND - 1 sources it is gateway of,
 * each token to its destination ranks inside its domain, at the offsets
 * the flat path would use, and ends each source with its completion word
 * and data signal on behalf of that source (so recv, poll and the receive
 * layout are unchanged: every rank still gets R signals).
 *
 * Combine: each rank puts its partial of each received token (the flat
 * path's partial, rounded to the engine dtype) into the token's gateway in
 * its own domain.  For each token the gateways of its destination domains
 * form a chain in ascending domain order: the first starts the fp32 sum,
 * each adds its domain's partials in rank order and passes the fp32
 * accumulator on, the last puts it into the source.  That is the flat
 * path's sum, term for term, so the result is bitwise the same; only fp32
 * accumulators cross domains, one per (token, destination domain) hop.
 * Gateway work is done inside epx_combine_send, which waits for the
 * partials of its domain and the accumulators of earlier domains.
 *
 * The domains, the staging record, the window regions (offsets in
 * moe_hier_t), every position a gateway writes and the chain's order are
 * the protocol core's (../proto/hier.h), which a device executor shares;
 * fp64 accumulators for an FP64 engine, whose partials are fp64: the flat
 * path's double sum term for term.
 */
#ifndef EPX_MOE_HIER_H
#define EPX_MOE_HIER_H

#include "moe/moe.h"
#include "proto/hier.h"

typedef struct moe_hier {
    proto_hier_t c;            /* the domains (proto/hier.h) */
    int ND, L, dom, li;        /* domains, ranks per domain, mine, my index */
    int maxdl;                 /* min(K, L): destinations per token in a
                                  domain at most */
    size_t rec_bytes, rec_hdr; /* staging record, its header (t, then per
                                  choice unit, weight, positions) */
    size_t wrow;               /* a row on the wire: data + scales + row
                                  scale (moe_wire_row_bytes) */
    size_t shdr, pdone, cdone, stage, part, chain, final;
    int64_t P;                 /* partial slots per source domain */
    int64_t cross_dispatch, cross_combine;  /* bytes put across domains */
    /* scratch */
    const int64_t *eb, *rb, *sb; /* the bases of the source being
                                  forwarded (moe_hier_h_t) */
    size_t acc_size;           /* an accumulator element: fp32, or fp64
                                  for an FP64 engine */
    void *acc;                 /* [H] accumulators */
    void *wire;                /* [row_bytes] */
    char *rec;                 /* [rec_bytes] a record being staged */
} moe_hier_t;

/* Per handle: for each source domain a, where source (a, li) starts at
 * each member (entries) and each unit of the domain (expert-major rows),
 * and its partials' first slot for each member here. */
typedef struct moe_hier_h {
    int64_t *entbase;          /* [ND][L] */
    int64_t *rowbase;          /* [ND][U], the domain's units set */
    int64_t *slotbase;         /* [ND][L] */
} moe_hier_h_t;

/* engine.c hooks */
epx_status_t moe_hier_init(epx_moe_t *m);          /* domains, collective */
size_t moe_hier_window(epx_moe_t *m, size_t at);   /* regions from `at` */
void moe_hier_free(epx_moe_t *m);
/* The hierarchical path's phases (moe_ht_path_t, moe.h; the table is in
 * hier_combine.c): plan (uncached, after plan_offsets), the data phase */
epx_status_t moe_hier_plan(epx_moe_t *m, epx_handle_t *h);
void moe_hier_handle_free(epx_handle_t *h);
epx_status_t moe_hier_dispatch(epx_moe_t *m, epx_handle_t *h,
                               const epx_dispatch_args_t *a);

/* Spin, then yield, until *word == want; EPX_ERR_TIMEOUT after the
 * communicator's timeout. */
epx_status_t moe_hier_wait_word(epx_moe_t *m, const int32_t *word,
                                int32_t want, const char *what, int peer);

#endif /* EPX_MOE_HIER_H */
