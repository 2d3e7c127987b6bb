/* Two slots per rank: for fixed replica counts the best packing is known
 * (replicas sorted, the i-th largest beside the i-th smallest minimises
 * the largest pair), so the plan reduces to choosing the counts: a local
 * search moves one replica from an expert to another while that lowers
 * (largest pair, pairs at it).  Candidate of the epx policy when spr = 2;
 * README.md, "epx policy". */
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
