/* Planning with lost experts: a layer restricted to the experts that
 * still have weights somewhere.  The policies and the local search work
 * on the compact layer (experts renumbered 0..n-1 in expert order) and
 * the plan is mapped back, so a lost expert can never get a slot and the
 * policies' behaviour on the compact layer is theirs, unchanged. */
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "balance/balance.h"

epx_status_t epx__bal_avail_alloc(bal_avail_t *a, int E)
{
    memset(a, 0, sizeof(*a));
    a->c2e = malloc((size_t)E * sizeof(int32_t));
    a->e2c = malloc((size_t)E * sizeof(int32_t));
    a->w = malloc((size_t)E * sizeof(double));
    if (!a->c2e || !a->e2c || !a->w) {
        epx__bal_avail_free(a);
        return epx__error(EPX_ERR_NOMEM, "balance: out of memory");
    }
    return EPX_OK;
}

void epx__bal_avail_free(bal_avail_t *a)
{
    free(a->c2e);
    free(a->e2c);
    free(a->w);
    memset(a, 0, sizeof(*a));
}

void epx__bal_avail_layer(bal_avail_t *a, const uint8_t *lost,
                          const double *load, int E, int G)
{
    int n = 0, gsize = E / G, per = -1;
    for (int e = 0; e < E; e++) {
        a->e2c[e] = -1;
        if (lost[e])
            continue;
        a->e2c[e] = n;
        a->c2e[n] = e;
        if (load)
            a->w[n] = load[e];
        n++;
    }
    a->n = n;
    /* Groups survive compaction only when they stay equally large: the
     * compact group g is then still experts g*k .. g*k+k-1. */
    a->groups = G;
    for (int g = 0; g < G; g++) {
        int k = 0;
        for (int j = 0; j < gsize; j++)
            k += !lost[g * gsize + j];
        if (per >= 0 && k != per) {
            a->groups = 1;
            break;
        }
        per = k;
    }
    if (per == 0)              /* every group empty: n == 0, refused later */
        a->groups = 1;
}

epx_status_t epx__bal_avail_check(const bal_avail_t *a, int l, int E, int S)
{
    if (a->n == 0)
        return epx__error(EPX_ERR_INVALID,
                          "balance: layer %d: lost marks all %d experts lost; "
                          "nothing is left to place", l, E);
    if (a->n > S)
        return epx__error(EPX_ERR_INVALID,
                          "balance: layer %d: num_slots %d < %d available "
                          "experts (%d of %d lost): every available expert "
                          "needs a slot", l, S, a->n, E - a->n, E);
    return EPX_OK;
}
