/*
 * transport/shm through the internal window API (src/transport/transport.h):
 * windows of several sizes, puts at unaligned offsets, put + signal + wait,
 * put-with-signal,
 * many-to-one, separate signal slots, out-of-range puts, wait timeouts,
 * 72 ranks; and nothing named epx-<job>-* left in /dev/shm, neither once
 * the windows are mapped nor after a rank was killed mid-run, nor (ranks
 * started by hand, no launcher to clean up) after a rank died between
 * creating its object and unlinking it; windows larger than /dev/shm's
 * free space refused at creation (a write past it would be a SIGBUS).
 */
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <fcntl.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/epx_test.h"
#include "common/proc_ranks.h"
#include "core/comm.h"

/* What the ranks tell the parent: the job id (shm names). */
typedef struct shared {
    char job[64];
    int round;
} shared_t;

static shared_t *sh;

static void note_job(epx_comm_t *comm)
{
    if (comm->rank == 0)
        snprintf(sh->job, sizeof(sh->job), "%s", comm->job);
}

static int job_leftovers(const char *job)
{
    char prefix[96];
    snprintf(prefix, sizeof(prefix), "epx-%s-", job);
    return epxt_shm_count(prefix);
}

/* Every window is unlinked once mapped: after a barrier, none of the
 * job's names may remain. */
static int check_unlinked(epx_comm_t *comm)
{
    CHECK_OK(epx_comm_barrier(comm));
    int n = job_leftovers(comm->job);
    CHECKF(n == 0, "%d /dev/shm objects of job %s still named after every "
           "rank mapped its windows", n, comm->job);
    return 0;
}

/* Byte i of what rank `src` writes in `round`. */
static unsigned char pat(int src, int round, size_t i)
{
    uint64_t h = epxt_mix64(epxt_seed() ^ ((uint64_t)src << 40) ^
                            ((uint64_t)round << 32) ^ (i >> 3));
    return (unsigned char)(h >> ((i & 7) * 8));
}

static void fill(unsigned char *p, size_t off, size_t len, int src, int round)
{
    for (size_t i = 0; i < len; i++)
        p[i] = pat(src, round, off + i);
}

static int check_bytes(const unsigned char *p, size_t off, size_t len,
                       int src, int round, const char *what)
{
    for (size_t i = 0; i < len; i++)
        CHECKF(p[off + i] == pat(src, round, off + i),
               "%s: byte %zu is 0x%02x, want 0x%02x from rank %d round %d",
               what, off + i, p[off + i], pat(src, round, off + i), src,
               round);
    return 0;
}

/* ---- sizes: each rank writes a whole window of its right-hand neighbour */

static const size_t sizes[] = { 1, 7, 4096, 4097, 65537, 1u << 20,
                                (4u << 20) + 3 };
#define NSIZES (sizeof(sizes) / sizeof(sizes[0]))

static int ring_one(epx_comm_t *comm, size_t size, int round)
{
    const int R = comm->nranks, me = comm->rank;
    const int to = (me + 1) % R, from = (me + R - 1) % R;
    epx_win_t *w = NULL;
    CHECK_OK(epx__win_create(comm, size, 2, &w));
    CHECK(w->size == size && w->nsignals == 2 && w->local);
    CHECK_CALL(check_unlinked(comm));
    unsigned char *src = malloc(size);
    CHECK(src);
    fill(src, 0, size, me, round);
    CHECK_OK(epx__win_put(w, to, 0, src, size));
    CHECK_OK(epx__win_flush(w, to));
    CHECK_OK(epx__win_signal(w, to, 1, 1));
    CHECK_OK(epx__win_wait(w, 1, 1));
    free(src);
    char what[64];
    snprintf(what, sizeof(what), "window of %zu bytes", size);
    CHECK_CALL(check_bytes(w->local, 0, size, from, round, what));
    CHECK_OK(epx_comm_barrier(comm));   /* the neighbour checked ours */
    epx__win_destroy(w);
    return 0;
}

static int sizes_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    note_job(comm);
    for (size_t i = 0; i < NSIZES; i++)
        CHECK_CALL(ring_one(comm, sizes[i], (int)i));
    /* A window of 0 bytes (signals only) is valid too. */
    epx_win_t *w = NULL;
    CHECK_OK(epx__win_create(comm, 0, 1, &w));
    epx__win_destroy(w);
    return 0;
}

/* ---- all-to-all puts at unaligned offsets and lengths */

static const size_t seg_len[] = { 1, 2, 3, 5, 7, 13, 31, 64, 100, 257, 0 };
#define NSEG (sizeof(seg_len) / sizeof(seg_len[0]))
#define STRIDE 1024   /* bytes of a window per source rank */

