/* The epx policy, one layer: the DeepSeek structure (groups onto domains,
 * greedy replication within a domain) with a packing that keeps the
 * replicas of an expert on distinct ranks, refined by swaps off the
 * heaviest rank and (three or more slots per rank) by count moves with a
 * repack, then matched to the current placement so that unchanged
 * replicas keep their slots.  Algorithm and tie-breaking:
 * src/balance/README.md. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "balance/balance.h"

/* Ranks by (load, index) in a binary min-heap: the lightest rank first,
 * the lowest index among equal loads, as a scan would pick. */
static int rank_before(const double *load, int a, int b)
{
    return load[a] < load[b] || (load[a] == load[b] && a < b);
}

static void heap_down(int32_t *hp, int n, int i, const double *load)
{
    for (;;) {
        int c = 2 * i + 1;
        if (c >= n)
            return;
        if (c + 1 < n && rank_before(load, hp[c + 1], hp[c]))
            c++;
        if (!rank_before(load, hp[c], hp[i]))
            return;
        int t = hp[c];
        hp[c] = hp[i];
        hp[i] = t;
        i = c;
    }
}

static void heap_push(int32_t *hp, int *n, int r, const double *load)
{
    int i = (*n)++;
    hp[i] = r;
    while (i > 0 && rank_before(load, hp[i], hp[(i - 1) / 2])) {
        int p = (i - 1) / 2, t = hp[p];
        hp[p] = hp[i];
        hp[i] = t;
        i = p;
    }
}

static int heap_pop(int32_t *hp, int *n, const double *load)
{
    int r = hp[0];
    hp[0] = hp[--*n];
    heap_down(hp, *n, 0, load);
    return r;
}

/* Pack the domain's items (weights wk->w, experts wk->p2m) onto rpd ranks
 * of spr slots: heaviest first to the lightest rank with room that does
 * not hold the expert yet; when every rank with room holds it, the
 * lightest rank with room.  The ranks with room wait in a heap; those
 * that hold the expert are set aside (at most its replicas so far).
 * Fills slot_item[0..spd), packw, held (uses pack, rip).  `screen`: the
 * order wk->ord is given (sorted as epx__bal_sort_desc would) and held
 * is left alone (it costs more to clear than the packing).  Returns the
 * items that had to join a replica of their expert. */
static int pack_distinct(const bal_shape_t *sh, bal_work_t *wk, int screen)
{
    int n = sh->spd, epd = sh->epd, nh = 0, dup = 0;
    int32_t *hp = wk->pack, *aside = wk->rip;
    if (!screen) {
        epx__bal_sort_desc(wk->w, n, wk->ord, wk->tmp);
        memset(wk->held, 0, (size_t)sh->rpd * epd * sizeof(int32_t));
    }
    for (int r = 0; r < sh->rpd; r++) {
        wk->packw[r] = 0;
        wk->packn[r] = 0;
        hp[nh++] = r;                /* equal loads: index order is a heap */
    }
    for (int k = 0; k < n; k++) {
        int it = wk->ord[k], e = wk->p2m[it], na = 0, best = -1;
        while (nh > 0) {
            int r = heap_pop(hp, &nh, wk->packw), has = 0;
            for (int j = 0; j < wk->packn[r]; j++)
                has |= wk->p2m[wk->slot_item[r * sh->spr + j]] == e;
            if (!has) {
                best = r;
                break;
            }
            aside[na++] = r;
        }
        if (best < 0) {              /* every rank with room holds e */
            best = aside[0];
            dup++;
            for (int i = 1; i < na; i++)
                heap_push(hp, &nh, aside[i], wk->packw);
        } else
            for (int i = 0; i < na; i++)
                heap_push(hp, &nh, aside[i], wk->packw);
        wk->slot_item[best * sh->spr + wk->packn[best]++] = it;
        wk->packw[best] += wk->w[it];
        if (!screen)
            wk->held[best * epd + e]++;
        if (wk->packn[best] < sh->spr)
            heap_push(hp, &nh, best, wk->packw);
    }
    return dup;
}

