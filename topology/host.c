/* Host probe: package, NUMA, core and PU counts from hwloc. */
#include <hwloc.h>
#include <string.h>
#include <unistd.h>

#include "util/util.h"
#include "topology/topo.h"

static int count(hwloc_topology_t t, hwloc_obj_type_t type)
{
    int n = hwloc_get_nbobjs_by_type(t, type);
    return n > 0 ? n : 0;
}

epx_status_t epx__topo_host_probe(epx_host_info_t *info)
{
    hwloc_topology_t t;
    epx_host_info_t h;
    memset(&h, 0, sizeof(h));
    gethostname(h.hostname, sizeof(h.hostname) - 1);
    if (hwloc_topology_init(&t) != 0)
        return epx__syserror(EPX_ERR_SYSTEM, "topo: hwloc_topology_init");
    if (hwloc_topology_load(t) != 0) {
        hwloc_topology_destroy(t);
        return epx__syserror(EPX_ERR_SYSTEM, "topo: hwloc_topology_load");
    }
    h.packages = count(t, HWLOC_OBJ_PACKAGE);
    h.numa_nodes = count(t, HWLOC_OBJ_NUMANODE);
    h.cores = count(t, HWLOC_OBJ_CORE);
    h.pus = count(t, HWLOC_OBJ_PU);
    hwloc_topology_destroy(t);
    *info = h;
    return EPX_OK;
}
