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

/* FILE may be written: its directory exists and is writable, and FILE,
 * if there, is a writable regular file.  Nothing is created. */
static int writable_file(const char *opt, const char *file)
{
    char dir[4096];
    struct stat st;
    snprintf(dir, sizeof(dir), "%s", file);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof(dir), ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    const char *why = NULL;
    if (stat(dir, &st) != 0)
        why = strerror(errno);
    else if (!S_ISDIR(st.st_mode))
        why = "not a directory";
    else if (access(dir, W_OK | X_OK) != 0)
        why = strerror(errno);
    if (why) {
        fprintf(stderr, "epx-bench: %s %s: cannot write in %s: %s\n", opt,
                file, dir, why);
        return -1;
    }
    if (stat(file, &st) == 0 &&
        (!S_ISREG(st.st_mode) || access(file, W_OK) != 0)) {
        fprintf(stderr, "epx-bench: %s %s: %s\n", opt, file,
                S_ISREG(st.st_mode) ? strerror(errno) : "not a regular file");
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
        epx_balance_params_t bp = EPX_BALANCE_PARAMS_INIT;
        bp.num_layers = 1;
        bp.num_experts = E;
        bp.num_slots = S;
        bp.num_groups = o->groups;
        bp.num_domains = o->domains;
        bp.num_ranks = R;
        bp.policy = o->policy;
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
        return o->plot ? writable_file("--plot", o->plot) : 0;
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
