/*
 * Live weight migration on both executors by the same code: expert
 * weights registered per layer (device memory on device ranks), random
 * re-placements moved with epx_moe_rebalance, with start/finish around
 * calls of both layers, and with a call of the migrating layer in flight
 * (the switch refused on every rank, then done).  After each migration
 * every slot of every rank holds, byte for byte, the weights of the
 * expert the new placement names, and dispatch/combine of the layer
 * equal tests/ref bit for bit under the new placement (the ids routed to
 * slots by this test from epx.h's local-first and round-robin rules).
 * Host memory registered as a device rank's weights is refused.
 *
 * Device ranks: threads of one process on one GPU (2 and 4 ranks,
 * direct windows), forked processes (2 ranks: CUDA IPC or cuMem
 * descriptors), and the NCCL backend with one rank per GPU where there
 * are two.  Host ranks run the same cases.  --device: the device cases
 * are what is asked for, so no device is a skip (77).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <sys/wait.h>
#include <unistd.h>
#include "config.h"

#include "common/epx_test.h"
#include "common/thread_ranks.h"
#include "common/xmem.h"
#include "ref/ref.h"
#include "epx/cuda.h"

enum { L = 2, H = 32, K = 2, TMAX = 16, ROUNDS = 6, MAXS = 64 };
static const size_t BYTES[L] = { 1000, 4132 };   /* per slot, odd sizes */

typedef struct mcase {
    int R;
    epx_gpu_backend_t backend;
    int one_device;
    int host;
} mcase_t;

static unsigned char pattern(int layer, int e, size_t i)
{
    return (unsigned char)epxt_hash(epxt_seed(), 7, (uint64_t)layer,
                                    (uint64_t)e, i);
}

/* Every expert at least once, the rest random; the same on every rank. */
static void placement(int S, int E, int layer, int round, int32_t *p)
{
    epxt_rng_t g = { epxt_hash(epxt_seed(), 9, (uint64_t)layer,
                               (uint64_t)round, 0) };
    for (int u = 0; u < S; u++)
        p[u] = u < E ? u : (int32_t)epxt_below(&g, (uint64_t)E);
    for (int u = S - 1; u > 0; u--) {
        int j = (int)epxt_below(&g, (uint64_t)u + 1);
        int32_t t = p[u]; p[u] = p[j]; p[j] = t;
    }
}

/* epx.h's rules on one host (one domain): local-first takes a replica on
 * the source (candidate source mod count among them), else candidate
 * (source mod count) of all; round robin replica (token mod count);
 * replicas in slot order. */
static int64_t route(const int32_t *p2l, int S, int spr, int rr, int me,
                     int64_t t, int64_t e)
{
    int all[MAXS], loc[MAXS], n = 0, nl = 0;
    if (e < 0)
        return -1;
    for (int u = 0; u < S; u++)
        if (p2l[u] == e) {
            all[n++] = u;
            if (u / spr == me)
                loc[nl++] = u;
        }
    if (rr)
        return all[t % n];
    return nl ? loc[me % nl] : all[me % n];
}

typedef struct yctx {
    const int32_t *p2l;
    int step;
} yctx_t;

/* The expert output of a row: a function of its source, token, the
 * logical expert its slot holds, and the step. */
static void y_fn(void *ctx, int src, int64_t t, int who, float *row)
{
    const yctx_t *y = ctx;
    for (int h = 0; h < H; h++)
        row[h] = (float)((int)(epxt_hash(epxt_seed(), (uint64_t)src,
                                         (uint64_t)t,
                                         (uint64_t)y->p2l[who],
                                         (uint64_t)(h + 64 * y->step)) %
                               33) - 16) / 8.0f;
}

