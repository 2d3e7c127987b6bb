/*
 * The --balance report: per step and run, the slowest rank's dispatch +
 * combine time and the imbalance of the (token, expert) pairs the ranks
 * received; a summary of both runs; the "balance" JSON object.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "bench.h"

typedef struct bal_stats {
    double *total_us, *imb, *bal;   /* [steps] */
    double p50_us, p50_dispatch_us, p50_combine_us;
    double imb_mean, bal_mean;      /* over the steady steps */
    double imb_last;
    int first_steady;               /* steps before it used no plan yet */
    int64_t checked, mismatches;
} bal_stats_t;

static double median(const double *v, int n, double *tmp)
{
    memcpy(tmp, v, (size_t)n * sizeof(double));
    return bench_median(tmp, n);
}

static int compute(const bench_opts_t *o, int N, void *results, int run,
                   bal_stats_t *bs)
{
    const int n = o->iters;
    memset(bs, 0, sizeof(*bs));
    bs->total_us = calloc((size_t)n, sizeof(double));
    bs->imb = calloc((size_t)n, sizeof(double));
    bs->bal = calloc((size_t)n, sizeof(double));
    double *d = calloc((size_t)n, sizeof(double));
    double *c = calloc((size_t)n, sizeof(double));
    double *tmp = calloc((size_t)n, sizeof(double));
    if (!bs->total_us || !bs->imb || !bs->bal || !d || !c || !tmp) {
        free(d);
        free(c);
        free(tmp);
        return -1;
    }
    for (int r = 0; r < N; r++) {
        bench_result_t *res = bench_result_at(results, r, n);
        bs->checked += res->checked[run];
        bs->mismatches += res->mismatches[run];
    }
    for (int i = 0; i < n; i++) {
        double sum = 0, max = 0;
        for (int r = 0; r < N; r++) {
            bench_result_t *res = bench_result_at(results, r, n);
            double dr = bench_result_times(res, n, run,
                                           BENCH_PHASE_DISPATCH)[i];
            double cr = bench_result_times(res, n, run,
                                           BENCH_PHASE_COMBINE)[i];
            double l = bench_result_load(res, n, run)[i];
            d[i] = fmax(d[i], dr);
            c[i] = fmax(c[i], cr);
            sum += l;
            max = fmax(max, l);
        }
        double mean = sum / N;
        bs->total_us[i] = (d[i] + c[i]) * 1e6;
        bs->imb[i] = mean > 0 ? (max - mean) / mean : 0;
        bs->bal[i] = max > 0 ? mean / max : 1;
    }
    bs->p50_us = median(bs->total_us, n, tmp);
    bs->p50_dispatch_us = median(d, n, tmp) * 1e6;
    bs->p50_combine_us = median(c, n, tmp) * 1e6;
    /* With the balancer, the steps before the first plan ran on the
     * initial placement; the summary is over the planned ones. */
    bs->first_steady = run == BENCH_BAL_ON && o->replan_every < n
                       ? o->replan_every : 0;
    for (int i = bs->first_steady; i < n; i++) {
        bs->imb_mean += bs->imb[i] / (n - bs->first_steady);
        bs->bal_mean += bs->bal[i] / (n - bs->first_steady);
    }
    bs->imb_last = bs->imb[n - 1];
    free(d);
    free(c);
    free(tmp);
    return 0;
}

static void stats_free(bal_stats_t *bs)
{
    free(bs->total_us);
    free(bs->imb);
    free(bs->bal);
}

static const char *const run_names[BENCH_NBAL] = { "without", "with" };

static void print_table(FILE *f, const bench_opts_t *o,
                        const bench_workload_t *wl, const bal_stats_t bs[],
                        const char *launcher, int slots)
{
    fprintf(f, "# epx-bench --balance: %d ranks (%s), hidden %d, %d experts, "
            "top-%d, %s, %s, %s\n", wl->nranks, launcher, wl->hidden,
            wl->experts, wl->topk, bench_dtype_name(wl->dtype),
            bench_layout_name(o->layout),
            o->trace_dir ? "trace routing" : o->routing_str);
    fprintf(f, "# with: %d slots, re-plan every %d steps, policy %s, "
            "groups %d, domains %d; imbalance = (max - mean) / mean of the "
            "(token, expert) pairs each rank received\n", slots,
            o->replan_every, o->policy == EPX_BALANCE_EPX ? "epx" : "deepseek",
            o->groups, o->domains);
    fprintf(f, "%5s  %12s %10s  %12s %10s\n", "step", "without_us",
            "imbalance", "with_us", "imbalance");
    for (int i = 0; i < o->iters; i++)
        fprintf(f, "%5d  %12.1f %10.3f  %12.1f %10.3f%s\n", i,
                bs[0].total_us[i], bs[0].imb[i], bs[1].total_us[i],
                bs[1].imb[i],
                i > 0 && i % o->replan_every == 0 ? "  (new plan)" : "");
    for (int run = 0; run < BENCH_NBAL; run++)
        fprintf(f, "%-8s balancer: total p50 %10.1f us (dispatch %.1f, "
                "combine %.1f), imbalance %.3f, balancedness %.3f "
                "(mean over steps %d..%d), last step %.3f\n", run_names[run],
                bs[run].p50_us, bs[run].p50_dispatch_us,
                bs[run].p50_combine_us, bs[run].imb_mean, bs[run].bal_mean,
                bs[run].first_steady, o->iters - 1, bs[run].imb_last);
}

