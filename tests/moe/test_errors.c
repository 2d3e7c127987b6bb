/*
 * moe: errors.  Bad dispatch input on one rank (expert out of range, the
 * same expert twice, T above max_tokens_per_rank, NULL or misaligned
 * pointers, wrong dtypes or shapes): that rank gets the error, every other
 * rank EPX_ERR_PEER from the same call, nothing is delivered, and the next
 * dispatch/combine on the same engine is correct.  Engines whose ranks
 * disagree get EPX_ERR_MISMATCH everywhere; invalid parameters, calls out
 * of order and a peer that never dispatches are reported, not hung on;
 * a combine call every rank gets wrong fails and leaves the handle usable
 * (out of the wrong dtype family too: FP32 for an FP64 engine, FP64 for
 * the others).  FP64 engines go through the bad inputs too.
 */
#include "config.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <sys/statvfs.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <unistd.h>

#include "common/epx_test.h"
#include "moe_case.h"

static moe_case_t err_case = {
    .name = "errors", .experts = 6, .topk = 2, .hidden = 8, .max_tokens = 4,
    .dtype = EPX_DTYPE_BF16, .idx_dtype = EPX_DTYPE_INT32,
    .out_dtype = EPX_DTYPE_FP32, .layout = EPX_LAYOUT_EXPERT_MAJOR,
    .align = 4,
    /* every rank sends max_tokens tokens of two distinct experts */
    .tokens = TOK_FULL, .route = ROUTE_RANDOM,
};

enum bad {
    BAD_EXPERT_HIGH, BAD_EXPERT_NEG, BAD_EXPERT_WIDE, BAD_DUP, BAD_T,
    NULL_X, NULL_IDX, NULL_W, MISALIGN_X, MISALIGN_IDX, MISALIGN_W,
    DTYPE_X, DTYPE_IDX, DTYPE_W, COLS_X, COLS_IDX, ROWS_W, CACHED_NO_HANDLE,
    NBAD
};

static const struct {
    const char *what;
    epx_status_t want, also;   /* `also`: a second acceptable code */
} bads[NBAD] = {
    /* epx.h: EPX_ERR_INVALID covers "out of range" arguments, while
     * EPX_ERR_RANGE is "a value exceeds a configured limit"; an expert id
     * is arguably either, so both are accepted for it. */
    [BAD_EXPERT_HIGH] = { "expert id = num_experts", EPX_ERR_INVALID,
                          EPX_ERR_RANGE },
    [BAD_EXPERT_NEG] = { "expert id -2", EPX_ERR_INVALID, EPX_ERR_RANGE },
    /* int64 ids: 2^32 + a valid id must not pass for that id */
    [BAD_EXPERT_WIDE] = { "expert id 2^32 + e (int64) / INT32_MAX",
                          EPX_ERR_INVALID, EPX_ERR_RANGE },
    [BAD_DUP] = { "the same expert twice in a row", EPX_ERR_INVALID,
                  EPX_ERR_RANGE },
    [BAD_T] = { "T = max_tokens_per_rank + 1", EPX_ERR_RANGE, EPX_ERR_RANGE },
    [NULL_X] = { "x NULL", EPX_ERR_INVALID, EPX_ERR_INVALID },
    [NULL_IDX] = { "topk_idx NULL", EPX_ERR_INVALID, EPX_ERR_INVALID },
    [NULL_W] = { "topk_weights NULL", EPX_ERR_INVALID, EPX_ERR_INVALID },
    [MISALIGN_X] = { "x misaligned", EPX_ERR_INVALID, EPX_ERR_INVALID },
    [MISALIGN_IDX] = { "topk_idx misaligned", EPX_ERR_INVALID,
                       EPX_ERR_INVALID },
    [MISALIGN_W] = { "topk_weights misaligned", EPX_ERR_INVALID,
                     EPX_ERR_INVALID },
    [DTYPE_X] = { "x dtype differs from the engine's", EPX_ERR_INVALID,
                  EPX_ERR_INVALID },
    [DTYPE_IDX] = { "topk_idx FP32", EPX_ERR_INVALID, EPX_ERR_INVALID },
    [DTYPE_W] = { "topk_weights BF16", EPX_ERR_INVALID, EPX_ERR_INVALID },
    [COLS_X] = { "x cols != hidden", EPX_ERR_INVALID, EPX_ERR_INVALID },
    [COLS_IDX] = { "topk_idx cols != topk", EPX_ERR_INVALID,
                   EPX_ERR_INVALID },
    [ROWS_W] = { "topk_weights rows != x rows", EPX_ERR_INVALID,
                 EPX_ERR_INVALID },
    [CACHED_NO_HANDLE] = { "EPX_DISPATCH_CACHED without a handle",
                           EPX_ERR_INVALID, EPX_ERR_INVALID },
};