static void gen(int R, int E, int r, int step, int layer, int64_t *T,
                int64_t *idx, float *w, float *x)
{
    epxt_rng_t g = { epxt_hash(epxt_seed(), (uint64_t)r, 13,
                               (uint64_t)step, (uint64_t)layer) };
    *T = 1 + (int64_t)epxt_below(&g, TMAX);
    for (int64_t t = 0; t < *T; t++) {
        idx[t * K] = (int64_t)epxt_below(&g, (uint64_t)E);
        idx[t * K + 1] = (idx[t * K] + 1 + (int64_t)epxt_below(&g,
                          (uint64_t)E - 1)) % E;
        if (epxt_below(&g, 6) == 0)
            idx[t * K + 1] = -1;
        w[t * K] = (float)epxt_below(&g, 1000) / 997.0f;
        w[t * K + 1] = (float)epxt_below(&g, 1000) / 997.0f;
        for (int h = 0; h < H; h++)
            x[t * H + h] = (float)((int)epxt_below(&g, 2001) - 1000) / 64.0f;
    }
    (void)R;
}

#define MEM(call) CHECKF((call) == 0, "%s failed", #call)

typedef struct bufs {
    void *x, *idx, *w, *y, *out, *wt[L];
} bufs_t;

/* One dispatch/combine of `layer` under placement p2l (the engine's),
 * checked against the reference.  pending: a migration of the layer is
 * started; rank 0 combine_sends first and every rank's finish is refused
 * (the call is in flight on the others). */
