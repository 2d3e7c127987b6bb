/*
 * Run-time modules: the optional parts (UCX transport, CUDA executor, its
 * NCCL backend) live in shared objects that libepx loads with dlopen the
 * first time they are needed, so one build runs on a machine without UCX,
 * a GPU or NCCL and uses them where they are present.
 *
 * A module links none of libepx: a program may hold libepx statically, and
 * a second copy would have its own errors, log level and communicators.
 * What a module needs of the core it reaches through the host table libepx
 * hands it (src/module/shim.c turns those back into the usual names).  It
 * exports one symbol, EPX_MODULE_ENTRY, and must come from the same build
 * as the library (version, ABI and struct sizes are checked at load).
 */
#ifndef EPX_CORE_MODULE_H
#define EPX_CORE_MODULE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include "epx.h"

/* Bump when the host table, a module's ops or a struct both sides read
 * changes shape. */
#define EPX_MODULE_ABI 3
#define EPX_MODULE_ENTRY "epx_module_get"

struct epx_comm;
struct epx_win;

typedef struct epx_module_host {
    epx_status_t (*verror)(epx_status_t st, int errnum, const char *fmt,
                           va_list ap);
    const char *(*last_error)(void);
    const char *(*status_str)(epx_status_t st);
    size_t (*dtype_size)(epx_dtype_t dtype);
    int (*log_enabled)(int level, const char *subsys);
    void (*vlog)(int level, const char *subsys, int rank, const char *fmt,
                 va_list ap);
    double (*now)(void);
    const char *(*cfg_str)(const char *name);
    epx_status_t (*comm_allgather)(struct epx_comm *comm, const void *send,
                                   void *recv, size_t bytes);
    epx_status_t (*comm_agree_peer)(struct epx_comm *comm, epx_status_t mine,
                                    const char *what);
    double (*comm_timeout)(const struct epx_comm *comm);
    epx_status_t (*comm_alive)(struct epx_comm *comm);
    epx_status_t (*comm_barrier)(struct epx_comm *comm);
    const char *(*win_peer_tl)(const struct epx_win *w, int peer);
    epx_status_t (*win_poll_wait)(struct epx_win *win, int slot,
                                  uint64_t value);
    epx_status_t (*win_bad_index)(const struct epx_win *win, const char *op,
                                  int peer, int slot);
    epx_status_t (*module_load)(const char *name, const void **ops);
    /* the communicator's topology (collective on first use): each rank's
     * domain into dom[nranks], and the topology's name */
    epx_status_t (*comm_rank_domains)(struct epx_comm *comm, int32_t *dom,
                                      const char **name);
} epx_module_host_t;

/* What a module answers: its identity, checked against the library's, and
 * its ops (a struct the module's loader-side header defines). */
typedef struct epx_module {
    unsigned abi;               /* EPX_MODULE_ABI as the module was built */
    const char *version;        /* PACKAGE_VERSION */
    size_t comm_size;           /* sizeof(struct epx_comm) */
    size_t win_size;            /* sizeof(struct epx_win) */
    const char *name;
    const void *ops;
} epx_module_t;

typedef const epx_module_t *(*epx_module_get_fn)(const epx_module_host_t *host);

/* Loads module `name` ("ucx", "cuda", "nccl") once per process and sets
 * *ops to its ops.  Searched in $EPX_MODULE_DIR if set, else where this libepx
 * keeps them (util/paths.c).  EPX_ERR_UNSUPPORTED when it is absent or cannot load
 * (the message names the file and dlopen's reason, e.g. a missing
 * libucp.so); the same answer on every later call. */
epx_status_t epx__module_load(const char *name, const void **ops);

/* In a module (src/module/shim.c): the host table's comm_rank_domains. */
epx_status_t epx__comm_rank_domains(struct epx_comm *comm, int32_t *dom,
                                    const char **name);

#endif /* EPX_CORE_MODULE_H */
