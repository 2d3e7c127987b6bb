/*
 * Everything that can be checked before a rank starts: the EPX_* settings,
 * the workload the options describe (built once here and dropped), the
 * balancer's parameters and the output paths.  A mistake then costs one
 * line and exit 2, not an mpirun relaunch, an abort banner or a whole
 * benchmark run before the dump fails.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "bench.h"
#include "util/tool_io.h"

/* DIR exists (made here if not, as --dump would) and we may write in it. */
static int writable_dir(const char *opt, const char *dir)
{
    struct stat st;
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "epx-bench: %s %s: %s\n", opt, dir, strerror(errno));
        return -1;
    }
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "epx-bench: %s %s: not a directory\n", opt, dir);
        return -1;
    }
    if (access(dir, W_OK | X_OK) != 0) {
        fprintf(stderr, "epx-bench: %s %s: %s\n", opt, dir, strerror(errno));
        return -1;
    }
    return 0;
}

/* The balancer's parameters as the ranks will pass them, planned once on
 * a flat load: a bad --slots, --groups or --domains is the planner's
 * message here instead of every rank's in the middle of the run. */
static int balance_params_ok(const bench_opts_t *o)
{
    const int E = o->experts, R = o->ranks, S = bench_balance_slots(o, R);
    if (S < E || S % R) {
        fprintf(stderr, "epx-bench: --slots %d: want a multiple of the %d "
                "ranks, at least --experts %d\n", S, R, E);
        return -1;
    }
    double *load = malloc((size_t)E * sizeof(double));
    int32_t *plan = malloc((size_t)S * sizeof(int32_t));
    epx_status_t st = EPX_ERR_NOMEM;
    if (load && plan) {
        for (int e = 0; e < E; e++)
            load[e] = 1.0;
        epx_balance_params_t bp = bench_balance_params(o, E, S, R);
        st = epx_balance_plan(&bp, load, plan, NULL, 0, NULL);
    }
    free(load);
    free(plan);
    if (st != EPX_OK) {
        fprintf(stderr, "epx-bench: --balance with --slots %d --groups %d "
                "--domains %d: %s\n", S, o->groups, o->domains,
                epx_last_error());
        return -1;
    }
    return 0;
}

int bench_precheck_env(void)
{
    if (epx_settings_check() != EPX_OK) {
        fprintf(stderr, "epx-bench: %s\n", epx_last_error());
        return -1;
    }
    return 0;
}

int bench_precheck(bench_opts_t *o)
{
    char err[BENCH_ERR_LEN];
    if (bench_precheck_env() != 0)
        return -1;
    if (o->drift)
        return o->plot ? tool_writable("epx-bench", "--plot", o->plot) : 0;
    if (bench_resolve_ranks(o, 0, err, sizeof(err)) != 0) {
        fprintf(stderr, "epx-bench: %s\n", err);
        return -1;
    }
    if (o->device == BENCH_DEVICE_HOST) {
        bench_workload_t wl;
        if (bench_workload_build(o, o->ranks, &wl, err, sizeof(err)) != 0) {
            fprintf(stderr, "epx-bench: %s\n", err);
            return -1;
        }
        bench_workload_free(&wl);
    }
    if (o->balance && balance_params_ok(o) != 0)
        return -1;
    if (o->dump_dir && writable_dir("--dump", o->dump_dir) != 0)
        return -1;
    return 0;
}
