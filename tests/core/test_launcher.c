/*
 * core: the local launcher — distinct ranks in distinct processes, a
 * failing or crashing rank reported (rank, exit code or signal) and the
 * others stopped rather than left waiting for their timeout.
 */
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/epx_test.h"

#define MAXR 72

typedef struct seen {
    int nranks;
    int pid[MAXR];
} seen_t;

static int record_rank(epx_comm_t *comm, void *arg)
{
    seen_t *s = arg;
    int r = epx_comm_rank(comm);
    CHECK(epx_comm_size(comm) == s->nranks);
    CHECK(r >= 0 && r < s->nranks);
    CHECK(__atomic_exchange_n(&s->pid[r], (int)getpid(), __ATOMIC_SEQ_CST) ==
          0);   /* nobody else claimed this rank */
    CHECK_OK(epx_comm_barrier(comm));
    for (int i = 0; i < s->nranks; i++) {
        int pi = __atomic_load_n(&s->pid[i], __ATOMIC_SEQ_CST);
        CHECKF(pi > 0, "rank %d not there after the barrier", i);
        for (int j = 0; j < i; j++)
            CHECKF(pi != s->pid[j], "ranks %d and %d share a process", i, j);
    }
    return 0;
}

static void ranks_are_distinct(void **state)
{
    (void)state;
    static const int sizes[] = { 1, 2, 3, 8 };
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        seen_t *s = epxt_shared_alloc(sizeof(*s));
        assert_non_null(s);
        s->nranks = sizes[i];
        assert_int_equal(epxt_launch(sizes[i], 0, record_rank, s, NULL),
                         EPX_OK);
        for (int r = 0; r < sizes[i]; r++)
            assert_true(s->pid[r] > 0 && s->pid[r] != (int)getpid());
        epxt_shared_free(s, sizeof(*s));
    }
}

/* Rank `arg` fails one way or another; the others wait in a barrier that
 * would only end with their (60 s) timeout. */
enum { HOW_EXIT, HOW_KILL, HOW_SEGV };
typedef struct failing {
    int rank, how;
} failing_t;

static int fail_one(epx_comm_t *comm, void *arg)
{
    const failing_t *f = arg;
    if (epx_comm_rank(comm) == f->rank) {
        switch (f->how) {
        case HOW_EXIT: return 42;
        case HOW_KILL: raise(SIGKILL); break;
        case HOW_SEGV: raise(SIGSEGV); break;
        }
        return 0;
    }
    epx_comm_barrier(comm);
    return 0;
}

/* Does msg hold the number n as a whole word? */
static int has_number(const char *msg, int n)
{
    char want[16];
    int l = snprintf(want, sizeof(want), "%d", n);
    for (const char *p = msg; (p = strstr(p, want)); p += l)
        if ((p == msg || p[-1] < '0' || p[-1] > '9') &&
            (p[l] < '0' || p[l] > '9'))
            return 1;
    return 0;
}

static void check_failure(int nranks, failing_t f, int code)
{
    int bad = -1;
    double t0 = epxt_now();
    epx_status_t st = epxt_launch(nranks, 0, fail_one, &f, &bad);
    double dt = epxt_now() - t0;
    assert_int_equal(st, EPX_ERR_PEER);
    assert_int_equal(bad, f.rank);
    const char *msg = epx_last_error();
    if (!has_number(msg, code))
        fail_msg("launcher message '%s' does not give the exit code or "
                 "signal %d", msg, code);
    /* The waiting ranks were stopped, not left to time out. */
    if (dt > 30)
        fail_msg("launcher took %.1f s to stop the other ranks", dt);
}

static void failing_rank_reported(void **state)
{
    (void)state;
    check_failure(4, (failing_t){ 2, HOW_EXIT }, 42);
}

static void killed_rank_reported(void **state)
{
    (void)state;
    check_failure(3, (failing_t){ 1, HOW_KILL }, SIGKILL);
}

static void crashed_rank_reported(void **state)
{
    (void)state;
    check_failure(3, (failing_t){ 0, HOW_SEGV }, SIGSEGV);
}

static int nothing(epx_comm_t *comm, void *arg)
{
    (void)comm;
    (void)arg;
    return 0;
}

static void bad_arguments(void **state)
{
    (void)state;
    assert_int_equal(epx_launch_local(0, NULL, nothing, NULL, NULL),
                     EPX_ERR_INVALID);
    assert_true(strlen(epx_last_error()) > 0);
    assert_int_equal(epx_launch_local(2, NULL, NULL, NULL, NULL),
                     EPX_ERR_INVALID);
    /* NULL params and NULL failed_rank are fine. */
    assert_int_equal(epx_launch_local(2, NULL, nothing, NULL, NULL), EPX_OK);
}

