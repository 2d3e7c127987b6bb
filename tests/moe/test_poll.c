/*
 * epx_dispatch_poll (throughput mode): the ready set is exactly the local
 * experts whose sources have all finished writing.
 *
 * Each round one source (chosen by the seed) is held back between its
 * count exchange and its first row (internal test hook, so the program is
 * linked statically).  The other ranks finish their dispatch_send, wait
 * for each other through shared memory, then poll: an expert must be ready
 * exactly when the held source has no row for it (from the reference),
 * and the rows of every ready expert must already be right.  Then the held
 * source goes on; polling must reach every expert, and after
 * dispatch_recv poll says all ready; the round ends with the usual
 * reference check of recv and combine.  Fresh and cached dispatches, both
 * layouts, 1, 2, 3 and 8 ranks; bad arguments and call order.
 */
#include <inttypes.h>
#include <sched.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/epx_test.h"
#include "moe/moe.h"
#include "moe_case.h"

enum { MAX_ROUNDS = 256, TAG_HELD = 77 };

/* Shared by the forked ranks: per round, ranks done sending and ranks done
 * with their partial poll. */
typedef struct sync {
    int sent[MAX_ROUNDS], polled[MAX_ROUNDS];
} sync_t;

typedef struct poll_arg {
    const moe_case_t *cases;
    sync_t *sync;
} poll_arg_t;

static sync_t *g_sync;
static int g_round, g_nranks;

static int wait_count(int *p, int want)
{
    double deadline = epxt_now() + 60.0;
    while (__atomic_load_n(p, __ATOMIC_ACQUIRE) < want) {
        if (epxt_now() > deadline)
            return -1;
        sched_yield();
    }
    return 0;
}

/* The held source: rows go out only once the others have polled. */
static void hold_source(epx_moe_t *m)
{
    (void)m;
    if (wait_count(&g_sync->polled[g_round], g_nranks - 1) != 0)
        epxt_fail(__FILE__, __LINE__, "round %d: the other ranks never "
                  "polled", g_round);
}

static size_t esz(epx_dtype_t dt) { return dt == EPX_DTYPE_BF16 ? 2 : 4; }

/* Local experts the held source feeds, from the reference. */
static void held_feeds(const moe_case_t *c, const ref_recv_t *w, int held,
                       uint8_t *fed)
{
    memset(fed, 0, (size_t)w->num_local);
    for (int64_t i = 0; i < w->num_rows; i++) {
        if (w->src_rank[i] != held)
            continue;
        if (c->layout == EPX_LAYOUT_EXPERT_MAJOR) {
            fed[w->row_expert[i]] = 1;
            continue;
        }
        for (int k = 0; k < c->topk; k++)
            if (w->topk_idx[i * c->topk + k] >= 0)
                fed[w->topk_idx[i * c->topk + k]] = 1;
    }
}

/* What poll describes before recv: shape and counts like the reference,
 * and the rows of every ready expert already in place. */
static int check_partial(const moe_case_t *c, int round, const ref_recv_t *w,
                         const epx_recv_t *g, const uint8_t *ready)
{
    const int K = c->topk, em = c->layout == EPX_LAYOUT_EXPERT_MAJOR;
    const size_t rb = (size_t)c->hidden * esz(c->dtype);
    CHECKF(g->num_rows == w->num_rows && g->num_local_experts == w->num_local &&
               g->first_local_expert == w->first_local &&
               g->x.rows == w->num_rows && g->x.cols == c->hidden,
           "case %s round %d: poll describes %" PRId64 " rows, experts "
           "[%d, +%d); want %" PRId64 ", [%d, +%d)", c->name, round,
           g->num_rows, g->first_local_expert, g->num_local_experts,
           w->num_rows, w->first_local, w->num_local);
    for (int j = 0; j < w->num_local; j++)
        CHECKF(g->expert_counts[j] == w->counts[j] &&
                   (!em || g->expert_offsets[j] == w->offsets[j]),
               "case %s round %d: poll: expert %d count/offset differ",
               c->name, round, j);
    for (int64_t i = 0; i < w->num_rows; i++) {
        if (w->src_rank[i] < 0)
            continue;
        int covered = 0;
        if (em)
            covered = ready[w->row_expert[i]];
        for (int k = 0; !em && k < K; k++)
            covered |= w->topk_idx[i * K + k] >= 0 &&
                       ready[w->topk_idx[i * K + k]];
        if (!covered)
            continue;
        CHECKF(g->src_rank[i] == w->src_rank[i] &&
                   g->src_token[i] == w->src_token[i] &&
                   memcmp((const char *)g->x.data + (size_t)i * rb,
                          w->x + (size_t)i * rb, rb) == 0,
               "case %s round %d: poll said ready but row %" PRId64 " (rank "
               "%d token %d) is not there yet", c->name, round, i,
               w->src_rank[i], w->src_token[i]);
        if (em)
            CHECKF(memcmp(&g->topk_weights[i], &w->weights[i], 4) == 0,
                   "case %s round %d: row %" PRId64 " weight", c->name, round,
                   i);
        else
            CHECKF(memcmp(&g->topk_idx[i * K], &w->topk_idx[i * K],
                          4 * (size_t)K) == 0 &&
                       memcmp(&g->topk_weights[i * K], &w->weights[i * K],
                              4 * (size_t)K) == 0,
                   "case %s round %d: row %" PRId64 " top-k", c->name, round,
                   i);
    }
    return 0;
}

