/* Order statistics and the JSON pieces the reports share (bench.h). */
#include <math.h>
#include <stdlib.h>
#include "bench.h"

const char *const bench_q_names[BENCH_NQ] = { "min", "p10", "p50", "p90",
                                              "p99", "max" };
static const double q_at[BENCH_NQ] = { 0, 0.1, 0.5, 0.9, 0.99, 1 };

int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), bench_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Linear interpolation between order statistics. */
void bench_quantiles(double *v, int n, double q[BENCH_NQ])
{
    qsort(v, (size_t)n, sizeof(double), bench_cmp_double);
    for (int k = 0; k < BENCH_NQ; k++) {
        double pos = q_at[k] * (n - 1);
        int i = (int)floor(pos);
        q[k] = i >= n - 1 ? v[n - 1] : v[i] + (pos - i) * (v[i + 1] - v[i]);
    }
}

void bench_json_quantiles(FILE *f, const char *name, const double q[BENCH_NQ],
                          double scale)
{
    fprintf(f, ",\n     \"%s_us\": ", name);
    bench_json_num(f, q[BENCH_Q_P50] * scale);
    for (int k = 0; k < BENCH_NQ; k++) {
        if (k == BENCH_Q_P50)
            continue;
        fprintf(f, ", \"%s_us_%s\": ", name, bench_q_names[k]);
        bench_json_num(f, q[k] * scale);
    }
}

void bench_json_verified(FILE *f, int64_t checked, int64_t mismatches)
{
    fprintf(f, ",\n     \"verified\": %s, \"checked\": %lld, "
            "\"mismatches\": %lld",
            mismatches == 0 && checked > 0 ? "true" : "false",
            (long long)checked, (long long)mismatches);
}
