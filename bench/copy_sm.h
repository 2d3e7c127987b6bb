/* bench/copy_sm.cu: a device copy on `blocks` blocks (one per SM), the
 * copy limit of an engine given that many SMs.  dst and src 16-byte
 * aligned; returns a cudaError_t (0: queued on stream). */
#ifndef EPX_BENCH_COPY_SM_H
#define EPX_BENCH_COPY_SM_H
#include <stddef.h>
#ifdef __cplusplus
extern "C" {
#endif
int bench_copy_sm(void *dst, const void *src, size_t bytes, int blocks,
                  void *stream);
#ifdef __cplusplus
}
#endif
#endif
