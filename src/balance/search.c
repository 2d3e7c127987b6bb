/* Local search on one layer's placement: steps that change one slot's
 * expert (a replica taken from one expert and given to another) or swap
 * two slots between ranks, each chosen to lower the heaviest rank.  Used
 * to improve a fresh plan (no budget) and for budgeted re-planning (each
 * step costs the slots it makes differ from the placement in use).
 * A step is evaluated in O(replicas of the two experts): per-expert slot
 * lists and a load-sorted rank order give the untouched ranks' maximum.
 * With a budget, steps (and whole loops of them) whose gain per slot
 * cannot beat the best so far are skipped, by bounds that change no step
 * found (src/balance/README.md, "Budgeted re-planning"; nocut turns
 * them off for tests/balance/test_search.c). */
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "balance/balance.h"

epx_status_t epx__bal_ls_alloc(bal_ls_t *ls, int E, int R, int S, int D)
{
    memset(ls, 0, sizeof(*ls));
    ls->slot = malloc((size_t)S * sizeof(int32_t));
    ls->nxt = malloc((size_t)S * sizeof(int32_t));
    ls->head = malloc((size_t)E * sizeof(int32_t));
    ls->cnt = malloc((size_t)E * sizeof(int32_t));
    ls->hcnt = calloc((size_t)E, sizeof(int32_t));
    ls->dcnt = malloc((size_t)D * E * sizeof(int32_t));
    ls->rl = malloc((size_t)R * sizeof(double));
    ls->rmin = malloc((size_t)R * sizeof(double));
    ls->nl = malloc((size_t)R * sizeof(double));
    ls->stamp = calloc((size_t)R, sizeof(int32_t));
    ls->order = malloc((size_t)R * sizeof(int32_t));
    ls->touched = malloc((size_t)R * sizeof(int32_t));
    ls->pen = malloc((size_t)E * sizeof(double));
    ls->xe = malloc((size_t)E * sizeof(double));
    ls->xp = malloc((size_t)E * sizeof(double));
    ls->xm = malloc((size_t)E * sizeof(double));
    ls->top = malloc((size_t)E * sizeof(int32_t));
    ls->donor = malloc((size_t)S * sizeof(int32_t));
    ls->mark = calloc((size_t)R, sizeof(int32_t));
    ls->rchg = calloc((size_t)R, sizeof(int32_t));
    ls->rlist = malloc((size_t)R * sizeof(int32_t));
    ls->srank = malloc((size_t)S * sizeof(int32_t));
    ls->donorr = malloc((size_t)S * sizeof(int32_t));
    ls->dsub = malloc((size_t)S * sizeof(int32_t));
    ls->dsubr = malloc((size_t)S * sizeof(int32_t));
    ls->xc = malloc((size_t)E * sizeof(int32_t));
    ls->dirty = malloc((size_t)E * sizeof(int32_t));
    ls->isdirty = calloc((size_t)E, 1);
    ls->qlist = malloc((size_t)R * sizeof(int32_t));
    ls->E = E;
    ls->R = R;
    ls->rpd = R;
    if (!ls->mark || !ls->rchg || !ls->rlist || !ls->qlist || !ls->srank || !ls->donorr || !ls->dsub || !ls->dsubr || !ls->xc || !ls->dirty || !ls->isdirty || !ls->donor || !ls->touched || !ls->pen || !ls->xe || !ls->xp || !ls->xm || !ls->top || !ls->slot || !ls->nxt || !ls->head || !ls->cnt || !ls->hcnt ||
        !ls->dcnt || !ls->rl || !ls->rmin || !ls->nl || !ls->stamp || !ls->order) {
        epx__bal_ls_free(ls);
        return epx__error(EPX_ERR_NOMEM, "balance: out of memory");
    }
    return EPX_OK;
}

