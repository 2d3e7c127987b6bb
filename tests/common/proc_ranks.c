/* Ranks as hand-started processes over the env bootstrap (proc_ranks.h). */
#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/epx_test.h"
#include "common/proc_ranks.h"

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET,
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof(sa);
    int port = -1;
    if (fd >= 0 && !bind(fd, (struct sockaddr *)&sa, sizeof(sa)) &&
        !getsockname(fd, (struct sockaddr *)&sa, &len))
        port = ntohs(sa.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

epx_status_t epxt_env_comm(epx_comm_t **comm)
{
    epx_comm_params_t p = EPX_COMM_PARAMS_INIT;
    p.bootstrap = EPX_BOOTSTRAP_ENV;
    return epx_comm_create(&p, comm);
}

int epxt_proc_ranks(int nranks, int (*fn)(int rank, void *arg), void *arg,
                    double seconds, int *rc)
{
    char root[64], key[64], buf[16];
    snprintf(root, sizeof(root), "127.0.0.1:%d", free_port());
    snprintf(key, sizeof(key), "proc-%016" PRIx64, epxt_seed());
    pid_t *pids = calloc((size_t)nranks, sizeof(pid_t));
    if (!pids)
        return 1;
    fflush(NULL);
    for (int r = 0; r < nranks; r++) {
        pid_t pid = fork();
        if (pid == 0) {
            epxt_rank_enter(r);
            snprintf(buf, sizeof(buf), "%d", r);
            setenv("EPX_RANK", buf, 1);
            snprintf(buf, sizeof(buf), "%d", nranks);
            setenv("EPX_NRANKS", buf, 1);
            setenv("EPX_ROOT", root, 1);
            setenv("EPX_JOB_KEY", key, 1);
            int code = fn(r, arg);
            fflush(NULL);
            _exit(code);
        }
        pids[r] = pid;
        rc[r] = pid < 0 ? 125 : -1;
    }
    double until = epxt_now() + seconds;
    int left = nranks, bad = 0;
    while (left > 0) {
        int reaped = 0;
        for (int r = 0; r < nranks; r++) {
            int status;
            if (rc[r] != -1 || waitpid(pids[r], &status, WNOHANG) != pids[r])
                continue;
            rc[r] = WIFEXITED(status) ? WEXITSTATUS(status)
                                      : 128 + WTERMSIG(status);
            left--;
            reaped = 1;
        }
        if (left > 0 && epxt_now() > until) {
            for (int r = 0; r < nranks; r++)
                if (rc[r] == -1) {
                    fprintf(stderr, "rank %d still running after %.0f s: "
                            "killed\n", r, seconds);
                    kill(pids[r], SIGKILL);
                    waitpid(pids[r], NULL, 0);
                    rc[r] = 124;
                    left--;
                }
        }
        if (!reaped)
            usleep(5000);
    }
    for (int r = 0; r < nranks; r++)
        bad |= rc[r] != 0;
    free(pids);
    return bad;
}
