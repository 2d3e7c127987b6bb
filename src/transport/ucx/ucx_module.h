/* What the UCX module (epx_ucx.so) gives libepx: the calls transport.h
 * declares as epx__ucx_*, which ucx_load.c forwards here once loaded. */
#ifndef EPX_UCX_MODULE_H
#define EPX_UCX_MODULE_H

#include "transport/transport.h"

typedef struct epx_ucx_module_ops {
    const epx_tl_ops_t *tl;
    epx_status_t (*comm_init)(epx_comm_t *comm);
    void (*comm_fini)(epx_comm_t *comm, int clean);
    epx_status_t (*comm_quiet)(epx_comm_t *comm);
    void (*comm_leave)(epx_comm_t *comm);
    void (*comm_settle)(epx_comm_t *comm);
    epx_status_t (*win_create)(epx_comm_t *comm, size_t size, int nsignals,
                               void *local, epx_win_t **win);
    void (*comm_hold)(epx_comm_t *comm, void *addr, size_t len, int replace);
} epx_ucx_module_ops_t;

/* libepx side: the module's transport, loading it on first use; NULL when
 * it cannot load (epx_last_error says why). */
const epx_tl_ops_t *epx__ucx_tl(void);

#endif /* EPX_UCX_MODULE_H */
