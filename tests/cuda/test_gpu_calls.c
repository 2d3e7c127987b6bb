/*
 * The device ranks' call rules (src/cuda/calls.h), on the host: the
 * order of dispatch, recv, combine and release in throughput mode (one
 * call) and low latency (ll_buffers calls outstanding, combined in
 * dispatch order), refusals that change nothing, what a release leaves
 * the device to do; then random sequences against a plain model of the
 * rules written from include/epx.h.  Throughput readiness
 * (epx_dispatch_poll): which calls may be polled, and what poll reads
 * from the words the recv kernel publishes (kern_launch.h EPXK_PUB_*),
 * written here as the kernel writes them; the same for low latency
 * (EPXK_LLPUB_*: per buffer, units ready one by one, or the call's
 * failure, which its recv and later polls then return and which refuses
 * its combine).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>

#include "common/epx_test.h"
#include "cuda/calls.h"
#include "cuda/kern_launch.h"

#define ST(expr, want) assert_int_equal((int)(expr), (int)(want))

static void throughput(void **state)
{
    (void)state;
    gpu_calls_t c;
    gpu_calls_init(&c, 0, 8);   /* buffers ignored: one call */
    uint64_t n, n2;
    int b;
    int64_t T;
    ST(gpu_calls_send(&c, 5, &n, &b), EPX_OK);
    assert_int_equal(n, 0);
    assert_int_equal(b, 0);
    /* a second dispatch while the first is only sent: refused */
    ST(gpu_calls_send(&c, 5, &n2, &b), EPX_ERR_STATE);
    ST(gpu_calls_combine_send(&c, n, &b, &T), EPX_ERR_STATE);
    ST(gpu_calls_recv(&c, n, &b), EPX_OK);
    ST(gpu_calls_recv(&c, n, &b), EPX_OK);          /* recv again: fine */
    ST(gpu_calls_combine_recv(&c, n, &b), EPX_ERR_STATE);
    ST(gpu_calls_combine_send(&c, n, &b, &T), EPX_OK);
    assert_int_equal(T, 5);
    ST(gpu_calls_send(&c, 1, &n2, &b), EPX_ERR_STATE);   /* combining */
    ST(gpu_calls_combine_recv(&c, n, &b), EPX_OK);
    ST(gpu_calls_combine_recv(&c, n, &b), EPX_ERR_STATE);
    /* received and never combined: the next dispatch abandons it */
    ST(gpu_calls_send(&c, 2, &n, &b), EPX_OK);
    ST(gpu_calls_recv(&c, n, &b), EPX_OK);
    ST(gpu_calls_send(&c, 3, &n2, &b), EPX_OK);
    assert_int_equal(n2, n + 1);
    ST(gpu_calls_combine_send(&c, n, &b, &T), EPX_ERR_STATE);
    ST(gpu_calls_recv(&c, n, &b), EPX_ERR_STATE);
    /* releases in throughput mode leave the device nothing to do */
    assert_int_equal(gpu_calls_release(&c, n2, &b), GPU_NOTHING);
    assert_int_equal(gpu_calls_outstanding(&c), 0);
    ST(gpu_calls_send(&c, 0, &n, &b), EPX_OK);
}

