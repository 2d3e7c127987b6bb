/*
 * Low-latency mode (decode): small batches, one call after another.
 * What differs from throughput mode (moe.c):
 *   - no count exchange: dispatch_send does not wait for the other ranks;
 *     each (local expert, source rank) pair owns a fixed range of
 *     `capacity` rows, so a source knows every offset by itself;
 *   - the output has a fixed shape, [local experts][ranks][capacity]
 *     rows: source s's rows for local expert j start at row
 *     (j * ranks + s) * capacity, in s's token order, and the rest of the
 *     range is padding (src_rank -1); expert_counts[j] sums over sources
 *     (not a contiguous prefix).  Buffers can be sized once;
 *   - up to ll_buffers calls may be outstanding: call c + 1 is dispatched
 *     while call c's experts compute, and calls combine in order;
 *   - expert-major only; more rows than capacity fail the call on every
 *     rank (EPX_ERR_RANGE), or are dropped and counted with
 *     EPX_MOE_LL_DROP.  Here capacity = T: nothing can overflow.
 *
 * Usage: moe_ll [RANKS]   (default 4; some ranks send no token in some calls)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <epx.h>

enum { T = 8, H = 256, E = 12, K = 3, CALLS = 6 };

#define CHECK(call)                                                       \
    do {                                                                  \
        if ((call) != EPX_OK) {                                           \
            fprintf(stderr, "%s: %s\n", #call, epx_last_error());         \
            return 1;                                                     \
        }                                                                 \
    } while (0)

/* Input of (rank, call): every rank can recompute any rank's. */
static int tokens_of(int rank, int c)
{
    return (rank + c) % 4 == 1 ? 0 : T - (rank + 2 * c) % 5;
}
static float x_of(int rank, int c, int t, int h)
{
    return (float)((rank * 31 + c * 11 + t * 7 + h) % 17 - 8);
}
static int32_t expert_of(int rank, int c, int t, int k)
{
    return (rank * 5 + c * 7 + t * 3 + k * (E / K)) % E;   /* K distinct */
}
static float weight_of(int k) { return 1.0f / (float)(2 << k); }
/* Expert e multiplies by e + 1: exact in fp32, results compare with ==. */
static float expert(int e, float v) { return (float)(e + 1) * v; }

typedef struct call_in {
    float x[T * H], w[T * K];
    int32_t idx[T * K];
} call_in_t;

static epx_status_t send_call(epx_moe_t *moe, int rank, int c, call_in_t *in,
                              epx_handle_t **handle)
{
    int n = tokens_of(rank, c);
    for (int t = 0; t < n; t++) {
        for (int h = 0; h < H; h++)
            in->x[t * H + h] = x_of(rank, c, t, h);
        for (int k = 0; k < K; k++) {
            in->idx[t * K + k] = expert_of(rank, c, t, k);
            in->w[t * K + k] = weight_of(k);
        }
    }
    epx_dispatch_args_t da = EPX_DISPATCH_ARGS_INIT;
    da.x = (epx_tensor_t){ in->x, EPX_DTYPE_FP32, n, H };
    da.topk_idx = (epx_tensor_t){ in->idx, EPX_DTYPE_INT32, n, K };
    da.topk_weights = (epx_tensor_t){ in->w, EPX_DTYPE_FP32, n, K };
    return epx_dispatch_send(moe, &da, handle);
}

/* Walk the fixed layout against what each source sent, and run the
 * experts on the rows that hold a token (padding rows stay 0). */
