/* epx_dispatch_poll: per-expert readiness of a dispatch in flight, by
 * mode: low latency reads the per-(expert, source) count words
 * (ll_dispatch.c), throughput mode the per-source completion words
 * (ht_poll.c). */
#include "util/util.h"
#include "moe/moe.h"
#include "moe/ll.h"

epx_status_t epx_dispatch_poll(epx_moe_t *m, epx_handle_t *h, epx_recv_t *recv,
                               uint8_t *ready, int *num_ready)
{
    if (!m)
        return epx__error(EPX_ERR_INVALID, "dispatch_poll: engine NULL");
    if (m->ll) {
        if (!h || !recv || !num_ready ||
            (!ready && epx_moe_num_local_experts(m) > 0))
            return epx__error(EPX_ERR_INVALID,
                              "dispatch_poll: handle, recv, ready or "
                              "num_ready NULL");
        return ll_dispatch_poll(m, h, recv, ready, num_ready);
    }
    return moe_ht_poll(m, h, recv, ready, num_ready);
}
