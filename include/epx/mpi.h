/*
 * epx MPI integration: build a communicator over an existing MPI_Comm.
 * libepx always exports epx_comm_create_mpi; a libepx configured without
 * MPI returns EPX_ERR_UNSUPPORTED from it.  No macro tells at compile time
 * (EPX_HAVE_MPI is the build's own config.h, not installed, and not in
 * `pkg-config --cflags epx`): the installed headers are the same either
 * way, and a program that includes this one brings its own <mpi.h>.
 */
#ifndef EPX_MPI_H
#define EPX_MPI_H

#include <mpi.h>
#include <epx.h>

#ifdef __cplusplus
extern "C" {
#endif
#if defined(__GNUC__) && !defined(EPX_NO_VISIBILITY)
#pragma GCC visibility push(default)
#endif

/* Collective over `mpi_comm`: rank and size are taken from it, and its
 * MPI_Allgather is the bootstrap.  `params` may be NULL (its bootstrap
 * fields are ignored).  The MPI communicator must outlive epx_comm. */
epx_status_t epx_comm_create_mpi(MPI_Comm mpi_comm,
                                 const epx_comm_params_t *params,
                                 epx_comm_t **comm);

#if defined(__GNUC__) && !defined(EPX_NO_VISIBILITY)
#pragma GCC visibility pop
#endif
#ifdef __cplusplus
}
#endif
#endif /* EPX_MPI_H */
