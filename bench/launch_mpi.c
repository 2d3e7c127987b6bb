/*
 * Under mpirun: each process is one rank of MPI_COMM_WORLD; the epx
 * communicator is built over it (epx_comm_create_mpi), every rank builds
 * the workload itself, and rank 0 gathers the result blocks and reports.
 */
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include "bench.h"
#include "epx/mpi.h"

int bench_main_mpi(bench_opts_t *o, int *argc, char ***argv)
{
    char err[BENCH_ERR_LEN] = "";
    int rank, size, rc = 2;
    MPI_Init(argc, argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    bench_workload_t wl;
    /* Settings first: a job started by the user's own mpirun gets one
     * line, not every rank's abort. */
    int bad = 1;
    if (epx_settings_check() != EPX_OK)
        snprintf(err, sizeof(err), "%s", epx_last_error());
    else
        bad = bench_resolve_ranks(o, size, err, sizeof(err)) != 0 ||
              bench_workload_build(o, size, &wl, err, sizeof(err)) != 0;
    /* Every rank builds the same workload: the lowest failing one tells. */
    int first_bad = bad ? rank : size;
    MPI_Allreduce(MPI_IN_PLACE, &first_bad, 1, MPI_INT, MPI_MIN,
                  MPI_COMM_WORLD);
    if (first_bad < size) {
        if (rank == first_bad)
            fprintf(stderr, "epx-bench: %s\n", err);
        if (!bad)
            bench_workload_free(&wl);
        MPI_Finalize();
        return 2;
    }

    const size_t block = bench_result_size(o->iters);
    void *mine = calloc(1, block);
    void *all = rank == 0 ? calloc((size_t)size, block) : NULL;
    if (!mine || (rank == 0 && !all)) {
        fprintf(stderr, "epx-bench: rank %d: out of memory\n", rank);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }

    bench_ctx_t ctx;
    memset(&ctx, 0, sizeof(ctx));
    ctx.o = o;
    ctx.wl = &wl;
    ctx.rank = rank;
    ctx.nranks = size;
    ctx.under_mpi = 1;
    ctx.res = mine;
    ctx.verbose = rank == 0;
    epx_status_t st = epx_comm_create_mpi(MPI_COMM_WORLD, NULL, &ctx.comm);
    if (st != EPX_OK) {
        bench_api_fail(&ctx, "epx_comm_create_mpi", st);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    if (bench_rank_main(&ctx) != 0)
        MPI_Abort(MPI_COMM_WORLD, 2);   /* peers may wait in a collective */

    MPI_Gather(mine, (int)block, MPI_BYTE, all, (int)block, MPI_BYTE, 0,
               MPI_COMM_WORLD);
    if (rank == 0)
        rc = bench_report(o, &wl, all, "mpirun", NULL);
    MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);

    epx_comm_destroy(ctx.comm);
    free(mine);
    free(all);
    bench_workload_free(&wl);
    MPI_Finalize();
    return rc;
}
