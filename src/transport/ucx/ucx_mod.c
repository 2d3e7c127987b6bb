/* The UCX module's identity and ops (core/module.h, ucx_module.h). */
#include "transport/ucx/ucx_module.h"

const char epx__module_name[] = "ucx";

static const epx_ucx_module_ops_t ops = {
    .tl = &epx__tl_ucx,
    .comm_init = epx__ucx_comm_init,
    .comm_fini = epx__ucx_comm_fini,
    .comm_quiet = epx__ucx_comm_quiet,
    .comm_leave = epx__ucx_comm_leave,
    .comm_settle = epx__ucx_comm_settle,
    .win_create = epx__ucx_win_create,
    .comm_hold = epx__ucx_comm_hold,
};

const void *epx__module_ops(void);
const void *epx__module_ops(void) { return &ops; }
