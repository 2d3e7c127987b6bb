/*
 * epx-put-bench: one-sided put bandwidth between 2 ranks through the
 * window API (src/transport/transport.h), over whichever backend the
 * communicator picks for the pair (EPX_TRANSPORTS, EPX_TOPO_FILE), so it
 * can be set beside ucx_perftest -t ucp_put_bw on the same UCX transport.
 *
 * Rank 0 puts `size` bytes to the same place of rank 1's window `iters`
 * times (or put_signal each time with --signal), then signals; rank 1
 * waits for that signal (which the contract orders after the data) and
 * answers: the time is from the first put to the answer, so every byte is
 * in rank 1's memory (plus one small round trip).  Rank 1 then checks the
 * bytes (not timed).  Internal API: linked statically.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "config.h"
#include "util/util.h"
#include "core/comm.h"

typedef struct opts {
    size_t min_size, max_size, bytes;
    long min_iters, max_iters;
    int reps, warmup, json, signal;
    const char *transport;     /* EPX_TRANSPORTS for the ranks, or NULL */
} opts_t;

#define MAX_SIZES 48
#define MAX_REPS 101

/* Filled by the ranks, read by the forking parent. */
typedef struct result {
    int nsizes, ok;
    char backend[16];
    char error[256];
    size_t size[MAX_SIZES];
    long iters[MAX_SIZES];
    double secs[MAX_SIZES][MAX_REPS];
} result_t;

typedef struct ctx {
    const opts_t *o;
    result_t *res;
} ctx_t;

static long iters_for(const opts_t *o, size_t size)
{
    long n = (long)(o->bytes / size);
    return n < o->min_iters ? o->min_iters : n > o->max_iters ? o->max_iters : n;
}

