/*
 * epx-boot-strays: how long a 2-rank job takes to form over the env (TCP)
 * bootstrap while N stray connections sit idle on rank 0's port, against
 * the same job with none in the same run.  A third of the strays send half
 * a hello and stop; none ever answers the challenge.
 *
 *   epx-boot-strays [N...]      (default: 0 10 100 1000)
 *
 * Prints one line per N: the time from rank 1's start to both ranks'
 * exit (create, barrier, destroy), the median of 5 runs, and its ratio to
 * N = 0.  Each stray is one descriptor of this process (ulimit -n).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "epx.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET,
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof(sa);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) ||
        getsockname(fd, (struct sockaddr *)&sa, &len))
        return -1;
    close(fd);
    return ntohs(sa.sin_port);
}

static pid_t rank(int r, const char *root)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    char buf[8];
    snprintf(buf, sizeof(buf), "%d", r);
    setenv("EPX_RANK", buf, 1);
    setenv("EPX_NRANKS", "2", 1);
    setenv("EPX_ROOT", root, 1);
    setenv("EPX_JOB_KEY", "epx-boot-strays-key", 1);
    setenv("EPX_TIMEOUT", "60", 1);
    setenv("EPX_LOG", "error", 1);
    epx_comm_params_t p = EPX_COMM_PARAMS_INIT;
    epx_comm_t *c = NULL;
    if (epx_comm_create(&p, &c) != EPX_OK) {
        fprintf(stderr, "rank %d: %s\n", r, epx_last_error());
        _exit(1);
    }
    int rc = epx_comm_barrier(c) != EPX_OK;
    epx_comm_destroy(c);
    _exit(rc);
}

/* Seconds for one job with n strays, or -1. */
static double one(int n)
{
    char root[64];
    int port = free_port();
    snprintf(root, sizeof(root), "127.0.0.1:%d", port);
    pid_t p0 = rank(0, root);
    int *fd = malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
    struct sockaddr_in sa = { .sin_family = AF_INET,
                              .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    for (int i = 0; i < n; i++) {
        double until = now() + 10;
        do {
            fd[i] = socket(AF_INET, SOCK_STREAM, 0);
            if (connect(fd[i], (struct sockaddr *)&sa, sizeof(sa)) == 0)
                break;
            close(fd[i]);
            fd[i] = -1;
            usleep(10000);
        } while (now() < until);
        if (fd[i] >= 0 && i % 3 == 0)
            (void)!send(fd[i], "bxp2\0\0\0", 7, MSG_NOSIGNAL);
    }
    double t0 = now();
    pid_t p1 = rank(1, root);
    int s0, s1;
    waitpid(p1, &s1, 0);
    waitpid(p0, &s0, 0);
    double t = now() - t0;
    for (int i = 0; i < n; i++)
        if (fd[i] >= 0)
            close(fd[i]);
    free(fd);
    return WIFEXITED(s0) && !WEXITSTATUS(s0) && WIFEXITED(s1) &&
           !WEXITSTATUS(s1) ? t : -1;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(int n)
{
    double t[5];
    for (int i = 0; i < 5; i++)
        if ((t[i] = one(n)) < 0)
            return -1;
    qsort(t, 5, sizeof(double), cmp);
    return t[2];
}

int main(int argc, char **argv)
{
    static const int dflt[] = { 0, 10, 100, 1000 };
    int nn = argc > 1 ? argc - 1 : 4;
    signal(SIGPIPE, SIG_IGN);
    double base = median(0);
    printf("%-8s %12s %8s\n", "strays", "job (ms)", "vs 0");
    for (int i = 0; i < nn; i++) {
        int n = argc > 1 ? atoi(argv[i + 1]) : dflt[i];
        double t = n == 0 ? base : median(n);
        if (t < 0) {
            printf("%-8d %12s\n", n, "FAILED");
            return 1;
        }
        printf("%-8d %12.2f %8.2f\n", n, t * 1e3, t / base);
    }
    return 0;
}