static int expert_compute(const epx_recv_t *rv, int R, int c, float *y)
{
    const float *rx = rv->x.data;
    const int cap = rv->capacity;
    if (cap != T || rv->num_dropped != 0 ||
        rv->num_rows != (int64_t)rv->num_local_experts * R * cap)
        return 0;
    memset(y, 0, sizeof(float) * (size_t)rv->num_rows * H);
    for (int j = 0; j < rv->num_local_experts; j++) {
        int e = rv->local_experts[j];
        int64_t got = 0;
        if (rv->expert_offsets[j] != (int64_t)j * R * cap)
            return 0;
        for (int s = 0; s < R; s++) {
            int64_t row = ((int64_t)j * R + s) * cap;
            for (int t = 0; t < tokens_of(s, c); t++)
                for (int k = 0; k < K; k++) {
                    if (expert_of(s, c, t, k) != e)
                        continue;
                    if (rv->src_rank[row] != s || rv->src_token[row] != t ||
                        rv->topk_weights[row] != weight_of(k))
                        return 0;
                    for (int h = 0; h < H; h++) {
                        if (rx[row * H + h] != x_of(s, c, t, h))
                            return 0;
                        y[row * H + h] = expert(e, rx[row * H + h]);
                    }
                    row++, got++;
                }
            for (; row < ((int64_t)j * R + s + 1) * cap; row++)
                if (rv->src_rank[row] != -1)   /* padding */
                    return 0;
        }
        if (rv->expert_counts[j] != got)
            return 0;
    }
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
    mp.layout = EPX_LAYOUT_EXPERT_MAJOR;   /* the only one here */
    mp.mode = EPX_MODE_LOW_LATENCY;
    mp.ll_capacity = T;    /* rows per (local expert, source rank) */
    mp.ll_buffers = 2;     /* calls that may be outstanding */
    epx_moe_t *moe;
    CHECK(epx_moe_create(comm, &mp, &moe));

    /* The shape is fixed: y and out are allocated once for all calls. */
    int64_t max_rows = (int64_t)epx_moe_num_local_experts(moe) * R * T;
    float *y = malloc(sizeof(float) * (size_t)(max_rows ? max_rows : 1) * H);
    float *out = malloc(sizeof(float) * T * H);
    call_in_t *in = malloc(2 * sizeof(call_in_t));   /* one per buffer */
    epx_handle_t *handle[2] = { NULL, NULL };
    int rc = 0, sent[CALLS];

    CHECK(send_call(moe, rank, 0, &in[0], &handle[0]));
    for (int c = 0; c < CALLS; c++) {
        epx_handle_t *h = handle[c % 2];
        epx_recv_t rv = { .struct_size = sizeof(rv) };
        CHECK(epx_dispatch_recv(moe, h, &rv));
        /* Call c + 1 goes out now, its rows travelling while call c's
         * experts compute.  Call c's recv stays valid until its combine. */
        if (c + 1 < CALLS)
            CHECK(send_call(moe, rank, c + 1, &in[(c + 1) % 2],
                            &handle[(c + 1) % 2]));
        if (!expert_compute(&rv, R, c, y)) {
            fprintf(stderr, "rank %d: call %d: received rows differ\n", rank, c);
            rc = 1;
        }
        epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
        ca.y = (epx_tensor_t){ y, EPX_DTYPE_FP32, rv.num_rows, H };
        int n = sent[c] = tokens_of(rank, c);
        epx_tensor_t o = { out, EPX_DTYPE_FP32, n, H };
        CHECK(epx_combine_send(moe, h, &ca));   /* applies the weights */
        CHECK(epx_combine_recv(moe, h, &o));
        epx_handle_release(h);

        const call_in_t *ci = &in[c % 2];
        for (int t = 0; t < n && !rc; t++)
            for (int hh = 0; hh < H; hh++) {
                float ref = 0.0f;
                for (int k = 0; k < K; k++)
                    ref += ci->w[t * K + k] *
                           expert(ci->idx[t * K + k], ci->x[t * H + hh]);
                if (out[t * H + hh] != ref) {
                    fprintf(stderr, "rank %d: call %d: token %d: combined "
                            "output differs\n", rank, c, t);
                    rc = 1;
                    break;
                }
            }
    }
    if (!rc) {
        printf("rank %d: %d calls, two in flight, tokens sent:", rank, CALLS);
        for (int c = 0; c < CALLS; c++)
            printf(" %d", sent[c]);
        printf(", ok\n");
    }
    free(y); free(out); free(in);
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
