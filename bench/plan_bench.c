/*
 * epx-plan-bench: time the placement planner on a production-sized problem
 * and report how even the placements are.
 *
 *   epx-plan-bench [--layers 61] [--experts 256] [--slots 288] [--ranks 72]
 *                  [--groups 8] [--domains 1] [--zipf 0.6] [--tokens 32768]
 *                  [--reps 21] [--seed N] [--threads 1]
 *
 * Loads: per layer, `tokens` routed tokens (top-k choices) over the experts
 * with Zipf(s) probabilities in a random order per layer.  --threads:
 * epx_balance_params_t.num_threads (the plans are the same for any).
 */
#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "epx.h"

static uint64_t rng_state;
static double uniform01(void)
{
    uint64_t x = rng_state += 0x9e3779b97f4a7c15ull;   /* splitmix64 */
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return (double)((x ^ (x >> 31)) >> 11) * 0x1.0p-53;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void gen_loads(int L, int E, double s, double tokens, double *load)
{
    int *perm = malloc((size_t)E * sizeof(int));
    double norm = 0;
    for (int e = 0; e < E; e++)
        norm += pow(e + 1.0, -s);
    for (int l = 0; l < L; l++) {
        for (int e = 0; e < E; e++)
            perm[e] = e;
        for (int e = E - 1; e > 0; e--) {
            int j = (int)(uniform01() * (e + 1)), t = perm[e];
            perm[e] = perm[j];
            perm[j] = t;
        }
        for (int e = 0; e < E; e++)   /* expected count, +-5 % noise */
            load[(size_t)l * E + e] = round(tokens * pow(perm[e] + 1.0, -s) /
                                            norm * (0.95 + 0.1 * uniform01()));
    }
    free(perm);
}

static void die(const char *what)
{
    fprintf(stderr, "epx-plan-bench: %s: %s\n", what, epx_last_error());
    exit(1);
}

static int moved(const int32_t *a, const int32_t *b, size_t n)
{
    int m = 0;
    for (size_t i = 0; i < n; i++)
        m += a[i] != b[i];
    return m;
}

/* Plan `reps` times into out: sorted times in t[], the balancedness. */
static double time_plan(const epx_balance_params_t *p, const double *load,
                        int32_t *out, int reps, double *t)
{
    double b;
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        if (epx_balance_plan(p, load, out, NULL, 0, NULL))
            die("plan");
        t[r] = now() - t0;
    }
    qsort(t, (size_t)reps, sizeof(double), cmp_double);
    if (epx_balance_metrics(p, load, out, &b, NULL, NULL, NULL))
        die("metrics");
    return b;
}

/* Budgeted re-planning after a drift (every layer's hot experts move:
 * fresh loads), from the epx plan in use: time, slots moved and the
 * balancedness reached for a few budgets, next to planning from scratch
 * (epx keeping in place, and the DeepSeek policy). */
