/* Two slots per rank: for fixed replica counts the best packing is known
 * (replicas sorted, the i-th largest beside the i-th smallest minimises
 * the largest pair), so the plan reduces to choosing the counts: a local
 * search moves one replica from an expert to another while that lowers
 * (largest pair, pairs at it).  Candidate of the epx policy when spr = 2;
 * README.md, "epx policy". */
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

/* ---- Counts guided by thresholds.  A placement with largest pair <= M
 * gives each replica y > M/2 a partner <= M - y, so for every u < M/2
 * G(u) = #{replicas <= u} - #{replicas >= M - u} >= 0 (and the sorted
 * pairing meets M exactly when that holds).  For weights lam_u >= 0 the
 * counts maximising sum_u lam_u G(u) (with c_e >= w_e / M, sum 2R) are
 * a knapsack over the spare replicas; weights are raised where those
 * counts fail (multiplicative updates), and every maximiser is a
 * candidate, kept when its sorted pairing is the best yet.  The same
 * relaxation, with a proof in place of candidates, is the lower bound of
 * tests/balance/test_plan.c. */
#define PAIR_PROBE_ROUNDS 30
#define PAIR_PROBE_WORK 4000000L   /* E * (spare + 1)^2 per round, at most */

typedef struct pair_probe {
    int *a, *pos, *sgn, *ch;
    double *U, *lam, *Lam, *G, *dp;
} pair_probe_t;