void epx__bal_ls_free(bal_ls_t *ls)
{
    free(ls->slot); free(ls->nxt); free(ls->head); free(ls->cnt);
    free(ls->hcnt); free(ls->dcnt); free(ls->rl); free(ls->rmin); free(ls->nl);
    free(ls->stamp); free(ls->order); free(ls->touched);
    free(ls->pen); free(ls->top); free(ls->xe); free(ls->xp); free(ls->xm); free(ls->donor); free(ls->mark); free(ls->rchg); free(ls->rlist); free(ls->qlist);
    free(ls->srank); free(ls->donorr); free(ls->dsub); free(ls->dsubr); free(ls->xc);
    free(ls->dirty); free(ls->isdirty);
    memset(ls, 0, sizeof(*ls));
}

/* Rank r's load, and (rmin) its lightest replica, w/cnt as find's xe. */
static double rank_load(bal_ls_t *ls, int r)
{
    double s = 0, m = 1e300;
    for (int j = 0; j < ls->spr; j++) {
        int e = ls->slot[r * ls->spr + j];
        double x = ls->w[e] / ls->cnt[e];
        s += x;
        m = x < m ? x : m;
    }
    ls->rmin[r] = m;
    return s;
}

/* Insertion sort of the ranks by load, descending (lowest rank on ties);
 * after one step the order is nearly sorted, so this is about O(R). */
static void sort_ranks(bal_ls_t *ls)
{
    int32_t *o = ls->order;
    for (int i = 1; i < ls->R; i++) {
        int32_t r = o[i];
        int j = i;
        while (j > 0 && (ls->rl[o[j - 1]] < ls->rl[r] ||
                         (ls->rl[o[j - 1]] == ls->rl[r] && o[j - 1] > r))) {
            o[j] = o[j - 1];
            j--;
        }
        o[j] = r;
    }
}

void epx__bal_ls_load(bal_ls_t *ls, const int32_t *slot, const int32_t *orig)
{
    int E = ls->E, R = ls->R, S = ls->R * ls->spr;
    memcpy(ls->slot, slot, (size_t)S * sizeof(int32_t));
    ls->orig = orig;
    ls->changed = 0;
    memset(ls->rchg, 0, (size_t)R * sizeof(int32_t));
    memset(ls->cnt, 0, (size_t)E * sizeof(int32_t));
    memset(ls->dcnt, 0, (size_t)(R / ls->rpd) * E * sizeof(int32_t));
    for (int e = 0; e < E; e++) {
        ls->head[e] = -1;
        ls->xc[e] = -1;          /* w may have changed: no x* cached */
        ls->isdirty[e] = 0;
    }
    ls->xok = 0;
    ls->ndirty = 0;
    for (int s = 0; s < S; s++)
        ls->srank[s] = s / ls->spr;
    for (int s = S - 1; s >= 0; s--) {
        int e = slot[s], r = s / ls->spr;
        ls->cnt[e]++;
        ls->dcnt[(r / ls->rpd) * E + e]++;
        ls->nxt[s] = ls->head[e];
        ls->head[e] = s;
        if (orig) {
            ls->changed += slot[s] != orig[s];
            ls->rchg[r] += slot[s] != orig[s];
        }
    }
    for (int r = 0; r < R; r++) {
        ls->rl[r] = rank_load(ls, r);
        ls->order[r] = r;
    }
    sort_ranks(ls);
}

double epx__bal_ls_max(const bal_ls_t *ls)
{
    return ls->rl[ls->order[0]];
}

/* Maximum and number of ranks within tol of it, over the ranks stamped in
 * this evaluation (new loads in nl) and the others (loads in rl). */
static void new_max(const bal_ls_t *ls, const int32_t *touched, int nt,
                    double *mx, int *n)
{
    double m = -1;
    for (int i = 0; i < nt; i++)
        if (ls->nl[touched[i]] > m)
            m = ls->nl[touched[i]];
    for (int i = 0; i < ls->R; i++) {
        int r = ls->order[i];
        if (ls->stamp[r] != ls->stampv) {
            if (ls->rl[r] > m)
                m = ls->rl[r];
            break;
        }
    }
    double tol = 1e-12 * m;
    int c = 0;
    for (int i = 0; i < nt; i++)
        c += ls->nl[touched[i]] >= m - tol;
    for (int i = 0; i < ls->R && ls->rl[ls->order[i]] >= m - tol; i++)
        c += ls->stamp[ls->order[i]] != ls->stampv;
    *mx = m;
    *n = c;
}

