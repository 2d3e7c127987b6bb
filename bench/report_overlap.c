/*
 * The --overlap report: per step the slowest rank's time of each run
 * (communication alone, compute alone, overlapped), their means and
 * medians, and the fraction of communication hidden,
 *   hidden = (comm + compute - overlapped) / comm, clamped to [0, 1],
 * from the mean step times (medians also shown), with its standard error
 * from the blocks of steps (hidden_se).  Below 0 the overlapped
 * step was slower than both in sequence (the ranks' compute and copies
 * fighting over the same cores); above 1 cannot be attributed.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "bench.h"

enum { OV_COMM = 0, OV_COMP, OV_BOTH, OV_N, OV_FFN = OV_N, OV_COMMIN };
static const char *const ov_names[OV_N] = { "comm", "compute", "overlapped" };

static double *series(void *results, int N, int n, int which)
{
    double *s = calloc((size_t)n, sizeof(double));
    if (!s)
        return NULL;
    for (int r = 0; r < N; r++) {
        bench_result_t *res = bench_result_at(results, r, n);
        const double *t = which == OV_COMM ? BENCH_OV_COMM(res, n)
                        : which == OV_COMP ? BENCH_OV_COMP(res, n)
                        : which == OV_BOTH ? BENCH_OV_BOTH(res, n)
                        : which == OV_FFN  ? BENCH_OV_FFN(res, n)
                                           : BENCH_OV_COMMIN(res, n);
        for (int i = 0; i < n; i++)
            s[i] = fmax(s[i], t[i]);
    }
    return s;
}

/* Mean and median of a series; tmp: [n] scratch. */
static int series_stats(void *results, int N, int n, int which, double *tmp,
                        double *mean, double *p50)
{
    double *s = series(results, N, n, which);
    if (!s)
        return -1;
    *mean = 0;
    for (int i = 0; i < n; i++)
        *mean += s[i] / n;
    memcpy(tmp, s, sizeof(double) * (size_t)n);
    *p50 = bench_median(tmp, n);
    free(s);
    return 0;
}

static double hidden_of(double comm, double comp, double both)
{
    double h = comm > 0 ? (comm + comp - both) / comm : 0;
    return h < 0 ? 0 : h > 1 ? 1 : h;
}

/* The hidden fraction's spread: its unclamped value in each whole block
 * of BENCH_OV_BLOCK steps (the three runs alternate by block, so one
 * block's three means share the machine's state), and the standard error
 * of their mean; 0 with fewer than two blocks. */
static double hidden_se(double *const s[OV_N], int n, int *nblocks)
{
    const int B = n / BENCH_OV_BLOCK;
    *nblocks = B;
    if (B < 2)
        return 0;
    double sum = 0, sq = 0;
    for (int b = 0; b < B; b++) {
        double m[OV_N] = { 0 };
        for (int k = 0; k < OV_N; k++)
            for (int i = b * BENCH_OV_BLOCK; i < (b + 1) * BENCH_OV_BLOCK; i++)
                m[k] += s[k][i] / BENCH_OV_BLOCK;
        double h = m[OV_COMM] > 0
            ? (m[OV_COMM] + m[OV_COMP] - m[OV_BOTH]) / m[OV_COMM] : 0;
        sum += h;
        sq += h * h;
    }
    double mu = sum / B, var = (sq - B * mu * mu) / (B - 1);
    return sqrt(var > 0 ? var : 0) / sqrt((double)B);
}

