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
    /* epx policy */
    int32_t *ds_p2l, *ds_rank, *ds_cnt; /* [S], [S], [E] the DeepSeek plan */
    int32_t *inv;            /* [E] position of an expert in its domain */
    double *wd;              /* [E] a domain's expert loads */
    int32_t *cand;           /* [S] a candidate's slots */
    struct bal_ls *ls;       /* local search on one domain */
} bal_work_t;

epx_status_t epx__bal_shape(const epx_balance_params_t *p, bal_shape_t *sh);

/* Layers 0..L-1 by up to nthreads threads (parallel.c): layer(ctx, tls, l)
 * with a thread's scratch from tls_init (freed by tls_fini). */
typedef struct bal_par {
    int L, nthreads;
    epx_status_t (*layer)(void *ctx, void *tls, int l);
    epx_status_t (*tls_init)(void *ctx, void **tls);
    void (*tls_fini)(void *tls);
    void *ctx;
} bal_par_t;
epx_status_t epx__bal_par_run(const bal_par_t *p);
/* params->num_threads when the caller's struct has it (version 4), else 1. */
int epx__bal_threads(const epx_balance_params_t *p);

/* params->lost when the caller's struct has it (version 3), else NULL. */
const uint8_t *epx__bal_lost(const epx_balance_params_t *p);

/* One layer restricted to its available experts (lost.c): the compact
 * index i stands for expert c2e[i], in ascending expert order. */
typedef struct bal_avail {
    int n;                   /* available experts */
    int groups;              /* num_groups for the compact layer */
    int32_t *c2e;            /* [E] compact index -> expert */
    int32_t *e2c;            /* [E] expert -> compact index, -1 when lost */
    double *w;               /* [E] the available experts' loads */
} bal_avail_t;

epx_status_t epx__bal_avail_alloc(bal_avail_t *a, int E);
void epx__bal_avail_free(bal_avail_t *a);
/* Fill `a` for one layer: lost[E], load[E] (may be NULL), G groups of
 * E/G experts.  groups = G when every group keeps equally many experts,
 * else 1 (their sizes differ: the layer is planned globally). */
void epx__bal_avail_layer(bal_avail_t *a, const uint8_t *lost,
                          const double *load, int E, int G);
/* Layer l of `lost` checked against the slots: 1..S available experts,
 * else an error naming the layer. */
epx_status_t epx__bal_avail_check(const bal_avail_t *a, int l, int E, int S);
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

/* Local search on one layer (search.c).  Set E, R, spr, rpd (ranks per
 * domain that moves must stay within; R: no domains), distinct and w,
 * then load a placement.  Loads of rank r: sum over its slots of
 * w[e] / cnt[e]. */
typedef struct bal_ls {
    int E, R, spr, rpd;
    int distinct;            /* refuse a second replica of an expert on a rank */
    const double *w;         /* [E] expert loads */
    int32_t *slot;           /* [S] expert of each slot */
    int32_t *head, *nxt;     /* [E], [S]: each expert's slots, a list */
    int32_t *cnt;            /* [E] replicas */
    int32_t *hcnt;           /* [E] find: replicas of e on h (else 0) */
    int32_t *dcnt;           /* [D*E] replicas of e in domain d */
    double *rl, *nl;         /* [R] rank loads, loads being evaluated */
    double *rmin;            /* [R] each rank's lightest replica */
    int32_t *stamp, stampv;  /* [R] ranks touched by the evaluation */
    int32_t *order;          /* [R] ranks by load, heaviest first */
    int32_t *touched;        /* [R] */
    double *pen, *xe;        /* [E] scratch of a step's search */
    double *xp, *xm;         /* [E] w/(cnt+1), w/(cnt-1) (find: fixed per step) */
    int32_t *top;            /* [E] */
    int32_t *donor;          /* [S] slots that may give up their replica */
    int32_t *mark, markv;    /* [R] ranks holding one expert (find) */
    const int32_t *orig;     /* [S] the placement in use, or NULL */
    int changed;             /* slots that differ from orig */
    int32_t *rchg;           /* [R] of them on each rank */
    int32_t *rlist, *qlist;  /* [R] find: ranks with one; ranks to pair with */
    int32_t *srank;          /* [S] rank of each slot */
    int32_t *donorr;         /* [S] rank of each donor slot */
    int32_t *dsub, *dsubr;   /* [S] the donors left for one expert, ranks */
    int32_t *xc;             /* [E] cnt that xe, xp, xm were computed for */
    int xok;                 /* xe..top and xmin hold but for dirty[] */
    int32_t *dirty, ndirty;  /* [E] experts whose figures apply made due */
    uint8_t *isdirty;        /* [E] */
    double xmin;             /* least xe */
    int nocut;               /* find evaluates every step (tests: the cuts
                              * must not change the step found) */
} bal_ls_t;

