/*
 * topology layer (v0): what this host is, from hwloc.  The full model
 * (GPUs, NVLink domains, NICs, system descriptions, epx-topo) is planned.
 */
#ifndef EPX_TOPO_H
#define EPX_TOPO_H

#include "epx.h"

typedef struct epx_host_info {
    char hostname[64];
    int packages;
    int numa_nodes;
    int cores;
    int pus;
} epx_host_info_t;

/* Probe this host with hwloc; a field hwloc cannot tell is 0. */
epx_status_t epx__topo_host_probe(epx_host_info_t *info);

#endif /* EPX_TOPO_H */