static int touch(bal_ls_t *ls, int r, int32_t *touched, int nt)
{
    if (ls->stamp[r] != ls->stampv) {
        ls->stamp[r] = ls->stampv;
        ls->nl[r] = ls->rl[r];
        touched[nt++] = r;
    }
    return nt;
}

/* Does rank r hold expert e?  Its slots, read in place: a table by rank
 * and expert would be R x E per layer, paged in at every call. */
static int rank_holds(const bal_ls_t *ls, int r, int e)
{
    const int32_t *p = ls->slot + (size_t)r * ls->spr;
    for (int j = 0; j < ls->spr; j++)
        if (p[j] == e)
            return 1;
    return 0;
}

/* Slots that would differ from the placement in use, minus those that do. */
static int cost_of(const bal_ls_t *ls, int s, int e)
{
    if (!ls->orig)
        return 0;
    return (e != ls->orig[s]) - (ls->slot[s] != ls->orig[s]);
}

/* Slot s takes expert b instead of its expert a. */
static void eval_reassign(bal_ls_t *ls, int s, int b, int32_t *touched,
                          double *mx, int *n)
{
    int a = ls->slot[s], nt = 0;
    double xa0 = ls->xe[a], xa1 = ls->xm[a];
    double xb0 = ls->xe[b], xb1 = ls->xp[b];
    ls->stampv++;
    for (int t = ls->head[a]; t >= 0; t = ls->nxt[t]) {
        int q = ls->srank[t];
        nt = touch(ls, q, touched, nt);
        ls->nl[q] += t == s ? -xa0 : xa1 - xa0;
    }
    for (int t = ls->head[b]; t >= 0; t = ls->nxt[t]) {
        int q = ls->srank[t];
        nt = touch(ls, q, touched, nt);
        ls->nl[q] += xb1 - xb0;
    }
    nt = touch(ls, ls->srank[s], touched, nt);
    ls->nl[ls->srank[s]] += xb1;
    new_max(ls, touched, nt, mx, n);
}

/* Is (mx, n) better than (bm, bn)?  Lower maximum, or the same maximum
 * held by fewer ranks. */
static int better(double mx, int n, double bm, int bn)
{
    double tol = 1e-12 * (bm > mx ? bm : mx);
    if (mx < bm - tol)
        return 1;
    return mx <= bm + tol && n < bn;
}

/* find lists a rank's experts on the stack up to this many slots per rank. */
#define BAL_FIND_SPR_MAX 64

/* Candidate score: with a budget, improvement per slot moved; without,
 * the new (max, n) alone. */
typedef struct cand {
    int found, kind, s1, s2, b, cost;
    double mx, val;
    int n;
} cand_t;

static void consider(const bal_ls_t *ls, cand_t *best, int kind, int s1,
                     int s2, int b, double mx, int n, double cur, int curn,
                     int cost, int budget)
{
    if (!better(mx, n, cur, curn) || cost > budget)
        return;
    if (ls->orig) {
        /* Gain per slot moved; a step at the same maximum gains a little
         * (it takes a rank off the maximum). */
        double gain = cur - mx;
        if (gain <= 1e-12 * cur)
            gain = 1e-9 * cur * (curn - n);
        double val = gain / (cost > 0 ? cost : 0.5);
        if (!best->found || val > best->val) {
            *best = (cand_t){ 1, kind, s1, s2, b, cost, mx, val, n };
        }
    } else if (!best->found || better(mx, n, best->mx, best->n)) {
        *best = (cand_t){ 1, kind, s1, s2, b, cost, mx, 0, n };
    }
}

/* lb: a lower bound on the new maximum, from the ranks the caller knows
 * (h, the slot's rank, a's heaviest holder; -1: none).  With a budget, a
 * step whose gain per slot cannot beat the best so far is not evaluated. */