static void swap_items(const bal_shape_t *sh, bal_work_t *wk, int r, int ja,
                       int q, int jb)
{
    int epd = sh->epd;
    int a = wk->slot_item[r * sh->spr + ja], b = wk->slot_item[q * sh->spr + jb];
    wk->slot_item[r * sh->spr + ja] = b;
    wk->slot_item[q * sh->spr + jb] = a;
    wk->packw[r] += wk->w[b] - wk->w[a];
    wk->packw[q] += wk->w[a] - wk->w[b];
    wk->held[r * epd + wk->p2m[a]]--;
    wk->held[r * epd + wk->p2m[b]]++;
    wk->held[q * epd + wk->p2m[b]]--;
    wk->held[q * epd + wk->p2m[a]]++;
}

/* Best swap of an item of rank r with an item on another rank that keeps
 * experts distinct on both ranks; "best" = lowest max of the two new
 * loads, which must be below `bound`.  dup_only: consider only items of r
 * whose expert r holds twice or more.  Returns 0 when none. */
static int best_swap(const bal_shape_t *sh, bal_work_t *wk, int r, double bound,
                     int dup_only, int *bja, int *bq, int *bjb)
{
    int epd = sh->epd, spr = sh->spr, found = 0;
    double best = bound;
    for (int ja = 0; ja < spr; ja++) {
        int a = wk->slot_item[r * spr + ja], ea = wk->p2m[a];
        if (dup_only && wk->held[r * epd + ea] < 2)
            continue;
        double wa = wk->w[a];
        for (int q = 0; q < sh->rpd; q++) {
            if (q == r || wk->held[q * epd + ea])
                continue;
            for (int jb = 0; jb < spr; jb++) {
                int b = wk->slot_item[q * spr + jb], eb = wk->p2m[b];
                double wb = wk->w[b];
                if ((!dup_only && wb >= wa) || wk->held[r * epd + eb])
                    continue;
                double nr = wk->packw[r] - wa + wb, nq = wk->packw[q] - wb + wa;
                double m = nr > nq ? nr : nq;
                if (m < best) {
                    best = m;
                    *bja = ja;
                    *bq = q;
                    *bjb = jb;
                    found = 1;
                }
            }
        }
    }
    return found;
}

static void refine(const bal_shape_t *sh, bal_work_t *wk)
{
    int ja, q, jb;
    /* First move away second replicas that the greedy packing had to put
     * beside the first (rare: only near the end, when few ranks have room). */
    for (int r = 0; r < sh->rpd; r++)
        while (best_swap(sh, wk, r, 1e300, 1, &ja, &q, &jb))
            swap_items(sh, wk, r, ja, q, jb);
    /* Then lower the heaviest rank while a swap does.  Each swap puts two
     * loads below the old maximum, so the sorted load vector strictly
     * decreases and the loop ends; the cap only bounds the time. */
    long cap = 8L * sh->spd * sh->spr + 64;
    for (long it = 0; it < cap; it++) {
        int h = 0;
        for (int r = 1; r < sh->rpd; r++)
            if (wk->packw[r] > wk->packw[h])
                h = r;
        double bound = wk->packw[h] - 1e-12 * wk->packw[h];
        if (!best_swap(sh, wk, h, bound, 0, &ja, &q, &jb))
            break;
        swap_items(sh, wk, h, ja, q, jb);
    }
}

/* Rank loads and expert counts from slot_item. */
static void load_state(const bal_shape_t *sh, bal_work_t *wk)
{
    memset(wk->held, 0, (size_t)sh->rpd * sh->epd * sizeof(int32_t));
    for (int r = 0; r < sh->rpd; r++) {
        wk->packw[r] = 0;
        for (int j = 0; j < sh->spr; j++) {
            int it = wk->slot_item[r * sh->spr + j];
            wk->packw[r] += wk->w[it];
            wk->held[r * sh->epd + wk->p2m[it]]++;
        }
    }
}

