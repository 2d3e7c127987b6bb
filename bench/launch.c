/*
 * Launchers.  fork: the workload is built once, the ranks are forked by
 * epx_launch_local and publish their results in a shared anonymous
 * mapping made before the fork; the parent reports.  mpirun: when MPI is
 * built and we are not under mpirun yet, run mpirun on ourselves and pass
 * its stdout on.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include "bench.h"

/* Environment markers of a process started by mpirun / srun. */
static const char *const world_size_vars[] = { "OMPI_COMM_WORLD_SIZE",
                                               "PMI_SIZE" };

int bench_under_mpirun(void)
{
    if (getenv("PMIX_RANK"))
        return 1;
    for (size_t i = 0; i < sizeof(world_size_vars) / sizeof(*world_size_vars);
         i++)
        if (getenv(world_size_vars[i]))
            return 1;
    return 0;
}

static int world_size_env(void)
{
    for (size_t i = 0; i < sizeof(world_size_vars) / sizeof(*world_size_vars);
         i++) {
        const char *v = getenv(world_size_vars[i]);
        if (v)
            return atoi(v);
    }
    return 0;
}

int bench_resolve_ranks(bench_opts_t *o, int world, char *err, size_t errlen)
{
    if (world > 0) {
        if (o->ranks_given && o->ranks != world) {
            snprintf(err, errlen, "--ranks %d but mpirun started %d "
                     "processes", o->ranks, world);
            return -1;
        }
        o->ranks = world;
    } else if (!o->ranks_given) {
        if (o->trace_dir)
            o->ranks = bench_trace_count_ranks(o->trace_dir);
        else if (o->ntokens > 1)
            o->ranks = o->ntokens;
        else
            o->ranks = BENCH_DEFAULT_RANKS;
        if (o->ranks == 0) {
            snprintf(err, errlen, "%s: no rank0/ directory: not a trace",
                     o->trace_dir);
            return -1;
        }
    }
    if (o->ranks > BENCH_MAX_RANKS) {
        snprintf(err, errlen, "%d ranks: at most %d", o->ranks,
                 BENCH_MAX_RANKS);
        return -1;
    }
    return 0;
}