static void json_array(FILE *f, const char *key, const double *v, int n)
{
    fprintf(f, "\"%s\": [", key);
    for (int i = 0; i < n; i++)
        fprintf(f, "%s%.6g", i ? ", " : "", v[i]);
    fprintf(f, "]");
}

static void print_json(FILE *f, const bench_opts_t *o,
                       const bench_workload_t *wl, const bal_stats_t bs[],
                       int verified, const char *launcher, int slots,
                       void *results)
{
    fprintf(f, "{\n  \"verified\": %s,\n", verified ? "true" : "false");
    fprintf(f, "  \"config\": {\n    \"ranks\": %d,\n    \"launcher\": "
            "\"%s\", \"hidden\": %d, \"experts\": %d, \"topk\": %d, \"dtype\": "
            "\"%s\", \"layout\": \"%s\", \"routing\": \"%s\", \"seed\": "
            "%llu},\n", wl->nranks, launcher, wl->hidden, wl->experts,
            wl->topk, bench_dtype_name(wl->dtype),
            bench_layout_name(o->layout),
            o->trace_dir ? "trace" : o->routing_str,
            (unsigned long long)o->seed);
    fprintf(f, "  \"balance\": {\"steps\": %d, \"replan_every\": %d, "
            "\"slots\": %d, \"policy\": \"%s\", \"groups\": %d, "
            "\"domains\": %d,\n", o->iters, o->replan_every, slots,
            o->policy == EPX_BALANCE_EPX ? "epx" : "deepseek", o->groups,
            o->domains);
    for (int run = 0; run < BENCH_NBAL; run++) {
        const bal_stats_t *b = &bs[run];
        fprintf(f, "    \"%s\": {\"total_us_p50\": %.6g, "
                "\"dispatch_us_p50\": %.6g, \"combine_us_p50\": %.6g, "
                "\"imbalance\": %.6g, \"balancedness\": %.6g, "
                "\"imbalance_last\": %.6g, \"first_steady_step\": %d, "
                "\"checked\": %lld, \"mismatches\": %lld,\n      ",
                run_names[run], b->p50_us, b->p50_dispatch_us,
                b->p50_combine_us, b->imb_mean, b->bal_mean, b->imb_last,
                b->first_steady, (long long)b->checked,
                (long long)b->mismatches);
        json_array(f, "total_us", b->total_us, o->iters);
        fprintf(f, ",\n      ");
        json_array(f, "step_imbalance", b->imb, o->iters);
        fprintf(f, "}%s\n", run + 1 < BENCH_NBAL ? "," : "");
    }
    fprintf(f, "  },\n  \"mismatches\": [");
    const char *sep = "";
    for (int r = 0; r < wl->nranks; r++) {
        bench_result_t *res = bench_result_at(results, r, o->iters);
        for (int i = 0; i < BENCH_NBAL; i++) {
            char *save, buf[BENCH_MSG_LEN];
            snprintf(buf, sizeof(buf), "%s", res->msg[i]);
            for (char *l = strtok_r(buf, "\n", &save); l;
                 l = strtok_r(NULL, "\n", &save)) {
                fprintf(f, "%s\n    \"", sep);
                for (; *l; l++)
                    fprintf(f, *l == '"' || *l == '\\' ? "\\%c" : "%c", *l);
                fputc('"', f);
                sep = ",";
            }
        }
    }
    fprintf(f, "%s]\n}\n", *sep ? "\n  " : "");
}

int bench_report_balance(const bench_opts_t *o, const bench_workload_t *wl,
                         void *results, const char *launcher)
{
    const int N = wl->nranks, slots = bench_balance_slots(o, N);
    bal_stats_t bs[BENCH_NBAL];
    int failed = 0, ran = 1;
    for (int r = 0; r < N; r++) {
        bench_result_t *res = bench_result_at(results, r, o->iters);
        failed |= res->failed;
        ran &= res->ran[BENCH_BAL_OFF] && res->ran[BENCH_BAL_ON];
    }
    if (failed || !ran) {
        for (int r = 0; r < N; r++) {
            bench_result_t *res = bench_result_at(results, r, o->iters);
            if (res->msg[0][0])
                fprintf(stderr, "%s\n", res->msg[0]);
        }
        fprintf(stderr, "epx-bench --balance: a rank failed\n");
        return 1;
    }
    for (int run = 0; run < BENCH_NBAL; run++)
        if (compute(o, N, results, run, &bs[run]) != 0) {
            fprintf(stderr, "epx-bench: out of memory in the report\n");
            return 1;
        }
    const int verified = !bs[0].mismatches && !bs[1].mismatches;
    FILE *tf = o->json ? stderr : stdout;
    print_table(tf, o, wl, bs, launcher, slots);
    if (o->json)
        print_json(stdout, o, wl, bs, verified, launcher, slots, results);
    for (int r = 0, shown = 0; r < N && !verified; r++) {
        bench_result_t *res = bench_result_at(results, r, o->iters);
        for (int i = 0; i < BENCH_NBAL; i++)
            if (res->msg[i][0] && shown++ < 8)
                fprintf(stderr, "%s", res->msg[i]);
    }
    bench_transport_print(tf, results, o->iters, wl->nranks);
    if (verified)
        fprintf(tf, "verified: without %lld, with %lld rows+tokens, no "
                "mismatch\n", (long long)bs[0].checked,
                (long long)bs[1].checked);
    else
        fprintf(tf, "verified: FAILED (without %lld, with %lld mismatches)\n",
                (long long)bs[0].mismatches, (long long)bs[1].mismatches);
    for (int run = 0; run < BENCH_NBAL; run++)
        stats_free(&bs[run]);
    fflush(NULL);
    return verified ? 0 : 1;
}
