/* The greedy steps both policies share: stable ordering, replication,
 * balanced packing, groups onto domains. */
#include <limits.h>
#include <string.h>

#include "balance/balance.h"

/* Merge sort of indices by weight, descending; a stable sort, so equal
 * weights keep ascending index order whatever the input size. */
void epx__bal_sort_desc(const double *w, int n, int32_t *ord, int32_t *tmp)
{
    for (int i = 0; i < n; i++)
        ord[i] = i;
    for (int width = 1; width < n; width *= 2) {
        for (int lo = 0; lo < n; lo += 2 * width) {
            int mid = lo + width < n ? lo + width : n;
            int hi = lo + 2 * width < n ? lo + 2 * width : n;
            int a = lo, b = mid, k = lo;
            while (a < mid && b < hi)   /* take the left one unless strictly lighter */
                tmp[k++] = w[ord[b]] > w[ord[a]] ? ord[b++] : ord[a++];
            while (a < mid)
                tmp[k++] = ord[a++];
            while (b < hi)
                tmp[k++] = ord[b++];
        }
        memcpy(ord, tmp, (size_t)n * sizeof(*ord));
    }
}

void epx__bal_replicate(const double *w, int n, int m, int cap,
                        int32_t *item2exp, int32_t *rank, int32_t *cnt)
{
    for (int i = 0; i < n; i++) {
        item2exp[i] = i;
        rank[i] = 0;
        cnt[i] = 1;
    }
    for (int i = n; i < m; i++) {
        int best = -1;
        double bestv = 0;
        for (int e = 0; e < n; e++) {
            if (cnt[e] >= cap)
                continue;
            double v = w[e] / cnt[e];
            if (best < 0 || v > bestv) {   /* strict: lowest index wins ties */
                best = e;
                bestv = v;
            }
        }
        if (best < 0)          /* every expert at the cap: lift it */
            for (int e = 0; e < n; e++)
                if (best < 0 || w[e] / cnt[e] > bestv) {
                    best = e;
                    bestv = w[e] / cnt[e];
                }
        item2exp[i] = best;
        rank[i] = cnt[best]++;
    }
}

void epx__bal_pack(const double *w, int n, int packs, bal_work_t *wk,
                   int32_t *pack, int32_t *rip)
{
    int per = n / packs;
    if (per == 1) {            /* one item per pack: nothing to balance */
        for (int i = 0; i < n; i++) {
            pack[i] = i;
            rip[i] = 0;
        }
        return;
    }
    epx__bal_sort_desc(w, n, wk->ord, wk->tmp);
    for (int p = 0; p < packs; p++) {
        wk->packw[p] = 0;
        wk->packn[p] = 0;
    }
    for (int k = 0; k < n; k++) {
        int it = wk->ord[k], best = -1;
        for (int p = 0; p < packs; p++)
            if (wk->packn[p] < per &&
                (best < 0 || wk->packw[p] < wk->packw[best]))
                best = p;
        pack[it] = best;
        rip[it] = wk->packn[best]++;
        wk->packw[best] += w[it];
    }
}

void epx__bal_groups(const bal_shape_t *sh, const double *load, bal_work_t *wk)
{
    /* Group loads live in wk->w; the packing's outputs in p2m / prank
     * (free until replication runs). */
    for (int g = 0; g < sh->G; g++) {
        double s = 0;
        for (int j = 0; j < sh->gsize; j++)
            s += load[g * sh->gsize + j];
        wk->w[g] = s;
    }
    epx__bal_pack(wk->w, sh->G, sh->D, wk, wk->p2m, wk->prank);
    int gpd = sh->G / sh->D;
    for (int g = 0; g < sh->G; g++) {
        int first = (wk->p2m[g] * gpd + wk->prank[g]) * sh->gsize;
        for (int j = 0; j < sh->gsize; j++)
            wk->mlog2log[first + j] = g * sh->gsize + j;
    }
}