int bench_run_mpirun(const bench_opts_t *o, int argc, char **argv, int *rc)
{
#ifdef EPX_HAVE_MPI
    if (getenv("EPX_BENCH_UNDER_MPIRUN")) {
        /* mpirun started us but set none of the markers we know */
        fprintf(stderr, "epx-bench: started by %s but no MPI job found in "
                "the environment\n", EPX_MPIEXEC);
        return -1;
    }
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0) {
        fprintf(stderr, "epx-bench: cannot find own executable for "
                "mpirun\n");
        return -1;
    }
    exe[n] = '\0';
    if (access(EPX_MPIEXEC, X_OK) != 0) {
        fprintf(stderr, "epx-bench: cannot run %s: %s\n", EPX_MPIEXEC,
                strerror(errno));
        return -1;
    }
    char np[16];
    snprintf(np, sizeof(np), "%d", o->ranks);
    char **args = calloc((size_t)argc + 10, sizeof(char *));
    int fd[2];
    if (!args || pipe(fd) != 0) {
        fprintf(stderr, "epx-bench: cannot start %s: %s\n", EPX_MPIEXEC,
                strerror(errno));
        free(args);
        return -1;
    }
    int a = 0;
    args[a++] = (char *)EPX_MPIEXEC;
    args[a++] = (char *)"-np";
    args[a++] = np;
    /* ranks may outnumber cores; no binding, as with the fork launcher */
    args[a++] = (char *)"--oversubscribe";
    args[a++] = (char *)"--bind-to";
    args[a++] = (char *)"none";
    args[a++] = exe;
    for (int i = 1; i < argc; i++)
        args[a++] = argv[i];
    args[a] = NULL;
    setenv("EPX_BENCH_UNDER_MPIRUN", "1", 1);
    if (geteuid() == 0) {
        setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
        setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    }
    fflush(NULL);
    /* mpirun writes rank 0's stdout through us, not straight to ours: a
     * write that fails there (full disk, closed pipe) would be lost in
     * mpirun, which exits 0; here it fails the run (main's check). */
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        dup2(fd[1], STDOUT_FILENO);
        close(fd[1]);
        execv(EPX_MPIEXEC, args);
        fprintf(stderr, "epx-bench: cannot run %s: %s\n", EPX_MPIEXEC,
                strerror(errno));
        _exit(127);
    }
    free(args);
    close(fd[1]);
    if (pid < 0) {
        fprintf(stderr, "epx-bench: fork for %s: %s\n", EPX_MPIEXEC,
                strerror(errno));
        close(fd[0]);
        unsetenv("EPX_BENCH_UNDER_MPIRUN");
        return -1;
    }
    char buf[65536];
    ssize_t got;
    int werr = 0;
    while ((got = read(fd[0], buf, sizeof(buf))) != 0) {
        if (got < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        /* after a failed write keep draining, so that mpirun finishes */
        if (!werr && (fwrite(buf, 1, (size_t)got, stdout) != (size_t)got ||
                      fflush(stdout) != 0))
            werr = 1;
    }
    close(fd[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    *rc = WIFEXITED(status) ? WEXITSTATUS(status) : 2;
    return 0;
#else
    (void)o;
    (void)argc;
    (void)argv;
    (void)rc;
    return -1;
#endif
}

typedef struct fork_arg {
    const bench_opts_t *o;
    const bench_workload_t *wl;
    void *results;
} fork_arg_t;

static int fork_rank(epx_comm_t *comm, void *arg)
{
    const fork_arg_t *fa = arg;
    bench_ctx_t ctx;
    memset(&ctx, 0, sizeof(ctx));
    ctx.o = fa->o;
    ctx.wl = fa->wl;
    ctx.comm = comm;
    ctx.rank = epx_comm_rank(comm);
    ctx.nranks = epx_comm_size(comm);
    ctx.res = bench_result_at(fa->results, ctx.rank, fa->o->iters);
    ctx.verbose = ctx.rank == 0;
    return bench_rank_main(&ctx) == 0 ? 0 : 2;
}

int bench_main_fork(bench_opts_t *o)
{
    char err[BENCH_ERR_LEN];
    if (world_size_env() > 1) {
        fprintf(stderr, "epx-bench: --launcher fork inside an MPI job of %d "
                "processes: run one process, or use --launcher mpirun\n",
                world_size_env());
        return 2;
    }
    if (bench_resolve_ranks(o, 0, err, sizeof(err)) != 0) {
        fprintf(stderr, "epx-bench: %s\n", err);
        return 2;
    }
    bench_workload_t wl;
    if (bench_workload_build(o, o->ranks, &wl, err, sizeof(err)) != 0) {
        fprintf(stderr, "epx-bench: %s\n", err);
        return 2;
    }
    const size_t bytes = (size_t)o->ranks * bench_result_size(o->iters);
    void *results = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                         MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (results == MAP_FAILED) {
        fprintf(stderr, "epx-bench: mmap of %zu bytes for results: %s\n",
                bytes, strerror(errno));
        bench_workload_free(&wl);
        return 2;
    }
    fork_arg_t fa = { o, &wl, results };
    int failed = -1, rc;
    fflush(NULL);
    epx_status_t st = epx_launch_local(o->ranks, NULL, fork_rank, &fa,
                                       &failed);
    if (st != EPX_OK && failed < 0) {   /* no rank started */
        fprintf(stderr, "epx-bench: %s\n", epx_last_error());
        rc = 2;
    } else if (st != EPX_OK) {
        fprintf(stderr, "epx-bench: rank %d failed: %s (%s)\n", failed,
                epx_status_str(st), epx_last_error());
        rc = 2;
    } else {
#ifdef EPX_HAVE_MPI
        const char *skip = "the fork launcher has no MPI (use --launcher "
                           "mpirun)";
#else
        const char *skip = "epx was built without MPI";
#endif
        rc = bench_report(o, &wl, results, "fork", skip);
    }
    munmap(results, bytes);
    bench_workload_free(&wl);
    return rc;
}

/* --tokens-sweep: one fork run per token count (its report on stderr),
 * then per count the p50 and p99 of each phase on stdout. */
int bench_main_sweep(bench_opts_t *o)
{
    const int n = o->nsweep, json = o->json;
    bench_summary_t *sm = calloc((size_t)n, sizeof(*sm));
    int64_t *tok = malloc(sizeof(int64_t));
    int rc = 0;
    if (!sm || !tok) {
        fprintf(stderr, "epx-bench: out of memory\n");
        free(sm);
        free(tok);
        return 2;
    }
    free(o->tokens);
    o->tokens = tok;
    o->ntokens = 1;
    o->json = 0;
    FILE *saved = stdout;
    for (int i = 0; i < n; i++) {
        o->tokens[0] = o->sweep[i];
        o->summary = &sm[i];
        fprintf(stderr, "\n== --tokens %lld\n", (long long)o->sweep[i]);
        fflush(NULL);
        stdout = stderr;   /* each run's table goes to stderr */
        int r = bench_main_fork(o);
        stdout = saved;
        rc = r > rc ? r : rc;
    }
    o->summary = NULL;
    o->json = json;
    const char *mode = o->mode == EPX_MODE_LOW_LATENCY ? "ll" : "ht";
    if (json) {
        printf("[");
        for (int i = 0; i < n; i++) {
            const bench_summary_t *s = &sm[i];
            printf("%s\n  {\"tokens\": %lld, \"mode\": \"%s\", \"layout\": "
                   "\"%s\", \"ran\": %s, \"dispatch_us\": %.1f, "
                   "\"dispatch_us_p99\": %.1f, \"combine_us\": %.1f, "
                   "\"combine_us_p99\": %.1f, \"total_us\": %.1f, "
                   "\"total_us_p99\": %.1f, \"iters\": %d, "
                   "\"checked\": %lld, "
                   "\"mismatches\": %lld, \"ll_rows_dropped\": %lld}",
                   i ? "," : "", (long long)o->sweep[i], mode,
                   bench_layout_name(o->layout), s->ran ? "true" : "false",
                   s->us[0][0], s->us[0][1], s->us[1][0], s->us[1][1],
                   s->us[2][0], s->us[2][1], o->iters, (long long)s->checked,
                   (long long)s->mismatches, (long long)s->dropped);
        }
        printf("\n]\n");
    } else {
        printf("epx-bench --tokens-sweep: %d ranks, mode %s, %s-major; "
               "epx times in us (slowest rank per iteration), %d timed "
               "iterations per count%s\n\n", o->ranks, mode,
               bench_layout_name(o->layout), o->iters,
               o->iters < 100 ? " (fewer than 100: p99 is near the maximum; "
                                "raise --iters)" : "");
        printf("%8s %12s %12s %12s %12s %12s %12s  %s\n", "tokens",
               "dispatch_p50", "dispatch_p99", "combine_p50", "combine_p99",
               "total_p50", "total_p99", "check");
        for (int i = 0; i < n; i++) {
            const bench_summary_t *s = &sm[i];
            printf("%8lld", (long long)o->sweep[i]);
            if (!s->ran) {
                printf("  not run (see its report above)\n");
                continue;
            }
            for (int p = 0; p < 3; p++)
                printf(" %12.1f %12.1f", s->us[p][0], s->us[p][1]);
            if (s->failed || s->mismatches)
                printf("  FAILED\n");
            else if (s->checked == 0 && s->dropped > 0)
                printf("  not verified (rows dropped)\n");
            else
                printf("  verified\n");
        }
    }
    fflush(NULL);
    free(sm);
    return rc;
}