static int round_trip(const mcase_t *c, epx_moe_t *m, const xmem_t *xm,
                      const bufs_t *b, int R, int me, int E, int S, int layer,
                      const int32_t *p2l, int rr, int step, int pending)
{
    const int spr = S / R;
    ref_tokens_t *src = calloc((size_t)R, sizeof(*src));
    int64_t *idx = malloc(sizeof(int64_t) * (size_t)R * TMAX * K);
    int64_t *ridx = malloc(sizeof(int64_t) * (size_t)R * TMAX * K);
    float *w = malloc(sizeof(float) * (size_t)R * TMAX * K);
    float *x = malloc(sizeof(float) * (size_t)R * TMAX * H);
    for (int r = 0; r < R; r++) {
        int64_t *ir = idx + (size_t)r * TMAX * K;
        gen(R, E, r, step, layer, &src[r].T, ir, w + (size_t)r * TMAX * K,
            x + (size_t)r * TMAX * H);
        for (int64_t i = 0; i < src[r].T * K; i++)
            ridx[(size_t)r * TMAX * K + i] =
                route(p2l, S, spr, rr, r, i / K, ir[i]);
        src[r] = (ref_tokens_t){ src[r].T, x + (size_t)r * TMAX * H,
                                 ridx + (size_t)r * TMAX * K,
                                 w + (size_t)r * TMAX * K, 0.0f };
    }
    const int64_t T = src[me].T;
    MEM(mem_put(xm, b->x, src[me].x, sizeof(float) * (size_t)(T * H)));
    MEM(mem_put(xm, b->idx, idx + (size_t)me * TMAX * K,
                sizeof(int64_t) * (size_t)(T * K)));
    MEM(mem_put(xm, b->w, src[me].w, sizeof(float) * (size_t)(T * K)));
    epx_dispatch_args_t a = EPX_DISPATCH_ARGS_INIT;
    a.x = (epx_tensor_t){ b->x, EPX_DTYPE_FP32, T, H };
    a.topk_idx = (epx_tensor_t){ b->idx, EPX_DTYPE_INT64, T, K };
    a.topk_weights = (epx_tensor_t){ b->w, EPX_DTYPE_FP32, T, K };
    a.layer = layer;
    a.stream = xm->stream;
    epx_handle_t *hd = NULL;
    epx_recv_t rv = { .struct_size = sizeof(rv) };
    CHECK_OK(epx_dispatch_send(m, &a, &hd));
    CHECK_OK(epx_dispatch_recv(m, hd, &rv));

    ref_cfg_t cfg = { R, S, K, H, EPX_DTYPE_FP32, EPX_LAYOUT_EXPERT_MAJOR, 1,
                      EPX_WIRE_NATIVE };
    ref_recv_t want;
    CHECK(ref_dispatch(&cfg, src, me, &want) == 0);
    CHECK(rv.num_rows == want.num_rows && rv.num_local_experts == spr);
    for (int j = 0; j < spr; j++) {
        CHECK(rv.expert_counts[j] == want.counts[j]);
        CHECK(rv.expert_offsets[j] == want.offsets[j]);
        CHECKF(rv.local_experts[j] == p2l[me * spr + j], "slot %d: expert "
               "%d, the placement's %d", me * spr + j, rv.local_experts[j],
               p2l[me * spr + j]);
    }
    const int64_t n = rv.num_rows;
    float *hx = malloc(sizeof(float) * (size_t)(n * H + 1));
    int32_t *hs = malloc(sizeof(int32_t) * (size_t)(2 * n + 1));
    MEM(mem_get(xm, hx, rv.x.data, sizeof(float) * (size_t)(n * H)));
    MEM(mem_get(xm, hs, rv.src_rank, sizeof(int32_t) * (size_t)n));
    MEM(mem_get(xm, hs + n, rv.src_token, sizeof(int32_t) * (size_t)n));
    for (int64_t i = 0; i < n; i++) {
        CHECK(hs[i] == want.src_rank[i] && hs[n + i] == want.src_token[i]);
        CHECKF(want.src_rank[i] < 0 ||
               memcmp(hx + i * H, want.x + i * H * 4, 4 * H) == 0,
               "layer %d step %d: row %lld differs", layer, step,
               (long long)i);
    }
    yctx_t yc = { p2l, step };
    for (int64_t i = 0; i < n; i++)
        if (want.src_rank[i] >= 0)
            y_fn(&yc, want.src_rank[i], want.src_token[i],
                 me * spr + want.row_expert[i], hx + i * H);
    MEM(mem_put(xm, b->y, hx, sizeof(float) * (size_t)(n * H)));
    epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
    ca.y = (epx_tensor_t){ b->y, EPX_DTYPE_FP32, n, H };
    ca.stream = xm->stream;
    if (pending) {
        if (me == 0)
            CHECK_OK(epx_combine_send(m, hd, &ca));
        CHECK_ST(epx_moe_rebalance_finish(m, NULL),
                 me == 0 ? EPX_ERR_PEER : EPX_ERR_STATE);
    }
    if (!(pending && me == 0))
        CHECK_OK(epx_combine_send(m, hd, &ca));
    epx_tensor_t o = { b->out, EPX_DTYPE_FP32, T, H };
    CHECK_OK(epx_combine_recv(m, hd, &o));
    epx_handle_release(hd);
    MEM(mem_sync(xm));
    CHECK_OK(epx_moe_check(m, NULL));
    float *got = malloc(sizeof(float) * (size_t)(T * H + 1));
    float *exp = malloc(sizeof(float) * (size_t)(T * H + 1));
    MEM(mem_get(xm, got, b->out, sizeof(float) * (size_t)(T * H)));
    CHECK(ref_combine(&cfg, me, &src[me], 0, y_fn, &yc, EPX_DTYPE_FP32,
                      exp) == 0);
    CHECKF(memcmp(got, exp, sizeof(float) * (size_t)(T * H)) == 0,
           "layer %d step %d: combine differs from the reference (%s)",
           layer, step, c->host ? "host" : "device");
    ref_recv_free(&want);
    free(got), free(exp), free(hx), free(hs);
    free(src), free(idx), free(ridx), free(w), free(x);
    return 0;
}

static int check_weights(const xmem_t *xm, const void *dw, int layer,
                         const int32_t *p2l, int first, int spr)
{
    const size_t B = BYTES[layer];
    unsigned char *hw = malloc(B * (size_t)spr);
    MEM(mem_get(xm, hw, dw, B * (size_t)spr));
    for (int j = 0; j < spr; j++)
        for (size_t i = 0; i < B; i++)
            CHECKF(hw[(size_t)j * B + i] == pattern(layer, p2l[first + j], i),
                   "layer %d slot %d (expert %d): byte %zu differs", layer,
                   first + j, p2l[first + j], i);
    free(hw);
    return 0;
}

