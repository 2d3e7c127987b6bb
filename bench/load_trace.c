/*
 * --load-trace: recorded per-expert loads for --drift, one line per step
 * of L x E numbers (>= 0, finite), '#' lines and blank lines skipped.
 * Outside input: tests/fuzz/fuzz_bench_trace.c fuzzes it.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "bench.h"

int bench_load_trace_read(const char *path, int L, int E, double **out,
                          int *steps)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "epx-bench: --load-trace %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t cap = 0, n = 0, per = (size_t)L * E;
    double *v = NULL;
    char *line = NULL;
    size_t lcap = 0;
    int rc = 0, lineno = 0;
    while (getline(&line, &lcap, f) > 0 && rc == 0) {
        lineno++;
        char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '#' || *p == '\n' || !*p)
            continue;
        if (n + per > cap) {
            cap = (n + per) * 2;
            double *w = realloc(v, cap * sizeof(double));
            if (!w) {
                rc = -1;
                break;
            }
            v = w;
        }
        for (size_t i = 0; i < per; i++) {
            char *e;
            double x = strtod(p, &e);
            if (e == p || !(x >= 0) || !isfinite(x)) {
                fprintf(stderr, "epx-bench: --load-trace %s line %d: want %zu "
                        "loads (>= 0), number %zu is missing or bad\n", path,
                        lineno, per, i + 1);
                rc = -1;
                break;
            }
            v[n + i] = x;
            p = e;
        }
        while (rc == 0 && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
            p++;
        if (rc == 0 && *p) {   /* a line of another shape is not a step */
            fprintf(stderr, "epx-bench: --load-trace %s line %d: want %zu "
                    "loads, found more\n", path, lineno, per);
            rc = -1;
        }
        n += per;
    }
    free(line);
    fclose(f);
    if (rc == 0 && n == 0) {
        fprintf(stderr, "epx-bench: --load-trace %s: no steps\n", path);
        rc = -1;
    }
    if (rc) {
        free(v);
        return -1;
    }
    *out = v;
    *steps = (int)(n / per);
    return 0;
}

