/*
 * The communicator: ranks, a bootstrap (setup only), the transport used per
 * peer (select.c: shm inside a host and domain, ucx across) and a barrier
 * on the transports' signals.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "util/util.h"
#include "core/comm.h"

epx_status_t epx__random_hex(char *buf, size_t nhex)
{
    unsigned char raw[64];
    size_t n = (nhex + 1) / 2;
    if (n > sizeof(raw) || getrandom(raw, n, 0) != (ssize_t)n)
        return epx__syserror(EPX_ERR_SYSTEM, "getrandom");
    for (size_t i = 0; i < nhex; i++)
        buf[i] = "0123456789abcdef"[(raw[i / 2] >> (i % 2 ? 0 : 4)) & 15];
    buf[nhex] = '\0';
    return EPX_OK;
}

static void host_identity(epx_rank_info_t *ri)
{
    gethostname(ri->host, sizeof(ri->host) - 1);
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (f) {
        if (!fgets(ri->boot_id, sizeof(ri->boot_id), f))
            ri->boot_id[0] = '\0';
        fclose(f);
    }
    ri->pid = (int32_t)getpid();
    ssize_t n = readlink("/proc/self/ns/pid", ri->pidns, sizeof(ri->pidns) - 1);
    ri->pidns[n > 0 ? n : 0] = '\0';
}

/* Watch the peers that are other processes of this host and pid
 * namespace: a pidfd each (Linux 5.3).  Without one (older kernel, other
 * hosts) a dead peer is still found, by the timeout. */
static void watch_peers(epx_comm_t *c, const epx_rank_info_t *all)
{
    const epx_rank_info_t *me = &all[c->rank];
    c->dead_rank = -1;
    c->peer_pid = calloc((size_t)c->nranks, sizeof(int32_t));
    c->peer_left = calloc((size_t)c->nranks, sizeof(*c->peer_left));
    if (!c->peer_pid || !c->peer_left)
        return;
    for (int r = 0; r < c->nranks; r++)
        c->peer_pid[r] = all[r].pid;
#ifdef SYS_pidfd_open
    int any = 0;
    c->alive = malloc(sizeof(struct pollfd) * (size_t)c->nranks);
    if (!c->alive)
        return;
    for (int r = 0; r < c->nranks; r++) {
        const epx_rank_info_t *p = &all[r];
        int fd = -1;
        /* Mapped peers only: their "left cleanly" word is readable. */
        const int32_t *left = epx__win_peer_ptr(c->ctl, r);
        if (r != c->rank && left && p->pid != me->pid && me->pidns[0] &&
            !strcmp(p->host, me->host) && !strcmp(p->boot_id, me->boot_id) &&
            !strcmp(p->pidns, me->pidns)) {
            fd = (int)syscall(SYS_pidfd_open, (pid_t)p->pid, 0);
            /* Exited and reaped already (killed while the job formed): a
             * descriptor that always polls readable stands in for its
             * pidfd, so every check sees it gone, not only the timeout. */
            if (fd < 0 && errno == ESRCH)
                fd = eventfd(1, EFD_CLOEXEC);
        }
        c->peer_left[r] = left;
        c->alive[r] = (struct pollfd){ fd, POLLIN, 0 };
        any |= fd >= 0;
    }
    if (!any) {
        free(c->alive);
        c->alive = NULL;
    }
#endif
}

static void unwatch_peers(epx_comm_t *c)
{
    for (int r = 0; c->alive && r < c->nranks; r++)
        if (c->alive[r].fd >= 0)
            close(c->alive[r].fd);
    free(c->alive);
    free(c->peer_pid);
    free(c->peer_left);
    c->alive = NULL;
    c->peer_pid = NULL;
    c->peer_left = NULL;
}

static void comm_teardown(epx_comm_t *comm);

static epx_status_t comm_boot_check(void *arg) { return epx__comm_alive(arg); }

