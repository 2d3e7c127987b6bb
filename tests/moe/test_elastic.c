/*
 * Elastic expert parallelism (EPX_MOE_ELASTIC): placements that leave
 * experts out (lost), num_slots below num_experts.  Every rank draws the
 * same random placement and every rank's routing (fresh per seed), and
 * checks against a plain reference written here from the contract:
 *   - the lost mask (epx_dispatch_args_t.lost) entry for entry;
 *   - epx_moe_expert_lost for every expert;
 *   - the rows it received (sources, tokens, weights, x, local ids; in
 *     expert-major and low latency the segments and padding), where a
 *     lost entry goes nowhere, so a token whose every entry is lost or -1
 *     reaches no rank;
 *   - combine: out[t] = sum of w * x * (e + 1) over the entries that were
 *     dispatched (integer data, so any summation order gives the same
 *     bits); a token with every expert lost gets zeros;
 *   - the statistics: lost experts' demand counted per logical expert, not
 *     in any slot.
 * Rounds: fresh, cached with new data, zero tokens everywhere.  Modes:
 * throughput token-major and expert-major (local-first and round-robin),
 * low latency, hierarchical (2 and 3 host domains); 4 and 6 ranks.  Also
 * refusals: a placement missing an expert without the flag, num_slots
 * below num_experts without it, the flag without num_slots, out-of-range
 * ids, disagreeing placements; and the flag on a device rank, refused no
 * more (device ranks run elastic cases in tests/moe/test_executors*.c).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/epx_test.h"

enum { H = 5, TMAX = 8, MAXR = 8, MAXE = 32, MAXS = 64, MAXK = 4 };

typedef struct ecase {
    int R, E, spr, K, nlost;
    epx_mode_t mode;
    epx_layout_t layout;
    epx_replica_policy_t policy;
    const char *topo;          /* tests/moe/data/...: host domains, or NULL */
    int ndom;                  /* domains: contiguous blocks of R / ndom */
} ecase_t;

/* What every rank knows of the case: placement, lost experts. */
typedef struct world {
    const ecase_t *c;
    int S;
    uint64_t seed;
    int32_t p2l[MAXS];
    uint8_t lost[MAXE];
    int32_t lostlist[MAXE];
} world_t;

static void world_make(const ecase_t *c, world_t *w)
{
    memset(w, 0, sizeof(*w));
    w->c = c;
    w->S = c->R * c->spr;
    w->seed = epxt_seed();
    epxt_rng_t rng = { epxt_hash(w->seed, 1, (uint64_t)c->R, (uint64_t)c->E, 0) };
    int32_t perm[MAXE];
    for (int e = 0; e < c->E; e++)
        perm[e] = e;
    for (int e = c->E - 1; e > 0; e--) {
        int j = (int)epxt_below(&rng, (uint64_t)e + 1);
        int32_t x = perm[e]; perm[e] = perm[j]; perm[j] = x;
    }
    for (int i = 0; i < c->nlost; i++) {
        w->lost[perm[i]] = 1;
        w->lostlist[i] = perm[i];
    }
    const int nlive = c->E - c->nlost;   /* <= S: each live expert a slot */
    for (int u = 0; u < w->S; u++)
        w->p2l[u] = perm[c->nlost + u % nlive];
    for (int u = w->S - 1; u > 0; u--) {  /* replicas land anywhere */
        int j = (int)epxt_below(&rng, (uint64_t)u + 1);
        int32_t x = w->p2l[u]; w->p2l[u] = w->p2l[j]; w->p2l[j] = x;
    }
}

static int tokens(const world_t *w, int rank, int round)
{
    if (round == 2)
        return 0;                        /* nobody sends anything */
    return rank % 3 == 2 ? 0 : 5 + (int)(epxt_hash(w->seed, 2, (uint64_t)rank,
                                                    0, 0) % 4);
}

