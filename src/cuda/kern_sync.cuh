/*
 * The kernels' synchronisation primitives, one copy for every kernel file:
 * system-scope acquire loads and release stores of the words peers
 * exchange through the windows (peers may be other processes, other
 * GPUs), and the global timer that bounds every wait by EPX_TIMEOUT.
 */
#ifndef EPX_CUDA_KERN_SYNC_CUH
#define EPX_CUDA_KERN_SYNC_CUH

#include <stdint.h>

__device__ static __forceinline__ uint64_t epxk_ld_acquire_u64(const uint64_t *p)
{
    uint64_t v;
    asm volatile("ld.acquire.sys.global.u64 %0, [%1];"
                 : "=l"(v) : "l"(p) : "memory");
    return v;
}

__device__ static __forceinline__ int32_t epxk_ld_acquire_s32(const int32_t *p)
{
    int32_t v;
    asm volatile("ld.acquire.sys.global.s32 %0, [%1];"
                 : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ static __forceinline__ void epxk_st_release_u64(uint64_t *p,
                                                           uint64_t v)
{
    asm volatile("st.release.sys.global.u64 [%0], %1;"
                 :: "l"(p), "l"(v) : "memory");
}

__device__ static __forceinline__ void epxk_st_release_s32(int32_t *p,
                                                           int32_t v)
{
    asm volatile("st.release.sys.global.s32 [%0], %1;"
                 :: "l"(p), "r"(v) : "memory");
}

/* A strong (relaxed) store: after a system fence it is that fence's
 * release (PTX's release pattern), so several words can follow one
 * fence instead of a release each. */
__device__ static __forceinline__ void epxk_st_relaxed_s32(int32_t *p,
                                                           int32_t v)
{
    asm volatile("st.relaxed.sys.global.s32 [%0], %1;"
                 :: "l"(p), "r"(v) : "memory");
}

/* Nanoseconds of %globaltimer. */
__device__ static __forceinline__ uint64_t epxk_now(void)
{
    uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

/* Between polls: nothing. */
struct epxk_no_pause {
    __device__ void operator()(unsigned) const {}
};

/* Poll done() until it holds (true) or timeout_ns have passed (false,
 * after raising *err, the call's error word, which the host turns into
 * EPX_ERR_TIMEOUT).  The timer is slow to read: it is read every mask + 1
 * polls and starts at the first reading.  pause(n) runs between polls. */
template <typename F, typename P = epxk_no_pause>
__device__ static __forceinline__ bool epxk_wait(F done, uint64_t timeout_ns,
                                                 int64_t *err,
                                                 unsigned mask = 1023u,
                                                 P pause = P())
{
    uint64_t t0 = 0;
    for (unsigned n = 0;; n++) {
        if (done())
            return true;
        if ((n & mask) == 0) {
            const uint64_t t = epxk_now();
            if (t0 == 0) {
                t0 = t;
            } else if (t - t0 > timeout_ns) {
                atomicExch((unsigned long long *)err, 1ull);
                return false;
            }
        }
        pause(n);
    }
}

/* Last block of the grid to get here returns true (all blocks' stores
 * fenced before their arrival); it resets the counter for the next use. */
__device__ static bool epxk_grid_last(unsigned *done)
{
    __shared__ bool last;
    __threadfence_system();
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned prev = atomicAdd(done, 1u);
        last = prev == gridDim.x - 1;
        if (last)
            *done = 0;
        __threadfence_system();
    }
    __syncthreads();
    return last;
}

/* Load kernels now (0 or the cudaError_t): ranks run as threads wait for
 * each other inside kernels, and CUDA's lazy loading of a kernel at its
 * first launch can wait for a peer's kernel that waits for this one. */
static inline int epxk_load_kernels(const void *const *k, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        cudaFuncAttributes a;
        cudaError_t e = cudaFuncGetAttributes(&a, k[i]);
        if (e != cudaSuccess)
            return (int)e;
    }
    return 0;
}

#endif /* EPX_CUDA_KERN_SYNC_CUH */