epx_status_t epx__comm_create_boot(epx_boot_t *boot, double timeout_s,
                                   const char *job, epx_comm_t **out)
{
    epx_status_t st;
    epx_comm_t *c = calloc(1, sizeof(*c));
    epx_rank_info_t mine = { 0 }, *all = calloc((size_t)boot->nranks, sizeof(*all));
    epx_topo_t *topo = NULL;
    if (!c || !all || !(c->peer_tl = calloc((size_t)boot->nranks, 1)) ||
        !(c->peer_gone = calloc((size_t)boot->nranks, 1)) ||
        !(c->net_progress = calloc((size_t)boot->nranks, sizeof(uint64_t)))) {
        st = epx__error(EPX_ERR_NOMEM, "comm: out of memory");
        goto err_alloc;
    }
    c->rank = boot->rank;
    c->nranks = boot->nranks;
    c->timeout_s = timeout_s;
    c->boot = boot;
    c->teardown = comm_teardown;
    c->dead_rank = -1;
    c->net_dead = -1;
    while ((1 << c->barrier_rounds) < c->nranks)
        c->barrier_rounds++;

    if (job)
        snprintf(mine.job, sizeof(mine.job), "%s", job);
    else if ((st = epx__random_hex(mine.job, 16)) != EPX_OK)
        goto err_alloc;
    host_identity(&mine);
    epx__select_local(c->rank, c->nranks, &mine, &topo);
    if ((st = epx__comm_allgather(c, &mine, all, sizeof(mine))) != EPX_OK)
        goto err_alloc;
    memcpy(c->job, all[0].job, sizeof(c->job)); /* rank 0's id wins */
    if ((st = epx__select(c, all)) != EPX_OK)
        goto err_alloc;
    /* The map is the comm's only when every rank loaded it (else
     * epx_comm_topology reports the failure, collectively). */
    for (int r = 0; r < c->nranks && topo; r++)
        if (all[r].topo_status != EPX_OK || all[r].domain < 0) {
            epx_topo_destroy(topo);
            topo = NULL;
        }
    c->topo = topo;
    topo = NULL;
    if ((st = epx__ucx_comm_init(c)) != EPX_OK)
        goto err_alloc;
    if ((st = epx__win_create(c, EPX_COMM_CTL_BYTES(c->nranks),
                              EPX_COMM_CTL_SIGNALS, &c->ctl)) != EPX_OK)
        goto err_ucx;
    watch_peers(c, all);
    free(all);
    /* A bootstrap all-gather (a barrier over tcp, an engine's set-up) ends
     * too when a peer is seen dead. */
    boot->check = comm_boot_check;
    boot->check_arg = c;
    char sum[256];
    epx__select_summary(c, sum, sizeof(sum));
    EPX_LOG(EPX_LOG_INFO, "core", c->rank,
            "communicator of %d ranks up (job %s); rank %d: %s", c->nranks,
            c->job, c->rank, sum);
    *out = c;
    return EPX_OK;

err_ucx:
    epx__ucx_comm_fini(c, 1);
err_alloc:
    epx_topo_destroy(topo);
    if (c) {
        epx_topo_destroy(c->topo);
        free(c->peer_tl);
        free(c->peer_gone);
        free(c->net_progress);
        unwatch_peers(c);
    }
    free(all);
    free(c);
    boot->destroy(boot);
    return st;
}

epx_status_t epx_settings_check(void)
{
    epx_status_t st = epx__cfg_check();
    unsigned allowed;
    if (st == EPX_OK)
        st = epx__select_parse(epx__cfg_str("EPX_TRANSPORTS"), &allowed);
    if (st != EPX_OK)
        return st;
    /* A description that does not load is an error, not a silent probe:
     * the user asked for its domains. */
    const char *file = epx__cfg_str("EPX_TOPO_FILE");
    if (*file) {
        epx_topo_t *t = NULL;
        st = epx_topo_load(file, &t);
        epx_topo_destroy(t);
        if (st != EPX_OK) {
            char why[256];   /* the message is overwritten below */
            snprintf(why, sizeof(why), "%s", epx_last_error());
            return epx__error(st, "EPX_TOPO_FILE='%s' does not load (%s); "
                              "unset it to probe the hosts", file, why);
        }
    }
    return EPX_OK;
}

