/*
 * Bootstraps: how ranks find each other.  Each one yields an all-gather,
 * used only at setup (window creation, engine checks); the data path never
 * goes through it.
 */
#ifndef EPX_BOOTSTRAP_H
#define EPX_BOOTSTRAP_H

#include <stddef.h>
#include <stdint.h>
#include "epx.h"

typedef struct epx_boot {
    int rank, nranks;
    /* gather `bytes` from every rank into recv[nranks*bytes]; collective. */
    epx_status_t (*allgather)(struct epx_boot *b, const void *send,
                              void *recv, size_t bytes);
    void (*destroy)(struct epx_boot *b);
    double timeout_s;
    /* Asked while an all-gather waits (TCP bootstrap, every 100 ms): a
     * status other than EPX_OK ends it (the communicator's liveness: a
     * dead peer never sends its part).  NULL: none. */
    epx_status_t (*check)(void *arg);
    void *check_arg;
} epx_boot_t;

/* TCP star rooted at rank 0.  listen_fd >= 0: rank 0 uses this already
 * bound listening socket (local launcher); else it binds `root`. */
epx_status_t epx__boot_tcp_create(int rank, int nranks, const char *root,
                                  int listen_fd, const char *job_key,
                                  double timeout_s, epx_boot_t **boot);
/* Rank 0's verdict on a hello (bytes, len) answering challenge `nonce`:
 * the rank admitted, or -1 (wrong size, key, magic, job size, rank out of
 * range or taken in fds[nranks]).  Exposed for the fuzzer. */
int epx__boot_judge_hello(const uint8_t nonce[32], const void *bytes,
                          size_t len, const char *key, int nranks,
                          const int *fds);
epx_status_t epx__boot_allgather_create(int rank, int nranks,
                                        epx_allgather_fn fn, void *ctx,
                                        double timeout_s, epx_boot_t **boot);

#endif /* EPX_BOOTSTRAP_H */