/* Highest rank load, or -1 when a rank holds an expert twice although
 * `distinct` asks for distinct ranks. */
static double score(const bal_shape_t *sh, const bal_work_t *wk, int distinct)
{
    double mx = 0;
    for (int r = 0; r < sh->rpd; r++)
        mx = wk->packw[r] > mx ? wk->packw[r] : mx;
    if (distinct)
        for (int i = 0; i < sh->rpd * sh->epd; i++)
            if (wk->held[i] > 1)
                return -1;
    return mx;
}

/* Two starting packings, each refined: the distinct one, and the plain
 * greedy one of the DeepSeek policy (whose refinement can therefore only
 * end at or below the DeepSeek policy's maximum on these replicas).  The
 * lower maximum wins, the distinct start on ties.  Leaves slot_item. */
static void pack_domain(const bal_shape_t *sh, bal_work_t *wk, int distinct)
{
    pack_distinct(sh, wk, 0);
    refine(sh, wk);
    double best = score(sh, wk, distinct);
    memcpy(wk->perm, wk->slot_item, (size_t)sh->spd * sizeof(int32_t));
    epx__bal_pack(wk->w, sh->spd, sh->rpd, wk, wk->pack, wk->rip);
    for (int k = 0; k < sh->spd; k++)
        wk->slot_item[wk->pack[k] * sh->spr + wk->rip[k]] = k;
    load_state(sh, wk);
    refine(sh, wk);
    double other = score(sh, wk, distinct);
    if (other < 0 || (best >= 0 && other >= best))
        memcpy(wk->slot_item, wk->perm, (size_t)sh->spd * sizeof(int32_t));
}

static int cmp_pair(const void *x, const void *y)
{
    const int32_t *a = x, *b = y;   /* overlap desc, new block, old block asc */
    if (a[0] != b[0])
        return a[0] > b[0] ? -1 : 1;
    if (a[1] != b[1])
        return a[1] < b[1] ? -1 : 1;
    return a[2] < b[2] ? -1 : a[2] > b[2];
}

/* Re-order the n blocks of bs slots of `p2l` (a permutation of blocks
 * changes no load: they are interchangeable ranks or domains) so that each
 * lands where the current placement `cur` shares most experts with it:
 * greedy on overlap, largest first; blocks without overlap keep their
 * relative order in the positions left. */
static void match_blocks(const bal_shape_t *sh, int32_t *p2l, const int32_t *cur,
                         int n, int bs, bal_work_t *wk)
{
    int E = sh->E, np = 0;
    int32_t *cnt = wk->held, *occ = wk->ord, *to = wk->packn, *taken = wk->used;
    memset(cnt, 0, (size_t)n * E * sizeof(int32_t));
    for (int q = 0; q < n; q++)
        for (int j = 0; j < bs; j++)
            cnt[q * E + cur[q * bs + j]]++;
    for (int p = 0; p < n; p++)          /* occ: earlier copies in the block */
        for (int j = 0; j < bs; j++) {
            int o = 0;
            for (int i = 0; i < j; i++)
                o += p2l[p * bs + i] == p2l[p * bs + j];
            occ[p * bs + j] = o;
        }
    for (int p = 0; p < n; p++)
        for (int q = 0; q < n; q++) {
            int ov = 0;
            for (int j = 0; j < bs; j++)
                ov += cnt[q * E + p2l[p * bs + j]] > occ[p * bs + j];
            if (ov) {
                wk->pairs[3 * np] = ov;
                wk->pairs[3 * np + 1] = p;
                wk->pairs[3 * np + 2] = q;
                np++;
            }
        }
    qsort(wk->pairs, (size_t)np, 3 * sizeof(int32_t), cmp_pair);
    for (int i = 0; i < n; i++) {
        to[i] = -1;
        taken[i] = 0;
    }
    for (int i = 0; i < np; i++) {
        int p = wk->pairs[3 * i + 1], q = wk->pairs[3 * i + 2];
        if (to[p] < 0 && !taken[q]) {
            to[p] = q;
            taken[q] = 1;
        }
    }
    for (int p = 0, q = 0; p < n; p++)
        if (to[p] < 0) {
            while (taken[q])
                q++;
            to[p] = q;
            taken[q] = 1;
        }
    for (int p = 0; p < n; p++)
        memcpy(wk->perm + (size_t)to[p] * bs, p2l + (size_t)p * bs,
               (size_t)bs * sizeof(int32_t));
    memcpy(p2l, wk->perm, (size_t)n * bs * sizeof(int32_t));
}

