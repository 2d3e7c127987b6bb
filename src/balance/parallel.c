/* Layers planned at once (epx_balance_params_t.num_threads): each thread
 * takes the next layer from a shared counter, with its own scratch; the
 * result does not depend on which thread planned which layer.  A failure
 * is reported as the lowest failing layer's, whichever thread saw it. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "util/util.h"
#include "balance/balance.h"

typedef struct par_run {
    const bal_par_t *p;
    int next;                /* the next layer to take (atomic) */
    int done;                /* layers planned (atomic) */
    pthread_mutex_t mu;
    int bad_layer;           /* lowest failing layer, or L */
    epx_status_t st;
    char msg[400];
} par_run_t;

static void par_fail(par_run_t *r, int layer, epx_status_t st)
{
    pthread_mutex_lock(&r->mu);
    if (layer < r->bad_layer) {
        r->bad_layer = layer;
        r->st = st;
        snprintf(r->msg, sizeof(r->msg), "%s", epx_last_error());
    }
    pthread_mutex_unlock(&r->mu);
}

static void *par_main(void *arg)
{
    par_run_t *r = arg;
    const bal_par_t *p = r->p;
    void *tls = NULL;
    epx_status_t st = p->tls_init(p->ctx, &tls);
    if (st != EPX_OK) {   /* no scratch: the others take its layers */
        par_fail(r, p->L, st);
        return NULL;
    }
    for (;;) {
        int l = __atomic_fetch_add(&r->next, 1, __ATOMIC_RELAXED);
        if (l >= p->L)
            break;
        if ((st = p->layer(p->ctx, tls, l)) != EPX_OK)
            par_fail(r, l, st);
        else
            __atomic_fetch_add(&r->done, 1, __ATOMIC_RELAXED);
    }
    p->tls_fini(tls);
    return NULL;
}

epx_status_t epx__bal_par_run(const bal_par_t *p)
{
    par_run_t r = { p, 0, 0, PTHREAD_MUTEX_INITIALIZER, p->L, EPX_OK, "" };
    int n = p->nthreads < 1 ? 1 : p->nthreads > p->L ? p->L : p->nthreads;
    pthread_t *th = n > 1 ? malloc(sizeof(pthread_t) * (size_t)(n - 1)) : NULL;
    int started = 0;
    for (int i = 0; th && i < n - 1; i++, started++)
        if (pthread_create(&th[i], NULL, par_main, &r) != 0)
            break;   /* fewer threads: the same plan, later */
    par_main(&r);
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    free(th);
    pthread_mutex_destroy(&r.mu);
    /* A thread without scratch took no layer: an error only when the
     * layers were not all planned (none of the threads had any). */
    if (r.bad_layer == p->L && r.done == p->L)
        return EPX_OK;
    return epx__error(r.st, "%s", r.msg);
}