static int unaligned_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    note_job(comm);
    const int R = comm->nranks, me = comm->rank;
    epx_win_t *w = NULL;
    CHECK_OK(epx__win_create(comm, (size_t)R * STRIDE + 1, 1, &w));
    unsigned char buf[STRIDE];
    fill(buf, 0, STRIDE, me, 7);
    for (int peer = 0; peer < R; peer++) {   /* self included */
        /* Segments at odd offsets inside this rank's stripe, each from
         * the matching bytes of the pattern. */
        size_t off = 1 + (size_t)(peer % 3);
        for (size_t j = 0; j < NSEG; j++) {
            size_t at = (size_t)me * STRIDE + off;
            CHECK_OK(epx__win_put(w, peer, at, buf + off, seg_len[j]));
            off += seg_len[j] + 3;
        }
        CHECK_OK(epx__win_signal(w, peer, 0, 1));
    }
    CHECK_OK(epx__win_wait(w, 0, (uint64_t)R));
    for (int src = 0; src < R; src++) {
        size_t off = 1 + (size_t)(me % 3);
        for (size_t j = 0; j < NSEG; j++) {
            char what[64];
            snprintf(what, sizeof(what), "segment %zu from rank %d", j, src);
            const unsigned char *stripe =
                (const unsigned char *)w->local + (size_t)src * STRIDE;
            CHECK_CALL(check_bytes(stripe, off, seg_len[j], src, 7, what));
            off += seg_len[j] + 3;
        }
    }
    CHECK_OK(epx_comm_barrier(comm));
    epx__win_destroy(w);
    return 0;
}

/* ---- many to one, over several rounds on the same window and counter */

#define ROUNDS 8
static int many_to_one_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    note_job(comm);
    const int R = comm->nranks, me = comm->rank;
    const size_t seg = 333;
    epx_win_t *w = NULL;
    CHECK_OK(epx__win_create(comm, (size_t)R * seg + 5, 1, &w));
    unsigned char *buf = malloc(seg);
    CHECK(buf);
    for (int round = 1; round <= ROUNDS; round++) {
        fill(buf, 0, seg, me, round);
        CHECK_OK(epx__win_put_signal(w, 0, 5 + (size_t)me * seg, buf, seg, 0, 1));
        if (me == 0) {
            CHECK_OK(epx__win_wait(w, 0, (uint64_t)R * (uint64_t)round));
            for (int src = 0; src < R; src++) {
                const unsigned char *p =
                    (const unsigned char *)w->local + 5 + (size_t)src * seg;
                for (size_t i = 0; i < seg; i++)
                    CHECKF(p[i] == pat(src, round, i),
                           "round %d: byte %zu from rank %d is 0x%02x, want "
                           "0x%02x", round, i, src, p[i], pat(src, round, i));
            }
        }
        CHECK_OK(epx_comm_barrier(comm));   /* read before overwritten */
    }
    free(buf);
    epx__win_destroy(w);
    return 0;
}

/* ---- each source bumps its own slot on every peer */

static int slots_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    note_job(comm);
    const int R = comm->nranks, me = comm->rank;
    epx_win_t *w = NULL;
    CHECK_OK(epx__win_create(comm, 64, R, &w));
    for (int peer = 0; peer < R; peer++)
        CHECK_OK(epx__win_signal(w, peer, me, (uint64_t)me + 1));
    for (int src = 0; src < R; src++)
        CHECK_OK(epx__win_wait(w, src, (uint64_t)src + 1));
    CHECK_OK(epx_comm_barrier(comm));
    /* Counters accumulate. */
    for (int peer = 0; peer < R; peer++)
        CHECK_OK(epx__win_signal(w, peer, me, 1000));
    for (int src = 0; src < R; src++)
        CHECK_OK(epx__win_wait(w, src, (uint64_t)src + 1001));
    CHECK_OK(epx_comm_barrier(comm));
    epx__win_destroy(w);
    return 0;
}

/* ---- puts past the end are refused */

static int range_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    note_job(comm);
    epx_win_t *w = NULL;
    const int peer = (comm->rank + 1) % comm->nranks;
    char b[8] = { 0 };
    CHECK_OK(epx__win_create(comm, 100, 1, &w));
    CHECK_OK(epx__win_put(w, peer, 92, b, 8));   /* up to the end: fine */
    CHECK_ST(epx__win_put(w, peer, 100, b, 1), EPX_ERR_RANGE);
    CHECK_ST(epx__win_put(w, peer, 95, b, 8), EPX_ERR_RANGE);
    CHECK_ST(epx__win_put(w, peer, (size_t)-4, b, 8), EPX_ERR_RANGE);
    CHECK(strlen(epx_last_error()) > 0);
    CHECK_OK(epx_comm_barrier(comm));
    epx__win_destroy(w);
    return 0;
}

/* ---- a wait nobody answers ends with EPX_ERR_TIMEOUT */

