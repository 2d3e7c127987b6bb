/*
 * core: bootstraps.  Env bootstrap (EPX_RANK/EPX_NRANKS, root host:port,
 * job key) between processes started by hand, with a stray process
 * presenting a wrong or no job key turned away (EPX_ERR_AUTH) while the
 * job still forms; 100 idle connections that do not delay the job; the
 * handshake spoken by hand (a raw client, a fake root) to check that the
 * key never crosses the wire, that every rejection is the same bytes and
 * that a root without the key is not believed; the all-gather bootstrap
 * driven by threads of one process.  Each formed communicator runs a dispatch/combine checked
 * against the reference.
 */
#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include <sodium.h>

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

/* A fresh job: rank 0's address on a free port, and a key. */
static int new_job(char root[64], char key[64], const char *what)
{
    int port = free_port();
    assert_true(port > 0);
    snprintf(root, 64, "127.0.0.1:%d", port);
    snprintf(key, 64, "%s-%016" PRIx64, what, epxt_seed());
    return port;
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
    new_job(root, key, "key");
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
    new_job(root, key, "envkey");
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
    new_job(root, key, "good");
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

/* Connect to the root at 127.0.0.1:port, retrying while it comes up. */
static int connect_root(int port, double seconds)
{
    double until = epxt_now() + seconds;
    while (epxt_now() < until) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sa = { .sin_family = AF_INET,
                                  .sin_port = htons((uint16_t)port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
            return fd;
        if (fd >= 0)
            close(fd);
        usleep(20000);
    }
    return -1;
}

static void idle_connections_do_not_stall(void **state)
{
    (void)state;
    enum { R = 2, IDLE = 100 };
    char root[64], key[64];
    int idle[IDLE];
    int port = new_job(root, key, "idle");
    /* Served one at a time with 5 s each, 100 strays would take 500 s: far
     * past this timeout. */
    setenv("EPX_TIMEOUT", "30", 1);
    env_rank_t r0 = { 0, R, root, key, EPX_OK };
    pid_t p0 = start(&r0);
    assert_true(p0 > 0);
    for (int i = 0; i < IDLE; i++) {
        idle[i] = connect_root(port, 30);
        assert_true(idle[i] >= 0);
        /* A third send half a hello, then nothing. */
        if (i % 3 == 0)
            assert_int_equal(send(idle[i], "bxp2\0\0\0", 7, 0), 7);
    }
    double t0 = epxt_now();
    env_rank_t r1 = { 1, R, root, key, EPX_OK };
    pid_t p1 = start(&r1);
    assert_true(p1 > 0);
    int rc1 = finish(p1, 60), rc0 = finish(p0, 60);
    double took = epxt_now() - t0;
    unsetenv("EPX_TIMEOUT");
    for (int i = 0; i < IDLE; i++)
        close(idle[i]);
    assert_int_equal(rc1, 0);
    assert_int_equal(rc0, 0);
    printf("# %d idle connections: rank 1 joined and the job ran in %.3f s\n",
           IDLE, took);
    /* Not a benchmark: only far below one stray's 5 s deadline. */
    assert_true(took < 4.0);
}

/* The handshake as the protocol describes it (src/core/bootstrap_tcp.c),
 * written out independently. */
#define T_MAGIC 0x32707862u
#define T_ADMIT 0x746d6461u
typedef struct { uint32_t magic; uint8_t nonce[32]; } t_challenge_t;
typedef struct { uint32_t magic; int32_t rank, nranks; uint8_t nonce[32],
                 mac[32]; } t_hello_t;
typedef struct { uint32_t verdict; uint8_t mac[32]; } t_answer_t;

static void t_mac(uint8_t out[32], const char *key, const char *tag,
                  const uint8_t a[32], const uint8_t b[32], int32_t rank,
                  int32_t nranks)
{
    uint8_t msg[64 + 32 + 8];
    size_t tl = strlen(tag) + 1, n = 0;
    memcpy(msg, tag, tl);
    n = tl;
    memcpy(msg + n, a, 32);
    memcpy(msg + n + 32, b, 32);
    memcpy(msg + n + 64, &rank, 4);
    memcpy(msg + n + 68, &nranks, 4);
    n += 72;
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, (const unsigned char *)key, strlen(key));
    crypto_auth_hmacsha256_update(&st, msg, n);
    crypto_auth_hmacsha256_final(&st, out);
}

static int read_full(int fd, void *buf, size_t len)
{
    char *p = buf;
    while (len) {
        ssize_t n = recv(fd, p, len, 0);
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* One raw attempt: the answer's bytes, or -1 when none came. */
static int raw_attempt(int port, const char *key, int32_t rank, int32_t nranks,
                       uint32_t magic, t_answer_t *ans)
{
    int fd = connect_root(port, 30);
    if (fd < 0)
        return -1;
    struct timeval tv = { 10, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    t_challenge_t ch;
    t_hello_t h;
    memset(&h, 0, sizeof(h));
    if (read_full(fd, &ch, sizeof(ch)) || ch.magic != T_MAGIC) {
        close(fd);
        return -1;
    }
    h.magic = magic;
    h.rank = rank;
    h.nranks = nranks;
    randombytes_buf(h.nonce, sizeof(h.nonce));
    t_mac(h.mac, key, "epx-boot-hello", ch.nonce, h.nonce, rank, nranks);
    int rc = send(fd, &h, sizeof(h), 0) == (ssize_t)sizeof(h) &&
             read_full(fd, ans, sizeof(*ans)) == 0 ? 0 : -1;
    /* Then the root hangs up. */
    char extra;
    if (rc == 0 && recv(fd, &extra, 1, 0) != 0)
        rc = -1;
    close(fd);
    return rc;
}

static void rejections_look_alike(void **state)
{
    (void)state;
    enum { R = 2 };
    char root[64], key[64], bad[64];
    int port = new_job(root, key, "alike");
    assert_true(sodium_init() >= 0);
    snprintf(bad, sizeof(bad), "other-%016" PRIx64, epxt_seed());
    env_rank_t r0 = { 0, R, root, key, EPX_OK };
    pid_t p0 = start(&r0);
    assert_true(p0 > 0);
    t_answer_t a[5];
    /* Wrong key; right key with the wrong job size, an out-of-range rank,
     * rank 0 itself; right key and shape with a wrong magic. */
    assert_int_equal(raw_attempt(port, bad, 1, R, T_MAGIC, &a[0]), 0);
    assert_int_equal(raw_attempt(port, key, 1, R + 1, T_MAGIC, &a[1]), 0);
    assert_int_equal(raw_attempt(port, key, R, R, T_MAGIC, &a[2]), 0);
    assert_int_equal(raw_attempt(port, key, 0, R, T_MAGIC, &a[3]), 0);
    assert_int_equal(raw_attempt(port, key, 1, R, 0x12345678u, &a[4]), 0);
    for (int i = 0; i < 5; i++) {
        assert_true(a[i].verdict != T_ADMIT);
        assert_memory_equal(&a[i], &a[0], sizeof(a[0]));
    }
    /* The real rank 1 still joins. */
    env_rank_t r1 = { 1, R, root, key, EPX_OK };
    pid_t p1 = start(&r1);
    assert_true(p1 > 0);
    assert_int_equal(finish(p1, 120), 0);
    assert_int_equal(finish(p0, 120), 0);
}

/* A socket listening on a free loopback port; its address in *sa and
 * "127.0.0.1:port" in root[64]. */
static int listen_loopback(int backlog, struct sockaddr_in *sa, char *root)
{
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    socklen_t len = sizeof(*sa);
    *sa = (struct sockaddr_in){ .sin_family = AF_INET,
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    assert_true(lfd >= 0);
    assert_int_equal(bind(lfd, (struct sockaddr *)sa, sizeof(*sa)), 0);
    assert_int_equal(listen(lfd, backlog), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)sa, &len), 0);
    snprintf(root, 64, "127.0.0.1:%d", ntohs(sa->sin_port));
    return lfd;
}

/* A fake root that does not hold the key: it sees no key in the hello,
 * and its "admit" is not believed. */
static void fake_root_not_believed(void **state)
{
    (void)state;
    char root[64], key[64];
    struct sockaddr_in sa;
    int lfd = listen_loopback(4, &sa, root);
    snprintf(key, sizeof(key), "secret-%016" PRIx64, epxt_seed());
    env_rank_t r1 = { 1, 2, root, key, EPX_ERR_AUTH };
    pid_t p1 = start(&r1);
    assert_true(p1 > 0);
    int fd = accept(lfd, NULL, NULL);
    assert_true(fd >= 0);
    t_challenge_t ch = { T_MAGIC, { 0 } };
    randombytes_buf(ch.nonce, sizeof(ch.nonce));
    assert_int_equal(send(fd, &ch, sizeof(ch), 0), (ssize_t)sizeof(ch));
    t_hello_t h;
    assert_int_equal(read_full(fd, &h, sizeof(h)), 0);
    assert_int_equal(h.rank, 1);
    assert_int_equal(h.nranks, 2);
    assert_null(memmem(&h, sizeof(h), key, strlen(key)));
    /* The MAC is what the key makes of this challenge. */
    uint8_t want[32];
    t_mac(want, key, "epx-boot-hello", ch.nonce, h.nonce, 1, 2);
    assert_memory_equal(want, h.mac, 32);
    /* Admit without the key: a guessed MAC. */
    t_answer_t a = { T_ADMIT, { 0 } };
    randombytes_buf(a.mac, sizeof(a.mac));
    assert_int_equal(send(fd, &a, sizeof(a), 0), (ssize_t)sizeof(a));
    assert_int_equal(finish(p1, 60), 0);
    close(fd);
    close(lfd);
}

/* A root whose accept queue is full drops the SYNs: a joiner's connect
 * must still give up at its deadline (2 s here), not after the kernel's
 * SYN retries (about two minutes). */
static void full_accept_queue_times_out(void **state)
{
    (void)state;
    char root[64];
    struct sockaddr_in sa;
    int lfd = listen_loopback(0, &sa, root);
    /* Fill the queue (never accepted) until a connect hangs. */
    int fill[16], n = 0, hung = 0;
    while (n < 16 && !hung) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        assert_true(fd >= 0);
        fill[n++] = fd;
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
            continue;
        assert_int_equal(errno, EINPROGRESS);
        struct pollfd pfd = { fd, POLLOUT, 0 };
        hung = poll(&pfd, 1, 300) == 0;
    }
    if (!hung) {   /* this kernel never drops: nothing to check */
        for (int i = 0; i < n; i++)
            close(fill[i]);
        close(lfd);
        skip();
    }
    fflush(NULL);
    double t0 = epxt_now();
    pid_t pid = fork();
    if (pid == 0) {
        setenv("EPX_RANK", "1", 1);
        setenv("EPX_NRANKS", "2", 1);
        epx_comm_params_t p = EPX_COMM_PARAMS_INIT;
        p.root = root;
        p.job_key = "full-queue";
        p.timeout_s = 2.0;
        epx_comm_t *comm = NULL;
        epx_status_t st = epx_comm_create(&p, &comm);
        _exit(st == EPX_ERR_TIMEOUT ? 0 : 1);
    }
    assert_true(pid > 0);
    int rc = finish(pid, 20);
    double dt = epxt_now() - t0;
    printf("joiner against a full accept queue: exit %d after %.2f s\n", rc, dt);
    assert_int_equal(rc, 0);
    assert_true(dt < 6.0);
    for (int i = 0; i < n; i++)
        close(fill[i]);
    close(lfd);
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

/* Numeric settings that would wrap, allocate absurdly or mean nothing are
 * refused at once, naming the variable. */
#define EPX_TEST_HUGE_RANKS 2147483647
static int huge_calls;
static int huge_allgather(void *ctx, const void *send, void *recv,
                          size_t bytes)
{
    (void)send;
    (void)recv;
    (void)bytes;
    (void)ctx;
    huge_calls++;
    return -1;
}

static void env_values_checked(void **state)
{
    (void)state;
    static const struct { const char *rank, *nranks, *var, *val, *named; } bad[] = {
        { "99999999999", "2", NULL, NULL, "EPX_RANK" },
        { "4294967297", "2", NULL, NULL, "EPX_RANK" },   /* wraps to 1 */
        { "0", "2147483647", NULL, NULL, "EPX_NRANKS" },
        { "0", "4294967298", NULL, NULL, "EPX_NRANKS" },  /* wraps to 2 */
        { "-1", "2", NULL, NULL, "EPX_RANK" },
        { "0", "0", NULL, NULL, "EPX_NRANKS" },
        { "2", "2", NULL, NULL, "EPX_RANK" },
        { "1x", "2", NULL, NULL, "EPX_RANK" },
        { "0", " 2", NULL, NULL, "EPX_NRANKS" },
        { "0", "1", "EPX_SPIN", "abc", "EPX_SPIN" },
        { "0", "1", "EPX_SPIN", "-5", "EPX_SPIN" },
        { "0", "1", "EPX_SPIN", "99999999999999999999", "EPX_SPIN" },
        { "0", "1", "EPX_YIELD", "1e3", "EPX_YIELD" },
        { "0", "1", "EPX_TIMEOUT", "10s", "EPX_TIMEOUT" },
        { "0", "1", "EPX_TIMEOUT", "nan", "EPX_TIMEOUT" },
        { "0", "1", "EPX_TIMEOUT", "inf", "EPX_TIMEOUT" },
        { "0", "1", "EPX_TIMEOUT", "-1", "EPX_TIMEOUT" },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        setenv("EPX_RANK", bad[i].rank, 1);
        setenv("EPX_NRANKS", bad[i].nranks, 1);
        if (bad[i].var)
            setenv(bad[i].var, bad[i].val, 1);
        epx_comm_params_t p = EPX_COMM_PARAMS_INIT;
        p.root = "127.0.0.1:1";
        p.job_key = "k";
        p.timeout_s = 2;   /* a value that slipped through fails fast */
        epx_comm_t *comm = NULL;
        double t0 = epxt_now();
        epx_status_t st = epx_comm_create(&p, &comm);
        if (bad[i].var)
            unsetenv(bad[i].var);
        printf("# %s=%s: %s\n", bad[i].named,
               bad[i].var ? bad[i].val
                          : strcmp(bad[i].named, "EPX_RANK") ? bad[i].nranks
                                                             : bad[i].rank,
               epx_last_error());
        assert_int_equal(st, EPX_ERR_INVALID);
        assert_null(comm);
        assert_non_null(strstr(epx_last_error(), bad[i].named));
        assert_true(epxt_now() - t0 < 1.0);
    }
    /* In range still works: one rank needs no root. */
    setenv("EPX_RANK", "0", 1);
    setenv("EPX_NRANKS", "1", 1);
    setenv("EPX_SPIN", "0", 1);
    setenv("EPX_TIMEOUT", "0.5e2", 1);
    epx_comm_params_t p = EPX_COMM_PARAMS_INIT;
    epx_comm_t *comm = NULL;
    epx_status_t st = epx_comm_create(&p, &comm);
    if (st != EPX_OK)
        print_error("in range: %s\n", epx_last_error());
    assert_int_equal(st, EPX_OK);
    epx_comm_destroy(comm);
    unsetenv("EPX_SPIN");
    unsetenv("EPX_TIMEOUT");
    unsetenv("EPX_RANK");
    unsetenv("EPX_NRANKS");
    /* The other ways in are bounded too. */
    epx_comm_params_t a = EPX_COMM_PARAMS_INIT;
    a.bootstrap = EPX_BOOTSTRAP_ALLGATHER;
    a.rank = 0;
    a.nranks = EPX_TEST_HUGE_RANKS;
    a.allgather = huge_allgather;
    comm = NULL;
    assert_int_equal(epx_comm_create(&a, &comm), EPX_ERR_INVALID);
    assert_null(comm);
    assert_int_equal(huge_calls, 0);
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
        cmocka_unit_test(idle_connections_do_not_stall),
        cmocka_unit_test(rejections_look_alike),
        cmocka_unit_test(fake_root_not_believed),
        cmocka_unit_test(full_accept_queue_times_out),
        cmocka_unit_test(env_bootstrap_incomplete),
        cmocka_unit_test(env_values_checked),
        cmocka_unit_test(allgather_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
