/* Built without MPI: the entry point exists so programs link and learn why. */
#include "util/util.h"
#include "core/comm.h"

/* Exported as epx/mpi.h declares it (no mpi.h to include here). */
__attribute__((visibility("default")))
epx_status_t epx_comm_create_mpi(void *mpi_comm, const epx_comm_params_t *params,
                                 epx_comm_t **comm);
epx_status_t epx_comm_create_mpi(void *mpi_comm, const epx_comm_params_t *params,
                                 epx_comm_t **comm)
{
    (void)mpi_comm; (void)params; (void)comm;
    return epx__error(EPX_ERR_UNSUPPORTED,
                      "epx was built without MPI (configure --with-mpi)");
}
