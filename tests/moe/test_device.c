/*
 * One API for host and device ranks, as far as a machine without a GPU
 * can check it: the params' device field agreed by every rank (kinds
 * mixed, or a device that is neither), a device rank refused with
 * EPX_ERR_UNSUPPORTED naming why where there is no GPU (FP64 engines
 * too: agreed like any dtype, not refused by name), and a host
 * rank's view of the version-4 fields (epx_moe_check, the CUDA queries,
 * callers built against the older args structs).  The device ranks'
 * data path, FP64 included, is checked by tests/moe/test_executors and
 * test_executors_ll.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "common/epx_test.h"
#include "epx/cuda.h"

static epx_moe_params_t small_params(void)
{
    epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
    p.hidden = 8;
    p.num_experts = 4;
    p.topk = 2;
    p.max_tokens_per_rank = 4;
    p.dtype = EPX_DTYPE_FP32;
    return p;
}

/* Rank 1 says device 0, the others host: every rank gets MISMATCH
 * before either executor starts (their set-up exchanges differ). */
static int mixed_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    epx_moe_params_t p = small_params();
    if (epx_comm_rank(comm) == 1)
        p.device = 0;
    epx_moe_t *m = NULL;
    CHECK_ST(epx_moe_create(comm, &p, &m), EPX_ERR_MISMATCH);
    CHECK(m == NULL);
    CHECK(strstr(epx_last_error(), "device") != NULL);
    /* the communicator is still in step: a host engine follows */
    p.device = EPX_DEVICE_HOST;
    CHECK_OK(epx_moe_create(comm, &p, &m));
    epx_moe_destroy(m);
    return 0;
}

static void kinds_mixed(void **state)
{
    (void)state;
    assert_int_equal(epxt_launch(3, 0, mixed_rank, NULL, NULL), EPX_OK);
}

/* Rank 2 passes device -7: INVALID there, PEER on the others. */
static int invalid_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    epx_moe_params_t p = small_params();
    const int me = epx_comm_rank(comm);
    if (me == 2)
        p.device = -7;
    epx_moe_t *m = NULL;
    CHECK_ST(epx_moe_create(comm, &p, &m),
             me == 2 ? EPX_ERR_INVALID : EPX_ERR_PEER);
    CHECK(m == NULL);
    return 0;
}

static void device_invalid(void **state)
{
    (void)state;
    assert_int_equal(epxt_launch(3, 0, invalid_rank, NULL, NULL), EPX_OK);
}

/* Every rank a device rank where no GPU can serve it: UNSUPPORTED on
 * every rank, saying why, and nothing left behind. */
static int nogpu_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    epx_moe_params_t p = small_params();
    p.device = 0;
    epx_moe_t *m = NULL;
    CHECK_ST(epx_moe_create(comm, &p, &m), EPX_ERR_UNSUPPORTED);
    CHECK(m == NULL);
    const char *why = epx_last_error();
    CHECKF(strstr(why, "CUDA") || strstr(why, "cuda") || strstr(why, "device"),
           "the refusal does not say why: '%s'", why);
    return 0;
}

static void device_without_gpu(void **state)
{
    (void)state;
    int n = 0;
    if (epx_cuda_devices(&n) == EPX_OK && n > 0)
        skip();   /* a GPU: tests/cuda covers device ranks */
    assert_int_equal(epxt_launch(2, 0, nogpu_rank, NULL, NULL), EPX_OK);
}

/* FP64 engines on device ranks: agreed like BF16 and FP32, not refused
 * by name.  Where no GPU can serve them, the same refusal as any dtype's
 * says why; a quantized wire is refused as on host ranks (EPX_ERR_INVALID
 * naming FP64; the data path is test_executors').  One
 * device rank among host ranks is a mismatch of kinds on every rank, and
 * the communicator stays in step. */
static int fp64_rank(epx_comm_t *comm, void *arg)
{
    const int gpu = *(const int *)arg;
    epx_moe_params_t p = small_params();
    p.dtype = EPX_DTYPE_FP64;
    p.device = 0;
    epx_moe_t *m = NULL;
    const char *why;
    if (!gpu) {
        CHECK_ST(epx_moe_create(comm, &p, &m), EPX_ERR_UNSUPPORTED);
        CHECK(m == NULL);
        why = epx_last_error();
        CHECKF(!strstr(why, "FP64") &&
               (strstr(why, "CUDA") || strstr(why, "cuda") ||
                strstr(why, "device")), "'%s'", why);
    }
    /* refused by the GPU executor's checks wherever its module loads (a
     * GPU or not), else for the missing module or runtime */
    p.wire = EPX_WIRE_FP8;
    epx_status_t st = epx_moe_create(comm, &p, &m);
    CHECK(m == NULL);
    CHECKF(st == EPX_ERR_INVALID ? strstr(epx_last_error(), "FP64") != NULL
                                 : !gpu && st == EPX_ERR_UNSUPPORTED,
           "%s: %s", epx_status_str(st), epx_last_error());
    p.wire = EPX_WIRE_NATIVE;
    p.device = epx_comm_rank(comm) == 1 ? 0 : EPX_DEVICE_HOST;
    CHECK_ST(epx_moe_create(comm, &p, &m), EPX_ERR_MISMATCH);
    CHECK(m == NULL);
    p.device = EPX_DEVICE_HOST;
    CHECK_OK(epx_moe_create(comm, &p, &m));
    epx_moe_destroy(m);
    return 0;
}

