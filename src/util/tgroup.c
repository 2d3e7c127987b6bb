/* Thread groups: barrier and all-gather among the threads of one process
 * (tgroup.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/tgroup.h"

void epx__tgroup_init(epx_tgroup_t *g, int nranks, double timeout_s)
{
    memset(g, 0, sizeof(*g));
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->nranks = nranks;
    g->timeout_s = timeout_s > 0 ? timeout_s : 60;
}

void epx__tgroup_fini(epx_tgroup_t *g)
{
    free(g->buf);
    g->buf = NULL;
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
}

void epx__tgroup_break(epx_tgroup_t *g)
{
    pthread_mutex_lock(&g->mu);
    g->broken = 1;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

int epx__tgroup_barrier(epx_tgroup_t *g)
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

int epx__tgroup_allgather(epx_tgroup_t *g, int rank, const void *send,
                          void *recv, size_t bytes)
{
    size_t need = bytes * (size_t)g->nranks;
    if (epx__tgroup_barrier(g))   /* everyone done with the last round */
        return -1;
    if (rank == 0 && g->cap < need) {
        char *nb = realloc(g->buf, need);
        if (nb) {
            g->buf = nb;
            g->cap = need;
        }
    }
    if (epx__tgroup_barrier(g) || g->cap < need)
        return -1;
    memcpy(g->buf + (size_t)rank * bytes, send, bytes);
    if (epx__tgroup_barrier(g))
        return -1;
    memcpy(recv, g->buf, need);
    return 0;
}