/* Routing of `rank` (the same in rounds 0 and 1: the cached round).
 * Token 0: every entry a lost expert; token 1: -1 and lost entries
 * alternating; the rest random distinct experts, some -1. */
static void routing(const world_t *w, int rank, int32_t *idx, float *wt)
{
    const ecase_t *c = w->c;
    const int K = c->K, T = tokens(w, rank, 0);
    epxt_rng_t rng = { epxt_hash(w->seed, 3, (uint64_t)rank, 0, 0) };
    for (int t = 0; t < T; t++)
        for (int k = 0; k < K; k++) {
            int32_t e;
            int again;
            do {
                e = t < 2 ? w->lostlist[epxt_below(&rng, (uint64_t)c->nlost)]
                          : (int32_t)epxt_below(&rng, (uint64_t)c->E);
                again = 0;
                for (int j = 0; j < k; j++)
                    again |= idx[t * K + j] == e;
            } while (again);
            if ((t == 1 && k % 2 == 0) || (t >= 2 && epxt_below(&rng, 5) == 0))
                e = -1;
            idx[t * K + k] = e;
            wt[t * K + k] = (float)(1 + (int)epxt_below(&rng, 2));
        }
}

static float xval(const world_t *w, int rank, int round, int t, int h)
{
    return (float)((int)(epxt_hash(w->seed, 4, (uint64_t)rank,
                                   (uint64_t)round, (uint64_t)(t * H + h)) % 9) - 4);
}

/* The replica rule of epx.h, written out: slots of e ascending;
 * local-first: on the source rank, else in its domain, else any,
 * candidate (source mod count); round-robin: token mod count.  -1: lost. */
static int slot_of(const world_t *w, int src, int t, int e)
{
    const ecase_t *c = w->c;
    if (e < 0 || w->lost[e])
        return -1;
    int reps[MAXS], n = 0, tier[MAXS], best = 3, nb = 0;
    const int L = c->R / c->ndom;
    for (int u = 0; u < w->S; u++)
        if (w->p2l[u] == e) {
            int r = u / c->spr;
            tier[n] = r == src ? 0 : r / L == src / L ? 1 : 2;
            reps[n++] = u;
        }
    if (c->policy == EPX_REPLICA_ROUND_ROBIN)
        return reps[t % n];
    for (int i = 0; i < n; i++)
        best = tier[i] < best ? tier[i] : best;
    for (int i = 0; i < n; i++)
        nb += tier[i] == best;
    int want = src % nb;
    for (int i = 0; i < n; i++)
        if (tier[i] == best && want-- == 0)
            return reps[i];
    return -1;
}

static int make_engine(epx_comm_t *comm, const world_t *w, epx_moe_t **m)
{
    const ecase_t *c = w->c;
    epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
    p.hidden = H;
    p.num_experts = c->E;
    p.topk = c->K;
    p.max_tokens_per_rank = TMAX;
    p.dtype = EPX_DTYPE_FP32;
    p.layout = c->layout;
    p.expert_alignment = c->mode == EPX_MODE_LOW_LATENCY ? 1 : 2;
    p.num_layers = 2;
    p.num_slots = w->S;
    p.mode = c->mode;
    p.flags = EPX_MOE_ELASTIC | (c->topo ? EPX_MOE_HIERARCHICAL : 0u);
    CHECK_OK(epx_moe_create(comm, &p, m));
    return 0;
}

/* Received rows against the reference: every source's entries whose slot
 * is on this rank. */