static void low_latency(void **state)
{
    (void)state;
    gpu_calls_t c;
    gpu_calls_init(&c, 1, 2);
    uint64_t n0, n1, n2;
    int b0, b1, b;
    int64_t T;
    ST(gpu_calls_send(&c, 10, &n0, &b0), EPX_OK);
    ST(gpu_calls_send(&c, 11, &n1, &b1), EPX_OK);
    assert_int_not_equal(b0, b1);
    /* call 2 needs buffer 0, still held by call 0: refused, nothing changed */
    ST(gpu_calls_send(&c, 12, &n2, &b), EPX_ERR_STATE);
    assert_int_equal(c.next, 2);
    assert_int_equal(gpu_calls_outstanding(&c), 2);
    /* micro-batch 1 received first is fine; combined first is not */
    ST(gpu_calls_recv(&c, n1, &b), EPX_OK);
    assert_int_equal(b, b1);
    ST(gpu_calls_combine_send(&c, n1, &b, &T), EPX_ERR_STATE);
    ST(gpu_calls_recv(&c, n0, &b), EPX_OK);
    ST(gpu_calls_combine_send(&c, n0, &b, &T), EPX_OK);
    assert_int_equal(b, b0);
    assert_int_equal(T, 10);
    /* one combine at a time */
    ST(gpu_calls_combine_send(&c, n1, &b, &T), EPX_ERR_STATE);
    ST(gpu_calls_combine_recv(&c, n1, &b), EPX_ERR_STATE);
    ST(gpu_calls_combine_recv(&c, n0, &b), EPX_OK);
    /* buffer 0 free again: call 2 may go while call 1 is outstanding */
    ST(gpu_calls_send(&c, 12, &n2, &b), EPX_OK);
    assert_int_equal(b, b0);
    ST(gpu_calls_combine_send(&c, n1, &b, &T), EPX_OK);
    assert_int_equal(T, 11);
    ST(gpu_calls_combine_recv(&c, n1, &b), EPX_OK);
    /* releases: before combine -> abandon, mid-combine -> finish */
    assert_int_equal(gpu_calls_release(&c, n2, &b), GPU_ABANDON);
    assert_int_equal(b, b0);
    assert_int_equal(gpu_calls_release(&c, n2, &b), GPU_NOTHING);
    assert_int_equal(gpu_calls_release(&c, n1, &b), GPU_NOTHING);  /* done */
    uint64_t n3, n4;
    ST(gpu_calls_send(&c, 1, &n3, &b), EPX_OK);
    ST(gpu_calls_recv(&c, n3, &b), EPX_OK);
    ST(gpu_calls_combine_send(&c, n3, &b, &T), EPX_OK);
    assert_int_equal(gpu_calls_release(&c, n3, &b), GPU_FINISH);
    /* the combine slot is free again */
    ST(gpu_calls_send(&c, 1, &n4, &b), EPX_OK);
    ST(gpu_calls_recv(&c, n4, &b), EPX_OK);
    ST(gpu_calls_combine_send(&c, n4, &b, &T), EPX_OK);
    ST(gpu_calls_combine_recv(&c, n4, &b), EPX_OK);
    assert_int_equal(gpu_calls_outstanding(&c), 0);
    /* a call never dispatched */
    ST(gpu_calls_recv(&c, 99, &b), EPX_ERR_STATE);
    assert_int_equal(gpu_calls_release(&c, 99, &b), GPU_NOTHING);
}

/* The model: per call its state, from the API's text alone. */
enum { M_NONE, M_SENT, M_RECV, M_COMB, M_DONE };
#define NCALLS 4096

static void random_model(void **state)
{
    (void)state;
    epxt_rng_t rng = { epxt_hash(epxt_seed(), 77, 0, 0, 0) };
    for (int round = 0; round < 40; round++) {
        const int ll = round % 2, B = ll ? 1 + (int)epxt_below(&rng, 4) : 1;
        gpu_calls_t c;
        gpu_calls_init(&c, ll, B);
        static int ms[NCALLS];
        memset(ms, 0, sizeof(ms));
        int next = 0, comb = -1;
        for (int step = 0; step < 600 && next < NCALLS - 1; step++) {
            int op = (int)epxt_below(&rng, 6);
            int n = next > 0 ? (int)epxt_below(&rng, (uint64_t)next + 1) : 0;
            int b;
            int64_t T;
            uint64_t got;
            if (op == 0) {   /* dispatch */
                int ok = 1, prev = next - B;   /* the buffer's last call */
                if (prev >= 0 && ms[prev] != M_DONE && ms[prev] != M_NONE)
                    ok = !ll && ms[prev] == M_RECV;
                epx_status_t st = gpu_calls_send(&c, next, &got, &b);
                assert_int_equal(st == EPX_OK, ok);
                if (ok) {
                    if (prev >= 0 && ms[prev] == M_RECV)
                        ms[prev] = M_DONE;   /* abandoned (throughput) */
                    assert_int_equal((int)got, next);
                    assert_int_equal(b, next % B);
                    ms[next++] = M_SENT;
                }
            } else if (op == 1) {   /* recv */
                int ok = n < next && (ms[n] == M_SENT || ms[n] == M_RECV);
                assert_int_equal(gpu_calls_recv(&c, (uint64_t)n, &b) == EPX_OK,
                                 ok);
                if (ok)
                    ms[n] = M_RECV;
            } else if (op == 2) {   /* combine_send */
                int ok = n < next && ms[n] == M_RECV && comb < 0;
                for (int k = 0; ok && k < n; k++)
                    ok = ms[k] == M_DONE || ms[k] == M_NONE;
                epx_status_t st = gpu_calls_combine_send(&c, (uint64_t)n, &b, &T);
                assert_int_equal(st == EPX_OK, ok);
                if (ok) {
                    assert_int_equal(T, n);
                    ms[n] = M_COMB;
                    comb = n;
                }
            } else if (op == 3) {   /* combine_recv */
                int ok = n < next && ms[n] == M_COMB;
                assert_int_equal(gpu_calls_combine_recv(&c, (uint64_t)n, &b) ==
                                 EPX_OK, ok);
                if (ok) {
                    ms[n] = M_DONE;
                    comb = -1;
                }
            } else if (op == 4) {   /* dispatch_poll: changes nothing */
                int ok = n < next && (ms[n] == M_SENT || ms[n] == M_RECV);
                int rcv = -1;
                epx_status_t st = gpu_calls_poll(&c, (uint64_t)n, &b, &rcv);
                assert_int_equal(st == EPX_OK, ok);
                if (ok) {
                    assert_int_equal(rcv, ms[n] == M_RECV);
                    assert_int_equal(b, n % B);
                }
            } else {   /* release */
                int want = GPU_NOTHING;
                if (n < next && ms[n] != M_DONE && ms[n] != M_NONE && ll)
                    want = ms[n] == M_COMB ? GPU_FINISH : GPU_ABANDON;
                assert_int_equal(gpu_calls_release(&c, (uint64_t)n, &b), want);
                if (n < next && ms[n] == M_COMB)
                    comb = -1;
                if (n < next && ms[n] != M_NONE)
                    ms[n] = M_DONE;
            }
            int out = 0;
            for (int k = 0; k < next; k++)
                out += ms[k] == M_SENT || ms[k] == M_RECV || ms[k] == M_COMB;
            assert_int_equal(gpu_calls_outstanding(&c), out);
            assert_true(out <= B);
        }
    }
}

