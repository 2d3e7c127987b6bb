/*
 * epx-put-bench: put bandwidth through epx's window API between two local
 * ranks, the counterpart of `ucx_perftest -t ucp_put_bw` (see
 * bench/ucx-put-compare.sh).  Rank 0 puts `iters` messages of each size
 * into the same place of rank 1's window, then signals; rank 1 waits for
 * the signal (driving progress) and signals back; the time is rank 0's,
 * from the first put to the answer, so it covers delivered data.
 *
 *   epx-put-bench [--transport auto|shm|ucx] [--sizes 4096,1048576,...]
 *                 [--bytes N] [--warmup N] [--json]
 *
 * --transport sets EPX_TRANSPORTS for the ranks (UCX_TLS picks UCX's own
 * transport).  Bandwidth in MiB/s (2^20 bytes/s, like ucx_perftest).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "util/util.h"
#include "core/comm.h"
#include "transport/transport.h"

#define MAXSIZES 32

typedef struct result {
    char pairs[256];
    int n;
    size_t size[MAXSIZES];
    long iters[MAXSIZES];
    double secs[MAXSIZES];
    int status;
} result_t;

typedef struct cfg {
    size_t sizes[MAXSIZES];
    int nsizes;
    double bytes;          /* per size, at least */
    int warmup;
    result_t *res;         /* shared with the parent */
} cfg_t;

static long iters_of(const cfg_t *c, size_t size)
{
    long n = (long)(c->bytes / (double)size);
    return n < 20 ? 20 : n;
}

static int bench_rank(epx_comm_t *comm, void *arg)
{
    cfg_t *c = arg;
    size_t max = 0;
    for (int i = 0; i < c->nsizes; i++)
        max = c->sizes[i] > max ? c->sizes[i] : max;
    epx_win_t *w;
    epx_status_t st = epx__win_create(comm, max, 2, &w);
    if (st != EPX_OK) {
        fprintf(stderr, "epx-put-bench: %s\n", epx_last_error());
        return 1;
    }
    char *src = malloc(max);
    if (!src)
        return 1;
    memset(src, 0x5a, max);
    if (comm->rank == 0)
        epx__select_summary(comm, c->res->pairs, sizeof(c->res->pairs));
    uint64_t round = 0;
    for (int i = 0; i < c->nsizes && st == EPX_OK; i++) {
        size_t size = c->sizes[i];
        long n = iters_of(c, size);
        for (int pass = 0; pass < 2 && st == EPX_OK; pass++) {
            long reps = pass == 0 ? c->warmup : n;
            round++;
            if (comm->rank == 1) {
                st = epx__win_wait(w, 0, round);
                if (st == EPX_OK)
                    st = epx__win_signal(w, 0, 1, 1);
                continue;
            }
            double t0 = epx__now();
            for (long k = 0; k < reps && st == EPX_OK; k++)
                st = epx__win_put(w, 1, 0, src, size);
            if (st == EPX_OK)
                st = epx__win_signal(w, 1, 0, 1);
            if (st == EPX_OK)
                st = epx__win_wait(w, 1, round);
            if (pass == 1) {
                c->res->size[i] = size;
                c->res->iters[i] = n;
                c->res->secs[i] = epx__now() - t0;
            }
        }
    }
    if (st != EPX_OK)
        fprintf(stderr, "epx-put-bench: rank %d: %s\n", comm->rank,
                epx_last_error());
    if (st == EPX_OK)
        st = epx_comm_barrier(comm);
    epx__win_destroy(w);
    free(src);
    if (comm->rank == 0)
        c->res->n = c->nsizes;
    return st == EPX_OK ? 0 : 1;
}

static int parse_sizes(const char *s, cfg_t *c)
{
    c->nsizes = 0;
    while (*s && c->nsizes < MAXSIZES) {
        char *end;
        unsigned long long v = strtoull(s, &end, 0);
        if (end == s || v == 0)
            return -1;
        if (*end == 'k' || *end == 'K')
            v <<= 10, end++;
        else if (*end == 'm' || *end == 'M')
            v <<= 20, end++;
        c->sizes[c->nsizes++] = (size_t)v;
        if (*end == ',')
            end++;
        else if (*end)
            return -1;
        s = end;
    }
    return c->nsizes ? 0 : -1;
}

int main(int argc, char **argv)
{
    cfg_t c = { .bytes = 512.0 * (1 << 20), .warmup = 10 };
    const char *transport = "auto";
    int json = 0;
    parse_sizes("4k,64k,1m,4m,16m", &c);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--transport") && v) {
            transport = v;
            i++;
        } else if (!strcmp(a, "--sizes") && v) {
            if (parse_sizes(v, &c)) {
                fprintf(stderr, "epx-put-bench: bad --sizes '%s'\n", v);
                return 2;
            }
            i++;
        } else if (!strcmp(a, "--bytes") && v) {
            c.bytes = atof(v);
            i++;
        } else if (!strcmp(a, "--warmup") && v) {
            c.warmup = atoi(v);
            i++;
        } else if (!strcmp(a, "--json")) {
            json = 1;
        } else {
            fprintf(stderr, "usage: epx-put-bench [--transport auto|shm|ucx] "
                    "[--sizes 4k,1m,...] [--bytes N] [--warmup N] [--json]\n");
            return 2;
        }
    }
    if (strcmp(transport, "auto") && strcmp(transport, "shm") &&
        strcmp(transport, "ucx")) {
        fprintf(stderr, "epx-put-bench: --transport is auto, shm or ucx\n");
        return 2;
    }
    setenv("EPX_TRANSPORTS", transport, 1);
    c.res = mmap(NULL, sizeof(result_t), PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (c.res == MAP_FAILED)
        return 1;
    epx_status_t st = epx_launch_local(2, NULL, bench_rank, &c, NULL);
    if (st != EPX_OK || c.res->n != c.nsizes) {
        fprintf(stderr, "epx-put-bench: %s\n", epx_last_error());
        return 1;
    }
    const char *tls = getenv("UCX_TLS");
    if (json)
        printf("{\"transport\": \"%s\", \"pairs\": \"%s\", \"ucx_tls\": \"%s\", "
               "\"results\": [", transport, c.res->pairs, tls ? tls : "");
    else
        printf("# epx-put-bench: 2 ranks, --transport %s (rank 0: %s), "
               "UCX_TLS=%s\n# %10s %10s %12s\n", transport, c.res->pairs,
               tls ? tls : "(default)", "bytes", "iters", "MiB/s");
    for (int i = 0; i < c.res->n; i++) {
        double mibs = (double)c.res->size[i] * (double)c.res->iters[i] /
                      c.res->secs[i] / (1 << 20);
        if (json)
            printf("%s{\"bytes\": %zu, \"iters\": %ld, \"seconds\": %.6f, "
                   "\"mib_s\": %.2f}", i ? ", " : "", c.res->size[i],
                   c.res->iters[i], c.res->secs[i], mibs);
        else
            printf("  %10zu %10ld %12.1f\n", c.res->size[i], c.res->iters[i],
                   mibs);
    }
    if (json)
        printf("]}\n");
    return 0;
}
