/*
 * Compiled into every module: the core functions a module calls, by their
 * usual names, forwarded to the host table of the libepx that loaded it
 * (core/module.h), and the module's one exported symbol.  The names stay
 * local to the module (src/module/module.map).
 */
#include <errno.h>
#include "config.h"
#include "util/util.h"
#include "core/group.h"
#include "core/module.h"
#include "transport/transport.h"

static const epx_module_host_t *host;

/* Defined by each module: its identity and ops. */
const void *epx__module_ops(void);
extern const char epx__module_name[];

__attribute__((visibility("default")))
const epx_module_t *epx_module_get(const epx_module_host_t *h);
const epx_module_t *epx_module_get(const epx_module_host_t *h)
{
    static epx_module_t self;
    host = h;
    self.abi = EPX_MODULE_ABI;
    self.version = PACKAGE_VERSION;
    self.comm_size = sizeof(struct epx_comm);
    self.win_size = sizeof(struct epx_win);
    self.name = epx__module_name;
    self.ops = epx__module_ops();
    return &self;
}

epx_status_t epx__error(epx_status_t st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    st = host->verror(st, 0, fmt, ap);
    va_end(ap);
    return st;
}

epx_status_t epx__syserror(epx_status_t st, const char *fmt, ...)
{
    int errnum = errno;
    va_list ap;
    va_start(ap, fmt);
    st = host->verror(st, errnum, fmt, ap);
    va_end(ap);
    return st;
}

const char *epx_last_error(void) { return host->last_error(); }
const char *epx_status_str(epx_status_t st) { return host->status_str(st); }
size_t epx_dtype_size(epx_dtype_t dtype) { return host->dtype_size(dtype); }

int epx__log_enabled(int level, const char *subsys)
{
    return host->log_enabled(level, subsys);
}

void epx__log(int level, const char *subsys, int rank, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    host->vlog(level, subsys, rank, fmt, ap);
    va_end(ap);
}

double epx__now(void) { return host->now(); }
const char *epx__cfg_str(const char *name) { return host->cfg_str(name); }

epx_status_t epx__comm_allgather(epx_comm_t *comm, const void *send,
                                 void *recv, size_t bytes)
{
    return host->comm_allgather(comm, send, recv, bytes);
}

epx_status_t epx__comm_rank_domains(struct epx_comm *comm, int32_t *dom,
                                    const char **name)
{
    return host->comm_rank_domains(comm, dom, name);
}

epx_status_t epx__comm_agree_peer(epx_comm_t *comm, epx_status_t mine,
                                  const char *what)
{
    return host->comm_agree_peer(comm, mine, what);
}

double epx__comm_timeout(const epx_comm_t *comm)
{
    return host->comm_timeout(comm);
}

epx_status_t epx__comm_alive(epx_comm_t *comm)
{
    return host->comm_alive(comm);
}

epx_status_t epx_comm_barrier(epx_comm_t *comm)
{
    return host->comm_barrier(comm);
}

const char *epx__win_peer_tl(const epx_win_t *w, int peer)
{
    return host->win_peer_tl(w, peer);
}

epx_status_t epx__win_poll_wait(epx_win_t *win, int slot, uint64_t value)
{
    return host->win_poll_wait(win, slot, value);
}

epx_status_t epx__win_bad_index(const epx_win_t *win, const char *op,
                                int peer, int slot)
{
    return host->win_bad_index(win, op, peer, slot);
}

epx_status_t epx__module_load(const char *name, const void **ops)
{
    return host->module_load(name, ops);
}