/* The words of one call as the recv kernel leaves them: counts first,
 * then the sequence word; units ready one by one. */
static void poll_words(void **state)
{
    (void)state;
    enum { L = 5 };
    int64_t pub[EPXK_PUB_COUNTS + 3 * L];
    uint8_t ready[L];
    int64_t counts[2 * L], rows = -1, agree = -1;
    memset(pub, 0, sizeof(pub));
    memset(ready, 7, sizeof(ready));
    memset(counts, 7, sizeof(counts));
    /* Nothing published for call 1 yet: zeros, nothing ready. */
    assert_int_equal(gpu_poll_read(pub, L, 1, ready, counts, &rows, &agree), 0);
    for (int j = 0; j < L; j++)
        assert_true(ready[j] == 0 && counts[j] == 0 && counts[L + j] == 0);
    assert_true(rows == 0 && agree == 0);
    /* Call 1 published, unit 3 (no source) ready at once. */
    for (int j = 0; j < L; j++) {
        pub[EPXK_PUB_COUNTS + j] = 10 * j + (j != 3);
        pub[EPXK_PUB_COUNTS + L + j] = 100 * j;
    }
    pub[EPXK_PUB_ROWS] = 77;
    pub[EPXK_PUB_COUNTS + 2 * L + 3] = 1;
    /* Not until the sequence word says so. */
    assert_int_equal(gpu_poll_read(pub, L, 1, ready, counts, &rows, &agree), 0);
    assert_true(rows == 0 && counts[1] == 0);
    pub[EPXK_PUB_SEQ] = 1;
    assert_int_equal(gpu_poll_read(pub, L, 1, ready, counts, &rows, &agree), 1);
    assert_true(ready[3] == 1 && ready[0] == 0 && ready[4] == 0);
    assert_true(rows == 77 && agree == 0);
    for (int j = 0; j < L; j++)
        assert_true(counts[j] == 10 * j + (j != 3) && counts[L + j] == 100 * j);
    /* The rest as their sources arrive. */
    for (int j = 0; j < L; j++) {
        pub[EPXK_PUB_COUNTS + 2 * L + j] = 1;
        assert_int_equal(gpu_poll_read(pub, L, 1, ready, counts, &rows,
                                       &agree), j < 3 ? j + 2 : j + 1);
        assert_int_equal(ready[j], 1);
    }
    /* Call 2 (seq 2): the words of call 1 are stale, nothing ready until
     * call 2's counts are published; a unit's stale word is not ready. */
    assert_int_equal(gpu_poll_read(pub, L, 2, ready, counts, &rows, &agree), 0);
    assert_true(rows == 0 && counts[4] == 0);
    pub[EPXK_PUB_SEQ] = 2;
    pub[EPXK_PUB_AGREE] = EPX_ERR_MISMATCH;
    assert_int_equal(gpu_poll_read(pub, L, 2, ready, counts, &rows, &agree), 0);
    assert_int_equal(agree, EPX_ERR_MISMATCH);
    pub[EPXK_PUB_COUNTS + 2 * L + 2] = 2;
    assert_int_equal(gpu_poll_read(pub, L, 2, ready, counts, &rows, &agree), 1);
    assert_true(ready[2] == 1 && ready[1] == 0);
    /* No local unit: nothing to read or write. */
    assert_int_equal(gpu_poll_read(pub, 0, 2, NULL, NULL, &rows, &agree), 0);
}