int bench_report_overlap(const bench_opts_t *o, const bench_workload_t *wl,
                         void *results, const char *launcher)
{
    const int N = wl->nranks, n = o->iters;
    int failed = 0;
    int64_t checked = 0, mism = 0;
    for (int r = 0; r < N; r++) {
        bench_result_t *res = bench_result_at(results, r, n);
        failed |= res->failed || !res->ran[0];
        checked += res->checked[0];
        mism += res->mismatches[0];
    }
    if (failed) {
        for (int r = 0; r < N; r++) {
            bench_result_t *res = bench_result_at(results, r, n);
            if (res->msg[0][0])
                fprintf(stderr, "%s\n", res->msg[0]);
        }
        fprintf(stderr, "epx-bench --overlap: a rank failed\n");
        return 1;
    }
    double *s[OV_N], mean[OV_N], p50[OV_N];
    double *tmp = calloc((size_t)n, sizeof(double));
    for (int k = 0; k < OV_N; k++) {
        s[k] = series(results, N, n, k);
        if (!s[k] || !tmp) {
            fprintf(stderr, "epx-bench: out of memory in the report\n");
            return 1;
        }
        mean[k] = 0;
        for (int i = 0; i < n; i++)
            mean[k] += s[k][i] / n;
        memcpy(tmp, s[k], sizeof(double) * (size_t)n);
        p50[k] = bench_median(tmp, n);
    }
    /* --overlap-thread: the expert's own time inside the overlapped steps
     * (slowest rank per step), against compute alone: how much the
     * communication beside it slowed it down. */
    double ffn_mean = 0, ffn_p50 = 0, cin_mean = 0, cin_p50 = 0;
    if (o->overlap_thread &&
        (series_stats(results, N, n, OV_FFN, tmp, &ffn_mean, &ffn_p50) ||
         series_stats(results, N, n, OV_COMMIN, tmp, &cin_mean, &cin_p50))) {
        fprintf(stderr, "epx-bench: out of memory in the report\n");
        return 1;
    }
    const double hid = hidden_of(mean[OV_COMM], mean[OV_COMP], mean[OV_BOTH]);
    const double hid50 = hidden_of(p50[OV_COMM], p50[OV_COMP], p50[OV_BOTH]);
    const double raw = mean[OV_COMM] > 0
        ? (mean[OV_COMM] + mean[OV_COMP] - mean[OV_BOTH]) / mean[OV_COMM] : 0;
    int nblocks = 0;
    const double se = hidden_se(s, n, &nblocks);
    const int verified = mism == 0;
    FILE *f = o->json ? stderr : stdout;
    fprintf(f, "# epx-bench --overlap: %d ranks (%s), hidden %d, %d experts, "
            "top-%d, %s, %s, %s; two micro-batches of the workload each; "
            "expert FFN %d x %d (fp32 sgemm, %d BLAS thread%s per rank%s%s)\n",
            N, launcher, wl->hidden, wl->experts, wl->topk,
            bench_dtype_name(wl->dtype), bench_layout_name(o->layout),
            o->trace_dir ? "trace routing" : o->routing_str, wl->hidden,
            bench_ffn_size(o), o->blas_threads, o->blas_threads > 1 ? "s" : "",
            o->overlap_thread ? ", on a compute thread beside the "
            "communicating main thread" : ", between the main thread's calls",
            o->pin ? "; threads pinned" : "");
    fprintf(f, "%5s  %12s %12s %12s\n", "step", "comm_us", "compute_us",
            "overlap_us");
    for (int i = 0; i < n; i++)
        fprintf(f, "%5d  %12.1f %12.1f %12.1f\n", i, s[OV_COMM][i] * 1e6,
                s[OV_COMP][i] * 1e6, s[OV_BOTH][i] * 1e6);
    fprintf(f, "mean  %12.1f %12.1f %12.1f\n", mean[0] * 1e6, mean[1] * 1e6,
            mean[2] * 1e6);
    fprintf(f, "p50   %12.1f %12.1f %12.1f\n", p50[0] * 1e6, p50[1] * 1e6,
            p50[2] * 1e6);
    fprintf(f, "compute / comm %.2f; hidden = (comm + compute - overlapped) / "
            "comm = %.1f%% (mean steps; unclamped %.1f%%), %.1f%% (p50)\n",
            mean[OV_COMM] > 0 ? mean[OV_COMP] / mean[OV_COMM] : 0, hid * 100,
            raw * 100, hid50 * 100);
    if (nblocks >= 2)
        fprintf(f, "hidden, standard error over %d blocks of %d steps: "
                "+-%.1f points\n", nblocks, BENCH_OV_BLOCK, se * 100);
    if (o->overlap_thread)
        fprintf(f, "expert (FFN and outputs) inside the overlapped steps "
                "(its own time, the compute thread): mean %.1f us, p50 %.1f "
                "us; %+.1f%% "
                "against compute alone\n", ffn_mean * 1e6, ffn_p50 * 1e6,
                mean[OV_COMP] > 0 ? (ffn_mean / mean[OV_COMP] - 1) * 100 : 0);
    if (o->overlap_thread)
        fprintf(f, "communication inside the overlapped steps (the main "
                "thread's time less its waits for the expert): mean %.1f us, "
                "p50 %.1f us; %+.1f%% against communication alone\n",
                cin_mean * 1e6, cin_p50 * 1e6,
                mean[OV_COMM] > 0 ? (cin_mean / mean[OV_COMM] - 1) * 100 : 0);
    if (o->json) {
        fprintf(stdout, "{\n  \"verified\": %s,\n", verified ? "true" : "false");
        fprintf(stdout, "  \"config\": {\n    \"ranks\": %d,\n    \"launcher\": "
                "\"%s\", \"hidden\": %d, \"experts\": %d, \"topk\": %d, "
                "\"dtype\": \"%s\", \"layout\": \"%s\", \"routing\": \"%s\", "
                "\"seed\": %llu, \"tokens_rank0\": %lld},\n", N, launcher,
                wl->hidden, wl->experts, wl->topk, bench_dtype_name(wl->dtype),
                bench_layout_name(o->layout),
                o->trace_dir ? "trace" : o->routing_str,
                (unsigned long long)o->seed, (long long)wl->T[0]);
        fprintf(stdout, "  \"overlap\": {\"steps\": %d, \"ffn\": %d, "
                "\"blas_threads\": %d, \"compute_thread\": %s, \"pin\": %s, "
                "\"hidden_fraction\": %.6g, \"compute_in_overlap_mean_us\": "
                "%.6g, \"compute_in_overlap_p50_us\": %.6g, "
                "\"comm_in_overlap_mean_us\": %.6g, "
                "\"comm_in_overlap_p50_us\": %.6g, "
                "\"hidden_fraction_unclamped\": %.6g, "
                "\"hidden_fraction_p50\": %.6g, \"hidden_fraction_se\": %.6g, "
                "\"blocks\": %d, \"compute_over_comm\": %.6g,\n",
                n, bench_ffn_size(o), o->blas_threads,
                o->overlap_thread ? "true" : "false", o->pin ? "true" : "false",
                hid,
                ffn_mean * 1e6, ffn_p50 * 1e6, cin_mean * 1e6, cin_p50 * 1e6,
                raw, hid50, se, nblocks,
                mean[OV_COMM] > 0 ? mean[OV_COMP] / mean[OV_COMM] : 0);
        for (int k = 0; k < OV_N; k++) {
            fprintf(stdout, "    \"%s\": {\"mean_us\": %.6g, \"p50_us\": %.6g, "
                    "\"step_us\": [", ov_names[k], mean[k] * 1e6, p50[k] * 1e6);
            for (int i = 0; i < n; i++)
                fprintf(stdout, "%s%.6g", i ? ", " : "", s[k][i] * 1e6);
            fprintf(stdout, "]}%s\n", k + 1 < OV_N ? "," : "");
        }
        fprintf(stdout, "  },\n  \"checked\": %lld, \"mismatches\": %lld\n}\n",
                (long long)checked, (long long)mism);
    }
    bench_transport_print(f, results, n, N);
    if (verified)
        fprintf(f, "verified: %lld rows+tokens, no mismatch\n",
                (long long)checked);
    else {
        for (int r = 0, shown = 0; r < N; r++) {
            bench_result_t *res = bench_result_at(results, r, n);
            if (res->msg[0][0] && shown++ < 8)
                fprintf(stderr, "%s", res->msg[0]);
        }
        fprintf(f, "verified: FAILED (%lld mismatches)\n", (long long)mism);
    }
    for (int k = 0; k < OV_N; k++)
        free(s[k]);
    free(tmp);
    fflush(NULL);
    return verified ? 0 : 1;
}