static void fp64_device(void **state)
{
    (void)state;
    int n = 0, gpu = epx_cuda_devices(&n) == EPX_OK && n > 0;
    assert_int_equal(epxt_launch(3, 0, fp64_rank, &gpu, NULL), EPX_OK);
}

/* A host engine: epx_moe_check has nothing to report, the CUDA queries
 * say "not a device rank", and callers compiled against the args structs
 * before `stream` (dispatch version 3, combine version 1) still work. */
static int host_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    epx_moe_params_t p = small_params();
    p.layout = EPX_LAYOUT_EXPERT_MAJOR;
    epx_moe_t *m = NULL;
    CHECK_OK(epx_moe_create(comm, &p, &m));
    int64_t dropped = -1;
    CHECK_OK(epx_moe_check(m, &dropped));
    CHECK(dropped == 0);
    CHECK_OK(epx_moe_check(m, NULL));
    CHECK_ST(epx_moe_check(NULL, NULL), EPX_ERR_INVALID);
    CHECK(epx_cuda_moe_num_sms(m) == 0);
    CHECK(strcmp(epx_cuda_moe_backend(m), "") == 0);

    const int me = epx_comm_rank(comm), R = epx_comm_size(comm), T = 3;
    float x[3 * 8], w[3 * 2], out[3 * 8];
    int32_t idx[3 * 2];
    for (int t = 0; t < T; t++) {
        for (int h = 0; h < 8; h++)
            x[t * 8 + h] = (float)(me * 100 + t * 8 + h);
        idx[t * 2] = (me + t) % 4;
        idx[t * 2 + 1] = (me + t + 1) % 4;
        w[t * 2] = 0.25f;
        w[t * 2 + 1] = 0.75f;
    }
    epx_dispatch_args_t a = EPX_DISPATCH_ARGS_INIT;
    a.struct_size = offsetof(epx_dispatch_args_t, stream);   /* version 3 */
    a.version = 3;
    a.x = (epx_tensor_t){ x, EPX_DTYPE_FP32, T, 8 };
    a.topk_idx = (epx_tensor_t){ idx, EPX_DTYPE_INT32, T, 2 };
    a.topk_weights = (epx_tensor_t){ w, EPX_DTYPE_FP32, T, 2 };
    epx_handle_t *h = NULL;
    CHECK_OK(epx_dispatch_send(m, &a, &h));
    epx_recv_t rv = { .struct_size = sizeof(rv) };
    CHECK_OK(epx_dispatch_recv(m, h, &rv));
    int64_t want = 0;   /* pairs routed to this rank's experts */
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++)
            for (int k = 0; k < 2; k++)
                want += epx_moe_expert_rank(m, (r + t + k) % 4) == me;
    CHECK(rv.num_rows == want);
    epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
    ca.struct_size = offsetof(epx_combine_args_t, stream);   /* version 1 */
    ca.version = 1;
    ca.y = (epx_tensor_t){ rv.x.data, EPX_DTYPE_FP32, rv.num_rows, 8 };
    CHECK_OK(epx_combine_send(m, h, &ca));
    epx_tensor_t o = { out, EPX_DTYPE_FP32, T, 8 };
    CHECK_OK(epx_combine_recv(m, h, &o));
    /* identity experts, weights summing to 1: x comes back exactly */
    for (int i = 0; i < T * 8; i++)
        CHECKF(out[i] == x[i], "out[%d] = %g, x %g", i, (double)out[i],
               (double)x[i]);
    epx_handle_release(h);
    epx_moe_destroy(m);
    return 0;
}

static void host_rank_api(void **state)
{
    (void)state;
    assert_int_equal(epxt_launch(2, 0, host_rank, NULL, NULL), EPX_OK);
}

int main(void)
{
    epxt_init("test_device");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(kinds_mixed),
        cmocka_unit_test(device_invalid),
        cmocka_unit_test(device_without_gpu),
        cmocka_unit_test(fp64_device),
        cmocka_unit_test(host_rank_api),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
