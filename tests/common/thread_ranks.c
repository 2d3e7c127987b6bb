/* Ranks as threads over an in-process all-gather. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "epx_test.h"
#include "thread_ranks.h"

typedef struct group {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int nranks, arrived, broken;
    unsigned generation;
    double timeout_s;
    char *buf;
    size_t cap;
} group_t;

typedef struct member {
    group_t *g;
    int rank, rc;
    epx_rank_fn fn;
    void *arg;
    char failure[1100];
} member_t;

/* A barrier that gives up after the timeout (and then stays broken, so a
 * dead rank cannot hang the others). */
static int group_barrier(group_t *g)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)g->timeout_s + 1;
    pthread_mutex_lock(&g->mu);
    unsigned gen = g->generation;
    if (++g->arrived == g->nranks) {
        g->arrived = 0;
        g->generation++;
        pthread_cond_broadcast(&g->cv);
    }
    while (!g->broken && g->generation == gen)
        if (pthread_cond_timedwait(&g->cv, &g->mu, &until) == ETIMEDOUT) {
            g->broken = 1;
            pthread_cond_broadcast(&g->cv);
        }
    int rc = g->broken ? -1 : 0;
    pthread_mutex_unlock(&g->mu);
    return rc;
}

static int group_allgather(void *ctx, const void *send, void *recv,
                           size_t bytes)
{
    member_t *m = ctx;
    group_t *g = m->g;
    size_t need = bytes * (size_t)g->nranks;
    if (group_barrier(g))        /* everyone done with the last round */
        return -1;
    if (m->rank == 0 && g->cap < need) {
        char *nb = realloc(g->buf, need);
        if (nb) {
            g->buf = nb;
            g->cap = need;
        }
    }
    if (group_barrier(g))
        return -1;
    if (g->cap < need)
        return -1;
    memcpy(g->buf + (size_t)m->rank * bytes, send, bytes);
    if (group_barrier(g))
        return -1;
    memcpy(recv, g->buf, need);
    return 0;
}

static void *member_main(void *arg)
{
    member_t *m = arg;
    epxt_rank_label(m->rank);
    epx_comm_params_t p = EPX_COMM_PARAMS_INIT;
    p.bootstrap = EPX_BOOTSTRAP_ALLGATHER;
    p.rank = m->rank;
    p.nranks = m->g->nranks;
    p.allgather = group_allgather;
    p.allgather_ctx = m;
    p.timeout_s = m->g->timeout_s;
    epx_comm_t *comm = NULL;
    epx_status_t st = epx_comm_create(&p, &comm);
    if (st != EPX_OK) {
        m->rc = epxt_fail(__FILE__, __LINE__, "epx_comm_create: %s (%s)",
                          epx_status_str(st), epx_last_error());
    } else {
        m->rc = m->fn(comm, m->arg);
        epx_comm_destroy(comm);
    }
    snprintf(m->failure, sizeof(m->failure), "%s", epxt_first_failure());
    return NULL;
}

int epxt_thread_ranks(int nranks, double timeout_s, epx_rank_fn fn, void *arg)
{
    group_t g;
    memset(&g, 0, sizeof(g));
    pthread_mutex_init(&g.mu, NULL);
    pthread_cond_init(&g.cv, NULL);
    g.nranks = nranks;
    g.timeout_s = timeout_s > 0 ? timeout_s : 60;
    member_t *m = calloc((size_t)nranks, sizeof(*m));
    pthread_t *th = calloc((size_t)nranks, sizeof(*th));
    int started = 0, bad = 0;
    if (!m || !th) {
        bad = 1;
        goto out;
    }
    for (; started < nranks; started++) {
        m[started] = (member_t){ &g, started, 0, fn, arg, "" };
        if (pthread_create(&th[started], NULL, member_main, &m[started])) {
            fprintf(stderr, "thread ranks: cannot start rank %d\n", started);
            bad = 1;
            pthread_mutex_lock(&g.mu);
            g.broken = 1;   /* release the ones waiting for it */
            pthread_cond_broadcast(&g.cv);
            pthread_mutex_unlock(&g.mu);
            break;
        }
    }
    for (int r = 0; r < started; r++) {
        pthread_join(th[r], NULL);
        if (m[r].rc) {
            bad = 1;
            fprintf(stderr, "thread rank %d failed: %s\n", r,
                    m[r].failure[0] ? m[r].failure : "(no message)");
        }
    }
out:
    free(m);
    free(th);
    free(g.buf);
    pthread_cond_destroy(&g.cv);
    pthread_mutex_destroy(&g.mu);
    return bad;
}