static int migrate_rank(epx_comm_t *comm, void *arg)
{
    const mcase_t *c = arg;
    const int R = epx_comm_size(comm), me = epx_comm_rank(comm);
    const int E = R + 1, S = 2 * R, spr = 2, first = me * spr;
    int dev = EPX_DEVICE_HOST;
    if (!c->host) {
        int ndev = 0;
        CHECK_OK(epx_cuda_devices(&ndev));
        dev = c->one_device ? 0 : me % ndev;
    }
    epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
    p.hidden = H;
    p.num_experts = E;
    p.topk = K;
    p.max_tokens_per_rank = TMAX;
    p.dtype = EPX_DTYPE_FP32;
    p.layout = EPX_LAYOUT_EXPERT_MAJOR;
    p.num_layers = L;
    p.num_slots = S;
    p.device = dev;
    p.gpu_backend = c->backend;
    epx_moe_t *m = NULL;
    CHECK_OK(epx_moe_create(comm, &p, &m));
    xmem_t xm = { !c->host, NULL };
    MEM(mem_stream_create(&xm));
    bufs_t b;
    const size_t rows = (size_t)R * TMAX * K + 1;
    MEM(mem_alloc(&xm, &b.x, sizeof(float) * TMAX * H));
    MEM(mem_alloc(&xm, &b.idx, sizeof(int64_t) * TMAX * K));
    MEM(mem_alloc(&xm, &b.w, sizeof(float) * TMAX * K));
    MEM(mem_alloc(&xm, &b.y, sizeof(float) * rows * H));
    MEM(mem_alloc(&xm, &b.out, sizeof(float) * TMAX * H));
    int32_t cur[L][MAXS], next[MAXS];
    for (int l = 0; l < L; l++) {
        placement(S, E, l, 0, cur[l]);
        CHECK_OK(epx_moe_set_placement(m, l, cur[l], EPX_REPLICA_LOCAL_FIRST));
        const size_t B = BYTES[l];
        unsigned char *hw = malloc(B * spr);
        for (int j = 0; j < spr; j++)
            for (size_t i = 0; i < B; i++)
                hw[(size_t)j * B + i] = pattern(l, cur[l][first + j], i);
        MEM(mem_alloc(&xm, &b.wt[l], B * spr));
        MEM(mem_put(&xm, b.wt[l], hw, B * spr));
        free(hw);
    }
    MEM(mem_sync(&xm));   /* the weights are in place before they move */
    CHECK_OK(epx_comm_barrier(comm));
    if (!c->host) {
        /* Host memory on a device rank: refused on every rank. */
        unsigned char host_w[16];
        CHECK_ST(epx_moe_register_weights(m, 0, me == 0 ? (void *)host_w
                                                        : b.wt[0], BYTES[0]),
                 me == 0 ? EPX_ERR_INVALID : EPX_ERR_PEER);
    }
    for (int l = 0; l < L; l++)
        CHECK_OK(epx_moe_register_weights(m, l, b.wt[l], BYTES[l]));
    int rr[L] = { 0, 0 };
    for (int r = 1; r <= ROUNDS; r++) {
        const int l = r % L, how = r % 3;
        const epx_replica_policy_t pol = r == 4 ? EPX_REPLICA_ROUND_ROBIN
                                                : EPX_REPLICA_LOCAL_FIRST;
        placement(S, E, l, r, next);
        int changed = 0;
        for (int j = 0; j < spr; j++)
            changed += next[first + j] != cur[l][first + j];
        epx_rebalance_stats_t st = { .struct_size = sizeof(st) };
        if (how == 0) {
            CHECK_OK(epx_moe_rebalance(m, l, next, pol, &st));
        } else {
            CHECK_OK(epx_moe_rebalance_start(m, l, next, pol));
            /* Both layers go on under their placements in use. */
            CHECK_CALL(round_trip(c, m, &xm, &b, R, me, E, S, 1 - l,
                                  cur[1 - l], rr[1 - l], 100 + r, 0));
            CHECK_CALL(round_trip(c, m, &xm, &b, R, me, E, S, l, cur[l],
                                  rr[l], 200 + r, how == 2));
            CHECK_OK(epx_moe_rebalance_finish(m, &st));
        }
        memcpy(cur[l], next, sizeof(int32_t) * (size_t)S);
        rr[l] = pol == EPX_REPLICA_ROUND_ROBIN;
        CHECKF(st.unchanged == spr - changed &&
               st.local_copies + st.received == changed,
               "round %d: unchanged %d local %d received %d, %d changed", r,
               st.unchanged, st.local_copies, st.received, changed);
        /* The landing is ordered before the engine's later work:
         * epx_moe_check waits for it. */
        CHECK_OK(epx_moe_check(m, NULL));
        for (int k = 0; k < L; k++)
            CHECK_CALL(check_weights(&xm, b.wt[k], k, cur[k], first, spr));
        CHECK_CALL(round_trip(c, m, &xm, &b, R, me, E, S, l, cur[l], rr[l],
                              r, 0));
    }
    /* A bad placement moves nothing and is refused everywhere. */
    memcpy(next, cur[0], sizeof(int32_t) * (size_t)S);
    if (me == 0)
        next[0] = E;
    CHECK_ST(epx_moe_rebalance(m, 0, next, EPX_REPLICA_LOCAL_FIRST, NULL),
             me == 0 ? EPX_ERR_INVALID : EPX_ERR_PEER);
    CHECK_CALL(check_weights(&xm, b.wt[0], 0, cur[0], first, spr));
    CHECK_CALL(round_trip(c, m, &xm, &b, R, me, E, S, 0, cur[0], rr[0], 99,
                          0));
    epx_moe_destroy(m);
    mem_free(&xm, b.x), mem_free(&xm, b.idx), mem_free(&xm, b.w);
    mem_free(&xm, b.y), mem_free(&xm, b.out);
    for (int l = 0; l < L; l++)
        mem_free(&xm, b.wt[l]);
    mem_stream_destroy(&xm);
    return 0;
}