static int poll_all(epx_moe_t *moe, epx_handle_t *h, epx_recv_t *rv,
                    uint8_t *ready, int nl, const char *name, int round,
                    const char *when)
{
    int n = -1;
    memset(ready, 0xee, (size_t)nl + 1);
    CHECK_OK(epx_dispatch_poll(moe, h, rv, ready, &n));
    CHECKF(n == nl, "case %s round %d %s: %d of %d experts ready", name,
           round, when, n, nl);
    for (int j = 0; j < nl; j++)
        CHECKF(ready[j] == 1, "case %s round %d %s: ready[%d] = %d", name,
               round, when, j, ready[j]);
    CHECKF(ready[nl] == 0xee, "case %s: poll wrote past ready[%d]", name, nl);
    return 0;
}

/* One round as moe_round_dispatch does it, with the held source and the
 * polls in between. */
static int poll_round(moe_run_t *m, int route, int data, epx_handle_t **handle,
                      int round)
{
    const moe_case_t *c = m->c;
    const int R = m->nranks, me = m->rank;
    const int held = (int)(epxt_hash(m->seed, TAG_HELD, (uint64_t)round, 0, 0) %
                           (uint64_t)R);
    moe_round_t r;
    memset(&r, 0, sizeof(r));
    r.m = m;
    r.data = data;
    r.all = calloc((size_t)R, sizeof(*r.all));
    r.toks = calloc((size_t)R, sizeof(*r.toks));
    CHECKF(r.all && r.toks, "out of memory");
    for (int s = 0; s < R; s++) {
        CHECK_CALL(moe_input_make(m, s, route, data, &r.all[s]));
        r.toks[s] = (ref_tokens_t){ r.all[s].T, r.all[s].x, r.all[s].idx64,
                                    r.all[s].w, 0 };
    }
    CHECKF(ref_dispatch(&m->cfg, r.toks, me, &r.want) == 0, "out of memory");
    const int nl = r.want.num_local;
    uint8_t *ready = malloc((size_t)nl + 1), *fed = malloc((size_t)nl + 1);
    CHECKF(ready && fed, "out of memory");

    epx_dispatch_args_t a = moe_input_args(m, &r.all[me]);
    if (*handle)
        a.flags |= EPX_DISPATCH_CACHED;
    g_round = round;
    moe_hook_before_data = me == held ? hold_source : NULL;
    CHECK_OK(epx_dispatch_send(m->moe, &a, handle));
    moe_hook_before_data = NULL;
    r.rv.struct_size = sizeof(r.rv);
    if (me != held) {
        __atomic_fetch_add(&g_sync->sent[round], 1, __ATOMIC_RELEASE);
        CHECKF(wait_count(&g_sync->sent[round], R - 1) == 0,
               "round %d: the other sources never finished", round);
        int n = -1;
        memset(ready, 0xee, (size_t)nl + 1);
        CHECK_OK(epx_dispatch_poll(m->moe, *handle, &r.rv, ready, &n));
        __atomic_fetch_add(&g_sync->polled[round], 1, __ATOMIC_RELEASE);
        held_feeds(c, &r.want, held, fed);
        int want_n = 0;
        for (int j = 0; j < nl; j++) {
            want_n += !fed[j];
            CHECKF(ready[j] == !fed[j],
                   "case %s round %d: expert %d (%" PRId64 " rows) ready = %d, "
                   "want %d (source %d held back %s it)", c->name, data, j,
                   r.want.counts[j], ready[j], !fed[j], held,
                   fed[j] ? "feeds" : "does not feed");
        }
        CHECKF(n == want_n, "case %s round %d: num_ready %d, want %d",
               c->name, data, n, want_n);
        CHECKF(ready[nl] == 0xee, "case %s: poll wrote past ready", c->name);
        CHECK_CALL(check_partial(c, data, &r.want, &r.rv, ready));
        /* The held source now writes: poll must come round to all. */
        double deadline = epxt_now() + 60.0;
        do {
            CHECK_OK(epx_dispatch_poll(m->moe, *handle, &r.rv, ready, &n));
            CHECKF(epxt_now() < deadline, "case %s round %d: poll stuck at "
                   "%d of %d ready", c->name, data, n, nl);
            sched_yield();
        } while (n < nl);
        CHECK_CALL(poll_all(m->moe, *handle, &r.rv, ready, nl, c->name, data,
                            "once every source wrote"));
    } else {
        /* Every other source finished before we were let go. */
        CHECK_CALL(poll_all(m->moe, *handle, &r.rv, ready, nl, c->name, data,
                            "on the held source"));
    }
    CHECK_OK(epx_dispatch_recv(m->moe, *handle, &r.rv));
    CHECK_CALL(poll_all(m->moe, *handle, &r.rv, ready, nl, c->name, data,
                        "after recv"));
    int rc = moe_round_combine(&r, *handle);
    moe_round_free(&r);
    free(ready);
    free(fed);
    return rc;
}