/* Within one rank: an expert that was in a slot and stays on the rank
 * keeps that slot; the others fill the free slots in order. */
static void match_slots(int32_t *p2l, const int32_t *cur, int spr, int32_t *used,
                        int32_t *out)
{
    for (int j = 0; j < spr; j++) {
        used[j] = 0;
        out[j] = -1;
    }
    for (int j = 0; j < spr; j++)
        for (int k = 0; k < spr; k++)
            if (!used[k] && p2l[k] == cur[j]) {
                used[k] = 1;
                out[j] = cur[j];
                break;
            }
    for (int j = 0, k = 0; j < spr; j++)
        if (out[j] < 0) {
            while (used[k])
                k++;
            used[k] = 1;
            out[j] = p2l[k];
        }
    memcpy(p2l, out, (size_t)spr * sizeof(int32_t));
}

/* Items (wk->w, wk->p2m) for replica counts cnt[0..epd): each expert's
 * replicas in expert order, weight w/cnt; off[e] (may be NULL): the
 * first item of e. */
static void items_of(const bal_shape_t *sh, const double *w, const int32_t *cnt,
                     bal_work_t *wk, int32_t *off)
{
    int k = 0;
    for (int e = 0; e < sh->epd; e++) {
        if (off)
            off[e] = k;
        for (int j = 0; j < cnt[e]; j++) {
            wk->p2m[k] = e;
            wk->w[k++] = w[e] / cnt[e];
        }
    }
}

/* Does expert a with replicas of x come before b with y (heavier first,
 * then the lower index)? */
static int expert_before(double x, int a, double y, int b)
{
    return x > y || (x == y && a < b);
}

/* wk->ord for counts cnt with one replica moved from a to b (applied to
 * cnt already), without sorting: eo holds the experts in the order of
 * the counts before the move; a and b are taken out and put back where
 * their new replicas belong.  The same order as epx__bal_sort_desc on
 * items_of's items: equal weights keep item order, which is expert
 * order. */
static void order_moved(const bal_shape_t *sh, const double *w,
                        const int32_t *cnt, const int32_t *eo, int a, int b,
                        const int32_t *off, bal_work_t *wk)
{
    double xa = w[a] / cnt[a], xb = w[b] / cnt[b];
    int k = 0, pa = 0, pb = 0;
    /* Of the two, which goes first. */
    int f = expert_before(xa, a, xb, b) ? a : b, g = f == a ? b : a;
    double xf = f == a ? xa : xb, xg = f == a ? xb : xa;
    for (int i = 0; i <= sh->epd; i++) {
        int e = i < sh->epd ? eo[i] : -1;
        if (e == a || e == b)
            continue;
        double x = e >= 0 ? w[e] / cnt[e] : 0;
        if (!pa && (e < 0 || expert_before(xf, f, x, e))) {
            for (int j = 0; j < cnt[f]; j++)
                wk->ord[k++] = off[f] + j;
            pa = 1;
        }
        if (pa && !pb && (e < 0 || expert_before(xg, g, x, e))) {
            for (int j = 0; j < cnt[g]; j++)
                wk->ord[k++] = off[g] + j;
            pb = 1;
        }
        if (e >= 0)
            for (int j = 0; j < cnt[e]; j++)
                wk->ord[k++] = off[e] + j;
    }
}