/* Poll in throughput mode: between the dispatch and its combine. */
static void poll_order(void **state)
{
    (void)state;
    gpu_calls_t c;
    gpu_calls_init(&c, 0, 1);
    uint64_t n;
    int b, rcv;
    int64_t T;
    ST(gpu_calls_poll(&c, 0, &b, &rcv), EPX_ERR_STATE);   /* none yet */
    ST(gpu_calls_send(&c, 4, &n, &b), EPX_OK);
    ST(gpu_calls_poll(&c, n, &b, &rcv), EPX_OK);
    assert_int_equal(rcv, 0);
    ST(gpu_calls_poll(&c, n + 1, &b, &rcv), EPX_ERR_STATE);
    ST(gpu_calls_recv(&c, n, &b), EPX_OK);
    ST(gpu_calls_poll(&c, n, &b, &rcv), EPX_OK);
    assert_int_equal(rcv, 1);
    ST(gpu_calls_combine_send(&c, n, &b, &T), EPX_OK);
    ST(gpu_calls_poll(&c, n, &b, &rcv), EPX_ERR_STATE);
    ST(gpu_calls_combine_recv(&c, n, &b), EPX_OK);
    ST(gpu_calls_poll(&c, n, &b, &rcv), EPX_ERR_STATE);
    /* a failed call ended by its recv (release): no longer polled */
    ST(gpu_calls_send(&c, 4, &n, &b), EPX_OK);
    assert_int_equal(gpu_calls_release(&c, n, &b), GPU_NOTHING);
    ST(gpu_calls_poll(&c, n, &b, &rcv), EPX_ERR_STATE);
    ST(gpu_calls_combine_send(&c, n, &b, &T), EPX_ERR_STATE);
}

/* Low latency: a buffer's words as the recv kernels leave them (a unit's
 * count, then its ready word = the call's id; or the failure's status,
 * then its id), read for the call with id n + 1. */
static void ll_poll_words(void **state)
{
    (void)state;
    enum { L = 4 };
    int64_t pub[EPXK_LLPUB_LEN(L)];
    uint8_t ready[L];
    int64_t counts[L];
    int32_t fail = -1;
    memset(pub, 0, sizeof(pub));
    memset(ready, 7, sizeof(ready));
    memset(counts, 7, sizeof(counts));
    /* nothing published for id 1: nothing ready, counts 0 */
    assert_int_equal(gpu_ll_poll_read(pub, L, 1, ready, counts, &fail), 0);
    assert_int_equal(fail, 0);
    for (int j = 0; j < L; j++)
        assert_true(ready[j] == 0 && counts[j] == 0);
    /* a count without its word is not ready (stored first) */
    pub[EPXK_LLPUB_COUNTS + 2] = 9;
    assert_int_equal(gpu_ll_poll_read(pub, L, 1, ready, counts, &fail), 0);
    assert_int_equal(counts[2], 0);
    pub[EPXK_LLPUB_COUNTS + L + 2] = 1;
    assert_int_equal(gpu_ll_poll_read(pub, L, 1, ready, counts, &fail), 1);
    assert_true(ready[2] == 1 && counts[2] == 9 && ready[0] == 0 &&
                counts[0] == 0);
    for (int j = 0; j < L; j++) {
        pub[EPXK_LLPUB_COUNTS + j] = 10 + j;
        pub[EPXK_LLPUB_COUNTS + L + j] = 1;
    }
    assert_int_equal(gpu_ll_poll_read(pub, L, 1, ready, counts, &fail), L);
    for (int j = 0; j < L; j++)
        assert_true(ready[j] == 1 && counts[j] == 10 + j);
    /* the buffer's next call (id 3): call 1's words are stale */
    assert_int_equal(gpu_ll_poll_read(pub, L, 3, ready, counts, &fail), 0);
    for (int j = 0; j < L; j++)
        assert_true(ready[j] == 0 && counts[j] == 0);
    /* a failure of another call changes nothing; this call's, nothing is
     * ready whatever the units' words say */
    pub[EPXK_LLPUB_FAILST] = EPX_ERR_PEER;
    pub[EPXK_LLPUB_FAIL] = 1;
    pub[EPXK_LLPUB_COUNTS + L + 1] = 3;
    assert_int_equal(gpu_ll_poll_read(pub, L, 3, ready, counts, &fail), 1);
    assert_int_equal(fail, 0);
    pub[EPXK_LLPUB_FAIL] = 3;
    assert_int_equal(gpu_ll_poll_read(pub, L, 3, ready, counts, &fail), 0);
    assert_int_equal(fail, EPX_ERR_PEER);
    for (int j = 0; j < L; j++)
        assert_true(ready[j] == 0 && counts[j] == 0);
    /* no local unit: only the failure */
    assert_int_equal(gpu_ll_poll_read(pub, 0, 3, NULL, NULL, &fail), 0);
    assert_int_equal(fail, EPX_ERR_PEER);
    assert_int_equal(gpu_ll_poll_read(pub, 0, 5, NULL, NULL, &fail), 0);
    assert_int_equal(fail, 0);
}