static void try_reassign(bal_ls_t *ls, cand_t *best, int s, int b, double cur,
                         int curn, int budget, double lb)
{
    double mx;
    int n, cost = cost_of(ls, s, b);
    if (cost > budget)
        return;
    if (ls->orig && !ls->nocut && best->found) {
        /* c is 0.5 or 1 (and d below 0.5 or 2): x / c <= v is exactly
         * x <= v * c, with no division. */
        double tie = 1e-9 * cur * curn, c = cost > 0 ? cost : 0.5;
        if (lb >= 0) {       /* computed otherwise than new_max: a margin */
            double g = (cur - lb) * (1 + 1e-9) + 1e-12 * cur;
            if ((g > tie ? g : tie) <= best->val * c)
                return;
        }
        /* A rank other than s's that does not hold b gets no lighter
         * (holders of a only gain), and new_max takes its load as it
         * is: the new maximum is at least that, exactly, so the gain per
         * slot is at most (cur - its load) / c, rounded the same way. */
        int r = ls->srank[s];
        for (int i = 1; i < ls->R && i < 4; i++) {
            int t = ls->order[i];
            if (t != r && !rank_holds(ls, t, b)) {
                double g = cur - ls->rl[t];
                if ((g > tie ? g : tie) <= best->val * c)
                    return;
                break;
            }
        }
    }
    eval_reassign(ls, s, b, ls->touched, &mx, &n);
    consider(ls, best, 0, s, -1, b, mx, n, cur, curn, cost, budget);
}

/* May slot s (on rank r) give up its replica?  Its expert has one to
 * spare, and giving it up does not raise another holder to the max
 * (unless that holder is r, which loses the slot). */
static int donor_ok(const bal_ls_t *ls, int s, int r, double cur, double tol)
{
    int a = ls->slot[s];
    return ls->cnt[a] >= 2 && !(ls->pen[a] >= cur - tol && ls->top[a] != r);
}

/* mark[r] == markv for the ranks holding e. */
static void mark_holders(bal_ls_t *ls, int e)
{
    ls->markv++;
    for (int t = ls->head[e]; t >= 0; t = ls->nxt[t])
        ls->mark[ls->srank[t]] = ls->markv;
}

/* Expert a's per-step figures: w/cnt, w/(cnt+1), w/(cnt-1) (the same
 * divisions, kept while cnt stays), and the heaviest of its holders
 * after it gives up a replica: pen[a], on rank top[a] (first in list
 * order on ties).  They change only when a's count, list or a holder's
 * load does: apply marks those experts, find updates them. */
static void expert_update(bal_ls_t *ls, int a)
{
    if (ls->xc[a] != ls->cnt[a]) {
        ls->xc[a] = ls->cnt[a];
        ls->xe[a] = ls->w[a] / ls->cnt[a];
        ls->xp[a] = ls->w[a] / (ls->cnt[a] + 1);
        if (ls->cnt[a] >= 2)
            ls->xm[a] = ls->w[a] / (ls->cnt[a] - 1);
    }
    ls->pen[a] = 1e300;
    if (ls->cnt[a] < 2)
        return;
    double d = ls->xm[a] - ls->xe[a], m = -1;
    for (int t = ls->head[a]; t >= 0; t = ls->nxt[t])
        if (ls->rl[ls->srank[t]] > m) {
            m = ls->rl[ls->srank[t]];
            ls->top[a] = ls->srank[t];
        }
    ls->pen[a] = m + d;
}