static int check_recv(const world_t *w, int me, int round, const epx_recv_t *rv)
{
    const ecase_t *c = w->c;
    const int K = c->K, R = c->R, first = me * c->spr, nl = c->spr;
    const int ll = c->mode == EPX_MODE_LOW_LATENCY;
    const int tm = c->layout == EPX_LAYOUT_TOKEN_MAJOR;
    CHECK(rv->num_local_experts == nl && rv->first_local_expert == first);
    for (int j = 0; j < nl; j++)
        CHECK(rv->local_experts[j] == w->p2l[first + j]);
    /* Per local slot and source: the (token, weight) rows, in token order. */
    int cnt[MAXS][MAXR] = { { 0 } }, tok[MAXS][MAXR][TMAX];
    float wgt[MAXS][MAXR][TMAX];
    int64_t row = 0;
    const float *x = rv->x.data;
    for (int s = 0; s < R; s++) {
        int32_t idx[TMAX * MAXK];
        float wt[TMAX * MAXK];
        routing(w, s, idx, wt);
        for (int t = 0; t < tokens(w, s, round); t++) {
            int here = 0, sl[MAXK];
            for (int k = 0; k < K; k++) {
                sl[k] = slot_of(w, s, t, idx[t * K + k]);
                if (sl[k] >= 0 && sl[k] / c->spr == me) {
                    int j = sl[k] - first;
                    tok[j][s][cnt[j][s]] = t;
                    wgt[j][s][cnt[j][s]++] = wt[t * K + k];
                    here = 1;
                }
            }
            if (!here || !tm)
                continue;
            CHECKF(row < rv->num_rows && rv->src_rank[row] == s &&
                   rv->src_token[row] == t, "row %lld from %d:%d, want %d:%d",
                   (long long)row, row < rv->num_rows ? rv->src_rank[row] : -9,
                   row < rv->num_rows ? rv->src_token[row] : -9, s, t);
            for (int k = 0; k < K; k++) {
                int on = sl[k] >= 0 && sl[k] / c->spr == me;
                CHECKF(rv->topk_idx[row * K + k] == (on ? sl[k] - first : -1) &&
                       rv->topk_weights[row * K + k] == (on ? wt[t * K + k] : 0.0f),
                       "row %lld entry %d: local %d weight %g, want %d %g",
                       (long long)row, k, rv->topk_idx[row * K + k],
                       (double)rv->topk_weights[row * K + k],
                       on ? sl[k] - first : -1, on ? (double)wt[t * K + k] : 0.0);
            }
            for (int h = 0; h < H; h++)
                CHECK(x[row * H + h] == xval(w, s, round, t, h));
            row++;
        }
    }
    if (tm) {
        CHECKF(row == rv->num_rows, "%lld rows, want %lld",
               (long long)rv->num_rows, (long long)row);
        return 0;
    }
    /* Expert-major (throughput: sources in order, aligned segments; low
     * latency: a range of `cap` rows per source, padding after). */
    const int64_t cap = rv->capacity, align = 2;
    int64_t at = 0;
    for (int j = 0; j < nl; j++) {
        int64_t n = 0;
        for (int s = 0; s < R; s++)
            n += cnt[j][s];
        CHECKF(rv->expert_counts[j] == n, "local slot %d: %lld rows, want %lld",
               j, (long long)rv->expert_counts[j], (long long)n);
        CHECK(rv->expert_offsets[j] == (ll ? j * R * cap : at));
        int64_t r = rv->expert_offsets[j];
        for (int s = 0; s < R; s++) {
            for (int i = 0; i < cnt[j][s]; i++, r++) {
                CHECKF(rv->src_rank[r] == s && rv->src_token[r] == tok[j][s][i] &&
                       rv->topk_weights[r] == wgt[j][s][i],
                       "slot %d row %lld: %d:%d w %g, want %d:%d w %g", j,
                       (long long)r, rv->src_rank[r], rv->src_token[r],
                       (double)rv->topk_weights[r], s, tok[j][s][i],
                       (double)wgt[j][s][i]);
                for (int h = 0; h < H; h++)
                    CHECK(x[r * H + h] == xval(w, s, round, tok[j][s][i], h));
            }
            if (ll)
                for (; r < rv->expert_offsets[j] + (s + 1) * cap; r++)
                    CHECK(rv->src_rank[r] == -1 && rv->src_token[r] == -1);
        }
        at = (at + n + align - 1) / align * align;
        if (!ll)
            for (; r < at; r++)
                CHECK(rv->src_rank[r] == -1);
    }
    CHECK(rv->num_rows == (ll ? nl * R * cap : at));
    return 0;
}

