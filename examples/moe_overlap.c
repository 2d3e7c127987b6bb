/*
 * Overlap expert compute with dispatch: after epx_dispatch_send, poll
 * with epx_dispatch_poll and run each local expert as soon as all of its
 * rows have arrived, while the sources feeding other experts are still
 * writing.  Poll never waits: it describes the receive buffer as
 * epx_dispatch_recv would and sets ready[j] for every local expert whose
 * sources have all finished (throughput mode: each source's completion
 * word; src/moe/ht_poll.c).  Rows of a ready expert are final and may be
 * read; those of the others may not, and their counts may read 0.
 * epx_dispatch_recv is still called before combine.
 *
 * The experts write their outputs in place, over the received rows, and
 * combine reads them there (on shared memory the sources read them
 * straight from this rank's window).
 *
 * Usage: moe_overlap [RANKS]   (default 4; rank 1 sends no token)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <epx.h>

enum { T = 256, H = 1024, E = 16, K = 4 };

#define CHECK(call)                                                       \
    do {                                                                  \
        if ((call) != EPX_OK) {                                           \
            fprintf(stderr, "%s: %s\n", #call, epx_last_error());         \
            return 1;                                                     \
        }                                                                 \
    } while (0)

/* Every rank's input is a function of (rank, token).  Sources send
 * different amounts (so they finish at different times), each to 8
 * experts of its own: a rank's experts wait for different sources. */
static int tokens_of(int rank) { return rank == 1 ? 0 : T >> rank; }
static float x_of(int rank, int t, int h)
{
    return (float)((rank * 31 + t * 7 + h) % 17 - 8);
}
static int32_t expert_of(int rank, int t, int k)
{
    return (5 * rank + (t + 2 * k) % 8) % E;   /* K distinct */
}
static float weight_of(int k) { return 1.0f / (float)(2 << k); }
/* Expert e multiplies by e + 1: exact in fp32, results compare with ==. */
static float expert(int e, float v) { return (float)(e + 1) * v; }

/* Local expert j's rows: check them against their sources, then compute
 * in place.  Only called once j is ready. */
static int expert_run(const epx_recv_t *rv, int j)
{
    float *rx = rv->x.data;
    int e = rv->local_experts[j];
    for (int64_t r = rv->expert_offsets[j];
         r < rv->expert_offsets[j] + rv->expert_counts[j]; r++) {
        int s = rv->src_rank[r], t = rv->src_token[r], k = 0;
        while (k < K && expert_of(s, t, k) != e)
            k++;
        if (k == K || rv->topk_weights[r] != weight_of(k))
            return 0;
        for (int h = 0; h < H; h++) {
            if (rx[r * H + h] != x_of(s, t, h))
                return 0;
            rx[r * H + h] = expert(e, rx[r * H + h]);
        }
    }
    return 1;
}

/* Runs on every rank. */
static int rank_main(epx_comm_t *comm, void *arg)
{
    (void)arg;
    int rank = epx_comm_rank(comm), rc = 0;

    epx_moe_params_t mp = EPX_MOE_PARAMS_INIT;
    mp.hidden = H;
    mp.num_experts = E;
    mp.topk = K;
    mp.max_tokens_per_rank = T;
    mp.dtype = EPX_DTYPE_FP32;
    mp.layout = EPX_LAYOUT_EXPERT_MAJOR;
    mp.expert_alignment = 8;
    epx_moe_t *moe;
    CHECK(epx_moe_create(comm, &mp, &moe));

    int n = tokens_of(rank);
    float *x = malloc(sizeof(float) * (n ? n : 1) * H);
    float *w = malloc(sizeof(float) * (n ? n : 1) * K);
    int32_t *idx = malloc(sizeof(int32_t) * (n ? n : 1) * K);
    float *out = malloc(sizeof(float) * (n ? n : 1) * H);
    for (int t = 0; t < n; t++) {
        for (int h = 0; h < H; h++)
            x[t * H + h] = x_of(rank, t, h);
        for (int k = 0; k < K; k++) {
            idx[t * K + k] = expert_of(rank, t, k);
            w[t * K + k] = weight_of(k);
        }
    }

    epx_dispatch_args_t da = EPX_DISPATCH_ARGS_INIT;
    da.x = (epx_tensor_t){ x, EPX_DTYPE_FP32, n, H };
    da.topk_idx = (epx_tensor_t){ idx, EPX_DTYPE_INT32, n, K };
    da.topk_weights = (epx_tensor_t){ w, EPX_DTYPE_FP32, n, K };
    epx_handle_t *handle = NULL;
    epx_recv_t rv = { .struct_size = sizeof(rv) };
    CHECK(epx_dispatch_send(moe, &da, &handle));

    /* Poll until every local expert has run.  An expert run while
     * another one was not ready yet is compute that overlapped the
     * exchange.  A real engine would run other work (shared experts,
     * attention of the next micro-batch) where nothing is ready. */
    int nl = epx_moe_num_local_experts(moe), num_ready = 0, done_n = 0;
    int polls = 0, early = 0;
    uint8_t *ready = calloc(nl ? nl : 1, 1), *done = calloc(nl ? nl : 1, 1);
    while (done_n < nl && !rc) {
        CHECK(epx_dispatch_poll(moe, handle, &rv, ready, &num_ready));
        polls++;
        for (int j = 0; j < nl; j++)
            if (ready[j] && !done[j]) {
                if (!expert_run(&rv, j)) {
                    fprintf(stderr, "rank %d: expert %d: rows differ from "
                            "their sources'\n", rank, rv.local_experts[j]);
                    rc = 1;
                }
                done[j] = 1;
                done_n++;
                early += num_ready < nl;
            }
    }
    CHECK(epx_dispatch_recv(moe, handle, &rv));   /* required: all arrived */

    epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
    ca.y = rv.x;   /* in place: the outputs overwrote the received rows */
    epx_tensor_t o = { out, EPX_DTYPE_FP32, n, H };
    CHECK(epx_combine_send(moe, handle, &ca));   /* applies the weights */
    CHECK(epx_combine_recv(moe, handle, &o));
    epx_handle_release(handle);

    for (int t = 0; t < n && !rc; t++)
        for (int h = 0; h < H; h++) {
            float ref = 0.0f;
            for (int k = 0; k < K; k++)
                ref += w[t * K + k] * expert(idx[t * K + k], x[t * H + h]);
            if (out[t * H + h] != ref) {
                fprintf(stderr, "rank %d: token %d: combined output "
                        "differs\n", rank, t);
                rc = 1;
                break;
            }
        }
    if (!rc)
        printf("rank %d: %d experts, %d of them run while others' rows were "
               "in flight (%d polls), ok\n", rank, nl, early, polls);
    free(x); free(w); free(idx); free(out); free(ready); free(done);
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