static int device_ok;

static void run(mcase_t *c, int procs)
{
    for (int host = 1; host >= 0; host--) {
        if (!host && !device_ok)
            continue;
        c->host = host;
        fprintf(stderr, "# %s %s: R %d, %s\n", host ? "host" : "device",
                procs ? "processes" : "threads", c->R,
                c->backend == EPX_GPU_BACKEND_NCCL ? "nccl" : "windows");
        int rc = procs ? (epxt_launch(c->R, 300, migrate_rank, c, NULL) ==
                          EPX_OK ? 0 : 1)
                       : epxt_thread_ranks(c->R, 120, migrate_rank, c);
        assert_int_equal(rc, 0);
    }
}

static void processes_one_gpu(void **state)
{
    (void)state;
    mcase_t c = { 2, EPX_GPU_BACKEND_WINDOWS, 1, 0 };
    run(&c, 1);
}

static void threads_one_gpu(void **state)
{
    (void)state;
    for (int R = 2; R <= 4; R += 2) {
        mcase_t c = { R, EPX_GPU_BACKEND_WINDOWS, 1, 0 };
        run(&c, 0);
    }
}

static void nccl_two_gpus(void **state)
{
    (void)state;
    int ndev = 0;
    if (!device_ok || epx_cuda_devices(&ndev) != EPX_OK || ndev < 2)
        skip();
    mcase_t c = { 2, EPX_GPU_BACKEND_NCCL, 0, 0 };
    assert_int_equal(epxt_thread_ranks(2, 120, migrate_rank, &c), 0);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    epxt_init("test_gpu_migrate");
    setenv("CUDA_DEVICE_MAX_CONNECTIONS", "32", 0);
    device_ok = xmem_have_gpu();
    if (argc > 1 && !strcmp(argv[1], "--device") && !device_ok)
        return 77;
    /* Forked process ranks first, before this process touches CUDA. */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(processes_one_gpu),
        cmocka_unit_test(threads_one_gpu),
        cmocka_unit_test(nccl_two_gpus),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