/* Expert outputs in place: token-major rows sum their local entries
 * (w * x * (e + 1)); expert-major rows are x * (e + 1), weighted by
 * combine. */
static void experts(const world_t *w, const epx_recv_t *rv)
{
    const int K = w->c->K;
    float *y = rv->x.data;
    if (w->c->layout == EPX_LAYOUT_TOKEN_MAJOR) {
        for (int64_t r = 0; r < rv->num_rows; r++) {
            float f = 0;
            for (int k = 0; k < K; k++) {
                int j = rv->topk_idx[r * K + k];
                if (j >= 0)
                    f += rv->topk_weights[r * K + k] *
                         (float)(rv->local_experts[j] + 1);
            }
            for (int h = 0; h < H; h++)
                y[r * H + h] *= f;
        }
        return;
    }
    for (int j = 0; j < rv->num_local_experts; j++) {
        int64_t end = j + 1 < rv->num_local_experts ? rv->expert_offsets[j + 1]
                                                    : rv->num_rows;
        for (int64_t r = rv->expert_offsets[j]; r < end; r++)
            if (rv->src_rank[r] >= 0)
                for (int h = 0; h < H; h++)
                    y[r * H + h] *= (float)(rv->local_experts[j] + 1);
    }
}

static int elastic_rank(epx_comm_t *comm, void *arg)
{
    world_t w;
    world_make(arg, &w);
    const ecase_t *c = w.c;
    const int me = epx_comm_rank(comm), K = c->K, E = c->E;
    epx_moe_t *m;
    CHECK_CALL(make_engine(comm, &w, &m));

    /* Layer 1 has no placement yet: nothing is known (-1). */
    CHECK(epx_moe_expert_lost(m, 1, 0) == -1);
    CHECK(epx_moe_expert_lost(m, 2, 0) == -1 && epx_moe_expert_lost(m, 1, E) == -1);
    /* Rank 0 loses one expert more than the others (slot 0's expert
     * replaced everywhere by another live one): every rank refuses the
     * dispatch (the ranks must agree on the placement). */
    int32_t other[MAXS], gone = w.p2l[0], repl = -1;
    for (int u = 0; u < w.S; u++)
        if (w.p2l[u] != gone)
            repl = w.p2l[u];
    for (int u = 0; u < w.S; u++)
        other[u] = w.p2l[u] == gone ? repl : w.p2l[u];
    CHECK_OK(epx_moe_set_placement(m, 1, me == 0 ? other : w.p2l, c->policy));
    int32_t idx[TMAX * MAXK];
    float wt[TMAX * MAXK], xb[TMAX * H], out[TMAX * H];
    routing(&w, me, idx, wt);
    uint8_t lost[TMAX * MAXK + 1];
    epx_dispatch_args_t a = EPX_DISPATCH_ARGS_INIT;
    a.topk_idx = (epx_tensor_t){ idx, EPX_DTYPE_INT32, 0, K };
    a.topk_weights = (epx_tensor_t){ wt, EPX_DTYPE_FP32, 0, K };
    a.x = (epx_tensor_t){ xb, EPX_DTYPE_FP32, 0, H };
    a.layer = 1;
    a.lost = lost;
    epx_handle_t *hd = NULL;
    if (c->mode == EPX_MODE_THROUGHPUT) {   /* low latency checks at recv */
        CHECK_ST(epx_dispatch_send(m, &a, &hd), EPX_ERR_MISMATCH);
        CHECK(strstr(epx_last_error(), "placement") != NULL);
    }
    CHECK_OK(epx_moe_set_placement(m, 1, w.p2l, c->policy));
    for (int e = 0; e < E; e++)
        CHECKF(epx_moe_expert_lost(m, 1, e) == w.lost[e],
               "expert %d: lost %d, want %d", e, epx_moe_expert_lost(m, 1, e),
               w.lost[e]);

    /* Ids out of range, and a lost expert named twice, stay errors (every
     * rank passes one, so every rank refuses its own). */
    int32_t bad[MAXK];
    float bw[MAXK];
    for (int k = 0; k < K; k++) {
        bad[k] = -1;
        bw[k] = 1;
    }
    epx_dispatch_args_t b = a;
    b.x = (epx_tensor_t){ xb, EPX_DTYPE_FP32, 1, H };
    b.topk_idx = (epx_tensor_t){ bad, EPX_DTYPE_INT32, 1, K };
    b.topk_weights = (epx_tensor_t){ bw, EPX_DTYPE_FP32, 1, K };
    memset(xb, 0, sizeof(xb));
    bad[K - 1] = E;
    memset(lost, 0xaa, sizeof(lost));
    CHECK_ST(epx_dispatch_send(m, &b, &hd), EPX_ERR_INVALID);
    CHECK(strstr(epx_last_error(), "out of range") != NULL);
    CHECK(lost[0] == 0xaa);                  /* outputs only on success */
    bad[K - 1] = bad[0] = w.lostlist[0];
    CHECK_ST(epx_dispatch_send(m, &b, &hd), EPX_ERR_INVALID);
    CHECK(strstr(epx_last_error(), "twice") != NULL);

    for (int round = 0; round < 3; round++) {
        const int T = tokens(&w, me, round);
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++)
                xb[t * H + h] = xval(&w, me, round, t, h);
        a.x.rows = a.topk_idx.rows = a.topk_weights.rows = T;
        a.flags = round == 1 && c->mode == EPX_MODE_THROUGHPUT
                      ? EPX_DISPATCH_CACHED : 0u;
        memset(lost, 0xaa, sizeof(lost));
        epx_recv_t rv = { .struct_size = sizeof(rv) };
        CHECK_OK(epx_dispatch_send(m, &a, &hd));
        for (int i = 0; i < T * K; i++)
            CHECKF(lost[i] == (idx[i] >= 0 && w.lost[idx[i]]),
                   "round %d: lost[%d][%d] = %d for expert %d", round, i / K,
                   i % K, lost[i], idx[i]);
        CHECK(T == 0 || lost[T * K] == 0xaa);   /* nothing past [T, K] */
        CHECK_OK(epx_dispatch_recv(m, hd, &rv));
        CHECK_CALL(check_recv(&w, me, round, &rv));
        experts(&w, &rv);
        epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
        ca.y = rv.x;
        CHECK_OK(epx_combine_send(m, hd, &ca));
        memset(out, 0x7f, sizeof(out));
        epx_tensor_t o = { out, EPX_DTYPE_FP32, T, H };
        CHECK_OK(epx_combine_recv(m, hd, &o));
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++) {
                float want = 0;
                for (int k = 0; k < K; k++) {
                    int e = idx[t * K + k];
                    if (e >= 0 && !w.lost[e])
                        want += wt[t * K + k] * xb[t * H + h] * (float)(e + 1);
                }
                CHECKF(out[t * H + h] == want, "round %d out[%d][%d] = %g, "
                       "want %g", round, t, h, (double)out[t * H + h],
                       (double)want);
            }
        if (!(round == 0 && c->mode == EPX_MODE_THROUGHPUT)) {
            epx_handle_release(hd);     /* round 1 reuses round 0's */
            hd = NULL;
        }
    }
    /* Statistics of layer 1 (rounds 0 and 1): the demand for every
     * expert, lost ones included; slots count what was sent. */
    epx_moe_stats_t st = { .struct_size = sizeof(st) };
    CHECK_OK(epx_moe_stats(m, 0, &st));
    const int T0 = tokens(&w, me, 0);
    int64_t sent = 0, slots = 0;
    for (int e = 0; e < E; e++) {
        int64_t want = 0;
        for (int i = 0; i < T0 * K; i++)
            want += idx[i] == e;
        sent += w.lost[e] ? 0 : 2 * want;
        CHECKF(st.window[(size_t)E + e] == 2 * want, "expert %d: %lld "
               "recorded, want %lld", e, (long long)st.window[(size_t)E + e],
               (long long)(2 * want));
    }
    for (int u = 0; u < w.S; u++)
        slots += st.physical[(size_t)w.S + u];
    CHECK(slots == sent);
    epx_handle_release(hd);
    epx_moe_destroy(m);
    return 0;
}

