/*
 * A group of threads that act as ranks of one process: a barrier and an
 * all-gather (the shape of epx_allgather_fn) that give up after a timeout
 * and then stay broken, so a rank that died or failed cannot hang the
 * others.  For thread ranks over EPX_BOOTSTRAP_ALLGATHER (the tests' thread
 * ranks, epx-bench's ranks on one GPU); not part of the public API.
 */
#ifndef EPX_UTIL_TGROUP_H
#define EPX_UTIL_TGROUP_H

#include <pthread.h>
#include <stddef.h>

typedef struct epx_tgroup {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int nranks, arrived, broken;
    unsigned generation;
    double timeout_s;           /* per barrier */
    char *buf;                  /* all-gather staging, grown by rank 0 */
    size_t cap;
} epx_tgroup_t;

void epx__tgroup_init(epx_tgroup_t *g, int nranks, double timeout_s);
void epx__tgroup_fini(epx_tgroup_t *g);
/* 0 when all nranks arrived; -1 once broken or timed out. */
int epx__tgroup_barrier(epx_tgroup_t *g);
/* Releases every waiter with -1, now and at every later barrier. */
void epx__tgroup_break(epx_tgroup_t *g);
/* recv[nranks * bytes] gets every rank's send; 0 or -1 (broken). */
int epx__tgroup_allgather(epx_tgroup_t *g, int rank, const void *send,
                          void *recv, size_t bytes);

#endif /* EPX_UTIL_TGROUP_H */