/* Count moves with a repack (three or more slots per rank).  The local
 * search moves a replica in place, under a fixed packing, and misses
 * moves that pay only once every replica is packed again (72 ranks x 4
 * slots, Zipf 1.0: up to 3.4 % above the proven bound before).  From the
 * best placement's counts, each move of one replica from a donor (the
 * RC_DONORS experts whose replicas grow least, w/(c-1)) to a receiver (the
 * experts of the heaviest rank and the RC_HOT other largest replicas) is
 * screened by the distinct packing alone; the best one is packed again
 * with the swap refinement, improved by the local search and kept when
 * strictly below the best so far.  Repeat while that happens, at most
 * RC_ROUNDS times.  Leaves wk->cand and *best.  (plan_domain skips it
 * where the best is within RC_NEAR of epx__bal_lower_bound, hence of
 * the optimum, as Zipf 0.6 layers at 72 x 4 are.) */
#define RC_DONORS 4
#define RC_HOT 2
#define RC_ROUNDS 8
#define RC_NEAR 0.01                   /* of the lower bound: skip it all */
#define RC_RECV 16                     /* spr distinct + RC_HOT, at most */

/* Is e among the n entries of list? */
static int listed(const int *list, int n, int e)
{
    for (int i = 0; i < n; i++)
        if (list[i] == e)
            return 1;
    return 0;
}

static void recount(const bal_shape_t *sh, int distinct, long steps,
                    double *best, bal_work_t *wk)
{
    bal_ls_t *ls = wk->ls;
    const double *w = wk->wd;
    int epd = sh->epd, spd = sh->spd, spr = sh->spr;
    int32_t *cnt = wk->mcnt;
    int recv[RC_RECV], don[RC_DONORS];
    for (int round = 0; round < RC_ROUNDS; round++) {
        memset(cnt, 0, (size_t)epd * sizeof(int32_t));
        for (int s = 0; s < spd; s++)
            cnt[wk->cand[s]]++;
        int h = 0, nr = 0, nd = 0;
        double hl = -1;
        for (int r = 0; r < sh->rpd; r++) {
            double x = 0;
            for (int j = 0; j < spr; j++)
                x += w[wk->cand[r * spr + j]] / cnt[wk->cand[r * spr + j]];
            if (x > hl) {
                hl = x;
                h = r;
            }
        }
        for (int j = 0; j < spr && nr < RC_RECV - RC_HOT; j++)
            if (!listed(recv, nr, wk->cand[h * spr + j]))
                recv[nr++] = wk->cand[h * spr + j];
        for (int k = 0; k < RC_HOT; k++) {
            int b = -1;
            for (int e = 0; e < epd; e++)
                if (!listed(recv, nr, e) &&
                    (b < 0 || w[e] / cnt[e] > w[b] / cnt[b]))
                    b = e;
            if (b >= 0)
                recv[nr++] = b;
        }
        for (int k = 0; k < RC_DONORS; k++) {
            int a = -1;
            for (int e = 0; e < epd; e++)
                if (cnt[e] > 1 && !listed(don, nd, e) &&
                    (a < 0 || w[e] / (cnt[e] - 1) < w[a] / (cnt[a] - 1)))
                    a = e;
            if (a >= 0)
                don[nd++] = a;
        }
        /* The experts by replica weight, for order_moved. */
        int32_t *eo = wk->prank;
        for (int e = 0; e < epd; e++)
            wk->packw[e] = w[e] / cnt[e];
        epx__bal_sort_desc(wk->packw, epd, eo, wk->tmp);
        int ba = -1, bb = -1;
        double bs = 0;
        for (int i = 0; i < nr; i++)
            for (int k = 0; k < nd; k++) {
                int a = don[k], b = recv[i];
                if (a == b || (distinct && cnt[b] >= sh->rpd))
                    continue;
                cnt[a]--;
                cnt[b]++;
                items_of(sh, w, cnt, wk, wk->tmp);
                order_moved(sh, w, cnt, eo, a, b, wk->tmp, wk);
                int dup = pack_distinct(sh, wk, 1);
                cnt[a]++;
                cnt[b]--;
                double mx = 0;
                for (int r = 0; r < sh->rpd; r++)
                    mx = wk->packw[r] > mx ? wk->packw[r] : mx;
                if (!(distinct && dup) && (ba < 0 || mx < bs)) {
                    bs = mx;
                    ba = a;
                    bb = b;
                }
            }
        if (ba < 0)
            return;
        cnt[ba]--;
        cnt[bb]++;
        items_of(sh, w, cnt, wk, NULL);
        pack_distinct(sh, wk, 0);
        refine(sh, wk);
        if (score(sh, wk, distinct) < 0)
            return;
        for (int s = 0; s < spd; s++)
            wk->perm[s] = wk->p2m[wk->slot_item[s]];
        ls->distinct = distinct;
        epx__bal_ls_load(ls, wk->perm, NULL);
        epx__bal_ls_improve(ls, steps);
        if (!(epx__bal_ls_max(ls) < *best * (1 - 1e-9)))
            return;
        memcpy(wk->cand, ls->slot, (size_t)spd * sizeof(int32_t));
        *best = epx__bal_ls_max(ls);
    }
}