/* Without the flag nothing changes: a placement must hold every expert,
 * num_slots must be >= num_experts; the flag needs num_slots and a host
 * rank. */
static int refusals_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    const int R = epx_comm_size(comm);
    epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
    p.hidden = H;
    p.num_experts = 2 * R;
    p.topk = 2;
    p.max_tokens_per_rank = TMAX;
    p.dtype = EPX_DTYPE_FP32;
    p.num_slots = 2 * R;
    epx_moe_t *m;
    CHECK_OK(epx_moe_create(comm, &p, &m));
    int32_t p2l[MAXS];
    for (int u = 0; u < p.num_slots; u++)
        p2l[u] = u == 3 ? 2 : u;              /* expert 3 left out */
    CHECK_ST(epx_moe_set_placement(m, 0, p2l, EPX_REPLICA_LOCAL_FIRST),
             EPX_ERR_INVALID);
    CHECK(strstr(epx_last_error(), "expert 3 has no slot") != NULL);
    CHECK(epx_moe_expert_lost(m, 0, 3) == -1);   /* nothing installed */
    p2l[3] = 3;
    CHECK_OK(epx_moe_set_placement(m, 0, p2l, EPX_REPLICA_LOCAL_FIRST));
    CHECK(epx_moe_expert_lost(m, 0, 3) == 0);
    epx_moe_destroy(m);

    p.num_slots = R;                          /* below num_experts */
    CHECK_ST(epx_moe_create(comm, &p, &m), EPX_ERR_INVALID);
    CHECK(strstr(epx_last_error(), "num_slots") != NULL);
    p.flags = EPX_MOE_ELASTIC;
    CHECK_OK(epx_moe_create(comm, &p, &m));   /* with the flag: fine */
    /* Experts R.. are lost: weight migration may move the live ones but
     * cannot bring a lost one back (no replica holds its weights). */
    const int me = epx_comm_rank(comm);
    for (int u = 0; u < R; u++)
        p2l[u] = u;
    CHECK_OK(epx_moe_set_placement(m, 0, p2l, EPX_REPLICA_LOCAL_FIRST));
    CHECK(epx_moe_expert_lost(m, 0, R - 1) == 0 && epx_moe_expert_lost(m, 0, R) == 1);
    int64_t wbuf = 100 + me;                  /* the weights of expert me */
    CHECK_OK(epx_moe_register_weights(m, 0, &wbuf, sizeof(wbuf)));
    p2l[0] = R;
    CHECK_ST(epx_moe_rebalance(m, 0, p2l, EPX_REPLICA_LOCAL_FIRST, NULL),
             EPX_ERR_INVALID);
    CHECK(strstr(epx_last_error(), "lost") != NULL);
    for (int u = 0; u < R; u++)
        p2l[u] = (u + 1) % R;                 /* rotate the live experts */
    CHECK_OK(epx_moe_rebalance(m, 0, p2l, EPX_REPLICA_LOCAL_FIRST, NULL));
    CHECK(wbuf == 100 + (me + 1) % R);
    epx_moe_destroy(m);
    p.num_slots = 0;
    CHECK_ST(epx_moe_create(comm, &p, &m), EPX_ERR_INVALID);
    CHECK(strstr(epx_last_error(), "EPX_MOE_ELASTIC needs num_slots") != NULL);
    /* Device ranks take the flag too (tests/moe/test_executors*.c run
     * it): an engine where there is a GPU, else only the missing GPU (or
     * CUDA) refused, never the flag. */
    p.num_slots = R;
    p.device = 0;
    epx_status_t dst = epx_moe_create(comm, &p, &m);
    CHECKF(dst == EPX_OK || (dst == EPX_ERR_UNSUPPORTED &&
                             !strstr(epx_last_error(), "ELASTIC")),
           "device rank: %d, %s", (int)dst, epx_last_error());
    if (dst == EPX_OK)
        epx_moe_destroy(m);
    /* An engine without slots loses nothing; the communicator is fine. */
    p = (epx_moe_params_t)EPX_MOE_PARAMS_INIT;
    p.hidden = H;
    p.num_experts = 2 * R;
    p.topk = 2;
    p.max_tokens_per_rank = TMAX;
    CHECK_OK(epx_moe_create(comm, &p, &m));
    CHECK(epx_moe_expert_lost(m, 0, 1) == 0 && epx_moe_expert_lost(NULL, 0, 1) == -1);
    epx_moe_destroy(m);
    return 0;
}

