/* Exact placement of a small layer by branch and bound, and the lower
 * bound every placement obeys.  Experts are placed heaviest first: each
 * chooses a replica count, then the ranks of its replicas in rank order
 * (a rank may take two, after every rank without one was tried, so
 * distinct ranks win ties).  Pruned by the best maximum so far, by the
 * room left under it on ranks with free slots, by interchangeable
 * ranks (same load, same free slots, none of this expert yet) and by
 * interchangeable experts: of equal loads, placed one after the other,
 * each takes at most as many replicas as the one before (relabelling
 * them turns any placement into one that does; many-way ties otherwise
 * exhaust the node limit on layers of a few small integer loads). */
#include <stdlib.h>
#include <string.h>

#include "balance/balance.h"

typedef struct bb {
    const double *w;
    int32_t *ord;            /* experts, heaviest first */
    int E, R, spr;
    double *rl;              /* [R] loads */
    int32_t *nfree;          /* [R] free slots */
    int32_t *cur;            /* [R*spr] experts placed so far */
    int32_t *best_slot;
    int32_t *cnt;            /* [E] replica count chosen at each depth */
    double *rest;            /* [E+1] load of the experts not yet placed */
    double best, lower;
    long nodes, limit;
    int found, stop;
} bb_t;

static void expert_rec(bb_t *b, int i, int free_total);

static int same_state(const bb_t *b, int r, int q)
{
    return b->rl[r] == b->rl[q] && b->nfree[r] == b->nfree[q];
}

/* Replica j of c (load x) of expert e = ord[i]; replicas so far went to
 * ranks <= last (last: -1 none). */
static void place_rec(bb_t *b, int i, int c, int j, int last, double x,
                      int free_total)
{
    if (b->stop)
        return;
    if (j == c) {
        expert_rec(b, i + 1, free_total);
        return;
    }
    if (++b->nodes > b->limit) {
        b->stop = 1;
        return;
    }
    int e = b->ord[i];
    double lim = b->best * (1 - 1e-12);
    /* Fresh ranks first, then the last rank again (a second replica). */
    for (int pass = 0; pass < 2; pass++) {
        int lo = pass ? last : last + 1, hi = pass ? last + 1 : b->R;
        if (pass && last < 0)
            break;
        for (int r = lo; r < hi; r++) {
            if (!b->nfree[r] || b->rl[r] + x >= lim)
                continue;
            int twin = 0;
            for (int q = last + 1; q < r && !pass && !twin; q++)
                twin = same_state(b, q, r);
            if (twin)
                continue;
            int k = b->spr - b->nfree[r];
            b->cur[r * b->spr + k] = e;
            b->nfree[r]--;
            b->rl[r] += x;
            place_rec(b, i, c, j + 1, r, x, free_total - 1);
            b->rl[r] -= x;
            b->nfree[r]++;
            if (b->stop)
                return;
        }
    }
}

static void expert_rec(bb_t *b, int i, int free_total)
{
    if (b->stop)
        return;
    if (i == b->E) {
        double mx = 0;
        for (int r = 0; r < b->R; r++)
            mx = b->rl[r] > mx ? b->rl[r] : mx;
        if (mx < b->best * (1 - 1e-12)) {
            b->best = mx;
            memcpy(b->best_slot, b->cur, (size_t)b->R * b->spr * sizeof(int32_t));
            b->found = 1;
            if (mx <= b->lower * (1 + 1e-12))
                b->stop = 1;
        }
        return;
    }
    /* The load left must fit under the best maximum on ranks with room. */
    double room = 0, lim = b->best * (1 - 1e-12), minl = 1e300;
    for (int r = 0; r < b->R; r++)
        if (b->nfree[r]) {
            room += lim - b->rl[r];
            minl = b->rl[r] < minl ? b->rl[r] : minl;
        }
    if (room < b->rest[i])
        return;
    int e = b->ord[i], left = b->E - i - 1;
    int maxc = free_total - left;
    int minc = i == b->E - 1 ? maxc : 1;   /* the last expert fills the rest */
    if (i && b->w[e] == b->w[b->ord[i - 1]] && b->cnt[i - 1] < maxc)
        maxc = b->cnt[i - 1];
    for (int c = minc; c <= maxc && !b->stop; c++) {
        b->cnt[i] = c;
        double x = b->w[e] / c;
        if (x + minl >= lim)
            continue;          /* too few replicas: some rank overflows */
        place_rec(b, i, c, 0, -1, x, free_total);
    }
}

int epx__bal_exact(const double *w, int E, int R, int spr, double incumbent,
                   double lower, long node_limit, int32_t *slot, int *complete)
{
    bb_t b = { 0 };
    int S = R * spr;
    b.w = w;
    b.E = E;
    b.R = R;
    b.spr = spr;
    b.ord = malloc((size_t)E * sizeof(int32_t));
    int32_t *tmp = malloc((size_t)E * sizeof(int32_t));
    b.rl = calloc((size_t)R, sizeof(double));
    b.nfree = malloc((size_t)R * sizeof(int32_t));
    b.cur = malloc((size_t)S * sizeof(int32_t));
    b.best_slot = malloc((size_t)S * sizeof(int32_t));
    b.rest = malloc((size_t)(E + 1) * sizeof(double));
    b.cnt = malloc((size_t)E * sizeof(int32_t));
    *complete = 0;
    if (!b.ord || !tmp || !b.rl || !b.nfree || !b.cur || !b.best_slot ||
        !b.rest || !b.cnt || S < E) {
        b.found = 0;
        goto out;
    }
    epx__bal_sort_desc(w, E, b.ord, tmp);
    b.rest[E] = 0;
    for (int i = E - 1; i >= 0; i--)
        b.rest[i] = b.rest[i + 1] + w[b.ord[i]];
    for (int r = 0; r < R; r++)
        b.nfree[r] = spr;
    b.best = incumbent;
    b.lower = lower;
    b.limit = node_limit;
    if (incumbent > lower * (1 + 1e-12))
        expert_rec(&b, 0, S);
    *complete = b.nodes <= b.limit;
    if (b.found)
        memcpy(slot, b.best_slot, (size_t)S * sizeof(int32_t));
out:
    free(b.ord); free(tmp); free(b.rl); free(b.nfree); free(b.cur);
    free(b.best_slot); free(b.rest); free(b.cnt);
    return b.found;
}

double epx__bal_lower_bound(const double *w, int E, int S, int R)
{
    double sum = 0, top = 0;
    for (int e = 0; e < E; e++)
        sum += w[e];
    /* Fewest replicas needed so that no replica exceeds T: the greedy
     * replication minimises the largest replica; bisect on it instead of
     * replaying it, since counts = ceil(w / T) is monotone in T. */
    double lo = 0, hi = 0;
    for (int e = 0; e < E; e++)
        hi = w[e] > hi ? w[e] : hi;
    for (int it = 0; it < 100 && hi > 0; it++) {
        double mid = 0.5 * (lo + hi);
        long need = 0;
        for (int e = 0; e < E && need <= S; e++) {
            double c = w[e] / mid;
            if (c > S) {
                need = (long)S + 1;
                break;
            }
            long k = (long)c;
            need += k < 1 ? 1 : (k < c ? k + 1 : k);
        }
        if (need <= S)
            hi = mid;
        else
            lo = mid;
    }
    top = lo;   /* every T below lo needs more than S slots */
    double mean = sum / R;
    return mean > top ? mean : top;
}