static void set_idx(const moe_case_t *c, void *idx, int64_t i, int64_t v)
{
    if (c->idx_dtype == EPX_DTYPE_INT64)
        ((int64_t *)idx)[i] = v;
    else
        ((int32_t *)idx)[i] = (int32_t)v;
}

/* Make `a` (over `in`, which has room for one row more than T) bad. */
static void spoil(const moe_case_t *c, int kind, moe_input_t *in,
                  epx_dispatch_args_t *a)
{
    const int K = c->topk;
    switch (kind) {
    case BAD_EXPERT_HIGH: set_idx(c, in->idx, K - 1, c->experts); break;
    case BAD_EXPERT_NEG: set_idx(c, in->idx, 0, -2); break;
    case BAD_EXPERT_WIDE:
        set_idx(c, in->idx, 0, c->idx_dtype == EPX_DTYPE_INT64
                                   ? ((int64_t)1 << 32) + in->idx64[0]
                                   : INT32_MAX);
        break;
    case BAD_DUP: set_idx(c, in->idx, 1, in->idx64[0]); break;
    case BAD_T:
        /* a valid extra token: only the count is wrong */
        for (int k = 0; k < K; k++)
            set_idx(c, in->idx, in->T * K + k, k);
        a->x.rows = a->topk_idx.rows = a->topk_weights.rows = in->T + 1;
        break;
    case NULL_X: a->x.data = NULL; break;
    case NULL_IDX: a->topk_idx.data = NULL; break;
    case NULL_W: a->topk_weights.data = NULL; break;
    case MISALIGN_X: a->x.data = (char *)a->x.data + 1; break;
    case MISALIGN_IDX: a->topk_idx.data = (char *)a->topk_idx.data + 1; break;
    case MISALIGN_W: a->topk_weights.data = (char *)a->topk_weights.data + 2;
        break;
    case DTYPE_X:
        a->x.dtype = c->dtype == EPX_DTYPE_BF16 ? EPX_DTYPE_FP32
                                                : EPX_DTYPE_BF16;
        break;
    case DTYPE_IDX: a->topk_idx.dtype = EPX_DTYPE_FP32; break;
    case DTYPE_W: a->topk_weights.dtype = EPX_DTYPE_BF16; break;
    case COLS_X: a->x.cols = c->hidden - 1; break;
    case COLS_IDX: a->topk_idx.cols = K - 1; break;
    case ROWS_W: a->topk_weights.rows = in->T - 1; break;
    case CACHED_NO_HANDLE: a->flags |= EPX_DISPATCH_CACHED; break;
    }
}

static int bad_input_rank(epx_comm_t *comm, void *arg)
{
    const moe_case_t *c = arg;
    moe_run_t m;
    CHECK_CALL(moe_run_open(&m, comm, c));
    for (int kind = 0; kind < NBAD; kind++) {
        const int bad_rank = kind % m.nranks;
        moe_input_t in;
        CHECK_CALL(moe_input_make(&m, m.rank, 100 + kind, kind, &in));
        CHECK(in.T >= 2);
        epx_dispatch_args_t a = moe_input_args(&m, &in);
        if (m.rank == bad_rank)
            spoil(c, kind, &in, &a);
        epx_handle_t *h = NULL;
        epx_status_t st = epx_dispatch_send(m.moe, &a, &h);
        moe_input_free(&in);
        if (m.rank == bad_rank)
            CHECKF(st == bads[kind].want || st == bads[kind].also,
                   "%s on this rank: epx_dispatch_send -> %s, want %s",
                   bads[kind].what, epx_status_str(st),
                   epx_status_str(bads[kind].want));
        else
            CHECKF(st == EPX_ERR_PEER,
                   "%s on rank %d: epx_dispatch_send here -> %s, want "
                   "EPX_ERR_PEER", bads[kind].what, bad_rank,
                   epx_status_str(st));
        CHECKF(h == NULL, "%s: a failed dispatch returned a handle",
               bads[kind].what);
        CHECKF(strlen(epx_last_error()) > 0, "%s: %s without a message",
               bads[kind].what, epx_status_str(st));
        /* Nothing of the failed call may show up in the next one. */
        CHECK_CALL(moe_run_round(&m, 200 + kind, 50 + kind, &h));
        epx_handle_release(h);
    }
    moe_run_close(&m);
    return 0;
}

