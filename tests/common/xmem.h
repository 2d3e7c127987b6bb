/*
 * A test rank's tensors in host or device memory, for the tests that run
 * the same cases on both executors (tests/moe/test_executors*.c).  Header
 * only: built with the CUDA runtime where the test links it
 * (EPX_HAVE_CUDA), host memory only otherwise.
 */
#ifndef EPX_TEST_XMEM_H
#define EPX_TEST_XMEM_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "config.h"
#include "epx.h"
#ifdef EPX_HAVE_CUDA
#include <cuda_runtime.h>
#include "epx/cuda.h"
#endif

/* Device copies go on the rank's stream: a plain cudaMemcpy may return
 * before its DMA lands, and the stream does not wait for the legacy one. */
typedef struct xmem {
    int dev;            /* device memory (and `stream` a cudaStream_t) */
    void *stream;
} xmem_t;

static inline int mem_alloc(const xmem_t *x, void **p, size_t n)
{
#ifdef EPX_HAVE_CUDA
    if (x->dev)
        return cudaMalloc(p, n) == cudaSuccess ? 0 : -1;
#endif
    return (*p = malloc(n)) ? 0 : -1;
}

static inline void mem_free(const xmem_t *x, void *p)
{
#ifdef EPX_HAVE_CUDA
    if (x->dev) {
        cudaFree(p);
        return;
    }
#endif
    (void)x;
    free(p);
}

static inline int mem_put(const xmem_t *x, void *dst, const void *src, size_t n)
{
#ifdef EPX_HAVE_CUDA
    if (x->dev)
        return cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice,
                               (cudaStream_t)x->stream) == cudaSuccess ? 0 : -1;
#endif
    if (n)
        memcpy(dst, src, n);
    return 0;
}

/* Waits for the stream first (what it reads may still be written). */
static inline int mem_get(const xmem_t *x, void *dst, const void *src, size_t n)
{
#ifdef EPX_HAVE_CUDA
    if (x->dev)
        return cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost,
                               (cudaStream_t)x->stream) == cudaSuccess &&
               cudaStreamSynchronize((cudaStream_t)x->stream) == cudaSuccess
               ? 0 : -1;
#endif
    if (n)
        memcpy(dst, src, n);
    return 0;
}

static inline int mem_sync(const xmem_t *x)
{
#ifdef EPX_HAVE_CUDA
    if (x->dev)
        return cudaStreamSynchronize((cudaStream_t)x->stream) == cudaSuccess
               ? 0 : -1;
#endif
    (void)x;
    return 0;
}

/* Device to device (or host to host) on the stream, inside a captured
 * graph too. */
static inline int mem_copy(const xmem_t *x, void *dst, const void *src,
                           size_t n)
{
#ifdef EPX_HAVE_CUDA
    if (x->dev)
        return cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice,
                               (cudaStream_t)x->stream) == cudaSuccess ? 0 : -1;
#endif
    if (n)
        memcpy(dst, src, n);
    return 0;
}

/* The rank's stream (device), NULL on the host. */
static inline int mem_stream_create(xmem_t *x)
{
    x->stream = NULL;
#ifdef EPX_HAVE_CUDA
    if (x->dev) {
        cudaStream_t st;
        if (cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking) != cudaSuccess)
            return -1;
        x->stream = st;
    }
#endif
    return 0;
}

static inline void mem_stream_destroy(xmem_t *x)
{
#ifdef EPX_HAVE_CUDA
    if (x->stream)
        cudaStreamDestroy((cudaStream_t)x->stream);
#endif
    x->stream = NULL;
}

/* Whether libepx's device executor sees a GPU.  Probed in a child: CUDA
 * must not be initialised in this process before it forks process ranks.
 * Says why not on stdout. */
static inline int xmem_have_gpu(void)
{
#ifndef EPX_HAVE_CUDA
    printf("# device executor not run: libepx was built without CUDA\n");
    return 0;
#else
    pid_t pid = fork();
    if (pid == 0) {
        int n = 0;
        if (epx_cuda_devices(&n) != EPX_OK) {
            printf("# device executor not run: %s\n", epx_last_error());
            fflush(stdout);
            _exit(1);
        }
        _exit(0);
    }
    int status = 0;
    return pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
           WEXITSTATUS(status) == 0;
#endif
}

#endif /* EPX_TEST_XMEM_H */