int epx__bal_ls_find(bal_ls_t *ls, int budget, bal_step_t *step)
{
    int E = ls->E, spr = ls->spr, R = ls->R, S = R * spr;
    int h = ls->order[0];
    double cur = ls->rl[h], mx;
    int curn = 0, n;
    for (int i = 0; i < R && ls->rl[ls->order[i]] >= cur - 1e-12 * cur; i++)
        curn++;
    cand_t best = { 0 };
    for (int j = 0; j < spr; j++)   /* replicas of each expert on h */
        ls->hcnt[ls->slot[h * spr + j]]++;
    /* Giving up a replica of a raises a's other holders: pen[a] is the
     * heaviest of them after the change, top[a] that holder (a slot on
     * it may still be worth giving up, since that rank loses the slot). */
    double tol = 1e-12 * cur;
    if (!ls->xok) {
        for (int a = 0; a < E; a++)
            expert_update(ls, a);
        ls->xok = 1;
        ls->xmin = 1e300;
        for (int e = 0; e < E; e++)
            if (ls->cnt[e] > 0 && ls->xe[e] < ls->xmin)
                ls->xmin = ls->xe[e];
    } else {                     /* only the experts apply touched */
        int full = 0;
        for (int i = 0; i < ls->ndirty; i++) {
            int a = ls->dirty[i];
            double old = ls->xe[a];
            ls->isdirty[a] = 0;
            expert_update(ls, a);
            if (ls->xe[a] < ls->xmin)
                ls->xmin = ls->xe[a];
            else if (old == ls->xmin && ls->xe[a] > old)
                full = 1;        /* the minimum may have gone up */
        }
        ls->ndirty = 0;
        if (full) {
            ls->xmin = 1e300;
            for (int e = 0; e < E; e++)
                if (ls->cnt[e] > 0 && ls->xe[e] < ls->xmin)
                    ls->xmin = ls->xe[e];
        }
    }
    /* Swaps of an item of h with a lighter item of another rank.  Only h
     * and q change, so the new maximum is the larger of theirs and of the
     * heaviest other rank (order[1], or order[2] when that is q); the
     * number of ranks at it is counted only when it can matter. */
    double o1 = R > 1 ? ls->rl[ls->order[1]] : -1;
    double o2 = R > 2 ? ls->rl[ls->order[2]] : -1;
    double xmin = ls->xmin;
    int dlo = h / ls->rpd * ls->rpd, dhi = dlo + ls->rpd;   /* h's domain */
    int nrc = 0;                 /* ranks with a changed slot, in order */
    if (ls->orig)
        for (int q = 0; q < R; q++)
            if (ls->rchg[q])
                ls->rlist[nrc++] = q;
    for (int ja = 0; ja < spr; ja++) {
        int sa = h * spr + ja, a = ls->slot[sa];
        double xa = ls->xe[a];
        if (ls->orig && !ls->nocut && best.found) {
            /* No swap of a gains more than xa - xmin, nor than down to
             * order[2]; a step per slot costs at least 0.5. */
            double g = xa - xmin < cur - o2 ? xa - xmin : cur - o2;
            double tie = 1e-9 * cur * curn;
            if ((g > tie ? g : tie) / 0.5 <= best.val)
                continue;
        }
        int ca = ls->orig && a == ls->orig[sa] ? 1 : -1;
        /* Every q but order[1] leaves order[1] as it is (the exact cut
         * below): when it cuts the q without a changed slot, only
         * order[1] and the ranks with one are left, in rank order; when
         * it cuts those too, only order[1]. */
        int nq = R, *qs = NULL;
        if (ls->orig && !ls->nocut && best.found && R > 1) {
            double tie = 1e-9 * cur * curn, go = cur - o1;
            go = go > tie ? go : tie;
            if (go / (ca + 1 > 0 ? ca + 1 : 0.5) <= best.val) {
                int t1 = ls->order[1], k = 0;
                qs = ls->qlist;
                nq = 0;
                if (go / 0.5 > best.val)
                    for (; k < nrc && ls->rlist[k] < t1; k++)
                        qs[nq++] = ls->rlist[k];
                qs[nq++] = t1;
                if (go / 0.5 > best.val)
                    for (; k < nrc; k++)
                        if (ls->rlist[k] != t1)
                            qs[nq++] = ls->rlist[k];
            }
        }
        mark_holders(ls, a);
        for (int iq = 0; iq < nq; iq++) {
            int q = qs ? qs[iq] : iq;
            if (q == h || q < dlo || q >= dhi)
                continue;
            if (ls->distinct && ls->mark[q] == ls->markv)
                continue;
            if (ls->rmin[q] >= xa)
                continue;          /* no lighter item to swap with */
            double other = q == ls->order[1] ? o2 : o1;
            if (ls->orig && !ls->nocut && best.found) {
                /* h and q share rl[h] + rl[q]: gain <= (cur - rl[q]) / 2,
                 * and h drops by xa - xb <= xa - rmin[q] (both with a
                 * margin); and exactly no more than down to `other`,
                 * taken as it is.  A slot as in use costs 1 to change, a
                 * changed one at least -1: the pair's cost is at least
                 * ca + cq. */
                double g = (cur - ls->rl[q]) / 2, gx = xa - ls->rmin[q];
                g = (gx < g ? gx : g) * (1 + 1e-9) + 1e-12 * cur;
                double tie = 1e-9 * cur * curn, go = cur - other;
                int c = ca + (ls->rchg[q] ? -1 : 1);
                double d = c > 0 ? c : 0.5;
                if ((g > tie ? g : tie) <= best.val * d ||
                    (go > tie ? go : tie) <= best.val * d)
                    continue;
            }
            for (int jb = 0; jb < spr; jb++) {
                int sb = q * spr + jb, b = ls->slot[sb];
                if (b == a || ls->xe[b] >= xa)
                    continue;
                if (ls->distinct && ls->hcnt[b])
                    continue;
                double xb = ls->xe[b];
                if (ls->rl[q] - xb + xa >= cur - 1e-12 * cur)
                    continue;      /* q would reach the max */
                int cost = cost_of(ls, sa, b) + cost_of(ls, sb, a);
                if (cost > budget)
                    continue;
                double na = ls->rl[h] + (xb - xa), nb = ls->rl[q] + (xa - xb);
                mx = na > nb ? na : nb;
                mx = other > mx ? other : mx;
                n = 0;
                if (mx >= cur * (1 - 2e-12) ||
                    (!ls->orig && best.found && mx >= best.mx * (1 - 2e-12))) {
                    double t = 1e-12 * mx;
                    n = (na >= mx - t) + (nb >= mx - t);
                    for (int i = 0; i < R && ls->rl[ls->order[i]] >= mx - t; i++)
                        n += ls->order[i] != h && ls->order[i] != q;
                }
                consider(ls, &best, 1, sa, sb, 0, mx, n, cur, curn, cost, budget);
            }
        }
    }
    /* One more replica of an expert b of h, in a slot taken from an
     * expert a with replicas to spare: the slots that may give one up
     * (in slot order) are the same for every b; listed when first
     * needed in full (ndonor < 0: not yet). */
    int ndonor = -1;
    for (int jb = 0; jb < spr; jb++) {
        int b = ls->slot[h * spr + jb], dup = 0;
        for (int j = 0; j < jb; j++)
            dup |= ls->slot[h * spr + j] == b;
        if (dup || ls->w[b] <= 0)
            continue;
        double xb0 = ls->xe[b], xb1 = ls->xp[b];
        double gb = ls->hcnt[b] * (xb0 - xb1);
        if (ls->rl[h] - gb >= cur - tol && curn == 1)
            continue;          /* h stays the heaviest */
        /* Donors off h gain at most gb, per slot at most gb / 0.5
         * (try_reassign's cut, taken for all of them at once). */
        int offh = 1;
        if (ls->orig && !ls->nocut && best.found) {
            double tie = 1e-9 * cur * curn, g = gb * (1 + 1e-9) + 1e-12 * cur;
            offh = (g > tie ? g : tie) / 0.5 > best.val;
        }
        mark_holders(ls, b);
        /* tb, the heaviest rank after h that does not hold b, is not
         * lighter after any donor's step but its own (try_reassign's
         * exact cut): a donor slot as in use costs 1, a changed one at
         * least -1 (0.5 per slot). */
        int tb = -1, cut1 = 0, cut0 = 0;
        if (ls->orig && !ls->nocut && best.found) {
            for (int i = 1; i < R && i < 4 && tb < 0; i++)
                if (ls->mark[ls->order[i]] != ls->markv)
                    tb = ls->order[i];
            if (tb >= 0) {
                double tie = 1e-9 * cur * curn, g = cur - ls->rl[tb];
                g = g > tie ? g : tie;
                cut1 = g <= best.val;
                cut0 = g / 0.5 <= best.val;
            }
        }
        /* The donors left: tb's alone, or tb's and the changed slots
         * (on the ranks that have one), or all; in slot order. */
        int nd = 0;
        const int32_t *ds = ls->dsub, *dr = ls->dsubr;
        if (cut1) {            /* tb >= 0; merge it into rlist */
            int k = 0, tbdone = 0;
            for (;;) {
                int nk = !cut0 && k < nrc ? ls->rlist[k] : R;
                int nt = tbdone ? R : tb, r = nk < nt ? nk : nt;
                if (r == R)
                    break;
                k += r == nk;
                tbdone |= r == nt;
                for (int j = 0; j < spr; j++) {
                    int sl = r * spr + j;
                    if ((r == tb || ls->slot[sl] != ls->orig[sl]) &&
                        donor_ok(ls, sl, r, cur, tol)) {
                        ls->dsub[nd] = sl;
                        ls->dsubr[nd++] = r;
                    }
                }
            }
        } else {
            if (ndonor < 0) {
                ndonor = 0;
                for (int sl = 0; sl < S; sl++)
                    if (donor_ok(ls, sl, ls->srank[sl], cur, tol)) {
                        ls->donorr[ndonor] = ls->srank[sl];
                        ls->donor[ndonor++] = sl;
                    }
            }
            nd = ndonor;
            ds = ls->donor;
            dr = ls->donorr;
        }
        for (int i = 0; i < nd; i++) {
            int s = ds[i], a = ls->slot[s], r = dr[i];
            if (!offh && r != h)
                continue;
            if (a == b || ls->rl[r] - ls->xe[a] + xb1 >= cur - tol ||
                (ls->distinct && ls->mark[r] == ls->markv) ||
                (ls->rpd < R && !ls->dcnt[(r / ls->rpd) * E + b]))
                continue;
            /* h and r, unless they hold b; a's heaviest other holder
             * unless it holds b: their new loads are at least these. */
            double lb = -1;
            if (ls->orig && !ls->nocut && best.found) {
                int t = ls->top[a];
                if (r != h)
                    lb = ls->rl[h] - gb;
                if (ls->mark[r] != ls->markv) {
                    double nr = ls->rl[r] - ls->xe[a] + xb1;
                    lb = nr > lb ? nr : lb;
                }
                if (t != r && ls->mark[t] != ls->markv && ls->pen[a] > lb)
                    lb = ls->pen[a];
            }
            try_reassign(ls, &best, s, b, cur, curn, budget, lb);
        }
    }
    /* A slot of h given up by its expert a to some lighter expert b. */
    for (int ja = 0; ja < spr; ja++) {
        int s = h * spr + ja, a = ls->slot[s];
        if (ls->cnt[a] < 2 || (ls->pen[a] >= cur - tol && ls->top[a] != h))
            continue;
        double xa0 = ls->xe[a];
        /* A b that order[1] does not hold leaves order[1] as it is (its
         * exact cut in try_reassign); the slot as in use costs 1, a
         * changed one at least -1.  When that cuts, only the experts of
         * order[1] are left, in ascending order. */
        int nb = E, only = 0;
        int32_t bs[BAL_FIND_SPR_MAX];
        if (ls->orig && !ls->nocut && best.found && R > 1 &&
            spr <= BAL_FIND_SPR_MAX) {
            double tie = 1e-9 * cur * curn, go = cur - o1;
            go = go > tie ? go : tie;
            if (go / (a == ls->orig[s] ? 1 : 0.5) <= best.val) {
                int t1 = ls->order[1];
                only = 1;
                nb = 0;
                for (int j = 0; j < spr; j++) {   /* sorted, no repeats */
                    int32_t e = ls->slot[t1 * spr + j];
                    int k = nb;
                    for (int i = 0; i < nb; i++)
                        if (bs[i] >= e) {
                            k = i;
                            break;
                        }
                    if (k < nb && bs[k] == e)
                        continue;
                    memmove(bs + k + 1, bs + k, (size_t)(nb - k) * sizeof(int32_t));
                    bs[k] = e;
                    nb++;
                }
            }
        }
        for (int ib = 0; ib < nb; ib++) {
            int b = only ? bs[ib] : ib;
            if (b == a || (ls->distinct && ls->hcnt[b]) ||
                ls->rl[h] - xa0 + ls->xp[b] >= cur - tol ||
                (ls->rpd < R && !ls->dcnt[(h / ls->rpd) * E + b]))
                continue;
            double xb0 = ls->xe[b], xb1 = ls->xp[b];
            double lb = -1;
            if (ls->orig && !ls->nocut && best.found) {
                int t = ls->top[a];
                lb = ls->rl[h] - (xa0 - xb1 + ls->hcnt[b] * (xb0 - xb1));
                if (t != h && !rank_holds(ls, t, b) && ls->pen[a] > lb)
                    lb = ls->pen[a];
            }
            try_reassign(ls, &best, s, b, cur, curn, budget, lb);
        }
    }
    for (int j = 0; j < spr; j++)
        ls->hcnt[ls->slot[h * spr + j]] = 0;
    if (!best.found)
        return 0;
    step->kind = best.kind;
    step->s1 = best.s1;
    step->s2 = best.s2;
    step->b = best.b;
    step->cost = best.cost;
    step->gain = cur - best.mx;
    step->val = best.val;
    return 1;
}