/* A rank returning a multiple of 256 still failed (exit codes are 8 bits). */
static int return_256(epx_comm_t *comm, void *arg)
{
    (void)arg;
    return epx_comm_rank(comm) == 1 ? 256 : 0;
}

static void wide_return_code_is_failure(void **state)
{
    (void)state;
    int bad = -1;
    assert_int_equal(epx_launch_local(2, NULL, return_256, NULL, &bad),
                     EPX_ERR_PEER);
    assert_int_equal(bad, 1);
}

static int fail_rank1(epx_comm_t *comm, void *arg)
{
    (void)arg;
    return epx_comm_rank(comm) == 1 ? 3 : 0;
}

/* The launcher reaps only its ranks, and still sees their status when the
 * caller ignores SIGCHLD. */
static void callers_children_and_sigchld(void **state)
{
    (void)state;
    pid_t mine = fork();
    if (mine == 0)
        _exit(42);
    assert_true(mine > 0);
    assert_int_equal(epx_launch_local(2, NULL, nothing, NULL, NULL), EPX_OK);
    int status;
    assert_int_equal(waitpid(mine, &status, 0), mine);   /* not stolen */
    assert_int_equal(WEXITSTATUS(status), 42);

    struct sigaction ign = { .sa_handler = SIG_IGN }, old;
    sigemptyset(&ign.sa_mask);
    sigaction(SIGCHLD, &ign, &old);
    int bad = -1;
    epx_status_t st = epx_launch_local(2, NULL, fail_rank1, NULL, &bad);
    sigaction(SIGCHLD, &old, NULL);
    assert_int_equal(st, EPX_ERR_PEER);
    assert_int_equal(bad, 1);
    assert_non_null(strstr(epx_last_error(), "status 3"));
}

/* Is process `pid` still running (not gone, not a zombie waiting for
 * whoever adopted it to reap it)? */
static int running(int pid)
{
    char path[64], st[256];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(st, 1, sizeof(st) - 1, f);
    fclose(f);
    st[n] = '\0';
    const char *p = strrchr(st, ')');   /* after the command's name */
    return p && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
}

/* Ranks record their pid and then sleep, as ranks left waiting would. */
static int sleep_rank(epx_comm_t *comm, void *arg)
{
    seen_t *s = arg;
    __atomic_store_n(&s->pid[epx_comm_rank(comm)], (int)getpid(),
                     __ATOMIC_SEQ_CST);
    sleep(60);
    return 0;
}

/* The launcher killed: its ranks go with it within a second, no orphans. */
static void ranks_die_with_launcher(void **state)
{
    (void)state;
    enum { N = 3 };
    seen_t *s = epxt_shared_alloc(sizeof(*s));
    assert_non_null(s);
    s->nranks = N;
    pid_t launcher = fork();
    if (launcher == 0)
        _exit(epx_launch_local(N, NULL, sleep_rank, s, NULL) == EPX_OK ? 0 : 1);
    assert_true(launcher > 0);
    for (double t0 = epxt_now(); epxt_now() - t0 < 30;) {
        int up = 0;
        for (int r = 0; r < N; r++)
            up += __atomic_load_n(&s->pid[r], __ATOMIC_SEQ_CST) > 0;
        if (up == N)
            break;
        usleep(10000);
    }
    for (int r = 0; r < N; r++)
        assert_true(s->pid[r] > 0);
    kill(launcher, SIGKILL);
    int status;
    assert_int_equal(waitpid(launcher, &status, 0), launcher);
    double t0 = epxt_now(), gone_after = -1;
    while (epxt_now() - t0 < 10) {
        int alive = 0;
        for (int r = 0; r < N; r++)   /* orphans are reparented, not ours */
            alive += running(s->pid[r]);
        if (alive == 0) {
            gone_after = epxt_now() - t0;
            break;
        }
        usleep(10000);
    }
    printf("ranks gone %.3f s after their launcher was killed\n", gone_after);
    for (int r = 0; r < N && gone_after < 0; r++)
        kill(s->pid[r], SIGKILL);   /* leave nothing behind on failure */
    assert_true(gone_after >= 0 && gone_after < 1.0);
    epxt_shared_free(s, sizeof(*s));
}

int main(void)
{
    epxt_init("test_launcher");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(ranks_are_distinct),
        cmocka_unit_test(failing_rank_reported),
        cmocka_unit_test(killed_rank_reported),
        cmocka_unit_test(crashed_rank_reported),
        cmocka_unit_test(bad_arguments),
        cmocka_unit_test(wide_return_code_is_failure),
        cmocka_unit_test(callers_children_and_sigchld),
        cmocka_unit_test(ranks_die_with_launcher),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