static int poll_rank(epx_comm_t *comm, void *varg)
{
    const poll_arg_t *pa = varg;
    g_sync = pa->sync;
    g_nranks = epx_comm_size(comm);
    int round = 0;
    for (const moe_case_t *c = pa->cases; c->name; c++) {
        moe_run_t m;
        CHECK_CALL(moe_run_open(&m, comm, c));
        for (int route = 0; route < MOE_ROUTES; route++) {
            epx_handle_t *h = NULL;
            CHECK_CALL(poll_round(&m, route, 2 * route, &h, round++));
            CHECK_CALL(poll_round(&m, route, 2 * route + 1, &h, round++));
            epx_handle_release(h);
        }
        moe_run_close(&m);
    }
    return 0;
}

#define I32 EPX_DTYPE_INT32
#define I64 EPX_DTYPE_INT64
#define BF EPX_DTYPE_BF16
#define F32 EPX_DTYPE_FP32
#define TM EPX_LAYOUT_TOKEN_MAJOR
#define EM EPX_LAYOUT_EXPERT_MAJOR

static const moe_case_t poll_cases[] = {
    { .name = "poll-tm", .experts = 13, .topk = 3, .hidden = 40,
      .max_tokens = 12, .max_tokens_step = 1, .dtype = BF, .idx_dtype = I32,
      .out_dtype = BF, .layout = TM, .align = 1 },
    { .name = "poll-em-holes", .experts = 10, .topk = 4, .hidden = 33,
      .max_tokens = 9, .dtype = F32, .idx_dtype = I64, .out_dtype = F32,
      .layout = EM, .align = 4, .route = ROUTE_HOLES },
    { .name = "poll-em-hot", .experts = 9, .topk = 2, .hidden = 8,
      .max_tokens = 6, .dtype = BF, .idx_dtype = I32, .out_dtype = F32,
      .layout = EM, .align = 1, .route = ROUTE_HOT },
    { .name = "poll-tm-zero-odd", .experts = 16, .topk = 5, .hidden = 24,
      .max_tokens = 7, .dtype = F32, .idx_dtype = I32, .out_dtype = BF,
      .layout = TM, .align = 1, .tokens = TOK_ZERO_ODD },
    { 0 }
};

static void run_poll(int nranks)
{
    sync_t *s = epxt_shared_alloc(sizeof(sync_t));
    assert_non_null(s);
    poll_arg_t pa = { poll_cases, s };
    assert_int_equal(epxt_launch(nranks, 0, poll_rank, &pa, NULL), EPX_OK);
    epxt_shared_free(s, sizeof(sync_t));
}

static void poll_1(void **state) { (void)state; run_poll(1); }
static void poll_2(void **state) { (void)state; run_poll(2); }
static void poll_3(void **state) { (void)state; run_poll(3); }
static void poll_8(void **state) { (void)state; run_poll(8); }

/* ---- bad arguments and call order */

enum { BH = 8, BT = 3 };