static int fail(result_t *res, epx_status_t st, const char *what)
{
    snprintf(res->error, sizeof(res->error), "%s: %s (%s)", what,
             epx_status_str(st), epx_last_error());
    return 1;
}
#define TRY(res, expr)                                                         \
    do {                                                                       \
        epx_status_t st_ = (expr);                                             \
        if (st_ != EPX_OK)                                                     \
            return fail(res, st_, #expr);                                      \
    } while (0)

static unsigned char pattern(size_t size, size_t i)
{
    return (unsigned char)((i * 131u + size * 7u + (i >> 12)) & 0xff);
}

static int rank_main(epx_comm_t *comm, void *arg)
{
    const ctx_t *c = arg;
    const opts_t *o = c->o;
    result_t *res = c->res;
    const int me = epx_comm_rank(comm);
    epx_win_t *w = NULL;
    TRY(res, epx__win_create(comm, o->max_size, 2, &w));
    if (me == 0)
        snprintf(res->backend, sizeof(res->backend), "%s",
                 epx__win_peer_tl(w, 1));
    unsigned char *src = NULL;
    if (me == 0 && !(src = aligned_alloc(4096, o->max_size)))
        return fail(res, EPX_ERR_NOMEM, "source buffer");
    uint64_t done = 0;
    int k = 0;
    for (size_t size = o->min_size; size <= o->max_size && k < MAX_SIZES;
         size *= 2, k++) {
        const long n = iters_for(o, size);
        if (me == 0) {
            for (size_t i = 0; i < size; i++)
                src[i] = pattern(size, i);
            res->size[k] = size;
            res->iters[k] = n;
        }
        for (int rep = -o->warmup; rep < o->reps; rep++) {
            TRY(res, epx_comm_barrier(comm));
            if (me == 0) {
                double t0 = epx__now();
                for (long i = 0; i < n; i++)
                    TRY(res, o->signal
                        ? epx__win_put_signal(w, 1, 0, src, size, 0, 1)
                        : epx__win_put(w, 1, 0, src, size));
                /* Done when rank 1 has seen the signal that follows the
                 * data and answered: a flush only orders (transport.h). */
                TRY(res, epx__win_signal(w, 1, 1, 1));
                TRY(res, epx__win_wait(w, 0, ++done));
                double t1 = epx__now();
                if (rep >= 0)
                    res->secs[k][rep] = t1 - t0;
            } else {
                TRY(res, epx__win_wait(w, 1, ++done));
                TRY(res, epx__win_signal(w, 0, 0, 1));
            }
        }
        if (me == 1) {   /* the last put's bytes, once per size */
            const unsigned char *p = w->local;
            for (size_t i = 0; i < size; i++)
                if (p[i] != pattern(size, i)) {
                    snprintf(res->error, sizeof(res->error),
                             "size %zu: byte %zu is 0x%02x, want 0x%02x",
                             size, i, p[i], pattern(size, i));
                    return 1;
                }
        }
    }
    if (me == 0)
        res->nsizes = k;
    free(src);
    /* Rank 1 checked the bytes: rank 0 reports "verified" only on its word
     * (ranks started by hand do not share `res`). */
    int32_t ok = !res->error[0], all[2];
    TRY(res, epx__comm_allgather(comm, &ok, all, sizeof(ok)));
    if (!all[1]) {
        snprintf(res->error, sizeof(res->error), "rank 1 found wrong bytes");
        return 1;
    }
    TRY(res, epx_comm_barrier(comm));
    epx__win_destroy(w);
    return 0;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void size_str(size_t s, char *buf, size_t len)
{
    if (s >= (1u << 20) && s % (1u << 20) == 0)
        snprintf(buf, len, "%zu MiB", s >> 20);
    else if (s >= 1024 && s % 1024 == 0)
        snprintf(buf, len, "%zu KiB", s >> 10);
    else
        snprintf(buf, len, "%zu B", s);
}

static void report(const opts_t *o, const result_t *r)
{
    const char *mode = o->signal ? "put_signal" : "put";
    if (o->json) {
        printf("{\n  \"ranks\": 2,\n  \"program\": \"epx-put-bench\",\n"
               "  \"epx_version\": \"%s\",\n  \"backend\": \"%s\",\n"
               "  \"mode\": \"%s\",\n  \"reps\": %d,\n  \"warmup\": %d,\n"
               "  \"bytes_per_rep\": %zu,\n  \"verified\": true,\n"
               "  \"results\": [\n", PACKAGE_VERSION, r->backend, mode,
               o->reps, o->warmup, o->bytes);
    } else {
        printf("epx-put-bench: 2 ranks, rank 0 -> rank 1 over %s, %s then "
               "one flush; %d reps per size (p50, best), >= %zu MiB per rep\n",
               r->backend, mode, o->reps, o->bytes >> 20);
        printf("%10s %9s %10s %10s %11s %10s\n", "size", "iters", "GB/s p50",
               "GB/s best", "MiB/s p50", "us/put p50");
    }
    for (int k = 0; k < r->nsizes; k++) {
        double s[MAX_REPS];
        memcpy(s, r->secs[k], sizeof(double) * (size_t)o->reps);
        qsort(s, (size_t)o->reps, sizeof(double), cmp_d);
        double p50 = s[o->reps / 2], best = s[0];
        double bytes = (double)r->size[k] * (double)r->iters[k];
        double gbps = bytes / p50 / 1e9, gbest = bytes / best / 1e9;
        double mibps = bytes / p50 / (1 << 20);
        double us = p50 / (double)r->iters[k] * 1e6;
        if (o->json) {
            printf("    {\"size\": %zu, \"iters\": %ld, \"gbps_p50\": %.4f, "
                   "\"gbps_best\": %.4f, \"mibps_p50\": %.1f, "
                   "\"us_per_put_p50\": %.4f}%s\n", r->size[k], r->iters[k],
                   gbps, gbest, mibps, us, k + 1 < r->nsizes ? "," : "");
        } else {
            char b[32];
            size_str(r->size[k], b, sizeof(b));
            printf("%10s %9ld %10.2f %10.2f %11.1f %10.3f\n", b, r->iters[k],
                   gbps, gbest, mibps, us);
        }
    }
    if (o->json)
        printf("  ]\n}\n");
}

static int parse_size(const char *s, size_t *out)
{
    char *end;
    double v = strtod(s, &end);
    size_t mul = 1;
    if (*end == 'K' || *end == 'k')
        mul = 1u << 10, end++;
    else if (*end == 'M' || *end == 'm')
        mul = 1u << 20, end++;
    else if (*end == 'G' || *end == 'g')
        mul = 1u << 30, end++;
    if (*end == 'i' && end[1] == 'B')
        end += 2;
    else if (*end == 'B')
        end++;
    if (*end || !(v > 0))
        return -1;
    *out = (size_t)(v * (double)mul);
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f,
"Usage: epx-put-bench [--sizes MIN:MAX] [--bytes N] [--reps N] [--warmup N]\n"
"                     [--min-iters N] [--max-iters N] [--signal]\n"
"                     [--transport auto|shm|ucx] [--json]\n"
"\n"
"Put bandwidth from rank 0 to rank 1 (two local ranks, forked) through the\n"
"window API, over the backend the communicator picks for the pair (set\n"
"EPX_TRANSPORTS / EPX_TOPO_FILE as for any run).  Per size (powers of two\n"
"from MIN to MAX, default 4K:64M): rank 0 puts the size to the same offset\n"
"of rank 1's window max(min-iters, min(max-iters, bytes / size)) times, then\n"
"signals; rank 1 waits and answers; time = first put to the answer.\n"
"Reps per size (default 5, after 1 warm-up) give the p50 and best; rank 1\n"
"checks the bytes.\n"
"\n"
"  --sizes MIN:MAX   sizes, K/M/G suffixes (powers of two from MIN)\n"
"  --bytes N         bytes per rep (default 256M)\n"
"  --reps N          timed reps per size (default 5, at most %d)\n"
"  --warmup N        untimed reps per size (default 1)\n"
"  --min-iters N     puts per rep at least (default 8)\n"
"  --max-iters N     puts per rep at most (default 100000)\n"
"  --signal          put_signal each put (signal after data) instead of put\n"
"  --transport T     set EPX_TRANSPORTS=T for the two ranks\n"
"  --json            one JSON object on stdout\n"
"\n"
"GB/s is 1e9 bytes/s; MiB/s is 2^20 bytes/s, the unit of ucx_perftest's\n"
"MB/s column, to compare with e.g.\n"
"  ucx_perftest -t ucp_put_bw -s SIZE -n ITERS   (server and client)\n"
"on the same UCX_TLS.\n"
"\n"
"Two hosts: start one process on each with EPX_RANK=0|1, EPX_NRANKS=2,\n"
"EPX_ROOT=<rank 0's address>:<port> and the same EPX_JOB_KEY (env\n"
"bootstrap); rank 0 prints the report.  Without EPX_RANK both ranks are\n"
"forked here.\n", MAX_REPS);
}

/* Ranks started by hand, e.g. one on each of two hosts:
 *   EPX_RANK=r EPX_NRANKS=2 EPX_ROOT=host0:port EPX_JOB_KEY=k epx-put-bench
 * (env bootstrap); rank 0 prints the report. */
static int run_env_rank(const opts_t *o, ctx_t *c, epx_comm_params_t *params)
{
    epx_comm_t *comm = NULL;
    params->bootstrap = EPX_BOOTSTRAP_ENV;
    epx_status_t st = epx_comm_create(params, &comm);
    if (st != EPX_OK) {
        fprintf(stderr, "epx-put-bench: epx_comm_create: %s\n",
                epx_last_error());
        return 1;
    }
    const int me = epx_comm_rank(comm), n = epx_comm_size(comm);
    int rc = n == 2 ? rank_main(comm, c) : 1;
    if (n != 2)
        snprintf(c->res->error, sizeof(c->res->error), "EPX_NRANKS is %d: "
                 "the bench runs 2 ranks", n);
    epx_comm_destroy(comm);
    if (rc || c->res->error[0]) {
        fprintf(stderr, "epx-put-bench: rank %d: %s\n", me, c->res->error);
        return 1;
    }
    if (me == 0)
        report(o, c->res);
    return 0;
}

int main(int argc, char **argv)
{
    opts_t o = { 4u << 10, 64u << 20, 256u << 20, 8, 100000, 5, 1, 0, 0, NULL };
    static const struct option lo[] = {
        { "sizes", required_argument, 0, 's' },
        { "bytes", required_argument, 0, 'b' },
        { "reps", required_argument, 0, 'r' },
        { "warmup", required_argument, 0, 'w' },
        { "min-iters", required_argument, 0, 'i' },
        { "max-iters", required_argument, 0, 'I' },
        { "signal", no_argument, 0, 'S' },
        { "transport", required_argument, 0, 't' },
        { "json", no_argument, 0, 'j' },
        { "help", no_argument, 0, 'h' },
        { 0, 0, 0, 0 },
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "s:b:r:w:i:I:St:jh", lo, NULL)) != -1) {
        char *colon;
        switch (ch) {
        case 's':
            colon = strchr(optarg, ':');
            if (!colon) {
                fprintf(stderr, "epx-put-bench: --sizes wants MIN:MAX\n");
                return 2;
            }
            *colon = '\0';
            if (parse_size(optarg, &o.min_size) ||
                parse_size(colon + 1, &o.max_size) || o.min_size > o.max_size) {
                fprintf(stderr, "epx-put-bench: bad --sizes\n");
                return 2;
            }
            break;
        case 'b':
            if (parse_size(optarg, &o.bytes)) {
                fprintf(stderr, "epx-put-bench: bad --bytes '%s'\n", optarg);
                return 2;
            }
            break;
        case 'r': o.reps = atoi(optarg); break;
        case 'w': o.warmup = atoi(optarg); break;
        case 'i': o.min_iters = atol(optarg); break;
        case 'I': o.max_iters = atol(optarg); break;
        case 'S': o.signal = 1; break;
        case 't':
            if (strcmp(optarg, "auto") && strcmp(optarg, "shm") &&
                strcmp(optarg, "ucx")) {
                fprintf(stderr, "epx-put-bench: --transport is auto, shm or "
                        "ucx\n");
                return 2;
            }
            o.transport = optarg;
            break;
        case 'j': o.json = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || o.reps < 1 || o.reps > MAX_REPS || o.warmup < 0 ||
        o.min_iters < 1 || o.max_iters < o.min_iters) {
        usage(stderr);
        return 2;
    }
    if (o.transport)
        setenv("EPX_TRANSPORTS", o.transport, 1);
    result_t *res = mmap(NULL, sizeof(*res), PROT_READ | PROT_WRITE,
                         MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (res == MAP_FAILED) {
        perror("epx-put-bench: mmap");
        return 1;
    }
    ctx_t c = { &o, res };
    epx_comm_params_t params = EPX_COMM_PARAMS_INIT;
    if (getenv("EPX_RANK"))   /* one of two ranks started by hand */
        return run_env_rank(&o, &c, &params);
    int bad = -1;
    fflush(NULL);
    epx_status_t st = epx_launch_local(2, &params, rank_main, &c, &bad);
    if (st != EPX_OK || res->error[0]) {
        fprintf(stderr, "epx-put-bench: %s%s%s\n", res->error,
                res->error[0] ? "; " : "", st != EPX_OK ? epx_last_error() : "");
        return 1;
    }
    report(&o, res);
    return 0;
}
