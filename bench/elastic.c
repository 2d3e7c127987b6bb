/*
 * --kill-rank R --at-iter N: elastic expert parallelism end to end.
 *
 * The ranks are forked here, not by epx_launch_local (which stops every
 * rank when one dies).  One MoE layer with --slots replicas placed by the
 * epx planner; every iteration dispatches, runs the experts, combines and
 * checks every output against a reference computed on the rank from the
 * routing alone.  At iteration N rank R kills itself (SIGKILL) right
 * after its epx_dispatch_send, in the middle of the exchange.  The
 * survivors get EPX_ERR_PEER, shrink the communicator (epx_comm_shrink),
 * carry the placement to the live ranks (epx_balance_shrink: experts whose
 * every replica was on R are lost), re-plan over the live ranks
 * (epx_balance_plan with the lost experts left out, budgeted from the
 * carried placement) and move the weights (epx_moe_rebalance) in a new
 * EPX_MOE_ELASTIC engine, then redo iteration N and go on.
 *
 * Exact arithmetic makes the check bitwise: x holds small integers, a
 * routing weight is k/8 and expert e multiplies by 2^(e%4 - 2), so every
 * sum is exact whatever its order.  An expert's "weights" are its scale and
 * id in a buffer registered with the engine: a slot computing with another
 * expert's weights than the placement says, or weights moved wrongly, is a
 * mismatch.  The reference leaves out the entries of lost experts, and the
 * engine's lost mask must name exactly those.
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include "bench.h"
#include "util/util.h"
#include "core/comm.h"

typedef struct el_weights {    /* one slot's "weights" */
    float scale;
    int32_t expert;
    int32_t pad[2];
} el_weights_t;

typedef struct el_rank {       /* what each process reports */
    int ran, done, killed;
    int new_rank, new_size;
    int iters_before, iters_after;
    double failed_at, shrunk_at, recovered_at;
    double first_engine_s;     /* the first engine, on every rank: the
                                  baseline of the new one */
    double planned_at, engine_at, moved_at; /* re-planned; new engine up;
                                               weights moved */
    int64_t checked, mismatches, masked, all_lost, lost_experts;
    int64_t want_lost;         /* experts whose every slot was on the
                                  killed rank, from the first placement */
    int64_t moves;
    char msg[256];
} el_rank_t;

typedef struct el_shared {
    double killed_at;
    el_rank_t r[];
} el_shared_t;

typedef struct el_ctx {
    const bench_opts_t *o;
    el_shared_t *sh;
    int old_rank;              /* identity: routing and inputs follow it */
    int E, K, H, T;
    double *zipf_cdf;          /* [E] or NULL (uniform) */
} el_ctx_t;

static uint64_t el_hash(uint64_t seed, uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t x = seed ^ (a * 0x9e3779b97f4a7c15ull) ^ (b * 0xbf58476d1ce4e5b9ull)
                 ^ (c * 0x94d049bb133111ebull);
    x ^= x >> 31;
    x *= 0xd6e9e4a2f1c5a2b3ull;
    x ^= x >> 29;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 32);
}

static float el_scale(int e) { return ldexpf(1.0f, e % 4 - 2); }

/* Routing of (rank, iteration): distinct experts per token, uniform or
 * Zipf, --drop of the entries -1; weights k/8. */
static void el_route(const el_ctx_t *c, int rank, int it, int32_t *idx,
                     float *w)
{
    const bench_opts_t *o = c->o;
    for (int t = 0; t < c->T; t++)
        for (int k = 0; k < c->K; k++) {
            int32_t e;
            for (uint64_t tries = 0;; tries++) {
                uint64_t h = el_hash(o->seed, (uint64_t)rank << 32 | (uint64_t)it,
                                     (uint64_t)t * 64 + (uint64_t)k, tries);
                if (c->zipf_cdf) {
                    double u = (double)(h >> 11) / 9007199254740992.0;
                    int lo = 0, hi = c->E - 1;
                    while (lo < hi) {
                        int mid = (lo + hi) / 2;
                        if (c->zipf_cdf[mid] < u)
                            lo = mid + 1;
                        else
                            hi = mid;
                    }
                    e = lo;
                } else {
                    e = (int32_t)(h % (uint64_t)c->E);
                }
                int dup = 0;
                for (int j = 0; j < k; j++)
                    dup |= idx[t * c->K + j] == e;
                if (!dup)
                    break;
            }
            uint64_t h = el_hash(o->seed ^ 0x77, (uint64_t)rank, (uint64_t)it,
                                 (uint64_t)t * 64 + (uint64_t)k);
            idx[t * c->K + k] = (double)(h >> 11) / 9007199254740992.0 < o->drop
                                    ? -1 : e;
            w[t * c->K + k] = (float)(1 + (h & 7)) / 8.0f;
        }
}

