/*
 * Helpers shared by the test programs: the run's seed, checks inside ranks,
 * a launcher wrapper, deterministic random numbers, /dev/shm inspection.
 *
 * Checks inside a rank (a forked child or a thread) must not go through
 * cmocka: they print the failure with file:line and make the rank function
 * return 1, and the parent's cmocka test asserts on the launcher's result.
 */
#ifndef EPX_TEST_H
#define EPX_TEST_H

#include <stddef.h>
#include <stdint.h>
#include "epx.h"

/* ---- process setup */

/* Call first in main: picks the seed (EPX_TEST_SEED or a fresh one) and
 * prints it, sets EPX_TIMEOUT to 60 s unless the environment has one, and
 * applies EPX_TEST_FILTER (a cmocka test-name pattern). */
void epxt_init(const char *prog);
uint64_t epxt_seed(void);
/* dflt, or EPX_TIMEOUT where the user set a smaller one before epxt_init
 * (whose own default, 60, does not count): the limit of a harness that
 * passes its own timeout to the communicator. */
double epxt_timeout(double dflt);

/* ---- deterministic random numbers (counter based: any rank can regenerate
 * any value without communication) */

static inline uint64_t epxt_mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}
uint64_t epxt_hash(uint64_t seed, uint64_t a, uint64_t b, uint64_t c,
                   uint64_t d);
uint64_t epxt_hash_str(uint64_t seed, const char *s);

typedef struct epxt_rng { uint64_t state; } epxt_rng_t;
static inline uint64_t epxt_next(epxt_rng_t *r)
{
    return epxt_mix64(r->state += 0x9e3779b97f4a7c15ull);
}
/* Uniform in [0, n), n > 0. */
static inline uint64_t epxt_below(epxt_rng_t *r, uint64_t n)
{
    return epxt_next(r) % n;
}

/* ---- checks inside a rank */

/* Label failures of this thread with its rank (and the run's seed). */
void epxt_rank_label(int rank);
/* Print "rank R: file:line: message" (once per thread: the first failure
 * is kept, later ones are usually its consequences) and return 1. */
int epxt_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The first failure recorded by this thread, "" if none. */
const char *epxt_first_failure(void);

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond))                                                           \
            return epxt_fail(__FILE__, __LINE__, "check failed: %s", #cond);   \
    } while (0)
#define CHECKF(cond, ...)                                                      \
    do {                                                                       \
        if (!(cond))                                                           \
            return epxt_fail(__FILE__, __LINE__, __VA_ARGS__);                 \
    } while (0)
/* expr must return `want` (an epx_status_t). */
#define CHECK_ST(expr, want)                                                   \
    do {                                                                       \
        epx_status_t st_ = (expr), want_ = (want);                             \
        if (st_ != want_)                                                      \
            return epxt_fail(__FILE__, __LINE__, "%s -> %s, want %s (%s)",     \
                             #expr, epx_status_str(st_),                       \
                             epx_status_str(want_), epx_last_error());         \
    } while (0)
#define CHECK_OK(expr) CHECK_ST(expr, EPX_OK)
/* A helper that itself uses CHECK: propagate its failure. */
#define CHECK_CALL(expr)                                                       \
    do {                                                                       \
        if ((expr) != 0)                                                       \
            return 1;                                                          \
    } while (0)

/* ---- launching ranks */

/* epx_launch_local with a timeout (<= 0: EPX_TIMEOUT) and a wrapper that
 * labels the rank and gives fatal signals back their default action (a
 * crash in a child must kill the child, not resume the parent's cmocka
 * runner).  On failure prints the launcher's message. */
epx_status_t epxt_launch(int nranks, double timeout_s, epx_rank_fn fn,
                         void *arg, int *failed_rank);
/* Same wrapper for ranks started some other way (fork, threads). */
void epxt_rank_enter(int rank);

/* Anonymous shared memory that forked ranks inherit (zeroed). */
void *epxt_shared_alloc(size_t bytes);
void epxt_shared_free(void *p, size_t bytes);

/* Number of entries of /dev/shm whose name starts with `prefix`. */
int epxt_shm_count(const char *prefix);

/* Wall-clock seconds (CLOCK_MONOTONIC). */
double epxt_now(void);

/* ---- one engine round: dispatch a (fresh), then combine with the
 * expert outputs in place (y = the received x, an identity expert) into
 * out ([a->x.rows, H] of out_dt).  *rows (may be NULL): the rows received.
 * Returns 0, or a failed check's value (CHECK_CALL). */
int epxt_round_inplace(epx_moe_t *m, const epx_dispatch_args_t *a,
                       epx_dtype_t out_dt, void *out, int64_t *rows);

/* ---- digests of outputs (tests/moe/test-transports.sh)
 *
 * EPX_TEST_DIGEST=FILE: append one line "CASE #N round ROUND rank RANK
 * WHAT BYTES HASH" (FNV-1a of the bytes; N counts this thread's lines) so
 * that runs of the same seed over different transports can be compared
 * bit for bit.  Nothing without the variable. */
void epxt_digest(const char *test_case, int round, int rank, const char *what,
                 const void *p, size_t bytes);

#endif /* EPX_TEST_H */