/* The best of the candidates for one domain, into wk->cand (domain expert
 * indices): the distinct packing of capped replicas, and the DeepSeek
 * policy's own plan of the domain, each improved by local search; then,
 * on small domains, the exact search. */
static void plan_domain(const bal_shape_t *sh, int d, int distinct,
                        bal_work_t *wk)
{
    bal_ls_t *ls = wk->ls;
    const double *w = wk->wd;
    int spd = sh->spd;
    long steps = 4L * spd + 64;
    ls->E = sh->epd;
    ls->R = sh->rpd;
    ls->rpd = sh->rpd;
    ls->spr = sh->spr;
    ls->w = w;
    /* Candidate A (in wk->cand, from pack_domain's slot_item). */
    for (int s = 0; s < spd; s++)
        wk->cand[s] = wk->p2m[wk->slot_item[s]];
    ls->distinct = distinct;
    epx__bal_ls_load(ls, wk->cand, NULL);
    epx__bal_ls_improve(ls, steps);
    memcpy(wk->cand, ls->slot, (size_t)spd * sizeof(int32_t));
    double best = epx__bal_ls_max(ls);
    /* Candidate B: the DeepSeek plan of this domain, which may put two
     * replicas of an expert on one rank; taken only when strictly better,
     * so the result is never above the DeepSeek policy's. */
    for (int s = 0; s < spd; s++)
        wk->perm[s] = wk->inv[wk->ds_p2l[d * spd + s]];
    ls->distinct = 0;
    epx__bal_ls_load(ls, wk->perm, NULL);
    if (epx__bal_ls_max(ls) >= best)
        ;                      /* A is already at or below it */
    else if (epx__bal_ls_improve(ls, steps), epx__bal_ls_max(ls) <
                                                 best * (1 - 1e-9)) {
        memcpy(wk->cand, ls->slot, (size_t)spd * sizeof(int32_t));
        best = epx__bal_ls_max(ls);
    }
    /* Two slots per rank: counts searched under the sorted pairing (the
     * best packing for given counts), from candidate A's counts; taken
     * when strictly better, like B. */
    if (sh->spr == 2 && sh->rpd > 1) {
        epx__bal_pair_plan(w, sh->epd, sh->rpd, wk->mcnt, wk->ord, wk->tmp,
                           wk->perm, wk->used, wk->slot_item);
        int twin = 0;
        for (int r = 0; r < sh->rpd; r++)
            twin |= wk->slot_item[2 * r] == wk->slot_item[2 * r + 1];
        ls->distinct = distinct && !twin;
        epx__bal_ls_load(ls, wk->slot_item, NULL);
        epx__bal_ls_improve(ls, steps);
        if (epx__bal_ls_max(ls) < best * (1 - 1e-9)) {
            memcpy(wk->cand, ls->slot, (size_t)spd * sizeof(int32_t));
            best = epx__bal_ls_max(ls);
        }
    }
    /* Three or more slots per rank: count moves with a repack, unless
     * the best is already within RC_NEAR of the simple lower bound. */
    if (sh->spr >= 3 && sh->rpd > 1 &&
        best > epx__bal_lower_bound(w, sh->epd, spd, sh->rpd) * (1 + RC_NEAR))
        recount(sh, distinct, steps, &best, wk);
    /* Small domains: exact search, from the best so far. */
    if (spd <= BAL_EXACT_MAX_SLOTS && sh->epd <= BAL_EXACT_MAX_EXPERTS) {
        int complete;
        double lb = epx__bal_lower_bound(w, sh->epd, spd, sh->rpd);
        epx__bal_exact(w, sh->epd, sh->rpd, sh->spr, best, lb,
                       BAL_EXACT_NODES, wk->cand, &complete);
    }
}

