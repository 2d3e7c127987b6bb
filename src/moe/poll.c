/* epx_dispatch_poll: the readiness query, per engine mode. */
#include "util/util.h"
#include "moe/moe.h"

epx_status_t epx_dispatch_poll(epx_moe_t *m, epx_handle_t *h, epx_recv_t *recv,
                               uint8_t *ready, int *num_ready)
{
    if (!m)
        return epx__error(EPX_ERR_INVALID, "dispatch_poll: engine NULL");
    if (m->p.mode == EPX_MODE_LOW_LATENCY)
        return epx__error(EPX_ERR_UNSUPPORTED,
                          "dispatch_poll: low-latency mode is not built yet");
    return moe_ht_poll(m, h, recv, ready, num_ready);
}