/* One step: kind 0 gives slot s1 to expert b; kind 1 swaps slots s1, s2. */
typedef struct bal_step {
    int kind, s1, s2, b, cost;
    double gain, val;        /* drop of the max; gain per slot moved */
} bal_step_t;

epx_status_t epx__bal_ls_alloc(bal_ls_t *ls, int E, int R, int S, int D);
void epx__bal_ls_free(bal_ls_t *ls);
void epx__bal_ls_load(bal_ls_t *ls, const int32_t *slot, const int32_t *orig);
double epx__bal_ls_max(const bal_ls_t *ls);
/* Best step that lowers (max rank load, ranks at the max) and moves at
 * most `budget` more slots away from orig; 0 when none. */
int epx__bal_ls_find(bal_ls_t *ls, int budget, bal_step_t *step);
void epx__bal_ls_apply(bal_ls_t *ls, const bal_step_t *step);
/* Best steps until none helps (or max_steps); returns the steps taken. */
int epx__bal_ls_improve(bal_ls_t *ls, long max_steps);

/* Budgeted re-planning (replan.c): `budget` slots may change over all
 * layers, starting from `current`; never raises a layer's max rank load.
 * lost (may be NULL): [L][E]; each layer is searched over its available
 * experts only, so a lost expert never gets a slot. */
epx_status_t epx__bal_replan(const bal_shape_t *sh, const double *load,
                             const int32_t *current, const uint8_t *lost,
                             int64_t budget, int nthreads,
                             int32_t *phy2log, int32_t *phyrank,
                             int32_t *logcnt, double *max_before,
                             double *max_after);

/* Two slots per rank (pair.c): replica counts cnt[E] (summing to 2R,
 * each <= R) replaced by counts built for targets when better, improved
 * by moving replicas (every count vector when they are few), packed by
 * sorted pairing into slot[2R]; returns the largest pair.  ord, tmp,
 * scr, bcnt: [E] scratch. */
double epx__bal_pair_plan(const double *w, int E, int R, int32_t *cnt,
                          int32_t *ord, int32_t *tmp, int32_t *scr,
                          int32_t *bcnt, int32_t *slot);

/* The epx policy runs the exact search on domains this small. */
#define BAL_EXACT_MAX_SLOTS 32
#define BAL_EXACT_MAX_EXPERTS 16
#define BAL_EXACT_NODES 200000L

/* Exact search (exact.c) for a small layer: experts w[E] (any order),
 * R ranks of spr slots.  Replaces slot[R*spr] when it finds a placement
 * whose max rank load is below `incumbent`; stops at `lower` (a lower
 * bound) or after node_limit nodes.  Returns 1 when it replaced slot,
 * *complete 1 when the search finished (the result is optimal). */
int epx__bal_exact(const double *w, int E, int R, int spr, double incumbent,
                   double lower, long node_limit, int32_t *slot,
                   int *complete);

/* Lower bound on the max rank load of any placement of a layer's loads
 * w[E] on R ranks with S slots: max(sum / R, the least possible largest
 * replica load min over counts of max_e w[e] / cnt[e]). */
double epx__bal_lower_bound(const double *w, int E, int S, int R);

#endif /* EPX_BALANCE_H */
