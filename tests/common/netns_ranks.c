/* Ranks in separate network namespaces (netns_ranks.h). */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

#include "common/epx_test.h"
#include "common/netns_ranks.h"
#include "common/proc_ranks.h"

int epxt_netns_wanted(void)
{
    const char *s = getenv("EPX_TEST_NETNS");
    return s && *s;
}

/* The namespace name of `rank`'s domain, into buf. */
static int netns_of(int rank, int nranks, char *buf, size_t len)
{
    char list[512];
    snprintf(list, sizeof(list), "%s", getenv("EPX_TEST_NETNS"));
    int n = 1;
    for (const char *p = list; *p; p++)
        n += *p == ',';
    int d = 0;
    const char *file = getenv("EPX_TOPO_FILE");
    epx_topo_t *t = NULL;
    if (file && *file) {
        if (epx_topo_load(file, &t) != EPX_OK ||
            epx_topo_place(t, nranks) != EPX_OK) {
            fprintf(stderr, "netns: rank %d: EPX_TOPO_FILE %s: %s\n", rank,
                    file, epx_last_error());
            epx_topo_destroy(t);
            return -1;
        }
        d = epx_topo_rank_domain(t, rank);
        epx_topo_destroy(t);
    }
    char *save = NULL, *name = strtok_r(list, ",", &save);
    for (int i = 0; i < (d < 0 ? 0 : d) % n && name; i++)
        name = strtok_r(NULL, ",", &save);
    if (!name)
        return -1;
    snprintf(buf, len, "%s", name);
    return 0;
}

/* What `ip netns exec` does: join the namespace, then a private mount
 * namespace with /sys mounted again, so /sys/class/net (where UCX lists
 * its tcp devices) shows this namespace's interfaces. */
static int netns_enter(int rank, const char *name)
{
    char path[256];
    snprintf(path, sizeof(path), "/var/run/netns/%s", name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    const char *what = "open";
    if (fd < 0)
        goto fail;
    what = "setns";
    if (setns(fd, CLONE_NEWNET) != 0)
        goto fail;
    close(fd);
    fd = -1;
    what = "unshare(CLONE_NEWNS)";
    if (unshare(CLONE_NEWNS) != 0)
        goto fail;
    what = "mount --make-rslave /";
    if (mount(NULL, "/", NULL, MS_SLAVE | MS_REC, NULL) != 0)
        goto fail;
    what = "umount /sys";
    if (umount2("/sys", MNT_DETACH) != 0 && errno != EINVAL)
        goto fail;
    what = "mount sysfs";
    if (mount(name, "/sys", "sysfs", 0, NULL) != 0)
        goto fail;
    return 0;
fail:
    fprintf(stderr, "netns: rank %d: %s %s: %s\n", rank, what, path,
            strerror(errno));
    if (fd >= 0)
        close(fd);
    return -1;
}

typedef struct netns_job {
    int nranks;
    double timeout_s;
    epx_rank_fn fn;
    void *arg;
} netns_job_t;

static int netns_rank(int rank, void *arg)
{
    const netns_job_t *j = arg;
    char name[128], root[128];
    if (netns_of(rank, j->nranks, name, sizeof(name)) != 0 ||
        netns_enter(rank, name) != 0)
        return 1;
    /* proc_ranks picked a free port on this machine's loopback; the root
     * listens on that port at namespace a's address. */
    const char *port = strrchr(getenv("EPX_ROOT"), ':');
    snprintf(root, sizeof(root), "%s%s", getenv("EPX_TEST_NETNS_ROOT"), port);
    setenv("EPX_ROOT", root, 1);
    epx_comm_params_t p = EPX_COMM_PARAMS_INIT;
    p.bootstrap = EPX_BOOTSTRAP_ENV;
    p.timeout_s = j->timeout_s;
    epx_comm_t *comm = NULL;
    epx_status_t st = epx_comm_create(&p, &comm);
    if (st != EPX_OK) {
        fprintf(stderr, "netns: rank %d in %s: epx_comm_create: %s\n", rank,
                name, epx_last_error());
        return 1;
    }
    int rc = j->fn(comm, j->arg);
    epx_comm_destroy(comm);
    return rc;
}

epx_status_t epxt_netns_launch(int nranks, double timeout_s, epx_rank_fn fn,
                               void *arg, int *failed_rank)
{
    if (!getenv("EPX_TEST_NETNS_ROOT")) {
        fprintf(stderr, "netns: EPX_TEST_NETNS needs EPX_TEST_NETNS_ROOT\n");
        return EPX_ERR_INVALID;
    }
    netns_job_t j = { nranks, timeout_s, fn, arg };
    int *rc = calloc((size_t)nranks, sizeof(int));
    if (!rc)
        return EPX_ERR_NOMEM;
    /* Longer than any wait (EPX_TIMEOUT) so a failure reports itself. */
    int bad = epxt_proc_ranks(nranks, netns_rank, &j, 900.0, rc);
    int first = -1;
    for (int r = 0; r < nranks && first < 0; r++)
        if (rc[r] != 0)
            first = r;
    if (bad && first >= 0)
        fprintf(stderr, "launch of %d ranks in namespaces %s: rank %d exited "
                "%d\n", nranks, getenv("EPX_TEST_NETNS"), first, rc[first]);
    free(rc);
    if (failed_rank)
        *failed_rank = first;
    return bad ? EPX_ERR_PEER : EPX_OK;
}
