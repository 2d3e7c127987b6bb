/*
 * The migration plan both executors move (src/moe/mig.h, moe_mig_plan in
 * src/balance/migrate.c), every rank's plan of one migration together:
 * simulated with one byte per slot (the old expert's id), the sends into
 * staging and the landings give every rank exactly the new placement's
 * weights; each send to a peer has its receive there, the two in the same
 * order per pair (NCCL matches them so); each source is a replica of the
 * new expert in the old placement, on the slot's own rank when there is
 * one, else replica (slot mod count); unchanged slots move nothing; the
 * counts add up.  1 to 72 ranks, 1 to 4 slots per rank, many placements.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/epx_test.h"
#include "moe/mig.h"

/* Random placement over E experts, every expert at least once. */
static void placement(epxt_rng_t *g, int U, int E, int32_t *p)
{
    for (int u = 0; u < U; u++)
        p[u] = u < E ? u : (int32_t)epxt_below(g, (uint64_t)E);
    for (int u = U - 1; u > 0; u--) {
        int j = (int)epxt_below(g, (uint64_t)u + 1);
        int32_t t = p[u]; p[u] = p[j]; p[j] = t;
    }
}

static int one(int R, int spr, int E, epxt_rng_t *g)
{
    const int U = R * spr;
    int32_t *old = malloc(sizeof(int32_t) * (size_t)U);
    int32_t *next = malloc(sizeof(int32_t) * (size_t)U);
    placement(g, U, E, old);
    if (epxt_below(g, 4) == 0) {          /* a few slots change only */
        memcpy(next, old, sizeof(int32_t) * (size_t)U);
        for (int k = 0; k < 3; k++) {
            int a = (int)epxt_below(g, (uint64_t)U);
            int b = (int)epxt_below(g, (uint64_t)U);
            int32_t t = next[a]; next[a] = next[b]; next[b] = t;
        }
    } else {
        placement(g, U, E, next);
    }
    moe_mig_plan_t *pl = calloc((size_t)R, sizeof(*pl));
    for (int r = 0; r < R; r++)
        CHECK_OK(moe_mig_plan(U, R, r, old, next, &pl[r]));

    /* Weights: one byte per slot, the expert it holds; staging apart. */
    unsigned char *w = malloc((size_t)U), *stage = malloc((size_t)U);
    for (int u = 0; u < U; u++)
        w[u] = (unsigned char)old[u];
    memset(stage, 0xff, (size_t)U);
    int sent = 0, received = 0;
    for (int r = 0; r < R; r++) {
        const moe_mig_plan_t *p = &pl[r];
        int last = -1, changed = 0, unchanged = 0;
        for (int j = 0; j < spr; j++) {
            changed += old[r * spr + j] != next[r * spr + j];
            unchanged += old[r * spr + j] == next[r * spr + j];
        }
        CHECK(p->s.unchanged == unchanged);
        CHECK(p->s.local_copies + p->s.received == changed);
        CHECK(p->nland == changed);
        for (int i = 0, k = 0; i < spr; i++)
            if (old[r * spr + i] != next[r * spr + i])
                CHECKF(p->land[k++] == i, "rank %d lands %d", r, i);
        int nsend = 0, nrecv = 0, nlocal = 0;
        for (int i = 0; i < p->n; i++) {
            const moe_mig_xfer_t *x = &p->x[i];
            CHECK(x->peer >= 0 && x->peer < R && x->stage >= 0 &&
                  x->stage < spr);
            int u = x->recv ? r * spr + x->stage : x->peer * spr + x->stage;
            CHECKF(u > last, "rank %d: transfers not in slot order", r);
            last = u;
            CHECK(old[u] != next[u]);   /* only changed slots move */
            if (x->recv) {
                CHECK(x->peer != r && x->slot == -1);
                nrecv++;
                continue;
            }
            CHECK(x->slot >= 0 && x->slot < spr);
            int src = r * spr + x->slot, e = next[u], n = 0, own = 0;
            CHECK(old[src] == e);
            for (int v = 0; v < U; v++) {
                n += old[v] == e;
                own += old[v] == e && v / spr == u / spr;
            }
            if (own)   /* a replica on the slot's rank: the first there */
                for (int v = (u / spr) * spr; v < src; v++)
                    CHECK(old[v] != e);
            else {     /* replica number (u mod n) */
                int nth = 0;
                for (int v = 0; v < src; v++)
                    nth += old[v] == e;
                CHECKF(nth == u % n, "slot %d: replica %d of %d, want %d",
                       u, nth, n, u % n);
            }
            CHECK((x->peer == r) == (own > 0));
            stage[u] = w[src];
            if (x->peer == r)
                nlocal++;
            else
                nsend++;
        }
        CHECK(p->s.sent == nsend && p->s.received == nrecv &&
              p->s.local_copies == nlocal);
        sent += nsend;
        received += nrecv;
    }
    CHECK(sent == received);
    /* Each send from s to d has its receive at d, in the same order. */
    for (int s = 0; s < R; s++)
        for (int d = 0; d < R; d++) {
            if (s == d)
                continue;
            int i = 0, k = 0;
            for (;;) {
                while (i < pl[s].n && (pl[s].x[i].recv || pl[s].x[i].peer != d))
                    i++;
                while (k < pl[d].n && (!pl[d].x[k].recv || pl[d].x[k].peer != s))
                    k++;
                if (i == pl[s].n || k == pl[d].n)
                    break;
                CHECK(pl[s].x[i].stage == pl[d].x[k].stage);
                i++, k++;
            }
            CHECKF(i == pl[s].n && k == pl[d].n, "ranks %d -> %d: a send or "
                   "receive without its other end", s, d);
        }
    /* Landing: every rank holds the new placement. */
    for (int r = 0; r < R; r++)
        for (int i = 0; i < pl[r].nland; i++)
            w[r * spr + pl[r].land[i]] = stage[r * spr + pl[r].land[i]];
    for (int u = 0; u < U; u++)
        CHECKF(w[u] == (unsigned char)next[u], "slot %d holds %d, want %d",
               u, w[u], next[u]);
    for (int r = 0; r < R; r++)
        moe_mig_plan_free(&pl[r]);
    free(pl), free(w), free(stage), free(old), free(next);
    return 0;
}