static int cmp_up(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

/* Best candidate counts for target M into out (its largest pair and pairs
 * at it in *om, *on); 0 when M leaves no room or the work is too large. */
static int pair_probe(const double *w, int E, int R, double M, int32_t *out,
                      int32_t *ord, double *om, int *on)
{
    int S = 2 * R, nu = 0, X, found = 0;
    long need = 0;
    pair_probe_t p;
    if (!(M > 0) || !(p.a = malloc((size_t)E * sizeof(int))))
        return 0;
    for (int e = 0; e < E; e++) {
        double c = w[e] / M;
        p.a[e] = c < 1 ? 1 : (int)c;
        while (w[e] / p.a[e] > M)
            p.a[e]++;
        need += p.a[e];
        if (p.a[e] > R)
            need = S + 1;
    }
    X = S - (int)(need < S ? need : S);
    if (need > S || (double)E * (X + 1) * (X + 1) > PAIR_PROBE_WORK) {
        free(p.a);
        return 0;
    }
    size_t n = (size_t)E * (X + 1);
    p.U = malloc(n * sizeof(double));
    p.lam = malloc(n * sizeof(double));
    p.Lam = malloc((n + 1) * sizeof(double));
    p.G = malloc((n + 1) * sizeof(double));
    p.dp = malloc(n * sizeof(double));
    p.pos = malloc(n * sizeof(int));
    p.sgn = malloc(n * sizeof(int));
    p.ch = malloc(n * sizeof(int));
    int32_t *c = malloc((size_t)E * sizeof(int32_t));
    if (!p.U || !p.lam || !p.Lam || !p.G || !p.dp || !p.pos || !p.sgn ||
        !p.ch || !c)
        goto out;
    for (int e = 0; e < E; e++)
        for (int x = 0; x <= X; x++)
            if (w[e] / (p.a[e] + x) > M / 2)
                p.U[nu++] = M - w[e] / (p.a[e] + x);
    if (!nu)
        goto out;
    qsort(p.U, (size_t)nu, sizeof(double), cmp_up);
    for (int e = 0; e < E; e++)
        for (int x = 0; x <= X; x++) {
            int i = e * (X + 1) + x, lo = 0, hi = nu, k = p.a[e] + x;
            double y = w[e] / k, q = y > M / 2 ? M - y : y;
            p.sgn[i] = k > R ? 2 : y > M / 2 ? -1 : y < M / 2 ? 1 : 0;
            while (lo < hi) {
                int mid = (lo + hi) / 2;
                if (p.U[mid] < q)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            p.pos[i] = lo;
        }
    for (int i = 0; i < nu; i++)
        p.lam[i] = 1.0 / nu;
    for (int e = 0; e < E; e++)
        ord[e] = e;
    for (int it = 0; it < PAIR_PROBE_ROUNDS; it++) {
        p.Lam[nu] = 0;
        for (int i = nu - 1; i >= 0; i--)
            p.Lam[i] = p.Lam[i + 1] + p.lam[i];
        for (int e = 0; e < E; e++) {
            double *val = p.G;   /* this expert's options, y extras */
            int ny = 0;
            for (; ny <= X && p.sgn[e * (X + 1) + ny] != 2; ny++)
                val[ny] = p.sgn[e * (X + 1) + ny] * (p.a[e] + ny) *
                          p.Lam[p.pos[e * (X + 1) + ny]];
            const double *prev = e ? p.dp + (e - 1) * (X + 1) : NULL;
            for (int x = 0; x <= X; x++) {
                double best = -HUGE_VAL;
                int bc = -1;
                for (int y = 0; y <= x && y < ny; y++) {
                    double v = e ? prev[x - y] + val[y]
                                 : (x == y ? val[y] : -HUGE_VAL);
                    if (v > best) {
                        best = v;
                        bc = y;
                    }
                }
                p.dp[e * (X + 1) + x] = best;
                p.ch[e * (X + 1) + x] = bc;
            }
        }
        if (p.dp[(E - 1) * (X + 1) + X] == -HUGE_VAL)
            break;
        for (int i = 0; i <= nu; i++)
            p.G[i] = 0;
        for (int e = E - 1, x = X; e >= 0; e--) {
            int y = p.ch[e * (X + 1) + x], j = e * (X + 1) + y;
            c[e] = p.a[e] + y;
            p.G[p.pos[j]] += p.sgn[j] * c[e];
            x -= y;
        }
        int tn;
        sort_experts(w, c, E, ord);
        double tm = pair_max(w, c, ord, E, R, &tn, NULL, NULL);
        if (!found || better(tm, tn, *om, *on)) {
            memcpy(out, c, (size_t)E * sizeof(int32_t));
            *om = tm;
            *on = tn;
            found = 1;
        }
        if (tm <= M)
            break;
        /* Weights up where G < 0, down where G > 0; |G| <= 2R, so the
         * factor stays in [0.5, 1.5] (no exp: plans identical anywhere). */
        double run = 0, z = 0;
        for (int i = 0; i < nu; i++) {
            run += p.G[i];
            p.lam[i] *= 1 - 0.25 * run / S;
            z += p.lam[i];
        }
        for (int i = 0; i < nu; i++)
            p.lam[i] /= z;
    }
out:
    free(p.a); free(p.U); free(p.lam); free(p.Lam); free(p.G); free(p.dp);
    free(p.pos); free(p.sgn); free(p.ch); free(c);
    return found;
}

/* Targets between 0.95 m and m by bisection (PAIR_PROBES probes) on the
 * probe's candidates; the best of them is a fresh start for pair_ls, and
 * the result replaces cnt when better.  scr, bcnt: [E]. */
#define PAIR_PROBES 6
static double pair_search(const double *w, int E, int R, int32_t *cnt,
                          int32_t *ord, int32_t *tmp, int32_t *scr,
                          int32_t *bcnt, double m, int *np)
{
    double lo = 0.95 * m, hi = m, bm = HUGE_VAL;
    int bn = 0, any = 0;
    for (int k = 0; k < PAIR_PROBES; k++) {
        double M = 0.5 * (lo + hi), pm = HUGE_VAL;
        int pn = 0;
        if (!pair_probe(w, E, R, M, scr, tmp, &pm, &pn)) {
            lo = M;
            continue;
        }
        if (!any || better(pm, pn, bm, bn)) {
            memcpy(bcnt, scr, (size_t)E * sizeof(int32_t));
            bm = pm;
            bn = pn;
            any = 1;
        }
        if (pm <= M)
            hi = pm;
        else
            lo = M;
    }
    if (any) {
        int pn;
        for (int e = 0; e < E; e++)
            ord[e] = e;
        double pm = pair_ls(w, E, R, bcnt, ord, tmp, &pn);
        if (better(pm, pn, m, *np)) {
            memcpy(cnt, bcnt, (size_t)E * sizeof(int32_t));
            m = pm;
            *np = pn;
        }
    }
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
    double m = pair_ls(w, E, R, cnt, ord, tmp, &n);
    if (ways(E, 2 * R - E) > PAIR_ENUM_MAX)
        m = pair_search(w, E, R, cnt, ord, tmp, scr, bcnt, m, &n);
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
