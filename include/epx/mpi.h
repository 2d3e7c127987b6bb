/*
 * epx MPI integration: build a communicator over an existing MPI_Comm.
 * Header-only: the code below is compiled into the caller's program, which
 * links MPI already, so libepx itself needs no MPI library at run time.
 */
#ifndef EPX_MPI_H
#define EPX_MPI_H

#include <stdint.h>
#include <mpi.h>
#include <epx.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The all-gather of the bootstrap.  The context is the communicator's
 * Fortran handle, an integer in every MPI, so nothing is allocated and
 * nothing outlives the MPI communicator but what the caller keeps. */
static inline int epx_mpi_allgather_(void *ctx, const void *send, void *recv,
                                     size_t bytes)
{
    MPI_Comm c = MPI_Comm_f2c((MPI_Fint)(intptr_t)ctx);
    if (bytes > (size_t)INT32_MAX)
        return -1;
    return MPI_Allgather((void *)send, (int)bytes, MPI_BYTE, recv, (int)bytes,
                         MPI_BYTE, c) == MPI_SUCCESS ? 0 : -1;
}

/* Collective over `mpi_comm`: rank and size are taken from it, and its
 * MPI_Allgather is the bootstrap (EPX_BOOTSTRAP_ALLGATHER).  `params` may
 * be NULL; only its timeout_s is used.  The MPI communicator must outlive
 * the epx communicator. */
static inline epx_status_t epx_comm_create_mpi(MPI_Comm mpi_comm,
                                               const epx_comm_params_t *params,
                                               epx_comm_t **comm)
{
    int inited = 0, rank = -1, size = 0;
    MPI_Initialized(&inited);
    if (!inited || !comm)
        return EPX_ERR_INVALID;  /* MPI not initialised, or comm NULL */
    MPI_Comm_rank(mpi_comm, &rank);
    MPI_Comm_size(mpi_comm, &size);
    epx_comm_params_t p = EPX_COMM_PARAMS_INIT;
    p.bootstrap = EPX_BOOTSTRAP_ALLGATHER;
    p.rank = rank;
    p.nranks = size;
    p.allgather = epx_mpi_allgather_;
    p.allgather_ctx = (void *)(intptr_t)MPI_Comm_c2f(mpi_comm);
    if (params && params->struct_size >= sizeof(epx_comm_params_t))
        p.timeout_s = params->timeout_s;
    return epx_comm_create(&p, comm);
}

#ifdef __cplusplus
}
#endif
#endif /* EPX_MPI_H */
