/*
 * Descriptor exchange between the ranks of one host (src/cuda/fdpass.c,
 * the carrier of cuMem POSIX handles), with memfd descriptors: 1, 2, 3
 * and 8 forked ranks, everyone to everyone and a sparse pattern; each
 * received descriptor must read back its sender's bytes.  No GPU needed.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/epx_test.h"
#include "cuda/fdpass.h"

static int fd_rank(epx_comm_t *comm, void *arg)
{
    const int sparse = *(const int *)arg;
    const int R = epx_comm_size(comm), me = epx_comm_rank(comm);
    unsigned char to[64], from[64];
    int fds[64];
    CHECK(R <= 64);
    for (int r = 0; r < R; r++) {
        /* sparse: r sends to s iff (r + s) % 3 == 0 and r != s */
        to[r] = r != me && (!sparse || (me + r) % 3 == 0);
        from[r] = r != me && (!sparse || (me + r) % 3 == 0);
    }
    int fd = memfd_create("epx-test", MFD_CLOEXEC);
    CHECK(fd >= 0);
    uint64_t word = epxt_hash(epxt_seed(), (uint64_t)me, 7, 0, 0);
    CHECK(pwrite(fd, &word, sizeof(word), 0) == (ssize_t)sizeof(word));
    CHECK_OK(epx__fd_exchange(comm, sparse ? "sp" : "all", fd, to, from, fds));
    close(fd);
    for (int r = 0; r < R; r++) {
        if (!from[r]) {
            CHECK(fds[r] == -1);
            continue;
        }
        uint64_t got = 0;
        CHECK(fds[r] >= 0);
        CHECK(pread(fds[r], &got, sizeof(got), 0) == (ssize_t)sizeof(got));
        CHECKF(got == epxt_hash(epxt_seed(), (uint64_t)r, 7, 0, 0),
               "descriptor from rank %d reads the wrong bytes", r);
        close(fds[r]);
    }
    return 0;
}

static void exchange(void **state)
{
    (void)state;
    static const int ranks[] = { 1, 2, 3, 8 };
    for (int sparse = 0; sparse < 2; sparse++)
        for (size_t i = 0; i < sizeof(ranks) / sizeof(ranks[0]); i++)
            assert_int_equal(epxt_launch(ranks[i], 30, fd_rank, &sparse, NULL),
                             EPX_OK);
}

int main(void)
{
    epxt_init("test_fdpass");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(exchange),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