#define SHORT_TIMEOUT 2.0
static int timeout_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    note_job(comm);
    epx_win_t *w = NULL;
    CHECK_OK(epx__win_create(comm, 64, 1, &w));
    if (comm->rank == 0) {
        double t0 = epxt_now();
        CHECK_ST(epx__win_wait(w, 0, 1), EPX_ERR_TIMEOUT);
        double dt = epxt_now() - t0;
        CHECKF(dt >= SHORT_TIMEOUT * 0.5 && dt < SHORT_TIMEOUT * 3.5,
               "wait gave up after %.2f s with a timeout of %.1f s", dt,
               SHORT_TIMEOUT);
        CHECK(strlen(epx_last_error()) > 0);
        /* A signal that comes later is still seen. */
        CHECK_OK(epx__win_signal(w, 1, 0, 1));
    } else {
        /* Rank 0 signals only after its own wait timed out, so this one
         * may time out first: a wait can be retried. */
        epx_status_t st = EPX_ERR_TIMEOUT;
        for (int i = 0; i < 5 && st == EPX_ERR_TIMEOUT; i++)
            st = epx__win_wait(w, 0, 1);
        CHECK_ST(st, EPX_OK);
    }
    epx__win_destroy(w);
    return 0;
}

/* ---- many windows in a row (no leak of names, descriptors, mappings) */

static int many_windows_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    note_job(comm);
    for (int i = 0; i < 200; i++) {
        epx_win_t *w = NULL;
        CHECK_OK(epx__win_create(comm, 4096 * (size_t)(1 + i % 5), 2, &w));
        CHECK_OK(epx__win_signal(w, (comm->rank + 1) % comm->nranks, 0, 1));
        CHECK_OK(epx__win_wait(w, 0, 1));
        epx__win_destroy(w);
    }
    return check_unlinked(comm);
}

/* ---- /dev/shm too small for the windows: refused, not a later SIGBUS */

static double shm_free(void)
{
    struct statvfs v;
    return statvfs("/dev/shm", &v) == 0
        ? (double)v.f_bavail * (double)v.f_frsize : -1;
}

static int too_big_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    note_job(comm);
    double avail = shm_free();
    CHECK(avail > 0);
    /* Each rank's window alone fits; the host's together do not. */
    size_t size = (size_t)(avail / comm->nranks) + ((size_t)1 << 30);
    epx_win_t *w = NULL;
    epx_status_t st = epx__win_create(comm, size, 2, &w);
    CHECKF(st == EPX_ERR_NOMEM, "a %.1f GiB window a rank over %.1f GiB free: "
           "%s", (double)size / (1 << 30), avail / (1 << 30),
           epx_status_str(st));
    CHECK(w == NULL);
    CHECKF(strstr(epx_last_error(), "/dev/shm") != NULL, "%s",
           epx_last_error());
    /* What fits is still fine, and counted space is given back. */
    for (int i = 0; i < 3; i++) {
        CHECK_OK(epx__win_create(comm, size / 4 / comm->nranks, 2, &w));
        CHECK_OK(epx__win_signal(w, (comm->rank + 1) % comm->nranks, 0, 1));
        CHECK_OK(epx__win_wait(w, 0, 1));
        epx__win_destroy(w);
    }
    return check_unlinked(comm);
}

/* ---- a rank dies after creating its object, before unlinking it; no
 * launcher cleans up: the survivors must. */

static int died_in_setup_rank(int rank, void *arg)
{
    (void)arg;
    epx_comm_t *comm = NULL;
    CHECK_OK(epxt_env_comm(&comm));
    note_job(comm);
    CHECK_OK(epx_comm_barrier(comm));
    if (rank == 1) {
        /* The object the window would create, then the crash. */
        char name[96];
        snprintf(name, sizeof(name), "/epx-%s-%u-%d", comm->job,
                 comm->next_win, rank);
        int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
        CHECK(fd >= 0);
        CHECK(ftruncate(fd, 1 << 16) == 0);
        raise(SIGKILL);
    }
    epx_win_t *w = NULL;
    epx_status_t st = epx__win_create(comm, 1 << 16, 1, &w);
    CHECK(st != EPX_OK);
    return 0;
}

static void died_in_setup(void **s)
{
    (void)s;
    enum { R = 3 };
    memset(sh, 0, sizeof(*sh));
    setenv("EPX_TIMEOUT", "20", 1);
    int rc[R];
    epxt_proc_ranks(R, died_in_setup_rank, NULL, 60, rc);
    unsetenv("EPX_TIMEOUT");
    assert_int_equal(rc[0], 0);
    assert_int_equal(rc[1], 128 + SIGKILL);
    assert_int_equal(rc[2], 0);
    assert_true(sh->job[0] != '\0');
    int n = job_leftovers(sh->job);
    if (n)
        fail_msg("%d /dev/shm objects of job %s left after rank 1 died in "
                 "set-up", n, sh->job);
}

