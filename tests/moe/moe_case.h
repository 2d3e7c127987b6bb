/*
 * One dispatch/combine scenario run by every rank and checked against the
 * reference (tests/ref).  Each rank regenerates every rank's input from
 * (seed, case, source rank, round), so it computes what it must receive and
 * what combine must return without any extra communication.
 */
#ifndef EPX_TEST_MOE_CASE_H
#define EPX_TEST_MOE_CASE_H

#include <stdint.h>
#include "epx.h"
#include "ref/ref.h"

enum moe_tokens {
    TOK_RANDOM = 0,   /* T in [0, max] per rank */
    TOK_ZERO_ODD,     /* odd ranks send nothing, even ranks at least one */
    TOK_ZERO_ALL,     /* nobody sends anything */
    TOK_FULL          /* T = max_tokens_per_rank */
};

enum moe_route {
    ROUTE_RANDOM = 0, /* K distinct experts per token (-1 only when K > E) */
    ROUTE_HOLES,      /* random -1 entries and whole rows of -1 */
    ROUTE_HOT,        /* every token picks the same expert, the rest -1 */
    ROUTE_ZIPF        /* K distinct experts, expert e drawn with weight
                         1 / (e + 1)^1.1: the first ranks are hot */
};

typedef struct moe_case {
    const char *name;           /* unique: it also seeds the case */
    int experts, topk, hidden;
    int max_tokens;             /* rank r: max_tokens + r * max_tokens_step */
    int max_tokens_step;
    epx_dtype_t dtype;          /* engine dtype: BF16, FP32 or FP64 */
    epx_dtype_t idx_dtype;      /* INT32 or INT64 */
    epx_dtype_t out_dtype;      /* combine output: BF16 or FP32 (FP64 for
                                   an FP64 engine) */
    epx_layout_t layout;
    int align;
    int tokens;                 /* enum moe_tokens */
    int route;                  /* enum moe_route */
    unsigned combine_flags;     /* EPX_COMBINE_* */
    int null_empty;             /* empty tensors passed with data NULL */
    int misuse;                 /* every round also tries MISUSE_* first */
    int jitter_us;              /* random pauses between the calls */
    unsigned flags;             /* epx_moe_params_t.flags (EPX_MOE_*) */
    epx_wire_t wire;            /* quantized: dtype BF16 */
    int gscale;                 /* GSCALE_*: NVFP4 tensor scale given */
    int in_place;               /* combine's y written over the received x
                                   (native wire only) */
} moe_case_t;

/* NVFP4: the tensor scale each source passes (x_global_scale). */
enum moe_gscale {
    GSCALE_NONE = 0,  /* none: each row's own */
    GSCALE_TENSOR,    /* the source's amax over all its tokens / (6 * 448) */
    GSCALE_SMALL      /* that / 64: large blocks saturate */
};

/* Calls every rank gets wrong the same way before the right one: each must
 * fail with EPX_ERR_INVALID and change nothing. */
#define MISUSE_COMBINE_Y 0x1    /* combine_send with y one row too many */
#define MISUSE_COMBINE_OUT 0x2  /* combine_recv with out one row too many */
#define MISUSE_OUT_DTYPE 0x4    /* combine_recv with out of the other family:
                                   FP32 for an FP64 engine, FP64 otherwise */

/* A case in progress on one rank. */
typedef struct moe_run {
    const moe_case_t *c;
    epx_comm_t *comm;
    epx_moe_t *moe;
    int rank, nranks;
    uint64_t seed;              /* of this case: run seed and case name */
    ref_cfg_t cfg;
} moe_run_t;

/* Create the engine (collective) and check its placement queries. */
int moe_run_open(moe_run_t *m, epx_comm_t *comm, const moe_case_t *c);
void moe_run_close(moe_run_t *m);

/* One dispatch + combine checked against the reference.  `route` selects
 * the routing (T, topk_idx, weights), `data` the token and expert-output
 * values.  *handle NULL: fresh dispatch, the new handle is left in
 * *handle; else a cached dispatch through *handle (same route as its
 * dispatch).  The caller releases *handle. */
int moe_run_round(moe_run_t *m, int route, int data, epx_handle_t **handle);

/* The same in two steps, so that a test can interleave rounds: dispatch
 * (send, recv, check) and combine (check that the received data are still
 * there, send, recv, check).  Free the round whatever the outcome. */
typedef struct moe_input moe_input_t;
typedef struct moe_round {
    moe_run_t *m;
    int data;
    moe_input_t *all;           /* [nranks] every rank's input */
    ref_tokens_t *toks;
    ref_recv_t want;
    epx_recv_t rv;              /* what dispatch_recv returned */
    void *y, *out, *ref_out;
} moe_round_t;
int moe_round_dispatch(moe_run_t *m, moe_round_t *r, int route, int data,
                       epx_handle_t **handle);
int moe_round_combine(moe_round_t *r, epx_handle_t *handle);
void moe_round_free(moe_round_t *r);

/* A source rank's generated input. */
struct moe_input {
    int64_t T;
    void *x;                    /* [T+1, H] engine dtype (never NULL) */
    int64_t *idx64;             /* [T+1, K] */
    void *idx;                  /* [T+1, K] idx_dtype */
    float *w;                   /* [T+1, K] */
    float gscale;               /* x_global_scale given, 0: none */
};
int moe_input_make(const moe_run_t *m, int src, int route, int data,
                   moe_input_t *in);
void moe_input_free(moe_input_t *in);
/* Dispatch arguments describing `in`. */
epx_dispatch_args_t moe_input_args(const moe_run_t *m, const moe_input_t *in);

/* A whole case: open; for each of MOE_ROUTES routings a fresh round and a
 * cached round with new data; close.  moe_cases_rank: rank function for a
 * list of cases (arg: moe_case_t array ended by an entry whose name is
 * NULL). */
#define MOE_ROUTES 3
int moe_case_run(epx_comm_t *comm, const moe_case_t *c);
int moe_cases_rank(epx_comm_t *comm, void *arg);

#endif /* EPX_TEST_MOE_CASE_H */