epx_status_t epx__timeout(const epx_comm_params_t *p, double *out)
{
    epx_status_t st = epx_settings_check();
    if (st == EPX_OK && p)
        st = epx__check_version("comm params", p->version,
                                EPX_COMM_PARAMS_VERSION);
    if (st != EPX_OK)
        return st;
    /* Params may come from an older header: read the field only if there. */
    int has = p && p->struct_size >= offsetof(epx_comm_params_t, timeout_s) +
                                         sizeof(double);
    double t = has && p->timeout_s > 0 ? p->timeout_s
                                       : epx__cfg_double("EPX_TIMEOUT");
    if (!(t > 0) || !isfinite(t))
        return epx__error(EPX_ERR_INVALID,
                          "comm: the timeout must be a positive number of "
                          "seconds (EPX_TIMEOUT='%s')", epx__cfg_str("EPX_TIMEOUT"));
    *out = t > 1e9 ? 1e9 : t;   /* "forever" without overflowing deadlines */
    return EPX_OK;
}

epx_status_t epx_comm_create(const epx_comm_params_t *p, epx_comm_t **out)
{
    if (!p || !out || p->struct_size < offsetof(epx_comm_params_t, timeout_s) +
                                           sizeof(double))
        return epx__error(EPX_ERR_INVALID,
                          "comm: params or output NULL, or params not set up "
                          "with EPX_COMM_PARAMS_INIT");
    double timeout;
    epx_status_t st = epx__timeout(p, &timeout);
    if (st != EPX_OK)
        return st;
    epx_boot_t *boot = NULL;
    switch (p->bootstrap) {
    case EPX_BOOTSTRAP_ENV: {
        /* Both present and in range (epx__timeout checked the ranges). */
        const char *rs = getenv("EPX_RANK"), *ns = getenv("EPX_NRANKS");
        if (!rs || !*rs || !ns || !*ns)
            return epx__error(EPX_ERR_INVALID,
                              "comm: env bootstrap needs EPX_RANK and EPX_NRANKS "
                              "(got '%s', '%s')", rs ? rs : "", ns ? ns : "");
        long rank = epx__cfg_long("EPX_RANK"), n = epx__cfg_long("EPX_NRANKS");
        if (rank >= n)
            return epx__error(EPX_ERR_INVALID,
                              "comm: EPX_RANK=%ld is not below EPX_NRANKS=%ld",
                              rank, n);
        const char *root = p->root ? p->root : epx__cfg_str("EPX_ROOT");
        const char *key = p->job_key ? p->job_key : epx__cfg_str("EPX_JOB_KEY");
        if (n > 1 && !*root)
            return epx__error(EPX_ERR_INVALID,
                              "comm: env bootstrap needs EPX_ROOT=host:port");
        st = epx__boot_tcp_create((int)rank, (int)n, root, -1, key, timeout,
                                  &boot);
        break;
    }
    case EPX_BOOTSTRAP_ALLGATHER:
        st = epx__boot_allgather_create(p->rank, p->nranks, p->allgather,
                                        p->allgather_ctx, timeout, &boot);
        break;
    default:
        return epx__error(EPX_ERR_INVALID, "comm: unknown bootstrap %d",
                          (int)p->bootstrap);
    }
    if (st != EPX_OK)
        return st;
    return epx__comm_create_boot(boot, timeout, NULL, out);
}

/* Collective when UCX is in use: every rank's last operations, and
 * whatever UCX exchanges to complete them, finish while all ranks still
 * progress, so no request is left inside a worker that goes away.  Two
 * barriers: the first one's own signals complete during the second. */
static epx_status_t comm_quiesce(epx_comm_t *comm)
{
    epx_status_t st = EPX_OK;
    if (comm->ucx_any && comm->dead_rank < 0) {   /* a dead rank never comes */
        st = epx_comm_barrier(comm);
        if (st == EPX_OK)
            st = epx_comm_barrier(comm);
        if (st != EPX_OK)
            EPX_LOG(EPX_LOG_INFO, "comm", comm->rank, "barrier at destruction: "
                    "%s", epx_last_error());
    }
    return st;
}