/* A rank that misses the error of another waits for it until the timeout:
 * keep it short enough for the suite, long enough for a loaded host. */
#define BAD_INPUT_TIMEOUT 20.0

static void bad_input(void **state)
{
    moe_case_t *c = *state;
    assert_int_equal(epxt_launch(3, BAD_INPUT_TIMEOUT, bad_input_rank, c,
                                 NULL), EPX_OK);
}

static void bad_input_one_rank(void **state)
{
    (void)state;
    assert_int_equal(epxt_launch(1, BAD_INPUT_TIMEOUT, bad_input_rank,
                                 &err_case, NULL), EPX_OK);
}

/* ---- ranks disagree at epx_moe_create */

enum { MM_HIDDEN, MM_EXPERTS, MM_TOPK, MM_DTYPE, MM_LAYOUT, MM_ALIGN, NMM };
static const char *const mm_what[NMM] = { "hidden", "num_experts", "topk",
                                          "dtype", "layout", "alignment" };

static int mismatch_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    const int me = epx_comm_rank(comm), R = epx_comm_size(comm);
    for (int f = 0; f < NMM; f++) {
        epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
        p.hidden = 16;
        p.num_experts = 6;
        p.topk = 2;
        p.max_tokens_per_rank = 8;
        p.layout = EPX_LAYOUT_EXPERT_MAJOR;
        p.expert_alignment = 4;
        if (me == (f + 1) % R) {
            switch (f) {
            case MM_HIDDEN: p.hidden = 17; break;
            case MM_EXPERTS: p.num_experts = 7; break;
            case MM_TOPK: p.topk = 3; break;
            case MM_DTYPE: p.dtype = EPX_DTYPE_FP32; break;
            case MM_LAYOUT: p.layout = EPX_LAYOUT_TOKEN_MAJOR; break;
            case MM_ALIGN: p.expert_alignment = 8; break;
            }
        }
        epx_moe_t *moe = (epx_moe_t *)&p;   /* must stay untouched */
        epx_status_t st = epx_moe_create(comm, &p, &moe);
        CHECKF(st == EPX_ERR_MISMATCH, "%s differs on rank %d: "
               "epx_moe_create -> %s (%s), want EPX_ERR_MISMATCH",
               mm_what[f], (f + 1) % R, epx_status_str(st), epx_last_error());
        CHECK(moe == (epx_moe_t *)&p);
        CHECK(strlen(epx_last_error()) > 0);
    }
    /* The communicator still makes working engines. */
    CHECK_CALL(moe_case_run(comm, &err_case));
    return 0;
}

static void mismatch(void **state)
{
    (void)state;
    assert_int_equal(epxt_launch(3, 0, mismatch_rank, NULL, NULL), EPX_OK);
}

/* ---- parameters every rank gets wrong the same way */

