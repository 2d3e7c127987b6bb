/*
 * Synthetic routing: K distinct experts per token, uniform or Zipf, plus
 * random positive weights normalised over the token's K slots.  The stream
 * of rank r depends only on (seed, r), so every rank can rebuild the
 * routing of every other rank.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "bench.h"

/* splitmix64 finaliser: a good 64-bit mix of three words. */
uint64_t bench_mix(uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t z = a * 0x9e3779b97f4a7c15ull ^ (b + 0x632be59bd9b4e019ull) *
                 0xbf58476d1ce4e5b9ull ^ (c + 0x243f6a8885a308d3ull) *
                 0x94d049bb133111ebull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t bench_rng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rng_below(uint64_t *state, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)bench_rng_next(state) * n) >> 64);
}

static double rng_unit(uint64_t *state)   /* [0, 1) */
{
    return (double)(bench_rng_next(state) >> 11) * 0x1p-53;
}

enum { STREAM_ROUTING = 1, STREAM_ZIPF_PERM = 2 };

static void pick_uniform(uint64_t *st, int E, int K, int32_t *out)
{
    for (int k = 0; k < K; k++) {
        int e, dup;
        do {
            e = (int)rng_below(st, (uint64_t)E);
            dup = 0;
            for (int j = 0; j < k; j++)
                dup |= out[j] == e;
        } while (dup);
        out[k] = e;
    }
}

/* Successive sampling without replacement: each pick is drawn from the
 * popularity of the experts not yet picked. */
static void pick_zipf(uint64_t *st, int E, int K, const double *pop,
                      double total, unsigned char *taken, int32_t *out)
{
    for (int k = 0; k < K; k++) {
        double u = rng_unit(st) * total;
        int e = -1;
        for (int i = 0; i < E; i++) {
            if (taken[i])
                continue;
            e = i;
            u -= pop[i];
            if (u < 0)
                break;
        }
        out[k] = e;
        taken[e] = 1;
        total -= pop[e];
    }
    for (int k = 0; k < K; k++)
        taken[out[k]] = 0;
}

int bench_routing_generate(const bench_opts_t *o, bench_workload_t *wl,
                           char *err, size_t errlen)
{
    const int E = wl->experts, K = wl->topk;
    if (K > E) {
        snprintf(err, errlen, "--topk %d exceeds --experts %d: a token's "
                 "experts are distinct", K, E);
        return -1;
    }
    double *pop = NULL;
    unsigned char *taken = NULL;
    double total = 0;
    if (o->routing == BENCH_ROUTE_ZIPF) {
        /* Expert perm[i] has popularity 1/(i+1)^S; the permutation depends
         * on the seed only, so all ranks agree on the hot experts. */
        int *perm = malloc((size_t)E * sizeof(*perm));
        pop = malloc((size_t)E * sizeof(*pop));
        taken = calloc((size_t)E, 1);
        if (!perm || !pop || !taken) {
            free(perm);
            free(pop);
            free(taken);
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        uint64_t st = bench_mix(o->seed, STREAM_ZIPF_PERM, 0);
        for (int i = 0; i < E; i++)
            perm[i] = i;
        for (int i = E - 1; i > 0; i--) {
            int j = (int)rng_below(&st, (uint64_t)i + 1);
            int t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        for (int i = 0; i < E; i++) {
            pop[perm[i]] = pow((double)(i + 1), -o->zipf_s);
            total += pop[perm[i]];
        }
        free(perm);
    }

    for (int r = 0; r < wl->nranks; r++) {
        const int64_t T = wl->T[r];
        uint64_t st = bench_mix(o->seed, STREAM_ROUTING, (uint64_t)r);
        int32_t *idx = wl->idx[r];
        float *w = wl->w[r];
        for (int64_t t = 0; t < T; t++) {
            int32_t *ti = idx + t * K;
            float *tw = w + t * K;
            if (o->routing == BENCH_ROUTE_ZIPF)
                pick_zipf(&st, E, K, pop, total, taken, ti);
            else
                pick_uniform(&st, E, K, ti);
            double sum = 0;
            for (int k = 0; k < K; k++) {
                tw[k] = (float)(0.1 + 0.9 * rng_unit(&st));
                sum += tw[k];
            }
            for (int k = 0; k < K; k++)
                tw[k] = (float)(tw[k] / sum);
            /* Dropped slots keep their weight: an engine must ignore it. */
            if (o->drop > 0)
                for (int k = 0; k < K; k++)
                    if (rng_unit(&st) < o->drop)
                        ti[k] = -1;
        }
    }
    free(pop);
    free(taken);
    return 0;
}
