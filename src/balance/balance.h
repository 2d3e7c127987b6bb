/*
 * balance layer (internal): the placement planner's shared pieces.
 * A plan is computed one layer at a time; the policies share the checks,
 * the stable ordering, the greedy replication and the greedy packing.
 */
#ifndef EPX_BALANCE_H
#define EPX_BALANCE_H

#include <stdint.h>
#include "epx.h"

/* One planning problem, checked.  In hierarchical mode groups are packed
 * onto domains first; otherwise the whole machine is one domain (D = 1,
 * G = 1) and domains play no part. */
typedef struct bal_shape {
    int L, E, S, R;          /* layers, logical experts, slots, ranks */
    int G, D;                /* groups and domains as planned (1, 1: global) */
    int hier;                /* 1 when the caller's domains divide the groups */
    int gsize;               /* experts per group */
    int epd, spd, rpd, spr;  /* experts / slots / ranks per domain, slots per rank */
} bal_shape_t;

/* Scratch memory for one layer, allocated once per call. */
typedef struct bal_work {
    int32_t *ord;            /* [S] sort order */
    int32_t *tmp;            /* [S] merge-sort scratch */
    double *w;               /* [S] item weights */
    double *packw;           /* [S] pack loads */
    int32_t *packn;          /* [S] items per pack */
    int32_t *pack, *rip;     /* [S] pack index and rank in pack of an item */
    int32_t *mlog2log;       /* [E] domain-major order of logical experts */
    int32_t *p2m, *prank;    /* [S] per domain: item's expert, replica rank */
    int32_t *mcnt;           /* [E] per domain: replicas of each expert */
    int32_t *held;           /* [R*E] replicas of expert e on rank r */
    int32_t *slot_item;      /* [S] item in each slot (per domain) */
    int32_t *pairs;          /* [R*R*3] matching candidates */
    int32_t *perm;           /* [S] scratch for re-ordering slots */
    int32_t *used;           /* [S] matching marks */
} bal_work_t;

epx_status_t epx__bal_shape(const epx_balance_params_t *p, bal_shape_t *sh);
epx_status_t epx__bal_work_alloc(const bal_shape_t *sh, bal_work_t *wk);
void epx__bal_work_free(bal_work_t *wk);

/* ord[0..n) = 0..n-1 sorted by w descending; equal weights keep index
 * order (a stable sort). */
void epx__bal_sort_desc(const double *w, int n, int32_t *ord, int32_t *tmp);

/* Greedy replication: items 0..n-1 are the n experts once each; items
 * n..m-1 go one at a time to the expert with the highest load per
 * replica w/cnt (lowest index on ties), never past `cap` replicas.
 * Out: item2exp[m], rank[m] (replica number of the item), cnt[n]. */
void epx__bal_replicate(const double *w, int n, int m, int cap,
                        int32_t *item2exp, int32_t *rank, int32_t *cnt);

/* Greedy balanced packing of n items into `packs` packs of n/packs items:
 * heaviest first (stable order) to the lightest pack that has room (lowest
 * pack on ties); n/packs == 1 keeps item i in pack i.  Out: pack[n],
 * rip[n] (position in the pack, in order of arrival). */
void epx__bal_pack(const double *w, int n, int packs, bal_work_t *wk,
                   int32_t *pack, int32_t *rip);

/* Groups onto domains: fills wk->mlog2log (domain d's experts are
 * mlog2log[d*epd .. (d+1)*epd), groups in packing order). */
void epx__bal_groups(const bal_shape_t *sh, const double *load, bal_work_t *wk);

/* One layer of each policy.  phyrank[S]: replica number of each slot
 * (log2phy order); logcnt[E]. */
void epx__plan_deepseek(const bal_shape_t *sh, const double *load,
                        bal_work_t *wk, int32_t *phy2log, int32_t *phyrank,
                        int32_t *logcnt);
void epx__plan_epx(const bal_shape_t *sh, const double *load,
                   const int32_t *current, bal_work_t *wk, int32_t *phy2log,
                   int32_t *phyrank, int32_t *logcnt);

#endif /* EPX_BALANCE_H */
