/*
 * Protocol corners of one engine across ranks, with tiny fixed inputs:
 * NULL arguments on one rank are agreed like any bad input; releasing a
 * handle between combine_send and combine_recv keeps the engine in step;
 * a cached dispatch through handles of different dispatches is refused on
 * every rank.  After each, a plain round must still work.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>

#include "common/epx_test.h"

enum { H = 16, T = 2, K = 1 };

typedef struct io {
    float x[T * H], w[T * K], out[T * H];
    int32_t idx[T * K];
    epx_dispatch_args_t a;
} io_t;

static void io_init(io_t *io, int nranks, int rank, int shift)
{
    for (int i = 0; i < T * H; i++)
        io->x[i] = (float)(rank * 100 + i);
    for (int t = 0; t < T; t++) {
        io->idx[t] = (t + shift) % nranks;     /* one expert per rank */
        io->w[t] = 1.0f;
    }
    io->a = (epx_dispatch_args_t)EPX_DISPATCH_ARGS_INIT;
    io->a.x = (epx_tensor_t){ io->x, EPX_DTYPE_FP32, T, H };
    io->a.topk_idx = (epx_tensor_t){ io->idx, EPX_DTYPE_INT32, T, K };
    io->a.topk_weights = (epx_tensor_t){ io->w, EPX_DTYPE_FP32, T, K };
}

static int open_engine(epx_comm_t *comm, epx_moe_t **m)
{
    epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
    p.hidden = H;
    p.num_experts = epx_comm_size(comm);
    p.topk = K;
    p.max_tokens_per_rank = T;
    p.dtype = EPX_DTYPE_FP32;
    CHECK_OK(epx_moe_create(comm, &p, m));
    return 0;
}

/* A full round; identity experts, so out must equal x. */
static int round_ok(epx_moe_t *m, io_t *io)
{
    epx_handle_t *h = NULL;
    epx_recv_t rv = { .struct_size = sizeof(rv) };
    CHECK_OK(epx_dispatch_send(m, &io->a, &h));
    CHECK_OK(epx_dispatch_recv(m, h, &rv));
    epx_combine_args_t c = EPX_COMBINE_ARGS_INIT;
    c.y = rv.x;
    CHECK_OK(epx_combine_send(m, h, &c));
    epx_tensor_t o = { io->out, EPX_DTYPE_FP32, T, H };
    CHECK_OK(epx_combine_recv(m, h, &o));
    CHECK(memcmp(io->out, io->x, sizeof(io->x)) == 0);
    epx_handle_release(h);
    return 0;
}

static int null_args_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    int me = epx_comm_rank(comm);
    epx_moe_t *m;
    io_t io;
    CHECK_CALL(open_engine(comm, &m));
    io_init(&io, epx_comm_size(comm), me, 0);
    epx_handle_t *h = NULL;
    if (me == 0)
        CHECK_ST(epx_dispatch_send(m, NULL, &h), EPX_ERR_INVALID);
    else
        CHECK_ST(epx_dispatch_send(m, &io.a, &h), EPX_ERR_PEER);
    CHECK(h == NULL);
    CHECK_CALL(round_ok(m, &io));
    CHECK_CALL(round_ok(m, &io));
    epx_moe_destroy(m);
    return 0;
}

static int release_mid_combine_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    int me = epx_comm_rank(comm);
    epx_moe_t *m;
    io_t io;
    CHECK_CALL(open_engine(comm, &m));
    io_init(&io, epx_comm_size(comm), me, 0);
    epx_handle_t *h = NULL;
    epx_recv_t rv = { .struct_size = sizeof(rv) };
    CHECK_OK(epx_dispatch_send(m, &io.a, &h));
    CHECK_OK(epx_dispatch_recv(m, h, &rv));
    epx_combine_args_t c = EPX_COMBINE_ARGS_INIT;
    c.y = rv.x;
    CHECK_OK(epx_combine_send(m, h, &c));
    if (me != 0) {
        epx_tensor_t o = { io.out, EPX_DTYPE_FP32, T, H };
        CHECK_OK(epx_combine_recv(m, h, &o));
    }
    epx_handle_release(h);         /* rank 0: between send and recv */
    CHECK_CALL(round_ok(m, &io));
    epx_moe_destroy(m);
    return 0;
}

static int cached_mixed_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    int me = epx_comm_rank(comm), R = epx_comm_size(comm);
    epx_moe_t *m;
    io_t a, b;
    CHECK_CALL(open_engine(comm, &m));
    io_init(&a, R, me, 0);
    io_init(&b, R, me, 1);
    epx_handle_t *ha = NULL, *hb = NULL;
    epx_recv_t rv = { .struct_size = sizeof(rv) };
    for (int i = 0; i < 2; i++) {      /* two routings, two handles */
        io_t *io = i ? &b : &a;
        epx_handle_t **h = i ? &hb : &ha;
        CHECK_OK(epx_dispatch_send(m, &io->a, h));
        CHECK_OK(epx_dispatch_recv(m, *h, &rv));
        epx_combine_args_t c = EPX_COMBINE_ARGS_INIT;
        c.y = rv.x;
        CHECK_OK(epx_combine_send(m, *h, &c));
        epx_tensor_t o = { io->out, EPX_DTYPE_FP32, T, H };
        CHECK_OK(epx_combine_recv(m, *h, &o));
    }
    /* rank 0 replays routing A, the others routing B */
    io_t *mine = me == 0 ? &a : &b;
    epx_handle_t *h = me == 0 ? ha : hb;
    mine->a.flags = EPX_DISPATCH_CACHED;
    CHECK_ST(epx_dispatch_send(m, &mine->a, &h), EPX_ERR_MISMATCH);
    CHECK(strstr(epx_last_error(), "different dispatches") != NULL);
    mine->a.flags = 0;
    CHECK_CALL(round_ok(m, &a));
    epx_handle_release(ha);
    epx_handle_release(hb);
    epx_moe_destroy(m);
    return 0;
}

static void null_args(void **state)
{
    (void)state;
    assert_int_equal(epxt_launch(3, 30, null_args_rank, NULL, NULL), EPX_OK);
}

static void release_mid_combine(void **state)
{
    (void)state;
    assert_int_equal(epxt_launch(2, 30, release_mid_combine_rank, NULL, NULL),
                     EPX_OK);
}

static void cached_mixed_handles(void **state)
{
    (void)state;
    assert_int_equal(epxt_launch(3, 30, cached_mixed_rank, NULL, NULL), EPX_OK);
}

int main(void)
{
    epxt_init("test_protocol");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(null_args),
        cmocka_unit_test(release_mid_combine),
        cmocka_unit_test(cached_mixed_handles),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
