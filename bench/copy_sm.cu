/*
 * epx-bench --device cuda --device-timing: a device-to-device copy on a
 * given number of blocks (one per SM), the fair limit for an engine that
 * runs on that many SMs.  cudaMemcpyAsync spreads over the whole device,
 * so with several ranks sharing a GPU it measures what no rank's kernels
 * may use.  Each thread keeps 8 loads of 16 bytes in flight.
 */
#include <cuda_runtime.h>
#include <stdint.h>
#include "copy_sm.h"

enum { COPY_THREADS = 512, COPY_UNROLL = 8 };

__global__ void __launch_bounds__(COPY_THREADS)
copy_sm_kernel(uint4 *__restrict__ dst, const uint4 *__restrict__ src,
               size_t n16, unsigned char *__restrict__ dtail,
               const unsigned char *__restrict__ stail, size_t ntail)
{
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i + (COPY_UNROLL - 1) * stride < n16; i += COPY_UNROLL * stride) {
        uint4 v[COPY_UNROLL];
#pragma unroll
        for (int u = 0; u < COPY_UNROLL; u++)
            v[u] = __ldg(src + i + u * stride);
#pragma unroll
        for (int u = 0; u < COPY_UNROLL; u++)
            dst[i + u * stride] = v[u];
    }
    for (; i < n16; i += stride)
        dst[i] = __ldg(src + i);
    /* The bytes after the last whole 16 (the sizes are not multiples). */
    const size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t < ntail)
        dtail[t] = stail[t];
}

extern "C" int bench_copy_sm(void *dst, const void *src, size_t bytes,
                             int blocks, void *stream)
{
    const size_t n16 = bytes / 16, done = n16 * 16;
    if (((uintptr_t)dst | (uintptr_t)src) % 16)
        return (int)cudaErrorMisalignedAddress;
    if (blocks < 1)
        blocks = 1;
    copy_sm_kernel<<<blocks, COPY_THREADS, 0, (cudaStream_t)stream>>>(
        (uint4 *)dst, (const uint4 *)src, n16, (unsigned char *)dst + done,
        (const unsigned char *)src + done, bytes - done);
    return (int)cudaGetLastError();
}
