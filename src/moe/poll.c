/*
 * epx_dispatch_poll: per-expert readiness of a dispatch in flight, by
 * mode.  Low latency reads the per-(expert, source) count words
 * (ll_dispatch.c); throughput mode has no per-expert completion record in
 * this build and says so.
 */
#include "util/util.h"
#include "moe/ll.h"

epx_status_t epx_dispatch_poll(epx_moe_t *m, epx_handle_t *h, epx_recv_t *recv,
                               uint8_t *ready, int *num_ready)
{
    if (!m || !h || !recv || !num_ready ||
        (!ready && epx_moe_num_local_experts(m) > 0))
        return epx__error(EPX_ERR_INVALID,
                          "dispatch: engine, handle, recv, ready or num_ready "
                          "NULL");
    if (m->ll)
        return ll_dispatch_poll(m, h, recv, ready, num_ready);
    return epx__error(EPX_ERR_UNSUPPORTED,
                      "dispatch: epx_dispatch_poll needs a low-latency engine "
                      "in this build (EPX_MODE_LOW_LATENCY); use "
                      "epx_dispatch_recv in throughput mode");
}
