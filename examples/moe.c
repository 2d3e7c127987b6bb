#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <epx.h>

enum { RANKS = 8, T = 128, H = 7168, E = 256, K = 8 };

#define CHECK(call)                                                       \
    do {                                                                  \
        if ((call) != EPX_OK) {                                           \
            fprintf(stderr, "%s: %s\n", #call, epx_last_error());         \
            return 1;                                                     \
        }                                                                 \
    } while (0)

/* Runs on every rank. */
static int rank_main(epx_comm_t *comm, void *arg)
{
    (void)arg;
    int rank = epx_comm_rank(comm);

    epx_moe_params_t mp = EPX_MOE_PARAMS_INIT;
    mp.hidden = H;
    mp.num_experts = E;
    mp.topk = K;
    mp.max_tokens_per_rank = T;
    mp.dtype = EPX_DTYPE_FP32;
    mp.layout = EPX_LAYOUT_EXPERT_MAJOR;   /* ready for a grouped GEMM */
    mp.expert_alignment = 128;
    epx_moe_t *moe;
    CHECK(epx_moe_create(comm, &mp, &moe));

    float *x = malloc(sizeof(float) * T * H);
    float *w = malloc(sizeof(float) * T * K);
    int32_t *idx = malloc(sizeof(int32_t) * T * K);
    float *out = malloc(sizeof(float) * T * H);
    for (int t = 0; t < T; t++) {
        for (int h = 0; h < H; h++)
            x[t * H + h] = (float)(rank + t);
        for (int k = 0; k < K; k++) {           /* K distinct experts */
            idx[t * K + k] = (t + k * (E / K)) % E;
            w[t * K + k] = 1.0f / K;
        }
    }

    epx_dispatch_args_t da = EPX_DISPATCH_ARGS_INIT;
    da.x = (epx_tensor_t){ x, EPX_DTYPE_FP32, T, H };
    da.topk_idx = (epx_tensor_t){ idx, EPX_DTYPE_INT32, T, K };
    da.topk_weights = (epx_tensor_t){ w, EPX_DTYPE_FP32, T, K };
    epx_handle_t *handle = NULL;
    epx_recv_t rv = { .struct_size = sizeof(rv) };
    CHECK(epx_dispatch_send(moe, &da, &handle));
    /* ... independent work can run here ... */
    CHECK(epx_dispatch_recv(moe, handle, &rv));

    /* Expert compute.  Local expert e owns rv.expert_counts[e] rows from
     * row rv.expert_offsets[e] of rv.x; a real engine runs its grouped
     * GEMM here.  These experts are the identity. */
    float *y = malloc(sizeof(float) * (rv.num_rows ? rv.num_rows : 1) * H);
    memcpy(y, rv.x.data, sizeof(float) * rv.num_rows * H);

    epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
    ca.y = (epx_tensor_t){ y, EPX_DTYPE_FP32, rv.num_rows, H };
    epx_tensor_t o = { out, EPX_DTYPE_FP32, T, H };
    CHECK(epx_combine_send(moe, handle, &ca));   /* applies the weights */
    CHECK(epx_combine_recv(moe, handle, &o));
    epx_handle_release(handle);

    /* Identity experts and weights summing to 1: out == x. */
    int ok = memcmp(out, x, sizeof(float) * T * H) == 0;
    printf("rank %d: received %lld rows, out %s x\n", rank,
           (long long)rv.num_rows, ok ? "==" : "!=");
    free(x); free(w); free(idx); free(out); free(y);
    epx_moe_destroy(moe);
    return ok ? 0 : 1;
}

int main(void)
{
    int failed = -1;
    /* Fork RANKS processes on this host, one communicator over them. */
    if (epx_launch_local(RANKS, NULL, rank_main, NULL, &failed) != EPX_OK) {
        fprintf(stderr, "rank %d failed: %s\n", failed, epx_last_error());
        return 1;
    }
    return 0;
}
