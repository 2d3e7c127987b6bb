/*
 * Token-major layout: one received row per (source token, this rank),
 * however many of the token's experts live here, so a token crosses to a
 * rank once.  The row carries the token's top-k choices translated to
 * this rank: the local expert id (-1 where that expert lives elsewhere)
 * and its weight.  The engine runs its local experts on the row, sums
 * their outputs with those weights itself, and returns one row per
 * received row; combine adds the rows of the token's ranks and does not
 * weight them again.  (Expert-major, moe.c, sends one row per (token,
 * expert) instead, grouped by expert, and combine applies the weights.)
 *
 * Usage: moe_token_major [RANKS]   (default 4; rank 1 sends no token)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <epx.h>

enum { T = 32, H = 512, E = 16, K = 4 };

#define CHECK(call)                                                       \
    do {                                                                  \
        if ((call) != EPX_OK) {                                           \
            fprintf(stderr, "%s: %s\n", #call, epx_last_error());         \
            return 1;                                                     \
        }                                                                 \
    } while (0)

/* Every rank's input is a function of (rank, token), so that each rank
 * can compute what it must receive and what combine must return. */
static int tokens_of(int rank) { return rank == 1 ? 0 : T - rank; }
static float x_of(int rank, int t, int h)
{
    return (float)((rank * 31 + t * 7 + h) % 17 - 8);
}
static int32_t expert_of(int rank, int t, int k)
{
    if (k == K - 1 && t % 5 == 4)   /* some tokens choose K - 1 experts */
        return -1;
    return (rank * 5 + t * 3 + k * (E / K)) % E;   /* K distinct */
}
static float weight_of(int k) { return 1.0f / (float)(2 << k); }
/* Expert e multiplies by e + 1.  Small integers times powers of two:
 * every sum in this program is exact in fp32, so results compare with ==
 * whatever order epx adds them in. */
static float expert(int e, float v) { return (float)(e + 1) * v; }

static int fail(int rank, const char *what, long long row)
{
    fprintf(stderr, "rank %d: %s (row %lld)\n", rank, what, row);
    return 1;
}

