/*
 * --drift: the online balancing loop on a load trace whose hot experts
 * move.  Every --replan-every steps two planners see the load of the last
 * --window steps: the epx policy re-plans from the placement in use within
 * --max-moves slots (epx_balance_plan with current_phy2log), the DeepSeek
 * policy plans from scratch (as EPLB re-runs).  Each step is then measured
 * on its own load: max / mean rank load (the slowest rank against a
 * perfect split) without a balancer (contiguous experts), with epx and
 * with DeepSeek; at re-plan steps the slots and bytes each moves and the
 * time its plan took.  No ranks are started: this is what the balancer
 * decides, not a dispatch measurement (--balance is that).
 *
 * Generated trace: per layer, Zipf(S) over a shuffled popularity ranking
 * perm[(e + shift) mod E], the shift growing by one every 8, 12 or 16
 * steps (by layer): every expert takes its neighbour's popularity, so the
 * hot experts move; times (1 + 10 % uniform noise), 8192 (token, expert)
 * pairs a step.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "bench.h"

enum { POL_NONE = 0, POL_EPX = 1, POL_DS = 2, NPOL = 3 };
static const char *const pol_name[NPOL] = { "none", "epx", "deepseek" };

typedef struct drift_step {
    double ratio[NPOL];        /* max / mean rank load, over layers */
    int64_t moves[NPOL];       /* slots changed at this step's plan */
    double plan_ms[NPOL];
    int replanned;
} drift_step_t;

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static void generate(const bench_opts_t *o, int steps, int L, int E,
                     double *load)
{
    double s = o->routing == BENCH_ROUTE_ZIPF ? o->zipf_s : 1.0, z = 0;
    int *perm = malloc(sizeof(int) * (size_t)E);
    if (!perm)
        return;
    for (int i = 0; i < E; i++)
        z += pow(i + 1, -s);
    for (int l = 0; l < L; l++) {
        for (int e = 0; e < E; e++)        /* popularity ranks, shuffled */
            perm[e] = e;
        for (int e = E - 1; e > 0; e--) {
            int j = (int)(mix(o->seed ^ mix(((uint64_t)l << 32) | (uint64_t)e)) %
                          (uint64_t)(e + 1));
            int x = perm[e]; perm[e] = perm[j]; perm[j] = x;
        }
        int period = 8 + 4 * (l % 3);
        for (int t = 0; t < steps; t++) {
            int shift = t / period;
            for (int e = 0; e < E; e++) {
                int rank = perm[(e + shift) % E];
                uint64_t r = mix(o->seed ^ mix(((uint64_t)t << 40) ^
                                               ((uint64_t)l << 20) ^ (uint64_t)e));
                double noise = 1 + 0.1 * ((double)(r >> 11) / 9007199254740992.0);
                load[((size_t)t * L + l) * E + e] =
                    8192.0 * pow(rank + 1, -s) / z * noise;
            }
        }
    }
    free(perm);
}

static int64_t changed(const int32_t *a, const int32_t *b, size_t n)
{
    int64_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += a[i] != b[i];
    return c;
}

static void plot(const bench_opts_t *o, const drift_step_t *st, int steps)
{
    char dat[] = "/tmp/epx-drift-XXXXXX";
    int fd = mkstemp(dat);
    FILE *d = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!d) {
        fprintf(stderr, "epx-bench: --plot: no temporary file\n");
        return;
    }
    for (int t = 0; t < steps; t++)
        fprintf(d, "%d %.6f %.6f %.6f\n", t, st[t].ratio[0], st[t].ratio[1],
                st[t].ratio[2]);
    fclose(d);
    FILE *g = popen("gnuplot 2>/dev/null", "w");
    int rc = -1;
    if (g) {
        fprintf(g, "set terminal svg size 900,450\nset output '%s'\n"
                "set xlabel 'step'\nset ylabel 'max / mean rank load'\n"
                "set key top left\nset grid\n"
                "set title '%d ranks, %d slots, re-plan every %d steps, "
                "epx within %lld moves'\n"
                "plot '%s' u 1:2 w l t 'no balancer', '' u 1:3 w l lw 2 "
                "t 'epx (budgeted)', '' u 1:4 w l t 'DeepSeek (from scratch)'\n",
                o->plot, o->ranks, o->slots, o->replan_every,
                (long long)o->max_moves, dat);
        rc = pclose(g);
    }
    if (rc != 0)
        fprintf(stderr, "epx-bench: --plot: gnuplot not found or failed, no "
                "plot written\n");
    remove(dat);
}

