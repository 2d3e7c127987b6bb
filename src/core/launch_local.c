/*
 * Built-in local launcher: fork N ranks on this host.  The parent binds the
 * bootstrap socket before forking (rank 0 inherits it: no port race), draws
 * the job key and job id, waits for the children, stops them all as soon as
 * one fails, and removes whatever shared memory of the job a crash left.
 */
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util/util.h"
#include "core/comm.h"

static void remove_job_shm(const char *job)
{
    char prefix[64];
    snprintf(prefix, sizeof(prefix), "epx-%s-", job);
    DIR *d = opendir("/dev/shm");
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0) {
            char name[300];
            snprintf(name, sizeof(name), "/%s", e->d_name);
            shm_unlink(name);
        }
    closedir(d);
}

static void kill_all(const pid_t *pids, int n, int sig)
{
    for (int i = 0; i < n; i++)
        if (pids[i] > 0)
            kill(pids[i], sig);
}

static int run_rank(int rank, int nranks, int lfd, const char *root,
                    const char *key, const char *job, double timeout,
                    epx_rank_fn fn, void *arg)
{
    epx_boot_t *boot;
    epx_comm_t *comm;
    if (rank != 0)   /* only rank 0 accepts; strays must not queue at us */
        close(lfd);
    epx_status_t st = epx__boot_tcp_create(rank, nranks, root, rank == 0 ? lfd : -1,
                                           key, timeout, &boot);
    if (st == EPX_OK)
        st = epx__comm_create_boot(boot, timeout, job, &comm);
    if (st != EPX_OK) {
        fprintf(stderr, "epx: rank %d: %s: %s\n", rank, epx_status_str(st),
                epx_last_error());
        return 100;
    }
    int rc = fn(comm, arg);
    epx_comm_destroy(comm);
    return rc;
}

epx_status_t epx_launch_local(int nranks, const epx_comm_params_t *params,
                              epx_rank_fn fn, void *arg, int *failed_rank)
{
    if (nranks < 1 || nranks > EPX_MAX_RANKS || !fn)
        return epx__error(EPX_ERR_INVALID,
                          "launch: need 1 <= nranks <= %d (got %d) and a "
                          "function", EPX_MAX_RANKS, nranks);
    double timeout;
    epx_status_t st = epx__timeout(params, &timeout);
    if (st != EPX_OK)
        return st;
    char key[33], job[17], root[64];
    st = epx__random_hex(key, 32);
    if (st == EPX_OK)
        st = epx__random_hex(job, 16);
    if (st != EPX_OK)
        return st;

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET,
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t slen = sizeof(sa);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) ||
        listen(lfd, SOMAXCONN) || getsockname(lfd, (struct sockaddr *)&sa, &slen)) {
        st = epx__syserror(EPX_ERR_SYSTEM, "launch: bootstrap socket");
        if (lfd >= 0)
            close(lfd);
        return st;
    }
    snprintf(root, sizeof(root), "127.0.0.1:%d", ntohs(sa.sin_port));

    pid_t *pids = calloc((size_t)nranks, sizeof(pid_t));
    if (!pids) {
        close(lfd);
        return epx__error(EPX_ERR_NOMEM, "launch: out of memory");
    }
    /* With SIGCHLD ignored the kernel reaps the ranks and their status is
     * lost: restore the default for the launch. */
    struct sigaction dfl = { .sa_handler = SIG_DFL }, old;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGCHLD, &dfl, &old);
    fflush(NULL);  /* children must not flush the parent's buffers again */
    const pid_t launcher = getpid();
    for (int r = 0; r < nranks; r++) {
        pid_t pid = fork();
        if (pid == 0) {
            /* The ranks die with their launcher: no orphans left running
             * (or spinning in a wait) after it is killed. */
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != launcher)   /* it died before the prctl */
                _exit(1);
            free(pids);   /* the parent's: a rank exits without returning */
            int rc = run_rank(r, nranks, lfd, root, key, job, timeout, fn, arg);
            fflush(NULL);
            _exit(rc == 0 ? 0 : (rc & 0xff) ? rc & 0xff : 1);
        }
        if (pid < 0) {
            st = epx__syserror(EPX_ERR_SYSTEM, "launch: fork of rank %d", r);
            kill_all(pids, r, SIGKILL);
            nranks = r;   /* reap the ones started */
            break;
        }
        pids[r] = pid;
    }
    close(lfd);

    /* Reap only our ranks (the caller may have children of its own) and
     * notice the first failure at once, whichever rank it is. */
    int first_bad = -1, alive = nranks;
    char why[160] = "";
    const struct timespec nap = { 0, 2 * 1000 * 1000 };
    while (alive > 0) {
        int reaped = 0;
        for (int r = 0; r < nranks; r++) {
            int status;
            if (pids[r] <= 0)
                continue;
            pid_t pid = waitpid(pids[r], &status, WNOHANG);
            if (pid == 0)
                continue;
            if (pid < 0 && errno == EINTR)
                continue;
            pids[r] = 0;
            alive--;
            reaped = 1;
            int ok = pid > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
            if (ok || first_bad >= 0)
                continue;
            first_bad = r;
            if (pid < 0)
                snprintf(why, sizeof(why), "rank %d: cannot collect its exit "
                         "status (SIGCHLD ignored?): %s", r, strerror(errno));
            else if (WIFEXITED(status))
                snprintf(why, sizeof(why), "rank %d exited with status %d", r,
                         WEXITSTATUS(status));
            else
                snprintf(why, sizeof(why), "rank %d killed by signal %d", r,
                         WTERMSIG(status));
            /* The others would only wait for it until their timeout. */
            kill_all(pids, nranks, SIGKILL);
        }
        if (!reaped)
            nanosleep(&nap, NULL);
    }
    sigaction(SIGCHLD, &old, NULL);
    free(pids);
    remove_job_shm(job);
    if (st != EPX_OK)
        return st;
    if (first_bad >= 0) {
        if (failed_rank)
            *failed_rank = first_bad;
        return epx__error(EPX_ERR_PEER, "launch: %s", why);
    }
    return EPX_OK;
}