static int invalid_params_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    for (int i = 0; i < 16; i++) {
        epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
        p.hidden = 16;
        p.num_experts = 6;
        p.topk = 2;
        p.max_tokens_per_rank = 8;
        p.layout = EPX_LAYOUT_EXPERT_MAJOR;
        p.expert_alignment = 4;
        const char *what = "", *named = NULL;
        switch (i) {
        case 0: p.hidden = 0; what = "hidden 0"; break;
        case 1: p.num_experts = 0; what = "num_experts 0"; break;
        case 2: p.topk = 0; what = "topk 0"; break;
        case 3: p.topk = EPX_MAX_TOPK + 1; what = "topk > EPX_MAX_TOPK"; break;
        case 4: p.expert_alignment = 0; what = "alignment 0"; break;
        case 5: p.dtype = EPX_DTYPE_INT32; what = "dtype INT32"; break;
        case 6: p.struct_size = 0; what = "struct_size 0"; break;
        case 7: p.max_tokens_per_rank = -1; what = "max_tokens -1"; break;
        case 8: p.layout = (epx_layout_t)7; what = "layout 7"; break;
        /* Absurd sizes: refused by name, not warned about and left to fail
         * (or kill the process) later. */
        case 9: p.hidden = INT_MAX; named = what = "hidden"; break;
        case 10: p.num_experts = INT_MAX; named = what = "num_experts"; break;
        case 11: p.max_tokens_per_rank = INT_MAX;
                 named = what = "max_tokens_per_rank"; break;
        case 12: p.num_slots = INT_MAX - 1; named = what = "num_slots"; break;
        case 13: p.num_layers = INT_MAX; named = what = "num_layers"; break;
        case 14: p.hidden = (1 << 20) + 1; named = what = "hidden"; break;
        case 15: p.dtype = (epx_dtype_t)(EPX_DTYPE_FP64 + 1);
                 what = "dtype past FP64"; named = "dtype"; break;
        }
        epx_moe_t *moe = NULL;
        epx_status_t st = epx_moe_create(comm, &p, &moe);
        CHECKF(st == EPX_ERR_INVALID, "%s: epx_moe_create -> %s, want "
               "EPX_ERR_INVALID", what, epx_status_str(st));
        CHECK(moe == NULL);
        CHECK(strlen(epx_last_error()) > 0);
        CHECKF(!named || strstr(epx_last_error(), named), "%s: %s", what,
               epx_last_error());
    }
    epx_moe_t *moe = NULL;
    CHECK_ST(epx_moe_create(comm, NULL, &moe), EPX_ERR_INVALID);
    CHECK_ST(epx_moe_create(NULL, NULL, &moe), EPX_ERR_INVALID);
    epx_moe_destroy(NULL);
    epx_handle_release(NULL);
    CHECK_CALL(moe_case_run(comm, &err_case));
    return 0;
}

static void invalid_params(void **state)
{
    (void)state;
    assert_int_equal(epxt_launch(2, 0, invalid_params_rank, NULL, NULL),
                     EPX_OK);
}

/* ---- engines whose windows /dev/shm cannot hold: refused at creation
 * (a dispatch that filled them would die of SIGBUS) */

static int shm_full_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    struct statvfs v;
    CHECK(statvfs("/dev/shm", &v) == 0);
    double avail = (double)v.f_bavail * (double)v.f_frsize;
    epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
    p.hidden = 65536;                  /* 256 KiB fp32 rows */
    p.dtype = EPX_DTYPE_FP32;
    p.num_experts = 2;
    p.topk = 2;
    p.layout = EPX_LAYOUT_TOKEN_MAJOR;
    p.expert_alignment = 1;
    /* Rows enough that one window alone outgrows the free space. */
    double tokens = avail / (256.0 * 1024) + 1;
    if (tokens > (1 << 24)) {
        printf("# /dev/shm has %.0f GiB free: too much to fill\n",
               avail / (1 << 30));
        return 0;
    }
    p.max_tokens_per_rank = (int)tokens;
    epx_moe_t *moe = NULL;
    epx_status_t st = epx_moe_create(comm, &p, &moe);
    CHECKF(st == EPX_ERR_NOMEM, "max_tokens %d over %.1f GiB free: %s (%s)",
           p.max_tokens_per_rank, avail / (1 << 30), epx_status_str(st),
           epx_last_error());
    CHECK(moe == NULL);
    CHECKF(strstr(epx_last_error(), "/dev/shm"), "%s", epx_last_error());
    /* The communicator is still good. */
    CHECK_CALL(moe_case_run(comm, &err_case));
    return 0;
}

static void shm_too_small(void **state)
{
    (void)state;
    assert_int_equal(epxt_launch(2, 0, shm_full_rank, NULL, NULL), EPX_OK);
}

