/* Two slots per rank: for fixed replica counts the best packing is known
 * (replicas sorted, the i-th largest beside the i-th smallest minimises
 * the largest pair), so the plan reduces to choosing the counts: built
 * for targets from Hall's condition (pair_hall), then a local search
 * moves one replica from an expert to another while that lowers
 * (largest pair, pairs at it); every count vector when they are few.
 * Candidate of the epx policy when spr = 2; README.md, "epx policy". */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "balance/balance.h"

/* Layers with at most this many experts per domain also try every move
 * when the moves of the largest pair's experts are exhausted. */
#define PAIR_FULL_MAX 64

static double item(const double *w, const int32_t *cnt, int e)
{
    return w[e] / cnt[e];
}

/* Is expert x before y in the order: larger replica first, then lower
 * index (so the order, and the plan, is deterministic). */
static int before(const double *w, const int32_t *cnt, int x, int y)
{
    double a = item(w, cnt, x), b = item(w, cnt, y);
    return a > b || (a == b && x < y);
}

/* Insertion sort of ord[E] (nearly sorted after one move: about O(E)). */
static void sort_experts(const double *w, const int32_t *cnt, int E,
                         int32_t *ord)
{
    for (int i = 1; i < E; i++) {
        int32_t x = ord[i];
        int j = i;
        while (j > 0 && before(w, cnt, x, ord[j - 1])) {
            ord[j] = ord[j - 1];
            j--;
        }
        ord[j] = x;
    }
}

/* Largest pair of the sorted pairing and the pairs within tol of it;
 * walks the experts' blocks of equal replicas from both ends: O(E).
 * Fills top/bot (the experts of one largest pair) when non-NULL. */
static double pair_max(const double *w, const int32_t *cnt, const int32_t *ord,
                       int E, int R, int *nmax, int *top, int *bot)
{
    int ti = 0, bi = E - 1, tl = cnt[ord[0]], bl = cnt[ord[E - 1]], left = R;
    double mx = -1;
    int n = 0;
    while (left > 0) {
        int k = ti == bi ? tl / 2 : (tl < bl ? tl : bl);
        if (k > left)
            k = left;
        double s = item(w, cnt, ord[ti]) + item(w, cnt, ord[bi]);
        if (s > mx * (1 + 1e-12)) {
            n = 0;
            mx = s;
            if (top) {
                *top = ord[ti];
                *bot = ord[bi];
            }
        }
        if (s >= mx * (1 - 1e-12))
            n += k;
        left -= k;
        if (ti == bi)
            break;
        tl -= k;
        bl -= k;
        if (tl == 0 && ++ti <= bi)
            tl = ti == bi ? bl : cnt[ord[ti]];
        if (bl == 0 && --bi >= ti)
            bl = ti == bi ? tl : cnt[ord[bi]];
    }
    *nmax = n;
    return mx;
}

/* Evaluate moving one replica from a to b; restores cnt and ord. */
static double try_move(const double *w, int32_t *cnt, int32_t *ord,
                       int32_t *tmp, int E, int R, int a, int b, int *nmax)
{
    cnt[a]--;
    cnt[b]++;
    memcpy(tmp, ord, (size_t)E * sizeof(int32_t));
    sort_experts(w, cnt, E, tmp);
    double m = pair_max(w, cnt, tmp, E, R, nmax, NULL, NULL);
    cnt[a]++;
    cnt[b]--;
    return m;
}

static int better(double m, int n, double bm, int bn)
{
    return m < bm * (1 - 1e-12) || (m <= bm * (1 + 1e-12) && n < bn);
}

/* Every count vector when there are few (the spare replicas spread over
 * the experts in at most PAIR_ENUM_MAX ways): exact.  best/bn: the
 * incumbent (largest pair, pairs at it), bcnt its counts. */
#define PAIR_ENUM_MAX 20000L

typedef struct pair_enum {
    const double *w;
    int E, R, bn;
    int32_t *cnt, *ord, *bcnt;
    double best;
} pair_enum_t;

