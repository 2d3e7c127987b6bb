/*
 * Transport conformance: the contract of src/transport/transport.h checked
 * through the internal window API only, so the same cases run over every
 * backend.  EPX_TEST_TRANSPORT picks the configuration (the harness runs
 * each one, see README.md):
 *   shm    every pair over shm (always built);
 *   ucx    EPX_TRANSPORTS=ucx: every pair over UCX;
 *   mixed  EPX_TOPO_FILE describes two domains: shm inside, UCX across.
 * ucx and mixed exit 77 (skipped) only when configure found no UCX; a
 * ucx module that does not load, or a backend that fails, fails the test.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "config.h"
#include "conform.h"

static void run(int nranks, double timeout, epx_rank_fn fn, const void *arg)
{
    assert_int_equal(epxt_launch(nranks, timeout, fn, (void *)arg, NULL),
                     EPX_OK);
}

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

/* name_rR: case `fn` at R ranks with scale {max_len, rounds, slots}. */
#define CASE(name, fn, nranks, max_len, rounds, slots)                         \
    static void name(void **s)                                                 \
    {                                                                          \
        (void)s;                                                               \
        static const conf_scale_t sc = { max_len, rounds, slots };            \
        run(nranks, 0, fn, &sc);                                               \
    }

CASE(put_sizes_r1, conf_put_sizes, 1, 4 * MiB, 0, 0)
CASE(put_sizes_r2, conf_put_sizes, 2, 64 * MiB, 0, 0)
CASE(put_sizes_r3, conf_put_sizes, 3, 1 * MiB, 0, 0)
CASE(put_sizes_r8, conf_put_sizes, 8, 64 * KiB, 0, 0)
CASE(put_sizes_r72, conf_put_sizes, 72, 4 * KiB, 0, 0)

CASE(unaligned_r1, conf_unaligned, 1, 4109, 63, 0)
CASE(unaligned_r2, conf_unaligned, 2, 4109, 63, 0)
CASE(unaligned_r3, conf_unaligned, 3, 4109, 40, 0)
CASE(unaligned_r8, conf_unaligned, 8, 2049, 20, 0)
CASE(unaligned_r72, conf_unaligned, 72, 200, 4, 0)

CASE(many_to_one_r1, conf_many_to_one, 1, 1000, 4, 0)
CASE(many_to_one_r2, conf_many_to_one, 2, 65537, 6, 0)
CASE(many_to_one_r3, conf_many_to_one, 3, 4097, 6, 0)
CASE(many_to_one_r8, conf_many_to_one, 8, 4097, 8, 0)
CASE(many_to_one_r72, conf_many_to_one, 72, 300, 3, 0)

CASE(signal_order_r1, conf_signal_order, 1, 64 * KiB, 64, 3)
CASE(signal_order_r2, conf_signal_order, 2, 256 * KiB, 300, 4)
CASE(signal_order_r3, conf_signal_order, 3, 64 * KiB, 200, 3)
CASE(signal_order_r8, conf_signal_order, 8, 16 * KiB, 100, 4)
CASE(signal_order_r72, conf_signal_order, 72, 256, 12, 2)


CASE(flush_order_r1, conf_flush_order, 1, 64 * KiB, 20, 0)
CASE(flush_order_r2, conf_flush_order, 2, MiB, 40, 0)
CASE(flush_order_r8, conf_flush_order, 8, 16 * KiB, 40, 0)
CASE(flush_order_r72, conf_flush_order, 72, 64, 4, 0)

CASE(flush_overwrite_r1, conf_flush_overwrite, 1, 4 * KiB, 10, 0)
CASE(flush_overwrite_r2, conf_flush_overwrite, 2, 64 * KiB, 40, 0)
CASE(flush_overwrite_r3, conf_flush_overwrite, 3, 8 * KiB, 30, 0)

CASE(source_reuse_r1, conf_source_reuse, 1, 64 * KiB, 5, 0)
CASE(source_reuse_r2, conf_source_reuse, 2, MiB, 20, 0)
CASE(source_reuse_r8, conf_source_reuse, 8, 8 * KiB, 20, 0)

CASE(barrier_r1, conf_barrier, 1, 0, 50, 0)
CASE(barrier_r2, conf_barrier, 2, 0, 200, 0)
CASE(barrier_r3, conf_barrier, 3, 0, 200, 0)
CASE(barrier_r8, conf_barrier, 8, 0, 100, 0)
CASE(barrier_r72, conf_barrier, 72, 0, 10, 0)

CASE(err_put_range_r1, conf_err_put_range, 1, 0, 0, 0)
CASE(err_put_range_r2, conf_err_put_range, 2, 0, 0, 0)
CASE(err_bad_peer_r1, conf_err_bad_peer, 1, 0, 0, 0)
CASE(err_bad_peer_r3, conf_err_bad_peer, 3, 0, 0, 0)
CASE(err_bad_slot_r2, conf_err_bad_slot, 2, 0, 0, 0)
CASE(err_win_left_r3, conf_err_win_left, 3, 0, 0, 0)