static void budgeted(epx_balance_params_t *p, const double *load,
                     int32_t *cur, int32_t *out, int32_t *scratch, double zipf,
                     double tokens, int reps, double *t)
{
    static const int64_t budgets[] = { 16, 64, 256, 1024 };
    const int64_t bps = 44040192;   /* 3 x 7168 x 2048 fp8: one expert */
    size_t LE = (size_t)p->num_layers * p->num_experts;
    size_t LS = (size_t)p->num_layers * p->num_slots;
    double *drift = malloc(LE * sizeof(double)), b, bc;
    if (!drift)
        die("out of memory");
    p->policy = EPX_BALANCE_EPX;
    p->current_phy2log = NULL;
    if (epx_balance_plan(p, load, cur, NULL, 0, NULL))
        die("plan");
    gen_loads(p->num_layers, p->num_experts, zipf, tokens, drift);
    if (epx_balance_metrics(p, drift, cur, &bc, NULL, NULL, NULL))
        die("metrics");
    printf("budgeted re-plan after a drift (hot experts moved), from the epx "
           "plan in use (balancedness %.4f); %lld bytes per slot\n", bc,
           (long long)bps);
    printf("%-22s %10s %10s %8s %12s %13s\n", "plan", "p50 ms", "min ms",
           "moves", "GB moved", "balancedness");
    for (int pol = 0; pol < 2; pol++) {   /* from scratch */
        p->policy = (epx_balance_policy_t)pol;
        p->current_phy2log = pol ? cur : NULL;
        b = time_plan(p, drift, scratch, reps, t);
        int m = moved(cur, scratch, LS);
        printf("%-22s %10.2f %10.2f %8d %12.2f %13.4f\n",
               pol ? "epx, from scratch" : "deepseek, from scratch",
               1e3 * t[reps / 2], 1e3 * t[0], m, m * (double)bps / 1e9, b);
    }
    p->policy = EPX_BALANCE_EPX;
    p->current_phy2log = cur;
    p->bytes_per_slot = bps;
    for (size_t i = 0; i < sizeof(budgets) / sizeof(budgets[0]); i++) {
        epx_balance_report_t rep;
        p->max_moves = budgets[i];
        p->report = &rep;
        b = time_plan(p, drift, out, reps, t);
        char name[32];
        snprintf(name, sizeof(name), "epx, --max-moves %lld",
                 (long long)budgets[i]);
        printf("%-22s %10.2f %10.2f %8lld %12.2f %13.4f\n", name,
               1e3 * t[reps / 2], 1e3 * t[0], (long long)rep.moves,
               rep.bytes / 1e9, b);
    }
    p->max_moves = -1;
    p->report = NULL;
    p->current_phy2log = NULL;
    free(drift);
}

