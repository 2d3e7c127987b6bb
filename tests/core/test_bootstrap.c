/*
 * core: bootstraps.  Env bootstrap (EPX_RANK/EPX_NRANKS, root host:port,
 * job key) between processes started by hand, with a stray process
 * presenting a wrong or no job key turned away (EPX_ERR_AUTH) while the
 * job still forms; the all-gather bootstrap driven by threads of one
 * process.  Each formed communicator runs a dispatch/combine checked
 * against the reference.
 */
#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/epx_test.h"
#include "common/thread_ranks.h"
#include "moe/moe_case.h"

static const moe_case_t small_case = {
    .name = "boot-em", .experts = 7, .topk = 3, .hidden = 12,
    .max_tokens = 6, .dtype = EPX_DTYPE_BF16, .idx_dtype = EPX_DTYPE_INT32,
    .out_dtype = EPX_DTYPE_FP32, .layout = EPX_LAYOUT_EXPERT_MAJOR,
    .align = 4,
};

/* A port nobody listens on right now (the bootstrap binds it later). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET,
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof(sa);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) ||
        getsockname(fd, (struct sockaddr *)&sa, &len)) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(sa.sin_port);
}

typedef struct env_rank {
    int rank, nranks;
    const char *root;      /* NULL: from EPX_ROOT */
    const char *key;       /* NULL: from EPX_JOB_KEY */
    epx_status_t expect;   /* of epx_comm_create */
} env_rank_t;

static int env_rank_main(const env_rank_t *e)
{
    char buf[16];
    snprintf(buf, sizeof(buf), "%d", e->rank);
    setenv("EPX_RANK", buf, 1);
    snprintf(buf, sizeof(buf), "%d", e->nranks);
    setenv("EPX_NRANKS", buf, 1);
    epx_comm_params_t p = EPX_COMM_PARAMS_INIT;
    p.bootstrap = EPX_BOOTSTRAP_ENV;
    p.root = e->root;
    p.job_key = e->key;
    epx_comm_t *comm = NULL;
    epx_status_t st = epx_comm_create(&p, &comm);
    CHECKF(st == e->expect, "epx_comm_create: %s, want %s (%s)",
           epx_status_str(st), epx_status_str(e->expect), epx_last_error());
    if (st != EPX_OK) {
        CHECK(comm == NULL);
        CHECK(strlen(epx_last_error()) > 0);
        return 0;
    }
    CHECK(epx_comm_rank(comm) == e->rank);
    CHECK(epx_comm_size(comm) == e->nranks);
    CHECK_OK(epx_comm_barrier(comm));
    CHECK_CALL(moe_case_run(comm, &small_case));
    epx_comm_destroy(comm);
    return 0;
}

static pid_t start(const env_rank_t *e)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        epxt_rank_enter(e->rank);
        int rc = env_rank_main(e);
        fflush(NULL);
        _exit(rc);
    }
    return pid;
}

/* Wait for pid; kill it after `seconds`.  Returns its exit code (or 128 +
 * signal). */
static int finish(pid_t pid, double seconds)
{
    double until = epxt_now() + seconds;
    int status;
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (epxt_now() > until) {
            fprintf(stderr, "process %d still running after %.0f s: killed\n",
                    (int)pid, seconds);
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return 124;
        }
        usleep(10000);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void env_bootstrap_params(void **state)
{
    (void)state;
    enum { R = 3 };
    char root[64], key[64];
    int port = free_port();
    assert_true(port > 0);
    snprintf(root, sizeof(root), "127.0.0.1:%d", port);
    snprintf(key, sizeof(key), "key-%016" PRIx64, epxt_seed());
    pid_t pid[R];
    for (int r = R - 1; r >= 0; r--) {   /* the root comes up last */
        env_rank_t e = { r, R, root, key, EPX_OK };
        pid[r] = start(&e);
        assert_true(pid[r] > 0);
    }
    for (int r = 0; r < R; r++)
        assert_int_equal(finish(pid[r], 120), 0);
}

static void env_bootstrap_environment(void **state)
{
    (void)state;
    enum { R = 2 };
    char root[64], key[64];
    int port = free_port();
    assert_true(port > 0);
    snprintf(root, sizeof(root), "127.0.0.1:%d", port);
    snprintf(key, sizeof(key), "envkey-%016" PRIx64, epxt_seed());
    /* Only the environment says where and with which key. */
    setenv("EPX_ROOT", root, 1);
    setenv("EPX_JOB_KEY", key, 1);
    pid_t pid[R];
    for (int r = 0; r < R; r++) {
        env_rank_t e = { r, R, NULL, NULL, EPX_OK };
        pid[r] = start(&e);
        assert_true(pid[r] > 0);
    }
    unsetenv("EPX_ROOT");
    unsetenv("EPX_JOB_KEY");
    for (int r = 0; r < R; r++)
        assert_int_equal(finish(pid[r], 120), 0);
}

static void wrong_key_turned_away(void **state)
{
    (void)state;
    enum { R = 2 };
    char root[64], key[64], bad[64];
    int port = free_port();
    assert_true(port > 0);
    snprintf(root, sizeof(root), "127.0.0.1:%d", port);
    snprintf(key, sizeof(key), "good-%016" PRIx64, epxt_seed());
    snprintf(bad, sizeof(bad), "bad-%016" PRIx64, epxt_seed());

    env_rank_t root_rank = { 0, R, root, key, EPX_OK };
    pid_t p0 = start(&root_rank);
    assert_true(p0 > 0);
    /* Strays claiming rank 1 arrive first: a wrong key, then none. */
    env_rank_t stray = { 1, R, root, bad, EPX_ERR_AUTH };
    pid_t ps = start(&stray);
    assert_true(ps > 0);
    assert_int_equal(finish(ps, 60), 0);
    env_rank_t keyless = { 1, R, root, "", EPX_ERR_AUTH };
    ps = start(&keyless);
    assert_true(ps > 0);
    assert_int_equal(finish(ps, 60), 0);
    /* The real rank 1 still joins and the job works. */
    env_rank_t legit = { 1, R, root, key, EPX_OK };
    pid_t p1 = start(&legit);
    assert_true(p1 > 0);
    assert_int_equal(finish(p1, 120), 0);
    assert_int_equal(finish(p0, 120), 0);
}

static void env_bootstrap_incomplete(void **state)
{
    (void)state;
    /* No EPX_RANK / EPX_NRANKS: refused with a message, nothing hangs. */
    unsetenv("EPX_RANK");
    unsetenv("EPX_NRANKS");
    epx_comm_params_t p = EPX_COMM_PARAMS_INIT;
    p.root = "127.0.0.1:1";
    p.job_key = "k";
    epx_comm_t *comm = NULL;
    assert_int_equal(epx_comm_create(&p, &comm), EPX_ERR_INVALID);
    assert_null(comm);
    assert_true(strlen(epx_last_error()) > 0);
}

static int threads_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    CHECK_OK(epx_comm_barrier(comm));
    CHECK_CALL(moe_case_run(comm, &small_case));
    return 0;
}

static void allgather_threads(void **state)
{
    (void)state;
    assert_int_equal(epxt_thread_ranks(4, 60, threads_rank, NULL), 0);
}

int main(void)
{
    epxt_init("test_bootstrap");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(env_bootstrap_params),
        cmocka_unit_test(env_bootstrap_environment),
        cmocka_unit_test(wrong_key_turned_away),
        cmocka_unit_test(env_bootstrap_incomplete),
        cmocka_unit_test(allgather_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