int bench_drift_main(const bench_opts_t *oin)
{
    bench_opts_t o = *oin;
    if (!o.ranks_given)
        o.ranks = 8;
    const int R = o.ranks, E = o.experts, L = o.layers, K = o.replan_every;
    o.slots = bench_balance_slots(&o, R);
    const int S = o.slots;
    const int W = o.window > 0 ? o.window : K;
    if (S < E || S % R) {
        fprintf(stderr, "epx-bench: --slots %d: want a multiple of %d ranks "
                ">= %d experts\n", S, R, E);
        return 2;
    }
    int steps = o.iters;
    double *load = NULL;
    if (o.load_trace) {
        if (bench_load_trace_read(o.load_trace, L, E, &load, &steps))
            return 2;
    } else {
        load = malloc(sizeof(double) * (size_t)steps * L * E);
        if (!load)
            return 1;
        generate(&o, steps, L, E, load);
    }
    const size_t LS = (size_t)L * S, LE = (size_t)L * E;
    int32_t *cur[NPOL], *next = malloc(sizeof(int32_t) * LS);
    double *win = malloc(sizeof(double) * LE);
    drift_step_t *st = calloc((size_t)steps, sizeof(*st));
    int rc = 0;
    for (int p = 0; p < NPOL; p++)
        cur[p] = malloc(sizeof(int32_t) * LS);
    for (size_t i = 0; i < LS; i++)     /* before the first plan */
        cur[POL_EPX][i] = cur[POL_DS][i] = (int32_t)((i % S) % E);
    epx_balance_params_t bp = EPX_BALANCE_PARAMS_INIT;
    bp.num_layers = L;
    bp.num_experts = E;
    bp.num_slots = S;
    bp.num_groups = o.groups > 0 ? o.groups : 1;
    bp.num_domains = o.domains > 0 ? o.domains : 1;
    bp.num_ranks = R;
    bp.bytes_per_slot = o.bytes_per_slot;
    int64_t tot_moves[NPOL] = { 0 };
    double tot_ms[NPOL] = { 0 }, sum_ratio[NPOL] = { 0 };
    for (int t = 0; t < steps && rc == 0; t++) {
        if (t > 0 && t % K == 0) {      /* plan from the last W steps */
            memset(win, 0, sizeof(double) * LE);
            for (int u = t - W < 0 ? 0 : t - W; u < t; u++)
                for (size_t i = 0; i < LE; i++)
                    win[i] += load[(size_t)u * LE + i];
            for (int p = POL_EPX; p < NPOL && rc == 0; p++) {
                epx_balance_report_t rep;
                bp.policy = p == POL_EPX ? EPX_BALANCE_EPX : EPX_BALANCE_DEEPSEEK;
                bp.current_phy2log = p == POL_EPX ? cur[p] : NULL;
                bp.max_moves = p == POL_EPX ? o.max_moves : -1;
                bp.report = &rep;
                double t0 = now_ms();
                epx_status_t s = epx_balance_plan(&bp, win, next, NULL, 0, NULL);
                st[t].plan_ms[p] = now_ms() - t0;
                if (s != EPX_OK) {
                    fprintf(stderr, "epx-bench: epx_balance_plan (%s): %s\n",
                            pol_name[p], epx_status_str(s));
                    rc = 1;
                    break;
                }
                st[t].moves[p] = changed(cur[p], next, LS);
                memcpy(cur[p], next, sizeof(int32_t) * LS);
                tot_moves[p] += st[t].moves[p];
                tot_ms[p] += st[t].plan_ms[p];
            }
            st[t].replanned = 1;
        }
        for (int p = 0; p < NPOL && rc == 0; p++) {
            double bal = 0;
            epx_status_t s = epx_balance_metrics(&bp, load + (size_t)t * LE,
                                                 p == POL_NONE ? NULL : cur[p],
                                                 &bal, NULL, NULL, NULL);
            if (s != EPX_OK) {
                fprintf(stderr, "epx-bench: epx_balance_metrics: %s\n",
                        epx_status_str(s));
                rc = 1;
            }
            st[t].ratio[p] = bal > 0 ? 1 / bal : 1;
            sum_ratio[p] += st[t].ratio[p];
        }
    }
    if (rc == 0) {
        FILE *f = o.json ? stderr : stdout;
        fprintf(f, "# drift: %d ranks, %d experts -> %d slots, %d layers, %d "
                "steps (%s), re-plan every %d steps from the last %d, epx "
                "within %lld moves, %lld bytes per slot\n", R, E, S, L, steps,
                o.load_trace ? o.load_trace : "generated", K, W,
                (long long)o.max_moves, (long long)o.bytes_per_slot);
        fprintf(f, "%5s %9s %9s %9s %9s %9s %12s %9s %9s\n", "step", "none",
                "epx", "deepseek", "epx_mv", "ds_mv", "epx_bytes", "epx_ms",
                "ds_ms");
        for (int t = 0; t < steps; t++)
            fprintf(f, "%5d %9.4f %9.4f %9.4f %9lld %9lld %12lld %9.3f %9.3f\n",
                    t, st[t].ratio[0], st[t].ratio[1], st[t].ratio[2],
                    (long long)st[t].moves[1], (long long)st[t].moves[2],
                    (long long)(st[t].moves[1] * o.bytes_per_slot),
                    st[t].plan_ms[1], st[t].plan_ms[2]);
        fprintf(f, "# mean max/mean: none %.4f, epx %.4f, deepseek %.4f; "
                "slots moved: epx %lld (%.3g GB), deepseek %lld (%.3g GB); "
                "planning: epx %.1f ms, deepseek %.1f ms\n",
                sum_ratio[0] / steps, sum_ratio[1] / steps, sum_ratio[2] / steps,
                (long long)tot_moves[1], tot_moves[1] * (double)o.bytes_per_slot / 1e9,
                (long long)tot_moves[2], tot_moves[2] * (double)o.bytes_per_slot / 1e9,
                tot_ms[1], tot_ms[2]);
        if (o.json) {
            printf("{\"mode\": \"drift\", \"ranks\": %d, \"experts\": %d, "
                   "\"slots\": %d, \"layers\": %d, \"steps\": %d, "
                   "\"replan_every\": %d, \"window\": %d, \"max_moves\": %lld, "
                   "\"bytes_per_slot\": %lld, \"trace\": ", R, E, S, L, steps,
                   K, W, (long long)o.max_moves, (long long)o.bytes_per_slot);
            bench_json_str(stdout, o.load_trace ? o.load_trace : "generated");
            printf(",\n \"summary\": {");
            for (int p = 0; p < NPOL; p++) {
                printf("%s\"%s\": {\"mean_max_over_mean\": ", p ? ", " : "",
                       pol_name[p]);
                bench_json_num(stdout, sum_ratio[p] / steps);
                printf(", \"moves\": %lld, \"bytes\": %lld, \"plan_ms\": ",
                       (long long)tot_moves[p],
                       (long long)(tot_moves[p] * o.bytes_per_slot));
                bench_json_num(stdout, tot_ms[p]);
                printf("}");
            }
            printf("},\n \"per_step\": [");
            for (int t = 0; t < steps; t++) {
                printf("%s\n  {\"step\": %d, \"replanned\": %s", t ? "," : "",
                       t, st[t].replanned ? "true" : "false");
                for (int p = 0; p < NPOL; p++) {
                    printf(", \"%s\": {\"max_over_mean\": ", pol_name[p]);
                    bench_json_num(stdout, st[t].ratio[p]);
                    printf(", \"moves\": %lld, \"bytes\": %lld, \"plan_ms\": ",
                           (long long)st[t].moves[p],
                           (long long)(st[t].moves[p] * o.bytes_per_slot));
                    bench_json_num(stdout, st[t].plan_ms[p]);
                    printf("}");
                }
                printf("}");
            }
            printf("]}\n");
        }
        if (o.plot)
            plot(&o, st, steps);
    }
    for (int p = 0; p < NPOL; p++)
        free(cur[p]);
    free(next);
    free(win);
    free(st);
    free(load);
    return rc;
}