void epx__plan_epx(const bal_shape_t *sh, const double *load,
                   const int32_t *current, bal_work_t *wk, int32_t *phy2log,
                   int32_t *phyrank, int32_t *logcnt)
{
    /* A replica per rank at most, when the ranks have room for that. */
    int cap = sh->spr <= sh->epd ? sh->rpd : INT_MAX;
    epx__plan_deepseek(sh, load, wk, wk->ds_p2l, wk->ds_rank, wk->ds_cnt);
    epx__bal_groups(sh, load, wk);
    for (int d = 0; d < sh->D; d++) {
        const int32_t *m2l = wk->mlog2log + (size_t)d * sh->epd;
        for (int i = 0; i < sh->epd; i++) {
            wk->w[i] = load[m2l[i]];
            wk->wd[i] = load[m2l[i]];
            wk->inv[m2l[i]] = i;
        }
        epx__bal_replicate(wk->w, sh->epd, sh->spd, cap, wk->p2m, wk->prank,
                           wk->mcnt);
        for (int k = 0; k < sh->spd; k++)
            wk->w[k] = load[m2l[wk->p2m[k]]] / wk->mcnt[wk->p2m[k]];
        pack_domain(sh, wk, cap == sh->rpd);
        plan_domain(sh, d, cap == sh->rpd, wk);
        for (int s = 0; s < sh->spd; s++)
            phy2log[d * sh->spd + s] = m2l[wk->cand[s]];
    }
    memset(logcnt, 0, (size_t)sh->E * sizeof(int32_t));
    for (int s = 0; s < sh->S; s++)
        logcnt[phy2log[s]]++;
    if (current) {
        /* Greedy matching is not optimal: keep the plan as planned if it
         * happens to move fewer slots. */
        int32_t *raw = wk->slot_item;
        memcpy(raw, phy2log, (size_t)sh->S * sizeof(int32_t));
        if (sh->D > 1)
            match_blocks(sh, phy2log, current, sh->D, sh->spd, wk);
        for (int d = 0; d < sh->D; d++)
            match_blocks(sh, phy2log + (size_t)d * sh->spd,
                         current + (size_t)d * sh->spd, sh->rpd, sh->spr, wk);
        for (int r = 0; r < sh->R; r++)
            match_slots(phy2log + (size_t)r * sh->spr,
                        current + (size_t)r * sh->spr, sh->spr, wk->used,
                        wk->perm);
        int kept = 0, plain = 0;
        for (int s = 0; s < sh->S; s++) {
            kept += phy2log[s] != current[s];
            plain += raw[s] != current[s];
        }
        if (plain < kept)
            memcpy(phy2log, raw, (size_t)sh->S * sizeof(int32_t));
    }
    /* Replica numbers in slot order. */
    int32_t *seen = wk->mcnt;
    memset(seen, 0, (size_t)sh->E * sizeof(int32_t));
    for (int s = 0; s < sh->S; s++)
        phyrank[s] = seen[phy2log[s]]++;
}