static void plans(void **state)
{
    (void)state;
    static const int ranks[] = { 1, 2, 3, 8, 72 };
    epxt_rng_t g = { epxt_hash(epxt_seed(), 17, 0, 0, 0) };
    for (size_t i = 0; i < sizeof(ranks) / sizeof(ranks[0]); i++)
        for (int spr = 1; spr <= 4; spr++)
            for (int k = 0; k < 40; k++) {
                int U = ranks[i] * spr;
                int E = 1 + (int)epxt_below(&g, (uint64_t)U);
                assert_int_equal(one(ranks[i], spr, E, &g), 0);
            }
}

/* A new expert with no old replica has nothing to move from: refused,
 * nothing allocated left behind. */
static void no_source(void **state)
{
    (void)state;
    int32_t old[4] = { 0, 1, 0, 1 }, next[4] = { 0, 2, 1, 0 };
    moe_mig_plan_t p;
    assert_int_equal(moe_mig_plan(4, 2, 0, old, next, &p), EPX_ERR_INVALID);
    assert_null(p.x);
    assert_null(p.land);
    assert_int_equal(moe_mig_source(4, 2, old, 1, 2), -1);
    /* slot 2 (rank 1) takes expert 1: rank 1 holds it in slot 3 */
    assert_int_equal(moe_mig_source(4, 2, old, 2, 1), 3);
    /* slot 1 (rank 0) takes expert 0: slot 0 is on its rank */
    assert_int_equal(moe_mig_source(4, 2, old, 1, 0), 0);
}

int main(void)
{
    epxt_init("test_mig_plan");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(plans),
        cmocka_unit_test(no_source),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