/* ---- parameter structs of an unknown version, and routing weights that
 * are not finite: refused by name */

static int versions_weights_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    epx_comm_params_t cp = EPX_COMM_PARAMS_INIT;
    cp.version = 999;
    epx_comm_t *c2 = NULL;
    CHECK_ST(epx_comm_create(&cp, &c2), EPX_ERR_INVALID);
    CHECK(c2 == NULL);
    CHECKF(strstr(epx_last_error(), "comm params"), "%s", epx_last_error());

    epx_balance_params_t bp = EPX_BALANCE_PARAMS_INIT;
    bp.num_layers = 1;
    bp.num_experts = bp.num_slots = 2;
    bp.num_ranks = 1;
    bp.version = 999;
    double load[2] = { 1, 2 };
    int32_t p2l[2];
    CHECK_ST(epx_balance_plan(&bp, load, p2l, NULL, 0, NULL), EPX_ERR_INVALID);
    CHECKF(strstr(epx_last_error(), "balance params"), "%s", epx_last_error());
    bp.version = EPX_BALANCE_PARAMS_VERSION;
    CHECK_OK(epx_balance_plan(&bp, load, p2l, NULL, 0, NULL));

    epx_moe_params_t mp = EPX_MOE_PARAMS_INIT;
    mp.hidden = 16;
    mp.num_experts = 6;
    mp.topk = 2;
    mp.max_tokens_per_rank = 8;
    mp.version = 999;
    epx_moe_t *moe = NULL;
    CHECK_ST(epx_moe_create(comm, &mp, &moe), EPX_ERR_INVALID);
    CHECK(moe == NULL);
    CHECKF(strstr(epx_last_error(), "moe params"), "%s", epx_last_error());

    moe_run_t m;
    CHECK_CALL(moe_run_open(&m, comm, &err_case));
    moe_input_t in;
    CHECK_CALL(moe_input_make(&m, m.rank, 0, 0, &in));
    epx_dispatch_args_t a = moe_input_args(&m, &in);
    epx_handle_t *h = NULL;
    a.version = 999;
    CHECK_ST(epx_dispatch_send(m.moe, &a, &h), EPX_ERR_INVALID);
    CHECKF(strstr(epx_last_error(), "dispatch args"), "%s", epx_last_error());
    a.version = EPX_DISPATCH_ARGS_VERSION;
    /* A weight of a real entry: NaN, +Inf, -Inf; every rank the same. */
    const int K = err_case.topk;
    int64_t at = -1;
    for (int64_t i = 0; i < in.T * K && at < 0; i++)
        if (in.idx64[i] >= 0)
            at = i;
    if (at >= 0) {
        const float bad[3] = { NAN, INFINITY, -INFINITY };
        float keep = in.w[at];
        for (int b = 0; b < 3; b++) {
            in.w[at] = bad[b];
            CHECK_ST(epx_dispatch_send(m.moe, &a, &h), EPX_ERR_INVALID);
            CHECK(h == NULL);
            CHECKF(strstr(epx_last_error(), "topk_weights"), "%s",
                   epx_last_error());
        }
        in.w[at] = keep;
    }
    moe_input_free(&in);
    /* The engine still works, and a combine args version is checked too. */
    moe_round_t r;
    int rc = moe_round_dispatch(&m, &r, 0, 1, &h);
    if (rc == 0) {
        epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
        ca.version = 999;
        epx_status_t st = epx_combine_send(m.moe, h, &ca);
        rc = st == EPX_ERR_INVALID &&
             strstr(epx_last_error(), "combine args") ? 0
             : epxt_fail(__FILE__, __LINE__, "combine args 999: %s (%s)",
                         epx_status_str(st), epx_last_error());
    }
    if (rc == 0)
        rc = moe_round_combine(&r, h);
    moe_round_free(&r);
    epx_handle_release(h);
    moe_run_close(&m);
    return rc;
}

static void versions_weights(void **state)
{
    (void)state;
    assert_int_equal(epxt_launch(2, 0, versions_weights_rank, NULL, NULL),
                     EPX_OK);
}

/* ---- calls out of order or without a handle */

