#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cuda_runtime.h>
#include <epx.h>
#include <epx/cuda.h>

enum { RANKS = 8, T = 128, H = 7168, E = 256, K = 8 };

#define CUDA(call)                                                        \
    do {                                                                  \
        if ((call) != cudaSuccess) {                                      \
            fprintf(stderr, "%s failed\n", #call);                        \
            return 1;                                                     \
        }                                                                 \
    } while (0)

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
    int rank = epx_comm_rank(comm), ndev = 0;
    CUDA(cudaGetDeviceCount(&ndev));
    CUDA(cudaSetDevice(rank % ndev));
    cudaStream_t s;
    CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));

    epx_moe_params_t mp = EPX_MOE_PARAMS_INIT;
    mp.hidden = H;
    mp.num_experts = E;
    mp.topk = K;
    mp.max_tokens_per_rank = T;
    mp.dtype = EPX_DTYPE_FP32;
    mp.layout = EPX_LAYOUT_EXPERT_MAJOR;   /* ready for a grouped GEMM */
    mp.expert_alignment = 128;
    mp.device = rank % ndev;               /* a device rank */
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

    /* The tensors in device memory, uploaded on the rank's stream. */
    float *dx, *dw, *dout, *dy;
    int32_t *didx;
    CUDA(cudaMalloc((void **)&dx, sizeof(float) * T * H));
    CUDA(cudaMalloc((void **)&dw, sizeof(float) * T * K));
    CUDA(cudaMalloc((void **)&didx, sizeof(int32_t) * T * K));
    CUDA(cudaMalloc((void **)&dout, sizeof(float) * T * H));
    CUDA(cudaMemcpyAsync(dx, x, sizeof(float) * T * H,
                         cudaMemcpyHostToDevice, s));
    CUDA(cudaMemcpyAsync(dw, w, sizeof(float) * T * K,
                         cudaMemcpyHostToDevice, s));
    CUDA(cudaMemcpyAsync(didx, idx, sizeof(int32_t) * T * K,
                         cudaMemcpyHostToDevice, s));

    epx_dispatch_args_t da = EPX_DISPATCH_ARGS_INIT;
    da.x = (epx_tensor_t){ dx, EPX_DTYPE_FP32, T, H };
    da.topk_idx = (epx_tensor_t){ didx, EPX_DTYPE_INT32, T, K };
    da.topk_weights = (epx_tensor_t){ dw, EPX_DTYPE_FP32, T, K };
    da.stream = s;
    epx_handle_t *handle = NULL;
    epx_recv_t rv = { .struct_size = sizeof(rv) };
    CHECK(epx_dispatch_send(moe, &da, &handle));
    /* ... independent work can run here ... */
    CHECK(epx_dispatch_recv(moe, handle, &rv));

    /* Expert compute.  Local expert e owns rv.expert_counts[e] rows from
     * row rv.expert_offsets[e] of rv.x; a real engine runs its grouped
     * GEMM here.  These experts are the identity. */
    CUDA(cudaMalloc((void **)&dy,
                    sizeof(float) * (rv.num_rows ? rv.num_rows : 1) * H));
    CUDA(cudaMemcpyAsync(dy, rv.x.data, sizeof(float) * rv.num_rows * H,
                         cudaMemcpyDeviceToDevice, s));

    epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
    ca.y = (epx_tensor_t){ dy, EPX_DTYPE_FP32, rv.num_rows, H };
    ca.stream = s;
    epx_tensor_t o = { dout, EPX_DTYPE_FP32, T, H };
    CHECK(epx_combine_send(moe, handle, &ca));   /* applies the weights */
    CHECK(epx_combine_recv(moe, handle, &o));
    epx_handle_release(handle);
    CUDA(cudaMemcpyAsync(out, dout, sizeof(float) * T * H,
                         cudaMemcpyDeviceToHost, s));
    CUDA(cudaStreamSynchronize(s));

    /* Identity experts and weights summing to 1: out == x. */
    int ok = memcmp(out, x, sizeof(float) * T * H) == 0;
    printf("rank %d: received %lld rows, out %s x\n", rank,
           (long long)rv.num_rows, ok ? "==" : "!=");
    free(x); free(w); free(idx); free(out);
    epx_moe_destroy(moe);   /* before the buffers: it waits for peers */
    cudaFree(dx); cudaFree(dw); cudaFree(didx); cudaFree(dout); cudaFree(dy);
    cudaStreamDestroy(s);
    return ok ? 0 : 1;
}

/* Is there a CUDA device?  Asked in a forked rank, so that this process
 * touches no CUDA before the ranks fork. */
static int has_device(epx_comm_t *comm, void *arg)
{
    (void)comm; (void)arg;
    int n = 0;
    return epx_cuda_devices(&n) == EPX_OK && n > 0 ? 0 : 1;
}

int main(void)
{
    int failed = -1;
    if (epx_launch_local(1, NULL, has_device, NULL, NULL) != EPX_OK) {
        printf("no CUDA device (or libepx without CUDA): skipped\n");
        return 77;   /* the test suite's "skipped" */
    }
    /* Fork RANKS processes on this host, one communicator over them
     * (before any CUDA call in this process: each rank starts its own). */
    if (epx_launch_local(RANKS, NULL, rank_main, NULL, &failed) != EPX_OK) {
        fprintf(stderr, "rank %d failed: %s\n", failed, epx_last_error());
        return 1;
    }
    return 0;
}
