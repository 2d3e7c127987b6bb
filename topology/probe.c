/*
 * epx_topo_probe: this host as a map, from hwloc, then NVML, then the CUDA
 * driver; each library is optional (a CPU-only host is a valid map).
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "util/util.h"
#include "topology/probe.h"

epx_status_t epx_topo_probe(epx_topo_t **topo)
{
    if (!topo)
        return epx__error(EPX_ERR_INVALID, "topo: probe: null output");
    *topo = NULL;
    char hostname[256] = "";
    if (gethostname(hostname, sizeof(hostname) - 1) != 0 || !hostname[0])
        snprintf(hostname, sizeof(hostname), "localhost");
    epx_topo_t *t = epx__topo_new("probe");
    if (!t)
        return epx__error(EPX_ERR_NOMEM, "topo: out of memory");
    epx_status_t st = EPX_OK;
    int h = epx__topo_add(t, EPX_TOPO_HOST, -1, hostname);
    if (h < 0) {
        st = epx__error(EPX_ERR_NOMEM, "topo: out of memory");
        goto out;
    }
    /* EPX_TOPO_XML stands for the whole machine: the live libraries would
     * describe another one, so they are not asked. */
    const char *xml = getenv("EPX_TOPO_XML");
    if (xml && !*xml)
        xml = NULL;
    if ((st = epx__topo_probe_hwloc(t, h, xml)) != EPX_OK)
        goto out;
    if (xml) {
        EPX_LOG(EPX_LOG_INFO, "topo", -1,
                "EPX_TOPO_XML=%s: NVML and CUDA not probed", xml);
    } else {
        if ((st = epx__topo_probe_nvml(t, h)) != EPX_OK)
            goto out;
        if ((st = epx__topo_probe_cuda(t, h)) != EPX_OK)
            goto out;
    }
    st = epx__topo_finish(t);
out:
    if (st != EPX_OK)
        epx_topo_destroy(t);
    else
        *topo = t;
    return st;
}