static int state_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    moe_run_t m;
    CHECK_CALL(moe_run_open(&m, comm, &err_case));
    moe_input_t in;
    CHECK_CALL(moe_input_make(&m, m.rank, 7, 7, &in));
    epx_dispatch_args_t a = moe_input_args(&m, &in);
    epx_recv_t rv = { .struct_size = sizeof(rv) };
    memset(&rv, 0, sizeof(rv));
    rv.struct_size = sizeof(rv);
    epx_handle_t *h = NULL;
    CHECK_ST(epx_dispatch_recv(m.moe, NULL, &rv), EPX_ERR_INVALID);
    CHECK_OK(epx_dispatch_send(m.moe, &a, &h));
    CHECK_OK(epx_dispatch_recv(m.moe, h, &rv));
    /* combine_recv before combine_send */
    float *out = calloc((size_t)(in.T + 1) * (size_t)m.c->hidden,
                        sizeof(float));
    CHECK(out);
    epx_tensor_t ot = { out, EPX_DTYPE_FP32, in.T, m.c->hidden };
    CHECK_ST(epx_combine_recv(m.moe, h, &ot), EPX_ERR_STATE);
    CHECK(strlen(epx_last_error()) > 0);
    epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
    void *y = calloc((size_t)(rv.num_rows + 1) * (size_t)m.c->hidden, 2);
    CHECK(y);
    ca.y = (epx_tensor_t){ y, EPX_DTYPE_BF16, rv.num_rows, m.c->hidden };
    CHECK_ST(epx_combine_send(m.moe, NULL, &ca), EPX_ERR_INVALID);
    CHECK_OK(epx_combine_send(m.moe, h, &ca));
    CHECK_OK(epx_combine_recv(m.moe, h, &ot));
    /* y was zero: so is every output */
    for (int64_t i = 0; i < in.T * m.c->hidden; i++)
        CHECKF(out[i] == 0.0f, "out[%lld] = %g with y = 0", (long long)i,
               (double)out[i]);
    free(y);
    free(out);
    moe_input_free(&in);
    epx_handle_release(h);
    h = NULL;
    CHECK_CALL(moe_run_round(&m, 8, 8, &h));
    epx_handle_release(h);
    moe_run_close(&m);
    return 0;
}

static void out_of_order(void **state)
{
    (void)state;
    assert_int_equal(epxt_launch(2, 0, state_rank, NULL, NULL), EPX_OK);
}

/* ---- combine calls every rank gets wrong, then right */

static moe_case_t misuse_em = {
    .name = "misuse-em", .experts = 6, .topk = 3, .hidden = 8,
    .max_tokens = 5, .dtype = EPX_DTYPE_BF16, .idx_dtype = EPX_DTYPE_INT32,
    .out_dtype = EPX_DTYPE_FP32, .layout = EPX_LAYOUT_EXPERT_MAJOR,
    .align = 4, .misuse = MISUSE_COMBINE_Y | MISUSE_COMBINE_OUT,
};
static moe_case_t misuse_tm = {
    .name = "misuse-tm", .experts = 6, .topk = 3, .hidden = 8,
    .max_tokens = 5, .dtype = EPX_DTYPE_FP32, .idx_dtype = EPX_DTYPE_INT64,
    .out_dtype = EPX_DTYPE_BF16, .layout = EPX_LAYOUT_TOKEN_MAJOR,
    .align = 1,
    .misuse = MISUSE_COMBINE_Y | MISUSE_COMBINE_OUT | MISUSE_OUT_DTYPE,
};

/* FP64 engines: y of the wrong size, out of the wrong size and of a
 * narrower dtype refused, then the right calls */