static void enum_counts(pair_enum_t *pe, int e, int left)
{
    if (e == pe->E - 1) {
        if (1 + left > pe->R)
            return;
        pe->cnt[e] = 1 + left;
        int n;
        sort_experts(pe->w, pe->cnt, pe->E, pe->ord);
        double m = pair_max(pe->w, pe->cnt, pe->ord, pe->E, pe->R, &n, NULL,
                            NULL);
        if (better(m, n, pe->best, pe->bn)) {
            pe->best = m;
            pe->bn = n;
            memcpy(pe->bcnt, pe->cnt, (size_t)pe->E * sizeof(int32_t));
        }
        return;
    }
    for (int x = 0; x <= left && x < pe->R; x++) {
        pe->cnt[e] = 1 + x;
        if (pe->w[e] / pe->cnt[e] >= pe->best * (1 + 1e-12))
            continue;   /* a replica alone above the incumbent */
        enum_counts(pe, e + 1, left - x);
    }
}

/* Number of ways to spread x spare replicas over E experts, capped. */
static long ways(int E, int x)
{
    double v = 1;
    for (int i = 1; i <= x; i++) {
        v = v * (E - 1 + i) / i;
        if (v > PAIR_ENUM_MAX)
            return PAIR_ENUM_MAX + 1;
    }
    return (long)(v + 0.5);
}

/* Replica moves while one lowers (largest pair, pairs at it); cnt and
 * ord (sorted) updated; returns the largest pair, *np the pairs at it. */
static double pair_ls(const double *w, int E, int R, int32_t *cnt,
                      int32_t *ord, int32_t *tmp, int *np)
{
    int n, top, bot;
    sort_experts(w, cnt, E, ord);
    double m = pair_max(w, cnt, ord, E, R, &n, &top, &bot);
    for (long it = 0; it < 4L * (2 * R) + 64; it++) {
        /* A move that lowers the largest pair changes one of its experts
         * (it takes or gives a replica) or shifts the pairing; try the
         * first kind: to or from top and bot, from or to every expert. */
        int ba = -1, bb = -1, bn = n;
        double bm = m;
        int who[2] = { top, bot };
        for (int k = 0; k < 2; k++) {
            if (k && bot == top)
                break;
            int x = who[k];
            for (int y = 0; y < E; y++) {
                if (y == x)
                    continue;
                for (int dir = 0; dir < 2; dir++) {
                    int a = dir ? x : y, b = dir ? y : x, tn;
                    if (cnt[a] < 2 || cnt[b] >= R)
                        continue;
                    double tm = try_move(w, cnt, ord, tmp, E, R, a, b, &tn);
                    if (better(tm, tn, bm, bn)) {
                        bm = tm;
                        bn = tn;
                        ba = a;
                        bb = b;
                    }
                }
            }
        }
        /* Stuck: on small layers every pair of experts (E^3 work). */
        for (int a = 0; ba < 0 && E <= PAIR_FULL_MAX && a < E; a++)
            for (int b = 0; b < E; b++) {
                int tn;
                if (b == a || cnt[a] < 2 || cnt[b] >= R)
                    continue;
                double tm = try_move(w, cnt, ord, tmp, E, R, a, b, &tn);
                if (better(tm, tn, bm, bn)) {
                    bm = tm;
                    bn = tn;
                    ba = a;
                    bb = b;
                }
            }
        if (ba < 0)
            break;
        cnt[ba]--;
        cnt[bb]++;
        sort_experts(w, cnt, E, ord);
        m = pair_max(w, cnt, ord, E, R, &n, &top, &bot);
    }
    *np = n;
    return m;
}