static void comm_teardown(epx_comm_t *comm)
{
    comm->tearing = 1;
    if (comm->ctl && !__atomic_load_n((int32_t *)comm->ctl->local,
                                      __ATOMIC_ACQUIRE)) {
        /* deferred by epx_comm_destroy for a shrunk communicator */
        __atomic_store_n((int32_t *)comm->ctl->local, 1, __ATOMIC_RELEASE);
        epx__ucx_comm_leave(comm);
    }
    epx_status_t st = comm->settled ? EPX_ERR_STATE : comm_quiesce(comm);
    /* The watch reads the peers' "left cleanly" words in their barrier
     * windows, unmapped with this one: it ends here (a peer lost in the
     * rest of the teardown shows as its bootstrap connection closing). */
    unwatch_peers(comm);
    epx__win_destroy(comm->ctl);
    /* a dead peer: no flush or exchange it would have to answer */
    epx__ucx_comm_fini(comm, st == EPX_OK && comm->dead_rank < 0);
    epx_topo_destroy(comm->topo);
    free(comm->peer_tl);
    free(comm->peer_gone);
    free(comm->net_progress);
    comm->boot->destroy(comm->boot);
    free(comm->owned);
    free(comm);
}

void epx_comm_destroy(epx_comm_t *comm)
{
    if (!comm || comm->destroyed)
        return;
    comm->destroyed = 1;
    /* Peers that see this process end from now on know it left on
     * purpose (its teardown may wait for engines still open).  Not while
     * a communicator shrunk from it bootstraps through its mailbox: the
     * peers there would take it for gone.  The teardown says it then. */
    if (comm->successors == 0) {
        if (comm->ctl)
            __atomic_store_n((int32_t *)comm->ctl->local, 1, __ATOMIC_RELEASE);
        epx__ucx_comm_leave(comm);   /* and the UCX peers, by a message */
    }
    int engines = comm->nwin - 1 - comm->successors;
    if (engines > 0) {
        /* An engine still holds a window: freeing now would leave it on
         * freed memory.  Its calls fail from here on; the teardown runs
         * when the last engine is destroyed. */
        epx__error(EPX_ERR_STATE,
                   "comm: destroyed while %d engine window(s) still use it: "
                   "destroy the engines first (the communicator is freed "
                   "with the last of them)", engines);
        EPX_LOG(EPX_LOG_ERROR, "comm", comm->rank, "%s", epx_last_error());
    }
    if (comm->nwin > 1 && comm->successors == 0 && comm->ucx_any) {
        /* The peers may exit now: what this rank sent last must reach
         * them first, in the same exchanges as an immediate teardown (a
         * peer tearing down at once pairs with these).  The worker stays
         * to the process exit; the later teardown exchanges nothing. */
        if (comm_quiesce(comm) == EPX_OK && comm->dead_rank < 0)
            epx__ucx_comm_settle(comm);
        comm->settled = 1;
    }
    if (comm->nwin > 1) {
        if (comm->successors > 0)
            EPX_LOG(EPX_LOG_INFO, "comm", comm->rank, "destroyed; freed with "
                    "the %d communicator(s) shrunk from it", comm->successors);
        return;
    }
    comm_teardown(comm);
}

int epx_comm_rank(const epx_comm_t *comm) { return comm ? comm->rank : -1; }
int epx_comm_size(const epx_comm_t *comm) { return comm ? comm->nranks : -1; }

/* Dissemination barrier: in round i signal rank+2^i and wait for rank-2^i.
 * Only puts/signals, so it works on any transport.  It also completes
 * every rank's earlier puts: each rank first waits until its network puts
 * have landed (shm puts are stores, done when put returns), so after the
 * barrier no put issued before it is still in flight to anyone, and a
 * window may be destroyed without a late put writing into freed memory. */
epx_status_t epx_comm_barrier(epx_comm_t *comm)
{
    if (!comm)
        return epx__error(EPX_ERR_INVALID, "barrier: comm is NULL");
    epx_status_t qs = epx__ucx_comm_quiet(comm);
    if (qs != EPX_OK)
        return qs;
    uint64_t epoch = ++comm->barrier_epoch;
    for (int i = 0; i < comm->barrier_rounds; i++) {
        int peer = (comm->rank + (1 << i)) % comm->nranks;
        epx_status_t st = epx__win_signal(comm->ctl, peer, i, 1);
        if (st == EPX_OK)
            st = epx__win_wait(comm->ctl, i, epoch);
        if (st != EPX_OK)
            return st;
    }
    return EPX_OK;
}