/* ---- 72 ranks: everything above at full width */

static int wide_rank(epx_comm_t *comm, void *arg)
{
    CHECK_CALL(ring_one(comm, 65537, 1));
    CHECK_CALL(unaligned_rank(comm, arg));
    CHECK_CALL(many_to_one_rank(comm, arg));
    CHECK_CALL(slots_rank(comm, arg));
    return 0;
}

/* ---- a rank killed mid-run */

enum { KILL_AFTER_CREATE, KILL_DURING_CREATE };
static int killed_rank(epx_comm_t *comm, void *arg)
{
    const int *when = arg;
    note_job(comm);
    CHECK_OK(epx_comm_barrier(comm));   /* the job id is noted */
    if (*when == KILL_DURING_CREATE && comm->rank == 1)
        raise(SIGKILL);   /* the others are creating a window */
    epx_win_t *w = NULL;
    epx_status_t st = epx__win_create(comm, 1 << 16, 1, &w);
    if (*when == KILL_DURING_CREATE) {
        /* Failing is all the others can do; what matters is /dev/shm. */
        CHECK(st != EPX_OK);
        CHECK(strlen(epx_last_error()) > 0);
        return 0;
    }
    CHECK_OK(st);
    if (comm->rank == 1)
        raise(SIGKILL);   /* the others wait for its signal */
    CHECK_OK(epx__win_wait(w, 0, 1));
    return 0;
}

/* ---- cmocka side */

static void launch(int nranks, double timeout, epx_rank_fn fn, void *arg)
{
    memset(sh, 0, sizeof(*sh));
    assert_int_equal(epxt_launch(nranks, timeout, fn, arg, NULL), EPX_OK);
    assert_true(sh->job[0] != '\0');
    assert_int_equal(job_leftovers(sh->job), 0);
}

#define LAUNCH_TEST(name, nranks, timeout, fn)                                 \
    static void name(void **s)                                                 \
    {                                                                          \
        (void)s;                                                               \
        launch(nranks, timeout, fn, NULL);                                     \
    }
LAUNCH_TEST(sizes_1, 1, 0, sizes_rank)
LAUNCH_TEST(sizes_3, 3, 0, sizes_rank)
LAUNCH_TEST(unaligned_2, 2, 0, unaligned_rank)
LAUNCH_TEST(unaligned_8, 8, 0, unaligned_rank)
LAUNCH_TEST(many_to_one_8, 8, 0, many_to_one_rank)
LAUNCH_TEST(slots_3, 3, 0, slots_rank)
LAUNCH_TEST(put_range, 2, 0, range_rank)
LAUNCH_TEST(wait_timeout, 2, SHORT_TIMEOUT, timeout_rank)
LAUNCH_TEST(many_windows, 3, 0, many_windows_rank)
LAUNCH_TEST(too_big_1, 1, 0, too_big_rank)
LAUNCH_TEST(too_big_3, 3, 0, too_big_rank)
LAUNCH_TEST(ranks_72, 72, 0, wide_rank)

static void killed(int nranks, int when)
{
    memset(sh, 0, sizeof(*sh));
    int bad = -1;
    assert_int_equal(epxt_launch(nranks, 0, killed_rank, &when, &bad),
                     EPX_ERR_PEER);
    assert_int_equal(bad, 1);
    assert_true(sh->job[0] != '\0');
    int n = job_leftovers(sh->job);
    if (n)
        fail_msg("%d /dev/shm objects of job %s left after rank 1 was killed",
                 n, sh->job);
}

static void killed_after_create(void **s)
{
    (void)s;
    killed(4, KILL_AFTER_CREATE);
}

static void killed_during_create(void **s)
{
    (void)s;
    killed(8, KILL_DURING_CREATE);
}

int main(void)
{
    epxt_init("test_shm");
    sh = epxt_shared_alloc(sizeof(*sh));
    if (!sh)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(ranks_72),
        cmocka_unit_test(sizes_1),
        cmocka_unit_test(sizes_3),
        cmocka_unit_test(unaligned_2),
        cmocka_unit_test(unaligned_8),
        cmocka_unit_test(many_to_one_8),
        cmocka_unit_test(slots_3),
        cmocka_unit_test(put_range),
        cmocka_unit_test(wait_timeout),
        cmocka_unit_test(many_windows),
        cmocka_unit_test(killed_after_create),
        cmocka_unit_test(killed_during_create),
        cmocka_unit_test(too_big_1),
        cmocka_unit_test(too_big_3),
        cmocka_unit_test(died_in_setup),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    epxt_shared_free(sh, sizeof(*sh));
    return rc;
}