static void el_input(const el_ctx_t *c, int rank, int it, float *x)
{
    for (int64_t i = 0; i < (int64_t)c->T * c->H; i++)
        x[i] = (float)((int)(el_hash(c->o->seed ^ 0x55, (uint64_t)rank,
                                     (uint64_t)it, (uint64_t)i) % 17) - 8);
}

/* Load of every expert over the given ranks' routing of iteration it. */
static void el_loads(const el_ctx_t *c, const int *ranks, int n, int it,
                     double *load)
{
    int32_t *idx = malloc(sizeof(int32_t) * (size_t)c->T * (size_t)c->K + 4);
    float *w = malloc(sizeof(float) * (size_t)c->T * (size_t)c->K + 4);
    memset(load, 0, sizeof(double) * (size_t)c->E);
    for (int i = 0; idx && w && i < n; i++) {
        el_route(c, ranks[i], it, idx, w);
        for (int j = 0; j < c->T * c->K; j++)
            if (idx[j] >= 0)
                load[idx[j]] += 1;
    }
    free(idx);
    free(w);
}

/* One iteration: dispatch, experts, combine, check.  die: SIGKILL right
 * after the dispatch is sent. */
static epx_status_t el_iter(el_ctx_t *c, epx_moe_t *moe, const int32_t *phy2log,
                            int num_slots, const el_weights_t *wts, int it,
                            int die, el_rank_t *me)
{
    const int T = c->T, K = c->K, H = c->H, E = c->E;
    epx_status_t st = EPX_ERR_NOMEM;
    float *x = malloc(sizeof(float) * (size_t)T * (size_t)H + 4);
    float *out = malloc(sizeof(float) * (size_t)T * (size_t)H + 4);
    float *y = NULL;
    int32_t *idx = malloc(sizeof(int32_t) * (size_t)T * (size_t)K + 4);
    float *w = malloc(sizeof(float) * (size_t)T * (size_t)K + 4);
    uint8_t *lost = malloc((size_t)T * (size_t)K + 1);
    uint8_t *placed = calloc((size_t)E, 1);
    epx_handle_t *h = NULL;
    if (!x || !out || !idx || !w || !lost || !placed)
        goto out;
    for (int s = 0; s < num_slots; s++)
        placed[phy2log[s]] = 1;
    el_input(c, c->old_rank, it, x);
    el_route(c, c->old_rank, it, idx, w);

    epx_dispatch_args_t a = EPX_DISPATCH_ARGS_INIT;
    a.x = (epx_tensor_t){ x, EPX_DTYPE_FP32, T, H };
    a.topk_idx = (epx_tensor_t){ idx, EPX_DTYPE_INT32, T, K };
    a.topk_weights = (epx_tensor_t){ w, EPX_DTYPE_FP32, T, K };
    a.lost = lost;
    st = epx_dispatch_send(moe, &a, &h);
    if (die) {
        c->sh->killed_at = epx__now();
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        raise(SIGKILL);
    }
    epx_recv_t rv = { .struct_size = sizeof(rv) };
    if (st == EPX_OK)
        st = epx_dispatch_recv(moe, h, &rv);
    if (st != EPX_OK)
        goto out;
    if (!(y = malloc(sizeof(float) * (size_t)(rv.num_rows + 1) * (size_t)H))) {
        st = epx__error(EPX_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (int j = 0; j < rv.num_local_experts; j++) {
        const el_weights_t *wt = &wts[j];
        if (wt->expert != rv.local_experts[j]) {   /* wrong weights here */
            if (me->mismatches++ == 0)
                snprintf(me->msg, sizeof(me->msg), "iteration %d: local slot "
                         "%d holds the weights of expert %d, the placement "
                         "says %d", it, j, wt->expert, rv.local_experts[j]);
        }
        const float *xr = rv.x.data;
        for (int64_t r = rv.expert_offsets[j];
             r < rv.expert_offsets[j] + rv.expert_counts[j]; r++)
            for (int i = 0; i < H; i++)
                y[r * H + i] = xr[r * H + i] * wt->scale;
    }
    epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
    ca.y = (epx_tensor_t){ y, EPX_DTYPE_FP32, rv.num_rows, H };
    st = epx_combine_send(moe, h, &ca);
    epx_tensor_t ot = { out, EPX_DTYPE_FP32, T, H };
    if (st == EPX_OK)
        st = epx_combine_recv(moe, h, &ot);
    if (st != EPX_OK)
        goto out;
    /* The reference: the entries of experts still placed, exactly. */
    for (int t = 0; t < T; t++) {
        int any = 0, gone = 0;
        for (int k = 0; k < K; k++) {
            int e = idx[t * K + k];
            int want = e >= 0 && !placed[e];
            any |= e >= 0;
            gone += want;
            if (lost[t * K + k] != want && me->mismatches++ == 0)
                snprintf(me->msg, sizeof(me->msg), "iteration %d: lost[%d][%d]"
                         " = %d, expert %d is %s", it, t, k, lost[t * K + k],
                         e, want ? "lost" : "placed");
        }
        me->masked += gone;
        int used = 0;
        for (int k = 0; k < K; k++)
            used += idx[t * K + k] >= 0 && !lost[t * K + k];
        me->all_lost += any && used == 0;
        for (int i = 0; i < H; i++) {
            float ref = 0.0f;
            for (int k = 0; k < K; k++) {
                int e = idx[t * K + k];
                if (e >= 0 && placed[e])
                    ref += w[t * K + k] * (x[t * H + i] * el_scale(e));
            }
            if (out[t * H + i] != ref && me->mismatches++ == 0)
                snprintf(me->msg, sizeof(me->msg), "iteration %d: out[%d][%d] "
                         "= %g, reference %g", it, t, i, out[t * H + i], ref);
        }
        me->checked++;
    }
out:
    epx_handle_release(h);
    free(x);
    free(out);
    free(y);
    free(idx);
    free(w);
    free(lost);
    free(placed);
    return st;
}

/* An engine over comm with this placement and weights registered. */
static epx_status_t el_engine(el_ctx_t *c, epx_comm_t *comm, int num_slots,
                              unsigned flags, const int32_t *phy2log,
                              el_weights_t *wts, epx_moe_t **moe)
{
    epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
    p.hidden = c->H;
    p.num_experts = c->E;
    p.topk = c->K;
    p.max_tokens_per_rank = c->T;
    p.dtype = EPX_DTYPE_FP32;
    p.layout = EPX_LAYOUT_EXPERT_MAJOR;
    p.num_slots = num_slots;
    p.flags = flags;
    epx_status_t st = epx_moe_create(comm, &p, moe);
    if (st == EPX_OK)
        st = epx_moe_set_placement(*moe, 0, phy2log, EPX_REPLICA_LOCAL_FIRST);
    if (st == EPX_OK)
        st = epx_moe_register_weights(*moe, 0, wts, sizeof(el_weights_t));
    return st;
}

static int el_fail(el_rank_t *me, const char *what, epx_status_t st)
{
    snprintf(me->msg, sizeof(me->msg), "%s: %s (%s)", what, epx_status_str(st),
             epx_last_error());
    return 1;
}

static int el_rank_main(el_ctx_t *c, epx_comm_t *comm)
{
    const bench_opts_t *o = c->o;
    el_rank_t *me = &c->sh->r[c->old_rank];
    me->ran = 1;
    int R = o->ranks, S = o->slots, spr = S / R;
    int32_t *phy2log = malloc(sizeof(int32_t) * (size_t)S);
    int32_t *next = malloc(sizeof(int32_t) * (size_t)S);
    double *load = malloc(sizeof(double) * (size_t)c->E);
    int *ranks = malloc(sizeof(int) * (size_t)R);
    uint8_t *live = malloc((size_t)R), *lost = malloc((size_t)c->E);
    el_weights_t *wts = calloc((size_t)spr, sizeof(*wts));
    if (!phy2log || !next || !load || !ranks || !live || !lost || !wts)
        return el_fail(me, "set-up", EPX_ERR_NOMEM);
    for (int r = 0; r < R; r++)
        ranks[r] = r;
    /* The first placement: planned from iteration 0's loads. */
    el_loads(c, ranks, R, 0, load);
    epx_balance_params_t bp = EPX_BALANCE_PARAMS_INIT;
    bp.num_layers = 1;
    bp.num_experts = c->E;
    bp.num_slots = S;
    bp.num_ranks = R;
    epx_status_t st = epx_balance_plan(&bp, load, phy2log, NULL, 0, NULL);
    if (st != EPX_OK)
        return el_fail(me, "epx_balance_plan", st);
    int rank = c->old_rank;
    for (int j = 0; j < spr; j++) {
        int e = phy2log[rank * spr + j];
        wts[j] = (el_weights_t){ el_scale(e), e, { 0, 0 } };
    }
    epx_moe_t *moe = NULL;
    double t0 = epx__now();
    if ((st = el_engine(c, comm, S, 0, phy2log, wts, &moe)) != EPX_OK)
        return el_fail(me, "engine", st);
    me->first_engine_s = epx__now() - t0;
    epx_comm_t *first = comm;
    int shrunk = 0;
    double last = epx__now();
    for (int it = 0; it < o->iters; it++) {
        int die = !shrunk && c->old_rank == o->kill_rank && it == o->at_iter;
        double now = epx__now();
        if (epx_comm_rank(comm) == 0 && now - last > 5.0) {   /* a long run */
            fprintf(stderr, "epx-bench: elastic: iteration %d/%d%s\n", it,
                    o->iters, shrunk ? " (live ranks)" : "");
            last = now;
        }
        st = el_iter(c, moe, phy2log, S, wts, it, die, me);
        if (st == EPX_OK) {
            if (shrunk) {
                me->iters_after++;
                if (me->iters_after == 1)
                    me->recovered_at = epx__now();
            } else {
                me->iters_before++;
            }
            continue;
        }
        if (st != EPX_ERR_PEER || shrunk)
            return el_fail(me, "iteration", st);
        /* A rank is gone: go on with the live ones. */
        me->failed_at = epx__now();
        epx_moe_destroy(moe);
        moe = NULL;
        epx_comm_t *nc;
        if ((st = epx_comm_shrink(comm, live, &nc)) != EPX_OK)
            return el_fail(me, "epx_comm_shrink", st);
        me->shrunk_at = epx__now();
        int n = 0;
        for (int r = 0; r < R; r++)
            if (live[r])
                ranks[n++] = ranks[r];   /* old identities, in order */
        bp = (epx_balance_params_t)EPX_BALANCE_PARAMS_INIT;
        bp.num_layers = 1;
        bp.num_experts = c->E;
        bp.num_slots = S;
        bp.num_ranks = R;
        if ((st = epx_balance_shrink(&bp, phy2log, live, next, lost,
                                     &me->lost_experts)) != EPX_OK)
            return el_fail(me, "epx_balance_shrink", st);
        /* What the loss must cost, from the placement and the dead rank
         * alone: an expert is lost iff every slot of it was on a dead
         * rank.  The library's shrink and plan must agree. */
        int64_t want = 0;
        for (int e = 0; e < c->E; e++) {
            int kept = 0;
            for (int s = 0; s < S; s++)
                kept |= phy2log[s] == e && live[s / spr];
            want += !kept;
            if (lost[e] != !kept && me->mismatches++ == 0)
                snprintf(me->msg, sizeof(me->msg), "epx_balance_shrink: "
                         "expert %d lost = %d, its slots say %d", e, lost[e],
                         !kept);
        }
        me->want_lost = want;
        int S2 = n * spr;
        /* A survivor whose exchanges did not touch the dead rank may have
         * finished this iteration: all go on from the earliest one. */
        int32_t mine = it, *all = malloc(sizeof(int32_t) * (size_t)n);
        if (!all || (st = epx__comm_allgather(nc, &mine, all,
                                              sizeof(mine))) != EPX_OK)
            return el_fail(me, "all-gather", all ? st : EPX_ERR_NOMEM);
        for (int r = 0; r < n; r++)
            it = all[r] < it ? all[r] : it;
        free(all);
        /* Re-plan over the live ranks from that iteration's loads, the
         * lost experts left out, starting from the carried placement. */
        el_loads(c, ranks, n, it, load);
        epx_balance_report_t rep = { 0 };
        bp.num_slots = S2;
        bp.num_ranks = n;
        bp.current_phy2log = next;
        bp.lost = lost;
        bp.max_moves = o->max_moves;
        bp.bytes_per_slot = sizeof(el_weights_t);
        bp.report = &rep;
        if ((st = epx_balance_plan(&bp, load, phy2log, NULL, 0, NULL)) != EPX_OK)
            return el_fail(me, "epx_balance_plan (live ranks)", st);
        me->moves = rep.moves;
        me->planned_at = epx__now();
        for (int e = 0; e < c->E; e++) {   /* every available expert placed */
            int placed = 0;
            for (int s = 0; s < S2; s++)
                placed |= phy2log[s] == e;
            if (placed == lost[e] && me->mismatches++ == 0)
                snprintf(me->msg, sizeof(me->msg), "the re-plan %s expert "
                         "%d, which is %s", placed ? "places" : "leaves out",
                         e, lost[e] ? "lost" : "available");
        }
        if ((st = el_engine(c, nc, S2, EPX_MOE_ELASTIC, next, wts, &moe)) !=
            EPX_OK)
            return el_fail(me, "engine (live ranks)", st);
        me->engine_at = epx__now();
        epx_rebalance_stats_t rs = { .struct_size = sizeof(rs) };
        if ((st = epx_moe_rebalance(moe, 0, phy2log, EPX_REPLICA_LOCAL_FIRST,
                                    &rs)) != EPX_OK)
            return el_fail(me, "epx_moe_rebalance", st);
        me->moved_at = epx__now();
        comm = nc;
        R = n;
        S = S2;
        shrunk = 1;
        me->new_rank = epx_comm_rank(nc);
        me->new_size = n;
        me->iters_before = it;
        it--;   /* redo the iteration that failed */
    }
    epx_moe_destroy(moe);
    if (comm != first)
        epx_comm_destroy(comm);
    me->done = 1;
    free(phy2log);
    free(next);
    free(load);
    free(ranks);
    free(live);
    free(lost);
    free(wts);
    return 0;
}

static int el_child(el_ctx_t *c, int lfd, const char *root, const char *key)
{
    const bench_opts_t *o = c->o;
    if (c->old_rank != 0)
        close(lfd);
    double timeout;
    epx_boot_t *boot;
    epx_comm_t *comm;
    epx_status_t st = epx__timeout(NULL, &timeout);
    if (st == EPX_OK)
        st = epx__boot_tcp_create(c->old_rank, o->ranks, root,
                                  c->old_rank == 0 ? lfd : -1, key, timeout,
                                  &boot);
    if (st == EPX_OK)
        st = epx__comm_create_boot(boot, timeout, NULL, &comm);
    if (st != EPX_OK)
        return el_fail(&c->sh->r[c->old_rank], "communicator", st);
    int rc = el_rank_main(c, comm);
    epx_comm_destroy(comm);
    return rc;
}

static void el_report(const bench_opts_t *o, const el_shared_t *sh, int ok,
                      int slots_after, int T)
{
    double detect = 0, shrink = 0, recover = 0, plan = 0, engine = 0,
           moved = 0, first = 0;
    int64_t checked = 0, mism = 0, masked = 0, all_lost = 0;
    int before = -1, after = -1, survivors = 0;
    const el_rank_t *any = NULL;
    for (int r = 0; r < o->ranks; r++) {
        const el_rank_t *x = &sh->r[r];
        if (r == o->kill_rank || !x->done)
            continue;
        survivors++;
        any = x;
        if (x->failed_at - sh->killed_at > detect)
            detect = x->failed_at - sh->killed_at;
        if (x->shrunk_at - x->failed_at > shrink)
            shrink = x->shrunk_at - x->failed_at;
        if (x->first_engine_s > first)
            first = x->first_engine_s;
        if (x->planned_at - x->shrunk_at > plan)
            plan = x->planned_at - x->shrunk_at;
        if (x->engine_at - x->planned_at > engine)
            engine = x->engine_at - x->planned_at;
        if (x->moved_at - x->engine_at > moved)
            moved = x->moved_at - x->engine_at;
        if (x->recovered_at - x->failed_at > recover)
            recover = x->recovered_at - x->failed_at;
        checked += x->checked;
        mism += x->mismatches;
        masked += x->masked;
        all_lost += x->all_lost;
        before = x->iters_before;
        after = x->iters_after;
    }
    FILE *t = o->json ? stderr : stdout;
    fprintf(t, "epx-bench elastic: %d ranks, rank %d killed in the dispatch "
            "of iteration %d\n", o->ranks, o->kill_rank, o->at_iter);
    fprintf(t, "  experts %d, top-%d, %d tokens x %d per rank, %d slots "
            "(%d per rank) -> %d on %d live ranks\n", o->experts, o->topk,
            T, o->hidden, o->slots, o->slots / o->ranks,
            slots_after, survivors);
    if (any)
        fprintf(t, "  lost experts %lld (every replica on rank %d); re-plan "
                "over the live ranks moved %lld slots\n",
                (long long)any->lost_experts, o->kill_rank,
                (long long)any->moves);
    fprintf(t, "  detection  (death -> EPX_ERR_PEER, slowest survivor)   "
            "%8.1f ms\n", detect * 1e3);
    fprintf(t, "  shrink     (agreement + new communicator)              "
            "%8.1f ms\n", shrink * 1e3);
    fprintf(t, "  re-plan over the live ranks (after the shrink)         "
            "%8.1f ms\n", plan * 1e3);
    fprintf(t, "  new engine (epx_moe_create, placement, weights)        "
            "%8.1f ms\n", engine * 1e3);
    fprintf(t, "    (the first engine, on all %d ranks: %.1f ms)\n",
            o->ranks, first * 1e3);
    fprintf(t, "  weights moved (epx_moe_rebalance)                      "
            "%8.1f ms\n", moved * 1e3);
    fprintf(t, "  recovery   (EPX_ERR_PEER -> first verified iteration)  "
            "%8.1f ms\n", recover * 1e3);
    fprintf(t, "  iterations %d before, %d after (the failed one redone); "
            "%lld token outputs checked, %lld entries of lost experts left "
            "out, %lld tokens with every expert lost, %lld mismatches: %s\n",
            before, after, (long long)checked, (long long)masked,
            (long long)all_lost, (long long)mism, ok ? "OK" : "FAILED");
    for (int r = 0; r < o->ranks; r++)
        if (sh->r[r].msg[0])
            fprintf(t, "  rank %d: %s\n", r, sh->r[r].msg);
    if (!o->json)
        return;
    printf("{\"bench\":\"elastic\",\"ranks\":%d,\"kill_rank\":%d,"
           "\"at_iter\":%d,\"experts\":%d,\"topk\":%d,\"tokens\":%lld,"
           "\"hidden\":%d,\"slots\":%d,\"slots_after\":%d,\"survivors\":%d,"
           "\"lost_experts\":%lld,\"want_lost\":%lld,\"moves\":%lld,",
           o->ranks, o->kill_rank,
           o->at_iter, o->experts, o->topk, (long long)T, o->hidden,
           o->slots, slots_after, survivors,
           (long long)(any ? any->lost_experts : -1),
           (long long)(any ? any->want_lost : -1),
           (long long)(any ? any->moves : -1));
    printf("\"detection_ms\":");
    bench_json_num(stdout, detect * 1e3);
    printf(",\"shrink_ms\":");
    bench_json_num(stdout, shrink * 1e3);
    printf(",\"plan_ms\":");
    bench_json_num(stdout, plan * 1e3);
    printf(",\"first_engine_ms\":");
    bench_json_num(stdout, first * 1e3);
    printf(",\"engine_ms\":");
    bench_json_num(stdout, engine * 1e3);
    printf(",\"rebalance_ms\":");
    bench_json_num(stdout, moved * 1e3);
    printf(",\"recovery_ms\":");
    bench_json_num(stdout, recover * 1e3);
    printf(",\"iters_before\":%d,\"iters_after\":%d,\"masked\":%lld,"
           "\"all_lost\":%lld", before, after, (long long)masked,
           (long long)all_lost);
    bench_json_verified(stdout, checked, mism);
    printf(",\"ok\":%s}\n", ok ? "true" : "false");
}

int bench_main_elastic(bench_opts_t *o)
{
    const int R = o->ranks;
    if (o->kill_rank >= R || o->at_iter >= o->iters || R < 2) {
        fprintf(stderr, "epx-bench: --kill-rank %d --at-iter %d needs a rank "
                "below --ranks %d (at least 2) and an iteration below --iters "
                "%d\n", o->kill_rank, o->at_iter, R, o->iters);
        return 2;
    }
    if (o->dtype_given || o->mode_given || o->layout_given || o->balance ||
        o->drift || o->overlap || o->hierarchical || o->trace_dir ||
        o->dump_dir || o->nsweep > 0 || o->device != BENCH_DEVICE_HOST ||
        o->launcher == BENCH_LAUNCH_MPIRUN) {
        fprintf(stderr, "epx-bench: --kill-rank runs its own workload (FP32, "
                "expert-major, throughput mode, host ranks it forks): "
                "--dtype, --mode, --layout, --balance, --drift, --overlap, "
                "--hierarchical, --trace, --dump, --tokens-sweep, --device "
                "and --launcher mpirun do not apply\n");
        return 2;
    }
    if (o->ntokens > 1) {
        fprintf(stderr, "epx-bench: --kill-rank takes one --tokens value "
                "(tokens per rank), not one per rank\n");
        return 2;
    }
    const int64_t T = o->ntokens == 1 ? o->tokens[0] : BENCH_DEFAULT_TOKENS;
    if (o->slots == 0) {   /* E + E/8 replicas, to a multiple of the ranks */
        int s = o->experts + o->experts / 8;
        o->slots = (s + R - 1) / R * R;
    }
    if (o->slots % R || o->slots < o->experts) {
        fprintf(stderr, "epx-bench: --slots %d must be a multiple of the "
                "%d ranks and >= %d experts\n", o->slots, R, o->experts);
        return 2;
    }
    el_ctx_t c = { o, NULL, 0, o->experts, o->topk, o->hidden,
                   (int)T, NULL };
    if (o->routing == BENCH_ROUTE_ZIPF) {
        if (!(c.zipf_cdf = malloc(sizeof(double) * (size_t)c.E)))
            return 2;
        double sum = 0;
        for (int e = 0; e < c.E; e++)
            sum += pow(e + 1, -o->zipf_s);
        double acc = 0;
        for (int e = 0; e < c.E; e++)
            c.zipf_cdf[e] = (acc += pow(e + 1, -o->zipf_s) / sum);
    }
    size_t bytes = sizeof(el_shared_t) + sizeof(el_rank_t) * (size_t)R;
    el_shared_t *sh = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                           MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) {
        fprintf(stderr, "epx-bench: mmap: %s\n", strerror(errno));
        free(c.zipf_cdf);
        return 2;
    }
    memset(sh, 0, bytes);
    c.sh = sh;
    /* Rank 0 accepts on a socket bound here, before the fork. */
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET };
    socklen_t al = sizeof(a);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        listen(lfd, 1024) != 0 ||
        getsockname(lfd, (struct sockaddr *)&a, &al) != 0) {
        fprintf(stderr, "epx-bench: loopback socket: %s\n", strerror(errno));
        return 2;
    }
    char root[64], key[33];
    snprintf(root, sizeof(root), "127.0.0.1:%d", ntohs(a.sin_port));
    if (epx__random_hex(key, 32) != EPX_OK)
        return 2;
    fprintf(stderr, "epx-bench: elastic run: %d ranks, rank %d dies at "
            "iteration %d of %d\n", R, o->kill_rank, o->at_iter, o->iters);
    pid_t *pids = calloc((size_t)R, sizeof(pid_t));
    if (!pids)
        return 2;
    fflush(NULL);
    for (int r = 0; r < R; r++) {
        pid_t pid = fork();
        if (pid == 0) {
            c.old_rank = r;
            _exit(el_child(&c, lfd, root, key));
        }
        if (pid < 0) {
            fprintf(stderr, "epx-bench: fork: %s\n", strerror(errno));
            for (int q = 0; q < r; q++) {
                kill(pids[q], SIGKILL);
                waitpid(pids[q], NULL, 0);
            }
            free(pids);
            free(c.zipf_cdf);
            munmap(sh, bytes);
            return 2;
        }
        pids[r] = pid;
    }
    close(lfd);
    int ok = 1;
    for (int r = 0; r < R; r++) {
        int status = 0;
        waitpid(pids[r], &status, 0);
        if (r == o->kill_rank)
            ok &= WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
        else
            ok &= WIFEXITED(status) && WEXITSTATUS(status) == 0 &&
                  sh->r[r].done && sh->r[r].mismatches == 0 &&
                  sh->r[r].new_size == R - 1 &&
                  sh->r[r].iters_before + sh->r[r].iters_after == o->iters &&
                  sh->r[r].lost_experts == sh->r[r].want_lost;
    }
    el_report(o, sh, ok, (o->slots / R) * (R - 1), T);
    free(pids);
    free(c.zipf_cdf);
    munmap(sh, bytes);
    return ok ? 0 : 1;
}