static int cmp_up(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

/* ---- Counts built for a target.  Replicas above M/2 ("big") need
 * partners of at most M - y on distinct ranks; with D(t) the bigs of
 * M - y <= t and Sup(t) the others of y <= t, the sorted pairing meets M
 * iff D(t) <= Sup(t) for every t (Hall's condition on nested sets), and
 * max_t (D(t) - Sup(t)) is the number of bigs left without a partner.
 * From the fewest replicas M allows, a_e = ceil(w_e / M), the spare ones
 * are given out greedily: each step raises one expert by 1..HALL_STEP
 * replicas, the raise that removes most unpartnered bigs per replica
 * (lowest expert, then smallest raise, on ties); done when none is left,
 * and the rest go to the experts of the smallest replicas (below M/2
 * they only add partners).  t runs over the positions M - w_e/c a big
 * can take, so a table of range maxima over them prices every raise in
 * O(1).  This finds the compound moves that replica moves miss (a
 * middle expert merged into one big replica, small experts split into
 * its partners): on the layers where the moves stopped 2-3 % above the
 * optimum it meets the optimum. */
#define HALL_STEP 3
#define HALL_ROUNDS 14
#define HALL_MAX_POS 200000   /* E * (spare + 2): positions, at most */

typedef struct hall {
    const double *w;
    int E, R, S, np, lg;
    double M;
    int32_t *c;          /* [E] counts being built */
    double *pt;          /* [E*(X+1)] positions t (ascending) */
    int *g;              /* [np] D(t) - Sup(t) */
    int *tab;            /* [lg*np] range maxima of g */
} hall_t;

/* First position index with pt >= x (np when none). */
static int hall_at(const hall_t *h, double x)
{
    int lo = 0, hi = h->np;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (h->pt[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Adds expert e's count c to g with sign s: a big adds c from M - y on,
 * another takes c from y on. */
static void hall_add(hall_t *h, int e, int c, int s)
{
    double y = h->w[e] / c;
    int from = y > h->M / 2 ? hall_at(h, h->M - y) : hall_at(h, y);
    int v = y > h->M / 2 ? c * s : -c * s;
    for (int i = from; i < h->np; i++)
        h->g[i] += v;
}

static void hall_table(hall_t *h)
{
    memcpy(h->tab, h->g, (size_t)h->np * sizeof(int));
    for (int k = 1; k < h->lg; k++)
        for (int i = 0; i + (1 << k) <= h->np; i++) {
            int a = h->tab[(k - 1) * h->np + i];
            int b = h->tab[(k - 1) * h->np + i + (1 << (k - 1))];
            h->tab[k * h->np + i] = a > b ? a : b;
        }
}

/* max of g over [i, j) (INT_MIN when empty). */
static int hall_max(const hall_t *h, int i, int j)
{
    if (i >= j)
        return INT_MIN;
    int k = 0;
    while ((2 << k) <= j - i)
        k++;
    int a = h->tab[k * h->np + i], b = h->tab[k * h->np + j - (1 << k)];
    return a > b ? a : b;
}

/* Bigs left without a partner if expert e went from count c0 to c1:
 * g changes by a step function of at most two breakpoints. */
static int hall_eval(const hall_t *h, int e, int c0, int c1)
{
    int pos[2], val[2];
    for (int k = 0; k < 2; k++) {
        int c = k ? c1 : c0;
        double y = h->w[e] / c;
        int big = y > h->M / 2;
        pos[k] = big ? hall_at(h, h->M - y) : hall_at(h, y);
        val[k] = (big ? c : -c) * (k ? 1 : -1);
    }
    int p0 = pos[0] < pos[1] ? pos[0] : pos[1];
    int p1 = pos[0] < pos[1] ? pos[1] : pos[0];
    int d0 = pos[0] < pos[1] ? val[0] : val[1];
    int m = hall_max(h, 0, p0), x;
    if ((x = hall_max(h, p0, p1)) != INT_MIN && x + d0 > m)
        m = x + d0;
    if ((x = hall_max(h, p1, h->np)) != INT_MIN && x + val[0] + val[1] > m)
        m = x + val[0] + val[1];
    return m > 0 ? m : 0;
}

/* Counts for target M into h->c; 1 when every big has a partner. */
static int hall_build(hall_t *h)
{
    const double *w = h->w;
    int E = h->E, R = h->R, left = h->S;
    double M = h->M;
    for (int e = 0; e < E; e++) {
        double q = w[e] / M;
        int a = q < 1 ? 1 : (int)q;
        while (w[e] / a > M)
            a++;
        if (a > R)
            return 0;
        h->c[e] = a;
        left -= a;
    }
    if (left < 0)
        return 0;
    /* Positions a big can take with at most `left` more replicas. */
    h->np = 0;
    for (int e = 0; e < E; e++)
        for (int c = h->c[e]; c <= h->c[e] + left && c <= R; c++) {
            if (!(w[e] / c > M / 2))
                break;
            h->pt[h->np++] = M - w[e] / c;
        }
    qsort(h->pt, (size_t)h->np, sizeof(double), cmp_up);
    for (h->lg = 1; (1 << h->lg) <= h->np; h->lg++)
        ;
    memset(h->g, 0, (size_t)h->np * sizeof(int));
    for (int e = 0; e < E; e++)
        hall_add(h, e, h->c[e], 1);
    while (h->np) {
        hall_table(h);
        int u = hall_max(h, 0, h->np);
        if (u <= 0)
            break;
        int be = -1, bk = 0;
        double bg = 0;
        for (int e = 0; e < E; e++)
            for (int k = 1; k <= HALL_STEP && k <= left && h->c[e] + k <= R;
                 k++) {
                double gain = (double)(u - hall_eval(h, e, h->c[e],
                                                     h->c[e] + k)) / k;
                if (gain > bg * (1 + 1e-12)) {
                    bg = gain;
                    be = e;
                    bk = k;
                }
            }
        if (be < 0)
            return 0;
        hall_add(h, be, h->c[be], -1);
        h->c[be] += bk;
        hall_add(h, be, h->c[be], 1);
        left -= bk;
    }
    while (left-- > 0) {   /* the rest to the smallest replicas */
        int b = -1;
        for (int e = 0; e < E; e++)
            if (h->c[e] < R && (b < 0 || w[e] / h->c[e] < w[b] / h->c[b]))
                b = e;
        if (b < 0)
            return 0;
        h->c[b]++;
    }
    return 1;
}

/* Targets by bisection between the mean rank load (or 0.94 m) and m
 * (each built vector's own largest pair is the next upper end); the best
 * counts built replace cnt when better than (m, *np).  ord, tmp, bcnt:
 * [E]. */
static double pair_hall(const double *w, int E, int R, int32_t *cnt,
                        int32_t *ord, int32_t *tmp, int32_t *bcnt, double m,
                        int *np)
{
    hall_t h = { w, E, R, 2 * R, 0, 0, 0, NULL, NULL, NULL, NULL };
    size_t n = (size_t)E * (2 * R - E + 2), lg = 1;
    double tot = 0, bm = HUGE_VAL;
    int bn = 0, any = 0;
    while (((size_t)1 << lg) <= n)
        lg++;
    if (2 * R < E || n > HALL_MAX_POS)
        goto out;
    h.c = malloc((size_t)E * sizeof(int32_t));
    h.pt = malloc(n * sizeof(double));
    h.g = malloc(n * sizeof(int));
    h.tab = malloc(n * lg * sizeof(int));
    if (!h.c || !h.pt || !h.g || !h.tab)
        goto out;
    for (int e = 0; e < E; e++)
        tot += w[e];
    double lo = tot / R > 0.94 * m ? tot / R : 0.94 * m, hi = m;
    for (int it = 0; it < HALL_ROUNDS && hi - lo > 1e-6 * hi; it++) {
        h.M = 0.5 * (lo + hi);
        if (!hall_build(&h)) {
            lo = h.M;
            continue;
        }
        int tn;
        for (int e = 0; e < E; e++)
            tmp[e] = e;
        sort_experts(w, h.c, E, tmp);
        double tm = pair_max(w, h.c, tmp, E, R, &tn, NULL, NULL);
        if (!any || better(tm, tn, bm, bn)) {
            memcpy(bcnt, h.c, (size_t)E * sizeof(int32_t));
            bm = tm;
            bn = tn;
            any = 1;
        }
        hi = tm < h.M ? tm : h.M;
    }
    if (any) {
        int pn;
        for (int e = 0; e < E; e++)
            ord[e] = e;
        sort_experts(w, bcnt, E, ord);
        double pm = pair_max(w, bcnt, ord, E, R, &pn, NULL, NULL);
        if (better(pm, pn, m, *np)) {
            memcpy(cnt, bcnt, (size_t)E * sizeof(int32_t));
            m = pm;
            *np = pn;
        }
    }
out:
    free(h.c); free(h.pt); free(h.g); free(h.tab);
    for (int e = 0; e < E; e++)
        ord[e] = e;
    sort_experts(w, cnt, E, ord);
    return m;
}

/* Counts cnt[E] (sum 2R, from the caller's start) improved by replica
 * moves; then the sorted pairing into slot[2R] (expert of each slot),
 * a rank holding one expert twice swapped with another rank when that
 * keeps both at or below the largest pair.  ord, tmp, scr, bcnt: [E]
 * scratch. */
double epx__bal_pair_plan(const double *w, int E, int R, int32_t *cnt,
                          int32_t *ord, int32_t *tmp, int32_t *scr,
                          int32_t *bcnt, int32_t *slot)
{
    for (int e = 0; e < E; e++)
        ord[e] = e;
    sort_experts(w, cnt, E, ord);
    int n, top, bot;
    double m = pair_max(w, cnt, ord, E, R, &n, NULL, NULL);
    if (ways(E, 2 * R - E) > PAIR_ENUM_MAX)
        m = pair_hall(w, E, R, cnt, ord, tmp, bcnt, m, &n);
    m = pair_ls(w, E, R, cnt, ord, tmp, &n);
    if (ways(E, 2 * R - E) <= PAIR_ENUM_MAX) {
        pair_enum_t pe = { w, E, R, n, scr, tmp, bcnt, m };
        memcpy(bcnt, cnt, (size_t)E * sizeof(int32_t));
        for (int e = 0; e < E; e++)
            tmp[e] = ord[e];
        enum_counts(&pe, 0, 2 * R - E);
        memcpy(cnt, bcnt, (size_t)E * sizeof(int32_t));
        sort_experts(w, cnt, E, ord);
        m = pair_max(w, cnt, ord, E, R, &n, &top, &bot);
    }
    /* Sorted pairing: slot 2j the j-th largest replica, 2j+1 the j-th
     * smallest. */
    for (int i = 0, k = 0; i < E; i++)
        for (int c = 0; c < cnt[ord[i]]; c++, k++) {
            int j = k < R ? 2 * k : 2 * (2 * R - 1 - k) + 1;
            slot[j] = ord[i];
        }
    /* Twins: only where one expert's replicas meet in the middle. */
    for (int r = 0; r < R; r++) {
        int e = slot[2 * r];
        if (slot[2 * r + 1] != e)
            continue;
        double v = item(w, cnt, e), best = m * (1 + 1e-12);
        int bq = -1, bj = 0;
        for (int q = 0; q < R; q++)
            for (int j = 0; j < 2; j++) {
                int f = slot[2 * q + j], g = slot[2 * q + 1 - j];
                if (f == e || g == e)
                    continue;
                double x = item(w, cnt, f), y = item(w, cnt, g);
                double s1 = v + x, s2 = v + y;
                double mm = s1 > s2 ? s1 : s2;
                if (mm <= best) {
                    best = mm;
                    bq = q;
                    bj = j;
                }
            }
        if (bq >= 0) {   /* r: e and f; q: e and g */
            slot[2 * r + 1] = slot[2 * bq + bj];
            slot[2 * bq + bj] = e;
        }
    }
    return m;
}
