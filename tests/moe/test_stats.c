/*
 * Load statistics (epx_moe_stats): per layer, the tokens each rank routes
 * to each expert, as a window sum and a decayed load, locally and summed
 * over the ranks; cached dispatches count, failed ones do not; reset; the
 * JSON export parses back to the same numbers.  Expected values come from
 * the test's own routing, not from the library.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>

#include "common/epx_test.h"

enum { R = 3, E = 6, K = 2, H = 4, L = 2, TMAX = 8 };
#define DECAY 0.5

static int tokens(int rank) { return 4 + rank; }

/* Routing `i` of `rank`: two distinct experts, the second slot of token 0
 * empty (-1). */
static int expert(int rank, int i, int t, int k)
{
    return t == 0 && k == 1 ? -1 : (rank + t + 3 * k + i) % E;
}

static void count(int rank, int i, int64_t c[E])
{
    for (int t = 0; t < tokens(rank); t++)
        for (int k = 0; k < K; k++)
            if (expert(rank, i, t, k) >= 0)
                c[expert(rank, i, t, k)]++;
}

typedef struct io {
    float x[TMAX * H], w[TMAX * K], out[TMAX * H];
    int32_t idx[TMAX * K];
    epx_dispatch_args_t a;
} io_t;

static void io_init(io_t *io, int rank, int i, int layer)
{
    int T = tokens(rank);
    for (int j = 0; j < T * H; j++)
        io->x[j] = (float)j;
    for (int t = 0; t < T; t++)
        for (int k = 0; k < K; k++) {
            io->idx[t * K + k] = expert(rank, i, t, k);
            io->w[t * K + k] = 1.0f;
        }
    io->a = (epx_dispatch_args_t)EPX_DISPATCH_ARGS_INIT;
    io->a.x = (epx_tensor_t){ io->x, EPX_DTYPE_FP32, T, H };
    io->a.topk_idx = (epx_tensor_t){ io->idx, EPX_DTYPE_INT32, T, K };
    io->a.topk_weights = (epx_tensor_t){ io->w, EPX_DTYPE_FP32, T, K };
    io->a.layer = layer;
}

/* dispatch (fresh when *h is NULL, else cached) + in-place combine */
static int round_trip(epx_moe_t *m, io_t *io, epx_handle_t **h)
{
    epx_recv_t rv = { .struct_size = sizeof(rv) };
    io->a.flags = *h ? EPX_DISPATCH_CACHED : 0;
    CHECK_OK(epx_dispatch_send(m, &io->a, h));
    CHECK_OK(epx_dispatch_recv(m, *h, &rv));
    epx_combine_args_t c = EPX_COMBINE_ARGS_INIT;
    c.y = rv.x;
    CHECK_OK(epx_combine_send(m, *h, &c));
    epx_tensor_t o = { io->out, EPX_DTYPE_FP32, io->a.x.rows, H };
    CHECK_OK(epx_combine_recv(m, *h, &o));
    return 0;
}

static int expect(const epx_moe_stats_t *s, const int64_t w[L][E],
                  const double d[L][E], int64_t dispatches)
{
    CHECK(s->num_layers == L && s->num_experts == E && s->num_slots == E);
    CHECKF(s->dispatches == dispatches, "%lld dispatches, want %lld",
           (long long)s->dispatches, (long long)dispatches);
    for (int l = 0; l < L; l++)
        for (int e = 0; e < E; e++) {
            CHECKF(s->window[l * E + e] == w[l][e], "window[%d][%d] %lld want %lld",
                   l, e, (long long)s->window[l * E + e], (long long)w[l][e]);
            CHECKF(s->decayed[l * E + e] == d[l][e], "decayed[%d][%d] %g want %g",
                   l, e, s->decayed[l * E + e], d[l][e]);
            /* no replicas: the physical units are the experts */
            CHECK(s->physical[l * E + e] == w[l][e]);
        }
    return 0;
}

static int json_matches(const epx_moe_stats_t *s)
{
    char *text = NULL;
    CHECK_OK(epx_moe_stats_json(s, &text));
    json_error_t err;
    json_t *j = json_loads(text, 0, &err);
    free(text);
    CHECKF(j != NULL, "stats JSON does not parse: %s", err.text);
    CHECK(json_integer_value(json_object_get(j, "layers")) == L);
    CHECK(json_integer_value(json_object_get(j, "dispatches")) == s->dispatches);
    for (int l = 0; l < L; l++)
        for (int e = 0; e < E; e++) {
            json_t *w = json_array_get(json_array_get(json_object_get(j, "window"), l), e);
            json_t *d = json_array_get(json_array_get(json_object_get(j, "decayed"), l), e);
            CHECK(json_integer_value(w) == s->window[l * E + e]);
            CHECK(json_number_value(d) == s->decayed[l * E + e]);
            json_t *ph = json_array_get(json_array_get(json_object_get(j, "physical"), l), e);
            CHECK(json_integer_value(ph) == s->physical[l * E + e]);
        }
    json_decref(j);
    return 0;
}

