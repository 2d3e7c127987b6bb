/*
 * Ranks as processes started by hand (env bootstrap), without the local
 * launcher: nothing stops the others when one dies, so a test can kill a
 * rank and watch the survivors.
 */
#ifndef EPX_TEST_PROC_RANKS_H
#define EPX_TEST_PROC_RANKS_H

#include "epx.h"

/* Fork `nranks` processes; each gets EPX_RANK, EPX_NRANKS, EPX_ROOT (a
 * free loopback port) and EPX_JOB_KEY in its environment, then exits with
 * fn(rank, arg) (which creates its communicator with EPX_BOOTSTRAP_ENV).
 * Waits up to `seconds` (then kills what is left: code 124).  rc[r]:
 * exit code, or 128 + signal.  Returns 0 when all exited 0. */
int epxt_proc_ranks(int nranks, int (*fn)(int rank, void *arg), void *arg,
                    double seconds, int *rc);

/* epx_comm_create from the environment (EPX_BOOTSTRAP_ENV). */
epx_status_t epxt_env_comm(epx_comm_t **comm);

#endif /* EPX_TEST_PROC_RANKS_H */