static void err_wait_timeout_r2(void **s)
{
    (void)s;
    static const double timeout = 1.0;
    run(2, timeout, conf_err_wait_timeout, &timeout);
}

static void mixed_selection_r8(void **s)
{
    (void)s;
    if (conf_mode != CONF_MIXED)
        skip();
    run(8, 0, conf_mixed_selection, NULL);
}

/* 0: run; 77: configure found no UCX for the configuration (said why). */
static int pick_mode(void)
{
    const char *m = getenv("EPX_TEST_TRANSPORT");
    if (!m || !*m || strcmp(m, "shm") == 0) {
        conf_mode = CONF_SHM;
        return 0;
    }
    if (strcmp(m, "ucx") == 0)
        conf_mode = CONF_UCX;
    else if (strcmp(m, "mixed") == 0)
        conf_mode = CONF_MIXED;
    else {
        fprintf(stderr, "EPX_TEST_TRANSPORT=%s: want shm, ucx or mixed\n", m);
        exit(99);
    }
#ifndef EPX_HAVE_UCX
    printf("# SKIP %s: configure did not find UCX, the ucx backend is not "
           "built\n", m);
    return 77;
#else
    /* Built with UCX: its module must load (a broken module fails here,
     * it is not skipped). */
    if (!epx__tl_find("ucx")) {
        fprintf(stderr, "%s: the ucx module of this build does not load: "
                "%s\n", m, epx_last_error());
        exit(1);
    }
    return 0;
#endif
}

int main(void)
{
    epxt_init("test_conform");
    if (pick_mode() == 77)
        return 77;
    printf("# EPX_TEST_TRANSPORT=%s EPX_TRANSPORTS=%s UCX_TLS=%s "
           "EPX_TOPO_FILE=%s\n", getenv("EPX_TEST_TRANSPORT") ?
           getenv("EPX_TEST_TRANSPORT") : "(shm)",
           getenv("EPX_TRANSPORTS") ? getenv("EPX_TRANSPORTS") : "",
           getenv("UCX_TLS") ? getenv("UCX_TLS") : "",
           getenv("EPX_TOPO_FILE") ? getenv("EPX_TOPO_FILE") : "");
    conf_entered = epxt_shared_alloc(sizeof(uint64_t) * CONF_MAX_RANKS);
    if (!conf_entered)
        return 99;
    const struct CMUnitTest tests[] = {
        /* The 72-rank cases first: with make -j they overlap the rest. */
        cmocka_unit_test(put_sizes_r72),
        cmocka_unit_test(unaligned_r72),
        cmocka_unit_test(many_to_one_r72),
        cmocka_unit_test(signal_order_r72),
        cmocka_unit_test(flush_order_r72),
        cmocka_unit_test(barrier_r72),
        cmocka_unit_test(put_sizes_r1),
        cmocka_unit_test(put_sizes_r2),
        cmocka_unit_test(put_sizes_r3),
        cmocka_unit_test(put_sizes_r8),
        cmocka_unit_test(unaligned_r1),
        cmocka_unit_test(unaligned_r2),
        cmocka_unit_test(unaligned_r3),
        cmocka_unit_test(unaligned_r8),
        cmocka_unit_test(many_to_one_r1),
        cmocka_unit_test(many_to_one_r2),
        cmocka_unit_test(many_to_one_r3),
        cmocka_unit_test(many_to_one_r8),
        cmocka_unit_test(signal_order_r1),
        cmocka_unit_test(signal_order_r2),
        cmocka_unit_test(signal_order_r3),
        cmocka_unit_test(signal_order_r8),
        cmocka_unit_test(flush_order_r1),
        cmocka_unit_test(flush_order_r2),
        cmocka_unit_test(flush_order_r8),
        cmocka_unit_test(flush_overwrite_r1),
        cmocka_unit_test(flush_overwrite_r2),
        cmocka_unit_test(flush_overwrite_r3),
        cmocka_unit_test(source_reuse_r1),
        cmocka_unit_test(source_reuse_r2),
        cmocka_unit_test(source_reuse_r8),
        cmocka_unit_test(barrier_r1),
        cmocka_unit_test(barrier_r2),
        cmocka_unit_test(barrier_r3),
        cmocka_unit_test(barrier_r8),
        cmocka_unit_test(err_put_range_r1),
        cmocka_unit_test(err_put_range_r2),
        cmocka_unit_test(err_bad_peer_r1),
        cmocka_unit_test(err_bad_peer_r3),
        cmocka_unit_test(err_bad_slot_r2),
        cmocka_unit_test(err_wait_timeout_r2),
        cmocka_unit_test(err_win_left_r3),
        cmocka_unit_test(mixed_selection_r8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
