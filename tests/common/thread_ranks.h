/*
 * Several ranks in one process: each thread is one rank of a communicator
 * bootstrapped with EPX_BOOTSTRAP_ALLGATHER over an in-process all-gather
 * (a barrier and a shared buffer), the way an engine plugs its own store.
 */
#ifndef EPX_TEST_THREAD_RANKS_H
#define EPX_TEST_THREAD_RANKS_H

#include "epx.h"

/* Run fn(comm, arg) on `nranks` threads and destroy each comm after it.
 * Returns 0 when every rank returned 0, else 1 after printing each
 * failing rank's first failure.  timeout_s bounds the all-gather and the
 * communicator's waits. */
int epxt_thread_ranks(int nranks, double timeout_s, epx_rank_fn fn,
                      void *arg);

#endif /* EPX_TEST_THREAD_RANKS_H */