static moe_case_t misuse_f64_em = {
    .name = "misuse-fp64-em", .experts = 6, .topk = 3, .hidden = 8,
    .max_tokens = 5, .dtype = EPX_DTYPE_FP64, .idx_dtype = EPX_DTYPE_INT32,
    .out_dtype = EPX_DTYPE_FP64, .layout = EPX_LAYOUT_EXPERT_MAJOR,
    .align = 4,
    .misuse = MISUSE_COMBINE_Y | MISUSE_COMBINE_OUT | MISUSE_OUT_DTYPE,
};
static moe_case_t misuse_f64_tm = {
    .name = "misuse-fp64-tm", .experts = 6, .topk = 3, .hidden = 8,
    .max_tokens = 5, .dtype = EPX_DTYPE_FP64, .idx_dtype = EPX_DTYPE_INT64,
    .out_dtype = EPX_DTYPE_FP64, .layout = EPX_LAYOUT_TOKEN_MAJOR,
    .align = 1, .misuse = MISUSE_OUT_DTYPE,
};

static int misuse_rank(epx_comm_t *comm, void *arg)
{
    return moe_case_run(comm, arg);
}

static void combine_bad_y(void **state)
{
    moe_case_t *c = *state;
    assert_int_equal(epxt_launch(3, 0, misuse_rank, c, NULL), EPX_OK);
}

/* ---- a peer that never dispatches: it stays (one that exits is seen
 * dead at once, tests/core/test_failure), so the others time out and
 * the message names it, where it is */

#define SHORT_TIMEOUT 2.0
static int *stay;   /* shared: the waiting ranks done (set before launch) */

static void stay_until(int n)
{
    for (double t0 = epxt_now(); epxt_now() - t0 < SHORT_TIMEOUT * 8 &&
         __atomic_load_n(stay, __ATOMIC_SEQ_CST) < n;)
        usleep(2000);
}

static int absent_peer_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    moe_run_t m;
    CHECK_CALL(moe_run_open(&m, comm, &err_case));
    if (m.rank == 1) {   /* never dispatches */
        stay_until(1);
        moe_run_close(&m);
        return 0;
    }
    moe_input_t in;
    CHECK_CALL(moe_input_make(&m, m.rank, 1, 1, &in));
    epx_dispatch_args_t a = moe_input_args(&m, &in);
    epx_handle_t *h = NULL;
    double t0 = epxt_now();
    epx_status_t st = epx_dispatch_send(m.moe, &a, &h);
    if (st == EPX_OK) {
        epx_recv_t rv = { .struct_size = sizeof(rv) };
        memset(&rv, 0, sizeof(rv));
        rv.struct_size = sizeof(rv);
        st = epx_dispatch_recv(m.moe, h, &rv);
    }
    double dt = epxt_now() - t0;
    CHECKF(st == EPX_ERR_TIMEOUT, "dispatch with an absent peer -> %s, want "
           "EPX_ERR_TIMEOUT (%s)", epx_status_str(st), epx_last_error());
    CHECKF(dt < SHORT_TIMEOUT * 4, "gave up after %.1f s with a timeout of "
           "%.1f s", dt, SHORT_TIMEOUT);
    CHECKF(strstr(epx_last_error(), "rank 1 in between calls of call 0"),
           "the timeout does not say where rank 1 is: %s", epx_last_error());
    __atomic_fetch_add(stay, 1, __ATOMIC_SEQ_CST);
    epx_handle_release(h);
    moe_input_free(&in);
    moe_run_close(&m);
    return 0;
}

static void absent_peer_times_out(void **state)
{
    (void)state;
    stay = epxt_shared_alloc(sizeof(int));
    assert_int_equal(epxt_launch(2, SHORT_TIMEOUT, absent_peer_rank, NULL,
                                 NULL), EPX_OK);
    epxt_shared_free(stay, sizeof(int));
}

/* Rank 2 of 3 stops after its dispatch_recv of the second call: the
 * others' combine_recv times out naming it and its step. */