/* Runs on every rank. */
static int rank_main(epx_comm_t *comm, void *arg)
{
    (void)arg;
    int rank = epx_comm_rank(comm), R = epx_comm_size(comm);

    epx_moe_params_t mp = EPX_MOE_PARAMS_INIT;
    mp.hidden = H;
    mp.num_experts = E;
    mp.topk = K;
    mp.max_tokens_per_rank = T;
    mp.dtype = EPX_DTYPE_FP32;
    mp.layout = EPX_LAYOUT_TOKEN_MAJOR;
    epx_moe_t *moe;
    CHECK(epx_moe_create(comm, &mp, &moe));

    int n = tokens_of(rank);   /* 0 is fine: the rank still takes part */
    float *x = malloc(sizeof(float) * (n ? n : 1) * H);
    float *w = malloc(sizeof(float) * (n ? n : 1) * K);
    int32_t *idx = malloc(sizeof(int32_t) * (n ? n : 1) * K);
    float *out = malloc(sizeof(float) * (n ? n : 1) * H);
    for (int t = 0; t < n; t++) {
        for (int h = 0; h < H; h++)
            x[t * H + h] = x_of(rank, t, h);
        for (int k = 0; k < K; k++) {
            idx[t * K + k] = expert_of(rank, t, k);
            w[t * K + k] = idx[t * K + k] < 0 ? 0.0f : weight_of(k);
        }
    }

    epx_dispatch_args_t da = EPX_DISPATCH_ARGS_INIT;
    da.x = (epx_tensor_t){ x, EPX_DTYPE_FP32, n, H };
    da.topk_idx = (epx_tensor_t){ idx, EPX_DTYPE_INT32, n, K };
    da.topk_weights = (epx_tensor_t){ w, EPX_DTYPE_FP32, n, K };
    epx_handle_t *handle = NULL;
    epx_recv_t rv = { .struct_size = sizeof(rv) };
    CHECK(epx_dispatch_send(moe, &da, &handle));
    CHECK(epx_dispatch_recv(moe, handle, &rv));

    /* What must have arrived: every token of every rank with at least
     * one expert here, once, and per local expert its tokens. */
    int first = rv.first_local_expert, nl = rv.num_local_experts, rc = 0;
    long long want_rows = 0, want_count[E] = { 0 };
    for (int s = 0; s < R; s++)
        for (int t = 0; t < tokens_of(s); t++) {
            int here = 0;
            for (int k = 0; k < K; k++) {
                int e = expert_of(s, t, k);
                if (e >= first && e < first + nl) {
                    want_count[e - first]++;
                    here = 1;
                }
            }
            want_rows += here;
        }
    if (rv.num_rows != want_rows)
        rc = fail(rank, "wrong number of rows", rv.num_rows);
    for (int j = 0; j < nl && !rc; j++)
        if (rv.expert_counts[j] != want_count[j])
            rc = fail(rank, "wrong expert count", j);

    /* Expert compute.  Row i holds token src_token[i] of rank src_rank[i];
     * its slot k names a local expert (or -1) and that expert's weight.
     * The row's output is the weighted sum of its local experts. */
    const float *rx = rv.x.data;
    float *y = calloc((size_t)(rv.num_rows ? rv.num_rows : 1) * H,
                      sizeof(float));
    for (int64_t i = 0; i < rv.num_rows && !rc; i++) {
        int s = rv.src_rank[i], t = rv.src_token[i];
        if (s < 0 || s >= R || t < 0 || t >= tokens_of(s)) {
            rc = fail(rank, "bad source", i);
            break;
        }
        for (int h = 0; h < H; h++)
            if (rx[i * H + h] != x_of(s, t, h))
                rc = fail(rank, "x differs from the source's", i);
        for (int k = 0; k < K && !rc; k++) {
            int e = expert_of(s, t, k), j = rv.topk_idx[i * K + k];
            int want = e >= first && e < first + nl ? e - first : -1;
            float wk = rv.topk_weights[i * K + k];
            if (j != want || wk != (want < 0 ? 0.0f : weight_of(k)))
                rc = fail(rank, "top-k slot differs from the source's", i);
            else if (j >= 0)   /* local_experts: the logical expert id */
                for (int h = 0; h < H; h++)
                    y[i * H + h] += wk * expert(rv.local_experts[j],
                                                rx[i * H + h]);
        }
    }

    epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
    ca.y = (epx_tensor_t){ y, EPX_DTYPE_FP32, rv.num_rows, H };
    epx_tensor_t o = { out, EPX_DTYPE_FP32, n, H };
    CHECK(epx_combine_send(moe, handle, &ca));   /* no weights applied */
    CHECK(epx_combine_recv(moe, handle, &o));
    epx_handle_release(handle);

    /* out[t] = sum over the token's experts of weight * expert(x[t]). */
    for (int t = 0; t < n && !rc; t++)
        for (int h = 0; h < H; h++) {
            float ref = 0.0f;
            for (int k = 0; k < K; k++)
                if (idx[t * K + k] >= 0)
                    ref += w[t * K + k] * expert(idx[t * K + k], x[t * H + h]);
            if (out[t * H + h] != ref) {
                rc = fail(rank, "combined output differs", t);
                break;
            }
        }
    if (!rc)
        printf("rank %d: sent %d tokens, received %lld token rows for "
               "experts %d..%d, ok\n", rank, n, (long long)rv.num_rows,
               first, first + nl - 1);
    free(x); free(w); free(idx); free(out); free(y);
    epx_moe_destroy(moe);
    return rc;
}

int main(int argc, char **argv)
{
    /* Started by a launcher that set EPX_RANK, EPX_NRANKS, EPX_ROOT and
     * EPX_JOB_KEY: this process is one rank. */
    if (getenv("EPX_NRANKS")) {
        epx_comm_params_t cp = EPX_COMM_PARAMS_INIT;
        epx_comm_t *comm;
        CHECK(epx_comm_create(&cp, &comm));
        int rc = rank_main(comm, NULL);
        epx_comm_destroy(comm);
        return rc;
    }
    /* Otherwise fork the ranks on this host. */
    int ranks = argc > 1 ? atoi(argv[1]) : 4, failed = -1;
    if (epx_launch_local(ranks, NULL, rank_main, NULL, &failed) != EPX_OK) {
        fprintf(stderr, "rank %d failed: %s\n", failed, epx_last_error());
        return 1;
    }
    return 0;
}
