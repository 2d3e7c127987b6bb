/*
 * Shared by the transport conformance cases (test_conform.c and
 * conform_*.c): which configuration runs, the expected byte patterns,
 * and the checks every case applies to its windows.
 */
#ifndef EPX_TEST_CONFORM_H
#define EPX_TEST_CONFORM_H

#include <stddef.h>
#include <stdint.h>
#include "common/epx_test.h"
#include "core/comm.h"

/* EPX_TEST_TRANSPORT: the configuration the harness runs (README.md). */
typedef enum conf_mode { CONF_SHM, CONF_UCX, CONF_MIXED } conf_mode_t;
extern conf_mode_t conf_mode;

/* Pattern streams: byte i of stream `key` is a hash of (key, i / 8), so
 * any rank regenerates what any other rank sent, from any offset. */
uint64_t conf_key(int tag, int src, int dst, uint64_t round);
void conf_fill(void *dst, size_t len, uint64_t key, size_t from);
/* The bytes at p are stream `key` from `from` on; else says where they
 * differ (rank-side CHECK failure, returns 1). */
int conf_expect(const void *p, size_t len, uint64_t key, size_t from,
                const char *what, int src);

/* Uniform in [0, n] from a hash of (tag, a, b, c): both sides agree. */
size_t conf_rand(int tag, uint64_t a, uint64_t b, uint64_t c, size_t n);

/* Collective, after every window creation: each peer is reached by the
 * backend this configuration demands (and the backend is a built one). */
int conf_check_peers(epx_comm_t *comm, epx_win_t *w);

/* Polls `*word` (this rank's window memory, written by a peer's put) until
 * it equals `want`, driving w's progress, as the engine reads its sequence
 * words; 1 on timeout. */
int conf_poll_u64(epx_win_t *w, const volatile uint64_t *word, uint64_t want,
                  double secs);

/* Shared by the forked ranks (allocated before the launches): the round
 * each rank has entered, for the barrier case. */
extern uint64_t *conf_entered;
#define CONF_MAX_RANKS 128

enum {
    TAG_SIZES = 1, TAG_GUARD, TAG_UNALIGNED, TAG_M2O, TAG_ORDER, TAG_FLUSH,
    TAG_FLUSH_A, TAG_FLUSH_B, TAG_REUSE, TAG_SCRIBBLE, TAG_BARRIER, TAG_ERR
};


/* ---- the cases (rank functions for epx_launch_local) and their sizes */

typedef struct conf_scale {
    size_t max_len;    /* largest put */
    int rounds;        /* rounds, or puts per peer */
    int slots;         /* signal slots in flight (signal order) */
} conf_scale_t;

int conf_put_sizes(epx_comm_t *comm, void *arg);
int conf_unaligned(epx_comm_t *comm, void *arg);
int conf_many_to_one(epx_comm_t *comm, void *arg);
int conf_signal_order(epx_comm_t *comm, void *arg);
int conf_flush_order(epx_comm_t *comm, void *arg);
int conf_flush_overwrite(epx_comm_t *comm, void *arg);
int conf_source_reuse(epx_comm_t *comm, void *arg);
int conf_barrier(epx_comm_t *comm, void *arg);
int conf_err_put_range(epx_comm_t *comm, void *arg);
int conf_err_bad_peer(epx_comm_t *comm, void *arg);
int conf_err_bad_slot(epx_comm_t *comm, void *arg);
int conf_err_wait_timeout(epx_comm_t *comm, void *arg);
int conf_err_win_left(epx_comm_t *comm, void *arg);
int conf_mixed_selection(epx_comm_t *comm, void *arg);

/* Buffer of n bytes (at least 1), 64-byte aligned, or NULL. */
void *conf_alloc(size_t n);
#define CONF_ROUND64(n) (((n) + 63) / 64 * 64)

#endif /* EPX_TEST_CONFORM_H */