static int stuck_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    moe_run_t m;
    CHECK_CALL(moe_run_open(&m, comm, &err_case));
    epx_handle_t *h = NULL;
    CHECK_CALL(moe_run_round(&m, 3, 3, &h));   /* call 1: every rank */
    epx_handle_release(h);
    h = NULL;
    moe_input_t in;
    CHECK_CALL(moe_input_make(&m, m.rank, 3, 3, &in));
    epx_dispatch_args_t a = moe_input_args(&m, &in);
    epx_recv_t rv = { .struct_size = sizeof(rv) };
    CHECK_OK(epx_dispatch_send(m.moe, &a, &h));
    CHECK_OK(epx_dispatch_recv(m.moe, h, &rv));
    if (m.rank == 2) {
        stay_until(2);
    } else {
        epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
        ca.y = rv.x;
        float *out = calloc((size_t)(in.T * m.c->hidden + 1), sizeof(float));
        epx_tensor_t ot = { out, EPX_DTYPE_FP32, in.T, m.c->hidden };
        CHECK_OK(epx_combine_send(m.moe, h, &ca));
        epx_status_t st = epx_combine_recv(m.moe, h, &ot);
        free(out);
        CHECKF(st == EPX_ERR_TIMEOUT, "combine_recv -> %s (%s)",
               epx_status_str(st), epx_last_error());
        CHECKF(strstr(epx_last_error(), "combine_recv (call 2") &&
               strstr(epx_last_error(), "rank 2 in dispatch_recv of call 2"),
               "the timeout does not name rank 2 and its step: %s",
               epx_last_error());
        /* Over UCX the record came with rank 2's heartbeats. */
        const char *tl = getenv("EPX_TRANSPORTS");
        CHECKF(!tl || strcmp(tl, "ucx") ||
               strstr(epx_last_error(), "over the network as of their last "
                                        "heartbeat"),
               "over UCX the message does not say where the record came "
               "from: %s", epx_last_error());
        __atomic_fetch_add(stay, 1, __ATOMIC_SEQ_CST);
        stay_until(2);   /* leaving first would look like a death */
    }
    epx_handle_release(h);
    moe_input_free(&in);
    moe_run_close(&m);
    return 0;
}

static void stuck_rank_named(void **state)
{
    (void)state;
    stay = epxt_shared_alloc(sizeof(int));
    assert_int_equal(epxt_launch(3, SHORT_TIMEOUT, stuck_rank, NULL, NULL),
                     EPX_OK);
    epxt_shared_free(stay, sizeof(int));
}

#ifdef EPX_HAVE_UCX
/* The same over UCX: rank 2's record reaches the others with its
 * heartbeats (its memory is not mapped by them). */
static void stuck_rank_named_ucx(void **state)
{
    setenv("EPX_TRANSPORTS", "ucx", 1);
    setenv("UCX_TLS", "tcp,self", 1);
    stuck_rank_named(state);
    unsetenv("EPX_TRANSPORTS");
    unsetenv("UCX_TLS");
}
#endif

int main(void)
{
    epxt_init("test_errors");
    static moe_case_t tm_case;
    tm_case = err_case;
    tm_case.name = "errors-tm";
    tm_case.layout = EPX_LAYOUT_TOKEN_MAJOR;
    tm_case.align = 1;
    tm_case.idx_dtype = EPX_DTYPE_INT64;
    tm_case.dtype = EPX_DTYPE_FP32;
    static moe_case_t f64_case;
    f64_case = err_case;
    f64_case.name = "errors-fp64";
    f64_case.dtype = EPX_DTYPE_FP64;
    f64_case.out_dtype = EPX_DTYPE_FP64;
    const struct CMUnitTest tests[] = {
        { "bad_input_em", bad_input, NULL, NULL, &err_case },
        { "bad_input_tm", bad_input, NULL, NULL, &tm_case },
        { "bad_input_fp64", bad_input, NULL, NULL, &f64_case },
        cmocka_unit_test(bad_input_one_rank),
        cmocka_unit_test(mismatch),
        cmocka_unit_test(invalid_params),
        cmocka_unit_test(shm_too_small),
        cmocka_unit_test(versions_weights),
        cmocka_unit_test(out_of_order),
        { "combine_misuse_em", combine_bad_y, NULL, NULL, &misuse_em },
        { "combine_misuse_tm", combine_bad_y, NULL, NULL, &misuse_tm },
        { "combine_misuse_fp64_em", combine_bad_y, NULL, NULL,
          &misuse_f64_em },
        { "combine_misuse_fp64_tm", combine_bad_y, NULL, NULL,
          &misuse_f64_tm },
        cmocka_unit_test(absent_peer_times_out),
        cmocka_unit_test(stuck_rank_named),
#ifdef EPX_HAVE_UCX
        cmocka_unit_test(stuck_rank_named_ucx),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
