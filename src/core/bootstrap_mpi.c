/* MPI bootstrap: the all-gather is MPI_Allgather on the caller's comm. */
#include <stdlib.h>
#include "util/util.h"
#include "core/comm.h"
#include "epx/mpi.h"

static int mpi_allgather(void *ctx, const void *send, void *recv, size_t bytes)
{
    MPI_Comm c = *(MPI_Comm *)ctx;
    return MPI_Allgather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE,
                         c) == MPI_SUCCESS ? 0 : -1;
}

epx_status_t epx_comm_create_mpi(MPI_Comm mpi_comm,
                                 const epx_comm_params_t *params,
                                 epx_comm_t **comm)
{
    int rank, size, inited = 0;
    MPI_Initialized(&inited);
    if (!inited || !comm)
        return epx__error(EPX_ERR_INVALID,
                          "mpi: MPI is not initialised or comm is NULL");
    MPI_Comm_rank(mpi_comm, &rank);
    MPI_Comm_size(mpi_comm, &size);
    /* The callback context must outlive the call: keep our own copy. */
    MPI_Comm *ctx = malloc(sizeof(*ctx));
    if (!ctx)
        return epx__error(EPX_ERR_NOMEM, "mpi: out of memory");
    *ctx = mpi_comm;
    double timeout;
    epx_boot_t *boot;
    epx_status_t st = epx__timeout(params, &timeout);
    if (st == EPX_OK)
        st = epx__boot_allgather_create(rank, size, mpi_allgather, ctx,
                                        timeout, &boot);
    if (st == EPX_OK)
        st = epx__comm_create_boot(boot, timeout, NULL, comm);
    if (st == EPX_OK)
        (*comm)->owned = ctx;
    else
        free(ctx);
    return st;
}