/* Low latency: a failure a poll found is the call's: its recv and polls
 * return it, its combine is refused, its release abandons it; the other
 * buffer's call is untouched. */
static void ll_fail(void **state)
{
    (void)state;
    gpu_calls_t c;
    gpu_calls_init(&c, 1, 2);
    uint64_t n0, n1, n2;
    int b, rcv;
    int64_t T;
    ST(gpu_calls_send(&c, 3, &n0, &b), EPX_OK);
    ST(gpu_calls_send(&c, 3, &n1, &b), EPX_OK);
    gpu_calls_fail(&c, n0, EPX_OK);   /* no failure: nothing */
    ST(gpu_calls_poll(&c, n0, &b, &rcv), EPX_OK);
    gpu_calls_fail(&c, n0, EPX_ERR_PEER);
    gpu_calls_fail(&c, 77, EPX_ERR_PEER);   /* no such call: nothing */
    ST(gpu_calls_poll(&c, n0, &b, &rcv), EPX_ERR_PEER);
    ST(gpu_calls_recv(&c, n0, &b), EPX_ERR_PEER);
    ST(gpu_calls_poll(&c, n0, &b, &rcv), EPX_ERR_PEER);
    ST(gpu_calls_combine_send(&c, n0, &b, &T), EPX_ERR_STATE);
    ST(gpu_calls_poll(&c, n1, &b, &rcv), EPX_OK);
    ST(gpu_calls_recv(&c, n1, &b), EPX_OK);
    /* found after its recv: still the call's (its combine refused) */
    gpu_calls_fail(&c, n1, EPX_ERR_RANGE);
    ST(gpu_calls_poll(&c, n1, &b, &rcv), EPX_ERR_RANGE);
    assert_int_equal(gpu_calls_release(&c, n0, &b), GPU_ABANDON);
    assert_int_equal(gpu_calls_release(&c, n1, &b), GPU_ABANDON);
    /* the buffer's next call starts clean */
    ST(gpu_calls_send(&c, 3, &n2, &b), EPX_OK);
    ST(gpu_calls_poll(&c, n2, &b, &rcv), EPX_OK);
    ST(gpu_calls_recv(&c, n2, &b), EPX_OK);
    ST(gpu_calls_combine_send(&c, n2, &b, &T), EPX_OK);
    /* a combining call is not failed by a late poll */
    gpu_calls_fail(&c, n2, EPX_ERR_PEER);
    ST(gpu_calls_combine_recv(&c, n2, &b), EPX_OK);
}

int main(void)
{
    epxt_init("test_gpu_calls");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(throughput),
        cmocka_unit_test(low_latency),
        cmocka_unit_test(random_model),
        cmocka_unit_test(poll_words),
        cmocka_unit_test(poll_order),
        cmocka_unit_test(ll_poll_words),
        cmocka_unit_test(ll_fail),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
