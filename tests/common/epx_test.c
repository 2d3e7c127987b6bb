/* Shared test helpers: seed, rank-side checks, launcher wrapper, /dev/shm. */
#include <dirent.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h>
#include <cmocka.h>

#include "epx_test.h"
#include "netns_ranks.h"

static double user_timeout;   /* EPX_TIMEOUT as the user set it, or 0 */
static uint64_t run_seed;
static _Thread_local int my_rank = -1;
static _Thread_local char first_failure[1024];

void epxt_init(const char *prog)
{
    const char *s = getenv("EPX_TEST_SEED");
    if (s && *s) {
        run_seed = strtoull(s, NULL, 0);
    } else {
        uint64_t r = 0;
        if (getrandom(&r, sizeof(r), 0) != (ssize_t)sizeof(r))
            r = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
        run_seed = r;
    }
    printf("# %s: seed 0x%016" PRIx64 " (EPX_TEST_SEED=0x%016" PRIx64
           " reproduces this run)\n", prog, run_seed, run_seed);
    /* A bug must fail a test, not hang the suite. */
    const char *ut = getenv("EPX_TIMEOUT");
    user_timeout = ut && *ut ? strtod(ut, NULL) : 0;
    setenv("EPX_TIMEOUT", "60", 0);
    /* 72 or 144 ranks on 2 cores (under a sanitizer, too) leave a rank's
     * heartbeat thread unscheduled for seconds: only the tests of failure
     * detection ask for a short silence (tests/core/test_failure.c). */
    setenv("EPX_PEER_SILENCE", "60", 0);
    const char *filter = getenv("EPX_TEST_FILTER");
    if (filter && *filter)
        cmocka_set_test_filter(filter);
    fflush(stdout);
}

uint64_t epxt_seed(void) { return run_seed; }

double epxt_timeout(double dflt)
{
    return user_timeout > 0 && user_timeout < dflt ? user_timeout : dflt;
}

uint64_t epxt_hash(uint64_t seed, uint64_t a, uint64_t b, uint64_t c,
                   uint64_t d)
{
    uint64_t h = epxt_mix64(seed);
    h = epxt_mix64(h ^ a);
    h = epxt_mix64(h ^ b);
    h = epxt_mix64(h ^ c);
    return epxt_mix64(h ^ d);
}

uint64_t epxt_hash_str(uint64_t seed, const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;   /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return epxt_mix64(seed ^ h);
}

void epxt_rank_label(int rank) { my_rank = rank; }

int epxt_fail(const char *file, int line, const char *fmt, ...)
{
    if (first_failure[0])
        return 1;
    char msg[800];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(first_failure, sizeof(first_failure),
             "rank %d: %s:%d: %s [EPX_TEST_SEED=0x%016" PRIx64 "]", my_rank,
             file, line, msg, run_seed);
    fprintf(stderr, "FAIL %s\n", first_failure);
    fflush(stderr);
    return 1;
}

const char *epxt_first_failure(void) { return first_failure; }

void epxt_rank_enter(int rank)
{
    /* cmocka catches these in the parent to longjmp back into its runner;
     * a child must die instead. */
    static const int sigs[] = { SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGSYS,
                                SIGABRT };
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        signal(sigs[i], SIG_DFL);
    epxt_rank_label(rank);
    first_failure[0] = '\0';
}

typedef struct wrap {
    epx_rank_fn fn;
    void *arg;
} wrap_t;

static int wrapped(epx_comm_t *comm, void *arg)
{
    const wrap_t *w = arg;
    epxt_rank_enter(epx_comm_rank(comm));
    return w->fn(comm, w->arg);
}

epx_status_t epxt_launch(int nranks, double timeout_s, epx_rank_fn fn,
                         void *arg, int *failed_rank)
{
    epx_comm_params_t params = EPX_COMM_PARAMS_INIT;
    params.timeout_s = timeout_s;
    wrap_t w = { fn, arg };
    int bad = -1;
    fflush(NULL);
    if (epxt_netns_wanted()) {   /* ranks on separate network stacks */
        epx_status_t st = epxt_netns_launch(nranks, timeout_s, wrapped, &w,
                                            &bad);
        if (failed_rank)
            *failed_rank = bad;
        return st;
    }
    epx_status_t st = epx_launch_local(nranks, &params, wrapped, &w, &bad);
    if (st != EPX_OK)
        fprintf(stderr, "launch of %d ranks: %s (failed rank %d): %s\n",
                nranks, epx_status_str(st), bad, epx_last_error());
    if (failed_rank)
        *failed_rank = bad;
    return st;
}

void *epxt_shared_alloc(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

void epxt_shared_free(void *p, size_t bytes)
{
    if (p)
        munmap(p, bytes);
}

int epxt_shm_count(const char *prefix)
{
    DIR *d = opendir("/dev/shm");
    if (!d)
        return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0)
            n++;
    closedir(d);
    return n;
}

double epxt_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int epxt_round_inplace(epx_moe_t *m, const epx_dispatch_args_t *a,
                       epx_dtype_t out_dt, void *out, int64_t *rows)
{
    epx_handle_t *h = NULL;
    epx_recv_t rv = { .struct_size = sizeof(rv) };
    CHECK_OK(epx_dispatch_send(m, a, &h));
    CHECK_OK(epx_dispatch_recv(m, h, &rv));
    if (rows)
        *rows = rv.num_rows;
    epx_combine_args_t c = EPX_COMBINE_ARGS_INIT;
    c.y = rv.x;
    CHECK_OK(epx_combine_send(m, h, &c));
    epx_tensor_t o = { out, out_dt, a->x.rows, a->x.cols };
    CHECK_OK(epx_combine_recv(m, h, &o));
    epx_handle_release(h);
    return 0;
}

void epxt_digest(const char *test_case, int round, int rank, const char *what,
                 const void *p, size_t bytes)
{
    static __thread unsigned seq;
    const char *file = getenv("EPX_TEST_DIGEST");
    if (!file || !*file)
        return;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < bytes; i++)
        h = (h ^ ((const unsigned char *)p)[i]) * 0x100000001b3ull;
    char line[256];
    int n = snprintf(line, sizeof(line), "%s #%u round %d rank %d %s %zu "
                     "%016" PRIx64 "\n", test_case, seq++, round, rank, what,
                     bytes, h);
    FILE *f = fopen(file, "a");
    if (f) {
        fwrite(line, 1, (size_t)n, f);   /* one short append: not interleaved */
        fclose(f);
    }
}
