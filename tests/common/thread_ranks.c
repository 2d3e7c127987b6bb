/* Ranks as threads over an in-process all-gather. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epx_test.h"
#include "thread_ranks.h"
#include "util/tgroup.h"

typedef struct member {
    epx_tgroup_t *g;
    int rank, rc;
    epx_rank_fn fn;
    void *arg;
    char failure[1100];
} member_t;

static int group_allgather(void *ctx, const void *send, void *recv,
                           size_t bytes)
{
    member_t *m = ctx;
    return epx__tgroup_allgather(m->g, m->rank, send, recv, bytes);
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
    /* The device's waits follow the communicator's timeout: a smaller
     * EPX_TIMEOUT set by the user holds for them too. */
    p.timeout_s = epxt_timeout(m->g->timeout_s);
    epx_comm_t *comm = NULL;
    epx_status_t st = epx_comm_create(&p, &comm);
    if (st != EPX_OK) {
        m->rc = epxt_fail(__FILE__, __LINE__, "epx_comm_create: %s (%s)",
                          epx_status_str(st), epx_last_error());
    } else {
        m->rc = m->fn(comm, m->arg);
        if (m->rc)   /* the others' all-gathers through the group fail now
                      * (waits on the transports still run to the timeout) */
            epx__tgroup_break(m->g);
        epx_comm_destroy(comm);
    }
    snprintf(m->failure, sizeof(m->failure), "%s", epxt_first_failure());
    return NULL;
}

int epxt_thread_ranks(int nranks, double timeout_s, epx_rank_fn fn, void *arg)
{
    epx_tgroup_t g;
    epx__tgroup_init(&g, nranks, timeout_s);
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
            epx__tgroup_break(&g);   /* release the ones waiting for it */
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
    epx__tgroup_fini(&g);
    return bad;
}