static int bad_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    const int R = epx_comm_size(comm), me = epx_comm_rank(comm);
    epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
    p.hidden = BH;
    p.num_experts = 2 * R;
    p.topk = 1;
    p.max_tokens_per_rank = BT;
    p.dtype = EPX_DTYPE_FP32;
    epx_moe_t *m = NULL, *m2 = NULL;
    CHECK_OK(epx_moe_create(comm, &p, &m));
    CHECK_OK(epx_moe_create(comm, &p, &m2));
    float x[BT * BH], w[BT] = { 1, 1, 1 }, out[BT * BH];
    int32_t idx[BT];
    for (int i = 0; i < BT * BH; i++)
        x[i] = (float)(me * 1000 + i);
    for (int t = 0; t < BT; t++)
        idx[t] = (me + t) % (2 * R);
    epx_dispatch_args_t a = EPX_DISPATCH_ARGS_INIT;
    a.x = (epx_tensor_t){ x, EPX_DTYPE_FP32, BT, BH };
    a.topk_idx = (epx_tensor_t){ idx, EPX_DTYPE_INT32, BT, 1 };
    a.topk_weights = (epx_tensor_t){ w, EPX_DTYPE_FP32, BT, 1 };

    uint8_t ready[2];
    int n = 7;
    epx_handle_t *h = NULL, *h2 = NULL;
    epx_recv_t rv = { .struct_size = sizeof(rv) };
    CHECK_OK(epx_dispatch_send(m, &a, &h));
    CHECK_ST(epx_dispatch_poll(NULL, h, &rv, ready, &n), EPX_ERR_INVALID);
    CHECK_ST(epx_dispatch_poll(m, NULL, &rv, ready, &n), EPX_ERR_INVALID);
    CHECK_ST(epx_dispatch_poll(m, h, NULL, ready, &n), EPX_ERR_INVALID);
    CHECK_ST(epx_dispatch_poll(m, h, &rv, NULL, &n), EPX_ERR_INVALID);
    CHECK_ST(epx_dispatch_poll(m, h, &rv, ready, NULL), EPX_ERR_INVALID);
    CHECK_ST(epx_dispatch_poll(m2, h, &rv, ready, &n), EPX_ERR_INVALID);
    CHECKF(n == 7, "a refused poll wrote num_ready");
    /* m2 has no dispatch in flight: its own handle is needed first. */
    CHECK_OK(epx_dispatch_send(m2, &a, &h2));
    CHECK_OK(epx_dispatch_recv(m2, h2, &rv));
    CHECK_ST(epx_dispatch_poll(m2, h, &rv, ready, &n), EPX_ERR_INVALID);
    CHECK_OK(epx_dispatch_poll(m2, h2, &rv, ready, &n));
    CHECKF(n == 2 && ready[0] == 1 && ready[1] == 1, "m2 after recv: %d", n);
    /* A shorter epx_recv_t: nothing written past its declared size. */
    union { epx_recv_t r; unsigned char b[sizeof(epx_recv_t)]; } small;
    memset(&small, 0x5a, sizeof(small));
    size_t cut = offsetof(epx_recv_t, x);
    small.r.struct_size = cut;
    CHECK_OK(epx_dispatch_poll(m, h, &small.r, ready, &n));
    for (size_t i = cut; i < sizeof(small); i++)
        CHECKF(small.b[i] == 0x5a, "poll wrote byte %zu of a %zu-byte recv",
               i, cut);
    CHECKF(small.r.num_rows >= 0, "num_rows not filled");
    CHECK_OK(epx_dispatch_recv(m, h, &rv));
    CHECK_OK(epx_dispatch_poll(m, h, &rv, ready, &n));
    CHECKF(n == 2, "after recv: %d ready", n);
    epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
    ca.y = rv.x;
    CHECK_OK(epx_combine_send(m, h, &ca));
    CHECK_ST(epx_dispatch_poll(m, h, &rv, ready, &n), EPX_ERR_STATE);
    epx_tensor_t o = { out, EPX_DTYPE_FP32, BT, BH };
    CHECK_OK(epx_combine_recv(m, h, &o));
    CHECK_ST(epx_dispatch_poll(m, h, &rv, ready, &n), EPX_ERR_STATE);
    for (int i = 0; i < BT * BH; i++)   /* identity experts, weight 1 */
        CHECKF(out[i] == x[i], "out[%d] = %g, want %g", i, out[i], x[i]);
    epx_handle_release(h);
    h = NULL;
    /* The refused calls left the engine usable. */
    CHECK_OK(epx_dispatch_send(m, &a, &h));
    CHECK_OK(epx_dispatch_recv(m, h, &rv));
    ca.y = rv.x;
    CHECK_OK(epx_combine_send(m, h, &ca));
    CHECK_OK(epx_combine_recv(m, h, &o));
    for (int i = 0; i < BT * BH; i++)
        CHECKF(out[i] == x[i], "after refusals: out[%d] = %g", i, out[i]);
    epx_handle_release(h);
    epx_handle_release(h2);   /* mid-dispatch on m2: taken in */
    epx_moe_destroy(m);
    epx_moe_destroy(m2);
    return 0;
}

static void bad_args(void **state)
{
    (void)state;
    assert_int_equal(epxt_launch(2, 0, bad_rank, NULL, NULL), EPX_OK);
}

int main(void)
{
    epxt_init("test_poll");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(poll_1),
        cmocka_unit_test(poll_2),
        cmocka_unit_test(poll_3),
        cmocka_unit_test(poll_8),
        cmocka_unit_test(bad_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