static void list_remove(bal_ls_t *ls, int e, int s)
{
    int32_t *p = &ls->head[e];
    while (*p != s)
        p = &ls->nxt[*p];
    *p = ls->nxt[s];
}

/* Slot s takes expert b (lists, counts, changed; loads not). */
static void set_slot(bal_ls_t *ls, int s, int b)
{
    int a = ls->slot[s], r = s / ls->spr, E = ls->E;
    int d = r / ls->rpd;
    if (ls->orig) {
        ls->changed += cost_of(ls, s, b);
        ls->rchg[r] += cost_of(ls, s, b);
    }
    list_remove(ls, a, s);
    ls->nxt[s] = ls->head[b];
    ls->head[b] = s;
    ls->slot[s] = b;
    ls->cnt[a]--;
    ls->cnt[b]++;
    ls->dcnt[d * E + a]--;
    ls->dcnt[d * E + b]++;
}

/* Rank r's load again; its experts' figures are then due (find). */
static void rank_reload(bal_ls_t *ls, int r)
{
    ls->rl[r] = rank_load(ls, r);
    for (int j = 0; j < ls->spr; j++) {
        int e = ls->slot[r * ls->spr + j];
        if (!ls->isdirty[e]) {
            ls->isdirty[e] = 1;
            ls->dirty[ls->ndirty++] = e;
        }
    }
}

void epx__bal_ls_apply(bal_ls_t *ls, const bal_step_t *step)
{
    int spr = ls->spr;
    if (step->kind == 1) {
        int a = ls->slot[step->s1], b = ls->slot[step->s2];
        set_slot(ls, step->s1, b);
        set_slot(ls, step->s2, a);
        rank_reload(ls, step->s1 / spr);
        rank_reload(ls, step->s2 / spr);
    } else {
        int a = ls->slot[step->s1], b = step->b;
        set_slot(ls, step->s1, b);
        /* Every rank holding a or b, and the slot's rank, changes load
         * (a and b are on them: their counts and lists changed). */
        for (int t = ls->head[a]; t >= 0; t = ls->nxt[t])
            rank_reload(ls, t / spr);
        for (int t = ls->head[b]; t >= 0; t = ls->nxt[t])
            rank_reload(ls, t / spr);
    }
    sort_ranks(ls);
}

int epx__bal_ls_improve(bal_ls_t *ls, long max_steps)
{
    bal_step_t st;
    int steps = 0;
    for (long i = 0; i < max_steps && epx__bal_ls_find(ls, INT32_MAX, &st); i++) {
        epx__bal_ls_apply(ls, &st);
        steps++;
    }
    return steps;
}