static void run_case(void **state)
{
    const ecase_t *c = *state;
    char path[1024];
    if (c->topo) {
        snprintf(path, sizeof(path), "%s/%s", EPX_TEST_SRCDIR, c->topo);
        setenv("EPX_TOPO_FILE", path, 1);
    }
    epx_status_t st = epxt_launch(c->R, 0, elastic_rank, *state, NULL);
    unsetenv("EPX_TOPO_FILE");
    assert_int_equal(st, EPX_OK);
}

static void refusals(void **state)
{
    (void)state;
    assert_int_equal(epxt_launch(3, 0, refusals_rank, NULL, NULL), EPX_OK);
}

#define TP EPX_MODE_THROUGHPUT
#define LL EPX_MODE_LOW_LATENCY
#define TM EPX_LAYOUT_TOKEN_MAJOR
#define EM EPX_LAYOUT_EXPERT_MAJOR
#define LF EPX_REPLICA_LOCAL_FIRST
#define RR EPX_REPLICA_ROUND_ROBIN
/* R, E, slots per rank, K, lost: 4 x 4 = 16 slots for 20 experts (6 lost,
 * so some live ones have two replicas); 6 x 2 = 12 slots for 16 (5 lost). */
static const ecase_t cases[] = {
    { 4, 20, 4, 4, 6, TP, TM, LF, NULL, 1 },
    { 6, 16, 2, 3, 5, TP, TM, RR, NULL, 1 },
    { 4, 20, 4, 4, 6, TP, EM, RR, NULL, 1 },
    { 6, 16, 2, 3, 5, TP, EM, LF, NULL, 1 },
    { 4, 20, 4, 4, 6, LL, EM, LF, NULL, 1 },
    { 6, 16, 2, 3, 5, LL, EM, RR, NULL, 1 },
    { 4, 20, 4, 4, 6, TP, TM, LF, "tests/moe/data/cpu-2host.json", 2 },
    { 6, 16, 2, 3, 5, TP, EM, LF, "tests/moe/data/cpu-3host.json", 3 },
};

int main(void)
{
    epxt_init("test_elastic");
    static const char *names[] = {
        "tp_token_major_4", "tp_token_major_6_rr", "tp_expert_major_4_rr",
        "tp_expert_major_6", "ll_4", "ll_6_rr", "hier_2x2_token_major",
        "hier_3x2_expert_major",
    };
    struct CMUnitTest tests[1 + sizeof(cases) / sizeof(cases[0])] = {
        cmocka_unit_test(refusals),
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        tests[i + 1] = (struct CMUnitTest){ names[i], run_case, NULL, NULL,
                                            (void *)&cases[i] };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