static int stats_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    int me = epx_comm_rank(comm);
    epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
    p.hidden = H;
    p.num_experts = E;
    p.topk = K;
    p.max_tokens_per_rank = TMAX;
    p.dtype = EPX_DTYPE_FP32;
    p.num_layers = L;
    p.stats_decay = DECAY;
    epx_moe_t *m;
    CHECK_OK(epx_moe_create(comm, &p, &m));

    io_t a, b;
    epx_handle_t *ha = NULL, *hb = NULL;
    io_init(&a, me, 0, 0);                 /* layer 0, routing 0 */
    io_init(&b, me, 1, 1);                 /* layer 1, routing 1 */
    CHECK_CALL(round_trip(m, &a, &ha));
    CHECK_CALL(round_trip(m, &b, &hb));
    CHECK_CALL(round_trip(m, &a, &ha));    /* cached: counts again */

    /* a failed dispatch (rank 0: layer out of range) records nothing */
    io_t bad;
    epx_handle_t *hbad = NULL;
    io_init(&bad, me, 0, me == 0 ? L : 0);
    CHECK_ST(epx_dispatch_send(m, &bad.a, &hbad), me == 0 ? EPX_ERR_INVALID
                                                          : EPX_ERR_PEER);

    int64_t w[L][E], gw[L][E];
    double d[L][E], gd[L][E];
    memset(gw, 0, sizeof(gw));
    memset(gd, 0, sizeof(gd));
    for (int r = 0; r < R; r++) {
        int64_t c0[E] = { 0 }, c1[E] = { 0 };
        count(r, 0, c0);
        count(r, 1, c1);
        for (int e = 0; e < E; e++) {
            double d0 = DECAY * (double)c0[e] + (double)c0[e], d1 = (double)c1[e];
            if (r == me) {
                w[0][e] = 2 * c0[e];
                w[1][e] = c1[e];
                d[0][e] = d0;
                d[1][e] = d1;
            }
            gw[0][e] += 2 * c0[e];
            gw[1][e] += c1[e];
            gd[0][e] += d0;
            gd[1][e] += d1;
        }
    }
    epx_moe_stats_t s = { .struct_size = sizeof(s) };
    CHECK_OK(epx_moe_stats(m, 0, &s));
    CHECK_CALL(expect(&s, (const int64_t (*)[E])w, (const double (*)[E])d, 3));
    CHECK_CALL(json_matches(&s));
    CHECK_OK(epx_moe_stats(m, 1, &s));      /* collective */
    CHECK_CALL(expect(&s, (const int64_t (*)[E])gw, (const double (*)[E])gd, 3 * R));
    CHECK_CALL(json_matches(&s));

    CHECK_OK(epx_moe_stats_reset(m));
    memset(w, 0, sizeof(w));
    memset(d, 0, sizeof(d));
    CHECK_OK(epx_moe_stats(m, 0, &s));
    CHECK_CALL(expect(&s, (const int64_t (*)[E])w, (const double (*)[E])d, 0));

    epx_handle_release(ha);
    epx_handle_release(hb);
    epx_moe_destroy(m);
    return 0;
}

static void statistics(void **state)
{
    (void)state;
    assert_int_equal(epxt_launch(R, 30, stats_rank, NULL, NULL), EPX_OK);
}

static void bad_arguments(void **state)
{
    (void)state;
    epx_moe_stats_t s = { .struct_size = sizeof(s) };
    char *json = NULL;
    assert_int_equal(epx_moe_stats(NULL, 0, &s), EPX_ERR_INVALID);
    assert_int_equal(epx_moe_stats_reset(NULL), EPX_ERR_INVALID);
    memset(&s, 0, sizeof(s));
    assert_int_equal(epx_moe_stats_json(&s, &json), EPX_ERR_INVALID);
    assert_null(json);
}

int main(void)
{
    epxt_init("test_stats");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(statistics),
        cmocka_unit_test(bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
