/*
 * epx-bench: MoE dispatch/combine over N local ranks, measured for epx, an
 * MPI baseline and the host's memcpy limit in the same run, every result
 * verified.  This file picks the launcher; see --help for the rest.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "bench.h"
#include "util/tool_io.h"

static int bench_main(int argc, char **argv);

int main(int argc, char **argv)
{
    int rc = bench_main(argc, argv);
    if (tool_stdout_close("epx-bench") && rc == 0)
        rc = 2;
    return rc;
}

static int bench_main(int argc, char **argv)
{
    bench_opts_t o;
    int rc = bench_opts_parse(argc, argv, &o);
    if (rc != BENCH_OPTS_RUN) {
        bench_opts_free(&o);
        return rc == BENCH_OPTS_EXIT_OK ? 0 : 2;
    }
    /* Before any launch: forked ranks and mpirun's processes inherit it. */
    if (o.transport)
        setenv("EPX_TRANSPORTS", o.transport, 1);
    /* Every check that needs no rank, before any starts (under mpirun the
     * process that re-ran us made them; bench_main_mpi checks the rest
     * collectively).  The GPU path checks its own options first. */
    if (!bench_under_mpirun() &&
        (o.device == BENCH_DEVICE_HOST ? bench_precheck(&o)
                                       : bench_precheck_env()) != 0) {
        bench_opts_free(&o);
        return 2;
    }
    if (o.kill_rank >= 0) {             /* elastic: its own fork launcher */
        rc = bench_main_elastic(&o);
        bench_opts_free(&o);
        return rc;
    }
    if (o.drift) {                      /* the planner alone, no ranks */
        rc = bench_drift_main(&o);
        bench_opts_free(&o);
        return rc;
    }
    if (o.device == BENCH_DEVICE_CUDA) {   /* threads of this process */
        rc = bench_cuda_main(&o);
        bench_opts_free(&o);
        return rc;
    }

    if (o.nsweep > 0) {
        rc = bench_main_sweep(&o);
        bench_opts_free(&o);
        return rc;
    }
    if (o.launcher != BENCH_LAUNCH_FORK && bench_under_mpirun()) {
#ifdef EPX_HAVE_MPI
        rc = bench_main_mpi(&o, &argc, &argv);
#else
        fprintf(stderr, "epx-bench: started by mpirun, but epx was built "
                "without MPI: use --launcher fork\n");
        rc = 2;
#endif
        bench_opts_free(&o);
        return rc;
    }

    if (o.launcher != BENCH_LAUNCH_FORK) {
#ifdef EPX_HAVE_MPI
        /* bench_precheck resolved the ranks */
        int ran = bench_run_mpirun(&o, argc, argv, &rc) == 0;
        if (ran || o.launcher == BENCH_LAUNCH_MPIRUN) {
            bench_opts_free(&o);
            return ran ? rc : 2;
        }
        fprintf(stderr, "epx-bench: falling back to the fork launcher\n");
#else
        if (o.launcher == BENCH_LAUNCH_MPIRUN) {
            fprintf(stderr, "epx-bench: --launcher mpirun: epx was built "
                    "without MPI\n");
            bench_opts_free(&o);
            return 2;
        }
#endif
    }
    rc = bench_main_fork(&o);
    bench_opts_free(&o);
    return rc;
}