int main(int argc, char **argv)
{
    epx_balance_params_t p = EPX_BALANCE_PARAMS_INIT;
    p.num_threads = 1;
    p.num_layers = 61;
    p.num_experts = 256;
    p.num_slots = 288;
    p.num_ranks = 72;
    p.num_groups = 8;
    p.num_domains = 1;
    double zipf = 0.6, tokens = 32768;
    int reps = 21;
    uint64_t seed = 1;
    static const struct option opts[] = {
        { "layers", 1, 0, 'l' }, { "experts", 1, 0, 'e' },
        { "slots", 1, 0, 's' }, { "ranks", 1, 0, 'r' },
        { "groups", 1, 0, 'g' }, { "domains", 1, 0, 'd' },
        { "zipf", 1, 0, 'z' }, { "tokens", 1, 0, 't' },
        { "reps", 1, 0, 'n' }, { "seed", 1, 0, 'S' },
        { "threads", 1, 0, 'T' },
        { "help", 0, 0, 'h' }, { 0, 0, 0, 0 } };
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'l': p.num_layers = atoi(optarg); break;
        case 'e': p.num_experts = atoi(optarg); break;
        case 's': p.num_slots = atoi(optarg); break;
        case 'r': p.num_ranks = atoi(optarg); break;
        case 'g': p.num_groups = atoi(optarg); break;
        case 'd': p.num_domains = atoi(optarg); break;
        case 'z': zipf = atof(optarg); break;
        case 't': tokens = atof(optarg); break;
        case 'n': reps = atoi(optarg); break;
        case 'S': seed = strtoull(optarg, NULL, 0); break;
        case 'T': p.num_threads = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: epx-plan-bench [--layers N] [--experts N] "
                    "[--slots N] [--ranks N] [--groups N] [--domains N] "
                    "[--zipf S] [--tokens N] [--reps N] [--seed N] "
                    "[--threads N] [-h|--help]\n");
            return c == 'h' ? 0 : 2;
        }
    }
    if (reps < 1 || p.num_layers < 1 || p.num_experts < 1 ||
        p.num_threads < 1) {
        fprintf(stderr, "epx-plan-bench: reps, layers, experts and threads "
                "must be >= 1\n");
        return 2;
    }
    rng_state = seed;
    size_t LE = (size_t)p.num_layers * p.num_experts;
    size_t LS = (size_t)p.num_layers * p.num_slots;
    int maxrep = p.num_slots - p.num_experts + 1;
    double *load = malloc(LE * sizeof(double));
    double *load2 = malloc(LE * sizeof(double));
    int32_t *p2l = malloc(LS * sizeof(int32_t)), *p2l2 = malloc(LS * sizeof(int32_t));
    int32_t *p2l3 = malloc(LS * sizeof(int32_t));
    int32_t *l2p = malloc(LE * maxrep * sizeof(int32_t));
    int32_t *cnt = malloc(LE * sizeof(int32_t));
    double *t = malloc((size_t)reps * sizeof(double));
    if (!load || !load2 || !p2l || !p2l2 || !p2l3 || !l2p || !cnt || !t) {
        fprintf(stderr, "epx-plan-bench: out of memory\n");
        return 1;
    }
    gen_loads(p.num_layers, p.num_experts, zipf, tokens, load);

    printf("epx-plan-bench: %d layers x %d experts -> %d slots on %d ranks, "
           "%d groups, %d domains; Zipf s=%g, %g tokens/layer, seed %llu, "
           "%d reps, %d thread%s\n", p.num_layers, p.num_experts, p.num_slots,
           p.num_ranks, p.num_groups, p.num_domains, zipf, tokens,
           (unsigned long long)seed, reps, p.num_threads,
           p.num_threads > 1 ? "s" : "");
    double b0, i0;
    if (epx_balance_metrics(&p, load, NULL, &b0, &i0, NULL, NULL))
        die("metrics");
    printf("%-22s %10s %10s %13s %10s\n", "placement", "p50 ms", "min ms",
           "balancedness", "imbalance");
    printf("%-22s %10s %10s %13.4f %10.4f\n", "none (contiguous)", "-", "-",
           b0, i0);
    static const char *names[] = { "deepseek", "epx" };
    /* per-layer balancedness (mean/max; the mean is the same for both
     * policies, so it compares their maximum rank loads layer by layer) */
    double *lbal[2] = { malloc(sizeof(double) * (size_t)p.num_layers),
                        malloc(sizeof(double) * (size_t)p.num_layers) };
    if (!lbal[0] || !lbal[1])
        die("out of memory");
    for (int pol = 0; pol < 2; pol++) {
        p.policy = (epx_balance_policy_t)pol;
        for (int r = 0; r < reps; r++) {
            double t0 = now();
            if (epx_balance_plan(&p, load, p2l, l2p, maxrep, cnt))
                die("plan");
            t[r] = now() - t0;
        }
        qsort(t, (size_t)reps, sizeof(double), cmp_double);
        double b, im;
        if (epx_balance_metrics(&p, load, p2l, &b, &im, lbal[pol], NULL))
            die("metrics");
        printf("%-22s %10.2f %10.2f %13.4f %10.4f\n", names[pol],
               1e3 * t[reps / 2], 1e3 * t[0], b, im);
    }
    int higher = 0, lower = 0;
    for (int l = 0; l < p.num_layers; l++) {
        higher += lbal[1][l] < lbal[0][l] * (1 - 1e-12);
        lower += lbal[1][l] > lbal[0][l] * (1 + 1e-12);
    }
    printf("epx vs deepseek, maximum rank load per layer: higher in %d, lower "
           "in %d, equal in %d of %d layers\n", higher, lower,
           p.num_layers - higher - lower, p.num_layers);
    free(lbal[0]);
    free(lbal[1]);
    /* Re-planning after a +-5 % change of every load: slots whose expert
     * changes, with and without the current placement. */
    p.policy = EPX_BALANCE_EPX;
    for (size_t i = 0; i < LE; i++)
        load2[i] = round(load[i] * (0.95 + 0.1 * uniform01()));
    if (epx_balance_plan(&p, load2, p2l2, NULL, 0, NULL))
        die("plan");
    p.current_phy2log = p2l;
    double t0 = now();
    if (epx_balance_plan(&p, load2, p2l3, NULL, 0, NULL))
        die("plan");
    double tk = now() - t0;
    printf("re-plan after +-5%% load change (epx): %d of %zu slots move from "
           "scratch, %d keeping in place (%.2f ms)\n", moved(p2l, p2l2, LS), LS,
           moved(p2l, p2l3, LS), 1e3 * tk);
    budgeted(&p, load, p2l, p2l2, p2l3, zipf, tokens, reps, t);
    free(load); free(load2); free(p2l); free(p2l2); free(p2l3); free(l2p);
    free(cnt); free(t);
    return 0;
}
